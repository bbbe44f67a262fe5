//! The metrics page (`/metrics-page`; `/metrics` is the Prometheus exposition): for one queue
//! over the last hour, day or week, per task name and for every task together, the counts
//! (processed, completed, failed, retried, dead, recovered) and the run, wait and total-time
//! histograms with p50 / p95 / p99 and the mean, each histogram drawn as a small SVG bar chart.
//!
//! Everything comes from [`ostq::Queue::history`]: the points of the window merged with
//! [`TaskFigures::merge`]. The run histogram counts every attempt that ended, failed ones
//! included (unlike Sidekiq's, which leaves failures out), and the page says so.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use ostq::admin::{Histogram, TaskFigures, HISTOGRAM_BUCKETS, UNNAMED_TASK};

use crate::html::{self, count, esc, query, Nav};
use crate::overview::Range;
use crate::pages;
use crate::queue::queue_url;
use crate::{App, Ctx};

/// At most this many task names get rows; the rest are still in "every task".
const MAX_TASKS_SHOWN: usize = 100;

#[derive(serde::Deserialize, Default)]
pub(crate) struct MetricsQuery {
    queue: Option<String>,
    window: Option<String>,
}

/// The URL of the metrics page for `queue` over `range`.
pub(crate) fn metrics_url(ctx: &Ctx, queue: &str, range: Range) -> String {
    format!(
        "{}/metrics-page{}",
        ctx.base,
        query(&[("queue", queue), ("window", range.label())])
    )
}

/// The three durations a history keeps.
#[derive(Clone, Copy)]
enum Kind {
    Run,
    Wait,
    Total,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Run, Kind::Wait, Kind::Total];

    fn name(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Wait => "wait",
            Kind::Total => "total",
        }
    }

    fn meaning(self) -> &'static str {
        match self {
            Kind::Run => "start to end of each attempt, failed attempts included",
            Kind::Wait => "enqueue to the start of the first attempt",
            Kind::Total => "enqueue to completion, completed jobs only",
        }
    }

    /// The histogram and the sum of its durations in ms.
    fn of(self, figures: &TaskFigures) -> (&Histogram, u64) {
        match self {
            Kind::Run => (&figures.run, figures.run_sum_ms),
            Kind::Wait => (&figures.wait, figures.wait_sum_ms),
            Kind::Total => (&figures.total, figures.total_sum_ms),
        }
    }
}

/// A quantile for people: `≤ 40ms` (the bucket's upper bound), `> 5h 49m` in the last bucket
/// (no upper bound), `-` when nothing was counted.
pub(crate) fn quantile_text(histogram: &Histogram, q: f64) -> String {
    match histogram.quantile_bucket(q) {
        None => "-".to_string(),
        Some(b) => match (Histogram::upper_bound(b), Histogram::lower_bound(b)) {
            (Some(upper), _) => format!("≤ {}", html::duration(upper)),
            (None, Some(lower)) => format!("> {}", html::duration(lower)),
            (None, None) => "-".to_string(),
        },
    }
}

/// The mean of a histogram's durations from their sum; `-` when nothing was counted.
pub(crate) fn mean_text(histogram: &Histogram, sum_ms: u64) -> String {
    match histogram.count() {
        0 => "-".to_string(),
        n => html::duration(Duration::from_millis(sum_ms / n)),
    }
}

/// `GET /metrics-page?queue=&window=1h|24h|7d`.
pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Query(params): Query<MetricsQuery>,
) -> Response {
    let queues = match app.client.queues().await {
        Ok(queues) => queues,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let range = Range::parse(params.window.as_deref());
    let chosen = params
        .queue
        .filter(|q| !q.is_empty())
        .or_else(|| queues.first().cloned());
    let mut body = String::from("<h1>Metrics</h1>");
    let Some(chosen) = chosen else {
        body.push_str(r#"<p class="empty" id="no-queues">No queues yet: push a job (<code>ostq push QUEUE PAYLOAD</code>) and run a worker, and its figures appear here.</p>"#);
        return Html(html::page(&ctx, "Metrics", Nav::Metrics, &body)).into_response();
    };
    if let Err(e) = ostq::keys::validate_queue_name(&chosen) {
        return pages::library_error(&ctx, &e);
    }
    let (resolution, span, _) = range.plan();
    let now = SystemTime::now();
    let from = now.checked_sub(span).unwrap_or(SystemTime::UNIX_EPOCH);
    let points = match app
        .client
        .queue(&chosen)
        .history(resolution, from, now)
        .await
    {
        Ok(points) => points,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let mut by_task: BTreeMap<String, TaskFigures> = BTreeMap::new();
    let mut all = TaskFigures::default();
    for point in &points {
        for (task, figures) in &point.tasks {
            by_task.entry(task.clone()).or_default().merge(figures);
            all.merge(figures);
        }
    }

    // Which queue, which window.
    body.push_str(r#"<nav class="tabs" id="metrics-queues" aria-label="queue">"#);
    for queue in &queues {
        let current = if *queue == chosen {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            body,
            r#"<a href="{}"{current}>{}</a>"#,
            esc(&metrics_url(&ctx, queue, range)),
            esc(queue)
        );
    }
    body.push_str(r#"</nav><nav class="tabs" id="metrics-windows" aria-label="window">"#);
    for r in [Range::Hour, Range::Day, Range::Week] {
        let current = if r == range {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            body,
            r#"<a href="{}"{current}>last {}</a>"#,
            esc(&metrics_url(&ctx, &chosen, r)),
            r.label()
        );
    }
    let _ = write!(
        body,
        r#"</nav><p id="metrics-summary">Queue <a href="{link}"><strong>{queue}</strong></a>, the last {window} ({points} {resolution} points from the queue's history). <strong>Run</strong> is {run}: a job that failed twice and then completed counts three runs. <strong>Wait</strong> is {wait}; <strong>total</strong> is {total}. Quantiles are the upper bounds of log-scale buckets (≤ 40ms: between 20 and 40 ms); means are exact.</p>"#,
        link = esc(&queue_url(&ctx, &chosen)),
        queue = esc(&chosen),
        window = range.label(),
        points = count(points.len() as u64),
        resolution = match resolution {
            ostq::admin::Resolution::Minute => "minute",
            _ => "hour",
        },
        run = Kind::Run.meaning(),
        wait = Kind::Wait.meaning(),
        total = Kind::Total.meaning(),
    );

    let shown: Vec<(&String, &TaskFigures)> = by_task.iter().take(MAX_TASKS_SHOWN).collect();
    counts_table(&all, &shown, &mut body);
    durations_table(&all, &shown, &mut body);
    if by_task.len() > MAX_TASKS_SHOWN {
        let _ = write!(
            body,
            r#"<p class="hint">{} task names; the first {MAX_TASKS_SHOWN} by name have rows, every one is in “every task”.</p>"#,
            count(by_task.len() as u64)
        );
    }
    Html(html::page(&ctx, "Metrics", Nav::Metrics, &body)).into_response()
}

/// A task name for people: the unnamed task (`-`) said in words.
fn task_label(task: &str) -> String {
    if task == UNNAMED_TASK {
        "(no task name)".to_string()
    } else {
        task.to_string()
    }
}

/// The row's identifying attributes: `data-scope="all"`, or `data-scope="task" data-task="…"`.
fn row_attrs(task: Option<&str>) -> String {
    match task {
        None => r#"data-scope="all""#.to_string(),
        Some(task) => format!(r#"data-scope="task" data-task="{}""#, esc(task)),
    }
}

fn counts_table(all: &TaskFigures, tasks: &[(&String, &TaskFigures)], out: &mut String) {
    out.push_str(
        r#"<section><h2>Counts</h2><table id="metrics-counts"><thead><tr><th>Task</th><th class="num">Processed</th><th class="num">Completed</th><th class="num">Failed</th><th class="num">Retried</th><th class="num">Dead</th><th class="num">Recovered</th><th class="num">Failure rate</th></tr></thead><tbody>"#,
    );
    let rows =
        std::iter::once((None, all)).chain(tasks.iter().map(|(t, f)| (Some(t.as_str()), *f)));
    for (task, f) in rows {
        let label = match task {
            None => "<strong>every task</strong>".to_string(),
            Some(task) => esc(&task_label(task)).to_string(),
        };
        let _ = write!(
            out,
            r#"<tr {attrs}><td>{label}</td><td class="num" data-field="processed">{}</td><td class="num" data-field="completed">{}</td><td class="num" data-field="failed">{}</td><td class="num" data-field="retried">{}</td><td class="num" data-field="dead">{}</td><td class="num" data-field="recovered">{}</td><td class="num" data-field="failure_rate">{}</td></tr>"#,
            count(f.processed),
            count(f.completed),
            count(f.failed),
            count(f.retried),
            count(f.dead),
            count(f.recovered),
            html::percent(f.failure_rate()),
            attrs = row_attrs(task),
        );
    }
    out.push_str("</tbody></table>");
    out.push_str(r#"<p class="hint">Recovered jobs (taken back from workers whose leases expired) are counted in failed too, and in retried or dead.</p></section>"#);
}

fn durations_table(all: &TaskFigures, tasks: &[(&String, &TaskFigures)], out: &mut String) {
    out.push_str(
        r#"<section><h2>Durations</h2><table id="metrics-durations"><thead><tr><th>Task</th><th>Time</th><th class="num">Count</th><th class="num">p50</th><th class="num">p95</th><th class="num">p99</th><th class="num">Mean</th><th>Histogram (5ms … 5h49m+, log scale)</th></tr></thead><tbody>"#,
    );
    let rows =
        std::iter::once((None, all)).chain(tasks.iter().map(|(t, f)| (Some(t.as_str()), *f)));
    for (task, figures) in rows {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let (histogram, sum_ms) = kind.of(figures);
            let label = match (i, task) {
                (0, None) => r#"<th rowspan="3" scope="rowgroup">every task</th>"#.to_string(),
                (0, Some(task)) => format!(
                    r#"<th rowspan="3" scope="rowgroup">{}</th>"#,
                    esc(&task_label(task))
                ),
                _ => String::new(),
            };
            let _ = write!(
                out,
                r#"<tr {attrs} data-kind="{kind}">{label}<td>{kind}</td><td class="num" data-field="count">{count}</td><td class="num" data-field="p50">{p50}</td><td class="num" data-field="p95">{p95}</td><td class="num" data-field="p99">{p99}</td><td class="num" data-field="mean">{mean}</td><td>{chart}</td></tr>"#,
                attrs = row_attrs(task),
                kind = kind.name(),
                count = count(histogram.count()),
                p50 = esc(&quantile_text(histogram, 0.50)),
                p95 = esc(&quantile_text(histogram, 0.95)),
                p99 = esc(&quantile_text(histogram, 0.99)),
                mean = esc(&mean_text(histogram, sum_ms)),
                chart = histogram_chart(histogram, kind),
            );
        }
    }
    out.push_str("</tbody></table></section>");
}

/// A histogram's 24 buckets as bars (heights relative to the fullest bucket), each with a
/// tooltip giving its range and count.
fn histogram_chart(histogram: &Histogram, kind: Kind) -> String {
    const BAR: usize = 10;
    const HEIGHT: f64 = 40.0;
    let max = histogram.buckets.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut svg = format!(
        r#"<svg class="hist {kind}" viewBox="0 0 {width} {HEIGHT}" role="img" aria-label="{kind} time histogram">"#,
        kind = kind.name(),
        width = BAR * HISTOGRAM_BUCKETS,
    );
    for (b, &n) in histogram.buckets.iter().enumerate() {
        let range = match (Histogram::lower_bound(b), Histogram::upper_bound(b)) {
            (Some(low), Some(high)) if b == 0 => format!("≤ {}", html::duration(high.max(low))),
            (Some(low), Some(high)) => {
                format!("{} – {}", html::duration(low), html::duration(high))
            }
            (Some(low), None) => format!("> {}", html::duration(low)),
            _ => String::new(),
        };
        let title = format!("{range}: {}", count(n));
        // An empty bucket still gets a hairline so the scale reads from left to right.
        let h = if n == 0 {
            0.5
        } else {
            (n as f64 / max * HEIGHT).max(1.5)
        };
        let _ = write!(
            svg,
            r#"<rect class="{}" x="{}" y="{:.2}" width="{}" height="{h:.2}"><title>{}</title></rect>"#,
            if n == 0 { "empty" } else { "bar" },
            b * BAR,
            HEIGHT - h,
            BAR - 1,
            esc(&title)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_read_as_bucket_bounds() {
        let mut h = Histogram::default();
        assert_eq!(quantile_text(&h, 0.5), "-");
        h.buckets[3] = 10; // 20 ms < d ≤ 40 ms
        assert_eq!(quantile_text(&h, 0.5), "≤ 40ms");
        h.buckets[HISTOGRAM_BUCKETS - 1] = 90;
        assert!(quantile_text(&h, 0.99).starts_with("> "));
        assert_eq!(mean_text(&h, 100 * 30), "30ms");
        assert_eq!(mean_text(&Histogram::default(), 0), "-");
    }
}
