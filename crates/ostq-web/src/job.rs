//! The job page: everything the admin API knows about one job (payload as text, pretty JSON or
//! hex; task, attempts, last error, timeline, result, progress) and its actions.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use ostq::admin::attempt_errors::AttemptErrors;
use ostq::admin::lookup::{Found, JobLookup};
use ostq::events::EventKind;
use ostq::{JobInfo, JobState};

use crate::actions::notice;
use crate::html::{self, count, csrf_field, esc, Nav};
use crate::pages;
use crate::queue::{can_delete, can_retry, job_url, job_url_at, queue_url};
use crate::{App, Ctx};

#[derive(serde::Deserialize, Default)]
pub(crate) struct JobQuery {
    done: Option<String>,
    n: Option<String>,
    /// Where a listing saw the job in the pending list (`JobLookup::near`).
    near: Option<u64>,
    /// Where a stopped look goes on down the pending list (`JobLookup::below`).
    below: Option<u64>,
    /// Entries at the pending list's newest end an earlier look read (`JobLookup::from_newest`).
    from: Option<u64>,
}

/// Bytes for people: (how they are shown, the text). JSON is pretty-printed, other UTF-8 text
/// shown as it is, anything else as a hex dump.
pub(crate) fn render_bytes(bytes: &[u8]) -> (&'static str, String) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
                if let Ok(pretty) = serde_json::to_string_pretty(&value) {
                    return ("JSON", pretty);
                }
            }
        }
        return ("text", text.to_string());
    }
    ("binary, hex", hex_dump(bytes))
}

/// 16 bytes a line: offset, hex, and the printable ASCII.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (line, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", line * 16);
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

/// The error of every attempt still in the queue's event stream, or why there is none to show.
fn attempt_errors(queue: &str, found: &AttemptErrors, out: &mut String) {
    let enable = format!("ostq events {queue} --enable");
    if found.errors.is_empty() {
        let why = if found.stream_on {
            "The queue's event stream holds no failed attempt of this job any more (it keeps about the last 10,000 events): only the last error is known.".to_string()
        } else {
            format!("Only the last error is kept. With the queue's events going to its stream (`{enable}`), this page lists the error of every attempt.")
        };
        let _ = write!(
            out,
            r#"<p class="hint" id="attempt-errors-none">{}</p>"#,
            esc(&why)
        );
        return;
    }
    let now = html::now_ms();
    let _ = write!(
        out,
        r#"<section><h2>Errors of every attempt</h2><table id="attempt-errors"><thead><tr><th class="num">Attempt</th><th>When</th><th>Outcome</th><th>Error</th></tr></thead><tbody>"#
    );
    for e in &found.errors {
        let outcome = match e.kind {
            EventKind::Failed => "failed, retried",
            EventKind::Dead => "failed, dead",
            EventKind::Recovered => "worker lost, taken back",
            _ => "failed",
        };
        let _ = write!(
            out,
            r#"<tr data-attempt="{attempt}"><td class="num">{attempt}</td><td>{when}</td><td>{outcome}</td><td class="error"><pre>{error}</pre></td></tr>"#,
            attempt = e.attempt.map_or_else(|| "-".to_string(), |a| a.to_string()),
            when = esc(&html::time_ago(e.at_ms, now)),
            error = esc(&e.error),
        );
    }
    out.push_str("</tbody></table>");
    let mut note = String::from("From the queue's event stream");
    if let Some(since) = found.kept_since_ms {
        let _ = write!(note, ", which keeps events since {}", html::time(since));
    }
    note.push_str(": attempts before that are not listed.");
    if !found.stream_on {
        let _ = write!(
            note,
            " The stream is off now (`{enable}` turns it on): later attempts will not be added."
        );
    }
    if found.truncated {
        note.push_str(" Only the oldest part of the stream was read.");
    }
    let _ = write!(out, r#"<p class="hint">{}</p></section>"#, esc(&note));
}

/// `GET /queues/{queue}/jobs/{id}`.
pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Path((queue_name, id)): Path<(String, String)>,
    Query(query): Query<JobQuery>,
) -> Response {
    if let Err(e) = ostq::keys::validate_queue_name(&queue_name) {
        return pages::library_error(&ctx, &e);
    }
    let queue = app.client.queue(&queue_name);
    let lookup = JobLookup::new()
        .budget(app.options.find_budget)
        .near(query.near)
        .below(query.below)
        .from_newest(query.from.unwrap_or(0));
    let job = match queue.find_job(&id, lookup).await {
        Ok(Found::Job { job, .. }) => *job,
        Ok(Found::StoppedEarly {
            scanned,
            pending,
            next,
        }) => {
            let read = (scanned, pending, app.options.find_budget);
            return stopped_early(&ctx, &queue_name, &id, read, next);
        }
        Ok(Found::NotFound) => {
            let message = format!(
                "No job {id} in queue {queue_name}: it finished (a completed job is kept only when tracked), was deleted, or never existed."
            );
            if query.near.is_some() && query.done.is_none() {
                // The hint was the listing's: a job put back far ahead of it would be missed.
                return not_near(&ctx, &queue_name, &id, &message);
            }
            let mut response = pages::error(&ctx, StatusCode::NOT_FOUND, &message);
            if let Some(text) = notice(query.done.as_deref(), None) {
                // Deleted just now: say so rather than "not found".
                let body = format!(
                    r#"<p class="banner ok" role="status" id="notice">{}</p><p><a href="{}">Back to {}</a></p>"#,
                    esc(&text),
                    esc(&queue_url(&ctx, &queue_name)),
                    esc(&queue_name)
                );
                response = Html(html::page(&ctx, "Job", Nav::Queue, &body)).into_response();
            }
            return response;
        }
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<p class="crumbs"><a href="{home}">Overview</a> › <a href="{queue_link}">{queue}</a> ›</p>
<h1>Job <code id="job-id">{id}</code> <span class="badge state-{state}" id="job-state">{state}</span></h1>"#,
        home = esc(&ctx.home()),
        queue_link = esc(&queue_url(&ctx, &queue_name)),
        queue = esc(&queue_name),
        id = esc(&job.id),
        state = job.state,
    );
    if let Some(text) = notice(
        query.done.as_deref(),
        query.n.as_deref().and_then(|n| n.parse().ok()),
    ) {
        let _ = write!(
            body,
            r#"<p class="banner ok" role="status" id="notice">{}</p>"#,
            esc(&text)
        );
    }
    if !ctx.read_only {
        actions(&ctx, &queue_name, &job, &mut body);
    }
    details(&job, &mut body);
    timeline(&job, &mut body);
    if let Some(error) = &job.last_error {
        let _ = write!(
            body,
            r#"<section><h2>Last error</h2><pre class="error" id="job-error">{}</pre></section>"#,
            esc(error)
        );
        // Earlier attempts' errors live only in the queue's event stream, when it is on.
        match queue.attempt_errors(&job.id).await {
            Ok(found) => attempt_errors(&queue_name, &found, &mut body),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: reading the attempts' errors failed");
                body.push_str(r#"<p class="hint" id="attempt-errors-unavailable">The errors of earlier attempts could not be read from the queue's event stream.</p>"#);
            }
        }
    }
    if let Some(progress) = &job.progress {
        let (kind, text) = render_bytes(progress.as_bytes());
        let _ = write!(
            body,
            r#"<section><h2>Progress <small>({kind})</small></h2><pre id="job-progress">{}</pre></section>"#,
            esc(&text)
        );
    }
    if let Some(result) = &job.result {
        let (kind, text) = render_bytes(result);
        let _ = write!(
            body,
            r#"<section><h2>Result <small>({kind}, {} bytes)</small></h2><pre id="job-result">{}</pre></section>"#,
            count(result.len() as u64),
            esc(&text)
        );
    }
    match &job.payload {
        Some(payload) => {
            let (kind, text) = render_bytes(payload);
            let _ = write!(
                body,
                r#"<section><h2>Payload <small id="payload-kind">({kind}, {} bytes)</small></h2><pre id="job-payload">{}</pre></section>"#,
                count(payload.len() as u64),
                esc(&text)
            );
        }
        None => body.push_str(
            r#"<section><h2>Payload</h2><p class="hint" id="job-payload">Not kept: a completed job keeps only its status record.</p></section>"#,
        ),
    }
    Html(html::page(
        &ctx,
        &format!("Job {}", job.id),
        Nav::Queue,
        &body,
    ))
    .into_response()
}

/// The page of a lookup that read its budget of the pending list without meeting the job.
/// `read` is (entries read, entries in the list, the budget).
fn stopped_early(
    ctx: &Ctx,
    queue: &str,
    id: &str,
    (scanned, pending, budget): (u64, u64, u64),
    next: JobLookup,
) -> Response {
    let further = job_url_at(ctx, queue, id, &next);
    let body = format!(
        r#"<p class="crumbs"><a href="{home}">Overview</a> › <a href="{queue_link}">{queue}</a> ›</p>
<h1>Job <code id="job-id">{id}</code></h1>
<p class="banner warning" role="status" id="lookup-stopped">Not scheduled, waiting to retry, dead, running or completed, and not among the {scanned} pending jobs this page read. The pending list holds {pending} jobs and keeps no index of their ids, so each page reads at most {budget} of them and stops, to stay fast.</p>
<p><a href="{further}" id="look-further">Look further</a></p>"#,
        home = esc(&ctx.home()),
        queue_link = esc(&queue_url(ctx, queue)),
        queue = esc(queue),
        id = esc(id),
        scanned = count(scanned),
        pending = count(pending),
        budget = count(budget),
        further = esc(&further),
    );
    Html(html::page(ctx, "Job", Nav::Queue, &body)).into_response()
}

/// Not found where a listing saw it: offers the whole pending list's scan, from its newest end.
fn not_near(ctx: &Ctx, queue: &str, id: &str, message: &str) -> Response {
    let body = format!(
        r#"<h1>404</h1><p class="banner error" role="alert">{message}</p>
<p><a href="{scan}" id="look-further">Look through the whole pending list</a> (a job put back ahead of many others since it was listed is not where the listing saw it).</p><p><a href="{back}">Back to {queue}</a></p>"#,
        message = esc(message),
        scan = esc(&job_url(ctx, queue, id)),
        back = esc(&queue_url(ctx, queue)),
        queue = esc(queue),
    );
    let page = Html(html::page(ctx, "Job", Nav::Queue, &body));
    (StatusCode::NOT_FOUND, page).into_response()
}

fn actions(ctx: &Ctx, queue: &str, job: &JobInfo, out: &mut String) {
    let url = job_url(ctx, queue, &job.id);
    let button = |action: &str, label: &str, danger: bool| {
        format!(
            r#"<form method="post" action="{url}/{action}" class="inline">{csrf}<button type="submit" id="job-{action}"{class}>{label}</button></form>"#,
            url = esc(&url),
            csrf = csrf_field(ctx),
            class = if danger { r#" class="danger""# } else { "" },
        )
    };
    out.push_str(r#"<div class="actions" id="job-actions">"#);
    if matches!(
        job.state,
        JobState::Pending | JobState::Scheduled | JobState::Retry | JobState::Active
    ) {
        out.push_str(&button("cancel", "Cancel", true));
    }
    if can_retry(job.state) {
        out.push_str(&button("retry", "Retry now", false));
    }
    if can_delete(job.state) {
        out.push_str(&button("delete", "Delete", true));
    }
    out.push_str("</div>");
}

fn details(job: &JobInfo, out: &mut String) {
    let attempts = if job.max_attempts > 0 {
        format!("{} of {}", job.attempts, job.max_attempts)
    } else {
        format!("{} (the worker's default limit)", job.attempts)
    };
    let _ = write!(
        out,
        r#"<section><dl class="details">
<dt>Queue</dt><dd>{queue}</dd>
<dt>Task</dt><dd id="job-task">{name}</dd>
<dt>Attempts ended</dt><dd id="job-attempts">{attempts}</dd>
<dt>Priority</dt><dd>{priority}</dd>
<dt>Tracked</dt><dd>{tracked}</dd>
</dl></section>"#,
        queue = esc(&job.queue),
        name = esc(job.name.as_deref().unwrap_or("- (none)")),
        priority = job.priority,
        tracked = if job.tracked {
            "yes (a status record is kept)"
        } else {
            "no"
        },
    );
}

fn timeline(job: &JobInfo, out: &mut String) {
    let now = html::now_ms();
    let mut events: Vec<(u64, String)> = Vec::new();
    if let Some(t) = job.enqueued_at_ms.filter(|t| *t > 0) {
        events.push((t, "enqueued".into()));
    }
    if let Some(t) = job.started_at_ms {
        events.push((t, "latest attempt started".into()));
    }
    match (job.state, job.due_at_ms) {
        (JobState::Scheduled, Some(t)) => events.push((t, "due to run".into())),
        (JobState::Retry, Some(t)) => events.push((
            t,
            format!("retry due (after {} failed attempts)", job.attempts),
        )),
        (JobState::Active, Some(t)) => events.push((t, "lease runs out".into())),
        _ => {}
    }
    if let Some(t) = job.finished_at_ms {
        let what = match job.state {
            JobState::Dead => "died (out of attempts)",
            JobState::Completed => "completed",
            _ => "finished",
        };
        events.push((t, what.into()));
    }
    events.sort_by_key(|(t, _)| *t);
    out.push_str(r#"<section><h2>Timeline</h2><ol class="timeline" id="job-timeline">"#);
    if events.is_empty() {
        out.push_str("<li>No times recorded (a bare entry pushed without an envelope).</li>");
    }
    for (t, what) in events {
        let _ = write!(
            out,
            "<li><time>{}</time> {}</li>",
            esc(&html::time_ago(t, now)),
            esc(&what)
        );
    }
    out.push_str("</ol></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_show_as_json_text_or_hex() {
        assert_eq!(
            render_bytes(b"{\"a\":1}"),
            ("JSON", "{\n  \"a\": 1\n}".into())
        );
        assert_eq!(render_bytes(b"42"), ("text", "42".into()));
        let (kind, dump) = render_bytes(b"\xff\x00ab");
        assert_eq!(kind, "binary, hex");
        assert!(dump.starts_with("00000000  ff 00 61 62"), "{dump}");
        assert!(dump.trim_end().ends_with("..ab"), "{dump}");
    }
}
