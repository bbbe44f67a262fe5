//! The workers page: every live worker from the registry ([`ostq::Client::workers`]).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;

use crate::html::{self, count, esc, Nav};
use crate::pages;
use crate::queue::queue_url;
use crate::{App, Ctx};

/// `GET /workers`.
pub(crate) async fn page(State(app): State<Arc<App>>, Extension(ctx): Extension<Ctx>) -> Response {
    let workers = match app.client.workers().await {
        Ok(workers) => workers,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let now = html::now_ms();
    let busy: u64 = workers.iter().map(|w| w.busy).sum();
    let slots: u64 = workers.iter().map(|w| w.concurrency).sum();
    let mut body = format!(
        r#"<h1>Workers</h1><p id="workers-summary">{} live workers, {} of {} slots busy. A worker that dies leaves this list within three heartbeats.</p>
<table id="workers"><thead><tr><th>Worker</th><th>Host</th><th class="num">Pid</th><th>Queues</th><th class="num">Busy</th><th>Version</th><th>Started</th><th>Last heartbeat</th></tr></thead><tbody>"#,
        count(workers.len() as u64),
        count(busy),
        count(slots)
    );
    if workers.is_empty() {
        body.push_str(r#"<tr><td colspan="8" class="empty">No live worker. Start one with <code>ostq worker --queue NAME -- PROGRAM {}</code> or <code>ostq::Worker</code>.</td></tr>"#);
    }
    for w in &workers {
        let queues: Vec<String> = w
            .queues
            .iter()
            .map(|q| format!(r#"<a href="{}">{}</a>"#, esc(&queue_url(&ctx, q)), esc(q)))
            .collect();
        let _ = write!(
            body,
            r#"<tr data-worker="{id}"><td><code>{id}</code></td><td>{host}</td><td class="num">{pid}</td><td>{queues}</td><td class="num">{busy}/{concurrency}</td><td>{version}</td><td>{started}</td><td>{seen}</td></tr>"#,
            id = esc(&w.id),
            host = esc(&w.host),
            pid = w.pid,
            queues = queues.join(", "),
            busy = count(w.busy),
            concurrency = count(w.concurrency),
            version = esc(&w.version),
            started = esc(&html::time_ago(w.started_at_ms, now)),
            seen = esc(&html::time_ago(w.last_seen_ms, now)),
        );
    }
    body.push_str("</tbody></table>");
    Html(html::page(&ctx, "Workers", Nav::Workers, &body)).into_response()
}
