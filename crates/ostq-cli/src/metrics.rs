//! `ostq metrics`: a Prometheus endpoint. Every scrape of `GET /metrics` reads the queues, the
//! worker registry and Redis's figures through the library's admin API, sets them on a fresh
//! local recorder of `metrics-exporter-prometheus` and answers with its rendering (text format
//! 0.0.4). Nothing is cached between scrapes, so a queue, a worker or a latency that is gone is
//! gone from the next scrape too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::{StreamExt, TryStreamExt};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use ostq::admin::{Histogram, RedisInfo, TaskFigures, WorkerInfo};
use ostq::{Client, QueueCounts};

use crate::cli::{Global, MetricsArgs};
use crate::util::{check_queue, explain_redis_error, one_line, redact};

/// The content type of the Prometheus text exposition format 0.0.4.
const CONTENT_TYPE_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Queues read at once during a scrape. The client's one multiplexed connection pipelines
/// concurrent commands, so this bounds the commands in flight, not the connections.
const QUEUES_IN_FLIGHT: usize = 64;

/// What the endpoint needs for each scrape.
struct Exporter {
    client: Client,
    /// The queues asked for on the command line; empty: every known queue.
    queues: Vec<String>,
    /// How long one scrape may read Redis before it answers `ostq_redis_up 0`.
    timeout: Duration,
    /// Whether the last scrape reached Redis (to print a line when that changes, not each time).
    up: AtomicBool,
    url: String,
}

/// One queue as a scrape read it.
struct QueueReading {
    counts: QueueCounts,
    /// Per task, since the history began (`Queue::history_totals`).
    tasks: BTreeMap<String, TaskFigures>,
    /// The age of the job that runs next; `None` when nothing is pending or it is unknown (a
    /// bare entry has no enqueue time).
    latency: Option<Duration>,
}

/// Everything one scrape read from Redis.
struct Reading {
    queues: Vec<QueueReading>,
    workers: Vec<WorkerInfo>,
    redis: RedisInfo,
}

/// `ADDR:PORT` for `--listen`: an IP address and a port, or `:PORT` for every interface.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    let full = match t.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => t.to_string(),
    };
    full.parse::<SocketAddr>().map_err(|_| {
        format!("bad address {t:?}: expected IP:PORT such as 127.0.0.1:9808, [::1]:9808 or :9808")
    })
}

/// `ostq metrics`: serves `/metrics` on `--listen` until ctrl-c or SIGTERM.
pub async fn run(global: &Global, args: MetricsArgs) -> anyhow::Result<()> {
    for q in &args.queues {
        check_queue(q)?;
    }
    let url = global.redis_url();
    // Listen first: a port in use is the error to report, whatever Redis is doing.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().unwrap_or(args.listen);
    // Lazy: an exporter starts (and says `ostq_redis_up 0`) while Redis is down.
    let client = Client::connect_lazy(&url)
        .await
        .map_err(|e| explain_redis_error(&url, &e))?;
    let exporter = Arc::new(Exporter {
        client,
        queues: args.queues,
        timeout: args.timeout,
        up: AtomicBool::new(true),
        url,
    });
    // One read now, so a wrong password or an unreachable Redis shows at once on stderr.
    let _ = exporter.read().await;
    eprintln!(
        "serving Prometheus metrics on http://{local}/metrics (Redis at {})",
        redact(&exporter.url)
    );
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(index))
        .with_state(exporter);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the metrics server stopped")
}

/// Resolves at ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

async fn index() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ostq metrics: the Prometheus endpoint is /metrics\n",
    )
}

async fn scrape(State(exporter): State<Arc<Exporter>>) -> impl IntoResponse {
    let started = Instant::now();
    let reading = exporter.read().await.ok();
    let body = render(reading.as_ref(), started);
    ([(CONTENT_TYPE, CONTENT_TYPE_0_0_4)], body)
}

impl Exporter {
    /// Reads every figure, within the time limit; prints a line on stderr when Redis stops or
    /// starts answering.
    async fn read(&self) -> anyhow::Result<Reading> {
        let result = match tokio::time::timeout(self.timeout, self.read_all()).await {
            Ok(Ok(reading)) => Ok(reading),
            Ok(Err(e)) => Err(explain_redis_error(&self.url, &e)),
            Err(_) => Err(anyhow!(
                "Redis at {} did not answer within {:?}",
                redact(&self.url),
                self.timeout
            )),
        };
        let up = result.is_ok();
        if self.up.swap(up, Ordering::Relaxed) != up {
            match &result {
                Ok(_) => eprintln!("Redis at {} answers again", redact(&self.url)),
                Err(e) => eprintln!(
                    "warning: {}; scrapes say ostq_redis_up 0 until it answers",
                    one_line(&format!("{e:#}"))
                ),
            }
        }
        result
    }

    async fn read_all(&self) -> ostq::Result<Reading> {
        let names = if self.queues.is_empty() {
            self.client.queues().await?
        } else {
            self.queues.clone()
        };
        let queues = futures::stream::iter(names)
            .map(|name| read_queue(&self.client, name))
            .buffered(QUEUES_IN_FLIGHT)
            .try_collect::<Vec<_>>();
        let (queues, workers, redis) =
            tokio::try_join!(queues, self.client.workers(), self.client.redis_info())?;
        Ok(Reading {
            queues,
            workers,
            redis,
        })
    }
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

/// The exposition text of one scrape: `reading` is `None` when Redis could not be read.
fn render(reading: Option<&Reading>, started: Instant) -> String {
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
    fn listen_addresses() {
        assert_eq!(
            parse_listen("127.0.0.1:9808"),
            Ok("127.0.0.1:9808".parse().unwrap_or_else(|_| unreachable!()))
        );
        assert_eq!(
            parse_listen(":9808").map(|a| a.port()),
            Ok(9808),
            "a bare port listens everywhere"
        );
        assert!(parse_listen("[::1]:9808").is_ok());
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("127.0.0.1:99999").is_err());
    }

    #[test]
    fn redis_down_renders_up_zero_and_the_duration_only() {
        let text = render(None, Instant::now());
        assert!(text.contains("# TYPE ostq_redis_up gauge"), "{text}");
        assert!(text.contains("ostq_redis_up 0\n"), "{text}");
        assert!(text.contains("ostq_scrape_duration_seconds "), "{text}");
        assert!(!text.contains("ostq_queue_jobs{"), "{text}");
    }
}
