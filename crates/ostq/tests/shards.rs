//! Sharded queues on one Redis server (design §19): every shard lives on the one server, which
//! is still correct. Routing, the admin API over the shards, the rate limit's split, and
//! resharding 1 → 3 → 2 with every job done exactly once. The cluster placement is tested in
//! tests/cluster.rs.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Job, JobState, PushOptions, Worker};

#[tokio::test]
async fn shard_names_are_reserved_and_counts_are_checked() {
    let (_server, client) = setup().await;
    assert!(matches!(
        client.queue("a#1.2").push("x").await,
        Err(ostq::Error::Config(_))
    ));
    let queue = client.queue("q");
    for bad in [0, 65] {
        assert!(matches!(
            queue.set_shards(bad).await,
            Err(ostq::Error::Config(_))
        ));
    }
    // A rate limit below the shard count cannot be split: refused before anything is written.
    queue
        .set_rate_limit(2, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        queue.set_shards(3).await,
        Err(ostq::Error::Config(_))
    ));
    assert_eq!(queue.shards().await.unwrap().count(), 1);
}

#[tokio::test]
async fn the_admin_api_sees_one_queue() {
    let (server, client) = setup().await;
    let queue = client.queue("q");
    let layout = queue.set_shards(3).await.unwrap();
    assert_eq!(layout.count(), 3);
    // Kept names: setting the same count again changes nothing.
    assert_eq!(queue.set_shards(3).await.unwrap(), layout);
    let ids = queue
        .push_bulk((0..30).map(|i| format!("{i}")))
        .await
        .unwrap();
    let later = queue
        .push_with("later", &PushOptions::new().delay(Duration::from_secs(600)))
        .await
        .unwrap();
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.pending, counts.scheduled), (30, 1));
    let listed = queue.jobs(JobState::Pending, 0, 100).await.unwrap();
    assert_eq!(listed.len(), 30);
    assert!(listed.iter().all(|j| j.queue == "q"));
    assert_eq!(
        queue.jobs(JobState::Pending, 25, 100).await.unwrap().len(),
        5
    );
    assert_eq!(queue.job(&ids[7]).await.unwrap().unwrap().queue, "q");
    assert_eq!(queue.delete(&[&ids[7], &ids[8]]).await.unwrap(), 2);
    assert!(queue.job(&ids[7]).await.unwrap().is_none());
    assert_eq!(queue.retry_now(&[&later]).await.unwrap(), 1);
    assert_eq!(queue.counts().await.unwrap().pending, 29);

    // Rate limit: 10 per second split 4/3/3, summed back.
    queue
        .set_rate_limit(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        queue.rate_limit().await.unwrap(),
        Some((10, Duration::from_secs(1)))
    );
    assert!(matches!(
        queue.set_rate_limit(2, Duration::from_secs(1)).await,
        Err(ostq::Error::Config(_))
    ));
    // 6 per 10 s is 2 per shard: with the limit on, a worker takes 6 of the 29 (each bucket
    // starts full and refills 0.12 jobs in the 0.6 s), not 2 and not 29.
    queue
        .set_rate_limit(6, Duration::from_secs(10))
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("q")
            .handler(|_job: Job| async move { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let done = queue.counts().await.unwrap().processed_total;
    assert_eq!(done, 6, "jobs in 0.6 s at 6 per 10 s over 3 shards");
    queue.clear_rate_limit().await.unwrap();
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 29).await;
    running.shutdown().await;
    assert_eq!(queue.purge(None).await.unwrap(), 0);
    // Removing the queue removes every shard's keys, the layout last.
    queue.push_bulk(["x", "y", "z"]).await.unwrap();
    assert!(
        queue
            .memory_usage(ostq::admin::Measure::Exact)
            .await
            .unwrap()
            .keys["pending"]
            > 0
    );
    assert!(matches!(
        queue.remove(false).await.unwrap(),
        ostq::admin::Removal::Removed { .. }
    ));
    let left = server.cli(&["KEYS", "ostq:{q*"]).unwrap();
    assert!(left.trim().is_empty(), "{left}");
}

#[tokio::test]
async fn resharding_one_three_two_does_every_job_once() {
    let (_server, client) = setup().await;
    let queue = client.queue("q");
    queue
        .push_bulk((0..50).map(|i| format!("a{i}")))
        .await
        .unwrap();
    let three = queue.set_shards(3).await.unwrap();
    queue
        .push_bulk((0..60).map(|i| format!("b{i}")))
        .await
        .unwrap();
    let two = queue.set_shards(2).await.unwrap();
    assert_eq!(two.shards, three.shards[..2]);
    assert_eq!(
        two.draining,
        three.shards[2..],
        "shard 2 holds 20 jobs: it drains"
    );
    queue
        .push_bulk((0..40).map(|i| format!("c{i}")))
        .await
        .unwrap();
    assert_eq!(queue.counts().await.unwrap().pending, 150);

    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let log = seen.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("q")
            .concurrency(4)
            .handler(move |job: Job| {
                let log = log.clone();
                async move {
                    *log.lock()
                        .unwrap()
                        .entry(job.payload_str()?.to_string())
                        .or_default() += 1;
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(20), |c| {
        c.processed_total == 150 && c.pending == 0 && c.active == 0
    })
    .await;
    running.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 150);
    assert!(seen.values().all(|&n| n == 1), "every job exactly once");
    // The drained shard is forgotten by the next change.
    let again = queue.set_shards(2).await.unwrap();
    assert!(again.draining.is_empty(), "{again:?}");
    // And growing back to 3 reuses no stale name it dropped: a fresh salt search (the same name
    // on one server, where every salt fits).
    assert_eq!(queue.set_shards(3).await.unwrap().count(), 3);
}
