//! Unique jobs, results on demand and payload limits.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Error, Job, PushOptions, RetryPolicy, Worker};

const WAIT: Duration = Duration::from_secs(10);

fn worker(client: &ostq::Client, queue: &str) -> Worker {
    Worker::builder(client.clone())
        .queue(queue)
        .retry(RetryPolicy::fixed(Duration::from_millis(20)))
        .max_payload(1024)
        .handler(|job: Job| async move {
            let text = job.payload_str()?.to_string();
            if text.starts_with("fail") {
                return Err::<String, BoxError>(format!("cannot {text}").into());
            }
            if text.starts_with("slow") {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Ok(format!("did {text}"))
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_unique_key_blocks_duplicates_until_the_job_finishes() {
    let (_server, client) = setup().await;
    let queue = client.queue("uniq");
    let opts = PushOptions::new().unique("video-42");
    let first = queue.push_with("slow 42", &opts).await.unwrap();
    // Pending: a second push is refused, naming the first job.
    match queue.push_with("slow 42 again", &opts).await {
        Err(Error::Duplicate { key, existing_id }) => assert_eq!(
            (key.as_str(), existing_id.as_str()),
            ("video-42", first.as_str())
        ),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // Another key is independent.
    queue
        .push_with("other", &PushOptions::new().unique("video-43"))
        .await
        .unwrap();
    let running = spawn(worker(&client, "uniq"));
    wait_counts(&queue, WAIT, |c| c.active >= 1).await;
    // Running: still refused.
    assert!(matches!(
        queue.push_with("x", &opts).await,
        Err(Error::Duplicate { .. })
    ));
    wait_counts(&queue, WAIT, |c| c.processed_total == 2).await;
    // Completed: the key is free again.
    let second = queue.push_with("again", &opts).await.unwrap();
    assert_ne!(second, first);
    wait_counts(&queue, WAIT, |c| c.processed_total == 3).await;

    // A job that dies gives its key up too; one waiting to retry keeps it.
    let dying = PushOptions::new().unique("doomed").max_attempts(2);
    queue.push_with("fail hard", &dying).await.unwrap();
    wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    queue
        .push_with("fail again", &dying.clone().max_attempts(1))
        .await
        .unwrap();
    wait_counts(&queue, WAIT, |c| c.dead == 2).await;
    running.shutdown().await;
    assert!(
        queue.push_bulk_with(["a", "b"], &opts).await.is_err(),
        "one key cannot cover a bulk"
    );
}

#[tokio::test]
async fn a_unique_ttl_holds_the_key_for_its_time() {
    let (_server, client) = setup().await;
    let queue = client.queue("ttl");
    let opts = PushOptions::new().unique_for("report", Duration::from_millis(300));
    queue.push_with("a", &opts).await.unwrap();
    let running = spawn(worker(&client, "ttl"));
    wait_counts(&queue, WAIT, |c| c.processed_total == 1).await;
    // Done, but the key is held for its TTL whatever became of the job.
    assert!(matches!(
        queue.push_with("b", &opts).await,
        Err(Error::Duplicate { .. })
    ));
    tokio::time::sleep(Duration::from_millis(350)).await;
    queue.push_with("c", &opts).await.unwrap();
    running.shutdown().await;
}

#[tokio::test]
async fn wait_for_returns_results_and_failures_as_they_happen() {
    let (_server, client) = setup().await;
    let queue = client.queue("rpc");
    let running = spawn(worker(&client, "rpc"));
    let started = Instant::now();
    let result = queue
        .push_and_wait("slow thumbnail", PushOptions::new(), WAIT)
        .await
        .unwrap();
    assert_eq!(result.as_deref(), Some(&b"did slow thumbnail"[..]));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1000),
        "{took:?}"
    );

    let doomed = queue
        .push_with("fail resize", &PushOptions::new().track().max_attempts(2))
        .await
        .unwrap();
    match queue.wait_for(&doomed, WAIT).await {
        Err(Error::JobFailed { id, error }) => assert_eq!(
            (id.as_str(), error.as_str()),
            (doomed.as_str(), "cannot fail resize")
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    // A finished job answers at once; a slow one times out; an untracked one is a clear error.
    assert!(queue
        .wait_for(&doomed, Duration::from_millis(1))
        .await
        .is_err());
    let slow = queue
        .push_with(
            "slow",
            &PushOptions::new().track().delay(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(matches!(
        queue.wait_for(&slow, Duration::from_millis(200)).await,
        Err(Error::Timeout(_))
    ));
    let untracked = queue.push("x").await.unwrap();
    assert!(matches!(
        queue.wait_for(&untracked, WAIT).await,
        Err(Error::NotFound(_))
    ));
    running.shutdown().await;
}

#[tokio::test]
async fn oversize_payloads_are_refused_on_push_and_dead_on_fetch() {
    let (server, client) = setup().await;
    let queue = client.queue("sized").with_max_payload(1024);
    let err = queue.push(vec![b'x'; 1025]).await.unwrap_err();
    assert!(
        err.to_string().contains("over the limit of 1024 bytes"),
        "{err}"
    );
    assert!(queue
        .push_bulk([vec![b'x'; 10], vec![b'x'; 2000]])
        .await
        .is_err());
    assert_eq!(
        queue.counts().await.unwrap().pending,
        0,
        "nothing half-written"
    );
    // Another producer ignores the limit: the worker refuses the job with the reason.
    let big = "y".repeat(5000);
    server
        .cli(&["LPUSH", "ostq:{sized}:pending", &big])
        .unwrap();
    queue.push("fine").await.unwrap();
    let running = spawn(worker(&client, "sized"));
    let counts = wait_counts(&queue, WAIT, |c| c.processed_total == 2).await;
    running.shutdown().await;
    assert_eq!(counts.dead, 1);
    let dead = queue.jobs(ostq::JobState::Dead, 0, 1).await.unwrap();
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("payload of 5000 bytes is over the limit of 1024 bytes")
    );
}

#[tokio::test]
async fn deleting_or_purging_a_pending_unique_job_frees_its_key() {
    let (_server, client) = setup().await;
    let queue = client.queue("free");
    let opts = PushOptions::new().unique("k1").track();
    let id = queue.push_with("a", &opts).await.unwrap();
    assert_eq!(queue.delete(&[id.as_str()]).await.unwrap(), 1);
    let id = queue.push_with("b", &opts).await.unwrap();
    assert_eq!(queue.purge(Some(ostq::JobState::Pending)).await.unwrap(), 1);
    queue.push_with("c", &opts).await.unwrap();
    assert!(
        queue.job(&id).await.unwrap().is_none(),
        "its record went with it"
    );
}

#[tokio::test]
async fn waiting_on_a_dead_job_retried_by_hand_waits_for_the_new_run() {
    let (_server, client) = setup().await;
    let queue = client.queue("again");
    let id = queue
        .push_with("fail once", &PushOptions::new().track().max_attempts(1))
        .await
        .unwrap();
    let running = spawn(worker(&client, "again"));
    assert!(matches!(
        queue.wait_for(&id, WAIT).await,
        Err(Error::JobFailed { .. })
    ));
    running.shutdown().await;
    assert_eq!(queue.retry_now(&[id.as_str()]).await.unwrap(), 1);
    // No worker now: the wait must block until its timeout, not return the old outcome.
    let started = Instant::now();
    assert!(matches!(
        queue.wait_for(&id, Duration::from_millis(300)).await,
        Err(Error::Timeout(_))
    ));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// The done token that wakes `wait_for` is written only for jobs someone waits on (it costs two
/// writes per job), and a waiter is still woken by it at once, not by its one-second re-read.
#[tokio::test]
async fn only_waited_jobs_get_a_done_token_and_their_waiters_wake_at_once() {
    let (server, client) = setup().await;
    let queue = client.queue("tokens");
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("tokens")
            .handler(move |job: Job| {
                let gate = gate.clone();
                async move {
                    if job.payload_str()? == "gated" {
                        gate.notified().await;
                    }
                    Ok::<_, BoxError>("done".to_string())
                }
            })
            .build()
            .unwrap(),
    );
    let unwaited = queue
        .push_with("free", &PushOptions::new().track())
        .await
        .unwrap();
    let waited = queue
        .push_with("gated", &PushOptions::new().track())
        .await
        .unwrap();
    wait_counts(&queue, WAIT, |c| c.processed_total == 1 && c.active == 1).await;
    let waiter = {
        let queue = queue.clone();
        let id = waited.clone();
        tokio::spawn(async move {
            let result = queue.wait_for(&id, WAIT).await;
            (result, Instant::now())
        })
    };
    // The waiter has read the record (marking it) and blocks on the token.
    let marked = common::wait_until(WAIT, || async {
        let key = format!("ostq:{{tokens}}:job:{waited}");
        server.cli(&["HGET", &key, "waited"]).unwrap().trim() == "1"
    })
    .await;
    assert!(marked, "wait_for did not mark the job as waited on");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let finished = Instant::now();
    release.notify_one();
    let (result, woke) = waiter.await.unwrap();
    assert_eq!(result.unwrap().as_deref(), Some(&b"done"[..]));
    let late = woke.duration_since(finished);
    assert!(
        late < Duration::from_millis(600),
        "the waiter woke {late:?} after the job finished: not by its token"
    );
    let exists = |id: &str| {
        server
            .cli(&["EXISTS", &format!("ostq:{{tokens}}:done:{id}")])
            .unwrap()
    };
    assert_eq!(
        exists(&unwaited).trim(),
        "0",
        "a job nobody waited on got a token"
    );
    assert_eq!(exists(&waited).trim(), "1", "the waited job got no token");
    // Both are still indexed as completed and readable.
    assert_eq!(
        queue.wait_for(&unwaited, WAIT).await.unwrap().as_deref(),
        Some(&b"done"[..])
    );
    assert_eq!(queue.counts().await.unwrap().completed, 2);
    running.shutdown().await;
}
