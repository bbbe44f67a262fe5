//! Per-task history against a real redis-server: the read side (`Queue::history`,
//! `Queue::failure_rate_over`, `QueueStats::recent_failure_rate`) over hashes written by hand as
//! design §2 "History" lays them out, and one end-to-end test over what workers record.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{setup, spawn, wait_counts, wait_until, RedisServer};
use ostq::admin::{HistoryPoint, Resolution, TaskFigures};
use ostq::keys::QueueKeys;
use ostq::{BoxError, PushOptions, RetryPolicy, Worker};

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn keys(queue: &str) -> QueueKeys {
    QueueKeys::new(queue).unwrap()
}

fn hincrby(server: &RedisServer, key: &str, field: &str, n: u64) {
    server
        .cli(&["HINCRBY", key, field, &n.to_string()])
        .unwrap();
}

/// Every point's tasks merged per task name.
fn per_task(points: &[HistoryPoint]) -> BTreeMap<String, TaskFigures> {
    let mut out: BTreeMap<String, TaskFigures> = BTreeMap::new();
    for point in points {
        for (task, figures) in &point.tasks {
            out.entry(task.clone()).or_default().merge(figures);
        }
    }
    out
}

#[tokio::test]
async fn minute_points_cover_the_range_empty_ones_included() {
    let (server, client) = setup().await;
    let k = keys("hist");
    let m = now_ms() / MINUTE_MS;
    let older = k.history_minute(m - 3);
    for (field, n) in [
        ("ok|processed", 3),
        ("ok|completed", 3),
        ("ok|run:1", 2),
        ("ok|run:4", 1),
        ("ok|wait:0", 3),
        ("ok|total:2", 3),
        ("ok|bogus", 5),
        ("ok|run:24", 5),
        ("nobar", 7),
    ] {
        hincrby(&server, &older, field, n);
    }
    // A value that is not a number is ignored, not an error.
    server
        .cli(&["HSET", &older, "ok|failed", "not a number"])
        .unwrap();
    server.cli(&["HSET", &older, "ok|dead", "-2"]).unwrap();
    let newer = k.history_minute(m - 1);
    for (field, n) in [
        ("-|processed", 1),
        ("-|failed", 1),
        ("-|retried", 1),
        ("a|b|processed", 2),
        ("a|b|completed", 2),
        ("a|b|total:23", 2),
    ] {
        hincrby(&server, &newer, field, n);
    }
    // Another queue's history is not this one's.
    hincrby(
        &server,
        &keys("other").history_minute(m - 1),
        "ok|processed",
        9,
    );

    let queue = client.queue("hist");
    let from = at((m - 4) * MINUTE_MS + 59_999);
    let to = at(m * MINUTE_MS);
    let points = queue.history(Resolution::Minute, from, to).await.unwrap();
    let at_ms: Vec<u64> = points.iter().map(|p| p.at_ms).collect();
    assert_eq!(
        at_ms,
        (m - 4..=m).map(|b| b * MINUTE_MS).collect::<Vec<_>>(),
        "one point per minute, oldest first"
    );
    for i in [0, 2, 4] {
        assert!(points[i].tasks.is_empty(), "{:?}", points[i]);
        assert_eq!(points[i].all_tasks(), TaskFigures::default());
    }

    let ok = &points[1].tasks["ok"];
    assert_eq!(points[1].tasks.len(), 1, "{:?}", points[1].tasks.keys());
    assert_eq!((ok.processed, ok.completed), (3, 3));
    assert_eq!((ok.failed, ok.retried, ok.dead), (0, 0, 0));
    assert_eq!(ok.run.buckets[1], 2);
    assert_eq!(ok.run.buckets[4], 1);
    assert_eq!(ok.run.count(), 3);
    assert_eq!(ok.run.quantile(0.5), Some(Duration::from_millis(10)));
    assert_eq!(ok.run.quantile(1.0), Some(Duration::from_millis(80)));
    assert_eq!((ok.wait.buckets[0], ok.wait.count()), (3, 3));
    assert_eq!((ok.total.buckets[2], ok.total.count()), (3, 3));

    let tasks: Vec<&str> = points[3].tasks.keys().map(String::as_str).collect();
    assert_eq!(tasks, vec!["-", "a|b"], "split on the last |");
    let unnamed = &points[3].tasks[ostq::admin::UNNAMED_TASK];
    assert_eq!(
        (unnamed.processed, unnamed.failed, unnamed.retried),
        (1, 1, 1)
    );
    let ab = &points[3].tasks["a|b"];
    assert_eq!(
        (ab.processed, ab.completed, ab.total.buckets[23]),
        (2, 2, 2)
    );
    assert_eq!(ab.total.quantile_bucket(0.5), Some(23));
    assert_eq!(points[3].all_tasks().processed, 3);
    assert_eq!(points[3].all_tasks().failure_rate(), Some(1.0 / 3.0));

    // The JSON round-trips.
    let json = serde_json::to_string(&points).unwrap();
    let back: Vec<HistoryPoint> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, points);

    // One point when from and to fall in the same minute.
    let one = queue
        .history(
            Resolution::Minute,
            at((m - 3) * MINUTE_MS + 10),
            at((m - 3) * MINUTE_MS + 20),
        )
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].tasks["ok"].processed, 3);
}

#[tokio::test]
async fn hour_points_read_the_hour_hashes() {
    let (server, client) = setup().await;
    let k = keys("hours");
    let h = now_ms() / HOUR_MS;
    hincrby(&server, &k.history_hour(h - 2), "resize|processed", 10);
    hincrby(&server, &k.history_hour(h - 2), "resize|failed", 4);
    hincrby(&server, &k.history_hour(h), "resize|processed", 1);
    hincrby(&server, &k.history_hour(h), "resize|wait:7", 1);
    // A minute hash is not read for hours.
    hincrby(&server, &k.history_minute(h * 60), "resize|processed", 100);

    let queue = client.queue("hours");
    let points = queue
        .history(
            Resolution::Hour,
            at((h - 2) * HOUR_MS),
            at(h * HOUR_MS + HOUR_MS - 1),
        )
        .await
        .unwrap();
    assert_eq!(
        points.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
        vec![(h - 2) * HOUR_MS, (h - 1) * HOUR_MS, h * HOUR_MS]
    );
    assert_eq!(points[0].tasks["resize"].processed, 10);
    assert_eq!(points[0].tasks["resize"].failed, 4);
    assert!(points[1].tasks.is_empty());
    assert_eq!(points[2].tasks["resize"].processed, 1);
    assert_eq!(
        points[2].tasks["resize"].wait.quantile(0.5),
        Some(Duration::from_millis(640))
    );
}

#[tokio::test]
async fn ranges_of_more_than_1500_points_are_refused() {
    let (_server, client) = setup().await;
    let queue = client.queue("limits");
    let m = now_ms() / MINUTE_MS;
    let exactly = queue
        .history(
            Resolution::Minute,
            at((m - 1499) * MINUTE_MS),
            at(m * MINUTE_MS),
        )
        .await
        .unwrap();
    assert_eq!(exactly.len(), 1500);
    assert!(exactly.iter().all(|p| p.tasks.is_empty()));

    let too_many = queue
        .history(
            Resolution::Minute,
            at((m - 1500) * MINUTE_MS),
            at(m * MINUTE_MS),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&too_many, ostq::Error::Config(msg) if msg.contains("1500")),
        "{too_many:?}"
    );
    let h = now_ms() / HOUR_MS;
    let hours = queue
        .history(Resolution::Hour, at((h - 1500) * HOUR_MS), at(h * HOUR_MS))
        .await
        .unwrap_err();
    assert!(matches!(hours, ostq::Error::Config(_)), "{hours:?}");
    let backwards = queue
        .history(
            Resolution::Minute,
            at(m * MINUTE_MS),
            at((m - 1) * MINUTE_MS),
        )
        .await
        .unwrap_err();
    assert!(matches!(backwards, ostq::Error::Config(_)), "{backwards:?}");
    // Windows longer than the points allow are refused the same way.
    let long = queue
        .failure_rate_over(Duration::from_secs(26 * 3600))
        .await
        .unwrap_err();
    assert!(matches!(long, ostq::Error::Config(_)), "{long:?}");
}

#[tokio::test]
async fn the_recent_failure_rate_counts_the_last_minutes_only() {
    let (server, client) = setup().await;
    let queue = client.queue("rates");
    assert_eq!(
        queue
            .failure_rate_over(Duration::from_secs(300))
            .await
            .unwrap(),
        None
    );
    assert_eq!(queue.stats().await.unwrap().recent_failure_rate, None);

    let k = keys("rates");
    let m = now_ms() / MINUTE_MS;
    hincrby(&server, &k.history_minute(m), "a|processed", 3);
    hincrby(&server, &k.history_minute(m), "a|failed", 1);
    hincrby(&server, &k.history_minute(m - 2), "b|processed", 1);
    hincrby(&server, &k.history_minute(m - 2), "b|garbage", 100);
    // Half an hour ago: outside a 5 minute window, inside an hour.
    hincrby(&server, &k.history_minute(m - 30), "a|processed", 4);
    hincrby(&server, &k.history_minute(m - 30), "a|failed", 4);

    let five = queue
        .failure_rate_over(Duration::from_secs(300))
        .await
        .unwrap();
    assert_eq!(five, Some(0.25));
    let hour = queue
        .failure_rate_over(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(hour, Some(5.0 / 8.0));

    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.recent_failure_rate, Some(0.25));
    assert_eq!(
        stats.failure_rate, None,
        "the all-time rate is the stats hash's"
    );
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["recent_failure_rate"], 0.25);
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Fine {
    n: u32,
}

impl ostq::Task for Fine {
    const NAME: &'static str = "ok";
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Doomed {
    n: u32,
}

impl ostq::Task for Doomed {
    const NAME: &'static str = "bad";
}

#[tokio::test]
async fn history_records_what_workers_did() {
    let (_server, client) = setup().await;
    let queue = client.queue("recorded");
    for n in 0..3 {
        queue.enqueue(&Fine { n }).await.unwrap();
    }
    for n in 0..2 {
        queue
            .enqueue_with(&Doomed { n }, PushOptions::new().max_attempts(2))
            .await
            .unwrap();
    }
    let running = spawn(
        Worker::builder(client.clone())
            .queue("recorded")
            .retry(RetryPolicy::fixed(Duration::from_millis(20)))
            .task(|_: Fine| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, BoxError>(())
            })
            .task(|t: Doomed| async move { Err::<(), BoxError>(format!("{} fails", t.n).into()) })
            .build()
            .unwrap(),
    );
    let wait = Duration::from_secs(10);
    let counts = wait_counts(&queue, wait, |c| c.dead == 2 && c.processed_total == 7).await;
    assert_eq!(counts.failed_total, 4);

    let read = || async {
        let now = SystemTime::now();
        let from = now - Duration::from_secs(300);
        let points = queue.history(Resolution::Minute, from, now).await.unwrap();
        per_task(&points)
    };
    // The history is written with the outcomes; give a batch in flight a moment.
    wait_until(Duration::from_secs(5), || async {
        let tasks = read().await;
        tasks.get("ok").is_some_and(|f| f.processed == 3)
            && tasks.get("bad").is_some_and(|f| f.dead == 2)
    })
    .await;
    running.shutdown().await;

    let tasks = read().await;
    assert_eq!(
        tasks.keys().map(String::as_str).collect::<Vec<_>>(),
        vec!["bad", "ok"],
        "{tasks:?}"
    );
    let ok = &tasks["ok"];
    assert_eq!(
        (ok.processed, ok.completed, ok.failed, ok.retried, ok.dead),
        (3, 3, 0, 0, 0),
        "{ok:?}"
    );
    assert_eq!(
        (ok.run.count(), ok.total.count(), ok.wait.count()),
        (3, 3, 3),
        "{ok:?}"
    );
    let bad = &tasks["bad"];
    assert_eq!(
        (
            bad.processed,
            bad.completed,
            bad.failed,
            bad.retried,
            bad.dead
        ),
        (4, 0, 4, 2, 2),
        "{bad:?}"
    );
    assert_eq!(bad.run.count(), 4, "{bad:?}");
    assert_eq!(bad.wait.count(), 2, "first attempts only: {bad:?}");
    assert_eq!(bad.total.count(), 0, "completed jobs only: {bad:?}");
    // Handlers that return at once run within the first buckets, nowhere near 5.8 h.
    assert!(
        ok.run.quantile_bucket(1.0).is_some_and(|b| b < 12),
        "{ok:?}"
    );
    // Each "ok" attempt slept 20 ms: the run time sum says so (and is not wildly more).
    assert!((60..10_000).contains(&ok.run_sum_ms), "{ok:?}");
    assert!(ok.total_sum_ms >= ok.run_sum_ms, "{ok:?}");
    // The totals hash holds the same figures (the test is far shorter than a day).
    let totals = queue.history_totals().await.unwrap();
    assert_eq!(totals, tasks);
}

/// A job whose worker died is recovered by the next fetch, which records it in the history:
/// recovered, processed, failed and retried for its task (the lost attempt), then completed
/// when it runs again.
#[tokio::test]
async fn recovery_from_a_lost_worker_is_in_the_history() {
    let (server, client) = setup().await;
    let queue = client.queue("lost");
    queue.enqueue(&Fine { n: 1 }).await.unwrap();
    // The first worker runs on a runtime of its own and is dropped mid-job, as a SIGKILL would.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    runtime.spawn(async move {
        let client = ostq::Client::connect(&url).await.unwrap();
        Worker::builder(client)
            .queue("lost")
            .lease(Duration::from_millis(500))
            .task(|_: Fine| std::future::pending::<Result<(), BoxError>>())
            .build()
            .unwrap()
            .run_until(std::future::pending())
            .await
    });
    wait_counts(&queue, Duration::from_secs(10), |c| c.active == 1).await;
    runtime.shutdown_background();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("lost")
            .lease(Duration::from_millis(500))
            .task(|_: Fine| async { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| {
        c.recovered_total == 1 && c.processed_total == 2
    })
    .await;
    running.shutdown().await;
    let now = SystemTime::now();
    let points = queue
        .history(Resolution::Minute, now - Duration::from_secs(300), now)
        .await
        .unwrap();
    let fine = per_task(&points).remove("ok").unwrap_or_default();
    assert_eq!(
        (
            fine.recovered,
            fine.processed,
            fine.failed,
            fine.retried,
            fine.completed
        ),
        (1, 2, 1, 1, 1),
        "{fine:?}"
    );
    assert_eq!(
        fine.run.count(),
        1,
        "only the attempt that ran has a run time"
    );
}
