//! At-least-once delivery: a SIGKILLed worker's jobs are run again by another; graceful shutdown
//! gives unfinished jobs back at once; a late ack after a takeover changes nothing.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Job, JobState, PushOptions, Worker};

const WAIT: Duration = Duration::from_secs(15);

/// Not a test: the body of the child worker process that `sigkilled_worker_jobs_run_again`
/// starts (this test binary, re-executed). It leases jobs and never finishes them.
#[test]
#[ignore]
fn child_worker() {
    run_child(|client| {
        Worker::builder(client)
            .queue("transcode")
            .concurrency(50)
            .lease(Duration::from_secs(1))
            .handler(|_job: Job| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, BoxError>(())
            })
            .build()
            .unwrap()
    });
}

/// Runs the worker `build` makes until the process is killed, when this binary was started as a
/// child (`start_child`); does nothing in an ordinary test run.
fn run_child(build: impl FnOnce(ostq::Client) -> Worker) {
    let Ok(url) = std::env::var("OSTQ_CHILD_URL") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let client = ostq::Client::connect(&url).await.unwrap();
        build(client).run().await.unwrap();
    });
}

/// Not a test: the child worker of `a_crash_counts_no_attempt_for_jobs_parked_but_not_started`.
/// Quick jobs complete at once, so the worker leases ahead (prefetch); a `block` job signals its
/// start on the `signals` queue and never ends, so the jobs leased behind the two of them stay
/// parked.
#[test]
#[ignore]
fn child_parking_worker() {
    run_child(|client| {
        let signals = client.queue("signals");
        Worker::builder(client)
            .queue("parking")
            .concurrency(2)
            .lease(Duration::from_secs(1))
            .handler(move |job: Job| {
                let signals = signals.clone();
                async move {
                    if job.payload_str().ok() == Some("block") {
                        signals.push("started").await?;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap()
    });
}

/// A worker leases up to `prefetch` jobs beyond its free slots. When it is killed, the jobs it
/// had parked and not started go back without an attempt counted (design §16); the ones that
/// ran count theirs. Before start marks, every parked job came back as attempt 2 (and one with
/// `max_attempts(1)` went to the dead set without having run).
#[tokio::test]
async fn a_crash_counts_no_attempt_for_jobs_parked_but_not_started() {
    let (server, client) = setup().await;
    let queue = client.queue("parking");
    let mut payloads: Vec<String> = (0..3000).map(|i| format!("quick-{i}")).collect();
    payloads.extend(["block".to_string(), "block".to_string()]);
    payloads.extend((0..1000).map(|i| format!("after-{i}")));
    queue.push_bulk(payloads.iter().cloned()).await.unwrap();
    let signals = client.queue("signals");
    let mut child = start_child_named(&server, "child_parking_worker");
    wait_counts(&signals, WAIT, |c| c.pending == 2).await;
    // Both slots are blocked; what was leased behind them is parked (for up to 1 s). The start
    // marks go out within 50 ms of a start: wait for them, then kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let parked = queue.counts().await.unwrap().active.saturating_sub(2);
    child.kill().unwrap(); // SIGKILL: nothing is given back
    child.wait().unwrap();
    assert!(parked > 0, "no job was parked when the worker died");

    let ran = Arc::new(Mutex::new(Vec::new()));
    let ran2 = ran.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("parking")
            .concurrency(20)
            .handler(move |job: Job| {
                let ran = ran2.clone();
                async move {
                    let payload = job.payload_str().unwrap_or_default().to_string();
                    ran.lock()
                        .unwrap()
                        .push((payload, job.attempt, job.last_error.clone()));
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| {
        c.pending == 0 && c.active == 0 && c.recovered_total > 0
    })
    .await;
    running.shutdown().await;
    assert_eq!((counts.dead, counts.retry), (0, 0));
    let ran = ran.lock().unwrap().clone();
    let blocks: Vec<_> = ran.iter().filter(|r| r.0 == "block").collect();
    assert_eq!(blocks.len(), 2);
    for (_, attempt, error) in blocks {
        assert_eq!(*attempt, 2, "a job that ran counts its attempt");
        assert!(error
            .as_deref()
            .unwrap()
            .starts_with("lease expired: the worker"));
    }
    let after: Vec<_> = ran.iter().filter(|r| r.0.starts_with("after-")).collect();
    assert_eq!(
        after.len(),
        1000,
        "every job behind the blocked ones runs once"
    );
    for (payload, attempt, _) in &after {
        assert_eq!(
            *attempt, 1,
            "{payload} never ran, yet an attempt was counted"
        );
    }
    let unstarted = after
        .iter()
        .filter(|r| {
            r.2.as_deref() == Some("lease expired before the job started: its worker was lost")
        })
        .count();
    assert!(
        unstarted > 0,
        "none of the {parked} parked jobs was recovered as unstarted"
    );
}

#[tokio::test]
async fn sigkilled_worker_jobs_run_again_elsewhere() {
    let (server, client) = setup().await;
    let queue = client.queue("transcode");
    let ids = queue
        .push_bulk((0..30).map(|i| format!("video-{i}")))
        .await
        .unwrap();
    let mut child = start_child(&server);
    let counts = wait_counts(&queue, WAIT, |c| c.active == 30).await;
    assert_eq!(counts.pending, 0);
    child.kill().unwrap(); // SIGKILL: no shutdown code runs
    child.wait().unwrap();
    let killed_at = Instant::now();

    let ran = Arc::new(Mutex::new(Vec::new()));
    let ran2 = ran.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("transcode")
            .concurrency(50)
            .handler(move |job: Job| {
                let ran = ran2.clone();
                async move {
                    ran.lock()
                        .unwrap()
                        .push((job.id.clone(), job.attempt, job.last_error.clone()));
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 60).await;
    let recovered_after = killed_at.elapsed();
    running.shutdown().await;
    assert_eq!(
        (counts.recovered_total, counts.failed_total, counts.active),
        (30, 30, 0)
    );
    // Lease 1 s: recovery within lease + 1 s (plus scheduling slack on a loaded machine).
    assert!(
        recovered_after < Duration::from_millis(2500),
        "took {recovered_after:?}"
    );
    let mut ran = ran.lock().unwrap().clone();
    ran.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        ran.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        expected
    );
    for (_, attempt, last_error) in ran {
        assert_eq!(attempt, 2, "the lost attempt counts");
        assert!(last_error.unwrap().starts_with("lease expired"));
    }
}

fn start_child(server: &common::RedisServer) -> std::process::Child {
    start_child_named(server, "child_worker")
}

/// This test binary again, running only the ignored child function `name`.
fn start_child_named(server: &common::RedisServer, name: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--ignored", "--nocapture"])
        .env("OSTQ_CHILD_URL", server.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_worker_ends_dead() {
    let (server, client) = setup().await;
    let queue = client.queue("transcode");
    let id = queue
        .push_with("poison", &PushOptions::new().max_attempts(2).track())
        .await
        .unwrap();
    for round in 0..2u64 {
        let mut child = start_child(&server);
        wait_counts(&queue, WAIT, |c| {
            c.active == 1 && c.recovered_total == round
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // The next worker to fetch finds the second lease expired: attempts are spent.
    let mut child = start_child(&server);
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        (counts.recovered_total, counts.active, counts.pending),
        (2, 0, 0)
    );
    let info = queue.job(&id).await.unwrap().unwrap();
    assert_eq!((info.state, info.attempts), (JobState::Dead, 2));
    assert!(info.last_error.unwrap().starts_with("lease expired"));
}

#[tokio::test]
async fn graceful_shutdown_returns_unfinished_jobs_at_once() {
    let (_server, client) = setup().await;
    let queue = client.queue("slow");
    queue
        .push_bulk((0..6).map(|i| i.to_string()))
        .await
        .unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let finished2 = finished.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("slow")
            .concurrency(4)
            .lease(Duration::from_secs(30))
            .shutdown_timeout(Duration::from_millis(300))
            .handler(move |job: Job| {
                let finished = finished2.clone();
                async move {
                    let quick = job.payload_str()? == "0";
                    tokio::time::sleep(if quick {
                        Duration::from_millis(100)
                    } else {
                        Duration::from_secs(60)
                    })
                    .await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.active == 4).await;
    let asked = Instant::now();
    running.shutdown().await;
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    // Job "0" finished within the grace time; the 3 others running were given back, not left to
    // their 30 s leases; the 2 never fetched stayed pending.
    let counts = queue.counts().await.unwrap();
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert_eq!(
        (
            counts.active,
            counts.pending,
            counts.processed_total,
            counts.failed_total
        ),
        (0, 5, 1, 0)
    );
    let pending = queue.jobs(JobState::Pending, 0, 10).await.unwrap();
    for job in &pending {
        assert_eq!(
            job.attempts, 0,
            "giving a job back does not count an attempt"
        );
    }
    let order: Vec<&[u8]> = pending
        .iter()
        .map(|j| j.payload.as_deref().unwrap())
        .collect();
    assert_eq!(
        order,
        [b"1", b"2", b"3", b"4", b"5"],
        "given back at the head, in their order"
    );
}

#[tokio::test]
async fn a_late_ack_after_a_takeover_changes_nothing() {
    let (server, client) = setup().await;
    let queue = client.queue("race");
    let id = queue
        .push_with("x", &PushOptions::new().track())
        .await
        .unwrap();
    // Worker A takes the job and stalls.
    let (release_a, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
    let worker_a = spawn(
        Worker::builder(client.clone())
            .queue("race")
            .lease(Duration::from_secs(30))
            .handler(move |_job: Job| {
                let released = released.clone();
                async move {
                    if let Some(rx) = released.lock().await.take() {
                        let _ = rx.await;
                    }
                    Err::<(), BoxError>("A failed late".into())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.active == 1).await;
    // A stalls past its lease (as if its process froze): make the lease expire now.
    let lease = server
        .cli(&["ZRANGE", "ostq:{race}:active", "0", "0"])
        .unwrap();
    server
        .cli(&["ZADD", "ostq:{race}:active", "1", &lease])
        .unwrap();
    // Worker B recovers the job and completes it.
    let worker_b = spawn(
        Worker::builder(client.clone())
            .queue("race")
            .handler(|_job: Job| async { Ok::<_, BoxError>("B's result") })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.completed == 1).await;
    assert_eq!(counts.recovered_total, 1);
    // Now A wakes up and reports failure: the script must ignore it.
    release_a.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker_a.shutdown().await;
    worker_b.shutdown().await;
    let counts = queue.counts().await.unwrap();
    assert_eq!(
        (counts.retry, counts.dead, counts.pending, counts.active),
        (0, 0, 0, 0),
        "{counts:?}"
    );
    let info = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.result.as_deref(), Some(&b"B's result"[..]));
}

#[tokio::test]
async fn leases_are_renewed_while_a_long_job_runs() {
    let (_server, client) = setup().await;
    let queue = client.queue("long");
    queue.push("x").await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let runs2 = runs.clone();
    let handler = move |_job: Job| {
        let runs = runs2.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2500)).await;
            Ok::<_, BoxError>(())
        }
    };
    let a = spawn(
        Worker::builder(client.clone())
            .queue("long")
            .lease(Duration::from_millis(600))
            .handler(handler.clone())
            .build()
            .unwrap(),
    );
    // A second worker fetching all along would recover the job if its lease lapsed.
    let b = spawn(
        Worker::builder(client.clone())
            .queue("long")
            .lease(Duration::from_millis(600))
            .handler(handler)
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 1).await;
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(
        (runs.load(Ordering::SeqCst), counts.recovered_total),
        (1, 0)
    );
}
