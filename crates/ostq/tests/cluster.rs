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

/// Issue 3's coordination features on the cluster: unique keys, results on demand, events,
/// rate limits, pause and cron all stay inside their queue's slot.
#[tokio::test]
async fn coordination_features_work_on_a_cluster() {
    use futures::StreamExt;
    use ostq::events::{EventSink, EventsFrom};

    let cluster = RedisCluster::start(3).unwrap();
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    let queue = client.queue("billing"); // slot 12682: the third node
    queue.set_events(EventSink::Stream).await.unwrap();
    queue
        .set_rate_limit(1000, Duration::from_secs(1))
        .await
        .unwrap();
    let mut events = Box::pin(client.events("billing", EventsFrom::Now).await.unwrap());
    let unique = PushOptions::new().unique("invoice-7");
    let first = queue.push_with("invoice 7", &unique).await.unwrap();
    assert!(matches!(
        queue.push_with("invoice 7", &unique).await,
        Err(ostq::Error::Duplicate { .. })
    ));
    queue.pause().await.unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("billing")
            .handler(
                |job: Job| async move { Ok::<_, BoxError>(format!("paid {}", job.payload_str()?)) },
            )
            .build()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queue.counts().await.unwrap().processed_total, 0, "paused");
    queue.resume().await.unwrap();
    let result = queue
        .push_and_wait("invoice 8", PushOptions::new(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(result.as_deref(), Some(&b"paid invoice 8"[..]));
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 2).await;
    queue.push_with("invoice 7 again", &unique).await.unwrap(); // released on completion
    let scheduler = ostq::Scheduler::builder(client.clone())
        .every("sweep", "billing", Duration::from_millis(200), "sweep")
        .build()
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let ticking = tokio::spawn(scheduler.run_until(stop.clone().cancelled_owned()));
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total >= 5).await;
    stop.cancel();
    ticking.await.unwrap().unwrap();
    running.shutdown().await;
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.id.as_str(), event.queue.as_str()),
        (first.as_str(), "billing")
    );
}
