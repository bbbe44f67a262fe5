//! Prefetch (docs/design.md §7.1): a worker leases jobs ahead of its free slots, and gives the
//! parked ones back at shutdown without counting an attempt; nothing runs twice, nothing is lost.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, spawn, wait_counts};
use ostq::{BoxError, Job, Worker};

const WAIT: Duration = Duration::from_secs(30);
const JOBS: usize = 20_000;

/// Script calls so far (EVALSHA and EVAL), from `INFO commandstats`.
async fn script_calls(client: &ostq::Client) -> u64 {
    let info = client.server_stats().await.unwrap();
    ["evalsha", "eval"]
        .iter()
        .filter_map(|c| info.commands.get(*c))
        .map(|c| c.calls)
        .sum()
}

#[tokio::test]
async fn a_worker_leases_ahead_of_its_slots_and_gives_parked_jobs_back_at_shutdown() {
    let (_server, client) = setup().await;
    let queue = client.queue("thumbs");
    queue
        .push_bulk((0..JOBS).map(|i| i.to_string()))
        .await
        .unwrap();
    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = ran.clone();
    let calls_before = script_calls(&client).await;
    let running = spawn(
        Worker::builder(client.clone())
            .queue("thumbs")
            .concurrency(2)
            .prefetch(256)
            .handler(move |job: Job| {
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&job.payload).into_owned());
                async { Ok::<_, BoxError>(()) }
            })
            .build()
            .unwrap(),
    );
    assert!(
        common::wait_until(WAIT, || async { ran.lock().unwrap().len() >= 3000 }).await,
        "the worker did not get going"
    );
    running.shutdown().await;
    let calls = script_calls(&client).await - calls_before;

    let ran = ran.lock().unwrap().clone();
    let distinct: HashSet<&String> = ran.iter().collect();
    assert_eq!(distinct.len(), ran.len(), "a job ran twice");
    // Everything leased and not run (parked, or fetched during shutdown) is back, attempt not
    // counted; nothing is left active.
    let counts = wait_counts(&queue, WAIT, |c| c.active == 0).await;
    assert_eq!(counts.processed_total, ran.len() as u64);
    assert_eq!(counts.failed_total, 0);
    assert_eq!(counts.pending + ran.len() as u64, JOBS as u64);
    assert_eq!(counts.recovered_total, 0);
    // At concurrency 2 without prefetch a fetch leased at most 2 jobs: ≥ 1 script call per 2
    // jobs. Leasing ahead batches far more (fetches plus outcome rounds, both counted here).
    assert!(
        calls * 10 < ran.len() as u64,
        "{calls} script calls for {} jobs",
        ran.len()
    );
    // The jobs given back are at the head of the queue: a new worker runs them first, and none
    // of them has an attempt counted.
    let next = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let record = next.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("thumbs")
            .concurrency(1)
            .prefetch(0)
            .handler(move |job: Job| {
                record.lock().unwrap().push((
                    String::from_utf8_lossy(&job.payload).into_owned(),
                    job.attempt,
                ));
                async { Ok::<_, BoxError>(()) }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.pending == 0 && c.active == 0).await;
    running.shutdown().await;
    let next = next.lock().unwrap();
    assert_eq!(next.len() + ran.len(), JOBS);
    assert!(
        next.iter().all(|(_, attempt)| *attempt == 1),
        "an attempt was counted"
    );
    let all: HashSet<&String> = next.iter().map(|(id, _)| id).chain(distinct).collect();
    assert_eq!(all.len(), JOBS, "a job was lost or ran twice");
}
