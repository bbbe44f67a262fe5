//! The inspection API: queues, counts, paging through states, one job by id, retry, delete,
//! purge, pause and resume.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Job, JobState, PushOptions, Worker};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn listing_paging_and_lookup_by_id() {
    let (_server, client) = setup().await;
    let queue = client.queue("inbox");
    let ids = queue
        .push_bulk((0..25).map(|i| format!("p{i}")))
        .await
        .unwrap();
    let later = queue
        .push_with("s", &PushOptions::new().delay(Duration::from_secs(3600)))
        .await
        .unwrap();
    let urgent = queue
        .push_with("u", &PushOptions::new().priority(9))
        .await
        .unwrap();
    client.queue("other").push("x").await.unwrap();
    assert_eq!(client.queues().await.unwrap(), ["inbox", "other"]);

    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.pending, counts.scheduled), (26, 1));
    // Pending in run order: the prioritized job, then FIFO.
    let page1 = queue.jobs(JobState::Pending, 0, 10).await.unwrap();
    let page2 = queue.jobs(JobState::Pending, 10, 10).await.unwrap();
    let page3 = queue.jobs(JobState::Pending, 20, 10).await.unwrap();
    assert_eq!(page1[0].id, urgent);
    let listed: Vec<String> = page1
        .iter()
        .chain(&page2)
        .chain(&page3)
        .skip(1)
        .map(|j| j.id.clone())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(page3.len(), 6);

    let info = queue.job(&ids[17]).await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.payload.as_deref()),
        (JobState::Pending, Some(&b"p17"[..]))
    );
    let info = queue.job(&later).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Scheduled);
    assert!(info.due_at_ms.unwrap() > info.enqueued_at_ms.unwrap() + 3_000_000);
    assert!(queue.job("nope").await.unwrap().is_none());

    // Run the scheduled job now instead of in an hour.
    assert_eq!(queue.retry_now(&[later.as_str()]).await.unwrap(), 1);
    assert_eq!(queue.counts().await.unwrap().scheduled, 0);
    assert_eq!(
        queue.job(&later).await.unwrap().unwrap().state,
        JobState::Pending
    );
}

#[tokio::test]
async fn delete_purge_pause_resume() {
    let (server, client) = setup().await;
    let queue = client.queue("ops");
    let ids = queue.push_bulk(["a", "b", "c"]).await.unwrap();
    let tracked = queue
        .push_with("t", &PushOptions::new().track())
        .await
        .unwrap();
    let scheduled = queue
        .push_with("s", &PushOptions::new().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        queue
            .delete(&[ids[1].as_str(), scheduled.as_str(), "missing"])
            .await
            .unwrap(),
        2
    );
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.pending, counts.scheduled), (3, 0));

    // Paused: pushes are accepted, nothing is fetched.
    queue.pause().await.unwrap();
    assert!(queue.counts().await.unwrap().paused);
    let running = spawn(
        Worker::builder(client.clone())
            .queue("ops")
            .handler(|_job: Job| async { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    queue.push("d").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.pending, counts.processed_total), (4, 0));
    queue.resume().await.unwrap();
    wait_counts(&queue, WAIT, |c| c.processed_total == 4).await;
    running.shutdown().await;

    // Purge every state but active: pending (with records of tracked jobs), scheduled, dead.
    queue.push_bulk(["x", "y"]).await.unwrap();
    let tracked2 = queue
        .push_with("t2", &PushOptions::new().track())
        .await
        .unwrap();
    queue
        .push_with("later", &PushOptions::new().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(queue.purge(Some(JobState::Scheduled)).await.unwrap(), 1);
    assert_eq!(
        queue.purge(None).await.unwrap(),
        3 + 1,
        "3 pending and the completed tracked job"
    );
    let counts = queue.counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.scheduled, counts.completed),
        (0, 0, 0)
    );
    assert_eq!(
        server
            .cli(&["EXISTS", &format!("ostq:{{ops}}:job:{tracked2}")])
            .unwrap(),
        "0"
    );
    assert_eq!(
        server
            .cli(&["EXISTS", &format!("ostq:{{ops}}:job:{tracked}")])
            .unwrap(),
        "0"
    );
    assert!(queue.purge(Some(JobState::Active)).await.is_err());
}

#[tokio::test]
async fn bad_names_and_options_are_clear_errors() {
    let (_server, client) = setup().await;
    let err = client.queue("has space").push("x").await.unwrap_err();
    assert!(err.to_string().contains("queue name"), "{err}");
    let err = client
        .queue("q")
        .push_with("x", &PushOptions::new().id(""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("job id"), "{err}");
    let err = Worker::builder(client.clone())
        .queue("q")
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("handler"), "{err}");
    let err = ostq::Client::connect("redis://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(err, ostq::Error::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn passwords_in_the_url_work_and_wrong_ones_fail_fast() {
    let server = common::RedisServer::start().unwrap();
    server
        .cli(&["CONFIG", "SET", "requirepass", "s3cret"])
        .unwrap();
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port());
    let client = ostq::Client::connect(&url).await.unwrap();
    client.queue("q").push("x").await.unwrap();
    let started = std::time::Instant::now();
    let err = ostq::Client::connect(&format!("redis://:wrong@127.0.0.1:{}", server.port()))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let text = err.to_string();
    assert!(text.contains("authentication failed"), "{text}");
    assert!(
        !text.contains("wrong@"),
        "the password is not echoed: {text}"
    );
}

#[tokio::test]
async fn the_dead_set_is_capped_oldest_first() {
    let (_server, client) = setup().await;
    let queue = client.queue("capped");
    let ids = queue
        .push_bulk_with(
            (0..5).map(|i| i.to_string()),
            &PushOptions::new().max_attempts(1),
        )
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("capped")
            .concurrency(1)
            .dead_set(3, Duration::from_secs(3600))
            .handler(|_job: Job| async {
                // Distinct death times: the set orders by them.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Err::<(), BoxError>("no".into())
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.failed_total == 5).await;
    // The cap is applied by the next fetch: give the idle worker a moment.
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 3).await;
    running.shutdown().await;
    assert_eq!(counts.dead, 3);
    let mut kept: Vec<String> = queue
        .jobs(JobState::Dead, 0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    kept.sort();
    let mut newest = ids[2..].to_vec();
    newest.sort();
    assert_eq!(kept, newest, "the two that died first were dropped");
}

/// A pending job deep in a long list: without a hint a lookup reads its budget and says where
/// to go on; with a listing's hint it reads one window around the job, which still holds it
/// after workers consumed jobs ahead of it or jobs were put back at the running end.
#[tokio::test]
async fn a_pending_job_is_found_by_a_listing_hint_within_a_budget() {
    use ostq::admin::lookup::{Found, JobLookup};

    let (server, client) = setup().await;
    let queue = client.queue("deep");
    let ids = queue
        .push_bulk((0..20_000).map(|i| format!("p{i}")))
        .await
        .unwrap();
    // Run order from the next to run: ids[0] is at index 0, ids[i] at index i.
    let target = &ids[10_000];
    let mut page = queue.page(JobState::Pending, None, 10).await.unwrap();
    assert_eq!(page.list_index, (0..10).map(Some).collect::<Vec<_>>());
    let mut cursor = page.next.clone();
    while !page.jobs.iter().any(|job| &job.id == target) {
        page = queue
            .page(JobState::Pending, cursor.as_ref(), 10_000)
            .await
            .unwrap();
        cursor = page.next.clone();
    }
    let at = page.jobs.iter().position(|job| &job.id == target).unwrap();
    let hint = page.list_index[at];
    assert_eq!(hint, Some(10_000));

    let small = JobLookup::new().budget(5_000);
    // No hint: the newest 5,000 entries are read, then it stops and says so.
    let Found::StoppedEarly {
        scanned,
        pending,
        next,
    } = queue.find_job(target, small).await.unwrap()
    else {
        panic!("a budget of 5,000 cannot reach 10,000 entries deep");
    };
    assert_eq!((scanned, pending), (5_000, 20_000));
    assert_eq!(next.from_newest, 5_000);
    let Found::Job { job, list_index } = queue.find_job(target, next).await.unwrap() else {
        panic!("the second look reaches it");
    };
    assert_eq!((job.state, list_index), (JobState::Pending, Some(10_000)));

    // With the hint, one window.
    let Found::Job { job, .. } = queue.find_job(target, small.near(hint)).await.unwrap() else {
        panic!("the hint points at it");
    };
    assert_eq!(job.payload.as_deref(), Some(&b"p10000"[..]));

    // Workers take 3,000 jobs from the running end: the job moved down to 7,000.
    let mut redis = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pending_key = format!("ostq:{{{}}}:pending", "deep");
    let _: Vec<Vec<u8>> = redis::cmd("RPOP")
        .arg(&pending_key)
        .arg(3_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    // The first window (just above the hint) misses it and the budget stops the look there;
    // going on from where it stopped finds it.
    let Found::StoppedEarly { next, .. } = queue.find_job(target, small.near(hint)).await.unwrap()
    else {
        panic!("5,000 entries above the hint do not hold it any more");
    };
    let Found::Job { list_index, .. } = queue.find_job(target, next).await.unwrap() else {
        panic!("below the hint");
    };
    assert_eq!(list_index, Some(7_000));
    // The default budget finds it in one look from the stale hint.
    let found = queue.find_job(target, JobLookup::new().near(hint)).await;
    assert!(matches!(found.unwrap(), Found::Job { .. }));

    // 100 entries put back at the running end push it up, within the hint's slack.
    let put_back: Vec<String> = (0..100).map(|i| format!("bare{i}")).collect();
    let _: u64 = redis::cmd("RPUSH")
        .arg(&pending_key)
        .arg(&put_back)
        .query_async(&mut redis)
        .await
        .unwrap();
    let Found::Job { list_index, .. } = queue
        .find_job(target, small.near(Some(7_000)))
        .await
        .unwrap()
    else {
        panic!("within the slack above the hint");
    };
    assert_eq!(list_index, Some(7_100));

    // Consumed: a hinted look that reaches the running end says so; it does not go on to scan
    // the rest of the list from its newest end.
    let _: Vec<Vec<u8>> = redis::cmd("RPOP")
        .arg(&pending_key)
        .arg(7_101)
        .query_async(&mut redis)
        .await
        .unwrap();
    let found = queue
        .find_job(target, JobLookup::new().near(Some(7_100)))
        .await;
    assert_eq!(found.unwrap(), Found::NotFound);
    assert!(queue.job(target).await.unwrap().is_none());
}
