//! Sharded queues on one Redis server (design §19): every shard lives on the one server, which
//! is still correct. Routing, the admin API over the shards, the rate limit's split, and
//! resharding 1 → 3 → 2 with every job done exactly once. The cluster placement is tested in
//! tests/cluster.rs.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, spawn, wait_counts, wait_until};
use ostq::{BoxError, Job, JobState, PushOptions, Worker};

#[tokio::test]
async fn shard_names_are_reserved_and_counts_are_checked() {
    let (_server, client) = setup().await;
    assert!(matches!(
        client.queue("a#1.2").push("x").await,
        Err(ostq::Error::Config(_))
    ));
    let queue = client.queue("q");
    for bad in [0, 65] {
        assert!(matches!(
            queue.set_shards(bad).await,
            Err(ostq::Error::Config(_))
        ));
    }
    // A rate limit below the shard count cannot be split: refused before anything is written.
    queue
        .set_rate_limit(2, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(
        queue.set_shards(3).await,
        Err(ostq::Error::Config(_))
    ));
    assert_eq!(queue.shards().await.unwrap().count(), 1);
}

#[tokio::test]
async fn the_admin_api_sees_one_queue() {
    let (server, client) = setup().await;
    let queue = client.queue("q");
    let layout = queue.set_shards(3).await.unwrap();
    assert_eq!(layout.count(), 3);
    // Kept names: setting the same count again changes nothing.
    assert_eq!(queue.set_shards(3).await.unwrap(), layout);
    let ids = queue
        .push_bulk((0..30).map(|i| format!("{i}")))
        .await
        .unwrap();
    let later = queue
        .push_with("later", &PushOptions::new().delay(Duration::from_secs(600)))
        .await
        .unwrap();
    let counts = queue.counts().await.unwrap();
    assert_eq!((counts.pending, counts.scheduled), (30, 1));
    let listed = queue.jobs(JobState::Pending, 0, 100).await.unwrap();
    assert_eq!(listed.len(), 30);
    assert!(listed.iter().all(|j| j.queue == "q"));
    assert_eq!(
        queue.jobs(JobState::Pending, 25, 100).await.unwrap().len(),
        5
    );
    assert_eq!(queue.job(&ids[7]).await.unwrap().unwrap().queue, "q");
    assert_eq!(queue.delete(&[&ids[7], &ids[8]]).await.unwrap(), 2);
    assert!(queue.job(&ids[7]).await.unwrap().is_none());
    assert_eq!(queue.retry_now(&[&later]).await.unwrap(), 1);
    assert_eq!(queue.counts().await.unwrap().pending, 29);

    // Rate limit: 10 per second split 4/3/3, summed back.
    queue
        .set_rate_limit(10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        queue.rate_limit().await.unwrap(),
        Some((10, Duration::from_secs(1)))
    );
    assert!(matches!(
        queue.set_rate_limit(2, Duration::from_secs(1)).await,
        Err(ostq::Error::Config(_))
    ));
    // 6 per 10 s is 2 per shard: with the limit on, a worker takes 6 of the 29 (each bucket
    // starts full and refills 0.12 jobs in the 0.6 s), not 2 and not 29.
    queue
        .set_rate_limit(6, Duration::from_secs(10))
        .await
        .unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("q")
            .handler(|_job: Job| async move { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let done = queue.counts().await.unwrap().processed_total;
    assert_eq!(done, 6, "jobs in 0.6 s at 6 per 10 s over 3 shards");
    queue.clear_rate_limit().await.unwrap();
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 29).await;
    running.shutdown().await;
    assert_eq!(queue.purge(None).await.unwrap(), 0);
    // Removing the queue removes every shard's keys, the layout last.
    queue.push_bulk(["x", "y", "z"]).await.unwrap();
    assert!(
        queue
            .memory_usage(ostq::admin::Measure::Exact)
            .await
            .unwrap()
            .keys["pending"]
            > 0
    );
    assert!(matches!(
        queue.remove(false).await.unwrap(),
        ostq::admin::Removal::Removed { .. }
    ));
    let left = server.cli(&["KEYS", "ostq:{q*"]).unwrap();
    assert!(left.trim().is_empty(), "{left}");
}

/// As if the draining shards of `queue` had drained for longer than
/// [`ostq::shards::DRAIN_GRACE_MS`]: the next `set_shards` may forget the empty ones.
async fn past_drain_grace(server: &common::RedisServer, queue: &str) {
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("ostq:{{{queue}}}:config"))
        .arg("shards_draining_since")
        .arg("0 0 0 0 0 0 0 0")
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn resharding_one_three_two_does_every_job_once() {
    let (server, client) = setup().await;
    let queue = client.queue("q");
    queue
        .push_bulk((0..50).map(|i| format!("a{i}")))
        .await
        .unwrap();
    let three = queue.set_shards(3).await.unwrap();
    queue
        .push_bulk((0..60).map(|i| format!("b{i}")))
        .await
        .unwrap();
    let two = queue.set_shards(2).await.unwrap();
    assert_eq!(two.shards, three.shards[..2]);
    assert_eq!(
        two.draining,
        three.shards[2..],
        "shard 2 holds 20 jobs: it drains"
    );
    queue
        .push_bulk((0..40).map(|i| format!("c{i}")))
        .await
        .unwrap();
    assert_eq!(queue.counts().await.unwrap().pending, 150);

    let (worker, seen) = counting_worker(&client, "q");
    let running = spawn(worker);
    wait_counts(&queue, Duration::from_secs(20), |c| {
        c.processed_total == 150 && c.pending == 0 && c.active == 0
    })
    .await;
    running.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 150);
    assert!(seen.values().all(|&n| n == 1), "every job exactly once");
    // The drained shard is kept while producers may still push there, then forgotten by the
    // next change.
    assert_eq!(queue.set_shards(2).await.unwrap().draining, two.draining);
    past_drain_grace(&server, "q").await;
    let before = (
        queue.counts().await.unwrap(),
        queue.history_totals().await.unwrap(),
    );
    let again = queue.set_shards(2).await.unwrap();
    assert!(again.draining.is_empty(), "{again:?}");
    // Its running totals stay the queue's: counters never go back (a Prometheus counter that
    // drops reads as a reset).
    let after = (
        queue.counts().await.unwrap(),
        queue.history_totals().await.unwrap(),
    );
    assert_eq!(after.0.processed_total, 150);
    assert_eq!(
        (after.0.processed_total, after.0.failed_total, &after.1),
        (before.0.processed_total, before.0.failed_total, &before.1)
    );
    // And growing back to 3 reuses no stale name it dropped: a fresh salt search (the same name
    // on one server, where every salt fits).
    assert_eq!(queue.set_shards(3).await.unwrap().count(), 3);
}

/// A producer that read the layout just before a shrink still pushes to a dropped shard for up
/// to a second (its cache). Before the drain grace, a shrink forgot an empty shard at once, so
/// such a push landed where no worker and no count looks: the job was stranded.
#[tokio::test]
async fn a_push_by_a_stale_producer_to_a_dropped_shard_still_runs() {
    let (_server, client) = setup().await;
    let admin = client.queue("shrink");
    let three = admin.set_shards(3).await.unwrap();
    let key_of = |shard: usize| {
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| three.shard_of_key(k) == shard)
            .unwrap()
    };
    // Another handle (another producer) reads the 3-shard layout now and keeps it for a second;
    // its first job goes to shard 0, so shard 2 stays empty.
    let producer = client.queue("shrink");
    producer
        .push_with("warm-up", &PushOptions::new().key(key_of(0)))
        .await
        .unwrap();
    // The shrink makes shard 2 draining (and used to forget it at once, being empty); a second
    // change within the grace keeps it too.
    let one = admin.set_shards(1).await.unwrap();
    let again = admin.set_shards(1).await.unwrap();
    producer
        .push_with("late", &PushOptions::new().key(key_of(2)))
        .await
        .unwrap();
    assert_eq!(
        admin.counts().await.unwrap().pending,
        2,
        "both jobs are counted"
    );
    let (worker, seen) = counting_worker(&client, "shrink");
    let running = spawn(worker);
    let ran = wait_until(Duration::from_secs(5), || async {
        seen.lock().unwrap().contains_key("late")
    })
    .await;
    running.shutdown().await;
    assert!(ran, "the job pushed to the dropped shard never ran");
    assert!(one.draining.contains(&three.shards[2]), "{one:?}");
    assert!(again.draining.contains(&three.shards[2]), "{again:?}");
}

/// Removing a sharded queue moves the layout counter, so running workers re-read the layout and
/// stop waiting on its shards (before, they kept an idle wait on each until restarted).
#[tokio::test]
async fn removing_a_sharded_queue_lets_running_workers_drop_its_shards() {
    let (_server, client) = setup().await;
    let queue = client.queue("gone");
    let three = queue.set_shards(3).await.unwrap();
    let (worker, _) = counting_worker(&client, "gone");
    let running = spawn(worker);
    let mut all = three.shards.clone();
    all.sort();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            served(&client).await == all
        })
        .await,
        "the registry lists {:?}",
        served(&client).await
    );
    let removal = queue.remove(true).await.unwrap();
    assert!(
        matches!(removal, ostq::admin::Removal::Removed { .. }),
        "{removal:?}"
    );
    let dropped = wait_until(Duration::from_secs(6), || async {
        served(&client).await == ["gone"]
    })
    .await;
    let listed = served(&client).await;
    running.shutdown().await;
    assert!(dropped, "the registry lists {listed:?}");
}

/// A worker's monitor hook reports a sharded queue once, with the sum over its shards (it
/// listed the queue and each shard before, counting the shards' jobs twice).
#[tokio::test]
async fn the_monitor_reports_a_sharded_queue_once() {
    let (_server, client) = setup().await;
    let queue = client.queue("mon");
    queue.set_shards(3).await.unwrap();
    queue.pause().await.unwrap();
    queue
        .push_bulk((0..30).map(|i| format!("j{i}")))
        .await
        .unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let log = reports.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("mon")
            .handler(|_job: Job| async { Ok::<_, BoxError>(()) })
            .on_monitor(Duration::from_millis(100), move |report| {
                let queues: Vec<(String, u64)> = report
                    .snapshot
                    .queues
                    .iter()
                    .map(|q| (q.counts.queue.clone(), q.counts.pending))
                    .collect();
                log.lock().unwrap().push(queues);
            })
            .build()
            .unwrap(),
    );
    let got = wait_until(Duration::from_secs(5), || async {
        !reports.lock().unwrap().is_empty()
    })
    .await;
    running.shutdown().await;
    assert!(got, "no report");
    let first = reports.lock().unwrap()[0].clone();
    assert_eq!(first, vec![("mon".to_string(), 30)]);
}

/// A worker that counts each payload it runs, and the tally.
fn counting_worker(
    client: &ostq::Client,
    queue: &str,
) -> (Worker, Arc<Mutex<HashMap<String, u32>>>) {
    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let log = seen.clone();
    let worker = Worker::builder(client.clone())
        .queue(queue)
        .concurrency(4)
        // The registry shows the physical queues served within a heartbeat.
        .heartbeat(Duration::from_millis(200))
        .handler(move |job: Job| {
            let log = log.clone();
            async move {
                *log.lock()
                    .unwrap()
                    .entry(job.payload_str()?.to_string())
                    .or_default() += 1;
                Ok::<_, BoxError>(())
            }
        })
        .build()
        .unwrap();
    (worker, seen)
}

/// The physical queues the (only) running worker lists in the registry, sorted.
async fn served(client: &ostq::Client) -> Vec<String> {
    let workers = client.workers().await.unwrap();
    let mut queues = workers
        .first()
        .map(|w| w.queues.clone())
        .unwrap_or_default();
    queues.sort();
    queues
}

/// Issue 15: one worker, started on an unsharded queue and never restarted, serves the queue while
/// it is resharded 1 → 3 → 2 with pushes in between: it picks up the new shards (within the
/// layout check's 2 s), keeps serving the draining shard (whose delayed jobs come due after the
/// shrink), and drops it once a later `set_shards` forgets it. Every job runs exactly once and
/// none is left in any shard. (Before, a running worker served only the shards it started with:
/// the jobs pushed to shards 1 and 2 were never run.) Growing back to 3 serves the forgotten
/// shard again.
#[tokio::test]
async fn a_running_worker_follows_resharding_without_a_restart() {
    let (server, client) = setup().await;
    let queue = client.queue("live");
    let (worker, seen) = counting_worker(&client, "live");
    let running = spawn(worker);
    queue
        .push_bulk((0..20).map(|i| format!("a{i}")))
        .await
        .unwrap();
    wait_counts(&queue, Duration::from_secs(5), |c| c.processed_total == 20).await;

    // 1 → 3 while the worker is idle (on one queue it waits with its fetch pipelined): this
    // handle routes by the new layout at once, so each shard gets a third.
    let three = queue.set_shards(3).await.unwrap();
    queue
        .push_bulk((0..60).map(|i| format!("b{i}")))
        .await
        .unwrap();
    wait_counts(&queue, Duration::from_secs(6), |c| {
        c.processed_total == 80 && c.pending == 0
    })
    .await;
    let mut all = three.shards.clone();
    all.sort();
    assert!(
        wait_until(Duration::from_secs(2), || async {
            served(&client).await == all
        })
        .await,
        "the registry lists {:?}",
        served(&client).await
    );

    // 3 → 2 with 10 delayed jobs in each shard: shard 2 drains (its jobs come due after the
    // shrink, on a shard producers no longer push to); new pushes go to shards 0 and 1.
    let later = PushOptions::new().delay(Duration::from_secs(1));
    for i in 0..30 {
        queue.push_with(format!("d{i}"), &later).await.unwrap();
    }
    let two = queue.set_shards(2).await.unwrap();
    assert_eq!(
        two.draining,
        three.shards[2..],
        "shard 2 holds delayed jobs"
    );
    queue
        .push_bulk((0..40).map(|i| format!("c{i}")))
        .await
        .unwrap();
    wait_counts(&queue, Duration::from_secs(8), |c| {
        c.processed_total == 150 && c.pending + c.active + c.scheduled + c.retry == 0
    })
    .await;

    // Shard 2 is empty now: once it has drained long enough, the next change forgets it, and
    // the worker stops serving it.
    past_drain_grace(&server, "live").await;
    let again = queue.set_shards(2).await.unwrap();
    assert!(again.draining.is_empty(), "{again:?}");
    let mut kept = two.shards.clone();
    kept.sort();
    assert!(
        wait_until(Duration::from_secs(4), || async {
            served(&client).await == kept
        })
        .await,
        "the registry lists {:?}",
        served(&client).await
    );
    queue
        .push_bulk((0..10).map(|i| format!("e{i}")))
        .await
        .unwrap();
    // (Counted by the handler, which sees each run once.)
    let ran = |n: usize| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move { seen.lock().unwrap().len() == n }
        }
    };
    assert!(wait_until(Duration::from_secs(5), ran(160)).await);

    // 2 → 3 again while the worker waits on two queues: shard 2 comes back under its old name,
    // and the worker serves it again.
    assert_eq!(queue.set_shards(3).await.unwrap(), three);
    queue
        .push_bulk((0..30).map(|i| format!("f{i}")))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), ran(190)).await,
        "{} jobs ran",
        seen.lock().unwrap().len()
    );
    assert!(
        wait_until(Duration::from_secs(2), || async {
            served(&client).await == all
        })
        .await,
        "the registry lists {:?}",
        served(&client).await
    );
    running.shutdown().await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 190);
    assert!(seen.values().all(|&n| n == 1), "every job exactly once");
    // Nothing stranded in any shard, the forgotten one included.
    for name in &three.shards {
        for part in ["pending", "scheduled", "retry", "active"] {
            let key = format!("ostq:{{{name}}}:{part}");
            let kind = server.cli(&["TYPE", &key]).unwrap();
            assert_eq!(kind, "none", "{key} is left");
        }
    }
}

/// Redis is down when a worker of a sharded queue starts: it serves shard 0 (the queue's own
/// name) and, once Redis is back, reads the layout and serves every shard, with no restart.
#[tokio::test]
async fn a_worker_started_while_redis_is_down_picks_up_the_layout_when_it_is_back() {
    let mut server =
        common::RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
            .unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    let queue = client.queue("late");
    queue.set_shards(3).await.unwrap();
    queue
        .push_bulk((0..30).map(|i| format!("{i}")))
        .await
        .unwrap();
    server.kill();
    let lazy = ostq::Client::connect_lazy(&server.url()).await.unwrap();
    let (worker, seen) = counting_worker(&lazy, "late");
    let running = spawn(worker);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().unwrap();
    wait_counts(&queue, Duration::from_secs(10), |c| {
        c.processed_total == 30 && c.pending == 0 && c.active == 0
    })
    .await;
    running.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 30);
    assert!(seen.values().all(|&n| n == 1), "every job exactly once");
}

/// A 3-shard queue with jobs of every state in every shard: `(ids by state, the layout)`. The
/// worker holding the active jobs is returned running (its jobs stay active until `release`).
async fn every_state(
    client: &ostq::Client,
    release: Arc<tokio::sync::Notify>,
) -> (
    HashMap<JobState, Vec<String>>,
    ostq::shards::ShardLayout,
    common::Running,
) {
    let queue = client.queue("q");
    let layout = queue.set_shards(3).await.unwrap();
    // Every shard keeps its events (attempt errors are read from them).
    queue
        .set_events(ostq::events::EventSink::Stream)
        .await
        .unwrap();
    let mut ids: HashMap<JobState, Vec<String>> = HashMap::new();
    // Consecutive pushes go round-robin: 6 of a kind are 2 per shard.
    for (kind, state, opts) in [
        ("fail", JobState::Dead, PushOptions::new().max_attempts(1)),
        ("retry", JobState::Retry, PushOptions::new().max_attempts(5)),
        ("ok", JobState::Completed, PushOptions::new().track()),
        ("hold", JobState::Active, PushOptions::new()),
    ] {
        let n = if kind == "hold" { 3 } else { 6 };
        for i in 0..n {
            let id = queue.push_with(format!("{kind}{i}"), &opts).await.unwrap();
            ids.entry(state).or_default().push(id);
        }
    }
    let running = spawn(
        Worker::builder(client.clone())
            .queue("q")
            .concurrency(8)
            .retry(ostq::RetryPolicy::fixed(Duration::from_secs(600)))
            .handler(move |job: Job| {
                let release = release.clone();
                async move {
                    let payload = job.payload_str()?.to_string();
                    if payload.starts_with("hold") {
                        release.notified().await;
                    }
                    if payload.starts_with("fail") || payload.starts_with("retry") {
                        return Err::<(), BoxError>(format!("{payload} failed").into());
                    }
                    Ok(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(20), |c| {
        (c.dead, c.retry, c.completed, c.active, c.pending) == (6, 6, 6, 3, 0)
    })
    .await;
    // Paused, the worker leaves what is pushed now pending.
    queue.pause().await.unwrap();
    for i in 0..30 {
        let id = queue.push(format!("p{i}")).await.unwrap();
        ids.entry(JobState::Pending).or_default().push(id);
    }
    let later = PushOptions::new().delay(Duration::from_secs(600));
    for i in 0..6 {
        let id = queue.push_with(format!("later{i}"), &later).await.unwrap();
        ids.entry(JobState::Scheduled).or_default().push(id);
    }
    (ids, layout, running)
}

/// Every job of `state`, paged `size` at a time with cursors.
async fn paged(queue: &ostq::Queue, state: JobState, size: usize) -> Vec<ostq::JobInfo> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = queue.page(state, cursor.as_ref(), size).await.unwrap();
        if state == JobState::Pending {
            assert_eq!(page.list_index.len(), page.jobs.len());
        }
        out.extend(page.jobs);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test]
async fn paging_lists_every_shard_once() {
    let (_server, client) = setup().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let (ids, _layout, running) = every_state(&client, release.clone()).await;
    let queue = client.queue("q");
    for state in JobState::ALL {
        let want = sorted(ids[&state].clone());
        // Every shard holds some of each state, so a listing of shard 0 alone falls short.
        for shard in 0..3 {
            let mark = format!("#{shard}");
            assert!(
                want.iter().any(|id| id.ends_with(&mark)),
                "{state} {want:?}"
            );
        }
        for size in [1, 4, 100] {
            let jobs = paged(&queue, state, size).await;
            assert!(jobs.iter().all(|j| j.queue == "q" && j.state == state));
            // The time-ordered states in one order over the shards, not shard by shard.
            let times: Vec<u64> = match state {
                JobState::Scheduled | JobState::Retry => {
                    jobs.iter().map(|j| j.due_at_ms.unwrap()).collect()
                }
                JobState::Dead => jobs
                    .iter()
                    .map(|j| u64::MAX - j.finished_at_ms.unwrap())
                    .collect(),
                _ => Vec::new(),
            };
            assert!(times.windows(2).all(|w| w[0] <= w[1]), "{state}: {times:?}");
            let got = sorted(jobs.into_iter().map(|j| j.id).collect());
            assert_eq!(got, want, "{state} paged {size} at a time");
        }
    }
    release.notify_waiters();
    running.shutdown().await;
}

#[tokio::test]
async fn find_job_routes_by_the_ids_shard() {
    let (_server, client) = setup().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let (ids, _layout, running) = every_state(&client, release.clone()).await;
    let queue = client.queue("q");
    for state in JobState::ALL {
        let want = &ids[&state];
        // One lookup finds each, in its state, under the logical queue's name.
        for id in want {
            let lookup = ostq::admin::lookup::JobLookup::new();
            match queue.find_job(id, lookup).await.unwrap() {
                ostq::admin::lookup::Found::Job { job, .. } => {
                    assert_eq!((job.queue.as_str(), job.state), ("q", state), "{id}");
                }
                other => panic!("{id}: {other:?}"),
            }
            assert_eq!(queue.job(id).await.unwrap().unwrap().state, state);
        }
    }
    // The listing of a page is where its shard's lookup looks first.
    let page = queue.page(JobState::Pending, None, 100).await.unwrap();
    let last = page.jobs.len() - 1;
    let lookup = ostq::admin::lookup::JobLookup::new().near(page.list_index[last]);
    assert!(matches!(
        queue.find_job(&page.jobs[last].id, lookup).await.unwrap(),
        ostq::admin::lookup::Found::Job { .. }
    ));
    release.notify_waiters();
    running.shutdown().await;
}

#[tokio::test]
async fn search_and_history_cover_every_shard() {
    let (_server, client) = setup().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let (ids, _layout, running) = every_state(&client, release.clone()).await;
    let queue = client.queue("q");

    // Search finds a pending job of shard 2 and a dead one by its error.
    let in_two = ids[&JobState::Pending]
        .iter()
        .find(|id| id.ends_with("#2"))
        .unwrap();
    let payload = queue.job(in_two).await.unwrap().unwrap().payload.unwrap();
    let payload = String::from_utf8(payload).unwrap();
    let filter = ostq::admin::search::JobFilter::new().payload(payload.clone());
    let found = queue
        .search(JobState::Pending, &filter, None, 10_000, 100)
        .await
        .unwrap();
    let hits: Vec<&str> = found.jobs.iter().map(|j| j.id.as_str()).collect();
    assert!(hits.contains(&in_two.as_str()), "{payload}: {hits:?}");
    let dead_two = ids[&JobState::Dead]
        .iter()
        .find(|id| id.ends_with("#2"))
        .unwrap();
    let error = queue
        .job(dead_two)
        .await
        .unwrap()
        .unwrap()
        .last_error
        .unwrap();
    let filter = ostq::admin::search::JobFilter::new().error(error);
    let found = queue
        .search(JobState::Dead, &filter, None, 10_000, 10)
        .await
        .unwrap();
    assert_eq!(found.jobs.len(), 1);
    assert_eq!(&found.jobs[0].id, dead_two);

    // History: the shards' attempts summed, as the counts are.
    let counts = queue.counts().await.unwrap();
    // One attempt each so far: the dead, the retrying and the completed jobs.
    let attempts: usize = [JobState::Dead, JobState::Retry, JobState::Completed]
        .iter()
        .map(|s| ids[s].len())
        .sum();
    assert_eq!(counts.processed_total as usize, attempts);
    let totals = || async {
        let totals = queue.history_totals().await.unwrap();
        totals.values().map(|f| f.processed).sum::<u64>()
    };
    // Workers send their history once a second.
    wait_until(Duration::from_secs(5), || async {
        totals().await == counts.processed_total
    })
    .await;
    assert_eq!(totals().await, counts.processed_total);
    // The cheap running totals sum the shards as the counts do.
    let running_totals = queue.totals().await.unwrap();
    assert_eq!(
        (running_totals.processed, running_totals.failed),
        (counts.processed_total, counts.failed_total)
    );
    // A dead job of shard 2's attempt error, from shard 2's event stream.
    let errors = queue.attempt_errors(dead_two).await.unwrap();
    assert_eq!(errors.errors.len(), 1, "{errors:?}");
    assert!(errors.errors[0].error.contains("failed"));
    let now = std::time::SystemTime::now();
    let hour = now - Duration::from_secs(3600);
    let points = queue
        .history(ostq::admin::Resolution::Minute, hour, now)
        .await
        .unwrap();
    let summed: u64 = points.iter().map(|p| p.all_tasks().processed).sum();
    assert_eq!(summed, counts.processed_total);

    release.notify_waiters();
    running.shutdown().await;
}

#[tokio::test]
async fn a_sharded_queue_exports_whole_and_imports_into_its_shards() {
    let (_server, client) = setup().await;
    let release = Arc::new(tokio::sync::Notify::new());
    let (ids, _layout, running) = every_state(&client, release.clone()).await;
    let queue = client.queue("q");
    let mut lines = Vec::new();
    let mut export = queue.exporter();
    while let Some(batch) = export.next_lines().await.unwrap() {
        lines.extend(batch);
    }
    release.notify_waiters();
    running.shutdown().await;
    let exported: Vec<&ostq::JobInfo> = lines
        .iter()
        .filter_map(|l| match l {
            ostq::admin::backup::Line::Job(job) => Some(job),
            _ => None,
        })
        .collect();
    let every: usize = ids.values().map(Vec::len).sum();
    assert_eq!(exported.len(), every);
    assert!(exported.iter().all(|j| j.queue == "q"));

    // Into a fresh Redis: one unsharded queue holding every job (active ones come back pending).
    let (_fresh, plain) = setup().await;
    let mut import = plain.importer();
    import.write(&lines).await.unwrap();
    assert_eq!(import.counts().imported as usize, every);
    let restored = plain.queue("q");
    for state in JobState::ALL {
        let mut want = ids[&state].clone();
        match state {
            JobState::Active => want.clear(),
            JobState::Pending => want.extend(ids[&JobState::Active].iter().cloned()),
            _ => {}
        }
        let got = paged(&restored, state, 7).await;
        let got = sorted(got.into_iter().map(|j| j.id).collect());
        assert_eq!(got, sorted(want), "{state}");
    }

    // Into a sharded queue: each job in the shard its id names, found there in one lookup.
    let (other, sharded) = setup().await;
    let target = sharded.queue("q");
    let layout = target.set_shards(3).await.unwrap();
    let mut import = sharded.importer();
    import.write(&lines).await.unwrap();
    assert_eq!(import.counts().imported as usize, every);
    for (i, name) in layout.shards.iter().enumerate() {
        let dead = other
            .cli(&["ZCARD", &format!("ostq:{{{name}}}:dead")])
            .unwrap();
        let here = ids[&JobState::Dead]
            .iter()
            .filter(|id| id.ends_with(&format!("#{i}")))
            .count();
        assert!(here > 0);
        assert_eq!(dead.trim(), here.to_string(), "shard {i}");
    }
    for state in JobState::ALL {
        for id in &ids[&state] {
            assert!(target.job(id).await.unwrap().is_some(), "{id}");
        }
    }
    let counts = target.counts().await.unwrap();
    assert_eq!(counts.pending as usize, ids[&JobState::Pending].len() + 3);
    assert_eq!(counts.dead as usize, ids[&JobState::Dead].len());
}

/// Reads of a queue's layout since the last call (the `HMGET` of the settings that asks for
/// `shards_draining`), from the slow log set to log every command.
fn layout_reads(server: &common::RedisServer) -> usize {
    let log = server.cli(&["SLOWLOG", "GET", "-1"]).unwrap();
    server.cli(&["SLOWLOG", "RESET"]).unwrap();
    log.lines()
        .filter(|l| l.contains("shards_draining"))
        .count()
}

#[tokio::test]
async fn admin_calls_read_the_layout_once_a_second_per_handle() {
    let (server, client) = setup().await;
    // An unsharded queue: what a /metrics scrape over many queues asks of each.
    let plain = client.queue("plain");
    let id = plain.push("x").await.unwrap();
    let sharded = client.queue("q");
    sharded.set_shards(3).await.unwrap();
    let ids = sharded.push_bulk(["a", "b", "c"]).await.unwrap();
    let calls = 5;
    server
        .cli(&["CONFIG", "SET", "slowlog-log-slower-than", "0"])
        .unwrap();
    server
        .cli(&["CONFIG", "SET", "slowlog-max-len", "100000"])
        .unwrap();
    for queue in [&plain, &sharded] {
        layout_reads(&server);
        for _ in 0..calls {
            queue.counts().await.unwrap();
            queue.history_totals().await.unwrap();
            queue.rate_limit().await.unwrap();
            assert!(queue.job(&id).await.unwrap().is_some() || queue.name() == "q");
        }
        for id in &ids {
            assert!(queue.cancel(id).await.is_ok());
        }
        let read = layout_reads(&server);
        // One read of the settings per second at most (two if the calls straddle one; none if
        // the pushes above read them less than a second ago).
        assert!(
            read <= 2,
            "{}: {read} layout reads for {calls} rounds",
            queue.name()
        );
    }
    // A snapshot (the dashboard's overview, `ostq stats`) reads each queue's layout once.
    let names = ["plain", "q"];
    let mut sampler = ostq::admin::StatsSampler::new(&client).queues(names);
    layout_reads(&server);
    let snapshot = sampler.snapshot().await.unwrap();
    assert_eq!(snapshot.queues.len(), names.len());
    assert_eq!(layout_reads(&server), names.len());
}

#[tokio::test]
async fn a_cursor_from_before_sharding_goes_on_over_every_shard() {
    let (_server, client) = setup().await;
    let queue = client.queue("q");
    let later = PushOptions::new().delay(Duration::from_secs(600));
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(queue.push_with(format!("a{i}"), &later).await.unwrap());
    }
    let first = queue.page(JobState::Scheduled, None, 2).await.unwrap();
    let cursor = first.next.clone().unwrap();
    queue.set_shards(3).await.unwrap();
    for i in 0..6 {
        ids.push(queue.push_with(format!("b{i}"), &later).await.unwrap());
    }
    let mut seen: Vec<String> = first.jobs.into_iter().map(|j| j.id).collect();
    let mut cursor = Some(cursor);
    while let Some(at) = cursor {
        let page = queue.page(JobState::Scheduled, Some(&at), 2).await.unwrap();
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        cursor = page.next;
    }
    assert_eq!(sorted(seen), sorted(ids));
    // A sharded listing's cursor is refused by a listing of another state, as unsharded.
    let page = queue.page(JobState::Scheduled, None, 1).await.unwrap();
    assert!(matches!(
        queue.page(JobState::Dead, page.next.as_ref(), 1).await,
        Err(ostq::Error::Config(_))
    ));
}

#[tokio::test]
async fn a_merged_listing_pages_through_equal_times() {
    let (_server, client) = setup().await;
    let queue = client.queue("q");
    queue.set_shards(3).await.unwrap();
    // One run-at time for all: every score equal, so the order is by id and the cursor's place
    // is found by its index among equal scores.
    let at = std::time::SystemTime::now() + Duration::from_secs(600);
    let opts = PushOptions::new().run_at(at);
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(queue.push_with(format!("{i}"), &opts).await.unwrap());
    }
    for size in [1, 7, 50] {
        let jobs = paged(&queue, JobState::Scheduled, size).await;
        let got: Vec<String> = jobs.into_iter().map(|j| j.id).collect();
        // Equal times: the members' order, over every shard.
        assert_eq!(got, sorted(ids.clone()), "pages of {size}");
    }
}
