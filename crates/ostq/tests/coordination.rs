//! Coordination between queues and workers: weighted and strict queue order, pause and resume,
//! and a rate limit shared by all workers.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Job, Worker};

const WAIT: Duration = Duration::from_secs(20);

fn recorder(
    log: &Arc<Mutex<Vec<String>>>,
) -> impl Fn(Job) -> std::future::Ready<Result<(), BoxError>> + Clone {
    let log = log.clone();
    move |job: Job| {
        log.lock().unwrap().push(job.queue.clone());
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn weights_3_to_1_give_three_quarters_of_the_fetches() {
    let (_server, client) = setup().await;
    for name in ["high", "low"] {
        client
            .queue(name)
            .push_bulk((0..5000).map(|i| i.to_string()))
            .await
            .unwrap();
    }
    let log = Arc::new(Mutex::new(Vec::new()));
    let running = spawn(
        Worker::builder(client.clone())
            .weighted_queue("high", 3)
            .weighted_queue("low", 1)
            .concurrency(1) // one job per fetch: each fetch is one draw
            .prefetch(0) // (prefetching makes rounds of ~100 jobs: too few draws to count)
            .handler(recorder(&log))
            .build()
            .unwrap(),
    );
    assert!(common::wait_until(WAIT, || async { log.lock().unwrap().len() >= 4000 }).await);
    running.shutdown().await;
    let log = log.lock().unwrap();
    let high = log[..4000].iter().filter(|q| *q == "high").count();
    let share = high as f64 / 4000.0;
    assert!(
        (0.70..=0.80).contains(&share),
        "high got {share:.3} of 4000 fetches"
    );
}

#[tokio::test]
async fn strict_order_serves_later_queues_only_when_earlier_ones_are_empty() {
    let (_server, client) = setup().await;
    client
        .queue("first")
        .push_bulk((0..200).map(|i| i.to_string()))
        .await
        .unwrap();
    client
        .queue("second")
        .push_bulk((0..200).map(|i| i.to_string()))
        .await
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let running = spawn(
        Worker::builder(client.clone())
            .queue("first")
            .queue("second")
            .strict_order()
            .concurrency(1)
            .handler(recorder(&log))
            .build()
            .unwrap(),
    );
    assert!(common::wait_until(WAIT, || async { log.lock().unwrap().len() == 400 }).await);
    running.shutdown().await;
    let log = log.lock().unwrap();
    assert!(
        log[..200].iter().all(|q| q == "first"),
        "first queue drained first"
    );
    assert!(log[200..].iter().all(|q| q == "second"));
}

#[tokio::test]
async fn a_paused_queue_grows_while_the_worker_idles_then_drains_on_resume() {
    let (_server, client) = setup().await;
    let queue = client.queue("gated");
    queue.pause().await.unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("gated")
            .handler(|_job: Job| async { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    for i in 0..5 {
        queue
            .push_bulk((0..20).map(|j| format!("{i}-{j}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts = queue.counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.processed_total, counts.paused),
        (100, 0, true)
    );
    queue.resume().await.unwrap();
    wait_counts(&queue, WAIT, |c| c.processed_total == 100 && c.pending == 0).await;
    running.shutdown().await;
}

#[tokio::test]
async fn a_rate_limit_holds_across_two_workers() {
    let (_server, client) = setup().await;
    let queue = client.queue("limited");
    queue
        .set_rate_limit(50, Duration::from_secs(1))
        .await
        .unwrap();
    queue
        .push_bulk((0..2000).map(|i| i.to_string()))
        .await
        .unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let started = started.clone();
            spawn(
                Worker::builder(client.clone())
                    .queue("limited")
                    .concurrency(20)
                    .handler(move |_job: Job| {
                        started.fetch_add(1, Ordering::SeqCst);
                        async { Ok::<_, BoxError>(()) }
                    })
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    // After the initial burst (a full bucket), measure the steady rate over 3 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (from, t0) = (started.load(Ordering::SeqCst), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rate = (started.load(Ordering::SeqCst) - from) as f64 / t0.elapsed().as_secs_f64();
    for worker in workers {
        worker.shutdown().await;
    }
    assert!(
        (45.0..=55.0).contains(&rate),
        "{rate:.1} jobs/s for a limit of 50/s"
    );
    queue.clear_rate_limit().await.unwrap();
}
