//! Events: every transition of every job reaches a stream listener (and pub/sub subscribers).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{setup, spawn, wait_counts};
use futures::StreamExt;
use ostq::events::{EventKind, EventSink, EventsFrom};
use ostq::{BoxError, Job, PushOptions, RetryPolicy, Worker};

#[tokio::test]
async fn a_listener_sees_every_transition_of_1000_jobs() {
    let (server, client) = setup().await;
    let queue = client.queue("watched");
    queue.set_events(EventSink::Both).await.unwrap();
    assert_eq!(queue.events_sink().await.unwrap(), EventSink::Both);
    let mut events = Box::pin(client.events("watched", EventsFrom::Now).await.unwrap());

    let redis = redis::Client::open(server.url()).unwrap();
    let mut pubsub = redis.get_async_pubsub().await.unwrap();
    pubsub.subscribe("ostq:{watched}:events").await.unwrap();

    queue
        .push_bulk((0..900).map(|i| format!("ok {i}")))
        .await
        .unwrap();
    queue
        .push_bulk((0..50).map(|i| format!("flaky {i}")))
        .await
        .unwrap();
    queue
        .push_bulk_with(
            (0..50).map(|i| format!("bad {i}")),
            &PushOptions::new().max_attempts(1),
        )
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("watched")
            .concurrency(50)
            .retry(RetryPolicy::fixed(Duration::from_millis(20)))
            .handler(|job: Job| async move {
                let text = job.payload_str()?;
                if text.starts_with("bad") || (text.starts_with("flaky") && job.attempt == 1) {
                    return Err::<(), BoxError>("nope".into());
                }
                Ok(())
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(20), |c| {
        c.processed_total == 1050 && c.pending == 0 && c.retry == 0
    })
    .await;
    running.shutdown().await;

    let expected = [
        (EventKind::Pushed, 1000),
        (EventKind::Started, 1050),
        (EventKind::Completed, 950),
        (EventKind::Failed, 50),
        (EventKind::Retried, 50),
        (EventKind::Dead, 50),
    ];
    let total: usize = expected.iter().map(|(_, n)| n).sum();
    let mut seen: HashMap<EventKind, usize> = HashMap::new();
    let mut per_job: HashMap<String, Vec<EventKind>> = HashMap::new();
    for _ in 0..total {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.queue, "watched");
        *seen.entry(event.event).or_default() += 1;
        per_job
            .entry(event.id.clone())
            .or_default()
            .push(event.event);
    }
    for (kind, n) in expected {
        assert_eq!(
            seen.get(&kind).copied().unwrap_or(0),
            n,
            "{kind:?}: {seen:?}"
        );
    }
    // Per job, the transitions come in order.
    let flaky = per_job
        .values()
        .find(|k| k.contains(&EventKind::Retried))
        .unwrap();
    assert_eq!(
        flaky,
        &[
            EventKind::Pushed,
            EventKind::Started,
            EventKind::Failed,
            EventKind::Retried,
            EventKind::Started,
            EventKind::Completed
        ]
    );
    // Live subscribers got the same events.
    let mut messages = pubsub.on_message();
    for _ in 0..total {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap();
        let payload: String = msg.get_payload().unwrap();
        assert!(payload.contains("\"queue\":\"watched\""), "{payload}");
    }
}

#[tokio::test]
async fn events_are_off_by_default_and_cost_nothing() {
    let (server, client) = setup().await;
    let queue = client.queue("quiet");
    queue.push("x").await.unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("quiet")
            .handler(|_job: Job| async { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 1).await;
    running.shutdown().await;
    assert_eq!(server.cli(&["EXISTS", "ostq:{quiet}:events"]).unwrap(), "0");
}
