//! What the dashboard changes, each a `POST` that [`crate::auth::guard`] has already checked
//! (session, CSRF token, origin, read-only): pause and resume, the rate limit, a job's cancel /
//! retry / delete, and bulk retry / delete with a confirmation that says how many jobs.
//!
//! After an action the browser is sent (303) to the page it came from with a fixed code
//! (`?done=retried&n=3`): the message shown is chosen here, never text taken from the URL.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use ostq::admin::search::JobFilter;
use ostq::admin::Cancel;
use ostq::{JobState, Queue};

use crate::auth::{see_other, Fields};
use crate::html::{self, count, csrf_field, esc, query, Nav};
use crate::pages;
use crate::queue::{can_delete, can_retry, count_of, job_url, queue_url};
use crate::{App, Ctx};

/// The most jobs one bulk action on a selection or a filter's matches takes.
pub(crate) const MAX_BULK: usize = 10_000;

/// The most jobs the matches of a filter are looked for among, per request (in bounded steps of
/// the search budget).
pub(crate) const BULK_SCAN_CAP: usize = 100_000;

/// The text of an action's outcome code.
pub(crate) fn notice(done: Option<&str>, n: Option<u64>) -> Option<String> {
    let jobs = |n: u64| {
        if n == 1 {
            "1 job".to_string()
        } else {
            format!("{} jobs", count(n))
        }
    };
    let n = n.unwrap_or(0);
    Some(match done? {
        "paused" => "Paused: workers take no job from this queue until it is resumed.".into(),
        "resumed" => "Resumed: workers take jobs from this queue again.".into(),
        "limit-set" => "Rate limit set.".into(),
        "limit-cleared" => "Rate limit cleared.".into(),
        "retried" => format!("Sent {} to run now.", jobs(n)),
        "deleted" => format!("Deleted {}.", jobs(n)),
        "cancel-removed" => "Cancelled: the job had not started, it is gone.".into(),
        "cancel-signalled" => {
            "Cancellation asked for: its worker tells the handler to stop.".into()
        }
        "cancel-none" => "Nothing to cancel: the job is no longer waiting or running.".into(),
        "none-selected" => "Nothing selected: tick the jobs first.".into(),
        _ => return None,
    })
}

fn checked_queue(app: &App, name: &str) -> ostq::Result<Queue> {
    ostq::keys::validate_queue_name(name)?;
    Ok(app.client.queue(name))
}

/// `POST /queues/{queue}/pause`.
pub(crate) async fn pause(
    state: State<Arc<App>>,
    ctx: Extension<Ctx>,
    name: Path<String>,
) -> Response {
    set_paused(state, ctx, name, true).await
}

/// `POST /queues/{queue}/resume`.
pub(crate) async fn resume(
    state: State<Arc<App>>,
    ctx: Extension<Ctx>,
    name: Path<String>,
) -> Response {
    set_paused(state, ctx, name, false).await
}

/// Pauses or resumes the queue, then back to its page saying which.
async fn set_paused(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    paused: bool,
) -> Response {
    let queue = match checked_queue(&app, &name) {
        Ok(queue) => queue,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let (done, what) = if paused {
        (queue.pause().await, "paused")
    } else {
        (queue.resume().await, "resumed")
    };
    match done {
        Ok(()) => see_other(&format!("{}?done={what}", queue_url(&ctx, &name))),
        Err(e) => pages::library_error(&ctx, &e),
    }
}

/// A period such as `500ms`, `1s`, `2m`, `1h`.
pub(crate) fn parse_period(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let period = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (!period.is_zero()).then_some(period)
}

/// `POST /queues/{queue}/rate-limit`: `max` and `period` set it, `clear=1` removes it.
pub(crate) async fn rate_limit(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    form: Fields,
) -> Response {
    let queue = match checked_queue(&app, &name) {
        Ok(queue) => queue,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let back = queue_url(&ctx, &name);
    if form.get("clear").is_some() {
        return match queue.clear_rate_limit().await {
            Ok(()) => see_other(&format!("{back}?done=limit-cleared")),
            Err(e) => pages::library_error(&ctx, &e),
        };
    }
    let max = form.get("max").and_then(|m| m.trim().parse::<u32>().ok());
    let period = form.get("period").and_then(parse_period);
    let (Some(max), Some(period)) = (max, period) else {
        return pages::error(
            &ctx,
            StatusCode::BAD_REQUEST,
            "A rate limit needs a number of jobs above 0 and a period such as 500ms, 1s, 1m or 1h.",
        );
    };
    match queue.set_rate_limit(max, period).await {
        Ok(()) => see_other(&format!("{back}?done=limit-set")),
        Err(e) => pages::library_error(&ctx, &e),
    }
}

/// `POST /queues/{queue}/jobs/{id}/{action}`: `cancel`, `retry` or `delete`.
pub(crate) async fn job_action(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Path((name, id, action)): Path<(String, String, String)>,
) -> Response {
    let queue = match checked_queue(&app, &name) {
        Ok(queue) => queue,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let job_page = job_url(&ctx, &name, &id);
    match action.as_str() {
        "cancel" => match queue.cancel(&id).await {
            Ok(Cancel::Removed) => {
                see_other(&format!("{}?done=cancel-removed", queue_url(&ctx, &name)))
            }
            Ok(Cancel::Signalled) => see_other(&format!("{job_page}?done=cancel-signalled")),
            Ok(_) => see_other(&format!("{job_page}?done=cancel-none")),
            Err(e) => pages::library_error(&ctx, &e),
        },
        "retry" => match queue.retry_now(&[id.as_str()]).await {
            Ok(n) => see_other(&format!("{job_page}?done=retried&n={n}")),
            Err(e) => pages::library_error(&ctx, &e),
        },
        "delete" => match queue.delete(&[id.as_str()]).await {
            Ok(n) => see_other(&format!("{}?done=deleted&n={n}", queue_url(&ctx, &name))),
            Err(e) => pages::library_error(&ctx, &e),
        },
        _ => pages::error(&ctx, StatusCode::NOT_FOUND, "No such action."),
    }
}

/// Retry or delete.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Retry,
    Delete,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Retry => "Retry",
            Action::Delete => "Delete",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Delete => "delete",
        }
    }

    fn allowed_in(self, state: JobState) -> bool {
        match self {
            Action::Retry => can_retry(state),
            Action::Delete => can_delete(state),
        }
    }
}

/// Which jobs a bulk action takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The ids ticked on the page.
    Selected,
    /// Everything in the state.
    State,
    /// The matches of a filter (found on the first step, carried as ids to the second).
    Filter,
}

/// `POST /queues/{queue}/bulk`: without `confirm`, a page that says how many jobs the action
/// takes and asks; with `confirm=N`, the action.
pub(crate) async fn bulk(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    form: Fields,
) -> Response {
    let queue = match checked_queue(&app, &name) {
        Ok(queue) => queue,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let action = match form.get("action") {
        Some("retry") => Action::Retry,
        Some("delete") => Action::Delete,
        _ => return pages::error(&ctx, StatusCode::BAD_REQUEST, "Unknown bulk action."),
    };
    let scope = match form.get("scope") {
        Some("selected") => Scope::Selected,
        Some("state") => Scope::State,
        Some("filter") => Scope::Filter,
        _ => return pages::error(&ctx, StatusCode::BAD_REQUEST, "Unknown bulk scope."),
    };
    let state: JobState = match form.get("state").unwrap_or("").parse() {
        Ok(state) => state,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    if !action.allowed_in(state) {
        return pages::error(
            &ctx,
            StatusCode::BAD_REQUEST,
            &format!("{} is not possible for {state} jobs.", action.verb()),
        );
    }
    let back = format!(
        "{}{}",
        queue_url(&ctx, &name),
        query(&[("state", state.as_str())])
    );
    let ids: Vec<String> = form
        .all("id")
        .into_iter()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect();
    if ids.len() > MAX_BULK {
        return pages::error(
            &ctx,
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("At most {} jobs per bulk action.", count(MAX_BULK as u64)),
        );
    }
    let confirmed: Option<u64> = form.get("confirm").and_then(|n| n.parse().ok());
    let filter = JobFilter::new()
        .name(form.get("name").unwrap_or_default())
        .error(form.get("error").unwrap_or_default())
        .payload(form.get("payload").unwrap_or_default());

    match (scope, confirmed) {
        (Scope::Selected, _) if ids.is_empty() => see_other(&format!("{back}&done=none-selected")),
        (Scope::Selected, None) => {
            let what = format!("the {} selected {state} jobs", count(ids.len() as u64));
            confirm_page(
                &ctx,
                &name,
                action,
                scope,
                state,
                &ids,
                &filter,
                ids.len() as u64,
                &what,
                "",
            )
        }
        // The ids are what the confirmation showed: exactly those are acted on.
        (Scope::Selected | Scope::Filter, Some(_)) => {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let done = match action {
                Action::Retry => queue.retry_now(&refs).await,
                Action::Delete => queue.delete(&refs).await,
            };
            match done {
                Ok(n) => see_other(&format!("{back}&done={}&n={n}", past(action))),
                Err(e) => pages::library_error(&ctx, &e),
            }
        }
        (Scope::Filter, None) => {
            if filter.is_empty() {
                return pages::error(&ctx, StatusCode::BAD_REQUEST, "The filter is empty.");
            }
            let scan = match matching_ids(&app, &queue, state, &filter).await {
                Ok(scan) => scan,
                Err(e) => return pages::library_error(&ctx, &e),
            };
            let what = format!(
                "the {} {state} jobs matching {}",
                count(scan.ids.len() as u64),
                describe(&filter)
            );
            let note = if scan.complete {
                format!("Every {state} job was examined ({}).", count(scan.examined))
            } else {
                format!(
                    "Only the first {} {state} jobs were examined (or the first {} matches kept): run this again afterwards for the rest.",
                    count(scan.examined),
                    count(MAX_BULK as u64)
                )
            };
            confirm_page(
                &ctx,
                &name,
                action,
                scope,
                state,
                &scan.ids,
                &filter,
                scan.ids.len() as u64,
                &what,
                &note,
            )
        }
        (Scope::State, confirmed) => {
            let counts = match queue.counts().await {
                Ok(counts) => counts,
                Err(e) => return pages::library_error(&ctx, &e),
            };
            let now = count_of(&counts, state);
            match confirmed {
                Some(n) if now <= n => match whole_state(&queue, action, state).await {
                    Ok(n) => see_other(&format!("{back}&done={}&n={n}", past(action))),
                    Err(e) => pages::library_error(&ctx, &e),
                },
                _ => {
                    let what = format!("all {} {state} jobs", count(now));
                    let note = if confirmed.is_some() {
                        "The number of jobs grew since you were asked: confirm the new number."
                    } else {
                        ""
                    };
                    confirm_page(
                        &ctx,
                        &name,
                        action,
                        scope,
                        state,
                        &[],
                        &filter,
                        now,
                        &what,
                        note,
                    )
                }
            }
        }
    }
}

fn past(action: Action) -> &'static str {
    match action {
        Action::Retry => "retried",
        Action::Delete => "deleted",
    }
}

fn describe(filter: &JobFilter) -> String {
    let mut parts = Vec::new();
    if let Some(name) = &filter.name {
        parts.push(format!("task = {name:?}"));
    }
    if let Some(error) = &filter.error {
        parts.push(format!("error contains {error:?}"));
    }
    if let Some(payload) = &filter.payload {
        parts.push(format!("payload contains {payload:?}"));
    }
    parts.join(" and ")
}

/// The matches of a filter over a whole state, in bounded steps.
struct Matches {
    ids: Vec<String>,
    examined: u64,
    /// Every job of the state was examined.
    complete: bool,
}

async fn matching_ids(
    app: &App,
    queue: &Queue,
    state: JobState,
    filter: &JobFilter,
) -> ostq::Result<Matches> {
    let mut scan = Matches {
        ids: Vec::new(),
        examined: 0,
        complete: false,
    };
    let mut cursor = None;
    loop {
        let room = MAX_BULK - scan.ids.len();
        let found = queue
            .search(
                state,
                filter,
                cursor.as_ref(),
                app.options.search_budget,
                room,
            )
            .await?;
        scan.examined += found.examined;
        scan.ids.extend(
            found
                .jobs
                .into_iter()
                .filter(crate::queue::addressable)
                .map(|job| job.id),
        );
        match found.next {
            None => {
                scan.complete = true;
                return Ok(scan);
            }
            Some(next) => cursor = Some(next),
        }
        if scan.ids.len() >= MAX_BULK || scan.examined >= BULK_SCAN_CAP as u64 {
            return Ok(scan);
        }
    }
}

/// Retries or deletes every job in `state`; returns how many moved or went.
async fn whole_state(queue: &Queue, action: Action, state: JobState) -> ostq::Result<u64> {
    match (action, state) {
        (Action::Delete, state) => queue.purge(Some(state)).await,
        (Action::Retry, JobState::Dead) => queue.retry_all_dead().await,
        (Action::Retry, state) => {
            // Scheduled or retry: page through the ids, then send them in batches.
            let mut moved = 0;
            let mut cursor = None;
            loop {
                let page = queue.page(state, cursor.as_ref(), 500).await?;
                let ids: Vec<&str> = page.jobs.iter().map(|j| j.id.as_str()).collect();
                moved += queue.retry_now(&ids).await?;
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(moved),
                }
            }
        }
    }
}

/// The page that says what a bulk action is about to do and how many jobs it takes.
#[allow(clippy::too_many_arguments)]
fn confirm_page(
    ctx: &Ctx,
    queue: &str,
    action: Action,
    scope: Scope,
    state: JobState,
    ids: &[String],
    filter: &JobFilter,
    n: u64,
    what: &str,
    note: &str,
) -> Response {
    let back = format!(
        "{}{}",
        queue_url(ctx, queue),
        query(&[("state", state.as_str())])
    );
    let mut body = format!(
        r#"<p class="crumbs"><a href="{home}">Overview</a> › <a href="{back}">{queue}</a> ›</p><h1>{verb} {jobs}?</h1>"#,
        home = esc(&ctx.home()),
        back = esc(&back),
        queue = esc(queue),
        verb = action.verb(),
        jobs = if n == 1 {
            "1 job".to_string()
        } else {
            format!("{} jobs", count(n))
        },
    );
    let _ = write!(
        body,
        r#"<p class="confirm" id="confirm-text">{verb} {what} of queue <strong>{queue}</strong>{effect}</p>"#,
        verb = action.verb(),
        what = esc(what),
        queue = esc(queue),
        effect = match action {
            Action::Retry => ": they go back to pending and run as soon as a worker takes them.",
            Action::Delete => ". Deleted jobs are gone for good.",
        },
    );
    if !note.is_empty() {
        let _ = write!(body, r#"<p class="hint">{}</p>"#, esc(note));
    }
    if n == 0 {
        let _ = write!(
            body,
            r#"<p id="confirm-none">No job to {}.</p><p><a href="{}">Back</a></p>"#,
            action.name(),
            esc(&back)
        );
        return Html(html::page(ctx, "Confirm", Nav::Queue, &body)).into_response();
    }
    if !ids.is_empty() {
        body.push_str(r#"<details><summary>The jobs</summary><ul class="ids">"#);
        for id in ids.iter().take(50) {
            let _ = write!(body, "<li><code>{}</code></li>", esc(id));
        }
        if ids.len() > 50 {
            let _ = write!(body, "<li>… and {} more</li>", count(ids.len() as u64 - 50));
        }
        body.push_str("</ul></details>");
    }
    let _ = write!(
        body,
        r#"<form method="post" action="{url}/bulk" id="confirm-form">{csrf}<input type="hidden" name="action" value="{action}"><input type="hidden" name="scope" value="{scope}"><input type="hidden" name="state" value="{state}"><input type="hidden" name="confirm" value="{n}">"#,
        url = esc(&queue_url(ctx, queue)),
        csrf = csrf_field(ctx),
        action = action.name(),
        scope = match scope {
            Scope::Selected => "selected",
            Scope::State => "state",
            Scope::Filter => "filter",
        },
    );
    for (key, value) in [
        ("name", &filter.name),
        ("error", &filter.error),
        ("payload", &filter.payload),
    ] {
        if let Some(value) = value {
            let _ = write!(
                body,
                r#"<input type="hidden" name="{key}" value="{}">"#,
                esc(value)
            );
        }
    }
    for id in ids {
        let _ = write!(
            body,
            r#"<input type="hidden" name="id" value="{}">"#,
            esc(id)
        );
    }
    let _ = write!(
        body,
        r#"<button type="submit" id="confirm-button"{class}>{verb} {jobs}</button> <a href="{back}" id="confirm-cancel">Cancel</a></form>"#,
        class = if action == Action::Delete {
            r#" class="danger""#
        } else {
            ""
        },
        verb = action.verb(),
        jobs = if n == 1 {
            "1 job".to_string()
        } else {
            format!("{} jobs", count(n))
        },
        back = esc(&back),
    );
    Html(html::page(ctx, "Confirm", Nav::Queue, &body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_with_a_unit() {
        assert_eq!(parse_period("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_period("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_period("0s"), None);
        assert_eq!(parse_period("5"), None);
        assert_eq!(parse_period("s"), None);
    }

    #[test]
    fn notices_are_fixed_texts() {
        assert_eq!(
            notice(Some("deleted"), Some(3)).as_deref(),
            Some("Deleted 3 jobs.")
        );
        assert_eq!(notice(Some("<script>"), None), None);
    }
}
