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
