//! The worker children a run owns (each with its own fault proxy, `ostq_testkit::Proxy`, when the
//! run uses proxies). They are killed when their owner is dropped, so an error or a panic in the
//! run leaves nothing behind; so is the run's `redis-server` (see `admin.rs`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ostq_testkit::Proxy;
use rand::Rng;

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
