//! The same code on a 3-node Redis Cluster: every key of a queue shares its hash tag, so each
//! script and pipeline stays in one slot. push → work → complete → retry → dead, on queues that
//! land on different nodes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{spawn, wait_counts, RedisCluster};
use ostq::{BoxError, Job, JobState, PushOptions, RetryPolicy, Worker};

#[tokio::test]
async fn push_work_complete_retry_dead_on_a_cluster() {
    let cluster = RedisCluster::start(3).unwrap();
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    assert!(client.is_cluster());
    // Slots 3973, 7290 and 12682: one queue on each node of the 3-node cluster.
    let names = ["videos", "thumbs", "billing"];
    for name in names {
        let queue = client.queue(name);
        queue
            .push_bulk((0..20).map(|i| format!("ok-{i}")))
            .await
            .unwrap();
        queue
            .push_with("flaky", &PushOptions::new().track())
            .await
            .unwrap();
        queue
            .push_with("doomed", &PushOptions::new().max_attempts(2))
            .await
            .unwrap();
        queue
            .push_with(
                "later",
                &PushOptions::new()
                    .delay(Duration::from_millis(200))
                    .priority(3),
            )
            .await
            .unwrap();
    }
    let mut builder = Worker::builder(client.clone())
        .concurrency(8)
        .retry(RetryPolicy::fixed(Duration::from_millis(50)))
        .handler(|job: Job| async move {
            match (job.payload_str()?, job.attempt) {
                ("flaky", 1) | ("doomed", _) => Err::<&str, BoxError>("nope".into()),
                _ => Ok("done"),
            }
        });
    for name in names {
        builder = builder.queue(name);
    }
    let running = spawn(builder.build().unwrap());
    for name in names {
        let queue = client.queue(name);
        // 20 ok + later + flaky twice + doomed twice
        let counts = wait_counts(&queue, Duration::from_secs(15), |c| {
            c.processed_total == 25 && c.dead == 1
        })
        .await;
        assert_eq!(
            (
                counts.failed_total,
                counts.pending,
                counts.active,
                counts.retry
            ),
            (3, 0, 0, 0),
            "{name}"
        );
        let dead = queue.jobs(JobState::Dead, 0, 5).await.unwrap();
        assert_eq!(dead[0].last_error.as_deref(), Some("nope"));
        let flaky = queue.jobs(JobState::Completed, 0, 5).await.unwrap();
        assert_eq!(flaky[0].result.as_deref(), Some(&b"done"[..]));
        assert_eq!(queue.retry_all_dead().await.unwrap(), 1);
    }
    running.shutdown().await;
    let mut queues = client.queues().await.unwrap();
    queues.sort();
    assert_eq!(queues, ["billing", "thumbs", "videos"]);
}

/// Issue 3's coordination features on the cluster: unique keys, results on demand, events,
/// rate limits, pause and cron all stay inside their queue's slot.
#[tokio::test]
async fn coordination_features_work_on_a_cluster() {
    use futures::StreamExt;
    use ostq::events::{EventSink, EventsFrom};

    let cluster = RedisCluster::start(3).unwrap();
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    let queue = client.queue("billing"); // slot 12682: the third node
    queue.set_events(EventSink::Stream).await.unwrap();
    queue
        .set_rate_limit(1000, Duration::from_secs(1))
        .await
        .unwrap();
    let mut events = Box::pin(client.events("billing", EventsFrom::Now).await.unwrap());
    let unique = PushOptions::new().unique("invoice-7");
    let first = queue.push_with("invoice 7", &unique).await.unwrap();
    assert!(matches!(
        queue.push_with("invoice 7", &unique).await,
        Err(ostq::Error::Duplicate { .. })
    ));
    queue.pause().await.unwrap();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("billing")
            .handler(
                |job: Job| async move { Ok::<_, BoxError>(format!("paid {}", job.payload_str()?)) },
            )
            .build()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(queue.counts().await.unwrap().processed_total, 0, "paused");
    queue.resume().await.unwrap();
    let result = queue
        .push_and_wait("invoice 8", PushOptions::new(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(result.as_deref(), Some(&b"paid invoice 8"[..]));
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 2).await;
    queue.push_with("invoice 7 again", &unique).await.unwrap(); // released on completion
    let scheduler = ostq::Scheduler::builder(client.clone())
        .every("sweep", "billing", Duration::from_millis(200), "sweep")
        .build()
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let ticking = tokio::spawn(scheduler.run_until(stop.clone().cancelled_owned()));
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total >= 5).await;
    stop.cancel();
    ticking.await.unwrap().unwrap();
    running.shutdown().await;
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (event.id.as_str(), event.queue.as_str()),
        (first.as_str(), "billing")
    );
}

/// The node (index) that serves physical queue `name` and the length of its pending list there.
fn where_is(cluster: &RedisCluster, name: &str) -> (usize, u64) {
    let slot = ostq::keys::slot_of_queue(name).to_string();
    for (i, node) in cluster.nodes().iter().enumerate() {
        let owned = node.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]).unwrap();
        if owned.trim() != "0" {
            let key = format!("ostq:{{{name}}}:pending");
            let len = node.cli(&["LLEN", &key]).unwrap();
            return (i, len.trim().parse().unwrap());
        }
    }
    panic!("no node holds {name}");
}

/// Issue 15: one queue over the three primaries. Shards land on distinct primaries, pushes
/// spread evenly, a key keeps FIFO order on one shard, ids find their shard, counts, pause and
/// unique keys span the shards, and a worker does every job exactly once.
#[tokio::test]
async fn a_sharded_queue_spans_every_primary() {
    let cluster = RedisCluster::start(3).unwrap();
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    let queue = client.queue("hot");
    queue.push("before sharding").await.unwrap();
    let layout = queue.set_shards(3).await.unwrap();
    assert_eq!(layout.shards[0], "hot");
    assert_eq!(layout.count(), 3);

    // Balance: 300 round-robin pushes, 100 per shard (shard 0 holds the earlier job too), one
    // shard per primary.
    let ids = queue
        .push_bulk((0..300).map(|i| format!("job-{i}")))
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for (i, name) in layout.shards.iter().enumerate() {
        let (node, len) = where_is(&cluster, name);
        assert_eq!(len, 100 + u64::from(i == 0), "{name}");
        nodes.push(node);
    }
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "shards on distinct primaries: {layout:?}");
    assert_eq!(queue.counts().await.unwrap().pending, 301);
    assert_eq!(client.queues().await.unwrap(), ["hot"]);

    // O(1) lookup: a generated id names its shard.
    let found = queue.job(&ids[4]).await.unwrap().unwrap();
    assert_eq!(found.payload.as_deref(), Some(&b"job-4"[..]));
    let shard = layout.shard_of_id(&ids[4]);
    assert!(ids[4].ends_with(&format!("#{shard}")));
    let given = queue
        .push_with("given", &PushOptions::new().id("order-9"))
        .await
        .unwrap();
    assert_eq!(queue.job(&given).await.unwrap().unwrap().id, "order-9");

    // Unique keys route by the key, so they stay unique over the shards.
    let unique = PushOptions::new().unique("invoice-1");
    queue.push_with("a", &unique).await.unwrap();
    for _ in 0..5 {
        assert!(matches!(
            queue.push_with("a", &unique).await,
            Err(ostq::Error::Duplicate { .. })
        ));
    }

    // Rate limit: split over the shards, summed back.
    queue
        .set_rate_limit(1000, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        queue.rate_limit().await.unwrap(),
        Some((1000, Duration::from_secs(1)))
    );
    let (_, second) = layout.shards.split_first().unwrap();
    let per_shard = client.queue("hot").shards().await.unwrap();
    assert_eq!(per_shard, layout);
    assert!(second.iter().all(|n| n.starts_with("hot#")));
    queue.clear_rate_limit().await.unwrap();

    // Pause stops every shard.
    queue.pause().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("hot")
            .concurrency(1)
            .handler(move |job: Job| {
                let log = log.clone();
                async move {
                    log.lock().unwrap().push(job.payload_str()?.to_string());
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = queue.counts().await.unwrap();
    assert!(counts.paused);
    assert_eq!(counts.processed_total, 0, "paused");
    // FIFO per key: 30 jobs with one key, pushed while paused, all on one shard.
    for i in 0..30 {
        queue
            .push_with(format!("k-{i}"), &PushOptions::new().key("customer-1"))
            .await
            .unwrap();
    }
    queue.resume().await.unwrap();
    let total = 301 + 1 + 1 + 30;
    wait_counts(&queue, Duration::from_secs(30), |c| {
        c.processed_total == total && c.pending == 0 && c.active == 0
    })
    .await;
    running.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, total, "every job exactly once");
    let mut unique_seen = seen.clone();
    unique_seen.sort();
    unique_seen.dedup();
    assert_eq!(unique_seen.len() as u64, total);
    let keyed: Vec<&String> = seen.iter().filter(|p| p.starts_with("k-")).collect();
    let expected: Vec<String> = (0..30).map(|i| format!("k-{i}")).collect();
    assert_eq!(
        keyed.into_iter().cloned().collect::<Vec<_>>(),
        expected,
        "FIFO per key"
    );
}

/// Resharding a live queue on the cluster, 1 → 3 → 2: new pushes follow the layout, the dropped
/// shard drains, and every job is done exactly once.
#[tokio::test]
async fn resharding_on_a_cluster_does_every_job_once() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    let cluster = RedisCluster::start(3).unwrap();
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    let queue = client.queue("resharded");
    queue
        .push_bulk((0..60).map(|i| format!("a{i}")))
        .await
        .unwrap();
    let three = queue.set_shards(3).await.unwrap();
    queue
        .push_bulk((0..90).map(|i| format!("b{i}")))
        .await
        .unwrap();
    let two = queue.set_shards(2).await.unwrap();
    assert_eq!(two.shards, three.shards[..2]);
    assert_eq!(two.draining, three.shards[2..]);
    assert_eq!(
        where_is(&cluster, &three.shards[2]).1,
        30,
        "the dropped shard"
    );
    queue
        .push_bulk((0..50).map(|i| format!("c{i}")))
        .await
        .unwrap();
    assert_eq!(
        where_is(&cluster, &three.shards[2]).1,
        30,
        "no new pushes there"
    );
    assert_eq!(queue.counts().await.unwrap().pending, 200);

    let seen = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let log = seen.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("resharded")
            .concurrency(8)
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
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(20), |c| {
        c.processed_total == 200 && c.pending == 0 && c.active == 0
    })
    .await;
    running.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 200);
    assert!(seen.values().all(|&n| n == 1), "every job exactly once");
    // Empty, but it drains for a minute before a change may forget it (producers' caches).
    assert_eq!(queue.set_shards(2).await.unwrap().draining, two.draining);
    let node = where_is(&cluster, "resharded").0;
    cluster.nodes()[node]
        .cli(&[
            "HSET",
            "ostq:{resharded}:config",
            "shards_draining_since",
            "0",
        ])
        .unwrap();
    assert!(queue.set_shards(2).await.unwrap().draining.is_empty());
}

/// The master (node index) that serves physical queue `name` now: the one that answers for its
/// pending list instead of redirecting with MOVED (replicas redirect too).
fn master_of(cluster: &RedisCluster, name: &str) -> usize {
    let key = format!("ostq:{{{name}}}:pending");
    cluster
        .masters()
        .unwrap()
        .into_iter()
        .find(|&i| {
            let reply = cluster.nodes()[i].cli(&["LLEN", &key]).unwrap();
            !reply.starts_with("MOVED")
        })
        .unwrap_or_else(|| panic!("no master serves {name}"))
}

/// Issue 15: a planned `CLUSTER FAILOVER` (not FORCE nor TAKEOVER: the replica takes over only
/// once it has every write of its master, so nothing acknowledged may be lost) of the primary
/// holding shard 0, while two producers push single jobs and a worker drains the 3-shard queue.
/// Producer and worker follow the MOVED redirections to the promoted replica, and every job
/// whose push was acknowledged runs at least once.
#[tokio::test]
async fn a_sharded_queue_survives_a_failover_without_losing_jobs() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const PER_PRODUCER: usize = 1500;
    let cluster = Arc::new(RedisCluster::start_with_replicas(3, 1).unwrap());
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    let queue = client.queue("fo");
    let layout = queue.set_shards(3).await.unwrap();
    let old_master = master_of(&cluster, &layout.shards[0]);
    let replica = cluster.replicas_of(old_master).unwrap()[0];

    let ran = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let log = ran.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("fo")
            .concurrency(16)
            .handler(move |job: Job| {
                let log = log.clone();
                async move {
                    *log.lock().unwrap().entry(job.id.clone()).or_default() += 1;
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );

    let acked = Arc::new(AtomicUsize::new(0));
    let push_errors = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let queue = client.queue("fo");
            let (acked, push_errors) = (acked.clone(), push_errors.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..PER_PRODUCER {
                    // An unacknowledged push (an error while the slots move) is tried again;
                    // only acknowledged ids are owed a run.
                    loop {
                        match queue.push(format!("{p}-{i}")).await {
                            Ok(id) => break ids.push(id),
                            Err(e) => {
                                eprintln!("push: {e}");
                                push_errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                    // Paced so that the failover falls in the middle of the pushes.
                    if i % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                ids
            })
        })
        .collect();

    // Mid-run: a third of the jobs acknowledged.
    assert!(
        common::wait_until(Duration::from_secs(20), || {
            let n = acked.load(Ordering::Relaxed);
            async move { n >= 2 * PER_PRODUCER / 3 }
        })
        .await
    );
    let at_failover = acked.load(Ordering::Relaxed);
    let failing = cluster.clone();
    tokio::task::spawn_blocking(move || failing.failover(replica))
        .await
        .unwrap()
        .unwrap();
    let after_failover = acked.load(Ordering::Relaxed);
    assert_eq!(master_of(&cluster, &layout.shards[0]), replica);

    let mut owed = Vec::new();
    for producer in producers {
        owed.extend(producer.await.unwrap());
    }
    assert_eq!(owed.len(), 2 * PER_PRODUCER);
    assert!(
        after_failover < owed.len(),
        "pushes went on after the failover ({after_failover} of {} before it)",
        owed.len()
    );
    let all_ran = common::wait_until(Duration::from_secs(20), || {
        let ran = ran.lock().unwrap().len();
        async move { ran >= 2 * PER_PRODUCER }
    })
    .await;
    let seen = ran.lock().unwrap().clone();
    eprintln!(
        "failover between push {at_failover} and {after_failover} of {}; push errors {}; jobs run twice {}",
        owed.len(),
        push_errors.load(Ordering::Relaxed),
        seen.values().filter(|&&n| n > 1).count()
    );
    let lost: Vec<&String> = owed.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        all_ran && lost.is_empty(),
        "{} of {} acknowledged jobs never ran (push errors {}), e.g. {:?}",
        lost.len(),
        owed.len(),
        push_errors.load(Ordering::Relaxed),
        &lost[..lost.len().min(5)]
    );
    wait_counts(&queue, Duration::from_secs(10), |c| {
        c.pending == 0 && c.active == 0
    })
    .await;

    // Another primary, shard 1's, while the worker is idle, waiting on the shards: a wait on the
    // demoted primary must not leave the worker stuck there. Jobs pushed afterwards, to every
    // shard, still run. (Not shard 0's back again: Redis often delays a second failover of one
    // pair by several seconds.)
    let second_master = master_of(&cluster, &layout.shards[1]);
    let second_replica = cluster.replicas_of(second_master).unwrap()[0];
    let failing = cluster.clone();
    tokio::task::spawn_blocking(move || failing.failover(second_replica))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(master_of(&cluster, &layout.shards[1]), second_replica);
    let after = queue
        .push_bulk((0..30).map(|i| format!("after-{i}")))
        .await
        .unwrap();
    let all_ran = common::wait_until(Duration::from_secs(10), || {
        let ran = ran.clone();
        let after = after.clone();
        async move {
            let ran = ran.lock().unwrap();
            after.iter().all(|id| ran.contains_key(id))
        }
    })
    .await;
    assert!(all_ran, "jobs pushed after the second failover never ran");
    running.shutdown().await;
}

/// Issue 15: a cron schedule on a 3-shard queue, run by two scheduler processes (two clients,
/// two `Scheduler`s) with two workers, lands exactly once per tick: every tick fired by exactly
/// one of them, no tick skipped, each tick's job run once.
#[tokio::test]
async fn cron_on_a_sharded_queue_lands_once_per_tick() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use ostq::scheduler::TickOutcome;

    let cluster = RedisCluster::start(3).unwrap();
    let admin = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    let queue = admin.queue("ticks");
    queue.set_shards(3).await.unwrap();

    // tick → (calls, fired) over both schedulers; job id → runs over both workers.
    let calls = Arc::new(Mutex::new(BTreeMap::<u64, (u32, u32)>::new()));
    let runs = Arc::new(Mutex::new(BTreeMap::<String, u32>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut schedulers = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
        let log = calls.clone();
        let scheduler = ostq::Scheduler::builder(client.clone())
            .every("sweep", "ticks", Duration::from_millis(100), "sweep")
            .on_tick(move |tick| {
                // A tick before the schedule's registration is not owed a job.
                if tick.outcome == TickOutcome::Early {
                    return;
                }
                let mut log = log.lock().unwrap();
                let entry = log.entry(tick.tick_ms).or_default();
                entry.0 += 1;
                if matches!(tick.outcome, TickOutcome::Fired { .. }) {
                    entry.1 += 1;
                }
            })
            .build()
            .unwrap();
        schedulers.push(tokio::spawn(
            scheduler.run_until(stop.clone().cancelled_owned()),
        ));
        let log = runs.clone();
        workers.push(spawn(
            Worker::builder(client)
                .queue("ticks")
                .concurrency(4)
                .handler(move |job: Job| {
                    let log = log.clone();
                    async move {
                        *log.lock().unwrap().entry(job.id.clone()).or_default() += 1;
                        Ok::<_, BoxError>(())
                    }
                })
                .build()
                .unwrap(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.cancel();
    for scheduler in schedulers {
        scheduler.await.unwrap().unwrap();
    }
    let calls = calls.lock().unwrap().clone();
    let fired: u32 = calls.values().map(|&(_, fired)| fired).sum();
    assert!(fired >= 10, "ticks fired in 2 s at 100 ms: {calls:?}");
    assert!(
        calls.values().all(|&(_, fired)| fired == 1),
        "each tick fired exactly once: {calls:?}"
    );
    assert!(
        calls.values().filter(|&&(n, _)| n == 2).count() >= calls.len() / 2,
        "both schedulers called for most ticks: {calls:?}"
    );
    let ticks: Vec<u64> = calls.keys().copied().collect();
    assert!(
        ticks.windows(2).all(|w| w[1] - w[0] == 100),
        "no tick skipped: {ticks:?}"
    );
    wait_counts(&queue, Duration::from_secs(10), |c| {
        c.processed_total == u64::from(fired) && c.pending == 0 && c.active == 0
    })
    .await;
    for worker in workers {
        worker.shutdown().await;
    }
    let runs = runs.lock().unwrap().clone();
    let expected: Vec<String> = ticks
        .iter()
        .map(|&t| ostq::scheduler::tick_job_id("sweep", t))
        .collect();
    assert_eq!(runs.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(runs.values().all(|&n| n == 1), "each tick's job ran once");
}
