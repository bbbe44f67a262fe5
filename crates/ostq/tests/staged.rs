//! An idle worker serving one queue waits with its next lease group staged (design §7.2): its
//! `BLMOVE pending lease:<g> RIGHT LEFT` moves the next job pushed straight into the group, so the
//! job arrives with the wake-up and no script runs on its way; `claim.lua` then makes the group an
//! ordinary one, after the job started. These tests check what that must not break: a pause or a
//! rate limit set while the wait is blocked still holds the jobs pushed after it; a job moved
//! into the group of a worker lost before the claim is recovered, and the `active` figure stays
//! true; a claim that comes after the job's outcome changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, spawn, wait_counts, RedisServer};
use ostq::keys::QueueKeys;
use ostq::{BoxError, Job, Worker};

const WAIT: Duration = Duration::from_secs(10);

/// A worker on `queue` (concurrency 1) that counts the jobs it ran.
fn counting_worker(client: &ostq::Client, queue: &str, ran: Arc<AtomicUsize>) -> Worker {
    Worker::builder(client.clone())
        .queue(queue)
        .concurrency(1)
        .handler(move |_job: Job| {
            ran.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        })
        .build()
        .unwrap()
}

/// The stored `active` figure, raw (counts() clamps it at 0, which would hide a drift below).
fn raw_active(server: &RedisServer, keys: &QueueKeys) -> i64 {
    let out = server.cli(&["HGET", &keys.stats, "active"]).unwrap();
    out.trim().parse().unwrap_or(0)
}

/// Until `queue`'s worker has staged a group and blocked on it.
async fn until_staged(server: &RedisServer, keys: &QueueKeys) {
    let staged = common::wait_until(WAIT, || async {
        server.cli(&["SCARD", &keys.staged]).unwrap().trim() == "1"
    })
    .await;
    assert!(staged, "the idle worker staged no lease group");
    // (Its BLMOVE follows the fetch's reply at once.)
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn an_idle_worker_gets_the_next_job_moved_into_its_staged_group() {
    let (server, client) = setup().await;
    let keys = QueueKeys::new("mail").unwrap();
    // What Redis is asked: the wait that moves the job must be the one that delivered it.
    let monitor = common::Monitor::start(server.port(), "\"blmove\"");
    let ran = Arc::new(AtomicUsize::new(0));
    let running = spawn(counting_worker(&client, "mail", ran.clone()));
    until_staged(&server, &keys).await;

    let queue = client.queue("mail");
    for i in 0..3 {
        queue.push(format!("job {i}")).await.unwrap();
        let counts = wait_counts(&queue, WAIT, |c| c.processed_total == i + 1).await;
        assert_eq!(counts.failed_total, 0);
    }
    // Settled: no job counted as active, no group left staged or held.
    let counts = wait_counts(&queue, WAIT, |c| c.active == 0).await;
    assert_eq!((counts.pending, counts.processed_total), (0, 3));
    assert_eq!(raw_active(&server, &keys), 0);
    running.shutdown().await;
    assert_eq!(server.cli(&["SCARD", &keys.staged]).unwrap().trim(), "0");
    assert_eq!(server.cli(&["ZCARD", &keys.active]).unwrap().trim(), "0");
    let waits = monitor.stop();
    let into_groups = waits
        .iter()
        .filter(|w| w.contains(&format!("\"{}lease:", keys.prefix)))
        .count();
    assert!(
        into_groups >= 3,
        "the jobs were not moved into staged groups: {waits:#?}"
    );
}

#[tokio::test]
async fn a_pause_ends_staged_waits_before_a_job_pushed_after_it_can_run() {
    let (server, client) = setup().await;
    let keys = QueueKeys::new("mail").unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    // Two idle workers, each waiting on a staged group of its own.
    let first = spawn(counting_worker(&client, "mail", ran.clone()));
    let second = spawn(counting_worker(&client, "mail", ran.clone()));
    let both = common::wait_until(WAIT, || async {
        server.cli(&["SCARD", &keys.staged]).unwrap().trim() == "2"
    })
    .await;
    assert!(both, "the two idle workers did not both stage a group");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let queue = client.queue("mail");
    queue.pause().await.unwrap();
    queue.push("after the pause").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ran.load(Ordering::SeqCst), 0, "a job ran on a paused queue");
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.pending, counts.active), (1, 0), "{counts:?}");

    queue.resume().await.unwrap();
    wait_counts(&queue, WAIT, |c| c.processed_total == 1).await;
    first.shutdown().await;
    second.shutdown().await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(raw_active(&server, &keys), 0);
}

#[tokio::test]
async fn a_rate_limit_set_while_a_wait_is_staged_holds_the_next_jobs() {
    let (server, client) = setup().await;
    let keys = QueueKeys::new("mail").unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let running = spawn(counting_worker(&client, "mail", ran.clone()));
    until_staged(&server, &keys).await;

    let queue = client.queue("mail");
    // One job per minute: the bucket holds one token.
    queue
        .set_rate_limit(1, Duration::from_secs(60))
        .await
        .unwrap();
    queue.push_bulk(["a", "b", "c"]).await.unwrap();
    wait_counts(&queue, WAIT, |c| c.processed_total >= 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.shutdown().await;
    // A job moved by a staged wait would have taken no token: two would have run.
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the rate limit let more through"
    );
    assert_eq!(queue.counts().await.unwrap().pending, 2);
}

/// The keys and arguments of `fetch.lua` for one call that stages `group`.
fn staging_fetch(server: &RedisServer, keys: &QueueKeys, group: u64, horizon_ms: u64) -> String {
    let mut args: Vec<String> = vec!["EVAL".into(), ostq::scripts::FETCH.into(), "15".into()];
    args.extend(keys.fetch_keys().iter().map(|k| k.to_string()));
    // prefix, want, lease ms, max attempts, dead cap, dead and completed retention, group,
    // start now ("" = all), staged group, horizon
    for arg in [
        keys.prefix.clone(),
        "1".into(),
        "30000".into(),
        "25".into(),
        "1000".into(),
        "600000".into(),
        "600000".into(),
        "7".into(),
        String::new(),
        group.to_string(),
        horizon_ms.to_string(),
    ] {
        args.push(arg);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    server.cli(&args).unwrap()
}

/// What a staged wait does when a job is pushed: moves the oldest pending entry into the lease
/// group. Returns the group's key.
fn move_into_group(server: &RedisServer, keys: &QueueKeys, group: u64) -> String {
    let lease = format!("{}lease:{group}", keys.prefix);
    server
        .cli(&["LMOVE", &keys.pending, &lease, "RIGHT", "LEFT"])
        .unwrap();
    lease
}

/// `claim.lua` of `group`, as the worker calls it; redis-cli's reply.
fn claim(server: &RedisServer, keys: &QueueKeys, group: u64, lease_ms: u64) -> String {
    let (group, lease_ms) = (group.to_string(), lease_ms.to_string());
    server
        .cli(&[
            "EVAL",
            ostq::scripts::CLAIM,
            "4",
            &keys.active,
            &keys.stats,
            &keys.config,
            &keys.events,
            &keys.prefix,
            &group,
            &lease_ms,
        ])
        .unwrap()
}

#[tokio::test]
async fn a_job_moved_into_the_staged_group_of_a_lost_worker_is_recovered() {
    let (server, client) = setup().await;
    let keys = QueueKeys::new("mail").unwrap();
    let queue = client.queue("mail");
    queue.push_bulk(Vec::<Vec<u8>>::new()).await.unwrap();
    // A worker stages group 42 for 300 ms, then is lost just after its wait moved a job into the
    // group: no claim ever comes.
    let reply = staging_fetch(&server, &keys, 42, 300);
    assert!(
        reply.lines().nth(3).is_some_and(|hold| hold.trim() == "3"),
        "{reply}"
    );
    let id = queue.push("lost with its worker").await.unwrap();
    move_into_group(&server, &keys, 42);
    assert_eq!(queue.counts().await.unwrap().pending, 0);

    // Another worker recovers it once the group's deadline passes and runs it: the lost start
    // counts as an attempt, and nothing is counted active that never was.
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("mail")
            .handler(move |job: Job| {
                seen.lock().unwrap().push((job.id.clone(), job.attempt));
                async { Ok::<_, BoxError>(()) }
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 2).await;
    running.shutdown().await;
    // (Processed twice: the lost attempt, and the run.)
    assert_eq!(
        (counts.recovered_total, counts.pending),
        (1, 0),
        "{counts:?}"
    );
    // (Its second attempt: the lost one counted.)
    assert_eq!(attempts.lock().unwrap().as_slice(), &[(id, 2)]);
    assert_eq!(raw_active(&server, &keys), 0);
    assert_eq!(server.cli(&["SCARD", &keys.staged]).unwrap().trim(), "0");
}

#[tokio::test]
async fn a_claim_after_the_jobs_outcome_changes_nothing() {
    let (server, client) = setup().await;
    let keys = QueueKeys::new("mail").unwrap();
    let queue = client.queue("mail");
    queue.push_bulk(Vec::<Vec<u8>>::new()).await.unwrap();
    staging_fetch(&server, &keys, 42, 60_000);
    queue.push("done before its claim").await.unwrap();
    let lease = move_into_group(&server, &keys, 42);
    // complete.lua for the whole group (all = 1, one job, no detail), as the keeper sends it.
    let mut complete: Vec<String> = vec!["EVAL".into(), ostq::scripts::COMPLETE.into(), "6".into()];
    for key in [
        &keys.active,
        &keys.completed,
        &keys.stats,
        &keys.config,
        &keys.events,
        &keys.started,
    ] {
        complete.push(key.clone());
    }
    for arg in [&keys.prefix, "3600", "42", "1", "1", "0"] {
        complete.push(arg.to_string());
    }
    let complete: Vec<&str> = complete.iter().map(String::as_str).collect();
    assert_eq!(server.cli(&complete).unwrap().trim(), "0");
    // Then the claim: nothing to claim any more.
    let claim = claim(&server, &keys, 42, 30000);
    assert_eq!(claim.trim(), "0");
    let counts = queue.counts().await.unwrap();
    assert_eq!(
        (counts.processed_total, counts.active),
        (1, 0),
        "{counts:?}"
    );
    assert_eq!(raw_active(&server, &keys), 0);
    assert_eq!(server.cli(&["SCARD", &keys.staged]).unwrap().trim(), "0");
    assert_eq!(server.cli(&["EXISTS", &lease]).unwrap().trim(), "0");
}

#[tokio::test]
async fn a_job_a_late_wait_moves_into_a_recovered_group_is_adopted_by_its_claim() {
    let (server, client) = setup().await;
    let keys = QueueKeys::new("mail").unwrap();
    let queue = client.queue("mail");
    queue.push_bulk(Vec::<Vec<u8>>::new()).await.unwrap();
    // Group 42 is staged for 100 ms; its worker freezes for longer, and another fetch recovers
    // the group (empty) meanwhile.
    staging_fetch(&server, &keys, 42, 100);
    tokio::time::sleep(Duration::from_millis(250)).await;
    staging_fetch(&server, &keys, 43, 60_000);
    assert_eq!(
        server.cli(&["ZSCORE", &keys.active, "42"]).unwrap().trim(),
        ""
    );
    // Then its wait reaches Redis and moves a job into the group nobody holds any more.
    queue.push("moved too late").await.unwrap();
    let lease = move_into_group(&server, &keys, 42);
    // Its claim adopts the job (a lease of 100 ms: the frozen worker never comes back).
    let claim = claim(&server, &keys, 42, 100);
    assert_eq!(claim.lines().next().map(str::trim), Some("1"), "{claim}");
    assert_eq!(raw_active(&server, &keys), 1);
    // So the job is recovered when that lease expires, and runs: nothing is lost.
    let ran = Arc::new(AtomicUsize::new(0));
    let running = spawn(counting_worker(&client, "mail", ran.clone()));
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 2).await;
    running.shutdown().await;
    assert_eq!((ran.load(Ordering::SeqCst), counts.pending), (1, 0));
    assert_eq!(raw_active(&server, &keys), 0);
    assert_eq!(server.cli(&["EXISTS", &lease]).unwrap().trim(), "0");
}

/// A job an idle worker runs before its claim reaches Redis still has its `started` event, before
/// its `completed` (the job's outcome then emits it; the claim finds the group settled). On a
/// runtime of several threads the job and its claim race (the Python package's example lost its
/// `started` event that way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_run_from_a_staged_wait_is_started_before_it_completes() {
    use futures::StreamExt;
    use ostq::events::{EventKind, EventSink, EventsFrom};
    let (server, client) = setup().await;
    let keys = QueueKeys::new("mail").unwrap();
    let queue = client.queue("mail");
    queue.set_events(EventSink::Stream).await.unwrap();
    let mut events = Box::pin(client.events("mail", EventsFrom::Now).await.unwrap());
    let ran = Arc::new(AtomicUsize::new(0));
    let running = spawn(counting_worker(&client, "mail", ran.clone()));
    let mut ids = Vec::new();
    for i in 0..20 {
        until_staged(&server, &keys).await;
        ids.push(queue.push(format!("job {i}")).await.unwrap());
        wait_counts(&queue, WAIT, |c| c.processed_total == i + 1).await;
    }
    running.shutdown().await;
    let mut seen: Vec<(String, EventKind)> = Vec::new();
    while seen
        .iter()
        .filter(|(_, k)| *k == EventKind::Completed)
        .count()
        < ids.len()
    {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("events stopped")
            .unwrap()
            .unwrap();
        seen.push((event.id.clone(), event.event));
    }
    for id in &ids {
        let kinds: Vec<EventKind> = seen
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, k)| *k)
            .collect();
        assert_eq!(
            kinds,
            [EventKind::Pushed, EventKind::Started, EventKind::Completed],
            "{id}"
        );
    }
}
