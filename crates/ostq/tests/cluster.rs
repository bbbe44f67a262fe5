//! The same code on a 3-node Redis Cluster: every key of a queue shares its hash tag, so each
//! script and pipeline stays in one slot. push → work → complete → retry → dead, on queues that
//! land on different nodes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{spawn, wait_counts, RedisCluster};
use ostq::{BoxError, Job, JobState, PushOptions, RetryPolicy, Worker};

#[tokio::test]
async fn push_work_complete_retry_dead_on_a_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    assert!(client.is_cluster());
    // Slots 3973, 7290 and 12682: one queue on each node of the 3-node cluster.
    let names = ["videos", "thumbs", "billing"];
    for name in names {
        let queue = client.queue(name);
        queue
            .push_bulk((0..20).map(|i| format!("ok-{i}")))
            .await
            .unwrap();
        queue
            .push_with("flaky", &PushOptions::new().track())
            .await
            .unwrap();
        queue
            .push_with("doomed", &PushOptions::new().max_attempts(2))
            .await
            .unwrap();
        queue
            .push_with(
                "later",
                &PushOptions::new()
                    .delay(Duration::from_millis(200))
                    .priority(3),
            )
            .await
            .unwrap();
    }
    let mut builder = Worker::builder(client.clone())
        .concurrency(8)
        .retry(RetryPolicy::fixed(Duration::from_millis(50)))
        .handler(|job: Job| async move {
            match (job.payload_str()?, job.attempt) {
                ("flaky", 1) | ("doomed", _) => Err::<&str, BoxError>("nope".into()),
                _ => Ok("done"),
            }
        });
    for name in names {
        builder = builder.queue(name);
    }
    let running = spawn(builder.build().unwrap());
    for name in names {
        let queue = client.queue(name);
        // 20 ok + later + flaky twice + doomed twice
        let counts = wait_counts(&queue, Duration::from_secs(15), |c| {
            c.processed_total == 25 && c.dead == 1
        })
        .await;
        assert_eq!(
            (
                counts.failed_total,
                counts.pending,
                counts.active,
                counts.retry
            ),
            (3, 0, 0, 0),
            "{name}"
        );
        let dead = queue.jobs(JobState::Dead, 0, 5).await.unwrap();
        assert_eq!(dead[0].last_error.as_deref(), Some("nope"));
        let flaky = queue.jobs(JobState::Completed, 0, 5).await.unwrap();
        assert_eq!(flaky[0].result.as_deref(), Some(&b"done"[..]));
        assert_eq!(queue.retry_all_dead().await.unwrap(), 1);
    }
    running.shutdown().await;
    let mut queues = client.queues().await.unwrap();
    queues.sort();
    assert_eq!(queues, ["billing", "thumbs", "videos"]);
}
