//! Redis out of memory, and Redis unreachable at start and mid-run: producers get clear errors,
//! nothing is half-written, workers wait (one log line per state change) and resume with nothing
//! lost. `resilience.rs` covers dropped connections and a graceful restart with a running worker.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{spawn, wait_counts, RedisServer};
use ostq::{BoxError, Job, PushOptions, Worker};

/// Log lines written while the guard lives, on this thread (tests using it run on a
/// current-thread runtime, so the worker's tasks log here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

/// A worker that records every job id it ran (duplicates included).
fn recording_worker(client: &ostq::Client, queue: &str, ran: &Arc<Mutex<Vec<String>>>) -> Worker {
    let ran = ran.clone();
    Worker::builder(client.clone())
        .queue(queue)
        .concurrency(8)
        .lease(Duration::from_secs(2))
        .handler(move |job: Job| {
            let ran = ran.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ran.lock().unwrap().push(job.id.clone());
                Ok::<_, BoxError>(())
            }
        })
        .build()
        .unwrap()
}

fn distinct(ran: &Arc<Mutex<Vec<String>>>) -> HashSet<String> {
    ran.lock().unwrap().iter().cloned().collect()
}

fn info_field(server: &RedisServer, section: &str, field: &str) -> u64 {
    let info = server.cli(&["INFO", section]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Keys of the queue's tracked-job status records.
fn status_records(server: &RedisServer, queue: &str) -> usize {
    let keys = server
        .cli(&["--scan", "--pattern", &format!("ostq:{{{queue}}}:job:*")])
        .unwrap();
    keys.lines().filter(|l| !l.is_empty()).count()
}

#[tokio::test]
async fn out_of_memory_refuses_pushes_whole_and_workers_resume_when_memory_frees() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]).unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    let queue = client.queue("oom");
    let used = info_field(&server, "memory", "used_memory");
    let limit = (used + 3 * 1024 * 1024).to_string();
    server.cli(&["CONFIG", "SET", "maxmemory", &limit]).unwrap();

    // Fill Redis with bulk pushes of 500 plain jobs (one LPUSH each) until it refuses one.
    let payload = vec![b'x'; 1024];
    let mut accepted: HashSet<String> = HashSet::new();
    let err = loop {
        let before = queue.counts().await.unwrap().pending;
        match queue.push_bulk((0..500).map(|_| payload.as_slice())).await {
            Ok(ids) => accepted.extend(ids),
            Err(e) => {
                // Refused whole: not one job of the failed bulk landed.
                assert_eq!(queue.counts().await.unwrap().pending, before);
                break e;
            }
        }
        assert!(accepted.len() < 100_000, "maxmemory never reached");
    };
    let text = err.to_string();
    eprintln!("plain bulk push: {text}");
    assert!(
        text.contains("out of memory") && text.contains("maxmemory"),
        "{text}"
    );
    assert_eq!(
        queue.counts().await.unwrap().pending as usize,
        accepted.len()
    );

    // Redis full for good (used memory above maxmemory, as after a growth spurt): the scripted
    // path (push.lua: tracked, delayed, prioritized) refuses whole too, writing no job and no
    // status record of the failed call.
    let used = info_field(&server, "memory", "used_memory");
    let limit = (used - 64 * 1024).to_string();
    server.cli(&["CONFIG", "SET", "maxmemory", &limit]).unwrap();
    let records = status_records(&server, "oom");
    for opts in [
        PushOptions::new().track(),
        PushOptions::new().delay(Duration::from_secs(60)),
        PushOptions::new().priority(3).track(),
    ] {
        let counts = queue.counts().await.unwrap();
        let err = queue
            .push_bulk_with((0..200).map(|_| payload.as_slice()), &opts)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("out of memory"), "{err}");
        let after = queue.counts().await.unwrap();
        assert_eq!(
            (after.pending, after.scheduled),
            (counts.pending, counts.scheduled),
            "{opts:?}"
        );
        assert_eq!(status_records(&server, "oom"), records, "{opts:?}");
    }
    let single = queue.push("one more").await.unwrap_err();
    assert!(single.to_string().contains("out of memory"), "{single}");

    // A worker keeps running while Redis is full, and everything accepted gets done once memory
    // frees (jobs taken free memory too, so it may make progress even before).
    let ran = Arc::new(Mutex::new(Vec::new()));
    let running = spawn(recording_worker(&client, "oom", &ran));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running.handle.is_finished(), "the worker stopped");
    let during = distinct(&ran).len();
    server.cli(&["CONFIG", "SET", "maxmemory", "0"]).unwrap();
    let counts = wait_counts(&queue, Duration::from_secs(15), |c| {
        c.pending == 0 && c.active == 0
    })
    .await;
    // Pushes work again.
    let late = queue.push("after").await.unwrap();
    wait_counts(&queue, Duration::from_secs(5), |c| {
        c.pending == 0 && c.active == 0
    })
    .await;
    running.shutdown().await;
    let ran = distinct(&ran);
    eprintln!(
        "accepted {} jobs before OOM; {during} ran while full; {counts:?}",
        accepted.len()
    );
    accepted.insert(late);
    assert_eq!(ran, accepted, "exactly the accepted jobs ran");
    assert_eq!(counts.dead, 0, "no half-written job reached a worker");
}

/// A bulk push of more than 1,000 plain jobs is several `LPUSH` commands in one pipeline; under
/// OOM the first may land and a later one be refused, so the call fails although some of its jobs
/// were enqueued (the caller does not get their ids). Making the pipeline a MULTI/EXEC
/// transaction (`redis::pipe().atomic()` in `producer.rs`) refuses it whole: Redis discards the
/// transaction when one queued command is refused for memory (checked with redis-cli:
/// `EXECABORT`, nothing written). The same holds for `push.lua` calls over 1,000 jobs.
#[tokio::test]
async fn a_bulk_push_over_several_chunks_is_refused_whole_under_oom() {
    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]).unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    let queue = client.queue("oom-bulk");
    let used = info_field(&server, "memory", "used_memory");
    let payload = vec![b'x'; 1024];
    let limit = (used + 1500 * 1024).to_string();
    server.cli(&["CONFIG", "SET", "maxmemory", &limit]).unwrap();
    for opts in [PushOptions::new(), PushOptions::new().track()] {
        let err = queue
            .push_bulk_with((0..3000).map(|_| payload.as_slice()), &opts)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("out of memory"), "{err}");
        let counts = queue.counts().await.unwrap();
        assert_eq!(
            counts.pending, 0,
            "{opts:?}: part of a refused bulk was enqueued"
        );
    }
}

/// Waits until every id in `ids` ran at least once.
async fn wait_ran(ran: &Arc<Mutex<Vec<String>>>, ids: &HashSet<String>, timeout: Duration) {
    let start = Instant::now();
    loop {
        let done = distinct(ran);
        if ids.is_subset(&done) {
            return;
        }
        if start.elapsed() > timeout {
            let lost: Vec<&String> = ids.difference(&done).collect();
            panic!("{} of {} jobs never ran: {lost:?}", lost.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_worker_started_before_redis_is_up_waits_then_works() {
    let logs = Logs::default();
    let _capture = logs.capture();
    let mut server =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).unwrap();
    server.kill();
    let url = server.url();

    // An eager connect fails fast; a lazy one does not wait for Redis.
    let started = Instant::now();
    let err = ostq::Client::connect(&url).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "{err}");
    let started = Instant::now();
    let client = ostq::Client::connect_lazy(&url).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(100));
    let queue = client.queue("early");

    // A producer gets an error at once while Redis is down.
    let started = Instant::now();
    let err = queue.push("too early").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");

    // The worker starts anyway and waits with capped backoff.
    let ran = Arc::new(Mutex::new(Vec::new()));
    let running = spawn(recording_worker(&client, "early", &ran));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!running.handle.is_finished(), "the worker gave up");

    server.restart().unwrap();
    // The worker registers its queue by itself once Redis is up.
    let start = Instant::now();
    while !client
        .queues()
        .await
        .unwrap_or_default()
        .contains(&"early".to_string())
    {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "queue never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids: HashSet<String> = queue
        .push_bulk((0..200).map(|i| i.to_string()))
        .await
        .unwrap()
        .into_iter()
        .collect();
    wait_ran(&ran, &ids, Duration::from_secs(10)).await;
    running.shutdown().await;

    // One line when fetching starts failing, one when Redis is back: not one per attempt.
    let text = logs.text();
    assert_eq!(logs.count("fetch failed"), 1, "{text}");
    assert_eq!(logs.count("reachable again, fetching"), 1, "{text}");
}

#[tokio::test(flavor = "current_thread")]
async fn redis_killed_mid_run_producers_fail_then_succeed_and_nothing_is_lost() {
    let logs = Logs::default();
    let _capture = logs.capture();
    // `appendfsync always`: every acknowledged push is on disk before the kill (with `everysec`,
    // a SIGKILL of Redis may lose the last second of acknowledged writes).
    let mut server =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    let queue = client.queue("outage");
    let mut ids: HashSet<String> = queue
        .push_bulk((0..400).map(|i| i.to_string()))
        .await
        .unwrap()
        .into_iter()
        .collect();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let running = spawn(recording_worker(&client, "outage", &ran));
    wait_counts(&queue, Duration::from_secs(10), |c| {
        c.processed_total >= 100
    })
    .await;

    server.kill();
    let down = Instant::now();
    // Producers get errors while Redis is down, quickly, and nothing is retried behind them.
    for _ in 0..3 {
        let started = Instant::now();
        let err = queue.push("while down").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{err}");
    }
    // Down for longer than the lease: the outcomes of the jobs in flight cannot be recorded.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    assert!(!running.handle.is_finished(), "the worker gave up");
    server.restart().unwrap();

    // Producers succeed again at once.
    ids.extend(
        queue
            .push_bulk((0..100).map(|i| format!("after-{i}")))
            .await
            .unwrap(),
    );
    wait_ran(&ran, &ids, Duration::from_secs(15)).await;
    let counts = wait_counts(&queue, Duration::from_secs(10), |c| {
        c.pending == 0 && c.active == 0
    })
    .await;
    running.shutdown().await;
    let runs = ran.lock().unwrap().len();
    eprintln!(
        "{} jobs, {runs} runs ({} duplicates after the outage); {counts:?}",
        ids.len(),
        runs - ids.len()
    );
    assert_eq!(distinct(&ran), ids, "a job ran that nobody pushed");
    assert_eq!((counts.dead, counts.retry), (0, 0));
    let text = logs.text();
    assert_eq!(logs.count("fetch failed"), 1, "{text}");
    assert_eq!(logs.count("reachable again, fetching"), 1, "{text}");
}
