//! [`RedisSentinel`]: a private Redis Sentinel watching one primary.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::ports::free_port;
use crate::resp::{Reply, Resp};
use crate::server::{
    cli_text, log_tail, not_installed, INSTALL_HINT, LOG_FILE, READY_TIMEOUT, START_ATTEMPTS,
    STDERR_FILE,
};
use crate::RedisServer;

/// A private Redis Sentinel (`redis-server <conf> --sentinel`) watching one
/// primary, for failover tests. It runs in its own temporary directory on a
/// free port; dropping it kills the process and removes the directory.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use ostq_testkit::{RedisSentinel, RedisServer};
/// let primary = RedisServer::start()?;
/// let port = primary.port().to_string();
/// let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])?;
/// let sentinel = RedisSentinel::start(&primary, "jobs")?;
/// sentinel.wait_for_replicas("jobs", 1, std::time::Duration::from_secs(10))?;
/// sentinel.cli(&["SENTINEL", "FAILOVER", "jobs"])?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisSentinel {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts a sentinel that monitors `primary` as service `name` (quorum
    /// 1, down after 1 s, failover timeout 5 s) and waits until it answers
    /// `PING` and knows the primary.
    pub fn start(primary: &RedisServer, name: &str) -> anyhow::Result<RedisSentinel> {
        let mut last_error = anyhow!("redis sentinel was not started");
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("ostq-sentinel-")
                .tempdir()
                .context("creating a temporary directory for redis sentinel")?;
            let port = free_port();
            let config = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n\
                 dir {dir}\nlogfile {dir}/{LOG_FILE}\n\
                 sentinel monitor {name} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n",
                dir = dir.path().display(),
                primary = primary.port(),
            );
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(&conf, config).context("writing sentinel.conf")?;
            let output = std::fs::File::create(dir.path().join(STDERR_FILE))
                .context("creating the stderr file of redis sentinel")?;
            let output_too = output.try_clone().context("cloning a file handle")?;
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(output)
                .stderr(output_too)
                .spawn()
                .map_err(|error| match error.kind() {
                    std::io::ErrorKind::NotFound => not_installed("redis-server", INSTALL_HINT),
                    _ => anyhow::Error::new(error).context("spawning redis sentinel"),
                })?;
            let mut sentinel = RedisSentinel {
                child: Some(child),
                port,
                dir,
            };
            match sentinel.wait_ready(name) {
                Ok(()) => return Ok(sentinel),
                Err(error) => {
                    let log = sentinel.log_tail();
                    sentinel.kill();
                    if !log.contains("Address already in use") {
                        return Err(error.context(log));
                    }
                    last_error = error;
                }
            }
        }
        Err(last_error)
    }

    fn wait_ready(&mut self, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("redis sentinel exited early ({status})");
            }
            let known = Resp::connect(self.port)
                .and_then(|mut resp| resp.command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name]));
            // Host and port once it knows the primary; nil before.
            if matches!(known, Ok(Reply::Array(addr)) if addr.len() == 2) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("redis sentinel on port {} not ready", self.port);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the sentinel lists at least `n` replicas of `name` that
    /// it can promote (not down, link up), so that `SENTINEL FAILOVER` can
    /// pick one.
    pub fn wait_for_replicas(&self, name: &str, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let replicas = self.cli(&["SENTINEL", "REPLICAS", name])?;
            let good = replicas
                .split("\nname\n")
                .filter(|replica| {
                    replica.contains("master-link-status\nok") && replica.contains("flags\nslave\n")
                })
                .count();
            if good >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("sentinel knows {good} good replicas of {name}, wanted {n}:\n{replicas}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sentinel's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of the sentinel, for a `redis+sentinel://` URL.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against the sentinel (see [`RedisServer::cli`]).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        cli_text(self.port, args)
    }

    /// The last lines of the sentinel's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path(), 40)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.kill();
    }
}
