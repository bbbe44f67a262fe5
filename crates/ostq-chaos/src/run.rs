//! `ostq-chaos run`: the orchestrator.
//!
//! The run feeds good jobs at a steady pace (so that jobs are in flight whenever a fault strikes,
//! whatever N is), mixes the malformed entries in proportionally, and injects the faults:
//! - a SIGKILL of a random worker every `--kill-every` seconds (2 s), with a replacement started
//!   at once, until every good job is recorded;
//! - `CLIENT KILL TYPE normal` once a quarter of the jobs are pushed;
//! - `DEBUG SLEEP 2` at half;
//! - `SHUTDOWN` and a restart on the same AOF at three quarters.
//!
//! It ends when every good job is recorded as completed and the queue is empty (nothing pending,
//! active or waiting for a retry), or at the timeout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ostq::envelope::Envelope;
use ostq::{JobInfo, JobState, PushOptions, Queue, QueueCounts};
use serde_json::json;

use crate::bad::{self, BadEntry};
use crate::execlog::ExecLogs;
use crate::procs::{RedisProc, Workers};
use crate::worker::Chaos;

/// How often the run looks at the logs, feeds jobs and checks the queue.
const TICK: Duration = Duration::from_millis(100);
/// Jobs per bulk push (one `LPUSH`).
const PUSH_CHUNK: usize = 1000;
/// Worker concurrency (must match the worker's default): sizes the backlog kept in the queue.
const WORKER_CONCURRENCY: u64 = 32;
/// A duplicate counts as caused by a SIGKILL when the worker that ran the job before was killed
/// within this long after completing it (the lease, plus a second for the ack).
const DUPLICATE_WINDOW_MS: u64 = 3000;
/// With every good job done and nothing pending, active or in retry for this long, the run ends
/// even if some malformed entry is not in the dead set (it would then be reported missing).
const QUIET_END: Duration = Duration::from_secs(5);

/// Options of `ostq-chaos run`.
#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// Good jobs to push.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Worker processes running at once.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Feed the jobs over at least this many seconds, so that the faults hit a busy queue
    /// (the run lasts longer when the workers are slower than the feed).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Malformed entries to mix in.
    #[arg(long, default_value_t = 1000)]
    bad: usize,
    /// Seconds between two worker SIGKILLs.
    #[arg(long, default_value_t = 2.0)]
    kill_every: f64,
    /// Give up after this many seconds (the run then fails unless nothing is lost).
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// Keep the temporary directory (Redis data, execution logs, worker logs) after the run.
    #[arg(long)]
    keep: bool,
}

/// A fault injected once, at a fraction of the jobs pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ClientKill,
    Stall,
    Restart,
}

const FAULTS: [(f64, Fault); 3] = [
    (0.25, Fault::ClientKill),
    (0.50, Fault::Stall),
    (0.75, Fault::Restart),
];

/// Runs the suite; `Ok(true)` when nothing was lost and every malformed entry is dead.
pub(crate) async fn run(args: RunArgs) -> anyhow::Result<bool> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let tmp = tempfile::Builder::new().prefix("ostq-chaos-").tempdir()?;
    let result = run_in(&args, tmp.path()).await;
    let keep = args.keep || !matches!(result, Ok(true));
    if keep {
        let path = tmp.keep();
        eprintln!(
            "ostq-chaos: kept {} (redis/, logs/exec-*.log, logs/worker-*.err)",
            path.display()
        );
    }
    result
}

/// Everything that happened, for the summary.
#[derive(Default)]
struct Tally {
    kills: u64,
    in_flight_at_kills: u64,
    /// Killed worker → when (unix ms).
    killed_at: HashMap<u32, u64>,
    faults: Vec<serde_json::Value>,
    in_flight_at_other_faults: u64,
    redis_restarts: u64,
    redis_down_ms: u64,
    unexpected_worker_exits: u64,
    push_retries: u64,
}

async fn run_in(args: &RunArgs, dir: &Path) -> anyhow::Result<bool> {
    let started = Instant::now();
    let log_dir = dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut redis = RedisProc::start(&dir.join("redis")).await?;
    let url = redis.url();
    eprintln!(
        "ostq-chaos: redis-server at {url} (appendonly yes, appendfsync everysec), {} jobs, {} malformed entries, {} workers",
        args.jobs, args.bad, args.workers
    );
    let client = ostq::Client::connect(&url).await?;
    let queue = client.queue(crate::QUEUE);
    let bad_entries = bad::generate(args.bad);

    let mut workers = Workers::new(url.clone(), &log_dir)?;
    for _ in 0..args.workers {
        workers.spawn()?;
    }
    let mut logs = ExecLogs::new(&log_dir, args.jobs);
    let mut tally = Tally::default();

    let feed_ticks = (args.seconds.max(0.0) / TICK.as_secs_f64()).max(1.0);
    let chunk = ((args.jobs as f64 / feed_ticks).ceil() as u64).clamp(1, PUSH_CHUNK as u64);
    let backlog_cap = (chunk * 3).max(args.workers as u64 * WORKER_CONCURRENCY * 2);
    let kill_every = Duration::from_secs_f64(args.kill_every.max(0.1));
    let deadline = started + Duration::from_secs_f64(args.timeout.max(1.0));

    let mut released: u64 = 0;
    let mut bad_released: usize = 0;
    let mut next_fault = 0;
    let mut next_kill = Instant::now() + kill_every;
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut counts = QueueCounts::default();
    let mut quiet_since: Option<Instant> = None;
    let mut timed_out = false;
    let push_opts = PushOptions::new().name("chaos");

    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
        logs.poll().context("cannot read the execution logs")?;

        for (pid, status) in workers.reap() {
            tally.unexpected_worker_exits += 1;
            eprintln!("ostq-chaos: worker {pid} exited by itself ({status}); starting another");
            workers.spawn()?;
        }

        // Feed: a chunk per tick while the backlog is small.
        if released < args.jobs && released - logs.done.min(released) < backlog_cap {
            let upto = (released + chunk).min(args.jobs);
            let bad_upto = if upto == args.jobs {
                bad_entries.len()
            } else {
                (bad_entries.len() as u128 * upto as u128 / args.jobs as u128) as usize
            };
            let middle = released + (upto - released) / 2;
            tally.push_retries += push_good(&queue, released..middle, &push_opts).await?;
            tally.push_retries += push_bad(&redis, &bad_entries[bad_released..bad_upto]).await?;
            tally.push_retries += push_good(&queue, middle..upto, &push_opts).await?;
            released = upto;
            bad_released = bad_upto;
        }
        if args.jobs == 0 && bad_released < bad_entries.len() {
            tally.push_retries += push_bad(&redis, &bad_entries).await?;
            bad_released = bad_entries.len();
        }

        // The one-off faults, at a fraction of the jobs pushed.
        if let Some(&(at, fault)) = FAULTS.get(next_fault) {
            if released as f64 >= at * args.jobs as f64 {
                next_fault += 1;
                inject(fault, &mut redis, &queue, &mut tally, started).await?;
            }
        }

        // A SIGKILL every few seconds until every good job is recorded.
        if logs.done < args.jobs && Instant::now() >= next_kill {
            let active = read_counts(&queue)
                .await
                .map_or(counts.active, |c| c.active);
            if let Some(pid) = workers.kill_random() {
                let replacement = workers.spawn()?;
                tally.kills += 1;
                tally.in_flight_at_kills += active;
                tally.killed_at.insert(pid, unix_ms());
                eprintln!(
                    "ostq-chaos: [{:6.1}s] SIGKILL worker {pid} ({active} jobs active in the queue), started {replacement}",
                    started.elapsed().as_secs_f64()
                );
            }
            next_kill = Instant::now() + kill_every;
        }

        if let Ok(c) = read_counts(&queue).await {
            counts = c;
        }
        if Instant::now() >= next_report {
            eprintln!(
                "ostq-chaos: [{:6.1}s] pushed {released}/{} completed {} executions {} | pending {} active {} retry {} dead {} | kills {}",
                started.elapsed().as_secs_f64(),
                args.jobs,
                logs.done,
                logs.executions,
                counts.pending,
                counts.active,
                counts.retry,
                counts.dead,
                tally.kills
            );
            next_report = Instant::now() + Duration::from_secs(1);
        }

        let all_pushed = released == args.jobs && bad_released == bad_entries.len();
        let drained = counts.pending == 0 && counts.active == 0 && counts.retry == 0;
        if all_pushed && logs.done == args.jobs && drained {
            if counts.dead >= bad_entries.len() as u64 && next_fault >= FAULTS.len() {
                break;
            }
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= QUIET_END {
                break;
            }
        } else {
            quiet_since = None;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            eprintln!("ostq-chaos: timed out after {:.0} s", args.timeout);
            break;
        }
    }

    // Freeze: no worker runs any more, then read everything once more.
    workers.kill_all();
    logs.poll()?;
    let counts = read_counts(&queue).await?;
    let dead = read_dead(&queue).await?;
    let report = bad::account(&bad_entries, &dead);
    let missing = logs.missing();
    let good_dead = dead.iter().filter(|j| is_good_job(j, args.jobs)).count();

    let mut duplicates = 0u64;
    let mut jobs_run_more_than_once = 0u64;
    let mut duplicates_after_kills = 0u64;
    for runs in &logs.runs {
        if runs.len() < 2 {
            continue;
        }
        jobs_run_more_than_once += 1;
        let mut runs = runs.clone();
        runs.sort_by_key(|r| r.at_ms);
        for pair in runs.windows(2) {
            duplicates += 1;
            // The earlier run's worker was SIGKILLed soon after it completed the job, before its
            // ack was written (or while it still waited to be written).
            let earlier = pair[0];
            let killed = tally.killed_at.get(&earlier.pid).is_some_and(|&at| {
                at + 50 >= earlier.at_ms && at <= earlier.at_ms + DUPLICATE_WINDOW_MS
            });
            if killed {
                duplicates_after_kills += 1;
            }
        }
    }
    let stray_records = count_keys(&redis, &format!("ostq:{{{}}}:job:*", crate::QUEUE)).await?;

    if !missing.is_empty() {
        eprintln!(
            "ostq-chaos: LOST {} good jobs (never recorded as completed), first: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        locate(&redis, &missing[..missing.len().min(20)]).await;
    }
    for (kind, bytes) in report.missing.iter().take(10) {
        eprintln!(
            "ostq-chaos: malformed entry not in the dead set: {} {:?}",
            kind.as_str(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
    }
    for (kind, reason) in &report.reasons {
        eprintln!("ostq-chaos: dead reason for {kind}: {reason}");
    }
    let workers_started = workers.started();
    drop(workers);
    drop(redis);

    let lost = missing.len() as u64;
    let ok = lost == 0 && report.found == bad_entries.len();
    let summary = json!({
        "ok": ok,
        "jobs": args.jobs,
        "lost": lost,
        "duplicates": duplicates,
        "jobs_run_more_than_once": jobs_run_more_than_once,
        "duplicates_after_kills": duplicates_after_kills,
        "duplicates_after_other_faults": duplicates - duplicates_after_kills,
        "executions": logs.executions,
        "kills": tally.kills,
        "in_flight_at_kills": tally.in_flight_at_kills,
        "in_flight_at_other_faults": tally.in_flight_at_other_faults,
        "faults": tally.faults,
        "redis_restarts": tally.redis_restarts,
        "redis_down_ms": tally.redis_down_ms,
        "bad_inputs": bad_entries.len(),
        "bad_inputs_dead": report.found,
        "bad_inputs_dead_by_kind": report.by_kind,
        "good_jobs_dead": good_dead,
        "dead_total": counts.dead,
        "recovered_total": counts.recovered_total,
        "failed_total": counts.failed_total,
        "processed_total": counts.processed_total,
        "stray_status_records": stray_records,
        "workers": args.workers,
        "workers_started": workers_started,
        "unexpected_worker_exits": tally.unexpected_worker_exits,
        "push_retries": tally.push_retries,
        "bad_log_lines": logs.bad_lines,
        "timed_out": timed_out,
        "elapsed_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{summary}");
    Ok(ok)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A dead job that is one of the good ones (it would also count as lost).
fn is_good_job(job: &JobInfo, jobs: u64) -> bool {
    job.name.as_deref() == Some("chaos")
        && job
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_slice::<Chaos>(p).ok())
            .is_some_and(|task| task.n < jobs && task.pad.is_empty())
}

async fn inject(
    fault: Fault,
    redis: &mut RedisProc,
    queue: &Queue,
    tally: &mut Tally,
    started: Instant,
) -> anyhow::Result<()> {
    let active = read_counts(queue).await.map_or(0, |c| c.active);
    tally.in_flight_at_other_faults += active;
    let at = started.elapsed().as_secs_f64();
    let (name, extra) = match fault {
        Fault::ClientKill => {
            let mut conn = redis.admin().await?;
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .query_async(&mut conn)
                .await?;
            eprintln!("ostq-chaos: [{at:6.1}s] CLIENT KILL TYPE normal: {killed} connections killed ({active} jobs active)");
            ("client_kill", json!({ "connections": killed }))
        }
        Fault::Stall => {
            let mut conn = redis.admin().await?;
            eprintln!("ostq-chaos: [{at:6.1}s] DEBUG SLEEP 2 ({active} jobs active)");
            let began = Instant::now();
            let _: () = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(2)
                .query_async(&mut conn)
                .await?;
            (
                "debug_sleep",
                json!({ "ms": began.elapsed().as_millis() as u64 }),
            )
        }
        Fault::Restart => {
            eprintln!("ostq-chaos: [{at:6.1}s] SHUTDOWN and restart of redis-server ({active} jobs active)");
            let down = redis.restart().await?;
            tally.redis_restarts += 1;
            tally.redis_down_ms += down.as_millis() as u64;
            eprintln!(
                "ostq-chaos: redis-server back after {} ms",
                down.as_millis()
            );
            (
                "redis_restart",
                json!({ "down_ms": down.as_millis() as u64 }),
            )
        }
    };
    let mut record = json!({ "fault": name, "at_s": (at * 10.0).round() / 10.0, "active": active });
    if let (Some(record), Some(extra)) = (record.as_object_mut(), extra.as_object()) {
        record.extend(extra.clone());
    }
    tally.faults.push(record);
    Ok(())
}

/// Pushes good jobs `range` as typed `chaos` jobs, one `LPUSH` per 1000; returns the retries.
async fn push_good(
    queue: &Queue,
    range: std::ops::Range<u64>,
    opts: &PushOptions,
) -> anyhow::Result<u64> {
    let payloads: Vec<Vec<u8>> = range
        .map(|n| {
            serde_json::to_vec(&Chaos {
                n,
                pad: String::new(),
            })
        })
        .collect::<Result<_, _>>()?;
    let mut retries = 0;
    for chunk in payloads.chunks(PUSH_CHUNK) {
        // A push that failed with a connection error may or may not have landed; pushing it again
        // may run some jobs twice (counted as duplicates), never zero times.
        retry(&mut retries, || queue.push_bulk_with(chunk.iter(), opts)).await?;
    }
    Ok(retries)
}

/// Pushes malformed entries by hand, as a foreign producer would; returns the retries.
async fn push_bad(redis: &RedisProc, entries: &[BadEntry]) -> anyhow::Result<u64> {
    let mut retries = 0;
    if entries.is_empty() {
        return Ok(0);
    }
    let key = format!("ostq:{{{}}}:pending", crate::QUEUE);
    retry(&mut retries, || async {
        let mut conn = redis.admin().await?;
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(&key);
        for entry in entries {
            cmd.arg(entry.bytes.as_slice());
        }
        let _: i64 = cmd.query_async(&mut conn).await?;
        anyhow::Ok(())
    })
    .await?;
    Ok(retries)
}

/// Runs `op` until it succeeds, for up to 30 s, counting the retries.
async fn retry<T, E, F, Fut>(retries: &mut u64, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < give_up => {
                *retries += 1;
                eprintln!("ostq-chaos: push failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("push failed for 30 s: {e}"),
        }
    }
}

/// The queue's counts, retried briefly (a fault may have just cut the connection).
async fn read_counts(queue: &Queue) -> anyhow::Result<QueueCounts> {
    let mut last = None;
    for _ in 0..50 {
        match queue.counts().await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match last {
        Some(e) => Err(e).context("cannot read the queue's counts"),
        None => bail!("cannot read the queue's counts"),
    }
}

/// The whole dead set.
async fn read_dead(queue: &Queue) -> anyhow::Result<Vec<JobInfo>> {
    let mut all = Vec::new();
    loop {
        let page = queue.jobs(JobState::Dead, all.len(), 1000).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

async fn count_keys(redis: &RedisProc, pattern: &str) -> anyhow::Result<u64> {
    let mut conn = redis.admin().await?;
    let mut cursor: u64 = 0;
    let mut total = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        total += keys.len() as u64;
        if next == 0 {
            return Ok(total);
        }
        cursor = next;
    }
}

/// For a lost job, says where its envelope is in Redis, if anywhere (stderr).
async fn locate(redis: &RedisProc, missing: &[u64]) {
    let Ok(mut conn) = redis.admin().await else {
        return;
    };
    let prefix = format!("ostq:{{{}}}:", crate::QUEUE);
    let mut places: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut look = |place: &str, env: &[u8]| {
        if let Ok(env) = Envelope::decode(env) {
            if let Ok(task) = serde_json::from_slice::<Chaos>(&env.payload) {
                if missing.contains(&task.n) {
                    places.entry(task.n).or_default().push(format!(
                        "{place} (id {}, attempt {}, error {:?})",
                        env.id, env.attempt, env.last_error
                    ));
                }
            }
        }
    };
    let pending: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(format!("{prefix}pending"))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for env in &pending {
        look("pending", env);
    }
    let jobs: Vec<Vec<u8>> = redis::cmd("HVALS")
        .arg(format!("{prefix}jobs"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for env in &jobs {
        look("jobs hash (retry/dead/scheduled)", env);
    }
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}lease:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    for lease in &leases {
        let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(lease)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        for env in &entries {
            look(lease, env);
        }
    }
    for n in missing {
        match places.get(n) {
            Some(found) => eprintln!("ostq-chaos: lost job {n} is in {}", found.join("; ")),
            None => eprintln!("ostq-chaos: lost job {n} is nowhere in Redis"),
        }
    }
}
