//! The job page's "errors of every attempt", over real HTTP against a real Redis with a live
//! worker: read back from the queue's event stream when it is on (each attempt's error, in order,
//! only this job's, escaped), and a hint instead when it is off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{open_session, redis, spawn, wait_until, Dashboard};
use ostq::events::EventSink;
use ostq::{BoxError, Job, PushOptions, RetryPolicy, Worker};

/// Pushes `payloads` (3 attempts each) and runs a worker that fails every attempt with an error
/// naming the payload and the attempt, until all are dead. Returns their ids.
async fn fail_three_times(client: &ostq::Client, payloads: &[&str]) -> Vec<String> {
    let queue = client.queue("emails");
    let mut ids = Vec::new();
    for payload in payloads {
        ids.push(
            queue
                .push_with(*payload, &PushOptions::new().max_attempts(3))
                .await
                .unwrap(),
        );
    }
    let worker = Worker::builder(client.clone())
        .queue("emails")
        .retry(RetryPolicy::fixed(Duration::from_millis(10)))
        .handler(|job: Job| async move {
            let payload = job.payload_str()?.to_string();
            Err::<(), BoxError>(
                format!("<b>{payload}</b> refused on attempt {}", job.attempt).into(),
            )
        })
        .build()
        .unwrap();
    let running = spawn(worker);
    let expected = payloads.len() as u64;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            client.queue("emails").counts().await.unwrap().dead == expected
        })
        .await,
        "every job dies after 3 attempts"
    );
    running.shutdown().await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_event_stream_on_every_attempts_error_is_listed() {
    let (_server, client) = redis().await;
    client
        .queue("emails")
        .set_events(EventSink::Stream)
        .await
        .unwrap();
    let ids = fail_three_times(&client, &["alice", "bob"]).await;
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, _) = open_session(&dashboard).await;
    let page = http
        .get(&format!("/queues/emails/jobs/{}", common::pct(&ids[0])))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    let table = &page.body[page.body.find(r#"id="attempt-errors""#).expect("the table")..];
    let table = &table[..table.find("</table>").unwrap()];
    assert_eq!(table.matches("<tr data-attempt=").count(), 3, "{table}");
    let mut at = 0;
    for attempt in 1..=3 {
        let text = format!("&lt;b&gt;alice&lt;/b&gt; refused on attempt {attempt}");
        let found = table[at..]
            .find(&text)
            .unwrap_or_else(|| panic!("{text} after {at}: {table}"));
        at += found + text.len();
    }
    assert_eq!(table.matches("failed, retried").count(), 2);
    assert_eq!(table.matches("failed, dead").count(), 1);
    assert!(
        !table.contains("bob"),
        "another job's errors are not listed"
    );
    assert!(!page.body.contains("<b>alice"), "errors are escaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_event_stream_off_the_page_says_how_to_keep_them() {
    let (_server, client) = redis().await;
    let ids = fail_three_times(&client, &["carol"]).await;
    let dashboard = Dashboard::start(client.clone(), ostq_web::Options::without_token()).await;
    let (mut http, _) = open_session(&dashboard).await;
    let page = http
        .get(&format!("/queues/emails/jobs/{}", common::pct(&ids[0])))
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("refused on attempt 3"), "the last error");
    assert!(!page.body.contains(r#"id="attempt-errors""#));
    assert!(page.body.contains(r#"id="attempt-errors-none""#));
    assert!(page.body.contains("ostq events emails --enable"));
}
