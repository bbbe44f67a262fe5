//! The admin API against a real Redis: listings with cursors that neither skip nor repeat jobs
//! while workers and producers change the queue, queue stats, Redis's own figures, a queue's
//! memory, and removing a queue.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{setup, spawn, wait_counts, wait_until};
use ostq::admin::{Measure, Removal, StatsSampler};
use ostq::{BoxError, Client, Job, JobState, PushOptions, Queue, RetryPolicy, Worker};
use rand::Rng;

const WAIT: Duration = Duration::from_secs(15);

/// Every page of `state`, `limit` at a time, with a pause between pages; the ids in order.
async fn page_all(queue: &Queue, state: JobState, limit: usize, pause: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..100_000 {
        let page = queue.page(state, cursor.as_ref(), limit).await.unwrap();
        assert!(page.jobs.len() <= limit);
        seen.extend(page.jobs.into_iter().map(|job| job.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return seen,
        }
        tokio::time::sleep(pause).await;
    }
    panic!("{state} never ended");
}

/// The ids in `state` now, read in one go (the offset listing).
async fn ids_in(queue: &Queue, state: JobState) -> HashSet<String> {
    let jobs = queue.jobs(state, 0, 1_000_000).await.unwrap();
    jobs.into_iter().map(|job| job.id).collect()
}

/// No id twice, and every id there before and after the listing (so there the whole time: no
/// job comes back to a state it left in these tests) was listed.
fn assert_exactly_once(seen: &[String], before: &HashSet<String>, after: &HashSet<String>) {
    let mut once = HashSet::new();
    for id in seen {
        assert!(once.insert(id), "{id} listed twice");
    }
    let stayed: Vec<&String> = before.intersection(after).collect();
    let missed: Vec<&&String> = stayed.iter().filter(|id| !once.contains(**id)).collect();
    assert!(
        missed.is_empty(),
        "{} of {} missed: {missed:?}",
        missed.len(),
        stayed.len()
    );
}

/// Sleeps a millisecond, then fails jobs whose payload starts with "fail".
fn model_worker(client: &Client, queue: &str) -> Worker {
    Worker::builder(client.clone())
        .queue(queue)
        .concurrency(4)
        .retry(RetryPolicy::fixed(Duration::from_secs(3600)))
        .handler(|job: Job| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if job.payload.starts_with(b"fail") {
                Err::<(), BoxError>("no".into())
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap()
}

/// Ten run-at times far ahead, so scheduled jobs tie on them.
fn run_ats() -> Vec<SystemTime> {
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000_000_000);
    (0..10).map(|i| base + Duration::from_secs(i)).collect()
}

fn scheduled_opts(rng: &mut impl Rng, tag: &str, i: usize) -> PushOptions {
    let at = run_ats()[rng.random_range(0..10)];
    let id = format!("s-{:06}-{tag}{i}", rng.random_range(0..1_000_000));
    PushOptions::new().run_at(at).id(id)
}

/// Dead, retry and completed jobs, then pending (list, high and low priority) and scheduled ones.
async fn seed(client: &Client, queue: &Queue) -> Vec<String> {
    let dead = PushOptions::new().max_attempts(1);
    let retry = PushOptions::new().max_attempts(5);
    let tracked = PushOptions::new().track();
    let n = 300;
    queue
        .push_bulk_with((0..n).map(|i| format!("fail-d{i}")), &dead)
        .await
        .unwrap();
    queue
        .push_bulk_with((0..n).map(|i| format!("fail-r{i}")), &retry)
        .await
        .unwrap();
    queue
        .push_bulk_with((0..n).map(|i| format!("ok{i}")), &tracked)
        .await
        .unwrap();
    let running = spawn(model_worker(client, "model"));
    wait_counts(queue, WAIT, |c| {
        c.dead == 300 && c.retry == 300 && c.completed == 300
    })
    .await;
    running.shutdown().await;

    queue
        .push_bulk((0..2000).map(|i| format!("p{i}")))
        .await
        .unwrap();
    let high = PushOptions::new().priority(5);
    queue
        .push_bulk_with((0..200).map(|i| format!("h{i}")), &high)
        .await
        .unwrap();
    let low = PushOptions::new().priority(-3);
    queue
        .push_bulk_with((0..50).map(|i| format!("l{i}")), &low)
        .await
        .unwrap();
    let mut rng = rand::rng();
    let mut scheduled = Vec::new();
    for i in 0..500 {
        let opts = scheduled_opts(&mut rng, "", i);
        scheduled.push(queue.push_with("later", &opts).await.unwrap());
    }
    scheduled
}

/// A producer that keeps every state moving: pushes (list, priorities, ties in the scheduled
/// set, jobs bound for dead, retry and completed), deletes jobs (`victims`: scheduled, retry,
/// dead, completed) and runs scheduled jobs now.
async fn churn(queue: Queue, scheduled: Vec<String>, victims: Vec<String>, stop: Arc<AtomicBool>) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (payload, opts) = {
            let mut rng = rand::rng();
            match i % 10 {
                0..=4 => (format!("c{i}"), PushOptions::new()),
                5 => (format!("ch{i}"), PushOptions::new().priority(5)),
                6 => (format!("cl{i}"), PushOptions::new().priority(-3)),
                7 => ("later".into(), scheduled_opts(&mut rng, "c", i)),
                8 => (format!("fail-cd{i}"), PushOptions::new().max_attempts(1)),
                _ => (format!("fail-cr{i}"), PushOptions::new().max_attempts(5)),
            }
        };
        queue.push_with(payload, &opts).await.unwrap();
        if i % 25 == 0 {
            queue
                .push_with("ok", &PushOptions::new().track())
                .await
                .unwrap();
        }
        if i % 3 == 0 {
            let pick = rand::rng().random_range(0..victims.len());
            queue.delete(&[victims[pick].as_str()]).await.unwrap();
        } else if i % 11 == 0 {
            let pick = rand::rng().random_range(0..scheduled.len());
            queue.retry_now(&[scheduled[pick].as_str()]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The model: page through every state but active (tested on its own below) while a producer
/// and a worker change all of them, and check each listing against before-and-after reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_neither_skips_nor_repeats_while_workers_change_the_queue() {
    let (_server, client) = setup().await;
    let queue = client.queue("model");
    let scheduled = seed(&client, &queue).await;
    let mut victims = scheduled.clone();
    for state in [JobState::Retry, JobState::Dead, JobState::Completed] {
        victims.extend(ids_in(&queue, state).await);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn(churn(queue.clone(), scheduled, victims, stop.clone()));
    let running = spawn(model_worker(&client, "model"));
    let states = [
        (JobState::Pending, 13, 2),
        (JobState::Scheduled, 7, 5),
        (JobState::Dead, 7, 5),
        (JobState::Retry, 7, 5),
        (JobState::Completed, 5, 5),
    ];
    for (state, limit, pause_ms) in states {
        let before = ids_in(&queue, state).await;
        let pause = Duration::from_millis(pause_ms);
        let seen = page_all(&queue, state, limit, pause).await;
        let after = ids_in(&queue, state).await;
        assert_exactly_once(&seen, &before, &after);
        assert!(seen.len() > 100, "{state}: only {} listed", seen.len());
        let changed = before.symmetric_difference(&after).count();
        eprintln!(
            "{state}: {} listed, {changed} came or went meanwhile",
            seen.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    running.shutdown().await;
}

/// Entries of equal score are paged by member, around deletions and insertions on both sides of
/// the cursor (including the cursor's own entry), ascending and descending.
#[tokio::test]
async fn ties_in_sorted_sets_are_paged_exactly() {
    let (server, client) = setup().await;
    let queue = client.queue("ties");
    let at = run_ats()[0];
    let push = |id: String| {
        let queue = queue.clone();
        async move {
            let opts = PushOptions::new().run_at(at).id(id);
            queue.push_with("x", &opts).await.unwrap();
        }
    };
    for i in 0..40 {
        push(format!("m-{i:02}")).await;
    }
    let page = |cursor: Option<ostq::Cursor>| {
        let queue = queue.clone();
        async move {
            queue
                .page(JobState::Scheduled, cursor.as_ref(), 5)
                .await
                .unwrap()
        }
    };
    let ids = |page: &ostq::Page| page.jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
    let p1 = page(None).await;
    assert_eq!(ids(&p1), ["m-00", "m-01", "m-02", "m-03", "m-04"]);
    // The cursor's own entry and an unseen one go; one comes before the cursor, one after.
    queue.delete(&["m-04", "m-07"]).await.unwrap();
    push("m-02x".into()).await;
    push("m-05x".into()).await;
    let p2 = page(p1.next).await;
    assert_eq!(ids(&p2), ["m-05", "m-05x", "m-06", "m-08", "m-09"]);
    // Ranks shift back (entries before the cursor go) and forward (thirty come before it).
    queue
        .delete(&["m-00", "m-01", "m-02", "m-03"])
        .await
        .unwrap();
    let p3 = page(p2.next).await;
    assert_eq!(ids(&p3), ["m-10", "m-11", "m-12", "m-13", "m-14"]);
    for i in 0..30 {
        push(format!("l-{i:02}")).await;
    }
    let early = PushOptions::new()
        .run_at(at - Duration::from_millis(1))
        .id("z-early");
    queue.push_with("x", &early).await.unwrap();
    let late = PushOptions::new()
        .run_at(at + Duration::from_millis(1))
        .id("a-late");
    queue.push_with("x", &late).await.unwrap();
    let mut rest = Vec::new();
    let mut cursor = p3.next;
    while let Some(next) = cursor {
        let p = page(Some(next)).await;
        rest.extend(ids(&p));
        cursor = p.next;
    }
    let want: Vec<String> = (15..40)
        .map(|i| format!("m-{i:02}"))
        .chain(["a-late".to_string()])
        .collect();
    assert_eq!(rest, want);

    // Descending (dead, newest first), all at one death time.
    let dead = client.queue("deadties");
    dead.push_bulk_with(
        (0..20).map(|i| format!("fail-{i}")),
        &PushOptions::new().max_attempts(1),
    )
    .await
    .unwrap();
    let running = spawn(model_worker(&client, "deadties"));
    wait_counts(&dead, WAIT, |c| c.dead == 20).await;
    running.shutdown().await;
    let mut all: Vec<String> = ids_in(&dead, JobState::Dead).await.into_iter().collect();
    let mut zadd = vec![
        "ZADD".to_string(),
        "ostq:{deadties}:dead".into(),
        "XX".into(),
    ];
    for id in &all {
        zadd.extend(["1000".to_string(), id.clone()]);
    }
    let args: Vec<&str> = zadd.iter().map(String::as_str).collect();
    server.cli(&args).unwrap();
    all.sort();
    all.reverse(); // equal scores: descending by member
    let first = dead.page(JobState::Dead, None, 6).await.unwrap();
    assert_eq!(ids(&first), all[..6]);
    dead.delete(&[all[5].as_str(), all[2].as_str(), all[9].as_str()])
        .await
        .unwrap();
    let second = dead
        .page(JobState::Dead, first.next.as_ref(), 6)
        .await
        .unwrap();
    let want: Vec<&String> = all[6..13].iter().filter(|id| **id != all[9]).collect();
    assert_eq!(ids(&second).iter().collect::<Vec<_>>(), want);
}

/// The pending list cursor follows its entry as the right end is consumed, starts over at the
/// right end when its entry was consumed, scans in bounded steps, and tells bare entries apart.
#[tokio::test]
async fn the_pending_list_cursor_follows_its_entry() {
    let (server, client) = setup().await;
    let queue = client.queue("list");
    let key = "ostq:{list}:pending";
    queue
        .push_bulk((0..100).map(|i| format!("p{i}")))
        .await
        .unwrap();
    let payloads = |page: &ostq::Page| {
        page.jobs
            .iter()
            .map(|j| String::from_utf8(j.payload.clone().unwrap()).unwrap())
            .collect::<Vec<_>>()
    };
    let range = |a: usize, b: usize| (a..b).map(|i| format!("p{i}")).collect::<Vec<_>>();
    let next = |cursor: &Option<ostq::Cursor>, limit| {
        let queue = queue.clone();
        let cursor = cursor.clone();
        async move {
            queue
                .page(JobState::Pending, cursor.as_ref(), limit)
                .await
                .unwrap()
        }
    };
    let p = next(&None, 10).await;
    assert_eq!(payloads(&p), range(0, 10));
    server.cli(&["RPOP", key, "5"]).unwrap(); // seen ones consumed: the entry moved right
    let p = next(&p.next, 10).await;
    assert_eq!(payloads(&p), range(10, 20));
    server.cli(&["RPOP", key, "25"]).unwrap(); // the cursor's entry consumed, and 10 unseen
    queue.push_bulk(["n0", "n1"]).await.unwrap(); // the left end: no effect here
    let p = next(&p.next, 10).await;
    assert_eq!(payloads(&p), range(30, 40));

    // Moved right far beyond the first window: found by scanning chunks.
    let big = client.queue("biglist");
    let bkey = "ostq:{biglist}:pending";
    big.push_bulk((0..3000).map(|i| format!("p{i}")))
        .await
        .unwrap();
    let p = big.page(JobState::Pending, None, 1000).await.unwrap();
    server.cli(&["RPOP", bkey, "600"]).unwrap();
    let p = big
        .page(JobState::Pending, p.next.as_ref(), 1000)
        .await
        .unwrap();
    assert_eq!(payloads(&p), range(1000, 2000));
    // Moved further than one call scans: empty pages that go on scanning, then the right page.
    big.push_bulk((3000..25000).map(|i| format!("p{i}")))
        .await
        .unwrap();
    let p = big
        .page(JobState::Pending, p.next.as_ref(), 10_000)
        .await
        .unwrap();
    assert_eq!(payloads(&p).first().map(String::as_str), Some("p2000"));
    server.cli(&["RPOP", bkey, "11000"]).unwrap(); // the cursor (p11999) is now 399 from the end
    let mut cursor = p.next;
    let mut empty = 0;
    let found = loop {
        let p = big
            .page(JobState::Pending, cursor.as_ref(), 10)
            .await
            .unwrap();
        if !p.jobs.is_empty() {
            break payloads(&p);
        }
        empty += 1;
        cursor = p.next;
    };
    assert_eq!(found, range(12000, 12010));
    assert!(empty >= 1, "the scan is bounded per call");

    // Bare entries (a plain LPUSH from another language), twins included.
    let raw = "ostq:{raw}:pending";
    server.cli(&["LPUSH", raw, "a", "b", "a", "c"]).unwrap();
    let raw_queue = client.queue("raw");
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = raw_queue
            .page(JobState::Pending, cursor.as_ref(), 1)
            .await
            .unwrap();
        seen.extend(payloads(&p));
        match p.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "a", "c"]);
}

/// Active jobs are paged by lease, while some of them finish.
#[tokio::test]
async fn active_jobs_are_paged_while_some_finish() {
    let (_server, client) = setup().await;
    let queue = client.queue("busy");
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("busy")
            .concurrency(10)
            .handler(move |_job: Job| {
                let held = held.clone();
                async move {
                    held.acquire().await.unwrap().forget();
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    for i in 0..10 {
        queue.push(format!("j{i}")).await.unwrap();
    }
    wait_counts(&queue, WAIT, |c| c.active == 10).await;
    let before = ids_in(&queue, JobState::Active).await;
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = queue
            .page(JobState::Active, cursor.as_ref(), 3)
            .await
            .unwrap();
        assert!(p.jobs.iter().all(|j| j.due_at_ms.is_some()));
        seen.extend(p.jobs.into_iter().map(|j| j.id));
        gate.add_permits(1); // one job finishes between pages
        match p.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let after = ids_in(&queue, JobState::Active).await;
    assert_exactly_once(&seen, &before, &after);
    gate.add_permits(100);
    running.shutdown().await;
}

/// A cursor belongs to its state; junk is a clear error; JSON forms are stable.
#[tokio::test]
async fn cursors_are_checked_and_pages_serialize() {
    let (_server, client) = setup().await;
    let queue = client.queue("json");
    queue.push_bulk(["a", "b", "c"]).await.unwrap();
    queue
        .push_with(b"\xff\xfe".to_vec(), &PushOptions::new().priority(1))
        .await
        .unwrap();
    let page = queue.page(JobState::Pending, None, 2).await.unwrap();
    let cursor = page.next.clone().unwrap();
    let err = queue
        .page(JobState::Dead, Some(&cursor), 2)
        .await
        .unwrap_err();
    assert!(matches!(err, ostq::Error::Config(_)), "{err}");
    assert!("junk".parse::<ostq::Cursor>().is_err());

    let json = serde_json::to_value(&page).unwrap();
    assert_eq!(json["next"], cursor.as_str());
    assert_eq!(json["jobs"][0]["payload"], serde_json::Value::Null);
    assert_eq!(json["jobs"][0]["payload_base64"], "//4=");
    assert_eq!(json["jobs"][1]["payload"], "a");
    assert_eq!(json["jobs"][1]["state"], "pending");
    let back: ostq::Page = serde_json::from_value(json).unwrap();
    assert_eq!(back, page);
    // The offset listing still works beside it.
    assert_eq!(queue.jobs(JobState::Pending, 1, 10).await.unwrap().len(), 3);
}

/// Stats with a rate, Redis's figures, ping, the list probe, totals and memory per queue.
#[tokio::test]
async fn stats_server_figures_and_memory() {
    let (server_process, client) = setup().await;
    let queue = client.queue("figures");
    queue
        .push_bulk((0..50).map(|i| i.to_string()))
        .await
        .unwrap();
    queue
        .push_with("x", &PushOptions::new().max_attempts(1))
        .await
        .unwrap();
    let mut sampler = StatsSampler::new(&client).queues(["figures"]);
    let first = sampler.snapshot().await.unwrap();
    assert_eq!(first.queues[0].jobs_per_sec, None);
    assert!(first.queues[0].oldest_pending_age_ms.is_some());
    let running = spawn(
        Worker::builder(client.clone())
            .queue("figures")
            .handler(|job: Job| async move {
                match job.payload_str()? {
                    "x" => Err::<(), BoxError>("no".into()),
                    _ => Ok(()),
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.processed_total == 51).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let snap = sampler.snapshot().await.unwrap();
    let stats = &snap.queues[0];
    assert!(stats.jobs_per_sec.unwrap() > 0.0, "{stats:?}");
    assert_eq!(stats.failure_rate, Some(1.0 / 51.0));
    assert_eq!(stats.oldest_pending_age_ms, None);
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["queues"]["figures"]["dead"], 1);
    assert!(json["redis"]["used_memory"].as_u64().unwrap() > 0);
    let totals = queue.totals().await.unwrap();
    assert_eq!((totals.processed, totals.failed, totals.active), (51, 1, 0));
    running.shutdown().await;

    let server = client.server_stats().await.unwrap();
    assert_eq!(server.nodes, 1);
    assert!(server.used_cpu_secs() > 0.0);
    assert!(
        server.commands.get("evalsha").is_some_and(|c| c.calls > 0),
        "{server:?}"
    );
    assert!(server
        .info
        .version
        .starts_with(|c: char| c.is_ascii_digit()));
    assert!(client.ping().await.unwrap() > Duration::ZERO);
    let probe = queue.probe_throughput(2_500, b"42").await.unwrap();
    assert_eq!(probe.popped, 2_500);
    assert!(probe.ops_per_sec() > 0.0);

    queue.push_bulk(["a", "bb"]).await.unwrap();
    let memory = queue.memory_usage(Measure::Exact).await.unwrap();
    assert!(memory.keys["pending"] > 0, "{memory:?}");
    assert!(memory.keys.contains_key("stats"));
    let probe_key = server_process
        .cli(&["EXISTS", "ostq:{figures}:probe"])
        .unwrap();
    assert_eq!(probe_key, "0", "the probe list is gone");
    assert_eq!(memory.total_bytes, memory.keys.values().sum::<u64>());
    assert!(memory.newest_pending_entry_bytes.unwrap() > 2);
}

/// Removing a queue drops every key of it and its name, refuses while workers hold its jobs
/// (unless forced), and leaves other queues alone.
#[tokio::test]
async fn a_queue_is_removed_entirely() {
    let (server, client) = setup().await;
    let queue = client.queue("doomed");
    let other = client.queue("kept");
    other.push("stay").await.unwrap();
    queue.push_bulk(["a", "b"]).await.unwrap();
    queue
        .push_with("t", &PushOptions::new().track().unique("u1"))
        .await
        .unwrap();
    queue
        .push_with("s", &PushOptions::new().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    server
        .cli(&["HSET", "ostq:{doomed}:cron:nightly", "fired", "1"])
        .unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("doomed")
            .concurrency(1)
            .handler(move |_job: Job| {
                let held = held.clone();
                async move {
                    held.acquire().await.unwrap().forget();
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.active == 1).await;
    assert_eq!(
        queue.remove(false).await.unwrap(),
        Removal::Busy { active: 1 }
    );
    assert_eq!(queue.counts().await.unwrap().pending, 2, "nothing deleted");
    gate.add_permits(100);
    assert!(
        wait_until(WAIT, || async {
            queue.counts().await.unwrap().pending == 0
        })
        .await
    );
    running.shutdown().await;

    let removal = queue.remove(false).await.unwrap();
    assert!(
        matches!(removal, Removal::Removed { keys, active: 0 } if keys >= 5),
        "{removal:?}"
    );
    let left = server.cli(&["KEYS", "ostq:{doomed}:*"]).unwrap();
    assert!(left.trim().is_empty(), "left behind: {left}");
    assert_eq!(client.queues().await.unwrap(), ["kept"]);
    assert_eq!(other.counts().await.unwrap().pending, 1);
    let json = serde_json::to_value(removal).unwrap();
    assert_eq!(json["outcome"], "removed");
}

/// On a Cluster: paging, memory, and removal reach the node that holds the queue.
#[tokio::test]
async fn paging_and_removal_work_on_a_cluster() {
    let cluster = common::RedisCluster::start(3).unwrap();
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    for name in ["videos", "thumbs", "billing"] {
        let queue = client.queue(name);
        queue
            .push_bulk((0..30).map(|i| format!("{name}{i}")))
            .await
            .unwrap();
        queue
            .push_with("t", &PushOptions::new().track())
            .await
            .unwrap();
        let seen = page_all(&queue, JobState::Pending, 7, Duration::ZERO).await;
        assert_eq!(seen.len(), 31);
        let memory = queue.memory_usage(Measure::Estimate).await.unwrap();
        assert!(memory.keys["pending"] > 0);
        let removal = queue.remove(false).await.unwrap();
        assert!(
            matches!(removal, Removal::Removed { keys, .. } if keys >= 2),
            "{removal:?}"
        );
        for node in cluster.nodes() {
            let left = node.cli(&["KEYS", &format!("ostq:{{{name}}}:*")]).unwrap();
            assert!(left.trim().is_empty(), "{name}: {left}");
        }
    }
    assert!(client.queues().await.unwrap().is_empty());
    assert_eq!(client.server_stats().await.unwrap().nodes, 3);
}
