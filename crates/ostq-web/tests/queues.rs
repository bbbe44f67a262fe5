//! The queue and job pages over real HTTP against a real Redis with live workers: paging while a
//! worker drains the queue, filters, bulk actions (counts checked against Redis afterwards),
//! hostile payloads shown as text, and the dashboard mounted under a prefix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{open_session, redis, spawn, wait_until, Dashboard, Http};
use ostq::{BoxError, Job, JobState, PushOptions, Worker};

/// Follows the "next page" links of a listing from `path`, returning every id listed.
async fn page_through(http: &mut Http, path: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut next = Some(path.to_string());
    let mut pages = 0;
    while let Some(path) = next {
        let page = http.get(&path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        ids.extend(page.row_ids());
        next = page.href_of("next-page");
        pages += 1;
        assert!(pages < 10_000, "paging does not end");
    }
    (ids, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_while_a_worker_drains_the_queue_skips_and_repeats_nothing() {
    let (_server, client) = redis().await;
    let queue = client.queue("videos");
    let payloads: Vec<String> = (0..2000).map(|i| format!("job-{i}")).collect();
    let ids = queue
        .push_bulk(payloads.iter().map(String::as_str))
        .await
        .unwrap();
    let pushed: HashSet<String> = ids.into_iter().collect();

    // A live worker takes jobs from the head while the listing pages from the head too.
    let started = Arc::new(Mutex::new(HashSet::new()));
    let seen = started.clone();
    let worker = Worker::builder(client.clone())
        .queue("videos")
        .concurrency(4)
        .handler(move |job: Job| {
            seen.lock().unwrap().insert(job.id.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(15)).await;
                Ok::<_, BoxError>(())
            }
        })
        .build()
        .unwrap();
    let running = spawn(worker);
    // And a producer adds jobs at the tail meanwhile.
    let producer_queue = client.queue("videos");
    let producer = tokio::spawn(async move {
        for i in 0..100 {
            producer_queue.push(format!("late-{i}")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !started.lock().unwrap().is_empty()
        })
        .await,
        "the worker takes jobs"
    );

    let options = ostq_web::Options::without_token().page_size(40);
    let dashboard = Dashboard::start(client.clone(), options).await;
    let mut http = dashboard.client();
    let (listed, pages) = page_through(&mut http, "/queues/videos?state=pending").await;
    let started_by_then: HashSet<String> = started.lock().unwrap().clone();
    producer.await.unwrap();
    running.shutdown().await;

    let unique: HashSet<&String> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "a job was listed twice");
    assert!(pages > 10, "{pages} pages");
    // Every job pushed before paging that no worker had taken when paging ended stayed pending
    // the whole time: it must have been listed.
    let missed: Vec<&String> = pushed
        .iter()
        .filter(|id| !started_by_then.contains(*id) && !unique.contains(id))
        .collect();
    assert!(
        missed.is_empty(),
        "{} jobs skipped, e.g. {:?}",
        missed.len(),
        missed.first()
    );
    assert!(
        !started_by_then.is_empty() && started_by_then.len() < pushed.len(),
        "the worker drained part of the queue while paging ({} of {})",
        started_by_then.len(),
        pushed.len()
    );
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Resize {
    user: usize,
}
impl ostq::Task for Resize {
    const NAME: &'static str = "resize";
}
#[derive(serde::Serialize, serde::Deserialize)]
struct Email {
    user: usize,
}
impl ostq::Task for Email {
    const NAME: &'static str = "email";
}

fn error_of(user: usize) -> &'static str {
    if user % 3 == 0 {
        "timed out after 5s"
    } else {
        "connection refused"
    }
}

/// Dead jobs made by a real worker: `n` jobs, task `resize` for even i and `email` for odd,
/// payload `{"user":i}`, error "timed out after 5s" when i % 3 == 0, else "connection refused".
async fn dead_jobs(client: &ostq::Client, queue: &str, n: usize) -> Vec<(String, usize)> {
    let q = client.queue(queue);
    let mut ids = Vec::new();
    for i in 0..n {
        let name = if i % 2 == 0 { "resize" } else { "email" };
        let options = PushOptions::new().max_attempts(1).name(name);
        let id = q
            .push_with(format!("{{\"user\":{i}}}"), &options)
            .await
            .unwrap();
        ids.push((id, i));
    }
    let worker = Worker::builder(client.clone())
        .queue(queue)
        .concurrency(8)
        .task(|t: Resize| async move { Err::<(), BoxError>(error_of(t.user).into()) })
        .task(|t: Email| async move { Err::<(), BoxError>(error_of(t.user).into()) })
        .build()
        .unwrap();
    let running = spawn(worker);
    let dead = wait_until(Duration::from_secs(20), || async {
        q.counts().await.unwrap().dead == n as u64
    })
    .await;
    running.shutdown().await;
    assert!(dead, "every job went dead");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_find_jobs_by_task_error_and_payload() {
    let (_server, client) = redis().await;
    let jobs = dead_jobs(&client, "videos", 60).await;
    let expect = |keep: &dyn Fn(usize) -> bool| -> HashSet<String> {
        jobs.iter()
            .filter(|(_, i)| keep(*i))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let options = ostq_web::Options::without_token().page_size(500);
    let dashboard = Dashboard::start(client.clone(), options).await;
    let mut http = dashboard.client();

    let listed = |page: &common::Answer| page.row_ids().into_iter().collect::<HashSet<_>>();
    let page = http.get("/queues/videos?state=dead&error=TIMED+OUT").await;
    assert_eq!(listed(&page), expect(&|i| i % 3 == 0));
    assert!(page.body.contains("Reached the end of dead"));
    let page = http.get("/queues/videos?state=dead&name=resize").await;
    assert_eq!(listed(&page), expect(&|i| i % 2 == 0));
    let page = http
        .get("/queues/videos?state=dead&name=email&error=refused")
        .await;
    assert_eq!(listed(&page), expect(&|i| i % 2 == 1 && i % 3 != 0));
    let page = http
        .get("/queues/videos?state=dead&payload=%22user%22%3A42%7D")
        .await;
    assert_eq!(listed(&page), expect(&|i| i == 42));
    let page = http.get("/queues/videos?state=pending&error=timed").await;
    assert!(page.row_ids().is_empty(), "no pending job");

    // A small budget: each request examines at most that many, says it stopped early, and the
    // continuations find every match exactly once.
    let mut found = Vec::new();
    let mut cursor = String::new();
    let mut calls = 0;
    loop {
        let answer = http
            .get(&format!(
                "/api/queues/videos/search?state=dead&error=timed&budget=7&limit=100&cursor={cursor}"
            ))
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
        assert!(json["examined"].as_u64().unwrap() <= 7);
        for job in json["jobs"].as_array().unwrap() {
            found.push(job["id"].as_str().unwrap().to_string());
        }
        calls += 1;
        match json["next"].as_str() {
            Some(next) => cursor = common::pct(next),
            None => break,
        }
    }
    assert!(calls >= 60 / 7, "{calls} calls");
    let unique: HashSet<String> = found.iter().cloned().collect();
    assert_eq!(unique.len(), found.len(), "a match was returned twice");
    assert_eq!(unique, expect(&|i| i % 3 == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_actions_say_how_many_and_move_exactly_those_jobs() {
    let (_server, client) = redis().await;
    let jobs = dead_jobs(&client, "videos", 30).await;
    let queue = client.queue("videos");
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, csrf) = open_session(&dashboard).await;

    // Retry by filter: the confirmation says how many, carries their ids, and only those move.
    let form = [
        ("csrf", csrf.as_str()),
        ("action", "retry"),
        ("scope", "filter"),
        ("state", "dead"),
        ("error", "timed out"),
    ];
    let confirm = http.post("/queues/videos/bulk", &form, &[]).await;
    assert_eq!(confirm.status, 200, "{}", confirm.body);
    assert!(confirm.body.contains("Retry 10 jobs"), "{}", confirm.body);
    assert_eq!(
        queue.counts().await.unwrap().dead,
        30,
        "nothing moves before confirming"
    );
    let ids: Vec<String> = confirm
        .body
        .split(r#"<input type="hidden" name="id" value=""#)
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_string())
        .collect();
    assert_eq!(ids.len(), 10);
    let mut confirmed: Vec<(&str, &str)> = form.to_vec();
    confirmed.push(("confirm", "10"));
    for id in &ids {
        confirmed.push(("id", id));
    }
    let done = http.post("/queues/videos/bulk", &confirmed, &[]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(done
        .header("location")
        .unwrap()
        .contains("done=retried&n=10"));
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.dead, counts.pending), (20, 10));
    for (id, i) in &jobs {
        let state = queue.job(id).await.unwrap().unwrap().state;
        let expected = if i % 3 == 0 {
            JobState::Pending
        } else {
            JobState::Dead
        };
        assert_eq!(state, expected, "job {i}");
    }

    // Delete a selection of three.
    let page = http.get("/queues/videos?state=dead").await;
    let chosen: Vec<String> = page.row_ids().into_iter().take(3).collect();
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("action", "delete"),
        ("scope", "selected"),
        ("state", "dead"),
    ];
    for id in &chosen {
        form.push(("id", id));
    }
    let confirm = http.post("/queues/videos/bulk", &form, &[]).await;
    assert!(confirm.body.contains("Delete 3 jobs"), "{}", confirm.body);
    form.push(("confirm", "3"));
    let done = http.post("/queues/videos/bulk", &form, &[]).await;
    assert_eq!(done.status, 303);
    assert_eq!(queue.counts().await.unwrap().dead, 17);
    for id in &chosen {
        assert!(queue.job(id).await.unwrap().is_none(), "{id} deleted");
    }

    // Delete the whole state: confirmed with a number lower than what is there now, it asks
    // again and deletes nothing.
    let form = [
        ("csrf", csrf.as_str()),
        ("action", "delete"),
        ("scope", "state"),
        ("state", "dead"),
    ];
    let confirm = http.post("/queues/videos/bulk", &form, &[]).await;
    assert!(confirm.body.contains("Delete 17 jobs"), "{}", confirm.body);
    let mut stale = form.to_vec();
    stale.push(("confirm", "5"));
    let again = http.post("/queues/videos/bulk", &stale, &[]).await;
    assert_eq!(again.status, 200);
    assert!(again.body.contains("Delete 17 jobs"));
    assert_eq!(queue.counts().await.unwrap().dead, 17);
    let mut right = form.to_vec();
    right.push(("confirm", "17"));
    let done = http.post("/queues/videos/bulk", &right, &[]).await;
    assert_eq!(done.status, 303);
    assert!(done.header("location").unwrap().contains("n=17"));
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.dead, counts.pending), (0, 10));
}

#[tokio::test]
async fn queue_and_job_actions_reach_redis() {
    let (_server, client) = redis().await;
    let queue = client.queue("videos");
    let id = queue
        .push_with(
            "later",
            &PushOptions::new().delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, csrf) = open_session(&dashboard).await;
    let csrf = [("csrf", csrf.as_str())];

    assert_eq!(
        http.post("/queues/videos/pause", &csrf, &[]).await.status,
        303
    );
    assert!(queue.counts().await.unwrap().paused);
    let page = http.get("/queues/videos?done=paused").await;
    assert!(page.body.contains("paused-badge") && page.body.contains("resume-queue"));
    assert_eq!(
        http.post("/queues/videos/resume", &csrf, &[]).await.status,
        303
    );
    assert!(!queue.counts().await.unwrap().paused);

    let set = [csrf[0], ("max", "50"), ("period", "2s")];
    assert_eq!(
        http.post("/queues/videos/rate-limit", &set, &[])
            .await
            .status,
        303
    );
    assert_eq!(
        queue.rate_limit().await.unwrap(),
        Some((50, Duration::from_secs(2)))
    );
    let page = http.get("/queues/videos").await;
    assert!(
        page.body.contains("50 jobs per 2.0s"),
        "the current limit is shown"
    );
    let clear = [csrf[0], ("clear", "1")];
    assert_eq!(
        http.post("/queues/videos/rate-limit", &clear, &[])
            .await
            .status,
        303
    );
    assert_eq!(queue.rate_limit().await.unwrap(), None);

    // Find by id goes to the job page; the job page's retry runs it now.
    let found = http.get(&format!("/queues/videos?id={id}")).await;
    assert_eq!(found.status, 303);
    let job_page = found.header("location").unwrap().to_string();
    let page = http.get(&job_page).await;
    assert!(page.body.contains("job-retry") && page.body.contains("later"));
    let missing = http.get("/queues/videos?id=no-such-job").await;
    assert!(missing.body.contains("No job with id"));
    let answer = http.post(&format!("{job_page}/retry"), &csrf, &[]).await;
    assert_eq!(answer.status, 303);
    assert_eq!(
        queue.job(&id).await.unwrap().unwrap().state,
        JobState::Pending
    );
    let answer = http.post(&format!("{job_page}/delete"), &csrf, &[]).await;
    assert_eq!(answer.status, 303);
    assert!(queue.job(&id).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_errors_and_names_are_shown_as_text() {
    let (_server, client) = redis().await;
    let script = "<script>alert(1)</script>";
    let img = r#""><img src=x onerror=alert(2)>"#;
    let queue = client.queue("xss");
    // A named job dies with an error that quotes its name.
    let options = PushOptions::new()
        .max_attempts(1)
        .name("<script>alert(3)</script><b>task</b>");
    let id = queue.push_with(script, &options).await.unwrap();
    queue.push(img).await.unwrap();
    queue.push(b"\xff\xfe<script>".to_vec()).await.unwrap();
    let worker = Worker::builder(client.clone())
        .queue("xss")
        .handler(|job: Job| async move {
            if let Some(name) = &job.name {
                let reason = format!("no handler for task '{name}'");
                return Err(Box::new(ostq::Permanent::new(reason)) as BoxError);
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>(())
        })
        .concurrency(1)
        // Gives the sleeping job back to pending at once when the test stops the worker.
        .shutdown_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let running = spawn(worker);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            queue.counts().await.unwrap().dead == 1
        })
        .await
    );
    running.shutdown().await;
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let mut http = dashboard.client();
    let pages = [
        http.get("/queues/xss?state=dead").await,
        http.get("/queues/xss?state=pending").await,
        http.get(&format!("/queues/xss/jobs/{id}")).await,
        http.get("/queues/xss?state=dead&error=%3Cscript").await,
    ];
    for page in &pages {
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(!page.body.contains("<script>alert"), "{}", page.body);
        assert!(!page.body.contains("<img"), "{}", page.body);
        assert!(!page.body.contains("<b>task"), "{}", page.body);
    }
    assert!(
        pages[0]
            .body
            .contains("&lt;script&gt;alert(3)&lt;/script&gt;"),
        "{}",
        pages[0].body
    );
    assert!(pages[1]
        .body
        .contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"));
    assert!(pages[2]
        .body
        .contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(pages[2].body.contains("&lt;b&gt;task&lt;/b&gt;"));
    assert!(
        pages[3].body.contains("Examined 1 dead jobs, 1 match"),
        "{}",
        pages[3].body
    );
}

#[tokio::test]
async fn mounted_under_a_prefix_every_link_and_asset_follows_it() {
    let (_server, client) = redis().await;
    client.queue("videos").push("42").await.unwrap();
    let dashboard = ostq_web::router(client.clone(), ostq_web::Options::without_token());
    let app = axum::Router::new().nest("/ops/queues", dashboard);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = Dashboard::serve(listener, app).await;
    let mut http = served.client();
    let page = http.get("/ops/queues").await;
    assert_eq!(page.status, 200, "{}", page.body);
    for href in page.attrs("href").into_iter().chain(page.attrs("src")) {
        assert!(href.starts_with("/ops/queues"), "{href}");
    }
    assert!(page.body.contains(r#"data-url="/ops/queues/api/totals""#));
    let cookie = page.header("set-cookie").unwrap();
    assert!(cookie.contains("Path=/ops/queues;"), "{cookie}");
    assert_eq!(http.get("/ops/queues/assets/app.js").await.status, 200);
    let queue_page = http.get("/ops/queues/queues/videos").await;
    assert_eq!(queue_page.status, 200);
    for action in queue_page.attrs("action") {
        assert!(action.starts_with("/ops/queues/queues/videos"), "{action}");
    }
    // An action answers with a redirect under the prefix.
    let csrf = page.csrf();
    let answer = http
        .post("/ops/queues/queues/videos/pause", &[("csrf", &csrf)], &[])
        .await;
    assert_eq!(answer.status, 303);
    assert!(answer
        .header("location")
        .unwrap()
        .starts_with("/ops/queues/queues/videos"));
    assert!(client.queue("videos").counts().await.unwrap().paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_page_lists_live_workers() {
    let (_server, client) = redis().await;
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let mut http = dashboard.client();
    assert!(http.get("/workers").await.body.contains("No live worker"));
    let worker = Worker::builder(client.clone())
        .queue("videos")
        .queue("<emails>")
        .concurrency(3)
        .handler(|_job: Job| async move { Ok::<_, BoxError>(()) })
        .build()
        .unwrap();
    let running = spawn(worker);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            !client.workers().await.unwrap().is_empty()
        })
        .await
    );
    let page = http.get("/workers").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("1 live workers, 0 of 3 slots busy"),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"href="/queues/videos""#));
    assert!(page.body.contains("&lt;emails&gt;") && page.body.contains("/queues/%3Cemails%3E"));
    let overview = http.get("/").await;
    assert!(overview.body.contains(r#"id="workers-live">1<"#));
    running.shutdown().await;
}

/// A pending job deep in a long list: the listing's link tells its page where to look, and a
/// page reached without it (find by id, a pasted URL) reads a bounded part of the list, says so
/// and links on to the rest.
#[tokio::test]
async fn a_deep_pending_job_page_is_found_by_its_hint_or_within_a_stated_budget() {
    let (_server, client) = redis().await;
    let queue = client.queue("deep");
    let ids = queue
        .push_bulk((0..3_000).map(|i| format!("job-{i}")))
        .await
        .unwrap();
    let next_to_run = &ids[0]; // the oldest: 2,999 entries from the newest end
    let options = ostq_web::Options::without_token().find_budget(500);
    let dashboard = Dashboard::start(client.clone(), options).await;
    let mut http = dashboard.client();

    let listing = http.get("/queues/deep?state=pending").await;
    let link = listing.href_of(next_to_run).unwrap_or_else(|| {
        let at = listing.body.find(next_to_run.as_str()).unwrap();
        let start = listing.body[..at].rfind("href=\"").unwrap() + 6;
        let rest = &listing.body[start..];
        rest[..rest.find('"').unwrap()].replace("&amp;", "&")
    });
    assert!(link.ends_with("?near=0"), "{link}");
    let page = http.get(&link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("job-0") && page.body.contains(r#"id="job-state">pending"#));

    // Without the hint: 500 entries a page, each saying how far it read.
    let mut path = format!("/queues/deep/jobs/{next_to_run}");
    let mut looks = 0;
    let page = loop {
        let page = http.get(&path).await;
        looks += 1;
        assert!(looks <= 6, "more looks than 3,000 / 500");
        if !page.body.contains("lookup-stopped") {
            break page;
        }
        assert!(
            page.body
                .contains("not among the 500 pending jobs this page read")
                && page.body.contains("holds 3,000 jobs"),
            "{}",
            page.body
        );
        path = page.href_of("look-further").unwrap();
    };
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"id="job-state">pending"#));
    assert_eq!(
        looks, 6,
        "five pages of 500 that stop, then the sixth finds it"
    );

    // Find by id hands the look on to the job page, where it stopped.
    let found = http.get(&format!("/queues/deep?id={next_to_run}")).await;
    assert_eq!(found.status, 303);
    let location = found.header("location").unwrap();
    assert!(location.ends_with("?from=500"), "{location}");
    // An id that is nowhere: the whole list, a page at a time, then "no job".
    let mut path = "/queues/deep/jobs/nope".to_string();
    loop {
        let page = http.get(&path).await;
        match page.href_of("look-further") {
            Some(next) if page.status == 200 => path = next,
            _ => {
                assert_eq!(page.status, 404, "{}", page.body);
                break;
            }
        }
    }
}
