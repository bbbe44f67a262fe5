//! The queue page: tabs per state with counts, a page of jobs (with cursors that neither skip
//! nor repeat), find by id, filters (a bounded scan per request), pause and resume, the rate
//! limit, and bulk retry / delete on a selection, on a whole state or on a filter's matches.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use ostq::admin::lookup::{Found, JobLookup};
use ostq::admin::Cursor;
use ostq::{JobInfo, JobState, QueueCounts};

use crate::actions::notice;
use crate::api::SearchQuery;
use crate::auth::see_other;
use crate::html::{self, count, csrf_field, esc, query, url_part, Nav};
use crate::pages;
use crate::{App, Ctx};

/// The states in the order of the tabs.
pub(crate) const TABS: [JobState; 6] = [
    JobState::Pending,
    JobState::Active,
    JobState::Scheduled,
    JobState::Retry,
    JobState::Dead,
    JobState::Completed,
];

/// Whether jobs in `state` can be sent to run now.
pub(crate) fn can_retry(state: JobState) -> bool {
    matches!(
        state,
        JobState::Scheduled | JobState::Retry | JobState::Dead
    )
}

/// Whether jobs in `state` can be deleted (a running job belongs to its worker).
pub(crate) fn can_delete(state: JobState) -> bool {
    state != JobState::Active
}

/// The count of a state in [`QueueCounts`].
pub(crate) fn count_of(counts: &QueueCounts, state: JobState) -> u64 {
    match state {
        JobState::Pending => counts.pending,
        JobState::Active => counts.active,
        JobState::Scheduled => counts.scheduled,
        JobState::Retry => counts.retry,
        JobState::Dead => counts.dead,
        JobState::Completed => counts.completed,
    }
}

/// The query string of a queue page. (Flat, text only: `serde_urlencoded` cannot read numbers
/// through a flattened struct.)
#[derive(serde::Deserialize, Default)]
pub(crate) struct QueueQuery {
    state: Option<String>,
    name: Option<String>,
    error: Option<String>,
    payload: Option<String>,
    cursor: Option<String>,
    /// Find by id.
    id: Option<String>,
    /// What an action did (a fixed code, never text from the URL).
    done: Option<String>,
    n: Option<String>,
}

impl QueueQuery {
    fn search(&self) -> SearchQuery {
        SearchQuery {
            state: self.state.clone(),
            name: self.name.clone(),
            error: self.error.clone(),
            payload: self.payload.clone(),
            cursor: self.cursor.clone(),
            budget: None,
            limit: None,
        }
    }
}

/// The URL of a queue's page.
pub(crate) fn queue_url(ctx: &Ctx, queue: &str) -> String {
    format!("{}/queues/{}", ctx.base, url_part(queue))
}

/// The URL of a job's page.
pub(crate) fn job_url(ctx: &Ctx, queue: &str, id: &str) -> String {
    format!("{}/jobs/{}", queue_url(ctx, queue), url_part(id))
}

/// The URL of a job's page that tells where to look for it in the pending list: `near` its
/// index there when listed, `below` where a stopped look goes on, `from` entries into a look
/// from the newest end.
pub(crate) fn job_url_at(ctx: &Ctx, queue: &str, id: &str, lookup: &JobLookup) -> String {
    let mut url = job_url(ctx, queue, id);
    if let Some(near) = lookup.near {
        let _ = write!(url, "?near={near}");
    } else if let Some(below) = lookup.below {
        let _ = write!(url, "?below={below}");
    } else if lookup.from_newest > 0 {
        let _ = write!(url, "?from={}", lookup.from_newest);
    }
    url
}

/// Whether a listed job can be addressed by id (bare entries pushed without an envelope have
/// none).
pub(crate) fn addressable(job: &JobInfo) -> bool {
    job.id != "(unassigned)" && !job.id.is_empty()
}

/// `GET /queues/{queue}`.
pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    Query(query_string): Query<QueueQuery>,
) -> Response {
    let q = &query_string;
    let search = q.search();
    if let Err(e) = ostq::keys::validate_queue_name(&name) {
        return pages::library_error(&ctx, &e);
    }
    let queue = app.client.queue(&name);
    let mut found_nothing = None;
    if let Some(id) = q.id.as_deref().map(str::trim).filter(|id| !id.is_empty()) {
        // Bounded: a pending job deep in a long list is looked for on by the job page.
        let lookup = JobLookup::new().budget(app.options.find_budget);
        match queue.find_job(id, lookup).await {
            Ok(Found::Job { list_index, .. }) => {
                let hint = JobLookup::new().near(list_index);
                return see_other(&job_url_at(&ctx, &name, id, &hint));
            }
            Ok(Found::StoppedEarly { next, .. }) => {
                return see_other(&job_url_at(&ctx, &name, id, &next));
            }
            Ok(Found::NotFound) => found_nothing = Some(id.to_string()),
            Err(e) => return pages::library_error(&ctx, &e),
        }
    }
    let state = match search.state.as_deref().unwrap_or("pending").parse() {
        Ok(state) => state,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let cursor = match search.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(text) => match text.parse::<Cursor>() {
            Ok(cursor) => Some(cursor),
            Err(e) => return pages::library_error(&ctx, &e),
        },
        None => None,
    };
    let counts = match queue.counts().await {
        Ok(counts) => counts,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let limit = match queue.rate_limit().await {
        Ok(limit) => limit,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let filter = search.filter();
    let filtering = !filter.is_empty();
    let (jobs, next, examined, list_index) = if filtering {
        let budget = app.options.search_budget;
        match queue
            .search(
                state,
                &filter,
                cursor.as_ref(),
                budget,
                app.options.page_size,
            )
            .await
        {
            Ok(found) => (
                found.jobs,
                found.next,
                Some(found.examined),
                found.list_index,
            ),
            Err(e) => return pages::library_error(&ctx, &e),
        }
    } else {
        match queue
            .page(state, cursor.as_ref(), app.options.page_size)
            .await
        {
            Ok(page) => (page.jobs, page.next, None, page.list_index),
            Err(e) => return pages::library_error(&ctx, &e),
        }
    };

    let here = queue_url(&ctx, &name);
    let filter_pairs = |state: JobState| {
        [
            ("state", state.as_str().to_string()),
            ("name", filter.name.clone().unwrap_or_default()),
            ("error", filter.error.clone().unwrap_or_default()),
            ("payload", filter.payload.clone().unwrap_or_default()),
        ]
    };
    let link_with = |state: JobState, extra: &[(&str, &str)]| {
        let pairs = filter_pairs(state);
        let mut all: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(extra);
        format!("{here}{}", query(&all))
    };

    let mut body = String::new();
    let _ = write!(
        body,
        r#"<p class="crumbs"><a href="{home}">Overview</a> ›</p><h1 id="queue-name">{name}{paused}</h1><p><a href="{metrics}" id="queue-metrics">Run, wait and total times of this queue</a></p>"#,
        home = esc(&ctx.home()),
        name = esc(&name),
        metrics = esc(&crate::metrics_page::metrics_url(
            &ctx,
            &name,
            crate::overview::Range::Hour
        )),
        paused = if counts.paused {
            r#" <span class="badge paused" id="paused-badge">paused</span>"#
        } else {
            ""
        },
    );
    if let Some(text) = notice(
        q.done.as_deref(),
        q.n.as_deref().and_then(|n| n.parse().ok()),
    ) {
        let _ = write!(
            body,
            r#"<p class="banner ok" role="status" id="notice">{}</p>"#,
            esc(&text)
        );
    }
    if let Some(id) = &found_nothing {
        let _ = write!(
            body,
            r#"<p class="banner warning" role="status" id="notice">No job with id <code>{}</code> in this queue (a completed job is kept only when it was pushed with tracking).</p>"#,
            esc(id)
        );
    }

    body.push_str(r#"<section class="toolbar">"#);
    if !ctx.read_only {
        controls(&ctx, &here, &counts, limit, &mut body);
    } else if let Some((max, period)) = limit {
        let _ = write!(
            body,
            r#"<p>Rate limit: {} jobs per {}</p>"#,
            count(u64::from(max)),
            html::duration(period)
        );
    }
    let _ = write!(
        body,
        r#"<form method="get" action="{here}" class="find" role="search"><label for="find-id">Find by id</label><input id="find-id" name="id" required><button type="submit">Find</button></form>"#,
        here = esc(&here)
    );
    body.push_str("</section>");

    body.push_str(r#"<nav class="tabs" id="state-tabs">"#);
    for tab in TABS {
        let _ = write!(
            body,
            r#"<a href="{href}" data-state="{state}"{current}>{state} <span class="count">{n}</span></a>"#,
            href = esc(&link_with(tab, &[])),
            state = tab,
            n = count(count_of(&counts, tab)),
            current = if tab == state {
                r#" aria-current="page""#
            } else {
                ""
            }
        );
    }
    body.push_str("</nav>");

    filter_form(&here, state, &search, &mut body);

    if let Some(examined) = examined {
        let _ = write!(
            body,
            r#"<p class="scan" id="scan-status">Examined {} {state} jobs, {} match{}. {}</p>"#,
            count(examined),
            count(jobs.len() as u64),
            if jobs.len() == 1 { "" } else { "es" },
            if next.is_some() {
                format!(
                    "Stopped early (each search examines at most {} jobs).",
                    count(app.options.search_budget as u64)
                )
            } else {
                format!("Reached the end of {state}.")
            },
        );
    }

    jobs_table(&ctx, &name, state, &jobs, &list_index, &mut body);

    body.push_str(r#"<nav class="pager">"#);
    if cursor.is_some() {
        let _ = write!(
            body,
            r#"<a href="{}" id="first-page">« First page</a>"#,
            esc(&link_with(state, &[]))
        );
    }
    if let Some(next) = &next {
        let label = if filtering {
            "Continue searching »"
        } else {
            "Next page »"
        };
        let _ = write!(
            body,
            r#"<a href="{}" id="next-page" rel="next">{label}</a>"#,
            esc(&link_with(state, &[("cursor", next.as_str())]))
        );
    }
    body.push_str("</nav>");

    if !ctx.read_only {
        whole_state_forms(&ctx, &here, state, &counts, &search, filtering, &mut body);
    }
    Html(html::page(&ctx, &name, Nav::Queue, &body)).into_response()
}

/// Pause / resume and the rate limit.
fn controls(
    ctx: &Ctx,
    here: &str,
    counts: &QueueCounts,
    limit: Option<(u32, std::time::Duration)>,
    out: &mut String,
) {
    let (action, label) = if counts.paused {
        ("resume", "Resume")
    } else {
        ("pause", "Pause")
    };
    let _ = write!(
        out,
        r#"<form method="post" action="{here}/{action}" class="inline">{csrf}<button type="submit" id="{action}-queue">{label}</button></form>"#,
        here = esc(here),
        csrf = csrf_field(ctx),
    );
    let current = match limit {
        Some((max, period)) => format!(
            r#"<span id="rate-limit-current">{} jobs per {}</span>"#,
            count(u64::from(max)),
            html::duration(period)
        ),
        None => r#"<span id="rate-limit-current">none</span>"#.to_string(),
    };
    let _ = write!(
        out,
        r#"<form method="post" action="{here}/rate-limit" class="rate">{csrf}<span>Rate limit: {current}</span>
<label for="rate-max">max</label><input id="rate-max" name="max" type="number" min="1" max="4294967295" required>
<label for="rate-period">per</label><input id="rate-period" name="period" value="1s" size="5" pattern="[0-9]+(ms|s|m|h)" title="e.g. 500ms, 1s, 1m, 1h" required>
<button type="submit" id="rate-set">Set</button></form>"#,
        here = esc(here),
        csrf = csrf_field(ctx),
    );
    if limit.is_some() {
        let _ = write!(
            out,
            r#"<form method="post" action="{here}/rate-limit" class="inline">{csrf}<input type="hidden" name="clear" value="1"><button type="submit" id="rate-clear">Clear limit</button></form>"#,
            here = esc(here),
            csrf = csrf_field(ctx),
        );
    }
}

fn filter_form(here: &str, state: JobState, q: &SearchQuery, out: &mut String) {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let _ = write!(
        out,
        r#"<form method="get" action="{here}" class="filters" id="filters" role="search">
<input type="hidden" name="state" value="{state}">
<label for="filter-name">Task</label><input id="filter-name" name="name" value="{name}" placeholder="exact name, - for none">
<label for="filter-error">Error contains</label><input id="filter-error" name="error" value="{error}">
<label for="filter-payload">Payload contains</label><input id="filter-payload" name="payload" value="{payload}">
<button type="submit" id="filter-apply">Filter</button> <a href="{here}?state={state}" id="filter-clear">Clear</a>
</form>"#,
        here = esc(here),
        name = esc(&value(&q.name)),
        error = esc(&value(&q.error)),
        payload = esc(&value(&q.payload)),
    );
}

/// At most this many characters of a payload or an error in a listing.
const PREVIEW_CHARS: usize = 120;

/// A payload for people: text as it is, JSON as text, anything else as hex.
pub(crate) fn payload_preview(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (shorten(text, PREVIEW_CHARS), "text"),
        Err(_) => {
            let hex: String = bytes
                .iter()
                .take(PREVIEW_CHARS / 3)
                .map(|b| format!("{b:02x} "))
                .collect();
            (hex.trim_end().to_string(), "hex")
        }
    }
}

/// The first `max` characters of `text`, with an ellipsis when cut.
pub(crate) fn shorten(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// The jobs of a page; `list_index` (parallel to `jobs`, or empty) goes into the links so a
/// pending job's page finds it without scanning.
fn jobs_table(
    ctx: &Ctx,
    queue: &str,
    state: JobState,
    jobs: &[JobInfo],
    list_index: &[Option<u64>],
    out: &mut String,
) {
    let selectable = !ctx.read_only && (can_retry(state) || can_delete(state));
    let here = queue_url(ctx, queue);
    let now = html::now_ms();
    if selectable {
        let _ = write!(
            out,
            r#"<form method="post" action="{}/bulk" id="bulk-selected">{}<input type="hidden" name="scope" value="selected"><input type="hidden" name="state" value="{state}">"#,
            esc(&here),
            csrf_field(ctx),
        );
    }
    let when = match state {
        JobState::Scheduled | JobState::Retry => "Due",
        JobState::Active => "Lease until",
        JobState::Dead | JobState::Completed => "Finished",
        JobState::Pending => "Enqueued",
    };
    let _ = write!(
        out,
        r#"<table class="jobs" id="jobs"><thead><tr>{check}<th>Id</th><th>Task</th><th class="num">Attempts</th><th>{when}</th><th>Error</th><th>Payload</th></tr></thead><tbody>"#,
        check = if selectable {
            r#"<th><input type="checkbox" id="select-all" aria-label="select every job on this page"></th>"#
        } else {
            ""
        },
    );
    if jobs.is_empty() {
        let _ = write!(
            out,
            r#"<tr><td colspan="7" class="empty">No {state} jobs here.</td></tr>"#
        );
    }
    for (i, job) in jobs.iter().enumerate() {
        let id_cell = if addressable(job) {
            let hint = JobLookup::new().near(list_index.get(i).copied().flatten());
            format!(
                r#"<a href="{}">{}</a>"#,
                esc(&job_url_at(ctx, queue, &job.id, &hint)),
                esc(&job.id)
            )
        } else {
            r#"<span class="muted" title="pushed without an envelope: it has no id">(bare entry)</span>"#
                .to_string()
        };
        let check = if selectable && addressable(job) {
            format!(
                r#"<td><input type="checkbox" name="id" value="{}" aria-label="select {}"></td>"#,
                esc(&job.id),
                esc(&job.id)
            )
        } else if selectable {
            "<td></td>".to_string()
        } else {
            String::new()
        };
        let time = match state {
            JobState::Pending => job.enqueued_at_ms.filter(|t| *t > 0),
            JobState::Dead | JobState::Completed => job.finished_at_ms,
            _ => job.due_at_ms,
        }
        .map(|t| html::time_ago(t, now))
        .unwrap_or_else(|| "-".to_string());
        let attempts = if job.max_attempts > 0 {
            format!("{}/{}", job.attempts, job.max_attempts)
        } else {
            job.attempts.to_string()
        };
        let (payload, kind) = job
            .payload
            .as_deref()
            .map(payload_preview)
            .unwrap_or_else(|| (String::new(), "none"));
        let error = job
            .last_error
            .as_deref()
            .map(|e| shorten(e, PREVIEW_CHARS))
            .unwrap_or_default();
        let _ = write!(
            out,
            r#"<tr data-id="{id}">{check}<td class="id">{id_cell}</td><td>{name}</td><td class="num">{attempts}</td><td class="time">{time}</td><td class="error">{error}</td><td class="payload {kind}"><code>{payload}</code></td></tr>"#,
            id = esc(&job.id),
            name = esc(job.name.as_deref().unwrap_or("-")),
            time = esc(&time),
            error = esc(&error),
            payload = esc(&payload),
        );
    }
    out.push_str("</tbody></table>");
    if selectable {
        out.push_str(r#"<div class="bulk">"#);
        if can_retry(state) {
            out.push_str(r#"<button type="submit" name="action" value="retry" id="retry-selected">Retry selected</button>"#);
        }
        if can_delete(state) {
            out.push_str(r#"<button type="submit" name="action" value="delete" class="danger" id="delete-selected">Delete selected</button>"#);
        }
        out.push_str("</div></form>");
    }
}

/// Retry / delete everything in the state, or every job matching the filter.
fn whole_state_forms(
    ctx: &Ctx,
    here: &str,
    state: JobState,
    counts: &QueueCounts,
    search: &SearchQuery,
    filtering: bool,
    out: &mut String,
) {
    let n = count_of(counts, state);
    if !(can_retry(state) || can_delete(state)) {
        return;
    }
    out.push_str(r#"<section class="bulk-all"><h2>Everything at once</h2>"#);
    let form = |scope: &str, action: &str, label: String, danger: bool, hidden: &str| {
        format!(
            r#"<form method="post" action="{here}/bulk" class="inline">{csrf}<input type="hidden" name="scope" value="{scope}"><input type="hidden" name="state" value="{state}"><input type="hidden" name="action" value="{action}">{hidden}<button type="submit" id="{action}-{scope}"{class}>{label}</button></form>"#,
            here = esc(here),
            csrf = csrf_field(ctx),
            class = if danger { r#" class="danger""# } else { "" },
        )
    };
    if filtering {
        let mut hidden = String::new();
        for (key, value) in [
            ("name", &search.name),
            ("error", &search.error),
            ("payload", &search.payload),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                let _ = write!(
                    hidden,
                    r#"<input type="hidden" name="{key}" value="{}">"#,
                    esc(value)
                );
            }
        }
        if can_retry(state) {
            out.push_str(&form(
                "filter",
                "retry",
                format!("Retry every {state} job matching the filter…"),
                false,
                &hidden,
            ));
        }
        out.push_str(&form(
            "filter",
            "delete",
            format!("Delete every {state} job matching the filter…"),
            true,
            &hidden,
        ));
    } else if n > 0 {
        if can_retry(state) {
            out.push_str(&form(
                "state",
                "retry",
                format!("Retry all {} {state} jobs…", count(n)),
                false,
                "",
            ));
        }
        out.push_str(&form(
            "state",
            "delete",
            format!("Delete all {} {state} jobs…", count(n)),
            true,
            "",
        ));
    }
    out.push_str("<p class=\"hint\">Each asks for confirmation first, with the number of jobs.</p></section>");
}
