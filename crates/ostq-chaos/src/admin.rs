//! The run's private `redis-server` (an `ostq_testkit::RedisServer`, AOF on) and what the run
//! sends it by hand: the Redis-wide faults (`CLIENT KILL`, `DEBUG SLEEP`, a restart), malformed
//! entries pushed as a foreign producer would, and the raw reads of the post-mortem. Commands go
//! through the testkit's RESP client (`ostq_testkit::Resp`), on a blocking thread.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use ostq_testkit::{RedisServer, Reply, Resp};

/// How long a (re)started server may take to answer `PING`, and `SHUTDOWN` to finish.
const SERVER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one admin command may take (`DEBUG SLEEP 2` blocks for 2 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the run's redis-server in `dir` (created if needed, kept after the server is gone):
/// `appendonly yes`, `appendfsync everysec`, no RDB snapshots, `DEBUG` allowed.
pub(crate) async fn start(dir: PathBuf) -> anyhow::Result<RedisServer> {
    tokio::task::spawn_blocking(move || {
        RedisServer::builder()
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", ""])
            .enable_debug_command()
            .dir(dir)
            .timeout(SERVER_TIMEOUT)
            .install_hint("apt-get install redis-server (or run scripts/chaos, which does it)")
            .start()
    })
    .await?
    .context("redis-server did not start")
}

/// `SHUTDOWN` (which writes and fsyncs the AOF), then a new server on the same port and
/// directory, which loads the same AOF. Returns how long Redis was unavailable.
///
/// Blocks this thread (the run's runtime is multi-threaded: its other tasks go on).
pub(crate) fn restart(redis: &mut RedisServer) -> anyhow::Result<Duration> {
    let began = Instant::now();
    tokio::task::block_in_place(|| redis.restart())?;
    Ok(began.elapsed())
}

/// A new connection for administrative commands, with a long reply timeout.
pub(crate) fn connect(port: u16) -> anyhow::Result<Resp> {
    let mut resp = Resp::connect(port).context("cannot connect to redis-server")?;
    resp.set_timeout(COMMAND_TIMEOUT)?;
    Ok(resp)
}

/// Sends one command on a connection of its own, on a blocking thread; an error reply is an
/// error.
pub(crate) async fn command<A: AsRef<[u8]>>(port: u16, args: &[A]) -> anyhow::Result<Reply> {
    let args: Vec<Vec<u8>> = args.iter().map(|arg| arg.as_ref().to_vec()).collect();
    tokio::task::spawn_blocking(move || connect(port)?.command(&args)?.into_result()).await?
}

/// How many keys match `pattern` (`SCAN`).
pub(crate) fn count_keys(port: u16, pattern: &str) -> anyhow::Result<u64> {
    let mut resp = connect(port)?;
    let mut cursor = b"0".to_vec();
    let mut total = 0;
    loop {
        let reply = resp
            .command(&[
                b"SCAN".as_slice(),
                &cursor,
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"1000",
            ])?
            .into_result()?;
        let bad = || anyhow!("unexpected SCAN reply");
        let [next, keys] =
            <[Reply; 2]>::try_from(reply.into_array().ok_or_else(bad)?).map_err(|_| bad())?;
        total += keys.into_bytes_list().ok_or_else(bad)?.len() as u64;
        cursor = next.into_bytes().ok_or_else(bad)?;
        if cursor == b"0" {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_faults_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = start(dir.path().join("redis")).await.unwrap();
        let port = redis.port();
        let appendonly = command(port, &["CONFIG", "GET", "appendonly"])
            .await
            .unwrap();
        assert_eq!(
            appendonly.into_bytes_list().unwrap(),
            vec![b"appendonly".to_vec(), b"yes".to_vec()]
        );
        // DEBUG is allowed, and a sleep longer than the default reply timeout is waited for.
        let began = Instant::now();
        command(port, &["DEBUG", "SLEEP", "2.1"]).await.unwrap();
        assert!(began.elapsed() >= Duration::from_secs(2));
        // An error reply is an error.
        assert!(command(port, &["NOSUCHCOMMAND"]).await.is_err());
        for i in 0..2500 {
            let key = format!("ostq:{{chaos}}:job:{i}");
            command(port, &["SET", key.as_str(), "1"]).await.unwrap();
        }
        command(port, &["SET", "other", "1"]).await.unwrap();
        assert_eq!(count_keys(port, "ostq:{chaos}:job:*").unwrap(), 2500);
        // Written before the restart, read from the AOF after it, on the same port.
        let down = restart(&mut redis).unwrap();
        assert!(down < SERVER_TIMEOUT);
        assert_eq!(redis.port(), port);
        assert_eq!(count_keys(port, "*").unwrap(), 2501);
        let killed = command(port, &["CLIENT", "KILL", "TYPE", "normal"])
            .await
            .unwrap();
        assert_eq!(killed.as_integer(), Some(0));
        drop(redis);
        assert!(dir.path().join("redis").join("redis.log").exists());
        assert!(command(port, &["PING"]).await.is_err());
    }
}
