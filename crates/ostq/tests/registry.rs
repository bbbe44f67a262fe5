//! The worker registry: every running worker is listed with what it serves and how busy it is; a
//! worker that stops cleanly leaves at once, one that dies leaves within three heartbeats.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{setup, spawn, wait_until};
use ostq::{BoxError, Job, Worker};

const WAIT: Duration = Duration::from_secs(10);
const BEAT: Duration = Duration::from_millis(200);

/// A worker on `a` and `b` whose jobs wait until `release` is notified.
fn blocking_worker(client: &ostq::Client, release: &std::sync::Arc<tokio::sync::Notify>) -> Worker {
    let release = release.clone();
    Worker::builder(client.clone())
        .queue("a")
        .queue("b")
        .concurrency(3)
        .heartbeat(BEAT)
        .handler(move |_job: Job| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok::<_, BoxError>(())
            }
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_running_worker_is_listed_with_its_queues_and_busy_slots() {
    let (_server, client) = setup().await;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let running = spawn(blocking_worker(&client, &release));
    assert!(
        wait_until(WAIT, || async {
            client.workers().await.unwrap().len() == 1
        })
        .await
    );
    let worker = client.workers().await.unwrap().remove(0);
    assert_eq!(worker.pid, std::process::id());
    assert_eq!(worker.queues, ["a", "b"]);
    assert!(worker.serves("b") && !worker.serves("c"));
    assert_eq!(worker.concurrency, 3);
    assert_eq!(worker.busy, 0);
    assert_eq!(worker.version, env!("CARGO_PKG_VERSION"));
    assert!(!worker.host.is_empty());
    assert!(worker
        .id
        .starts_with(&format!("{}:{}:", worker.host, worker.pid)));
    assert!(worker.last_seen_ms >= worker.started_at_ms && worker.started_at_ms > 0);

    client.queue("a").push_bulk(["1", "2"]).await.unwrap();
    assert!(
        wait_until(WAIT, || async {
            client.workers().await.unwrap().first().map(|w| w.busy) == Some(2)
        })
        .await,
        "busy slots never showed"
    );
    release.notify_waiters();
    release.notify_one();
    running.shutdown().await;
    // A clean stop removes the entry at once: no wait for its expiry.
    assert!(client.workers().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_worker_that_dies_disappears_within_three_heartbeats() {
    let (server, client) = setup().await;
    let url = server.url();
    // The worker runs on a runtime of its own; dropping that runtime stops every task at its next
    // await without any cleanup, as a SIGKILL would (its entry is not removed).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.spawn(async move {
        let client = ostq::Client::connect(&url).await.unwrap();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        blocking_worker(&client, &release)
            .run_until(std::future::pending())
            .await
    });
    assert!(
        wait_until(WAIT, || async {
            client.workers().await.unwrap().len() == 1
        })
        .await
    );
    let died = Instant::now();
    runtime.shutdown_background();
    assert!(
        wait_until(WAIT, || async {
            client.workers().await.unwrap().is_empty()
        })
        .await,
        "a dead worker stayed in the registry"
    );
    let gone_after = died.elapsed();
    assert!(
        gone_after <= BEAT * 3 + Duration::from_millis(500),
        "gone after {gone_after:?}, more than three heartbeats"
    );
    // Its id was pruned from the index too, not only its entry expired.
    assert_eq!(server.cli(&["ZCARD", "ostq:workers"]).unwrap().trim(), "0");
}
