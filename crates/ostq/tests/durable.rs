//! Durable pushes and outcomes (`WAIT` / `WAITAOF` after the write, docs/design.md §16) against a
//! private primary with one replica: what a push reports when the replica confirms, when too few
//! replicas exist, on every push path (plain `LPUSH`, `push.lua`, bulk in `MULTI`), and what the
//! worker does with durable outcomes. The failover figures are in `tests/sentinel.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{spawn, wait_counts, RedisServer};
use ostq::{BoxError, Durability, Job, PushOptions, Worker};

/// A primary and one replica that has caught up.
fn primary_and_replica() -> (RedisServer, RedisServer) {
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]).unwrap();
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let start = Instant::now();
    while !primary
        .cli(&["INFO", "replication"])
        .unwrap()
        .contains("connected_slaves:1")
        || !replica
            .cli(&["INFO", "replication"])
            .unwrap()
            .contains("master_link_status:up")
    {
        assert!(start.elapsed() < Duration::from_secs(10), "no replica");
        std::thread::sleep(Duration::from_millis(20));
    }
    (primary, replica)
}

fn one_replica() -> Durability {
    Durability::replicas(1, Duration::from_secs(2))
}

#[tokio::test]
async fn a_durable_push_is_on_the_replica_when_it_returns() {
    let (primary, replica) = primary_and_replica();
    let client = ostq::Client::builder(&primary.url())
        .durability(one_replica())
        .connect()
        .await
        .unwrap();
    let queue = client.queue("durable");
    // Plain (LPUSH), scripted (push.lua: tracked, delayed) and bulk across several commands
    // (MULTI/EXEC): each is on the replica as soon as the push returns.
    queue.push("plain").await.unwrap();
    queue
        .push_with("tracked", &PushOptions::new().track())
        .await
        .unwrap();
    queue
        .push_with(
            "later",
            &PushOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let bulk = queue
        .push_bulk((0..2500).map(|i| i.to_string()))
        .await
        .unwrap();
    assert_eq!(bulk.len(), 2500);
    let tracked = queue
        .push_bulk_with(
            (0..1500).map(|i| i.to_string()),
            &PushOptions::new().track(),
        )
        .await
        .unwrap();
    assert_eq!(tracked.len(), 1500);
    // No waiting for replication here: the replica must have everything already.
    assert_eq!(
        replica.cli(&["LLEN", "ostq:{durable}:pending"]).unwrap(),
        "4002"
    );
    assert_eq!(
        replica.cli(&["ZCARD", "ostq:{durable}:scheduled"]).unwrap(),
        "1"
    );
    // A push may turn durability off for itself.
    queue
        .push_with("fast", &PushOptions::new().durable(Durability::Async))
        .await
        .unwrap();
    // A duplicate id is still refused before anything else.
    let opts = PushOptions::new().track().id("invoice-1");
    queue.push_with("1", &opts).await.unwrap();
    let err = queue.push_with("1", &opts).await.unwrap_err();
    assert!(matches!(err, ostq::Error::IdTaken { .. }), "{err}");
}

#[tokio::test]
async fn too_few_replicas_is_a_typed_error_and_the_job_is_on_the_primary() {
    let (primary, _replica) = primary_and_replica();
    let client = ostq::Client::connect(&primary.url()).await.unwrap();
    let queue = client.queue("short");
    let two = Durability::replicas(2, Duration::from_millis(100));
    let started = Instant::now();
    let err = queue
        .push_with("x", &PushOptions::new().durable(two))
        .await
        .unwrap_err();
    let ostq::Error::NotDurable {
        ids, acked, wanted, ..
    } = &err
    else {
        panic!("{err}")
    };
    // The one replica confirms, unless a loaded machine keeps it past the 100 ms.
    assert!(*acked <= 1, "{err}");
    assert_eq!((*wanted, ids.len()), (2, 1));
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "WAIT did not wait"
    );
    assert!(err.to_string().contains(" of 2 replicas"), "{err}");
    assert_eq!(primary.cli(&["LLEN", "ostq:{short}:pending"]).unwrap(), "1");
    // Retrying a tracked push with the same id: the first one survived, so it is refused.
    let opts = PushOptions::new().track().id("order-7").durable(two);
    assert!(matches!(
        queue.push_with("7", &opts).await.unwrap_err(),
        ostq::Error::NotDurable { .. }
    ));
    let err = queue.push_with("7", &opts).await.unwrap_err();
    assert!(matches!(err, ostq::Error::IdTaken { .. }), "{err}");
    // A bulk push names every job it wrote.
    let err = queue
        .push_bulk_with(["a", "b", "c"], &PushOptions::new().durable(two))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ostq::Error::NotDurable { ref ids, .. } if ids.len() == 3),
        "{err}"
    );
    // Plain pushes on the same client are not held up by a durable push's WAIT: durable writes
    // have connections of their own.
    let slow = Durability::replicas(2, Duration::from_secs(3));
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move {
            queue
                .push_with("y", &PushOptions::new().durable(slow))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    for _ in 0..10 {
        queue.push("z").await.unwrap();
    }
    assert!(
        !waiting.is_finished(),
        "the WAIT should still be blocking ({:?})",
        started.elapsed()
    );
    assert!(matches!(
        waiting.await.unwrap().unwrap_err(),
        ostq::Error::NotDurable { .. }
    ));
}

#[tokio::test]
async fn bad_durability_settings_are_refused_before_anything_is_written() {
    let (primary, _replica) = primary_and_replica();
    let client = ostq::Client::connect(&primary.url()).await.unwrap();
    let queue = client.queue("refused");
    for bad in [
        Durability::replicas(0, Duration::from_secs(1)),
        Durability::replicas(1, Duration::ZERO),
        Durability::replicas(1, Duration::from_secs(3600)),
    ] {
        let err = queue
            .push_with("x", &PushOptions::new().durable(bad))
            .await
            .unwrap_err();
        assert!(matches!(err, ostq::Error::Config(_)), "{bad:?}: {err}");
    }
    let err = ostq::Client::builder(&primary.url())
        .durability(Durability::replicas(0, Duration::from_secs(1)))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, ostq::Error::Config(_)), "{err}");
    // WAITAOF exists from Redis 7.2 on: an older server refuses it up front, with a clear word.
    let knows_waitaof = primary.cli(&["COMMAND", "INFO", "WAITAOF"]).unwrap().trim() != "";
    let aof = Durability::aof(false, 1, Duration::from_millis(500));
    let result = queue.push_with("x", &PushOptions::new().durable(aof)).await;
    if knows_waitaof {
        // The replica has no AOF: it never confirms an fsync.
        assert!(result.is_err());
    } else {
        let err = result.unwrap_err();
        assert!(matches!(err, ostq::Error::Config(_)), "{err}");
        assert!(err.to_string().contains("WAITAOF"), "{err}");
        assert!(err.to_string().contains("7.2"), "{err}");
    }
    assert_eq!(
        primary.cli(&["LLEN", "ostq:{refused}:pending"]).unwrap(),
        if knows_waitaof { "1" } else { "0" }
    );
    assert_eq!(primary.cli(&["EXISTS", "ostq:queues"]).unwrap(), "0");
}

/// Durable outcomes: the worker's completions are on the replica once its batch is written; with
/// more replicas asked for than exist the worker still completes every job (it warns and goes on).
#[tokio::test]
async fn durable_outcomes_reach_the_replica_and_a_shortfall_does_not_stop_the_worker() {
    let (primary, replica) = primary_and_replica();
    let client = ostq::Client::connect(&primary.url()).await.unwrap();
    for (queue_name, durability) in [
        ("outcomes", one_replica()),
        (
            "short-outcomes",
            Durability::replicas(2, Duration::from_millis(50)),
        ),
    ] {
        let queue = client.queue(queue_name);
        let ids = queue
            .push_bulk_with((0..200).map(|i| i.to_string()), &PushOptions::new().track())
            .await
            .unwrap();
        let running = spawn(
            Worker::builder(client.clone())
                .queue(queue_name)
                .concurrency(20)
                .durable_outcomes(durability)
                .handler(|job: Job| async move { Ok::<_, BoxError>(job.id) })
                .build()
                .unwrap(),
        );
        wait_counts(&queue, Duration::from_secs(20), |c| {
            c.pending == 0 && c.active == 0
        })
        .await;
        running.shutdown().await;
        let status = |id: &str| {
            replica
                .cli(&["HGET", &format!("ostq:{{{queue_name}}}:job:{id}"), "state"])
                .unwrap()
        };
        if durability == one_replica() {
            for id in &ids {
                assert_eq!(status(id), "completed", "{id}");
            }
        }
        let counts = queue.counts().await.unwrap();
        assert_eq!(counts.processed_total, 200, "{counts:?}");
    }
}
