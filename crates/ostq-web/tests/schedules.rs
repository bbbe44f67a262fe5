//! The schedules page over real HTTP against a real Redis: what it lists is what was registered
//! and fired, Remove asks first and needs the CSRF token and write mode, and hostile schedule
//! names and payloads are shown as text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{open_session, redis, wait_until, Dashboard};
use ostq::{Schedule, Scheduler};

/// The `<tr>` of a schedule (from its opening tag to `</tr>`), by its escaped name.
fn row<'a>(body: &'a str, queue: &str, escaped_name: &str) -> &'a str {
    let needle = format!(r#"data-queue="{queue}" data-schedule="{escaped_name}""#);
    let at = body
        .find(&needle)
        .unwrap_or_else(|| panic!("no row for {escaped_name}: {body}"));
    let rest = &body[at..];
    &rest[..rest.find("</tr>").unwrap()]
}

/// The text of `data-field="field"`'s cell in a row (tags inside kept).
fn field<'a>(row: &'a str, field: &str) -> &'a str {
    let needle = format!(r#"data-field="{field}">"#);
    let at = row
        .find(&needle)
        .unwrap_or_else(|| panic!("no {field} in {row}"));
    let rest = &row[at + needle.len()..];
    &rest[..rest.find("</td>").unwrap()]
}

/// Registers `schedules` as a scheduler process does at start (which makes their queues known),
/// without firing anything.
async fn register(client: &ostq::Client, schedules: Vec<Schedule>) {
    let mut builder = Scheduler::builder(client.clone());
    for schedule in schedules {
        builder = builder.schedule(schedule);
    }
    builder.build().unwrap().register().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_was_registered_and_fired() {
    let (_server, client) = redis().await;
    register(
        &client,
        vec![
            Schedule::cron("nightly", "reports", "0 2 * * *")
                .time_zone("Europe/Paris")
                .payload(r#"{"kind":"full"}"#)
                .task_name("build_report"),
            Schedule::every("poll", "feeds", Duration::from_millis(100)).payload("rss"),
        ],
    )
    .await;
    // A real scheduler fires the interval schedule a few times, then stops.
    let scheduler = Scheduler::builder(client.clone())
        .schedule(Schedule::every("poll", "feeds", Duration::from_millis(100)).payload("rss"))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(scheduler.run_until(async {
        let _ = stopped.await;
    }));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            client.schedules("feeds").await.unwrap()[0].fired >= 3
        })
        .await,
        "the scheduler fires the interval schedule"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, _) = open_session(&dashboard).await;
    let page = http.get("/schedules").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page
        .body
        .contains(r#"href="/schedules" aria-current="page""#));
    assert!(
        page.body.contains("2 schedules on 2 queues"),
        "{}",
        page.body
    );

    let nightly = row(&page.body, "reports", "nightly");
    assert_eq!(field(nightly, "when"), "cron 0 2 * * * (Europe/Paris)");
    assert_eq!(field(nightly, "task"), "build_report");
    assert!(field(nightly, "payload").contains("{&quot;kind&quot;:&quot;full&quot;}"));
    assert_eq!(field(nightly, "fired"), "0");
    assert_eq!(field(nightly, "last"), "never");
    let next = client.schedules("reports").await.unwrap()[0]
        .next_tick_ms
        .expect("a registered cron schedule has a next tick");
    assert!(
        field(nightly, "next").contains(&ostq_web_time(next)),
        "{nightly}"
    );

    let poll_info = client.schedules("feeds").await.unwrap().remove(0);
    let poll = row(&page.body, "feeds", "poll");
    assert_eq!(field(poll, "when"), "every 100ms");
    assert_eq!(field(poll, "fired"), poll_info.fired.to_string());
    let last_job = poll_info
        .last_job_id
        .expect("a fired schedule has a last job");
    assert!(
        field(poll, "last-job").contains(&format!(
            r#"href="/queues/feeds/jobs/{}""#,
            common::pct(&last_job)
        )),
        "{poll}"
    );
    assert!(field(poll, "last").contains(&ostq_web_time(poll_info.last_tick_ms.unwrap())));
    // The job the last tick enqueued is there to be looked at.
    let job = http
        .get(&format!("/queues/feeds/jobs/{}", common::pct(&last_job)))
        .await;
    assert_eq!(job.status, 200, "{}", job.body);
}

/// A unix-ms time as the dashboard writes it.
fn ostq_web_time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%SZ")
        .to_string()
}

#[tokio::test]
async fn remove_asks_first_and_needs_the_csrf_token() {
    let (_server, client) = redis().await;
    register(
        &client,
        vec![Schedule::every("poll", "feeds", Duration::from_secs(60))],
    )
    .await;
    let registered = || async { client.schedules("feeds").await.unwrap().len() };
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, csrf) = open_session(&dashboard).await;
    let page = http.get("/schedules").await;
    assert!(page.body.contains(r#"action="/schedules/remove""#));

    let target = [("queue", "feeds"), ("name", "poll"), ("confirm", "1")];
    // No CSRF token, a wrong one, or from another site: refused, still registered.
    assert_eq!(
        http.post("/schedules/remove", &target, &[]).await.status,
        403
    );
    let mut wrong = target.to_vec();
    wrong.push(("csrf", "0123"));
    assert_eq!(
        http.post("/schedules/remove", &wrong, &[]).await.status,
        403
    );
    let mut right = target.to_vec();
    right.push(("csrf", &csrf));
    let cross = http
        .post(
            "/schedules/remove",
            &right,
            &[("Sec-Fetch-Site", "cross-site")],
        )
        .await;
    assert_eq!(cross.status, 403);
    assert_eq!(http.get("/schedules/remove").await.status, 405);
    assert_eq!(registered().await, 1);

    // Without `confirm`: a page that names it and asks; nothing removed yet.
    let ask = http
        .post(
            "/schedules/remove",
            &[("queue", "feeds"), ("name", "poll"), ("csrf", &csrf)],
            &[],
        )
        .await;
    assert_eq!(ask.status, 200, "{}", ask.body);
    assert!(ask.body.contains("Remove schedule poll?"));
    assert!(ask.body.contains(r#"name="confirm" value="1""#));
    assert_eq!(registered().await, 1);

    // Confirmed: gone, and the page says so.
    let done = http.post("/schedules/remove", &right, &[]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.header("location"), Some("/schedules?done=removed"));
    assert_eq!(registered().await, 0);
    let page = http.get("/schedules?done=removed").await;
    assert!(page.body.contains(r#"id="notice""#));
    assert!(page.body.contains("0 schedules"));
    // Again: it was no longer there.
    let again = http.post("/schedules/remove", &right, &[]).await;
    assert_eq!(again.header("location"), Some("/schedules?done=gone"));
}

#[tokio::test]
async fn read_only_shows_schedules_but_no_remove_and_refuses_it() {
    let (_server, client) = redis().await;
    register(
        &client,
        vec![Schedule::every("poll", "feeds", Duration::from_secs(60))],
    )
    .await;
    let options = ostq_web::Options::without_token().read_only(true);
    let dashboard = Dashboard::start(client.clone(), options).await;
    let (mut http, csrf) = open_session(&dashboard).await;
    let page = http.get("/schedules").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"data-schedule="poll""#));
    assert!(
        !page.body.contains(r#"method="post""#),
        "no action in read-only mode"
    );
    let answer = http
        .post(
            "/schedules/remove",
            &[
                ("queue", "feeds"),
                ("name", "poll"),
                ("confirm", "1"),
                ("csrf", &csrf),
            ],
            &[],
        )
        .await;
    assert_eq!(answer.status, 405);
    assert_eq!(client.schedules("feeds").await.unwrap().len(), 1);
}

#[tokio::test]
async fn hostile_schedule_names_and_payloads_are_shown_as_text() {
    let (_server, client) = redis().await;
    let script_name = "<script>alert(1)</script>";
    let img_payload = r#""><img src=x onerror=alert(2)>"#;
    register(
        &client,
        vec![
            Schedule::every(script_name, "feeds", Duration::from_secs(60))
                .payload(img_payload)
                .task_name("<b>bold</b>"),
        ],
    )
    .await;
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, csrf) = open_session(&dashboard).await;
    let page = http.get("/schedules").await;
    assert_eq!(page.status, 200);
    for raw in [script_name, "<img src=x", "<b>bold"] {
        assert!(!page.body.contains(raw), "{raw} unescaped in {}", page.body);
    }
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page
        .body
        .contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"));
    // The confirmation page names it as text too, and Remove takes exactly that schedule.
    let form = [("queue", "feeds"), ("name", script_name), ("csrf", &csrf)];
    let ask = http.post("/schedules/remove", &form, &[]).await;
    assert!(!ask.body.contains(script_name));
    assert!(ask.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    let mut confirmed = form.to_vec();
    confirmed.push(("confirm", "1"));
    assert_eq!(
        http.post("/schedules/remove", &confirmed, &[]).await.status,
        303
    );
    assert!(client.schedules("feeds").await.unwrap().is_empty());
}
