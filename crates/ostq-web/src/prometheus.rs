//! Prometheus exposition of the queues, the worker registry and Redis: what `ostq metrics` and
//! the dashboard's `/metrics` serve (docs/observability.md §1). Every scrape reads Redis
//! through the admin API ([`read`]) and renders a fresh recorder of `metrics-exporter-prometheus`
//! ([`render`]); nothing is cached between scrapes, so a queue, a worker or a latency that is
//! gone is gone from the next scrape too.
//!
//! ```no_run
//! # async fn demo(client: ostq::Client) -> ostq::Result<()> {
//! let started = std::time::Instant::now();
//! let reading = ostq_web::prometheus::read(&client, &[]).await.ok();
//! let text = ostq_web::prometheus::render(reading.as_ref(), started);
//! assert!(text.contains("ostq_redis_up"));
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use ostq::admin::{Histogram, RedisInfo, TaskFigures, WorkerInfo};
use ostq::{Client, QueueCounts};

/// The content type of the Prometheus text exposition format 0.0.4.
///
/// ```
/// assert!(ostq_web::prometheus::CONTENT_TYPE.contains("version=0.0.4"));
/// ```
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Queues read at once during a scrape. The client's one multiplexed connection pipelines
/// concurrent commands, so this bounds the commands in flight, not the connections.
const QUEUES_IN_FLIGHT: usize = 64;

/// One queue as a scrape read it.
struct QueueReading {
    counts: QueueCounts,
    /// Per task, since the history began (`Queue::history_totals`).
    tasks: BTreeMap<String, TaskFigures>,
    /// The age of the job that runs next; `None` when nothing is pending or it is unknown (a
    /// bare entry has no enqueue time).
    latency: Option<Duration>,
}

/// How long the dashboard's `/metrics` may read Redis before it answers `ostq_redis_up 0` (under
/// Prometheus's default `scrape_timeout` of 10 s).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /metrics` of the dashboard: every queue, behind the dashboard's own auth (Prometheus
/// sends the token as `Authorization: Bearer`, `authorization.credentials_file` in its config).
pub(crate) async fn serve(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<crate::App>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let started = Instant::now();
    let reading = tokio::time::timeout(SCRAPE_TIMEOUT, read(&app.client, &[]))
        .await
        .ok()
        .and_then(Result::ok);
    let body = render(reading.as_ref(), started);
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

/// Everything one scrape read from Redis ([`read`]), to [`render`].
pub struct Reading {
    queues: Vec<QueueReading>,
    workers: Vec<WorkerInfo>,
    redis: RedisInfo,
}

/// Reads every figure of the given queues (every known queue for an empty list), the worker
/// registry and Redis's `INFO`: a few pipelined round trips per 64 queues.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let reading = ostq_web::prometheus::read(&client, &["videos".to_string()]).await?;
/// # let _ = reading;
/// # Ok(()) }
/// ```
pub async fn read(client: &Client, queues: &[String]) -> ostq::Result<Reading> {
    let names = if queues.is_empty() {
        client.queues().await?
    } else {
        queues.to_vec()
    };
    let queues = futures::stream::iter(names)
        .map(|name| read_queue(client, name))
        .buffered(QUEUES_IN_FLIGHT)
        .try_collect::<Vec<_>>();
    let (queues, workers, redis) = tokio::try_join!(queues, client.workers(), client.redis_info())?;
    Ok(Reading {
        queues,
        workers,
        redis,
    })
}

async fn read_queue(client: &Client, name: String) -> ostq::Result<QueueReading> {
    let queue = client.queue(&name);
    let (counts, tasks) = tokio::try_join!(queue.counts(), queue.history_totals())?;
    let latency = if counts.pending > 0 {
        queue.oldest_pending_age().await?
    } else {
        None
    };
    Ok(QueueReading {
        counts,
        tasks,
        latency,
    })
}

/// A label value as `metrics-exporter-prometheus` wants it: its sanitizer takes a backslash
/// followed by a quote or another backslash as an escape already made, so every backslash is
/// doubled here and the rendered value reads back as the queue's exact name.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\")
}

/// The exposition text of one scrape: `reading` is `None` when Redis could not be read (only
/// `ostq_redis_up 0` and the scrape's duration, measured from `started`, are written then).
///
/// ```
/// let text = ostq_web::prometheus::render(None, std::time::Instant::now());
/// assert!(text.contains("ostq_redis_up 0"));
/// ```
pub fn render(reading: Option<&Reading>, started: Instant) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe();
        gauge!("ostq_redis_up").set(if reading.is_some() { 1.0 } else { 0.0 });
        if let Some(reading) = reading {
            record(reading);
        }
        gauge!("ostq_scrape_duration_seconds").set(started.elapsed().as_secs_f64());
    });
    let mut text = handle.render();
    if let Some(reading) = reading {
        render_histograms(reading, &mut text);
    }
    text
}

/// HELP (and so TYPE) of every metric.
fn describe() {
    describe_gauge!(
        "ostq_queue_jobs",
        "Jobs in the queue by state: pending, active, scheduled, retry, dead, completed."
    );
    describe_gauge!(
        "ostq_queue_latency_seconds",
        "How long the job that runs next has waited since it was enqueued (absent when nothing is pending or its enqueue time is unknown)."
    );
    describe_gauge!(
        "ostq_queue_paused",
        "1 when the queue is paused (workers take no jobs from it), else 0."
    );
    describe_counter!(
        "ostq_jobs_processed_total",
        "Attempts that ended, successful or not, by task (from the queue's history)."
    );
    describe_counter!(
        "ostq_jobs_completed_total",
        "Attempts that completed, by task (from the queue's history)."
    );
    describe_counter!(
        "ostq_jobs_failed_total",
        "Attempts that failed (errors, panics, timeouts, lost workers), by task."
    );
    describe_counter!(
        "ostq_jobs_retried_total",
        "Failed attempts sent to retry, by task."
    );
    describe_counter!(
        "ostq_jobs_dead_total",
        "Failed attempts sent to the dead set, by task."
    );
    describe_counter!(
        "ostq_jobs_recovered_total",
        "Jobs taken back from workers whose leases expired, by task."
    );
    describe_gauge!("ostq_workers", "Live workers serving the queue.");
    describe_gauge!(
        "ostq_worker_slots",
        "Jobs the live workers may run at once (their concurrency), summed."
    );
    describe_gauge!(
        "ostq_worker_slots_busy",
        "Jobs the live workers were running at their last heartbeat, summed."
    );
    describe_gauge!(
        "ostq_redis_up",
        "1 when this scrape read Redis, 0 when Redis could not be read."
    );
    describe_gauge!(
        "ostq_redis_used_memory_bytes",
        "Memory Redis uses (INFO used_memory; summed over Cluster nodes)."
    );
    describe_gauge!(
        "ostq_redis_maxmemory_bytes",
        "Redis's memory limit (INFO maxmemory); 0 when there is none."
    );
    describe_gauge!(
        "ostq_redis_connected_clients",
        "Client connections to Redis (INFO connected_clients)."
    );
    describe_gauge!(
        "ostq_scrape_duration_seconds",
        "How long this scrape took to read its figures from Redis."
    );
}

/// Sets every figure of `reading` on the current (local) recorder.
fn record(reading: &Reading) {
    // With a list of queues, the workers that serve none of them are not counted.
    let listed = |w: &&WorkerInfo| reading.queues.iter().any(|q| w.serves(&q.counts.queue));
    let mut slots = 0u64;
    let mut busy = 0u64;
    for w in reading.workers.iter().filter(listed) {
        slots += w.concurrency;
        busy += w.busy;
    }
    gauge!("ostq_worker_slots").set(slots as f64);
    gauge!("ostq_worker_slots_busy").set(busy as f64);

    for q in &reading.queues {
        let c = &q.counts;
        let name = label(&c.queue);
        for (state, n) in [
            ("pending", c.pending),
            ("active", c.active),
            ("scheduled", c.scheduled),
            ("retry", c.retry),
            ("dead", c.dead),
            ("completed", c.completed),
        ] {
            gauge!("ostq_queue_jobs", "queue" => name.clone(), "state" => state).set(n as f64);
        }
        if let Some(age) = q.latency {
            gauge!("ostq_queue_latency_seconds", "queue" => name.clone()).set(age.as_secs_f64());
        }
        gauge!("ostq_queue_paused", "queue" => name.clone()).set(if c.paused { 1.0 } else { 0.0 });
        for (task, f) in &q.tasks {
            let task = label(task);
            for (metric, n) in [
                ("ostq_jobs_processed_total", f.processed),
                ("ostq_jobs_completed_total", f.completed),
                ("ostq_jobs_failed_total", f.failed),
                ("ostq_jobs_retried_total", f.retried),
                ("ostq_jobs_dead_total", f.dead),
                ("ostq_jobs_recovered_total", f.recovered),
            ] {
                counter!(metric, "queue" => name.clone(), "task" => task.clone()).absolute(n);
            }
        }
        let serving = reading
            .workers
            .iter()
            .filter(|w| w.serves(&c.queue))
            .count();
        gauge!("ostq_workers", "queue" => name).set(serving as f64);
    }

    let redis = &reading.redis;
    gauge!("ostq_redis_used_memory_bytes").set(redis.used_memory as f64);
    gauge!("ostq_redis_maxmemory_bytes").set(redis.maxmemory as f64);
    gauge!("ostq_redis_connected_clients").set(redis.connected_clients as f64);
}

/// The duration histograms, as text appended to the recorder's rendering: the history holds
/// them already bucketed, which the `metrics` facade (it records one observation at a time)
/// cannot express. Bucket `b` of the history is `le = 0.005 · 2^b` seconds; its last bucket is
/// `+Inf`. A series is written only for tasks that have counted durations.
fn render_histograms(reading: &Reading, out: &mut String) {
    type Pick = fn(&TaskFigures) -> (&Histogram, u64);
    let families: [(&str, &str, Pick); 3] = [
        (
            "ostq_job_run_duration_seconds",
            "How long attempts ran, start to end, by task (from the queue's history).",
            |f| (&f.run, f.run_sum_ms),
        ),
        (
            "ostq_job_wait_duration_seconds",
            "How long jobs waited from enqueue to the start of their first attempt, by task (jobs with an enqueue time only).",
            |f| (&f.wait, f.wait_sum_ms),
        ),
        (
            "ostq_job_total_duration_seconds",
            "How long completed jobs took from enqueue to completion, by task (jobs with an enqueue time only).",
            |f| (&f.total, f.total_sum_ms),
        ),
    ];
    for (name, help, pick) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for q in &reading.queues {
            for (task, figures) in &q.tasks {
                let (histogram, sum_ms) = pick(figures);
                if histogram.count() == 0 {
                    continue;
                }
                let labels = format!(
                    "queue=\"{}\",task=\"{}\"",
                    escape_label(&q.counts.queue),
                    escape_label(task)
                );
                let mut cumulative = 0u64;
                for (b, n) in histogram.buckets.iter().enumerate() {
                    cumulative = cumulative.saturating_add(*n);
                    let le = match Histogram::upper_bound(b) {
                        Some(bound) => bound.as_secs_f64().to_string(),
                        None => "+Inf".to_string(),
                    };
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_ms as f64 / 1000.0);
                let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
            }
        }
        out.push('\n');
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_down_renders_up_zero_and_the_duration_only() {
        let text = render(None, Instant::now());
        assert!(text.contains("# TYPE ostq_redis_up gauge"), "{text}");
        assert!(text.contains("ostq_redis_up 0\n"), "{text}");
        assert!(text.contains("ostq_scrape_duration_seconds "), "{text}");
        assert!(!text.contains("ostq_queue_jobs{"), "{text}");
    }
}
