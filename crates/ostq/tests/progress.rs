//! Progress reports and cancellation.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{setup, spawn, wait_counts};
use futures::StreamExt;
use ostq::admin::Cancel;
use ostq::events::{EventSink, EventsFrom};
use ostq::{BoxError, Job, JobState, PushOptions, Worker};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn progress_shows_in_inspection_and_events() {
    let (_server, client) = setup().await;
    let queue = client.queue("frames");
    queue.set_events(EventSink::Stream).await.unwrap();
    let mut events = Box::pin(client.events("frames", EventsFrom::Now).await.unwrap());
    let id = queue
        .push_with("v", &PushOptions::new().track())
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let running = spawn(
        Worker::builder(client.clone())
            .queue("frames")
            .handler(move |job: Job| {
                let rx = rx.clone();
                async move {
                    job.progress(serde_json::json!({"frames": 10, "of": 40}))
                        .await?;
                    if let Some(rx) = rx.lock().await.take() {
                        let _ = rx.await;
                    }
                    job.progress(100).await?;
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    assert!(
        common::wait_until(WAIT, || async {
            queue.job(&id).await.unwrap().unwrap().progress.as_deref()
                == Some(r#"{"frames":10,"of":40}"#)
        })
        .await
    );
    tx.send(()).unwrap();
    wait_counts(&queue, WAIT, |c| c.processed_total == 1).await;
    running.shutdown().await;
    assert_eq!(
        queue.job(&id).await.unwrap().unwrap().progress.as_deref(),
        Some("100")
    );
    let mut kinds = Vec::new();
    while kinds.len() < 5 {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        kinds.push(format!("{:?}", event.event));
    }
    assert_eq!(
        kinds,
        ["Pushed", "Started", "Progress", "Progress", "Completed"]
    );
}

#[tokio::test]
async fn cancelling_removes_a_waiting_job_and_stops_a_running_one() {
    let (_server, client) = setup().await;
    let queue = client.queue("cancel");
    let waiting = queue
        .push_with("later", &PushOptions::new().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(queue.cancel(&waiting).await.unwrap(), Cancel::Removed);
    assert_eq!(queue.cancel(&waiting).await.unwrap(), Cancel::NotFound);

    let running_id = queue
        .push_with("long", &PushOptions::new().track())
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("cancel")
            .handler(|job: Job| async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
                    _ = job.cancelled() => Err::<(), BoxError>("stopped on request".into()),
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.active == 1).await;
    let asked = Instant::now();
    assert_eq!(queue.cancel(&running_id).await.unwrap(), Cancel::Signalled);
    let counts = wait_counts(&queue, WAIT, |c| c.dead == 1).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "took {:?}",
        asked.elapsed()
    );
    running.shutdown().await;
    assert_eq!(
        (counts.retry, counts.failed_total),
        (0, 1),
        "a cancelled job is not retried"
    );
    let info = queue.job(&running_id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Dead);
    assert_eq!(
        info.last_error.as_deref(),
        Some("cancelled: stopped on request")
    );
}
