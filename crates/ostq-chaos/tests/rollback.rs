//! A regression test for a bug the chaos suite found: lease group ids used to come from the
//! queue's `seq` counter. When Redis loses its last writes (a Sentinel failover to a replica that
//! had not received them yet, or a power loss with `appendfsync everysec`), a counter goes back and
//! the next fetches hand out ids a running worker still holds; that worker's ack for its old group
//! then deleted another worker's new group, and if the new owner died its jobs were gone for good.
//! Workers now draw group ids at random, so a forgotten fetch cannot make two groups share one.
//!
//! The test plays the rollback by hand, as a replica that missed one `fetch.lua` call would look
//! after a failover: the lease group is gone and the job is back at the head of `pending`.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ostq::{BoxError, PushOptions, Worker};
use ostq_testkit::RedisServer;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Serialize, Deserialize)]
struct Chaos {
    n: u64,
}

impl ostq::Task for Chaos {
    const NAME: &'static str = "chaos";
}

const Q: &str = "rollback";

fn chaos_worker(url: &str, log: &std::path::Path, sleep_ms: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ostq-chaos"))
        .args(["worker", "--url", url, "--queue", Q, "--concurrency", "2"])
        .arg("--log")
        .arg(log)
        .args(["--min-sleep-ms", &sleep_ms.to_string()])
        .args(["--max-sleep-ms", &sleep_ms.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// How many times job `n` completed, according to the chaos workers' execution logs.
fn executions(log: &std::path::Path, n: u64) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(log).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        count += text
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(&n.to_string()))
            .count();
    }
    count
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_stale_ack_after_a_rollback_leaves_another_workers_jobs_alone() {
    let (j2_runs, counts) = scenario(true).await;
    assert_eq!(
        j2_runs, 1,
        "J2 never ran after B died: it is nowhere in Redis ({counts:?})"
    );
}

/// The same sequence without the rollback: B's jobs are recovered after its lease expires.
#[tokio::test]
async fn without_a_rollback_the_killed_workers_job_is_recovered() {
    let (j2_runs, counts) = scenario(false).await;
    assert_eq!(j2_runs, 1, "{counts:?}");
}

/// A leases J1; optionally Redis "forgets" that fetch; B leases what is left; A acks; B is
/// SIGKILLed; C runs for a while. Returns how many times J2 completed, and the final counts.
async fn scenario(rollback: bool) -> (usize, ostq::QueueCounts) {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let log = tempfile::tempdir().unwrap();
    let client = ostq::Client::connect(&url).await.unwrap();
    let queue = client.queue(Q);
    let jobs: Vec<Vec<u8>> = [1u64, 2]
        .iter()
        .map(|&n| serde_json::to_vec(&Chaos { n }).unwrap())
        .collect();
    queue
        .push_bulk_with(jobs.iter(), &PushOptions::new().name("chaos"))
        .await
        .unwrap();

    // Worker A (in process, one slot) leases J1 as group 1 and holds it until released.
    let release = Arc::new(Notify::new());
    let stop = Arc::new(Notify::new());
    let a = {
        let release = release.clone();
        Worker::builder(client.clone())
            .queue(Q)
            .concurrency(1)
            .lease(Duration::from_secs(30))
            .task(move |task: Chaos| {
                let release = release.clone();
                async move {
                    assert_eq!(task.n, 1);
                    release.notified().await;
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap()
    };
    let stop_a = stop.clone();
    let running_a = tokio::spawn(async move { a.run_until(stop_a.notified()).await });
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let lease = |g: &str| format!("ostq:{{{Q}}}:lease:{g}");
    let active = format!("ostq:{{{Q}}}:active");
    let mut a_group = String::new();
    wait_for("worker A to lease J1", async || {
        let groups: Vec<String> = redis::cmd("ZRANGE")
            .arg(&active)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        match groups.first() {
            Some(g) if llen(&mut conn, &lease(g)).await == 1 => {
                a_group = g.clone();
                true
            }
            _ => false,
        }
    })
    .await;

    let b_jobs = if rollback {
        // Redis forgets A's fetch.lua: A's group gone, seq back by one, J1 back at the head.
        let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(lease(&a_group))
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::pipe()
            .atomic()
            .del(lease(&a_group))
            .zrem(&active, &a_group)
            // What a lost INCR looks like: with ids drawn from this counter, B got A's id again.
            .decr(format!("ostq:{{{Q}}}:seq"), 1)
            .rpush(format!("ostq:{{{Q}}}:pending"), entries)
            .hincr(format!("ostq:{{{Q}}}:stats"), "active", -1)
            .query_async(&mut conn)
            .await
            .unwrap();
        2 // B will lease J1 and J2
    } else {
        1 // B will lease J2
    };

    // Worker B (a process, two slots, 10 s jobs).
    let mut b = chaos_worker(&url, log.path(), 10_000);
    wait_for("worker B to lease its jobs", async || {
        let groups: Vec<String> = redis::cmd("ZRANGE")
            .arg(&active)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        for g in groups.iter().filter(|g| **g != a_group) {
            if llen(&mut conn, &lease(g)).await == b_jobs {
                return true;
            }
        }
        false
    })
    .await;

    // A finishes J1 and acks its group (after the rollback, Redis no longer knows it).
    release.notify_one();
    wait_for("A's ack to land", async || {
        llen(&mut conn, &lease(&a_group)).await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.notify_one();
    running_a.await.unwrap().unwrap();

    // B dies before finishing. A healthy worker C takes over: J2 should run within a lease.
    b.kill().unwrap();
    b.wait().unwrap();
    let mut c = chaos_worker(&url, log.path(), 0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let counts = queue.counts().await.unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    (executions(log.path(), 2), counts)
}

async fn llen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("LLEN").arg(key).query_async(conn).await.unwrap()
}
