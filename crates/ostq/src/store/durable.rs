//! Durable writes: a write and its `WAIT` / `WAITAOF` in one pipeline on one connection. `WAIT`
//! counts the replicas that have every write *this connection* made so far, so the wait must
//! follow the write on the same connection, and sending both together costs one round trip plus
//! the replicas' acknowledgement. `WAIT` blocks the connection in Redis until it returns, so
//! durable writes use connections of their own ([`crate::Client`]'s durable pool), never the
//! shared one that fetches and renewals depend on.

use redis::{Cmd, Value};

use super::call::{is_noscript, ScriptCall};
use super::Conn;
use crate::durability::{Acked, Durability};
use crate::{Error, Result};

/// The `WAIT` or `WAITAOF` a durable write is followed by, built once per write from its
/// [`Durability`]; the domain holds it without knowing the command.
#[derive(Clone)]
pub(crate) struct WaitFor(Cmd);

/// The command that waits for `durability` (none for [`Durability::Async`]).
pub(crate) fn wait_cmd(durability: &Durability) -> Option<WaitFor> {
    let cmd = match *durability {
        Durability::Async => return None,
        Durability::Replicas { count, timeout } => {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(count).arg(timeout_ms(timeout));
            cmd
        }
        Durability::Aof {
            local,
            replicas,
            timeout,
        } => {
            let mut cmd = redis::cmd("WAITAOF");
            cmd.arg(u8::from(local))
                .arg(replicas)
                .arg(timeout_ms(timeout));
            cmd
        }
    };
    Some(WaitFor(cmd))
}

fn timeout_ms(timeout: std::time::Duration) -> u64 {
    // 0 would be "forever" to Redis; Durability::check refuses it, this is belt and braces.
    (timeout.as_millis() as u64).max(1)
}

/// What a write (its commands, in `MULTI`/`EXEC` when `atomic`) followed by its wait returned.
pub(crate) struct Written {
    /// The commands' replies (the transaction's, when atomic), errors included as values.
    pub(crate) replies: Vec<Value>,
    pub(crate) acked: Acked,
}

/// Sends `cmds` (wrapped in `MULTI`/`EXEC` when `atomic`) and then `wait`, in one pipeline.
/// An error reply of a command becomes the error (the wait's reply is then moot); an aborted
/// transaction wrote nothing.
pub(crate) async fn write_and_wait(
    conn: &mut Conn,
    cmds: &[Cmd],
    atomic: bool,
    wait: &WaitFor,
) -> Result<Written> {
    let mut pipe = redis::pipe();
    // Every reply comes back as a value, so the wait's count is read even when a command of a
    // plain pipeline was refused (and errors are reported here, one way).
    pipe.ignore_errors();
    if atomic {
        pipe.cmd("MULTI");
    }
    for cmd in cmds {
        pipe.add_command(cmd.clone());
    }
    if atomic {
        pipe.cmd("EXEC");
    }
    pipe.add_command(wait.0.clone());
    let mut replies: Vec<Value> = pipe.query_async(conn).await.map_err(Error::from_redis)?;
    let wait_reply = replies
        .pop()
        .ok_or_else(|| Error::Protocol("no reply to WAIT".into()))?;
    let replies = if atomic {
        // MULTI's OK, one QUEUED (or a queueing error, e.g. OOM) per command, then EXEC's array.
        let exec = replies.pop();
        if let Some(refused) = replies.iter().find_map(server_error) {
            return Err(refused);
        }
        match exec {
            Some(Value::Array(items)) => items,
            Some(Value::ServerError(e)) => return Err(Error::from_redis(e.into())),
            other => {
                return Err(Error::Protocol(format!(
                    "{other:?} where EXEC's replies belong"
                )))
            }
        }
    } else {
        replies
    };
    if let Some(refused) = replies.iter().find_map(server_error) {
        return Err(refused);
    }
    Ok(Written {
        replies,
        acked: parse_ack(wait_reply)?,
    })
}

/// Runs one script call followed by `wait`; on `NOSCRIPT` (nothing ran) loads the script and
/// sends both again.
pub(crate) async fn run_and_wait(
    conn: &mut Conn,
    call: &ScriptCall,
    wait: &WaitFor,
) -> Result<Written> {
    match write_and_wait(conn, std::slice::from_ref(call.cmd()), false, wait).await {
        Err(Error::Redis { source, .. })
            if source
                .downcast_ref::<redis::RedisError>()
                .is_some_and(is_noscript) =>
        {
            call.load(conn).await?;
            write_and_wait(conn, std::slice::from_ref(call.cmd()), false, wait).await
        }
        other => other,
    }
}

fn server_error(value: &Value) -> Option<Error> {
    match value {
        Value::ServerError(e) => Some(Error::from_redis(e.clone().into())),
        _ => None,
    }
}

/// `WAIT`'s count, or `WAITAOF`'s `[local, replicas]`.
fn parse_ack(reply: Value) -> Result<Acked> {
    let count = |v: &Value| match v {
        Value::Int(n) => u32::try_from(*n).ok(),
        _ => None,
    };
    match &reply {
        Value::Int(_) => count(&reply).map(|replicas| Acked {
            local: true,
            replicas,
        }),
        Value::Array(items) => match items.as_slice() {
            [local, replicas] => count(local)
                .zip(count(replicas))
                .map(|(local, replicas)| Acked {
                    local: local > 0,
                    replicas,
                }),
            _ => None,
        },
        Value::ServerError(e) => return Err(wait_refused(e)),
        _ => None,
    }
    .ok_or_else(|| Error::Protocol(format!("{reply:?} where WAIT's count belongs")))
}

/// A refused `WAIT`/`WAITAOF` after a write that ran: say so.
fn wait_refused(e: &redis::ServerError) -> Error {
    let error = redis::RedisError::from(e.clone());
    Error::Redis {
        message: format!(
            "the write ran on the primary, but Redis refused to wait for its copies: {error}"
        ),
        source: Box::new(error),
    }
}

/// Whether the server knows `WAITAOF` (Redis 7.2 and later): `COMMAND INFO WAITAOF` answers
/// nil for an unknown command. A user not allowed `COMMAND` gets the benefit of the doubt.
pub(crate) async fn supports_waitaof(conn: &mut Conn) -> Result<bool> {
    let reply: std::result::Result<Value, _> =
        super::call::query(redis::cmd("COMMAND").arg("INFO").arg("WAITAOF"), conn).await;
    match reply {
        Ok(Value::Array(items)) => Ok(!matches!(items.first(), None | Some(Value::Nil))),
        Ok(_) => Ok(true),
        Err(e) if e.is_no_permission() => Ok(true),
        Err(e) => Err(e),
    }
}

/// `WAIT` (or `WAITAOF`) alone, on the connection that just wrote, for writes that could not be
/// pipelined with it (a worker's outcome batch of several script calls).
pub(crate) async fn wait_alone(conn: &mut Conn, wait: &WaitFor) -> Result<Acked> {
    let reply: Value = super::call::query(&wait.0, conn).await?;
    parse_ack(reply)
}
