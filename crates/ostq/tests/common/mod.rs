//! Helpers shared by the integration tests: private servers, workers in the background, waiting.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

pub use ostq_testkit::{RedisCluster, RedisServer};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A private redis-server and a client connected to it.
pub async fn setup() -> (RedisServer, ostq::Client) {
    let server = RedisServer::start().unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    (server, client)
}

/// A worker running in the background until `stop` is cancelled.
pub struct Running {
    pub stop: CancellationToken,
    pub handle: JoinHandle<ostq::Result<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

pub fn spawn(worker: ostq::Worker) -> Running {
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move { worker.run_until(token.cancelled_owned()).await });
    Running { stop, handle }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}

/// Waits until the queue's counts satisfy `pred`; panics with the last counts otherwise.
pub async fn wait_counts(
    queue: &ostq::Queue,
    timeout: Duration,
    pred: impl Fn(&ostq::QueueCounts) -> bool,
) -> ostq::QueueCounts {
    let start = Instant::now();
    let mut last = None;
    loop {
        // A read may fail while a test breaks the connection on purpose: ask again.
        match queue.counts().await {
            Ok(counts) if pred(&counts) => return counts,
            Ok(counts) => last = Some(counts),
            Err(e) => eprintln!("counts: {e}"),
        }
        if start.elapsed() > timeout {
            panic!("counts never matched: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `MONITOR` on a direct connection (redis-cli), keeping the lines that contain `needle`
/// (compared in lower case): what Redis was asked, in order, as it saw it, with its timestamps.
pub struct Monitor {
    child: std::process::Child,
    reader: std::thread::JoinHandle<Vec<String>>,
}

impl Monitor {
    pub fn start(port: u16, needle: &str) -> Monitor {
        let mut child = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-cli");
        let stdout = child.stdout.take().unwrap();
        let needle = needle.to_ascii_lowercase();
        let reader = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(|line| line.ok())
                .filter(|line| line.to_ascii_lowercase().contains(&needle))
                .collect()
        });
        Monitor { child, reader }
    }

    /// Stops it; the lines kept.
    pub fn stop(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.join().unwrap()
    }
}
