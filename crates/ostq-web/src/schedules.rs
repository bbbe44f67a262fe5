//! The schedules page: every cron and interval schedule registered on every known queue
//! ([`ostq::Client::schedules`]), with what it fires, its next and last tick, and a Remove action
//! ([`ostq::Client::remove_schedule`]) behind a confirmation.
//!
//! The library has no "pause" for a schedule: a schedule is either registered (and fired by every
//! scheduler process that knows it) or removed. The page says so rather than offering a button
//! that would have to invent that state.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use ostq::scheduler::ScheduleInfo;

use crate::auth::{see_other, Fields};
use crate::html::{self, count, csrf_field, esc, Nav};
use crate::pages;
use crate::queue::{job_url, payload_preview, queue_url};
use crate::{App, Ctx};

#[derive(serde::Deserialize, Default)]
pub(crate) struct SchedulesQuery {
    done: Option<String>,
}

/// The URL of the schedules page.
pub(crate) fn schedules_url(ctx: &Ctx) -> String {
    format!("{}/schedules", ctx.base)
}

/// The text of a Remove's outcome code (never text taken from the URL).
fn notice(done: Option<&str>) -> Option<&'static str> {
    match done? {
        "removed" => Some("Schedule removed: no scheduler fires it any more. A process that registers it again at start brings it back, so remove it from that process's code or `ostq cron` setup too."),
        "gone" => Some("That schedule was no longer registered: nothing was removed."),
        _ => None,
    }
}

/// Every schedule of every known queue, by queue then name.
async fn all_schedules(app: &App) -> ostq::Result<Vec<ScheduleInfo>> {
    let mut all = Vec::new();
    for queue in app.client.queues().await? {
        all.extend(app.client.schedules(&queue).await?);
    }
    Ok(all)
}

/// When a schedule fires, for people: `cron 0 2 * * * (Europe/Paris)` or `every 1s`.
fn timing(schedule: &ScheduleInfo) -> String {
    let spec = &schedule.spec;
    match (&spec.cron, spec.every_ms) {
        (Some(cron), _) => format!("cron {cron} ({})", spec.time_zone),
        (None, Some(ms)) => format!("every {}", interval(ms)),
        (None, None) => "never (no cron expression or interval)".to_string(),
    }
}

/// An interval in the largest whole unit: `1s`, `15m`, `250ms`.
fn interval(ms: u64) -> String {
    match ms {
        0 => "0ms".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// `GET /schedules`.
pub(crate) async fn page(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    Query(query): Query<SchedulesQuery>,
) -> Response {
    let schedules = match all_schedules(&app).await {
        Ok(schedules) => schedules,
        Err(e) => return pages::library_error(&ctx, &e),
    };
    let now = html::now_ms();
    let queues: std::collections::BTreeSet<&str> =
        schedules.iter().map(|s| s.queue.as_str()).collect();
    let mut body = String::from("<h1>Schedules</h1>");
    if let Some(text) = notice(query.done.as_deref()) {
        let _ = write!(
            body,
            r#"<p class="banner ok" role="status" id="notice">{}</p>"#,
            esc(text)
        );
    }
    let _ = write!(
        body,
        r#"<p id="schedules-summary">{} on {}. They are fired by <code>ostq scheduler</code>, <code>ostq worker --cron</code> or an <code>ostq::Scheduler</code> in an application; each tick is enqueued once, whichever process fires it. A schedule cannot be paused, only removed.</p>
<table id="schedules"><thead><tr><th>Schedule</th><th>Queue</th><th>When</th><th>Task</th><th>Payload</th><th>Next tick</th><th>Last tick</th><th>Last job</th><th class="num">Fired</th>{action_head}</tr></thead><tbody>"#,
        html::counted(schedules.len() as u64, "schedule", "schedules"),
        html::counted(queues.len() as u64, "queue", "queues"),
        action_head = if ctx.read_only { "" } else { "<th></th>" },
    );
    if schedules.is_empty() {
        let _ = write!(
            body,
            r#"<tr><td colspan="{}" class="empty">No schedule registered. Add one with <code>ostq cron add QUEUE NAME --cron '0 2 * * *'</code> (or <code>--every 10s</code>), or <code>ostq::Schedule</code>.</td></tr>"#,
            if ctx.read_only { 9 } else { 10 }
        );
    }
    for schedule in &schedules {
        schedule_row(&ctx, schedule, now, &mut body);
    }
    body.push_str("</tbody></table>");
    Html(html::page(&ctx, "Schedules", Nav::Schedules, &body)).into_response()
}

fn schedule_row(ctx: &Ctx, schedule: &ScheduleInfo, now: u64, out: &mut String) {
    let spec = &schedule.spec;
    let (payload, payload_kind) = payload_preview(&spec.payload_bytes());
    let task = if spec.task_name.is_empty() {
        "-"
    } else {
        spec.task_name.as_str()
    };
    // A next tick in the past means no process has fired this schedule since it was due.
    let next = match schedule.next_tick_ms {
        Some(ms) if ms + 1000 < now => format!(
            r#"<span class="bad" title="no scheduler process has fired it since">{} overdue</span>"#,
            esc(&html::time_ago(ms, now))
        ),
        Some(ms) => esc(&html::time_ago(ms, now)).to_string(),
        None => "-".to_string(),
    };
    let last = schedule
        .last_tick_ms
        .map_or_else(|| "never".to_string(), |ms| html::time_ago(ms, now));
    let last_job = match &schedule.last_job_id {
        Some(id) => format!(
            r#"<a href="{}"><code>{}</code></a>"#,
            esc(&job_url(ctx, &schedule.queue, id)),
            esc(id)
        ),
        None => "-".to_string(),
    };
    let _ = write!(
        out,
        r#"<tr data-queue="{queue}" data-schedule="{name}"><td><strong>{name}</strong></td><td><a href="{queue_link}">{queue}</a></td><td data-field="when">{when}</td><td data-field="task">{task}</td><td class="payload {payload_kind}" data-field="payload"><code>{payload}</code></td><td data-field="next">{next}</td><td data-field="last">{last}</td><td data-field="last-job">{last_job}</td><td class="num" data-field="fired">{fired}</td>"#,
        queue = esc(&schedule.queue),
        name = esc(&schedule.name),
        queue_link = esc(&queue_url(ctx, &schedule.queue)),
        when = esc(&timing(schedule)),
        task = esc(task),
        payload = esc(&payload),
        last = esc(&last),
        fired = count(schedule.fired),
    );
    if !ctx.read_only {
        let _ = write!(
            out,
            r#"<td><form method="post" action="{base}/schedules/remove" class="inline">{csrf}<input type="hidden" name="queue" value="{queue}"><input type="hidden" name="name" value="{name}"><button type="submit" class="danger">Remove…</button></form></td>"#,
            base = esc(&ctx.base),
            csrf = csrf_field(ctx),
            queue = esc(&schedule.queue),
            name = esc(&schedule.name),
        );
    }
    out.push_str("</tr>");
}

/// `POST /schedules/remove`: without `confirm`, a page that names the schedule and asks; with
/// `confirm=1`, the removal.
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    Extension(ctx): Extension<Ctx>,
    form: Fields,
) -> Response {
    let (Some(queue), Some(name)) = (form.get("queue"), form.get("name")) else {
        return pages::error(
            &ctx,
            StatusCode::BAD_REQUEST,
            "Which schedule? The form needs its queue and name.",
        );
    };
    if let Err(e) = ostq::keys::validate_queue_name(queue) {
        return pages::library_error(&ctx, &e);
    }
    if form.get("confirm") == Some("1") {
        return match app.client.remove_schedule(queue, name).await {
            Ok(true) => see_other(&format!("{}?done=removed", schedules_url(&ctx))),
            Ok(false) => see_other(&format!("{}?done=gone", schedules_url(&ctx))),
            Err(e) => pages::library_error(&ctx, &e),
        };
    }
    let body = format!(
        r#"<p class="crumbs"><a href="{home}">Overview</a> › <a href="{back}">Schedules</a> ›</p><h1>Remove schedule {name}?</h1>
<p class="confirm" id="confirm-text">Remove the schedule <strong>{name}</strong> of queue <strong>{queue}</strong>: no scheduler fires it after this. Jobs it already enqueued stay. A process that registers it at start (its code, or a later <code>ostq cron add</code>) brings it back.</p>
<form method="post" action="{base}/schedules/remove" class="inline" id="confirm-form">{csrf}<input type="hidden" name="queue" value="{queue}"><input type="hidden" name="name" value="{name}"><input type="hidden" name="confirm" value="1"><button type="submit" class="danger" id="confirm-button">Remove</button></form> <a href="{back}">Cancel</a>"#,
        home = esc(&ctx.home()),
        back = esc(&schedules_url(&ctx)),
        base = esc(&ctx.base),
        csrf = csrf_field(&ctx),
        queue = esc(queue),
        name = esc(name),
    );
    Html(html::page(&ctx, "Remove schedule", Nav::Schedules, &body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::interval;

    #[test]
    fn intervals_read_in_whole_units() {
        assert_eq!(interval(1000), "1s");
        assert_eq!(interval(90_000), "90s");
        assert_eq!(interval(900_000), "15m");
        assert_eq!(interval(7_200_000), "2h");
        assert_eq!(interval(250), "250ms");
    }
}
