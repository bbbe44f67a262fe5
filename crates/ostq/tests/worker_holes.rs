//! Regression tests for holes in the worker found by the reliability review: user code that
//! panics outside the handler's future (the job must still end in an outcome), fetching after
//! shutdown began, and lease renewal that must never wait behind outcome writes.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Job, JobState, PushOptions, RetryPolicy, Worker};

/// Long enough for any outcome on an idle machine; the broken code never records one at all.
const WAIT: Duration = Duration::from_secs(5);

fn fast_retry() -> RetryPolicy {
    RetryPolicy::fixed(Duration::from_millis(50))
}

/// The last error of the queue's only dead job.
async fn dead_reason(queue: &ostq::Queue) -> String {
    let dead = queue.jobs(JobState::Dead, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    dead[0].last_error.clone().unwrap_or_default()
}

/// Pushes `n` plain jobs and waits until the running worker completed them: it still works.
async fn still_works(queue: &ostq::Queue, processed_before: u64, n: u64) {
    let payloads: Vec<String> = (0..n).map(|i| format!("ok-{i}")).collect();
    queue.push_bulk(&payloads).await.unwrap();
    wait_counts(queue, WAIT, |c| c.processed_total >= processed_before + n).await;
}

/// A handler closure that panics before it returns its future used to kill the job's task with
/// no outcome: the job stayed `active` forever while its group was renewed.
#[tokio::test]
async fn a_handler_panicking_before_its_future_fails_the_attempt() {
    let (_server, client) = setup().await;
    let queue = client.queue("sync-panic");
    queue
        .push_with("boom", &PushOptions::new().max_attempts(2))
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("sync-panic")
            .retry(fast_retry())
            .handler(|job: Job| {
                if job.payload == b"boom" {
                    panic!("exploded before the future");
                }
                async move { Ok::<_, BoxError>(()) }
            })
            .build()
            .unwrap(),
    );
    // Both attempts fail (retry, then dead): the panic is an ordinary failed attempt.
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    assert_eq!((counts.active, counts.failed_total), (0, 2));
    assert_eq!(
        dead_reason(&queue).await,
        "handler panicked: exploded before the future"
    );
    still_works(&queue, counts.processed_total, 5).await;
    running.shutdown().await;
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Explode {
    now: bool,
}

impl ostq::Task for Explode {
    const NAME: &'static str = "explode";
}

/// The same for a typed task whose closure panics before returning its future.
#[tokio::test]
async fn a_typed_task_panicking_before_its_future_fails_the_attempt() {
    let (_server, client) = setup().await;
    let queue = client.queue("typed-panic");
    queue
        .enqueue_with(&Explode { now: true }, PushOptions::new().max_attempts(1))
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("typed-panic")
            .task(|t: Explode| {
                if t.now {
                    panic!("typed task exploded");
                }
                async move { Ok::<_, BoxError>(()) }
            })
            .handler(|_job: Job| async move { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    assert_eq!(counts.active, 0);
    assert_eq!(
        dead_reason(&queue).await,
        "handler panicked: typed task exploded"
    );
    still_works(&queue, counts.processed_total, 5).await;
    running.shutdown().await;
}

/// An error hook that panics used to kill the job's task after the attempt failed, before the
/// outcome was sent: the job stayed `active` forever. The outcome must be recorded anyway.
#[tokio::test]
async fn a_panicking_error_hook_does_not_lose_the_outcome() {
    let (_server, client) = setup().await;
    let queue = client.queue("hook-panic");
    queue
        .push_with("bad", &PushOptions::new().max_attempts(2))
        .await
        .unwrap();
    let hooked = Arc::new(AtomicUsize::new(0));
    let hooked2 = hooked.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("hook-panic")
            .retry(fast_retry())
            .handler(|job: Job| async move {
                if job.payload == b"bad" {
                    return Err::<(), BoxError>("bad input".into());
                }
                Ok(())
            })
            .on_error(move |_job, _failure| {
                hooked2.fetch_add(1, Ordering::SeqCst);
                panic!("the error hook exploded");
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    assert_eq!((counts.active, counts.failed_total), (0, 2));
    assert_eq!(dead_reason(&queue).await, "bad input");
    assert_eq!(
        hooked.load(Ordering::SeqCst),
        2,
        "the hook ran for each failure"
    );
    still_works(&queue, counts.processed_total, 5).await;
    running.shutdown().await;
}

/// A custom retry policy that panics used to kill the job's task: the job stayed `active`
/// forever. Now the attempt is recorded with the default backoff, and the error says so.
#[tokio::test]
async fn a_panicking_retry_policy_falls_back_to_the_default_backoff() {
    let (_server, client) = setup().await;
    let queue = client.queue("policy-panic");
    queue
        .push_with("bad", &PushOptions::new().max_attempts(2))
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("policy-panic")
            .retry(RetryPolicy::custom(|_| panic!("the retry policy exploded")))
            .handler(|job: Job| async move {
                if job.payload == b"bad" {
                    return Err::<(), BoxError>("bad input".into());
                }
                Ok(())
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.retry == 1).await;
    let retrying = queue.jobs(JobState::Retry, 0, 10).await.unwrap();
    let error = retrying[0].last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("bad input")
            && error.contains("retry policy panicked: the retry policy exploded")
            && error.contains("default backoff"),
        "{error}"
    );
    // The default backoff after a first failure is 0.5 to 1 s; then the last attempt dies.
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    assert_eq!((counts.active, counts.failed_total), (0, 2));
    assert_eq!(dead_reason(&queue).await, "bad input");
    still_works(&queue, counts.processed_total, 5).await;
    running.shutdown().await;
}

/// Panics when dropped: a handler future holding one panics where the worker drops it (timeout).
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("dropping the handler's future exploded");
        }
    }
}

/// Anything else in the job's task that panics (here: dropping a timed-out handler future,
/// outside any catch_unwind) used to leave the job `active` forever. The last-resort guard
/// records a failed attempt, retried with the default backoff.
#[tokio::test]
async fn a_panic_anywhere_in_a_jobs_task_still_records_an_outcome() {
    let (_server, client) = setup().await;
    let queue = client.queue("drop-panic");
    queue
        .push_with("sticky", &PushOptions::new().max_attempts(1))
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("drop-panic")
            .timeout(Some(Duration::from_millis(200)))
            .handler(|job: Job| async move {
                if job.payload == b"sticky" {
                    let _guard = PanicOnDrop;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok::<_, BoxError>(())
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    assert_eq!(counts.active, 0);
    let reason = dead_reason(&queue).await;
    assert!(
        reason.contains("dropping the handler's future exploded"),
        "{reason}"
    );
    still_works(&queue, counts.processed_total, 5).await;
    running.shutdown().await;
}

/// Once shutdown has begun, no job may start: the fetch loop used to finish the fetch in
/// flight and start its jobs, and its unbiased `select!` could go on fetching. Job K's handler
/// signals the shutdown; with one job per fetch (FIFO), every later job was fetched after it.
#[tokio::test]
async fn no_job_starts_after_shutdown_began() {
    let (_server, client) = setup().await;
    let queue = client.queue("stopping");
    let total = 200u64;
    let stop_at = 20u64;
    let payloads: Vec<String> = (1..=total).map(|i| i.to_string()).collect();
    queue.push_bulk(&payloads).await.unwrap();

    let started = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let (seen, signal) = (started.clone(), stop.clone());
    let worker = Worker::builder(client.clone())
        .queue("stopping")
        .concurrency(100)
        .max_batch(1)
        .handler(move |job: Job| {
            let n: u64 = job.payload_str().unwrap().parse().unwrap();
            seen.lock().unwrap().push(n);
            if n == stop_at {
                signal.cancel();
            }
            async move { Ok::<_, BoxError>(()) }
        })
        .build()
        .unwrap();
    tokio::time::timeout(WAIT, worker.run_until(stop.cancelled_owned()))
        .await
        .unwrap()
        .unwrap();
    let started = started.lock().unwrap().clone();
    let late: Vec<u64> = started.iter().copied().filter(|&n| n > stop_at).collect();
    assert!(
        late.is_empty(),
        "jobs started after shutdown began: {late:?}"
    );
    let counts = queue.counts().await.unwrap();
    // Whatever was fetched after the signal went straight back, uncounted.
    assert_eq!(
        (counts.pending, counts.active, counts.processed_total),
        (total - stop_at, 0, stop_at)
    );
}

/// Runs of each payload, recorded by the handlers of the renewal tests.
type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// Payloads that ran more than once.
fn ran_twice(runs: &Runs) -> Vec<(String, u32)> {
    let mut twice: Vec<(String, u32)> = runs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(p, &n)| (p.clone(), n))
        .collect();
    twice.sort();
    twice
}

/// The lease keeper used to renew only when no outcome was waiting (`biased` toward outcomes):
/// with outcomes arriving faster than one round of writes (Redis 2 ms away), renewal starved,
/// the long job's group expired every lease and the job ran again and again. Renewal now has a
/// task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_does_not_starve_under_a_stream_of_outcomes() {
    let (server, client) = setup().await;
    let proxy = ostq_testkit::Proxy::start(server.port()).unwrap();
    proxy.set_latency(Duration::from_millis(2), Duration::ZERO);
    let far = ostq::Client::connect(&proxy.url()).await.unwrap();
    let queue = client.queue("stream");

    let runs: Runs = Arc::default();
    let seen = runs.clone();
    let running = spawn(
        Worker::builder(far)
            .queue("stream")
            .concurrency(1000)
            .lease(Duration::from_secs(1))
            .handler(move |job: Job| {
                let payload = String::from_utf8_lossy(&job.payload).into_owned();
                *seen.lock().unwrap().entry(payload.clone()).or_default() += 1;
                async move {
                    let ms = if payload == "long" { 6000 } else { 20 };
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    // Keep the queue fed for 8 s: a steady stream of short jobs, so outcomes never stop. The
    // long job comes once the stream is flowing, at the head of the queue, and needs six leases:
    // the old keeper sometimes got a renewal through within one lease, rarely six times in a row.
    let fed_at = Instant::now();
    let mut long_pushed = false;
    let mut pushed = 1u64;
    while fed_at.elapsed() < Duration::from_secs(8) {
        if !long_pushed && fed_at.elapsed() >= Duration::from_secs(1) {
            queue
                .push_with("long", &PushOptions::new().priority(1))
                .await
                .unwrap();
            long_pushed = true;
        }
        if queue.counts().await.unwrap().pending < 2000 {
            let batch: Vec<String> = (pushed..pushed + 1000).map(|i| format!("s{i}")).collect();
            queue.push_bulk(&batch).await.unwrap();
            pushed += 1000;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = common::wait_until(Duration::from_secs(10), || async {
        queue
            .counts()
            .await
            .is_ok_and(|c| c.pending == 0 && c.active == 0 && c.retry == 0)
    })
    .await;
    running.shutdown().await;
    let counts = queue.counts().await.unwrap();
    let long = runs.lock().unwrap().get("long").copied();
    let twice = ran_twice(&runs);
    assert_eq!(
        long,
        Some(1),
        "the 6 s job ran {long:?} times ({} jobs ran twice; {pushed} pushed; {counts:?})",
        twice.len(),
    );
    assert!(
        twice.is_empty(),
        "jobs ran twice: {:?}",
        &twice[..twice.len().min(20)]
    );
    assert!(drained, "the queue never drained: {counts:?}");
    assert_eq!(counts.recovered_total, 0);
    assert_eq!(counts.processed_total, pushed);
    eprintln!("{pushed} jobs, each ran once");
}

/// The keeper retries a failing outcome write for up to a lease. Renewal used to share its task,
/// so it paused for that long and every other group of the worker expired too, although Redis
/// answered. Here the write fails because the job's unique key was replaced by a hash (the
/// completion's `GET` of it is refused with WRONGTYPE): a write that keeps failing while
/// renewals would go through. The lease is 2 s, so that only a pause of renewal, not a machine
/// busy for a moment, can let it expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_goes_on_while_a_write_is_retried() {
    let (server, client) = setup().await;
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let queue = client.queue("retrying");
    let runs: Runs = Arc::default();
    let poison_started = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let (seen, started, released) = (runs.clone(), poison_started.clone(), release.clone());
    let running = spawn(
        Worker::builder(client.clone())
            .queue("retrying")
            .lease(Duration::from_secs(2))
            .handler(move |job: Job| {
                let payload = String::from_utf8_lossy(&job.payload).into_owned();
                let first = {
                    let mut runs = seen.lock().unwrap();
                    let n = runs.entry(payload.clone()).or_default();
                    *n += 1;
                    *n == 1
                };
                let (started, released) = (started.clone(), released.clone());
                async move {
                    match payload.as_str() {
                        "long" => tokio::time::sleep(Duration::from_secs(5)).await,
                        "poison" if first => {
                            started.store(true, Ordering::SeqCst);
                            released.notified().await;
                        }
                        _ => {}
                    }
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    queue.push("long").await.unwrap();
    let long_started = Instant::now();
    assert!(common::wait_until(WAIT, || async { runs.lock().unwrap().contains_key("long") }).await);
    queue
        .push_with("poison", &PushOptions::new().unique("u1"))
        .await
        .unwrap();
    assert!(common::wait_until(WAIT, || async { poison_started.load(Ordering::SeqCst) }).await);
    let unique_key = "ostq:{retrying}:unique:u1";
    redis::pipe()
        .del(unique_key)
        .hset(unique_key, "not", "a string")
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    let failing_from = Instant::now();
    release.notify_one();
    // The keeper now retries the poisoned write for a lease, gives up; the job is recovered, runs
    // again, its write fails again... Meanwhile the long job's group must stay renewed.
    tokio::time::sleep(
        (long_started + Duration::from_millis(5500)).saturating_duration_since(Instant::now()),
    )
    .await;
    let long = runs.lock().unwrap().get("long").copied();
    assert_eq!(
        long,
        Some(1),
        "the long job ran {long:?} times while a write failed for {:?} ({:?})",
        failing_from.elapsed(),
        queue.counts().await.unwrap()
    );
    redis::cmd("DEL")
        .arg(unique_key)
        .query_async::<()>(&mut raw)
        .await
        .unwrap();
    wait_counts(&queue, Duration::from_secs(10), |c| {
        // (Recoveries of the poisoned job count as processed and failed attempts.)
        c.pending == 0 && c.active == 0 && c.processed_total - c.failed_total == 2
    })
    .await;
    running.shutdown().await;
    assert_eq!(runs.lock().unwrap().get("long").copied(), Some(1));
}
