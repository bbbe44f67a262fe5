//! The worker against a real redis-server: completion, retries, dead set, typed dispatch, bad
//! input, panics, timeouts, hooks, priorities, delays and status records.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Job, JobState, PushOptions, RetryPolicy, Worker};

const WAIT: Duration = Duration::from_secs(10);

fn fast_retry() -> RetryPolicy {
    RetryPolicy::fixed(Duration::from_millis(50))
}

#[tokio::test]
async fn pushed_ids_are_processed_once_each() {
    let (_server, client) = setup().await;
    let queue = client.queue("videos");
    let ids: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    queue.push_bulk(&ids).await.unwrap();
    assert_eq!(queue.counts().await.unwrap().pending, 500);

    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("videos")
            .concurrency(16)
            .handler(move |job: Job| {
                let seen = seen2.clone();
                async move {
                    seen.lock().unwrap().push(job.payload_str()?.to_string());
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 500).await;
    running.shutdown().await;
    assert_eq!(
        (counts.pending, counts.active, counts.failed_total),
        (0, 0, 0)
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 500, "each job ran exactly once here");
    assert_eq!(
        seen.iter().cloned().collect::<HashSet<_>>(),
        ids.into_iter().collect()
    );
}

/// A bulk push's ids follow each other (one clock read per push, ULID's monotonic form), so they
/// sort in push order, and each is the id its job runs with.
#[tokio::test]
async fn bulk_pushed_ids_sort_in_push_order_and_name_their_jobs() {
    let (_server, client) = setup().await;
    let queue = client.queue("videos");
    // Three LPUSH commands in one transaction.
    let payloads: Vec<String> = (0..2_500).map(|i| format!("p{i}")).collect();
    let ids = queue.push_bulk(&payloads).await.unwrap();
    assert_eq!(ids.len(), payloads.len());
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of push order");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("videos")
            .concurrency(16)
            .handler(move |job: Job| {
                let seen = seen2.clone();
                async move {
                    let pair = (job.id.clone(), job.payload_str()?.to_string());
                    seen.lock().unwrap().push(pair);
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 2_500).await;
    running.shutdown().await;
    assert_eq!(counts.failed_total, 0);
    let seen: HashSet<(String, String)> = seen.lock().unwrap().iter().cloned().collect();
    assert_eq!(seen, ids.into_iter().zip(payloads).collect());
}

#[tokio::test]
async fn failures_are_retried_then_succeed() {
    let (_server, client) = setup().await;
    let queue = client.queue("flaky");
    let id = queue
        .push_with("x", &PushOptions::new().track())
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let calls2 = calls.clone();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errors2 = errors.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("flaky")
            .retry(fast_retry())
            .handler(move |job: Job| {
                let calls = calls2.clone();
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err(format!("try {} failed", job.attempt).into());
                    }
                    Ok::<_, BoxError>(format!("done on attempt {}", job.attempt))
                }
            })
            .on_error(move |job, failure| {
                errors2
                    .lock()
                    .unwrap()
                    .push((job.attempt, failure.error.clone(), failure.dead))
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 3).await;
    running.shutdown().await;
    assert_eq!(counts.failed_total, 2);
    assert_eq!(
        *errors.lock().unwrap(),
        vec![
            (1, "try 1 failed".to_string(), false),
            (2, "try 2 failed".to_string(), false)
        ]
    );
    let info = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.result.as_deref(), Some(&b"done on attempt 3"[..]));
    assert_eq!(info.attempts, 2, "attempts that failed before the success");
}

#[tokio::test]
async fn spent_attempts_go_dead_with_the_reason_and_can_be_retried() {
    let (_server, client) = setup().await;
    let queue = client.queue("doomed");
    let id = queue
        .push_with("x", &PushOptions::new().max_attempts(3))
        .await
        .unwrap();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fail2 = fail.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("doomed")
            .retry(fast_retry())
            .handler(move |job: Job| {
                let fail = fail2.clone();
                async move {
                    if fail.load(Ordering::SeqCst) {
                        return Err(format!("disk full on attempt {}", job.attempt).into());
                    }
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    assert_eq!(counts.failed_total, 3);
    let dead = queue.jobs(JobState::Dead, 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("disk full on attempt 3")
    );

    fail.store(false, Ordering::SeqCst);
    assert_eq!(queue.retry_all_dead().await.unwrap(), 1);
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 4).await;
    running.shutdown().await;
    assert_eq!(
        (counts.dead, counts.pending, counts.failed_total),
        (0, 0, 3)
    );
}

#[tokio::test]
async fn permanent_errors_skip_the_remaining_attempts() {
    let (_server, client) = setup().await;
    let queue = client.queue("perm");
    queue.push("x").await.unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("perm")
            .handler(|_job: Job| async {
                Err::<(), BoxError>(ostq::Permanent::new("video deleted").into())
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    running.shutdown().await;
    assert_eq!(counts.failed_total, 1);
    let dead = queue.jobs(JobState::Dead, 0, 1).await.unwrap();
    assert_eq!(dead[0].last_error.as_deref(), Some("video deleted"));
}

#[tokio::test]
async fn panics_and_timeouts_fail_only_their_job() {
    let (_server, client) = setup().await;
    let queue = client.queue("wild");
    queue
        .push_with("panic", &PushOptions::new().max_attempts(1))
        .await
        .unwrap();
    queue
        .push_with("hang", &PushOptions::new().max_attempts(1))
        .await
        .unwrap();
    queue.push_bulk(["ok1", "ok2", "ok3"]).await.unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("wild")
            .concurrency(2)
            .timeout(Some(Duration::from_millis(300)))
            .handler(|job: Job| async move {
                match job.payload_str()? {
                    "panic" => panic!("bad frame in video"),
                    "hang" => tokio::time::sleep(Duration::from_secs(60)).await,
                    _ => {}
                }
                Ok::<_, BoxError>(())
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 5).await;
    running.shutdown().await;
    assert_eq!((counts.dead, counts.failed_total), (2, 2));
    let mut errors: Vec<String> = queue
        .jobs(JobState::Dead, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.last_error.unwrap())
        .collect();
    errors.sort();
    assert_eq!(errors[0], "handler panicked: bad frame in video");
    assert!(
        errors[1].starts_with("timed out after 300ms"),
        "{}",
        errors[1]
    );
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Transcode {
    video_id: u64,
    preset: String,
}

impl ostq::Task for Transcode {
    const NAME: &'static str = "transcode";
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Thumbnail {
    video_id: u64,
}

impl ostq::Task for Thumbnail {
    const NAME: &'static str = "thumbnail";
    fn retry_policy() -> Option<RetryPolicy> {
        Some(RetryPolicy::fixed(Duration::from_millis(10)).max_attempts(2))
    }
}

/// Jobs that cannot run die at once with the reason (a payload the task cannot decode, a
/// malformed envelope); a task name this worker has no handler for is an ordinary failure that
/// retries (a worker of the next release may know it, as in a rolling deploy) until its attempts
/// run out.
#[tokio::test]
async fn typed_tasks_dispatch_by_name_and_bad_ones_die_with_a_reason() {
    let (server, client) = setup().await;
    let queue = client.queue("media");
    queue
        .enqueue(&Transcode {
            video_id: 7,
            preset: "720p".into(),
        })
        .await
        .unwrap();
    queue.enqueue(&Thumbnail { video_id: 8 }).await.unwrap();
    let resize = PushOptions::new().name("resize").max_attempts(3);
    let resize = queue
        .push_with(r#"{"video_id": 9}"#, &resize)
        .await
        .unwrap();
    queue
        .push_with(
            r#"{"video": "nine"}"#,
            &PushOptions::new().name("transcode"),
        )
        .await
        .unwrap();
    // Garbage pushed by hand: an envelope-looking byte string that is not one.
    server
        .cli_bytes(&[b"LPUSH", b"ostq:{media}:pending", b"\x99\xa3abc\xff\xfe"])
        .unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let thumbs = Arc::new(AtomicUsize::new(0));
    let thumbs2 = thumbs.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("media")
            .task(move |t: Transcode| {
                let seen = s1.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push(format!("transcode {} {}", t.video_id, t.preset));
                    Ok::<_, BoxError>(())
                }
            })
            .task(move |t: Thumbnail| {
                let (seen, thumbs) = (s2.clone(), thumbs2.clone());
                async move {
                    thumbs.fetch_add(1, Ordering::SeqCst);
                    seen.lock()
                        .unwrap()
                        .push(format!("thumbnail {}", t.video_id));
                    Err::<(), BoxError>("no ffmpeg".into())
                }
            })
            .retry(RetryPolicy::fixed(Duration::from_millis(10)))
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 4).await;
    running.shutdown().await;
    assert_eq!(
        thumbs.load(Ordering::SeqCst),
        2,
        "the task's own policy allows 2 attempts"
    );
    assert_eq!(counts.processed_total, 8, "resize was tried three times");
    let resize = queue.job(&resize).await.unwrap().unwrap();
    assert_eq!((resize.state, resize.attempts), (JobState::Dead, 3));
    assert!(seen
        .lock()
        .unwrap()
        .contains(&"transcode 7 720p".to_string()));
    let mut reasons: Vec<String> = queue
        .jobs(JobState::Dead, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.last_error.unwrap())
        .collect();
    reasons.sort();
    assert!(
        reasons[0].starts_with("cannot decode payload of task 'transcode'"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].starts_with("malformed job envelope"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], "no ffmpeg");
    assert_eq!(
        reasons[3],
        "no handler for task 'resize' (this worker handles: thumbnail, transcode)"
    );
}

/// A named job that no typed handler claims runs on the default handler, which sees its name
/// (one BullMQ processor serves every name); it used to go dead with "no handler for task".
#[tokio::test]
async fn the_default_handler_runs_named_jobs_no_typed_handler_claims() {
    let (_server, client) = setup().await;
    let queue = client.queue("named");
    queue
        .push_with("r1", &PushOptions::new().name("resize"))
        .await
        .unwrap();
    queue.push("plain").await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("named")
            .handler(move |job: Job| {
                let seen = seen2.clone();
                async move {
                    let name = job.name.clone().unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .push(format!("{name}:{}", job.payload_str()?));
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 2).await;
    running.shutdown().await;
    assert_eq!((counts.dead, counts.failed_total), (0, 0));
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, [":plain", "resize:r1"]);
}

#[tokio::test]
async fn priorities_run_highest_first_and_fifo_among_equals() {
    let (_server, client) = setup().await;
    let queue = client.queue("prio");
    for (payload, priority) in [
        ("low", -5),
        ("a", 0),
        ("high1", 10),
        ("b", 0),
        ("high2", 10),
        ("top", 100),
    ] {
        queue
            .push_with(payload, &PushOptions::new().priority(priority))
            .await
            .unwrap();
    }
    assert_eq!(queue.counts().await.unwrap().pending, 6);
    let order = Arc::new(Mutex::new(Vec::new()));
    let order2 = order.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("prio")
            .concurrency(1)
            .handler(move |job: Job| {
                let order = order2.clone();
                async move {
                    order.lock().unwrap().push(job.payload_str()?.to_string());
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.processed_total == 6).await;
    running.shutdown().await;
    assert_eq!(
        *order.lock().unwrap(),
        ["top", "high1", "high2", "a", "b", "low"]
    );
    assert!(queue
        .push_with("x", &PushOptions::new().priority(1001))
        .await
        .is_err());
}

#[tokio::test]
async fn delayed_jobs_fire_on_time_while_the_worker_idles() {
    let (_server, client) = setup().await;
    let queue = client.queue("later");
    let started = Arc::new(Mutex::new(Vec::new()));
    let started2 = started.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("later")
            .handler(move |job: Job| {
                let started = started2.clone();
                async move {
                    started
                        .lock()
                        .unwrap()
                        .push((job.payload_str()?.to_string(), Instant::now()));
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    // Let the worker go idle (blocked), then schedule; the worker must wake for the due time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed = Instant::now();
    let id = queue
        .push_with(
            "in 700ms",
            &PushOptions::new().delay(Duration::from_millis(700)).track(),
        )
        .await
        .unwrap();
    queue
        .push_with(
            "in 300ms",
            &PushOptions::new().delay(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert_eq!(queue.counts().await.unwrap().scheduled, 2);
    assert_eq!(
        queue.job(&id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    wait_counts(&queue, WAIT, |c| c.processed_total == 2).await;
    running.shutdown().await;
    let started = started.lock().unwrap();
    assert_eq!(started[0].0, "in 300ms");
    for (label, at, due) in [
        (&started[0].0, started[0].1, 300),
        (&started[1].0, started[1].1, 700),
    ] {
        let after = at.duration_since(pushed);
        assert!(
            after >= Duration::from_millis(due - 5),
            "{label} ran early: {after:?}"
        );
        // Spec: at most 100 ms late when idle; allow slack for a loaded CI machine.
        assert!(
            after <= Duration::from_millis(due + 250),
            "{label} ran late: {after:?}"
        );
    }
}

#[tokio::test]
async fn hooks_see_failures_and_the_monitor_sees_everything() {
    let (_server, client) = setup().await;
    let queue = client.queue("hooked");
    queue
        .push_with("bad", &PushOptions::new().max_attempts(1))
        .await
        .unwrap();
    queue.push_bulk(["good"; 4]).await.unwrap();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let snapshots = Arc::new(Mutex::new(Vec::new()));
    let (f2, s2) = (failures.clone(), snapshots.clone());
    let running = spawn(
        Worker::builder(client.clone())
            .queue("hooked")
            .handler(|job: Job| async move {
                if job.payload_str()? == "bad" {
                    return Err::<(), BoxError>("bad input".into());
                }
                Ok(())
            })
            .on_error(move |job, failure| {
                f2.lock().unwrap().push((job.payload.clone(), failure.dead))
            })
            .on_monitor(Duration::from_millis(50), move |report| {
                s2.lock().unwrap().push(report.clone())
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.processed_total == 5).await;
    // The history (and so the recent failure rate) is sent once a second.
    assert!(
        common::wait_until(WAIT, || async {
            snapshots.lock().unwrap().iter().any(|r| {
                let q = &r.snapshot.queues[0];
                q.counts.processed_total == 5 && q.recent_failure_rate.is_some()
            })
        })
        .await
    );
    // Taken while the worker runs: at shutdown it leaves the registry.
    let last = snapshots.lock().unwrap().last().cloned().unwrap();
    running.shutdown().await;
    assert_eq!(*failures.lock().unwrap(), vec![(b"bad".to_vec(), true)]);
    let q = &last.snapshot.queues[0];
    assert_eq!(
        (
            q.counts.queue.as_str(),
            q.counts.dead,
            q.counts.failed_total
        ),
        ("hooked", 1, 1)
    );
    assert_eq!(q.failure_rate, Some(0.2));
    assert_eq!(q.recent_failure_rate, Some(0.2));
    assert_eq!(q.workers, Some(1), "this worker, from the registry");
    assert!(q.jobs_per_sec.is_some(), "measured between reports");
    assert!(!last.snapshot.redis.version.is_empty());
    assert!(
        last.alerts.iter().all(|a| a.queue.is_none()),
        "{:?}",
        last.alerts
    );
    let me = &last.worker;
    assert_eq!((me.completed, me.retried, me.dead), (4, 0, 1));
    assert_eq!((me.concurrency, me.busy), (10, 0));
    assert!(me.id.contains(':'), "{}", me.id);
}

#[tokio::test]
async fn tracked_jobs_report_each_state_and_expire_after_completion() {
    let (server, client) = setup().await;
    let queue = client.queue("tracked");
    let id = queue
        .push_with("x", &PushOptions::new().track())
        .await
        .unwrap();
    let info = queue.job(&id).await.unwrap().unwrap();
    assert_eq!((info.state, info.tracked), (JobState::Pending, true));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let running = spawn(
        Worker::builder(client.clone())
            .queue("tracked")
            .completed_retention(Duration::from_secs(60))
            .handler(move |_job: Job| {
                let rx = rx.clone();
                async move {
                    if let Some(rx) = rx.lock().await.take() {
                        let _ = rx.await;
                    }
                    Ok::<_, BoxError>("42 frames")
                }
            })
            .build()
            .unwrap(),
    );
    assert!(
        common::wait_until(WAIT, || async {
            queue.job(&id).await.unwrap().map(|j| j.state) == Some(JobState::Active)
        })
        .await
    );
    let active = queue.jobs(JobState::Active, 0, 10).await.unwrap();
    assert_eq!(active.len(), 1);
    assert!(
        active[0].due_at_ms.is_some(),
        "an active job shows its lease deadline"
    );
    tx.send(()).unwrap();
    wait_counts(&queue, WAIT, |c| c.completed == 1).await;
    running.shutdown().await;
    let info = queue.job(&id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
    assert_eq!(info.result.as_deref(), Some(&b"42 frames"[..]));
    assert!(info.started_at_ms.unwrap() <= info.finished_at_ms.unwrap());
    let ttl: i64 = server
        .cli(&["TTL", &format!("ostq:{{tracked}}:job:{id}")])
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=60).contains(&ttl),
        "completed records expire: ttl {ttl}"
    );
    let completed = queue.jobs(JobState::Completed, 0, 10).await.unwrap();
    assert_eq!(completed[0].id, id);

    // Untracked jobs leave no record and cost one list entry.
    let plain = queue.push("y").await.unwrap();
    assert_eq!(
        server
            .cli(&["EXISTS", &format!("ostq:{{tracked}}:job:{plain}")])
            .unwrap(),
        "0"
    );
    assert_eq!(
        queue.job(&plain).await.unwrap().unwrap().state,
        JobState::Pending
    );
}
