//! The overview: alerts, Redis's health, live workers, every queue's figures, a live throughput
//! chart (drawn by `app.js` from `api/totals`) and the history of the last hour, day or week.

use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use ostq::admin::alerts::{self, Alert, AlertKind};
use ostq::admin::{QueueStats, RedisInfo, Resolution, Snapshot};

use crate::html::{self, count, esc, percent, url_part, Nav};
use crate::pages;
use crate::{App, Ctx};

/// The history ranges offered, with the resolution read and how many points make one bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    Hour,
    Day,
    Week,
}

impl Range {
    pub(crate) fn parse(text: Option<&str>) -> Range {
        match text {
            Some("24h") => Range::Day,
            Some("7d") => Range::Week,
            _ => Range::Hour,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "24h",
            Range::Week => "7d",
        }
    }

    /// (resolution, span, points per bar)
    pub(crate) fn plan(self) -> (Resolution, Duration, usize) {
        match self {
            Range::Hour => (Resolution::Minute, Duration::from_secs(59 * 60), 1),
            Range::Day => (Resolution::Minute, Duration::from_secs(24 * 3600 - 60), 15),
            Range::Week => (
                Resolution::Hour,
                Duration::from_secs(7 * 24 * 3600 - 3600),
                1,
            ),
        }
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct OverviewQuery {
    history: Option<String>,
}

/// One bar of the history chart: its start, attempts processed and failed.
pub(crate) struct Bar {
    at_ms: u64,
    processed: u64,
    failed: u64,
}

/// `GET /`.
pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Query(query): Query<OverviewQuery>,
) -> Response {
    let snapshot = match app.sampler.lock().await.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let workers = match app.client.workers().await {
        Ok(workers) => workers,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let range = Range::parse(query.history.as_deref());
    let bars = match history(&app, &snapshot, range).await {
        Ok(bars) => bars,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let found = alerts::check(&snapshot, &app.options.alert_rules);
    let mut body = String::new();
    body.push_str(r#"<div id="alerts">"#);
    alert_banners(&found, &snapshot.redis, &mut body);
    body.push_str("</div>");
    let _ = write!(
        body,
        r#"<section class="cards">{}{}</section>"#,
        redis_card(&snapshot.redis, &ctx),
        workers_card(&ctx, workers.len(), workers.iter().map(|w| w.busy).sum()),
    );
    queues_table(&ctx, &snapshot.queues, &mut body);
    live_chart(&ctx, &mut body);
    history_chart(&ctx, range, &bars, &mut body);
    Html(html::page(&ctx, "Overview", Nav::Overview, &body)).into_response()
}

fn alert_banners(found: &[Alert], redis: &RedisInfo, out: &mut String) {
    for alert in found {
        let class = match alert.kind {
            AlertKind::MemoryUnchecked => "warning",
            _ => "error",
        };
        let _ = write!(
            out,
            r#"<p class="banner {class}" role="alert" data-kind="{}">{}</p>"#,
            esc(&format!("{:?}", alert.kind)),
            esc(&alert.message)
        );
    }
    let policy = &redis.maxmemory_policy;
    if !policy.is_empty() && policy != "noeviction" {
        let _ = write!(
            out,
            r#"<p class="banner error" role="alert" id="eviction-warning">Redis's maxmemory-policy is <code>{}</code>: at its memory limit Redis may evict queue keys and lose jobs. Set it to <code>noeviction</code>.</p>"#,
            esc(policy)
        );
    }
}

fn redis_card(redis: &RedisInfo, ctx: &Ctx) -> String {
    let memory = if redis.maxmemory > 0 {
        format!(
            "{} of {} ({:.1}%)",
            esc(&redis.used_memory_human),
            human_bytes(redis.maxmemory),
            redis.used_memory as f64 * 100.0 / redis.maxmemory as f64
        )
    } else {
        format!("{} (no maxmemory limit)", esc(&redis.used_memory_human))
    };
    format!(
        r#"<article class="card" id="redis-health"><h2>Redis</h2><dl>
<dt>Server</dt><dd>{url}</dd>
<dt>Version</dt><dd id="redis-version">{version}</dd>
<dt>Memory</dt><dd id="redis-memory">{memory}</dd>
<dt>Clients</dt><dd id="redis-clients">{clients}</dd>
<dt>Eviction policy</dt><dd id="redis-policy" class="{policy_class}">{policy}</dd>
</dl></article>"#,
        url = esc(&ctx.redis_label),
        version = esc(&redis.version),
        clients = count(redis.connected_clients),
        policy_class = if redis.maxmemory_policy == "noeviction" {
            "ok"
        } else {
            "bad"
        },
        policy = esc(&redis.maxmemory_policy),
    )
}

fn workers_card(ctx: &Ctx, live: usize, busy: u64) -> String {
    format!(
        r#"<article class="card"><h2>Workers</h2><p class="big"><a href="{base}/workers" id="workers-live">{live}</a></p><p>live, <span id="workers-busy">{busy}</span> jobs running</p></article>"#,
        base = esc(&ctx.base),
        live = count(live as u64),
        busy = count(busy),
    )
}

/// The latency cell: the age of the next job, "unknown" for a bare entry (no enqueue time).
pub(crate) fn latency(q: &QueueStats) -> String {
    match (q.counts.pending, q.oldest_pending_age()) {
        (0, _) => "-".to_string(),
        (_, Some(age)) => html::duration(age),
        (_, None) => "unknown".to_string(),
    }
}

fn queues_table(ctx: &Ctx, queues: &[QueueStats], out: &mut String) {
    out.push_str(
        r#"<section><h2>Queues</h2><table class="queues" id="queues"><thead><tr>
<th>Queue</th><th class="num">Pending</th><th class="num">Active</th><th class="num">Scheduled</th><th class="num">Retry</th><th class="num">Dead</th><th class="num">Completed</th><th class="num">Jobs/s</th><th class="num">Failure rate</th><th class="num">Latency</th><th class="num">Workers</th>
</tr></thead><tbody>"#,
    );
    if queues.is_empty() {
        out.push_str(r#"<tr><td colspan="11">No queues yet: push a job (<code>ostq push QUEUE PAYLOAD</code>) and it appears here.</td></tr>"#);
    }
    for q in queues {
        let c = &q.counts;
        let link = format!("{}/queues/{}", ctx.base, url_part(&c.queue));
        let state_link = |state: &str, n: u64| {
            format!(
                r#"<td class="num"><a href="{}?state={state}" data-field="{state}">{}</a></td>"#,
                esc(&link),
                count(n)
            )
        };
        let _ = write!(
            out,
            r#"<tr data-queue="{name}"><td><a href="{link}">{name}</a>{paused}</td>{p}{a}{s}{r}{d}{done}<td class="num" data-field="jobs_per_sec">{jps}</td><td class="num" data-field="failure_rate">{rate}</td><td class="num" data-field="latency">{latency}</td><td class="num" data-field="workers">{workers}</td></tr>"#,
            name = esc(&c.queue),
            link = esc(&link),
            paused = if c.paused {
                r#" <span class="badge paused" data-field="paused">paused</span>"#
            } else {
                r#" <span class="badge paused" data-field="paused" hidden>paused</span>"#
            },
            p = state_link("pending", c.pending),
            a = state_link("active", c.active),
            s = state_link("scheduled", c.scheduled),
            r = state_link("retry", c.retry),
            d = state_link("dead", c.dead),
            done = state_link("completed", c.completed),
            jps = q
                .jobs_per_sec
                .map_or_else(|| "-".to_string(), |r| format!("{r:.1}")),
            rate = percent(q.failure_rate),
            latency = latency(q),
            workers = q.workers.map_or_else(|| "-".to_string(), count),
        );
    }
    out.push_str("</tbody></table></section>");
}

fn live_chart(ctx: &Ctx, out: &mut String) {
    let _ = write!(
        out,
        r#"<section class="chart" id="live"><h2>Live throughput</h2>
<div class="controls"><label for="live-interval">Every</label>
<select id="live-interval"><option value="1000">1 s</option><option value="2000" selected>2 s</option><option value="5000">5 s</option><option value="10000">10 s</option></select>
<button type="button" id="live-toggle">Pause</button>
<span class="legend"><span class="key processed"></span>processed/s <span id="live-processed">-</span> <span class="key failed"></span>failed/s <span id="live-failed">-</span></span></div>
<svg id="live-chart" class="plot" viewBox="0 0 600 160" preserveAspectRatio="none" role="img" aria-label="processed and failed jobs per second" data-url="{base}/api/totals" data-overview="{base}/api/overview"><polyline class="processed" points=""/><polyline class="failed" points=""/></svg>
<p class="hint" id="live-status">Drawn from the queues' counters, read in this browser every few seconds.</p>
</section>"#,
        base = esc(&ctx.base)
    );
}

/// The history of every queue, summed, in bars.
async fn history(app: &App, snapshot: &Snapshot, range: Range) -> ostq::Result<Vec<Bar>> {
    let (resolution, span, per_bar) = range.plan();
    let now = SystemTime::now();
    let from = now.checked_sub(span).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut points: Vec<Bar> = Vec::new();
    for q in &snapshot.queues {
        let queue = app.client.queue(&q.counts.queue);
        for (i, point) in queue
            .history(resolution, from, now)
            .await?
            .into_iter()
            .enumerate()
        {
            let all = point.all_tasks();
            match points.get_mut(i) {
                Some(bar) => {
                    bar.processed += all.processed;
                    bar.failed += all.failed;
                }
                None => points.push(Bar {
                    at_ms: point.at_ms,
                    processed: all.processed,
                    failed: all.failed,
                }),
            }
        }
    }
    Ok(points
        .chunks(per_bar)
        .map(|chunk| Bar {
            at_ms: chunk.first().map_or(0, |b| b.at_ms),
            processed: chunk.iter().map(|b| b.processed).sum(),
            failed: chunk.iter().map(|b| b.failed).sum(),
        })
        .collect())
}

fn history_chart(ctx: &Ctx, range: Range, bars: &[Bar], out: &mut String) {
    let _ = write!(
        out,
        r#"<section class="chart" id="history"><h2>History</h2><nav class="tabs">"#
    );
    for r in [Range::Hour, Range::Day, Range::Week] {
        let _ = write!(
            out,
            r#"<a href="{}?history={label}#history"{current}>{label}</a>"#,
            esc(&ctx.home()),
            label = r.label(),
            current = if r == range {
                r#" aria-current="page""#
            } else {
                ""
            }
        );
    }
    out.push_str("</nav>");
    let total: u64 = bars.iter().map(|b| b.processed).sum();
    let failed: u64 = bars.iter().map(|b| b.failed).sum();
    let _ = write!(
        out,
        r#"<p><span class="key processed"></span>processed <strong id="history-processed">{}</strong> <span class="key failed"></span>failed <strong id="history-failed">{}</strong> over the last {}</p>"#,
        count(total),
        count(failed),
        range.label()
    );
    out.push_str(&bar_chart(bars));
    out.push_str("</section>");
}

/// Bars of processed attempts with the failed ones over them, as inline SVG.
fn bar_chart(bars: &[Bar]) -> String {
    const W: f64 = 600.0;
    const H: f64 = 140.0;
    let max = bars.iter().map(|b| b.processed).max().unwrap_or(0).max(1) as f64;
    let width = W / bars.len().max(1) as f64;
    let mut svg = format!(
        r#"<svg class="plot" id="history-chart" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="processed and failed attempts">"#
    );
    for (i, bar) in bars.iter().enumerate() {
        let x = i as f64 * width;
        let title = format!(
            "{}: {} processed, {} failed",
            html::time(bar.at_ms),
            count(bar.processed),
            count(bar.failed)
        );
        let _ = write!(svg, "<g><title>{}</title>", esc(&title));
        for (class, n) in [("processed", bar.processed), ("failed", bar.failed)] {
            if n == 0 {
                continue;
            }
            let h = (n as f64 / max * H).max(1.0);
            let _ = write!(
                svg,
                r#"<rect class="{class}" x="{x:.2}" y="{:.2}" width="{:.2}" height="{h:.2}"/>"#,
                H - h,
                (width - 1.0).max(0.5)
            );
        }
        svg.push_str("</g>");
    }
    svg.push_str("</svg>");
    // Labels outside the SVG: its aspect ratio is not kept, which would stretch text.
    let first = bars
        .first()
        .map(|b| html::time(b.at_ms))
        .unwrap_or_default();
    let _ = write!(
        svg,
        r#"<p class="axis"><span>{}</span><span>now · peak {} per bar</span></p>"#,
        esc(&first),
        count(max as u64)
    );
    svg
}

/// Bytes for people: 1.5G, 200M, 12K.
fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            return format!("{:.2}{unit}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}
