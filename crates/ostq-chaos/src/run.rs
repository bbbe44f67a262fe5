//! `ostq-chaos run`: the orchestrator.
//!
//! Each worker reaches Redis through a TCP proxy of its own (`ostq_testkit::Proxy`, owned by this
//! process) that adds latency (2 ms one way plus 0–1 ms of jitter by default); `--no-proxy`
//! connects the workers directly. The run feeds good jobs at a steady pace (so that jobs are in
//! flight whenever a fault strikes, whatever N is), a few long jobs among them (several lease
//! lengths each), mixes the malformed entries in proportionally, and injects the faults:
//! - a SIGKILL of a random worker every `--kill-every` seconds (2 s), with a replacement started
//!   at once, while short jobs remain;
//! - every `--drop-every` seconds (3 s) a random worker's proxy closes all its connections, and
//!   every `--stall-every` seconds (5 s) one stalls for `--stall-ms` (500 ms);
//! - `CLIENT KILL TYPE normal` once a quarter of the jobs are pushed;
//! - `DEBUG SLEEP 2` at half;
//! - `SHUTDOWN` and a restart on the same AOF at three quarters.
//!
//! `--stream` keeps the workers saturated instead (a backlog topped up every tick) at a
//! concurrency of 128 and a lease of 1 s, with 30 long jobs of 4 s, and moves the Redis-wide
//! faults to 80, 87 and 94 % of the jobs completed.
//!
//! When there are long jobs, the first worker is *healthy*: never killed, never given proxy faults
//! (it keeps the latency), so that its long jobs run beside a steady stream of short ones with
//! nothing to excuse a lost lease.
//!
//! It ends when every good job is recorded as completed and the queue is empty (nothing pending,
//! active or waiting for a retry), or at the timeout. Then every duplicate execution is explained
//! (its earlier execution's worker was SIGKILLed, or a fault hit that worker or Redis while the
//! earlier execution held its lease, or a push was retried) or reported unexplained, which fails
//! the run. Faults include what the workers report themselves (their lease keeper failing to write,
//! their runtime held up) and stretches when this process was held up (a busy machine).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ostq::envelope::Envelope;
use ostq::keys::QueueKeys;
use ostq::{JobInfo, JobState, PushOptions, Queue, QueueCounts};
use ostq_testkit::{RedisServer, Reply};
use serde_json::json;

use crate::admin;
use crate::bad::{self, BadEntry};
use crate::execlog::{ExecLogs, Run};
use crate::procs::{RedisPath, Workers};
use crate::worker::Chaos;

/// How often the run looks at the logs, feeds jobs and checks the queue.
const TICK: Duration = Duration::from_millis(100);
/// Jobs per bulk push (one `LPUSH`).
const PUSH_CHUNK: usize = 1000;
/// How long a fault's direct effect outlasts it: reconnecting and the lease keeper's first retry
/// (50 ms). Longer effects (a keeper that keeps failing to write, renewing nothing meanwhile) are
/// read from the worker's own log.
const FAULT_AFTERMATH_MS: u64 = 250;
/// How much longer than a tick the run's loop must sleep to count as a stall of the machine.
const HOST_STALL: Duration = Duration::from_millis(300);
/// Tolerance when comparing times taken by different processes (the same clock, but each records
/// a moment a little after the event).
const CLOCK_SLACK_MS: u64 = 50;
/// Unexplained duplicates printed to stderr and listed in the summary.
const EXAMPLES: usize = 10;
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
    /// Skip the one-off Redis faults (connection kill, stall, restart).
    #[arg(long)]
    no_redis_faults: bool,
    /// Connect the workers straight to Redis, without the fault proxy (then no latency, no proxy
    /// drops, no stalls).
    #[arg(long)]
    no_proxy: bool,
    /// One-way latency the proxies add, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    latency_ms: f64,
    /// Random extra latency, 0 to this many milliseconds per chunk of bytes.
    #[arg(long, default_value_t = 1.0)]
    jitter_ms: f64,
    /// Seconds between two proxy connection drops (of one random worker; 0: never).
    #[arg(long, default_value_t = 3.0)]
    drop_every: f64,
    /// Seconds between two proxy stalls (of one random worker; 0: never).
    #[arg(long, default_value_t = 5.0)]
    stall_every: f64,
    /// How long a proxy stall lasts, in milliseconds.
    #[arg(long, default_value_t = 500)]
    stall_ms: u64,
    /// The high-rate preset: keeps a backlog that saturates the workers (as fast as they go,
    /// whatever --seconds says), and changes the defaults of the options below to concurrency
    /// 128, lease 1 s, short jobs of 0–20 ms, and 30 long jobs of 4 s; the Redis-wide faults
    /// come at 80, 87 and 94 % of the jobs completed.
    #[arg(long)]
    stream: bool,
    /// Handlers per worker [default: 32; --stream: 128].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Lease length of the workers, in milliseconds [default: 2000; --stream: 1000].
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Shortest short job, in milliseconds [default: 0].
    #[arg(long)]
    min_job_ms: Option<u64>,
    /// Longest short job, in milliseconds [default: 20].
    #[arg(long)]
    max_job_ms: Option<u64>,
    /// Long jobs among the good jobs, spread evenly over the feed [default: 20; --stream: 30].
    #[arg(long)]
    long_jobs: Option<u64>,
    /// How long a long job runs, in milliseconds [default: 5000; --stream: 4000].
    #[arg(long)]
    long_ms: Option<u64>,
}

/// The workload, with the presets applied.
#[derive(Debug, Clone, Copy)]
struct Workload {
    concurrency: usize,
    lease_ms: u64,
    min_job_ms: u64,
    max_job_ms: u64,
    long_jobs: u64,
    long_ms: u64,
}

impl RunArgs {
    fn workload(&self) -> Workload {
        let stream = self.stream;
        let pick = |value: Option<u64>, plain: u64, preset: u64| {
            value.unwrap_or(if stream { preset } else { plain })
        };
        let min_job_ms = pick(self.min_job_ms, 0, 0);
        Workload {
            concurrency: self
                .concurrency
                .unwrap_or(if stream { 128 } else { 32 })
                .max(1),
            lease_ms: pick(self.lease_ms, 2000, 1000).max(100),
            min_job_ms,
            max_job_ms: pick(self.max_job_ms, 20, 20).max(min_job_ms),
            long_jobs: pick(self.long_jobs, 20, 30).min(self.jobs),
            long_ms: pick(self.long_ms, 5000, 4000),
        }
    }
}

impl Workload {
    /// Whether good job `n` (of `jobs`) is one of the long ones: evenly spread, the first half a
    /// stride in.
    fn is_long(&self, n: u64, jobs: u64) -> bool {
        if self.long_jobs == 0 {
            return false;
        }
        let stride = (jobs / self.long_jobs).max(1);
        n % stride == stride / 2 && n / stride < self.long_jobs
    }
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

/// With --stream, the same faults come late: Redis-wide faults excuse every lost lease on every
/// worker, and a run of a few seconds needs a clean stretch for the healthy worker first.
const STREAM_FAULTS: [(f64, Fault); 3] = [
    (0.80, Fault::ClientKill),
    (0.87, Fault::Stall),
    (0.94, Fault::Restart),
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

/// A stretch of time (unix ms) when a fault hit one worker (`pid`) or all of them (`None`).
#[derive(Debug, Clone, Copy)]
struct Window {
    /// What it was: `proxy_drop`, `client_kill`, `keeper_stuck`, ...
    kind: &'static str,
    pid: Option<u32>,
    from_ms: u64,
    to_ms: u64,
}

/// Everything that happened, for the summary.
#[derive(Default)]
struct Tally {
    kills: u64,
    in_flight_at_kills: u64,
    /// Killed worker → when (unix ms).
    killed_at: HashMap<u32, u64>,
    /// When faults hit which workers (kills aside).
    windows: Vec<Window>,
    proxy_drops: u64,
    proxy_stalls: u64,
    /// Ticks of the run's loop that overslept by `HOST_STALL` or more, and by how much in all.
    host_stalls: u64,
    host_stall_ms: u64,
    faults: Vec<serde_json::Value>,
    in_flight_at_other_faults: u64,
    redis_restarts: u64,
    redis_down_ms: u64,
    unexpected_worker_exits: u64,
    push_retries: u64,
}

async fn run_in(args: &RunArgs, dir: &Path) -> anyhow::Result<bool> {
    let started = Instant::now();
    let work = args.workload();
    let log_dir = dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut redis = admin::start(dir.join("redis")).await?;
    let keys = QueueKeys::new(crate::QUEUE)?;
    let url = redis.url();
    let path = if args.no_proxy {
        RedisPath::Direct
    } else {
        RedisPath::Proxy {
            latency: Duration::from_secs_f64(args.latency_ms.max(0.0) / 1000.0),
            jitter: Duration::from_secs_f64(args.jitter_ms.max(0.0) / 1000.0),
        }
    };
    eprintln!(
        "ostq-chaos: redis-server at {url} (appendonly yes, appendfsync everysec), {} jobs ({} of them long: {} ms), {} malformed entries, {} workers (concurrency {}, lease {} ms, jobs {}..={} ms), {}",
        args.jobs,
        work.long_jobs,
        work.long_ms,
        args.bad,
        args.workers,
        work.concurrency,
        work.lease_ms,
        work.min_job_ms,
        work.max_job_ms,
        match path {
            RedisPath::Direct => "no proxy".to_string(),
            RedisPath::Proxy { .. } => format!(
                "each through a proxy (latency {} ms + 0..={} ms jitter, a drop every {} s, a {} ms stall every {} s)",
                args.latency_ms, args.jitter_ms, args.drop_every, args.stall_ms, args.stall_every
            ),
        }
    );
    let client = ostq::Client::connect(&url).await?;
    let queue = client.queue(crate::QUEUE);
    let bad_entries = bad::generate(args.bad);

    let worker_args = vec![
        "--concurrency".to_string(),
        work.concurrency.to_string(),
        "--lease-ms".to_string(),
        work.lease_ms.to_string(),
        "--min-sleep-ms".to_string(),
        work.min_job_ms.to_string(),
        "--max-sleep-ms".to_string(),
        work.max_job_ms.to_string(),
    ];
    let mut workers = Workers::new(redis.port(), path, worker_args, &log_dir)?;
    // With long jobs, the first worker is the healthy one.
    let mut healthy_pid = None;
    for i in 0..args.workers {
        let healthy = i == 0 && work.long_jobs > 0;
        let pid = workers.spawn(healthy)?;
        if healthy {
            healthy_pid = Some(pid);
            eprintln!("ostq-chaos: worker {pid} is the healthy one: never killed, no proxy faults");
        }
    }
    eprintln!(
        "ostq-chaos: [{:6.1}s] {} workers started",
        started.elapsed().as_secs_f64(),
        args.workers
    );
    let mut logs = ExecLogs::new(&log_dir, args.jobs);
    let mut tally = Tally::default();

    let feed_ticks = (args.seconds.max(0.0) / TICK.as_secs_f64()).max(1.0);
    let paced = ((args.jobs as f64 / feed_ticks).ceil() as u64).clamp(1, PUSH_CHUNK as u64);
    let backlog_cap = (paced * 3).max(args.workers as u64 * work.concurrency as u64 * 2);
    // --stream keeps the workers saturated: the backlog is topped up every tick, so that each
    // worker's outcomes flow without a pause (a paced feed leaves gaps between ticks).
    let chunk = if args.stream { backlog_cap } else { paced };
    let kill_every = Duration::from_secs_f64(args.kill_every.max(0.1));
    let every = |seconds: f64| (seconds > 0.0).then(|| Duration::from_secs_f64(seconds.max(0.1)));
    let (drop_every, stall_every) = match path {
        RedisPath::Direct => (None, None),
        RedisPath::Proxy { .. } => (every(args.drop_every), every(args.stall_every)),
    };
    let stall = Duration::from_millis(args.stall_ms);
    let deadline = started + Duration::from_secs_f64(args.timeout.max(1.0));

    let mut released: u64 = 0;
    let mut bad_released: usize = 0;
    let mut next_fault = 0;
    let faults: &[(f64, Fault)] = match (args.no_redis_faults, args.stream) {
        (true, _) => &[],
        (false, false) => &FAULTS,
        (false, true) => &STREAM_FAULTS,
    };
    let mut next_kill = Instant::now() + kill_every;
    let mut next_drop = drop_every.map(|every| Instant::now() + every);
    let mut next_stall = stall_every.map(|every| Instant::now() + every);
    let mut next_report = Instant::now() + Duration::from_secs(1);
    let mut counts = QueueCounts::default();
    let mut quiet_since: Option<Instant> = None;
    let mut timed_out = false;
    let push_opts = PushOptions::new().name("chaos");

    loop {
        let asleep_at = Instant::now();
        let asleep_ms = unix_ms();
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
        // A tick that overslept a lot means this machine held the processes up (the workers
        // likely too): leases may expire for that alone, so it counts as a fault for everyone.
        let overslept = asleep_at.elapsed().saturating_sub(TICK);
        if overslept >= HOST_STALL {
            tally.host_stalls += 1;
            tally.host_stall_ms += overslept.as_millis() as u64;
            tally.windows.push(Window {
                kind: "host_stall",
                pid: None,
                from_ms: asleep_ms + TICK.as_millis() as u64,
                to_ms: unix_ms(),
            });
            eprintln!(
                "ostq-chaos: [{:6.1}s] this process was held up {} ms (machine busy?): counted as a fault",
                started.elapsed().as_secs_f64(),
                overslept.as_millis()
            );
        }
        logs.poll().context("cannot read the execution logs")?;

        for (pid, status, healthy) in workers.reap() {
            tally.unexpected_worker_exits += 1;
            eprintln!("ostq-chaos: worker {pid} exited by itself ({status}); starting another");
            let replacement = workers.spawn(healthy)?;
            if healthy {
                healthy_pid = Some(replacement);
            }
        }

        // Feed: a chunk per tick while the backlog is small.
        if released < args.jobs && released - logs.done.min(released) < backlog_cap {
            let backlog = released - logs.done.min(released);
            let upto = (released + chunk.min(backlog_cap - backlog)).min(args.jobs);
            let bad_upto = if upto == args.jobs {
                bad_entries.len()
            } else {
                (bad_entries.len() as u128 * upto as u128 / args.jobs as u128) as usize
            };
            let middle = released + (upto - released) / 2;
            tally.push_retries +=
                push_good(&queue, released..middle, &push_opts, &work, args.jobs).await?;
            tally.push_retries +=
                push_bad(redis.port(), &keys, &bad_entries[bad_released..bad_upto]).await?;
            tally.push_retries +=
                push_good(&queue, middle..upto, &push_opts, &work, args.jobs).await?;
            released = upto;
            bad_released = bad_upto;
        }
        if args.jobs == 0 && bad_released < bad_entries.len() {
            tally.push_retries += push_bad(redis.port(), &keys, &bad_entries).await?;
            bad_released = bad_entries.len();
        }

        // The one-off faults, at a fraction of the jobs pushed (completed with --stream, whose
        // feed runs far ahead of the workers).
        let progress = if args.stream { logs.done } else { released };
        if let Some(&(at, fault)) = faults.get(next_fault) {
            if progress as f64 >= at * args.jobs as f64 {
                next_fault += 1;
                inject(fault, &mut redis, &queue, &mut tally, started).await?;
            }
        }

        // A SIGKILL every few seconds until every good job is recorded.
        // Kills and proxy faults go on while short jobs remain: once only (some of) the long ones
        // are left, they would mostly keep killing those, for nothing but a longer run.
        let chaos_on = logs.done + work.long_jobs < args.jobs || released < args.jobs;
        if chaos_on && Instant::now() >= next_kill {
            let active = read_counts(&queue)
                .await
                .map_or(counts.active, |c| c.active);
            if let Some(pid) = workers.kill_random() {
                let replacement = workers.spawn(false)?;
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

        // Proxy faults, each on one random worker that is not the healthy one.
        if let (Some(at), Some(every)) = (next_drop, drop_every) {
            if chaos_on && Instant::now() >= at {
                if let Some((pid, proxy)) = workers.fault_victim() {
                    proxy.drop_connections();
                    let now = unix_ms();
                    tally.proxy_drops += 1;
                    tally.windows.push(Window {
                        kind: "proxy_drop",
                        pid: Some(pid),
                        from_ms: now,
                        to_ms: now,
                    });
                    eprintln!(
                        "ostq-chaos: [{:6.1}s] proxy of worker {pid}: connections dropped",
                        started.elapsed().as_secs_f64()
                    );
                }
                next_drop = Some(Instant::now() + every);
            }
        }
        if let (Some(at), Some(every)) = (next_stall, stall_every) {
            if chaos_on && Instant::now() >= at {
                if let Some((pid, proxy)) = workers.fault_victim() {
                    proxy.set_stalled(true);
                    let now = unix_ms();
                    tally.proxy_stalls += 1;
                    tally.windows.push(Window {
                        kind: "proxy_stall",
                        pid: Some(pid),
                        from_ms: now,
                        to_ms: now + stall.as_millis() as u64,
                    });
                    eprintln!(
                        "ostq-chaos: [{:6.1}s] proxy of worker {pid}: stalled for {} ms",
                        started.elapsed().as_secs_f64(),
                        stall.as_millis()
                    );
                    tokio::spawn(async move {
                        tokio::time::sleep(stall).await;
                        proxy.set_stalled(false);
                    });
                }
                next_stall = Some(Instant::now() + every);
            }
        }

        if let Ok(c) = read_counts(&queue).await {
            counts = c;
        }
        if Instant::now() >= next_report {
            eprintln!(
                "ostq-chaos: [{:6.1}s] pushed {released}/{} completed {} executions {} | pending {} active {} retry {} dead {} | kills {} proxy drops {} stalls {}",
                started.elapsed().as_secs_f64(),
                args.jobs,
                logs.done,
                logs.executions,
                counts.pending,
                counts.active,
                counts.retry,
                counts.dead,
                tally.kills,
                tally.proxy_drops,
                tally.proxy_stalls
            );
            next_report = Instant::now() + Duration::from_secs(1);
        }

        let all_pushed = released == args.jobs && bad_released == bad_entries.len();
        let drained = counts.pending == 0 && counts.active == 0 && counts.retry == 0;
        if all_pushed && logs.done == args.jobs && drained {
            if counts.dead >= bad_entries.len() as u64 && next_fault >= faults.len() {
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
    let proxy_connections = workers.proxy_connections();
    workers.kill_all();
    logs.poll()?;
    let counts = read_counts(&queue).await?;
    let dead = read_dead(&queue).await?;
    let report = bad::account(&bad_entries, &dead);
    let missing = logs.missing();
    let good_dead = dead.iter().filter(|j| is_good_job(j, args.jobs)).count();

    let evidence = worker_log_evidence(&workers.all, work.lease_ms, &tally.killed_at);
    let verdicts = classify_duplicates(&logs, &tally, &evidence, &work, healthy_pid);
    for example in &verdicts.examples {
        eprintln!("ostq-chaos: UNEXPLAINED duplicate: {example}");
    }
    let stray_records = {
        let (port, pattern) = (redis.port(), keys.record("*"));
        tokio::task::spawn_blocking(move || admin::count_keys(port, &pattern)).await??
    };

    if !missing.is_empty() {
        eprintln!(
            "ostq-chaos: LOST {} good jobs (never recorded as completed), first: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
        let (port, keys, first) = (
            redis.port(),
            keys.clone(),
            missing[..missing.len().min(20)].to_vec(),
        );
        for line in tokio::task::spawn_blocking(move || locate(port, &keys, &first)).await? {
            eprintln!("ostq-chaos: {line}");
        }
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
    // Every duplicate needs a lease that expired (or a push sent twice): more duplicates than
    // recovered jobs means a job ran again without losing its lease.
    let beyond_recoveries = verdicts
        .duplicates
        .saturating_sub(counts.recovered_total + verdicts.push_retry);
    if beyond_recoveries > 0 {
        eprintln!(
            "ostq-chaos: {} duplicates but only {} jobs recovered from expired leases",
            verdicts.duplicates, counts.recovered_total
        );
    }
    let ok = lost == 0
        && report.found == bad_entries.len()
        && verdicts.unexplained == 0
        && beyond_recoveries == 0;
    let healthy = healthy_pid.map(|pid| {
        json!({
            "pid": pid,
            "long_executions": verdicts.long_runs_on_healthy,
            "unexplained_duplicates": verdicts.unexplained_on_healthy,
            "log": evidence.by_pid.get(&pid),
        })
    });
    let summary = json!({
        "ok": ok,
        "jobs": args.jobs,
        "lost": lost,
        "duplicates": verdicts.duplicates,
        "jobs_run_more_than_once": verdicts.jobs_run_more_than_once,
        "duplicates_after_kills": verdicts.killed,
        "duplicates_after_other_faults": verdicts.fault,
        "duplicates_after_push_retries": verdicts.push_retry,
        "duplicates_after_faults_by_kind": verdicts.by_fault,
        "duplicates_unexplained": verdicts.unexplained,
        "duplicates_beyond_recoveries": beyond_recoveries,
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
    let mut summary = summary;
    let more = json!({
        "reruns_without_new_attempt": verdicts.same_attempt,
        "host_stalls": tally.host_stalls,
        "host_stall_ms": tally.host_stall_ms,
        "unexplained_examples": verdicts.examples,
        "healthy_worker": healthy,
        "worker_logs": evidence.totals,
        "long_jobs": work.long_jobs,
        "long_ms": work.long_ms,
        "long_executions": verdicts.long_runs,
        "concurrency": work.concurrency,
        "lease_ms": work.lease_ms,
        "proxy": match path {
            RedisPath::Direct => serde_json::Value::Null,
            RedisPath::Proxy { .. } => json!({
                "latency_ms": args.latency_ms,
                "jitter_ms": args.jitter_ms,
                "drops": tally.proxy_drops,
                "stalls": tally.proxy_stalls,
                "stall_ms": args.stall_ms,
                "connections_of_last_workers": proxy_connections,
            }),
        },
    });
    if let (Some(summary), Some(more)) = (summary.as_object_mut(), more.as_object()) {
        summary.extend(more.clone());
    }
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
    redis: &mut RedisServer,
    queue: &Queue,
    tally: &mut Tally,
    started: Instant,
) -> anyhow::Result<()> {
    let active = read_counts(queue).await.map_or(0, |c| c.active);
    tally.in_flight_at_other_faults += active;
    let at = started.elapsed().as_secs_f64();
    let from_ms = unix_ms();
    let (name, extra) = match fault {
        Fault::ClientKill => {
            let killed = admin::command(redis.port(), &["CLIENT", "KILL", "TYPE", "normal"])
                .await?
                .as_integer()
                .context("CLIENT KILL did not reply with a number")?;
            eprintln!("ostq-chaos: [{at:6.1}s] CLIENT KILL TYPE normal: {killed} connections killed ({active} jobs active)");
            ("client_kill", json!({ "connections": killed }))
        }
        Fault::Stall => {
            eprintln!("ostq-chaos: [{at:6.1}s] DEBUG SLEEP 2 ({active} jobs active)");
            let began = Instant::now();
            admin::command(redis.port(), &["DEBUG", "SLEEP", "2"]).await?;
            (
                "debug_sleep",
                json!({ "ms": began.elapsed().as_millis() as u64 }),
            )
        }
        Fault::Restart => {
            eprintln!("ostq-chaos: [{at:6.1}s] SHUTDOWN and restart of redis-server ({active} jobs active)");
            let down = admin::restart(redis)?;
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
    // Redis-wide faults hit every worker.
    tally.windows.push(Window {
        kind: name,
        pid: None,
        from_ms,
        to_ms: unix_ms(),
    });
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
    work: &Workload,
    jobs: u64,
) -> anyhow::Result<u64> {
    let payloads: Vec<Vec<u8>> = range
        .map(|n| {
            serde_json::to_vec(&Chaos {
                n,
                pad: String::new(),
                ms: work.is_long(n, jobs).then_some(work.long_ms),
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

/// Pushes malformed entries by hand (one `LPUSH`), as a foreign producer would; returns the
/// retries.
async fn push_bad(port: u16, keys: &QueueKeys, entries: &[BadEntry]) -> anyhow::Result<u64> {
    let mut retries = 0;
    if entries.is_empty() {
        return Ok(0);
    }
    let mut lpush: Vec<&[u8]> = vec![b"LPUSH", keys.pending.as_bytes()];
    lpush.extend(entries.iter().map(|entry| entry.bytes.as_slice()));
    retry(&mut retries, || admin::command(port, &lpush)).await?;
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

/// For each lost job, where its envelope is in Redis, if anywhere: one line per job (none if
/// Redis cannot be reached).
fn locate(port: u16, keys: &QueueKeys, missing: &[u64]) -> Vec<String> {
    let Ok(mut resp) = admin::connect(port) else {
        return Vec::new();
    };
    // A command that fails reads as empty.
    let mut list = |args: &[&[u8]]| -> Vec<Vec<u8>> {
        resp.command(args)
            .ok()
            .and_then(Reply::into_bytes_list)
            .unwrap_or_default()
    };
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
    for env in &list(&[b"LRANGE", keys.pending.as_bytes(), b"0", b"-1"]) {
        look("pending", env);
    }
    for env in &list(&[b"HVALS", keys.jobs.as_bytes()]) {
        look("jobs hash (retry/dead/scheduled)", env);
    }
    let leases = format!("{}lease:*", keys.prefix);
    for lease in &list(&[b"KEYS", leases.as_bytes()]) {
        for env in &list(&[b"LRANGE", lease, b"0", b"-1"]) {
            look(&String::from_utf8_lossy(lease), env);
        }
    }
    missing
        .iter()
        .map(|n| match places.get(n) {
            Some(found) => format!("lost job {n} is in {}", found.join("; ")),
            None => format!("lost job {n} is nowhere in Redis"),
        })
        .collect()
}

/// Why the jobs that ran more than once did.
#[derive(Default)]
struct Verdicts {
    duplicates: u64,
    jobs_run_more_than_once: u64,
    /// The earlier execution's worker was SIGKILLed after completing it, before the ack landed.
    killed: u64,
    /// A fault hit the earlier execution's worker (its proxy) or Redis while it held the lease.
    fault: u64,
    /// The same, per kind of fault (the one that overlaps the lease's last stretch most).
    by_fault: BTreeMap<&'static str, u64>,
    /// The two executions are two jobs: a push was sent again after an error.
    push_retry: u64,
    unexplained: u64,
    unexplained_on_healthy: u64,
    /// Re-runs of the same job id whose attempt number did not grow (nothing but a rollback of
    /// Redis explains those).
    same_attempt: u64,
    long_runs: u64,
    long_runs_on_healthy: u64,
    examples: Vec<serde_json::Value>,
}

/// Looks at each job's executions in the order they started: every execution after the first is
/// a duplicate, and the one before it must have lost its lease after it started and before the
/// later one started. That needs a reason: its worker was SIGKILLed after completing it (before
/// its ack landed) and before the later one started, or, in that same stretch, a fault reached
/// that worker (its proxy dropped or stalled, its lease keeper failing to write according to its
/// log) or every worker (Redis stalled, restarted, or killed all connections). Anything else is
/// unexplained: a healthy worker that lost a lease.
fn classify_duplicates(
    logs: &ExecLogs,
    tally: &Tally,
    evidence: &Evidence,
    work: &Workload,
    healthy_pid: Option<u32>,
) -> Verdicts {
    let jobs = logs.runs.len() as u64;
    let effects: Vec<Window> = tally
        .windows
        .iter()
        .map(|w| Window {
            to_ms: w.to_ms + FAULT_AFTERMATH_MS,
            ..*w
        })
        .chain(evidence.keeper_windows.iter().copied())
        .collect();
    let mut v = Verdicts::default();
    for (n, runs) in logs.runs.iter().enumerate() {
        let long = work.is_long(n as u64, jobs);
        if long {
            v.long_runs += runs.len() as u64;
            v.long_runs_on_healthy +=
                runs.iter().filter(|r| Some(r.pid) == healthy_pid).count() as u64;
        }
        if runs.len() < 2 {
            continue;
        }
        v.jobs_run_more_than_once += 1;
        let mut runs = runs.clone();
        runs.sort_by_key(|r| (r.start_ms, r.at_ms));
        for pair in runs.windows(2) {
            let (earlier, later) = (&pair[0], &pair[1]);
            v.duplicates += 1;
            let same_job = match (&earlier.id, &later.id) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if !same_job && tally.push_retries > 0 {
                v.push_retry += 1;
                continue;
            }
            if same_job && later.attempt.is_some() && later.attempt <= earlier.attempt {
                v.same_attempt += 1;
            }
            // The lease was lost after the earlier run started and before the later one did.
            let from = earlier.start_ms.saturating_sub(CLOCK_SLACK_MS);
            let until = later.start_ms + CLOCK_SLACK_MS;
            let killed = tally
                .killed_at
                .get(&earlier.pid)
                .is_some_and(|&at| at + CLOCK_SLACK_MS >= earlier.at_ms && at <= until);
            if same_job && killed {
                v.killed += 1;
                continue;
            }
            // The fault that overlaps the stretch most gets the blame (any would do).
            let fault = effects
                .iter()
                .filter(|w| {
                    w.pid.is_none_or(|pid| pid == earlier.pid)
                        && w.from_ms <= until
                        && w.to_ms >= from
                })
                .max_by_key(|w| w.to_ms.min(until).saturating_sub(w.from_ms.max(from)));
            if let (true, Some(fault)) = (same_job, fault) {
                v.fault += 1;
                *v.by_fault.entry(fault.kind).or_default() += 1;
                continue;
            }
            v.unexplained += 1;
            if Some(earlier.pid) == healthy_pid {
                v.unexplained_on_healthy += 1;
            }
            if v.examples.len() < EXAMPLES {
                v.examples.push(json!({
                    "n": n,
                    "long": long,
                    "earlier": describe(earlier, healthy_pid, &tally.killed_at),
                    "later": describe(later, healthy_pid, &tally.killed_at),
                }));
            }
        }
    }
    v
}

fn describe(
    run: &Run,
    healthy_pid: Option<u32>,
    killed_at: &HashMap<u32, u64>,
) -> serde_json::Value {
    json!({
        "pid": run.pid,
        "healthy": Some(run.pid) == healthy_pid,
        "killed_at_ms": killed_at.get(&run.pid),
        "id": run.id,
        "attempt": run.attempt,
        "start_ms": run.start_ms,
        "end_ms": run.at_ms,
    })
}

/// What the workers' own logs (stderr, `worker-*.err`, each line starting with the unix time in
/// ms) say about leases.
#[derive(Default)]
struct Evidence {
    totals: serde_json::Value,
    by_pid: HashMap<u32, serde_json::Value>,
    /// When a worker could not renew: its lease keeper failing to write outcomes (from the first
    /// failed write to the first that worked again; a lease longer after it gave up, for the
    /// groups it gave up on expire within a lease), or its runtime stalled.
    keeper_windows: Vec<Window>,
}

/// Counts, per worker and in all, the library's log lines about lost leases and failed writes:
/// `lost_leases` (renewals Redis refused), `stale_completions` and `stale_failures` (outcomes
/// written after the lease expired, counted in jobs), `outcome_write_errors` and
/// `outcome_give_ups`, `runtime_stalls` (the worker's runtime held up for 250 ms or more); and
/// finds the stretches when each worker could not renew: its lease keeper stuck, its runtime
/// stalled.
fn worker_log_evidence(
    all: &HashMap<u32, (PathBuf, bool)>,
    lease_ms: u64,
    killed_at: &HashMap<u32, u64>,
) -> Evidence {
    const KINDS: [(&str, &str); 6] = [
        ("lost_leases", "lost leases"),
        (
            "stale_completions",
            "completions reported after their leases expired",
        ),
        (
            "stale_failures",
            "failures reported after their leases expired",
        ),
        ("outcome_write_errors", "could not record job outcomes"),
        ("outcome_give_ups", "gave up recording outcomes"),
        ("runtime_stalls", "runtime stalled"),
    ];
    const FLOWING: &str = "outcomes flowing";
    let mut evidence = Evidence::default();
    let mut totals: BTreeMap<&str, u64> = KINDS.iter().map(|(k, _)| (*k, 0)).collect();
    for (&pid, (path, _healthy)) in all {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut mine: BTreeMap<&str, u64> = KINDS.iter().map(|(k, _)| (*k, 0)).collect();
        let mut failing_since: Option<u64> = None;
        let mut last_ms = 0;
        for line in text.lines() {
            let at = line
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(at) = at {
                last_ms = at;
            }
            for (key, needle) in KINDS {
                if line.contains(needle) {
                    // Stale outcomes say how many jobs (`stale=N`); the others count lines.
                    let n = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("stale="))
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(1);
                    *mine.entry(key).or_default() += n;
                    *totals.entry(key).or_default() += n;
                }
            }
            let Some(at) = at else { continue };
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|n| n.parse::<u64>().ok())
            };
            if line.contains("runtime stalled") {
                // The worker's own watch: its runtime ran nothing from `from_ms` for 50 ms +
                // `late_ms`.
                if let (Some(from_ms), Some(late_ms)) = (field("from_ms="), field("late_ms=")) {
                    evidence.keeper_windows.push(Window {
                        kind: "runtime_stall",
                        pid: Some(pid),
                        from_ms,
                        to_ms: from_ms + 50 + late_ms,
                    });
                }
            } else if line.contains("could not record job outcomes") {
                failing_since.get_or_insert(at);
            } else if line.contains("gave up recording outcomes") {
                evidence.keeper_windows.push(Window {
                    kind: "keeper_gave_up",
                    pid: Some(pid),
                    from_ms: failing_since.unwrap_or(at),
                    to_ms: at + lease_ms,
                });
            } else if line.contains(FLOWING) {
                if let Some(from_ms) = failing_since.take() {
                    evidence.keeper_windows.push(Window {
                        kind: "keeper_stuck",
                        pid: Some(pid),
                        from_ms,
                        to_ms: at,
                    });
                }
            }
        }
        if let Some(from_ms) = failing_since {
            // Still failing when it died (or when the run ended).
            let to_ms = killed_at
                .get(&pid)
                .copied()
                .unwrap_or(u64::MAX)
                .max(last_ms);
            evidence.keeper_windows.push(Window {
                kind: "keeper_stuck",
                pid: Some(pid),
                from_ms,
                to_ms,
            });
        }
        evidence.by_pid.insert(pid, json!(mine));
    }
    evidence.totals = json!(totals);
    evidence
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LEASE: u64 = 1000;

    fn work() -> Workload {
        Workload {
            concurrency: 10,
            lease_ms: LEASE,
            min_job_ms: 0,
            max_job_ms: 0,
            long_jobs: 0,
            long_ms: 0,
        }
    }

    fn run(pid: u32, attempt: u32, start_ms: u64, at_ms: u64) -> Run {
        Run {
            pid,
            at_ms,
            start_ms,
            attempt: Some(attempt),
            id: Some("J".to_string()),
        }
    }

    /// Job 0 ran on worker 1 from 10,000 to 14,000 ms, and again on worker 2 from 11,050.
    fn verdicts(tally: &Tally, evidence: &Evidence, healthy: Option<u32>) -> Verdicts {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = ExecLogs::new(dir.path(), 1);
        logs.runs[0] = vec![run(2, 2, 11_050, 11_070), run(1, 1, 10_000, 14_000)];
        classify_duplicates(&logs, tally, evidence, &work(), healthy)
    }

    #[test]
    fn a_lease_lost_with_nothing_wrong_is_unexplained() {
        let v = verdicts(&Tally::default(), &Evidence::default(), Some(1));
        assert_eq!(
            (v.duplicates, v.unexplained, v.unexplained_on_healthy),
            (1, 1, 1)
        );
        assert_eq!(v.examples.len(), 1);
        assert_eq!(v.examples[0]["earlier"]["pid"], 1);
    }

    #[test]
    fn a_kill_explains_only_between_the_end_and_the_rerun() {
        // Killed after it completed but before the re-run started: its ack never landed.
        let dir = tempfile::tempdir().unwrap();
        let mut logs = ExecLogs::new(dir.path(), 1);
        logs.runs[0] = vec![run(1, 1, 10_000, 10_020), run(2, 2, 11_500, 11_520)];
        let mut tally = Tally::default();
        tally.killed_at.insert(1, 10_100);
        let v = classify_duplicates(&logs, &tally, &Evidence::default(), &work(), None);
        assert_eq!((v.killed, v.unexplained), (1, 0));
        // Killed after the re-run had started: the lease was lost before, the kill is no excuse.
        tally.killed_at.insert(1, 14_100);
        let v = verdicts(&tally, &Evidence::default(), None);
        assert_eq!((v.killed, v.unexplained), (0, 1));
    }

    #[test]
    fn faults_explain_only_on_their_worker_and_in_time() {
        let stall = |pid, from_ms, to_ms| Window {
            kind: "proxy_stall",
            pid,
            from_ms,
            to_ms,
        };
        let mut tally = Tally::default();
        tally.windows.push(stall(Some(1), 10_500, 11_000));
        assert_eq!(verdicts(&tally, &Evidence::default(), None).fault, 1);
        tally.windows[0] = stall(Some(2), 10_500, 11_000); // another worker's proxy
        assert_eq!(verdicts(&tally, &Evidence::default(), None).unexplained, 1);
        tally.windows[0] = stall(None, 10_500, 11_000); // Redis itself
        assert_eq!(verdicts(&tally, &Evidence::default(), None).fault, 1);
        tally.windows[0] = stall(None, 12_000, 12_000); // after the re-run started
        assert_eq!(verdicts(&tally, &Evidence::default(), None).unexplained, 1);
        tally.windows[0] = stall(None, 9_000, 9_650); // over before the run started (+250 ms)
        assert_eq!(verdicts(&tally, &Evidence::default(), None).unexplained, 1);
        tally.windows[0] = stall(None, 9_000, 9_800); // its aftermath reaches the run's start
        assert_eq!(verdicts(&tally, &Evidence::default(), None).fault, 1);
    }

    #[test]
    fn two_jobs_with_one_number_are_a_retried_push() {
        let dir = tempfile::tempdir().unwrap();
        let mut logs = ExecLogs::new(dir.path(), 1);
        let mut other = run(2, 1, 11_050, 11_070);
        other.id = Some("K".to_string());
        logs.runs[0] = vec![run(1, 1, 10_000, 10_020), other];
        let mut tally = Tally::default();
        let v = classify_duplicates(&logs, &tally, &Evidence::default(), &work(), None);
        assert_eq!(v.unexplained, 1);
        tally.push_retries = 1;
        let v = classify_duplicates(&logs, &tally, &Evidence::default(), &work(), None);
        assert_eq!(v.push_retry, 1);
    }

    #[test]
    fn the_worker_log_gives_the_keepers_stuck_stretches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-001.err");
        std::fs::write(
            &path,
            "1000  WARN ostq::worker::runtime: could not record job outcomes; retrying error=x\n\
             1400  INFO ostq::worker::runtime: redis reachable again, outcomes flowing\n\
             2000  WARN ostq::worker::runtime: completions reported after their leases expired; ignored (the jobs were recovered and run again) queue=chaos stale=7\n\
             3000  WARN ostq::worker::runtime: could not record job outcomes; retrying error=y\n\
             4000  WARN ostq::worker::runtime: gave up recording outcomes; their leases will expire and the unfinished jobs run again jobs=3\n\
             5000  WARN ostq::worker::runtime: lost leases: their jobs may run again elsewhere queue=chaos groups=[1]\n\
             6000  INFO ostq::worker::runtime: redis reachable again, outcomes flowing\n\
             6100  WARN ostq::worker::runtime: could not record job outcomes; retrying error=z\n\
             7000  WARN ostq_chaos::worker: runtime stalled from_ms=6600 late_ms=300\n",
        )
        .unwrap();
        let all = HashMap::from([(9, (path, false))]);
        let killed_at = HashMap::from([(9, 7500)]);
        let evidence = worker_log_evidence(&all, LEASE, &killed_at);
        let windows: Vec<(u64, u64)> = evidence
            .keeper_windows
            .iter()
            .map(|w| (w.from_ms, w.to_ms))
            .collect();
        // Still failing after giving up, until a write works; the last stretch ends with the kill.
        assert_eq!(
            windows,
            vec![
                (1000, 1400),
                (3000, 5000),
                (3000, 6000),
                (6600, 6950),
                (6100, 7500)
            ]
        );
        assert!(evidence.keeper_windows.iter().all(|w| w.pid == Some(9)));
        assert_eq!(evidence.totals["stale_completions"], 7);
        assert_eq!(evidence.totals["outcome_write_errors"], 3);
        assert_eq!(evidence.totals["outcome_give_ups"], 1);
        assert_eq!(evidence.totals["lost_leases"], 1);
        assert_eq!(evidence.by_pid[&9]["stale_completions"], 7);
        assert_eq!(evidence.totals["runtime_stalls"], 1);
    }

    #[test]
    fn locate_finds_lost_jobs_wherever_they_are() {
        let redis = RedisServer::start().unwrap();
        let keys = QueueKeys::new(crate::QUEUE).unwrap();
        let envelope = |n: u64, id: &str| {
            Envelope {
                id: id.to_string(),
                payload: serde_json::to_vec(&Chaos {
                    n,
                    pad: String::new(),
                    ms: None,
                })
                .unwrap(),
                name: "chaos".to_string(),
                ..Envelope::default()
            }
            .encode()
        };
        let mut resp = redis.resp().unwrap();
        let pending = envelope(1, "A");
        let lease = envelope(2, "B");
        let dead = envelope(3, "C");
        let lease_key = keys.lease_group(7);
        let pushes: [&[&[u8]]; 3] = [
            &[b"LPUSH", keys.pending.as_bytes(), &pending],
            &[b"RPUSH", lease_key.as_bytes(), &lease],
            &[b"HSET", keys.jobs.as_bytes(), b"C", &dead],
        ];
        for command in pushes {
            resp.command(command).unwrap().into_result().unwrap();
        }
        let lines = locate(redis.port(), &keys, &[1, 2, 3, 4]);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[0].starts_with("lost job 1 is in pending (id A"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with(&format!("lost job 2 is in {lease_key} (id B")),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("lost job 3 is in jobs hash (retry/dead/scheduled) (id C"),
            "{lines:?}"
        );
        assert_eq!(lines[3], "lost job 4 is nowhere in Redis");
        let port = redis.port();
        drop(redis);
        assert!(locate(port, &keys, &[1]).is_empty());
    }

    #[test]
    fn long_jobs_are_spread_evenly() {
        let work = Workload {
            long_jobs: 4,
            ..work()
        };
        let long: Vec<u64> = (0..100).filter(|&n| work.is_long(n, 100)).collect();
        assert_eq!(long, vec![12, 37, 62, 87]);
        let long: Vec<u64> = (0..3).filter(|&n| work.is_long(n, 3)).collect();
        assert_eq!(long, vec![0, 1, 2]);
    }
}
