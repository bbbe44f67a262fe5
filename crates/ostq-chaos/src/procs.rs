//! The processes a run owns: its private `redis-server` and the worker children (each with its own
//! fault proxy, `ostq_testkit::Proxy`, when the run uses proxies). They are killed
//! when their owner is dropped, so an error or a panic in the run leaves nothing behind.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ostq_testkit::Proxy;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

/// How long a (re)started server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `SHUTDOWN` may take before the server is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// A private `redis-server` on a free port, in its own directory, with the AOF on.
pub(crate) struct RedisProc {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    debug_flag: bool,
}

impl RedisProc {
    /// Starts a server in `dir` (created if needed) and waits until it answers.
    pub(crate) async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let debug_flag = major_version()? >= 7;
        let mut last_error = anyhow!("no port tried");
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = Self {
                port,
                dir: dir.to_path_buf(),
                child: None,
                debug_flag,
            };
            server.spawn()?;
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e, // most likely someone took the port: try another
            }
        }
        Err(last_error.context("redis-server did not start"))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.canonicalize()?;
        let out = File::options()
            .create(true)
            .append(true)
            .open(dir.join("redis.stdout"))?;
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", ""]);
        if self.debug_flag {
            cmd.args(["--enable-debug-command", "yes"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot run redis-server (is it installed? scripts/chaos installs it)")?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "redis-server exited ({status}) on port {}: {}",
                        self.port,
                        self.log_tail()
                    );
                }
            }
            if let Ok(mut conn) = self.admin().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                // While loading the AOF the server answers LOADING errors: keep waiting.
                if matches!(pong.as_deref(), Ok("PONG")) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "redis-server on port {} did not answer PING in time",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's port on 127.0.0.1 (the same after a restart).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The URL clients use.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A fresh connection for administrative commands (long reply limit: `DEBUG SLEEP` blocks).
    pub(crate) async fn admin(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// `SHUTDOWN` (which writes and fsyncs the AOF), then a new server on the same port and
    /// directory, which loads the same AOF. Returns how long Redis was unavailable.
    pub(crate) async fn restart(&mut self) -> anyhow::Result<Duration> {
        let began = Instant::now();
        if let Ok(mut conn) = self.admin().await {
            // The reply is normally a dropped connection: the server is gone.
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query_async(&mut conn).await;
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        while let Some(child) = self.child.as_mut() {
            if child.try_wait()?.is_some() {
                self.child = None;
                break;
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "redis-server did not shut down within {SHUTDOWN_TIMEOUT:?}: {}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.spawn()?;
        self.wait_ready().await?;
        Ok(began.elapsed())
    }

    /// The last lines of the server's log, for error messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// SIGKILL, if still running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The major version of the installed `redis-server`.
fn major_version() -> anyhow::Result<u32> {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .context("cannot run redis-server (is it installed? scripts/chaos installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "Redis server v=7.0.15 sha=..."
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the redis-server version from {text:?}"))
}

/// A port the kernel says is free now (never 6379).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..20 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if port != 6379 {
            return Ok(port);
        }
    }
    bail!("no free port")
}

/// One worker child. Its stdin is a pipe: when the run goes away, the pipe closes and the worker
/// stops by itself even if it was not killed.
struct WorkerProc {
    child: Child,
    _stdin: Option<ChildStdin>,
    pid: u32,
    /// The worker's own proxy to Redis, when the run uses proxies.
    proxy: Option<Arc<Proxy>>,
    /// Never killed and never given proxy faults (it keeps its proxy's latency).
    healthy: bool,
}

/// How the workers reach Redis: directly, or each through a proxy of its own.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RedisPath {
    Direct,
    Proxy { latency: Duration, jitter: Duration },
}

/// The worker children of a run.
pub(crate) struct Workers {
    exe: PathBuf,
    redis_port: u16,
    path: RedisPath,
    worker_args: Vec<String>,
    log_dir: PathBuf,
    running: Vec<WorkerProc>,
    started: usize,
    /// Every worker started: pid → (its stderr file, healthy).
    pub(crate) all: HashMap<u32, (PathBuf, bool)>,
}

impl Workers {
    /// No workers yet; `spawn` starts them, with `worker_args` after `ostq-chaos worker --url ..
    /// --queue .. --log ..`. Logs and stderr files go to `log_dir`.
    pub(crate) fn new(
        redis_port: u16,
        path: RedisPath,
        worker_args: Vec<String>,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("cannot find my own executable")?,
            redis_port,
            path,
            worker_args,
            log_dir: log_dir.to_path_buf(),
            running: Vec::new(),
            started: 0,
            all: HashMap::new(),
        })
    }

    /// Starts one more worker (through a new proxy of its own when the run uses proxies); returns
    /// its pid. A healthy worker is never picked by `kill_random` or `fault_victim`.
    pub(crate) fn spawn(&mut self, healthy: bool) -> anyhow::Result<u32> {
        self.started += 1;
        let (url, proxy) = match self.path {
            RedisPath::Direct => (format!("redis://127.0.0.1:{}", self.redis_port), None),
            RedisPath::Proxy { latency, jitter } => {
                let proxy = Proxy::start(self.redis_port).context("cannot start a proxy")?;
                proxy.set_latency(latency, jitter);
                (proxy.url(), Some(Arc::new(proxy)))
            }
        };
        let err_path = self.log_dir.join(format!("worker-{:03}.err", self.started));
        let stderr = File::create(&err_path)?;
        let mut child = Command::new(&self.exe)
            .arg("worker")
            .arg("--url")
            .arg(&url)
            .arg("--queue")
            .arg(crate::QUEUE)
            .arg("--log")
            .arg(&self.log_dir)
            .args(&self.worker_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("cannot start a worker process")?;
        let pid = child.id();
        let stdin = child.stdin.take();
        self.all.insert(pid, (err_path, healthy));
        self.running.push(WorkerProc {
            child,
            _stdin: stdin,
            pid,
            proxy,
            healthy,
        });
        Ok(pid)
    }

    /// SIGKILLs a random worker that is not healthy and waits for it; returns its pid.
    pub(crate) fn kill_random(&mut self) -> Option<u32> {
        let candidates: Vec<usize> = (0..self.running.len())
            .filter(|&i| !self.running[i].healthy)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = candidates[rand::rng().random_range(0..candidates.len())];
        let mut victim = self.running.swap_remove(i);
        let _ = victim.child.kill();
        let _ = victim.child.wait();
        Some(victim.pid)
    }

    /// A random worker that is not healthy, with its proxy: the target of a proxy fault.
    pub(crate) fn fault_victim(&self) -> Option<(u32, Arc<Proxy>)> {
        let candidates: Vec<(u32, Arc<Proxy>)> = self
            .running
            .iter()
            .filter(|w| !w.healthy)
            .filter_map(|w| w.proxy.as_ref().map(|p| (w.pid, Arc::clone(p))))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = rand::rng().random_range(0..candidates.len());
        candidates.into_iter().nth(i)
    }

    /// Workers that exited on their own since the last call: pid, exit status, healthy.
    pub(crate) fn reap(&mut self) -> Vec<(u32, String, bool)> {
        let mut gone = Vec::new();
        self.running.retain_mut(|w| match w.child.try_wait() {
            Ok(Some(status)) => {
                gone.push((w.pid, status.to_string(), w.healthy));
                false
            }
            Ok(None) => true,
            Err(e) => {
                gone.push((w.pid, e.to_string(), w.healthy));
                false
            }
        });
        gone
    }

    /// SIGKILLs every worker.
    pub(crate) fn kill_all(&mut self) {
        for mut w in self.running.drain(..) {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }

    /// Workers started so far, replacements included.
    pub(crate) fn started(&self) -> usize {
        self.started
    }

    /// Connections the workers' proxies accepted so far (the running workers' proxies only).
    pub(crate) fn proxy_connections(&self) -> u64 {
        self.running
            .iter()
            .filter_map(|w| w.proxy.as_ref())
            .map(|p| p.connections())
            .sum()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.kill_all();
    }
}
