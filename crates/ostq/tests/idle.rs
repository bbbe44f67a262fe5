//! An idle worker serving many queues: it keeps one blocking connection per queue and opens no
//! new one while idle (waits that did not end first stay in flight instead of being abandoned
//! with their connections), sends at most a couple of commands a second whatever the number of
//! its queues (issue 16), and still starts promptly a job made ready on any of its queues, by
//! whatever path: a push, a prioritized push, a delayed job coming due, `retry_now`, or the
//! recovery of a crashed worker's lease at its expiry.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{setup, spawn, RedisServer};
use ostq::{BoxError, Job, PushOptions, Worker};

const QUEUES: usize = 20;

/// Connections received and commands processed so far, from one `INFO stats` (whose own
/// connection and command are counted in it).
fn stats(server: &RedisServer) -> (u64, u64) {
    let info = server.cli(&["INFO", "stats"]).unwrap();
    let stat = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    (
        stat("total_connections_received"),
        stat("total_commands_processed"),
    )
}

#[tokio::test]
async fn an_idle_worker_on_many_queues_opens_no_new_connections() {
    let (server, client) = setup().await;
    let names: Vec<String> = (0..QUEUES).map(|i| format!("q{i}")).collect();
    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = ran.clone();
    let mut builder = Worker::builder(client.clone());
    for name in &names {
        builder = builder.queue(name);
    }
    let running = spawn(
        builder
            .handler(move |job: Job| {
                seen.lock().unwrap().push(job.queue.clone());
                async { Ok::<_, BoxError>(()) }
            })
            .build()
            .unwrap(),
    );
    // Every queue has waited once (its connection is open) after the first idle spells.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (connections, commands) = stats(&server);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (connections_after, commands_after) = stats(&server);
    // (Less the connection and the command of the second INFO itself.)
    let opened = connections_after - connections - 1;
    let commands = commands_after - commands - 1;
    eprintln!("idle on {QUEUES} queues for 3 s: {opened} connections opened, {commands} commands");
    assert_eq!(
        opened, 0,
        "an idle worker opened {opened} connections in 3 s"
    );

    // Still watching every queue: a push onto any of them is run.
    for name in ["q3", "q17", "q0"] {
        client.queue(name).push(name.as_bytes()).await.unwrap();
        let ok = common::wait_until(Duration::from_secs(5), || async {
            ran.lock().unwrap().iter().any(|q| q == name)
        })
        .await;
        assert!(ok, "the job pushed onto {name} did not run");
    }
    running.shutdown().await;
}

/// Per command name, the calls so far (`INFO commandstats`; commands run inside scripts count
/// under their own names, as they do in `total_commands_processed`).
fn command_calls(server: &RedisServer) -> HashMap<String, u64> {
    let info = server.cli(&["INFO", "commandstats"]).unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

const MANY: usize = 50;
/// Longest push→start delay accepted for an idle worker: far under the 1 s every idle queue was
/// once re-checked at, far over a wake-up's round trips on a loaded machine.
const PROMPT: Duration = Duration::from_millis(400);

/// A worker on `MANY` queues whose handler records when each job (by payload) started.
fn many_queue_worker(
    client: &ostq::Client,
) -> (common::Running, Arc<Mutex<HashMap<String, Instant>>>) {
    let started = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
    let seen = started.clone();
    let mut builder = Worker::builder(client.clone());
    for i in 0..MANY {
        builder = builder.queue(&format!("q{i}"));
    }
    let running = spawn(
        builder
            .handler(move |job: Job| {
                let payload = String::from_utf8_lossy(&job.payload).into_owned();
                seen.lock().unwrap().insert(payload, Instant::now());
                async { Ok::<_, BoxError>(()) }
            })
            .build()
            .unwrap(),
    );
    (running, started)
}

/// Waits until the job with `payload` started; how long after `since`.
async fn started_after(
    started: &Arc<Mutex<HashMap<String, Instant>>>,
    payload: &str,
    since: Instant,
) -> Duration {
    let ok = common::wait_until(Duration::from_secs(5), || async {
        started.lock().unwrap().contains_key(payload)
    })
    .await;
    assert!(ok, "job {payload} did not start");
    started.lock().unwrap()[payload].saturating_duration_since(since)
}

/// Connections opened and commands per second (scripts' inner commands included) over `window`,
/// with the commands by name; less what the measure itself sends (two `INFO` commands and
/// connections after the first `stats`, and the second `stats`).
async fn idle_cost(server: &RedisServer, window: Duration) -> (u64, f64, Vec<(String, u64)>) {
    let (connections, commands) = stats(server);
    let calls = command_calls(server);
    tokio::time::sleep(window).await;
    let (connections_after, commands_after) = stats(server);
    let calls_after = command_calls(server);
    let opened = connections_after - connections - 2;
    let sent = commands_after - commands - 2;
    let mut by_name: Vec<_> = calls_after
        .iter()
        .map(|(name, n)| (name.clone(), n - calls.get(name).copied().unwrap_or(0)))
        .filter(|(name, n)| *n > 0 && name != "info")
        .collect();
    by_name.sort();
    (opened, sent as f64 / window.as_secs_f64(), by_name)
}

/// One queue: the wait and the fetch behind it are pipelined (design §7.2); the wait lasts until
/// the queue's deadline, so this worker too is down to its heartbeat (17 commands/s before).
#[tokio::test]
async fn an_idle_worker_on_one_queue_sends_at_most_two_commands_a_second() {
    let (server, client) = setup().await;
    let running = spawn(
        Worker::builder(client.clone())
            .queue("solo")
            .handler(|_job: Job| async { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (opened, per_second, by_name) = idle_cost(&server, Duration::from_secs(5)).await;
    eprintln!(
        "idle on one queue: {opened} connections opened, {per_second:.2} commands/s: {by_name:?}"
    );
    assert_eq!(opened, 0, "an idle worker opened {opened} connections");
    assert!(per_second <= 2.0, "{per_second:.2} commands/s: {by_name:?}");
    let pushed = Instant::now();
    client.queue("solo").push(b"x".as_slice()).await.unwrap();
    let ran = common::wait_until(Duration::from_secs(5), || async {
        client.queue("solo").counts().await.unwrap().processed_total == 1
    })
    .await;
    assert!(ran, "the job pushed onto the idle queue did not run");
    eprintln!("pushed -> processed {:?}", pushed.elapsed());
    running.shutdown().await;
}

#[tokio::test]
async fn an_idle_worker_on_fifty_queues_sends_at_most_two_commands_a_second() {
    let (server, client) = setup().await;
    let (running, started) = many_queue_worker(&client);
    // Past the start: every queue fetched once and waiting on its own connection.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (opened, per_second, by_name) = idle_cost(&server, Duration::from_secs(10)).await;
    eprintln!(
        "idle on {MANY} queues: {opened} connections opened, {per_second:.2} commands/s (script \
         inner commands included): {by_name:?}"
    );
    assert_eq!(opened, 0, "an idle worker opened {opened} connections");
    assert!(
        per_second <= 2.0,
        "an idle worker on {MANY} queues sent {per_second:.2} commands/s: {by_name:?}"
    );

    // Still watching every queue, each path that makes a job ready wakes it promptly.
    let mut late = Vec::new();
    let plain = Instant::now();
    client.queue("q49").push(b"plain".as_slice()).await.unwrap();
    late.push(("plain", started_after(&started, "plain", plain).await));

    let prioritized = Instant::now();
    client
        .queue("q31")
        .push_with(b"prioritized".as_slice(), &PushOptions::new().priority(5))
        .await
        .unwrap();
    late.push((
        "prioritized",
        started_after(&started, "prioritized", prioritized).await,
    ));

    // Due in 1.5 s: not run before, and promptly at its time.
    let due = Instant::now() + Duration::from_millis(1500);
    client
        .queue("q7")
        .push_with(
            b"delayed".as_slice(),
            &PushOptions::new().delay(Duration::from_millis(1500)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !started.lock().unwrap().contains_key("delayed"),
        "the delayed job ran early"
    );
    late.push(("delayed", started_after(&started, "delayed", due).await));

    // Scheduled for in an hour, then run now by an operator (enqueue_now.lua), at priority 3.
    let queue = client.queue("q22");
    let id = queue
        .push_with(
            b"retry_now".as_slice(),
            &PushOptions::new()
                .run_at(SystemTime::now() + Duration::from_secs(3600))
                .priority(3),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = Instant::now();
    assert_eq!(queue.retry_now(&[id.as_str()]).await.unwrap(), 1);
    late.push(("retry_now", started_after(&started, "retry_now", now).await));

    eprintln!("push -> start: {late:?}");
    for (path, after) in late {
        assert!(
            after < PROMPT,
            "the {path} job started {after:?} after it was ready"
        );
    }
    running.shutdown().await;
}

/// A worker that leased a job and died leaves a lease group nobody renews. An idle worker waits
/// until the earliest lease deadline it saw at its last fetch; a group created after that fetch
/// must wake it (fetch.lua pushes the wake marker for a group due before every other), or it is
/// recovered only at the next safety re-check, minutes later.
#[tokio::test]
async fn an_idle_worker_recovers_a_crashed_workers_lease_when_it_expires() {
    let (server, client) = setup().await;
    let (running, started) = many_queue_worker(&client);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The crashed worker's fetch, in one transaction with the push so that the idle worker's
    // wait never sees the job: fetch.lua called as a worker would, with a 1.5 s lease, and never
    // renewed.
    let keys = ostq::keys::QueueKeys::new("q13").unwrap();
    let redis = redis::Client::open(server.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let mut fetch = redis::cmd("EVAL");
    fetch
        .arg(ostq::scripts::FETCH)
        .arg(keys.fetch_keys().len())
        .arg(&keys.fetch_keys()[..]);
    fetch
        .arg(&keys.prefix)
        .arg(&["1", "1500", "3", "10000", "1000000", "1000000", "12345"][..]);
    let (_, leased): (i64, redis::Value) = redis::pipe()
        .atomic()
        .lpush(&keys.pending, "orphan")
        .add_command(fetch)
        .query_async(&mut conn)
        .await
        .unwrap();
    let expires = Instant::now() + Duration::from_millis(1500);
    assert!(
        format!("{leased:?}").contains("12345"),
        "the crashed worker leased nothing: {leased:?}"
    );
    let after = started_after(&started, "orphan", expires).await;
    eprintln!("recovered {after:?} after the lease expired");
    assert!(
        after < PROMPT,
        "recovered {after:?} after the lease expired"
    );
    running.shutdown().await;
}

/// A worker serving one queue waits with its next fetch pipelined behind the wait; the wait now
/// lasts until the queue's next deadline (up to a minute and more), so a stop must end it (a wake
/// marker) instead of waiting it out, and the marker must not be left behind.
#[tokio::test]
async fn an_idle_single_queue_worker_stops_promptly() {
    let (_server, client) = setup().await;
    let running = spawn(
        Worker::builder(client.clone())
            .queue("solo")
            .handler(|_job: Job| async { Ok::<_, BoxError>(()) })
            .build()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopping = Instant::now();
    running.shutdown().await;
    let took = stopping.elapsed();
    eprintln!("an idle single-queue worker stopped in {took:?}");
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    let counts = client.queue("solo").counts().await.unwrap();
    assert_eq!((counts.pending, counts.active), (0, 0), "{counts:?}");
}

/// Redis restarts under an idle worker: every wait it had in flight fails with its connection,
/// and a failed wait leads to a fetch of its queue, then a new wait: a job pushed afterwards
/// onto any queue starts promptly, not at the next safety re-check.
#[tokio::test]
async fn an_idle_worker_waits_again_after_redis_restarts() {
    let (mut server, client) = setup().await;
    let (running, started) = many_queue_worker(&client);
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().unwrap();
    // Reconnected and waiting again (the fetch loop backs off while Redis is away).
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["q0", "q25", "q49"] {
        let pushed = Instant::now();
        client.queue(name).push(name.as_bytes()).await.unwrap();
        let after = started_after(&started, name, pushed).await;
        assert!(
            after < PROMPT,
            "the job pushed onto {name} started after {after:?}"
        );
    }
    running.shutdown().await;
}

/// The other ways a job becomes ready on an idle worker's queue: a retry coming due (fail.lua
/// pushes the wake marker when the retry is due before every other timed job of the queue), and a
/// resume: a paused queue's list is not watched (it may be full), its `resumed` list is, which
/// `Queue::resume` pushes onto. Paused queues cost an idle worker nothing either (each was
/// fetched every second before).
#[tokio::test]
async fn a_retry_comes_due_and_a_resumed_queue_runs_on_an_idle_worker_of_fifty_queues() {
    let (server, client) = setup().await;
    for i in 40..MANY {
        client.queue(&format!("q{i}")).pause().await.unwrap();
    }
    client
        .queue("q40")
        .push(b"paused".as_slice())
        .await
        .unwrap();
    let starts = Arc::new(Mutex::new(HashMap::<String, Vec<Instant>>::new()));
    let seen = starts.clone();
    let mut builder = Worker::builder(client.clone())
        .retry(ostq::RetryPolicy::fixed(Duration::from_millis(1500)));
    for i in 0..MANY {
        builder = builder.queue(&format!("q{i}"));
    }
    let running = spawn(
        builder
            .handler(move |job: Job| {
                let payload = String::from_utf8_lossy(&job.payload).into_owned();
                let first = job.attempt <= 1;
                seen.lock()
                    .unwrap()
                    .entry(payload)
                    .or_default()
                    .push(Instant::now());
                async move {
                    if first {
                        Err::<(), BoxError>("fails once".into())
                    } else {
                        Ok(())
                    }
                }
            })
            .build()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (opened, per_second, by_name) = idle_cost(&server, Duration::from_secs(5)).await;
    eprintln!(
        "idle on {MANY} queues, 10 paused: {opened} connections opened, {per_second:.2} \
         commands/s: {by_name:?}"
    );
    assert_eq!(opened, 0, "an idle worker opened {opened} connections");
    assert!(per_second <= 2.0, "{per_second:.2} commands/s: {by_name:?}");
    assert!(
        !starts.lock().unwrap().contains_key("paused"),
        "a paused queue ran a job"
    );

    client.queue("q5").push(b"retry".as_slice()).await.unwrap();
    let ran_twice = common::wait_until(Duration::from_secs(5), || async {
        starts
            .lock()
            .unwrap()
            .get("retry")
            .is_some_and(|s| s.len() == 2)
    })
    .await;
    assert!(
        ran_twice,
        "the retry did not run: {:?}",
        starts.lock().unwrap()
    );
    let gap = {
        let starts = starts.lock().unwrap();
        starts["retry"][1] - starts["retry"][0]
    };
    eprintln!("retry due after 1.5 s ran after {gap:?}");
    assert!(
        gap >= Duration::from_millis(1500) && gap < Duration::from_millis(1500) + PROMPT,
        "the retry due after 1.5 s ran after {gap:?}"
    );

    let queue = client.queue("q40");
    assert!(
        !starts.lock().unwrap().contains_key("paused"),
        "a paused queue ran a job"
    );
    let resumed = Instant::now();
    queue.resume().await.unwrap();
    let ok = common::wait_until(Duration::from_secs(5), || async {
        starts.lock().unwrap().contains_key("paused")
    })
    .await;
    assert!(ok, "the resumed queue's job did not run");
    let after = starts.lock().unwrap()["paused"][0] - resumed;
    eprintln!("resumed queue's job started {after:?} after the resume");
    assert!(
        after < PROMPT,
        "the resumed queue's job started {after:?} after the resume"
    );
    // Paused again and resumed again: the worker waits on the right list each time.
    queue.pause().await.unwrap();
    queue.push(b"paused again".as_slice()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !starts.lock().unwrap().contains_key("paused again"),
        "a paused queue ran a job"
    );
    let resumed = Instant::now();
    queue.resume().await.unwrap();
    let ok = common::wait_until(Duration::from_secs(5), || async {
        starts.lock().unwrap().contains_key("paused again")
    })
    .await;
    assert!(ok, "the job of the queue resumed again did not run");
    let after = starts.lock().unwrap()["paused again"][0] - resumed;
    eprintln!("resumed again: started {after:?} after the resume");
    assert!(after < PROMPT, "started {after:?} after the second resume");
    running.shutdown().await;
}
