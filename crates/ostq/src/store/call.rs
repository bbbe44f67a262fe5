//! Calling scripts and commands. A script is sent as `EVALSHA` of its hash; when Redis does not
//! know the script (`NOSCRIPT`: a restart, a failover, `SCRIPT FLUSH`) it is loaded and the call
//! sent again, which is safe because Redis ran nothing. Inside `MULTI` a `NOSCRIPT` would not be
//! retried, so atomic batches load their scripts first.

use std::sync::LazyLock;

use redis::{Cmd, FromRedisValue, Script, ToRedisArgs, Value};

use super::Conn;
use crate::scripts;
use crate::{Error, Result};

macro_rules! script {
    ($name:ident, $src:path) => {
        pub(crate) static $name: LazyLock<Script> = LazyLock::new(|| Script::new($src));
    };
}
script!(PUSH, scripts::PUSH);
script!(FETCH, scripts::FETCH);
script!(CLAIM, scripts::CLAIM);
script!(COMPLETE, scripts::COMPLETE);
script!(FAIL, scripts::FAIL);
script!(RENEW, scripts::RENEW);
script!(REQUEUE, scripts::REQUEUE);
script!(ENQUEUE_NOW, scripts::ENQUEUE_NOW);
script!(DELETE, scripts::DELETE);
script!(DELETE_PENDING, scripts::DELETE_PENDING);
script!(PROGRESS, scripts::PROGRESS);
script!(HISTORY, scripts::HISTORY);
script!(WAIT, scripts::WAIT);
script!(CRON_REGISTER, scripts::CRON_REGISTER);
script!(CRON_FIRE, scripts::CRON_FIRE);
script!(CRON_REMOVE, scripts::CRON_REMOVE);

/// One call of one script: its KEYS given once, at construction, from `keys.rs`.
pub(crate) struct ScriptCall {
    script: &'static Script,
    cmd: Cmd,
}

impl ScriptCall {
    pub(crate) fn new(script: &'static LazyLock<Script>, keys: &[&str]) -> Self {
        let script: &'static Script = script;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
        Self { script, cmd }
    }

    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub(crate) fn cmd(&self) -> &Cmd {
        &self.cmd
    }

    pub(crate) async fn load(&self, conn: &mut Conn) -> Result<()> {
        self.script
            .load_async(conn)
            .await
            .map(drop)
            .map_err(Error::from_redis)
    }

    /// Sends the call; on `NOSCRIPT`, loads the script and sends it again.
    pub(crate) async fn run<T: FromRedisValue>(&self, conn: &mut Conn) -> Result<T> {
        match self.cmd.query_async(conn).await {
            Err(e) if is_noscript(&e) => {
                self.load(conn).await?;
                query(&self.cmd, conn).await
            }
            reply => reply.map_err(Error::from_redis),
        }
    }
}

/// Runs several calls in one `MULTI`/`EXEC`: all or nothing (under OOM, say). Their scripts are
/// loaded first.
pub(crate) async fn run_atomic(calls: &[ScriptCall], conn: &mut Conn) -> Result<Vec<Value>> {
    let mut loaded: Vec<&str> = Vec::new();
    for call in calls {
        let hash = call.script.get_hash();
        if !loaded.contains(&hash) {
            call.load(conn).await?;
            loaded.push(hash);
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for call in calls {
        pipe.add_command(call.cmd.clone());
    }
    pipe.query_async(conn).await.map_err(Error::from_redis)
}

/// Sends one command.
pub(crate) async fn query<T: FromRedisValue>(cmd: &Cmd, conn: &mut Conn) -> Result<T> {
    cmd.query_async(conn).await.map_err(Error::from_redis)
}

/// Sends a pipeline (in `MULTI`/`EXEC` when it was made atomic).
pub(crate) async fn query_pipe<T: FromRedisValue>(
    pipe: &redis::Pipeline,
    conn: &mut Conn,
) -> Result<T> {
    pipe.query_async(conn).await.map_err(Error::from_redis)
}

pub(crate) fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// A reply field that must be a number.
pub(crate) fn int_of(value: Option<Value>, what: &str) -> Result<i64> {
    match value {
        Some(Value::Int(n)) => Ok(n),
        Some(Value::BulkString(bytes)) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Protocol(format!("{what} is not a number"))),
        other => Err(Error::Protocol(format!("{other:?} where {what} belongs"))),
    }
}
