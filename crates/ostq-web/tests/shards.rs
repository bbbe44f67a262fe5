//! A sharded queue (design §19, 3 shards on one server) in the dashboard and `/metrics`: listed
//! once under its own name with the shards' summed counts, its listings and searches reaching
//! every shard, and the page of a job in shard 2 found.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{open_session, pct, redis, spawn, wait_until, Dashboard, Http};
use ostq::{BoxError, Job, PushOptions, Worker};

/// Every id of a listing from `path`, following its "next page" links.
async fn listed(http: &mut Http, path: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut next = Some(path.to_string());
    while let Some(path) = next {
        let page = http.get(&path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        ids.extend(page.row_ids());
        next = page.href_of("next-page");
        assert!(ids.len() < 10_000, "paging does not end");
    }
    ids
}

/// The value of the exposition line of `metric` with every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_queue_is_one_queue_in_the_dashboard() {
    let (_server, client) = redis().await;
    let queue = client.queue("videos");
    let layout = queue.set_shards(3).await.unwrap();
    // Dead jobs in every shard, by a live worker (which registers the shards it serves).
    let mut dead = Vec::new();
    for i in 0..6 {
        let opts = PushOptions::new().max_attempts(1).name("encode");
        dead.push(queue.push_with(format!("bad{i}"), &opts).await.unwrap());
    }
    let running = spawn(
        Worker::builder(client.clone())
            .queue("videos")
            .handler(|_job: Job| async move { Err::<(), BoxError>("broken codec".into()) })
            .build()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            queue.counts().await.unwrap().dead == dead.len() as u64
        })
        .await
    );
    running.shutdown().await;
    let pending = queue
        .push_bulk((0..9).map(|i| format!("p{i}")))
        .await
        .unwrap();
    let later = PushOptions::new().delay(Duration::from_secs(3600));
    let mut scheduled = Vec::new();
    for i in 0..6 {
        scheduled.push(queue.push_with(format!("l{i}"), &later).await.unwrap());
    }
    for ids in [&dead, &pending, &scheduled] {
        for i in 0..layout.count() {
            assert!(ids.iter().any(|id| id.ends_with(&format!("#{i}"))));
        }
    }

    // Pages of 4: a listing crosses from shard to shard within and between pages.
    let options = ostq_web::Options::without_token().page_size(4);
    let dashboard = Dashboard::start(client.clone(), options).await;
    let (mut http, _csrf) = open_session(&dashboard).await;

    // The overview lists the logical queue once, with the sums over its shards.
    let overview = http.get("/").await;
    assert_eq!(overview.attrs("data-queue"), vec!["videos".to_string()]);
    for shard in &layout.shards[1..] {
        assert!(!overview.body.contains(shard.as_str()), "{shard} listed");
    }
    let counts = queue.counts().await.unwrap();
    let row_start = overview.body.find(r#"<tr data-queue="videos""#).unwrap();
    let row = &overview.body[row_start..];
    let row = &row[..row.find("</tr>").unwrap()];
    for (state, n) in [
        ("pending", counts.pending),
        ("scheduled", counts.scheduled),
        ("dead", counts.dead),
    ] {
        let cell = format!(r#"data-field="{state}">{n}<"#);
        assert!(row.contains(&cell), "{state} {n}: {row}");
    }

    // Listings reach every shard, each job once.
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    for (state, ids) in [
        ("dead", &dead),
        ("pending", &pending),
        ("scheduled", &scheduled),
    ] {
        let got = listed(&mut http, &format!("/queues/videos?state={state}")).await;
        assert_eq!(sorted(got), sorted(ids.clone()), "{state}");
    }
    // A search by payload finds the job of shard 2.
    let in_two = pending.iter().find(|id| id.ends_with("#2")).unwrap();
    let payload =
        String::from_utf8(queue.job(in_two).await.unwrap().unwrap().payload.unwrap()).unwrap();
    let found = http
        .get(&format!(
            "/queues/videos?state=pending&payload={}",
            pct(&payload)
        ))
        .await;
    let hits: HashSet<String> = found.row_ids().into_iter().collect();
    assert!(hits.contains(in_two), "{payload}: {hits:?}");

    // The page of a job in shard 2 opens, under the logical queue.
    for id in [in_two, dead.iter().find(|id| id.ends_with("#2")).unwrap()] {
        let page = http.get(&format!("/queues/videos/jobs/{}", pct(id))).await;
        assert_eq!(page.status, 200, "{id}: {}", page.body);
        assert!(page.body.contains(id.as_str()));
        let by_id = http.get(&format!("/queues/videos?id={}", pct(id))).await;
        assert_eq!(by_id.status, 303, "{id}: find by id");
    }

    // /metrics: the logical queue's totals, no shard of its own.
    let metrics = http.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(!metrics.body.contains("videos#"), "{}", metrics.body);
    let jobs = |state: &str| {
        let label = format!(r#"state="{state}""#);
        sample(
            &metrics.body,
            "ostq_queue_jobs",
            &[r#"queue="videos""#, &label],
        )
    };
    assert_eq!(jobs("dead"), Some(counts.dead as f64));
    assert_eq!(jobs("pending"), Some(counts.pending as f64));
    let dead_total = sample(
        &metrics.body,
        "ostq_jobs_dead_total",
        &[r#"queue="videos""#, r#"task="encode""#],
    );
    assert_eq!(dead_total, Some(dead.len() as f64), "{}", metrics.body);
}
