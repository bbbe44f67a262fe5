//! The metrics page over real HTTP against a real Redis, its history written by a live worker:
//! the counts and durations per task match what the worker did (failed attempts counted in the
//! run histogram), the windows agree, and hostile task names are shown as text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::{open_session, redis, spawn, wait_until, Dashboard};
use ostq::admin::{Resolution, TaskFigures};
use ostq::{BoxError, Job, PushOptions, Worker};

const HOSTILE_TASK: &str = "<script>alert(1)</script>";

/// The `<tr …>` of a row of `table` (from the row's attributes to `</tr>`).
fn row<'a>(body: &'a str, table: &str, attrs: &str) -> &'a str {
    let table_at = body
        .find(&format!(r#"id="{table}""#))
        .unwrap_or_else(|| panic!("no table {table}"));
    let body = &body[table_at..];
    let at = body
        .find(attrs)
        .unwrap_or_else(|| panic!("no row {attrs} in {table}: {body}"));
    let rest = &body[at..];
    &rest[..rest.find("</tr>").unwrap()]
}

fn field<'a>(row: &'a str, field: &str) -> &'a str {
    let needle = format!(r#"data-field="{field}">"#);
    let at = row
        .find(&needle)
        .unwrap_or_else(|| panic!("no {field} in {row}"));
    let rest = &row[at + needle.len()..];
    &rest[..rest.find("</td>").unwrap()]
}

/// Runs a real worker over: 5 `resize` jobs that complete after ~30 ms, 2 `encode` jobs that
/// fail for good (one attempt each), 1 job under a hostile task name that completes.
async fn work(client: &ostq::Client) {
    let queue = client.queue("videos");
    for i in 0..5 {
        queue
            .push_with(format!("r{i}"), &PushOptions::new().name("resize"))
            .await
            .unwrap();
    }
    for i in 0..2 {
        queue
            .push_with(
                format!("e{i}"),
                &PushOptions::new().name("encode").max_attempts(1),
            )
            .await
            .unwrap();
    }
    queue
        .push_with("x", &PushOptions::new().name(HOSTILE_TASK))
        .await
        .unwrap();
    let worker = Worker::builder(client.clone())
        .queue("videos")
        .concurrency(2)
        .handler(|job: Job| async move {
            match job.name.as_deref() {
                Some("encode") => Err::<(), BoxError>("cannot encode".into()),
                Some("resize") => {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok(())
                }
                _ => Ok(()),
            }
        })
        .build()
        .unwrap();
    let running = spawn(worker);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let counts = client.queue("videos").counts().await.unwrap();
            counts.pending == 0 && counts.active == 0 && counts.dead == 2
        })
        .await,
        "the worker runs every job"
    );
    running.shutdown().await;
}

/// The last hour's history by task, read from the library directly.
async fn last_hour(client: &ostq::Client) -> BTreeMap<String, TaskFigures> {
    let now = SystemTime::now();
    let points = client
        .queue("videos")
        .history(Resolution::Minute, now - Duration::from_secs(59 * 60), now)
        .await
        .unwrap();
    let mut by_task: BTreeMap<String, TaskFigures> = BTreeMap::new();
    for point in points {
        for (task, figures) in point.tasks {
            by_task.entry(task).or_default().merge(&figures);
        }
    }
    by_task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_a_worker_did_per_task() {
    let (_server, client) = redis().await;
    work(&client).await;
    let history = last_hour(&client).await;
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, _) = open_session(&dashboard).await;

    // The queue page links to it; the nav marks it.
    let queue_page = http.get("/queues/videos").await;
    let link = queue_page.href_of("queue-metrics").expect("a metrics link");
    assert_eq!(link, "/metrics-page?queue=videos&window=1h");
    let page = http.get(&link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page
        .body
        .contains(r#"href="/metrics-page" aria-current="page""#));
    assert!(page.body.contains("failed attempts included"));

    // Counts: every task together, and per task.
    let all = row(&page.body, "metrics-counts", r#"data-scope="all""#);
    assert_eq!(field(all, "processed"), "8");
    assert_eq!(field(all, "completed"), "6");
    assert_eq!(field(all, "failed"), "2");
    assert_eq!(field(all, "dead"), "2");
    assert_eq!(field(all, "retried"), "0");
    assert_eq!(field(all, "failure_rate"), "25.0%");
    let encode = row(&page.body, "metrics-counts", r#"data-task="encode""#);
    assert_eq!(field(encode, "processed"), "2");
    assert_eq!(field(encode, "failed"), "2");
    assert_eq!(field(encode, "dead"), "2");
    assert_eq!(field(encode, "failure_rate"), "100.0%");

    // Durations: the failed attempts are in the run histogram, not in total (completions only).
    let encode_run = row(
        &page.body,
        "metrics-durations",
        r#"data-scope="task" data-task="encode" data-kind="run""#,
    );
    assert_eq!(field(encode_run, "count"), "2");
    let encode_total = row(
        &page.body,
        "metrics-durations",
        r#"data-scope="task" data-task="encode" data-kind="total""#,
    );
    assert_eq!(field(encode_total, "count"), "0");
    assert_eq!(field(encode_total, "p50"), "-");
    let all_run = row(
        &page.body,
        "metrics-durations",
        r#"data-scope="all" data-kind="run""#,
    );
    assert_eq!(field(all_run, "count"), "8");

    // Quantiles and the mean of resize's run times agree with the history read directly.
    let resize = history.get("resize").expect("resize in the history");
    assert_eq!(resize.run.count(), 5);
    let resize_run = row(
        &page.body,
        "metrics-durations",
        r#"data-scope="task" data-task="resize" data-kind="run""#,
    );
    for (q, name) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
        let bound = resize.run.quantile(q).unwrap();
        assert!(bound >= Duration::from_millis(30), "a 30 ms sleep");
        assert_eq!(
            field(resize_run, name),
            format!("≤ {}ms", bound.as_millis()),
            "{name}"
        );
    }
    assert_eq!(
        field(resize_run, "mean"),
        format!("{}ms", resize.run_sum_ms / 5)
    );
    // The chart: one bar per bucket, the filled one(s) holding the 5 runs.
    let bars = resize_run.matches(r#"<rect class="bar""#).count();
    let buckets = resize.run.buckets.iter().filter(|n| **n > 0).count();
    assert_eq!(bars, buckets);
    assert_eq!(resize_run.matches("<rect ").count(), 24);

    // The other windows read hour or minute points of the same work: the same counts.
    for window in ["24h", "7d"] {
        let page = http
            .get(&format!("/metrics-page?queue=videos&window={window}"))
            .await;
        assert_eq!(page.status, 200);
        let all = row(&page.body, "metrics-counts", r#"data-scope="all""#);
        assert_eq!(field(all, "processed"), "8", "{window}");
        assert!(page
            .body
            .contains(&format!(r#"aria-current="page">last {window}<"#)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_task_names_are_shown_as_text_and_bad_queues_refused() {
    let (_server, client) = redis().await;
    work(&client).await;
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, _) = open_session(&dashboard).await;
    let page = http.get("/metrics-page").await;
    assert_eq!(page.status, 200, "the first queue by default");
    assert!(!page.body.contains(HOSTILE_TASK), "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let hostile = row(
        &page.body,
        "metrics-counts",
        r#"data-task="&lt;script&gt;alert(1)&lt;/script&gt;""#,
    );
    assert_eq!(field(hostile, "processed"), "1");
    // A queue name the library refuses is a 400, not a crash or an empty page.
    let bad = http.get("/metrics-page?queue=a%20b%7Bc%7D").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    // A queue with no history: zeros and dashes.
    let empty = http.get("/metrics-page?queue=nothing-here").await;
    assert_eq!(empty.status, 200);
    let all = row(&empty.body, "metrics-counts", r#"data-scope="all""#);
    assert_eq!(field(all, "processed"), "0");
    assert_eq!(field(all, "failure_rate"), "-");
}
