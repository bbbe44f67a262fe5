//! Redis dropping connections and restarting mid-run: the worker keeps going and no job is lost.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{spawn, wait_counts, RedisServer};
use ostq::{BoxError, Job, Worker};

#[tokio::test]
async fn connection_kills_and_a_restart_lose_nothing() {
    let mut server =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    let queue = client.queue("sturdy");
    let ids: HashSet<String> = queue
        .push_bulk((0..600).map(|i| i.to_string()))
        .await
        .unwrap()
        .into_iter()
        .collect();
    let ran = Arc::new(Mutex::new(HashSet::new()));
    let ran2 = ran.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("sturdy")
            .concurrency(10)
            .lease(Duration::from_secs(2))
            .handler(move |job: Job| {
                let ran = ran2.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    ran.lock().unwrap().insert(job.id.clone());
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total >= 50).await;
    server.cli(&["CLIENT", "KILL", "TYPE", "normal"]).unwrap();
    wait_counts(&queue, Duration::from_secs(10), |c| {
        c.processed_total >= 120
    })
    .await;
    server.restart().unwrap();
    let after_restart = wait_counts(&queue, Duration::from_secs(10), |_| true).await;
    assert!(
        after_restart.processed_total < 600,
        "the restart came mid-run: {after_restart:?}"
    );
    let counts = wait_counts(&queue, Duration::from_secs(20), |c| {
        c.pending == 0 && c.active == 0 && c.processed_total >= 600
    })
    .await;
    running.shutdown().await;
    let ran = ran.lock().unwrap();
    let lost: Vec<&String> = ids.difference(&ran).collect();
    assert!(
        lost.is_empty(),
        "lost {} jobs: {lost:?}; {counts:?}",
        lost.len()
    );
    assert_eq!((counts.dead, counts.retry), (0, 0));
}
