//! `ostq bench`: how fast ostq is against this Redis, on this machine, now. Every figure comes
//! from the same run: bulk enqueue, processing with an in-process no-op worker, idle push→start
//! latency, Redis memory per waiting job (with and without a status record), and the ceiling of
//! the Redis itself (pipelined LPUSH/RPOP from the same process), so results are read as ratios
//! rather than compared with an old absolute figure.
//!
//! Each group of phases runs on a queue of its own, `<prefix>-<group>`, deleted at the end.

mod shards;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use ostq::admin::{Measure, Removal};
use ostq_testkit::RedisServer;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::cli::{BenchArgs, Global};
use crate::util::{check_queue, connect, lib_err, redact, Exit};

/// Whether the bench's workers record history (`--no-history` turns it off, to measure its cost).
static HISTORY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
/// Whether they report through the `metrics` facade (`--no-metrics` turns it off).
static METRICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
/// Whether a Prometheus recorder receives what they report (`--prometheus`).
static PROMETHEUS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Jobs per `push_bulk` call (the library pipelines them as LPUSHes of 1,000).
const PUSH_CHUNK: usize = 10_000;
/// How often the processed counter is read while a worker drains a queue.
const POLL: Duration = Duration::from_millis(2);
/// A drain that makes no progress for this long is reported as stalled.
const STALL: Duration = Duration::from_secs(30);
/// Pause between latency samples, so the worker is idle (blocked on its list) for each push.
const LATENCY_GAP: Duration = Duration::from_millis(2);
/// Latency samples taken before the measured ones.
const LATENCY_WARMUP: usize = 20;
/// Serial PINGs for the round-trip time.
const PINGS: usize = 1_000;
/// How long memory freed in the background may take to settle before a reading.
const SETTLE: Duration = Duration::from_secs(10);
/// The queues (and the ceiling list) a run uses, as suffixes of its prefix.
const GROUPS: [&str; 5] = ["warmup", "enqueue", "tracked", "latency", "ceiling"];

/// Everything one run measured.
struct Report {
    url: String,
    private: bool,
    redis_version: String,
    jobs: usize,
    concurrency: u32,
    payload_bytes: f64,
    envelope_bytes: usize,
    default: Throughput,
    tracked: Throughput,
    latency: Latency,
    ceiling: Ceiling,
}

/// Enqueue, memory and processing figures for one kind of job (default or tracked).
struct Throughput {
    enqueue_jobs_per_s: f64,
    bytes_per_pending_job: f64,
    /// `MEMORY USAGE` of the pending list alone, per job.
    list_bytes_per_job: f64,
    process_jobs_per_s: f64,
    /// (N − 1) / (last handler start − first handler start), the peers' "steady" rate.
    process_steady_jobs_per_s: f64,
    processed: u64,
    failed: u64,
    /// CPU time per job while the queue was drained: Redis's, and this process's (the worker).
    redis_cpu_us_per_job: f64,
    bench_cpu_us_per_job: f64,
}

struct Latency {
    samples: usize,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    push_call_p50_us: f64,
}

struct Ceiling {
    ops_per_s: f64,
    lpush_ops_per_s: f64,
    rpop_ops_per_s: f64,
    ping_rtt_p50_us: f64,
    /// PING after a pause as long as the one between latency samples.
    idle_ping_rtt_p50_us: f64,
}

pub async fn run(global: &Global, args: BenchArgs) -> anyhow::Result<()> {
    if let Some(count) = args.shards {
        return shards::run(global, &args, count).await;
    }
    HISTORY.store(!args.no_history, std::sync::atomic::Ordering::Relaxed);
    METRICS.store(!args.no_metrics, std::sync::atomic::Ordering::Relaxed);
    if args.prometheus {
        // Held for the process's life: the workers record into it as an exporting app's would.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Prefix("ostq_".into()),
                &ostq::metrics::DURATION_BUCKETS,
            )
            .and_then(|b| b.install_recorder())
            .map_err(|e| anyhow::anyhow!("cannot install the Prometheus recorder: {e}"))?;
        PROMETHEUS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let prefix = match &args.queue {
        Some(q) => q.clone(),
        None => format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase()),
    };
    for group in GROUPS {
        check_queue(&format!("{prefix}-{group}"))?;
    }

    // Only an explicit --url (or $OSTQ_URL) is used: a bench never loads a Redis by guesswork.
    let mut private = None;
    let url = match global.url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => url.to_string(),
        None => {
            let server = tokio::task::spawn_blocking(|| {
                RedisServer::builder()
                    .install_hint(
                        "apt-get install redis-server (or run scripts/demo, which does it)",
                    )
                    .start()
            })
            .await
            .map_err(|e| anyhow!("cannot start redis-server: {e}"))??;
            let url = server.url();
            private = Some(server);
            url
        }
    };
    eprintln!(
        "ostq bench: {} jobs, concurrency {}, {} redis-server at {}; queues {prefix}-*",
        args.jobs,
        args.concurrency
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        if private.is_some() {
            "a private"
        } else {
            "the"
        },
        redact(&url)
    );

    // The phases run in a task of the runtime, as a server's request handlers would, not on the
    // thread that blocks on `main`: there every reply would first have to wake that thread, which
    // on a quiet 2-vCPU VM added about 250 µs to each idle push.
    let mut phases = {
        let (url, prefix, is_private) = (url.clone(), prefix.clone(), private.is_some());
        tokio::spawn(async move {
            if args.concurrency.len() > 1 {
                sweep(&url, is_private, &prefix, &args)
                    .await
                    .map(Ran::Sweep)
            } else {
                bench(&url, is_private, &prefix, &args)
                    .await
                    .map(|r| Ran::Full(Box::new(r)))
            }
        })
    };
    let outcome = tokio::select! {
        r = &mut phases => r.unwrap_or_else(|e| Err(anyhow!("the bench failed: {e}"))),
        _ = crate::exec::shutdown_signal() => {
            phases.abort();
            Err(Exit { code: 130, message: "ostq bench: interrupted".into() }.into())
        }
    };
    if private.is_none() {
        if let Err(e) = remove_queues(&url, &prefix).await {
            eprintln!("ostq bench: could not delete the queues {prefix}-*: {e:#}");
        }
    }
    if let Some(server) = private.take() {
        let _ = tokio::task::spawn_blocking(move || drop(server)).await;
    }
    match (outcome?, global.json) {
        (Ran::Full(report), true) => println!("{}", serde_json::to_string(&report_json(&report))?),
        (Ran::Full(report), false) => print!("{}", report_text(&report)),
        (Ran::Sweep(sweep), true) => println!("{}", serde_json::to_string(&sweep_json(&sweep))?),
        (Ran::Sweep(sweep), false) => print!("{}", sweep_text(&sweep)),
    }
    Ok(())
}

/// What a run measured: every phase at one concurrency, or processing over several.
enum Ran {
    Full(Box<Report>),
    Sweep(Sweep),
}

/// Processing at each concurrency of a list (`--concurrency 1,10,50`).
struct Sweep {
    url: String,
    private: bool,
    redis_version: String,
    jobs: usize,
    /// Per concurrency: default jobs, then tracked jobs.
    points: Vec<(u32, Throughput, Throughput)>,
}

/// The cost curve: for each concurrency, N default jobs and N tracked jobs pushed and drained
/// by one worker, on a fresh queue each time.
async fn sweep(url: &str, private: bool, prefix: &str, args: &BenchArgs) -> anyhow::Result<Sweep> {
    let n = args.jobs;
    let client = connect(url).await?;
    let redis_version = client
        .redis_info()
        .await
        .map_err(lib_err("cannot read Redis INFO"))?
        .version;
    warm_up(&client, prefix, args).await?;
    let mut points = Vec::new();
    for &c in &args.concurrency {
        eprintln!("ostq bench: concurrency {c}: {n} jobs, then {n} tracked jobs");
        let name = format!("{prefix}-enqueue");
        let (default, _) = throughput(url, &client, &name, args, false, c).await?;
        remove_queue(&client, &name).await?;
        let name = format!("{prefix}-tracked");
        let (tracked, _) = throughput(url, &client, &name, args, true, c).await?;
        remove_queue(&client, &name).await?;
        points.push((c, default, tracked));
    }
    Ok(Sweep {
        url: redact(url),
        private,
        redis_version,
        jobs: n,
        points,
    })
}

fn sweep_json(s: &Sweep) -> serde_json::Value {
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let points: Vec<serde_json::Value> = s
        .points
        .iter()
        .map(|(c, d, t)| {
            json!({
                "concurrency": c,
                "process_jobs_per_s": d.process_jobs_per_s.round(),
                "process_redis_cpu_us_per_job": round2(d.redis_cpu_us_per_job),
                "process_bench_cpu_us_per_job": round2(d.bench_cpu_us_per_job),
                "process_tracked_jobs_per_s": t.process_jobs_per_s.round(),
                "process_tracked_redis_cpu_us_per_job": round2(t.redis_cpu_us_per_job),
                "process_tracked_bench_cpu_us_per_job": round2(t.bench_cpu_us_per_job),
            })
        })
        .collect();
    json!({
        "jobs": s.jobs,
        "history": HISTORY.load(std::sync::atomic::Ordering::Relaxed),
        "metrics": METRICS.load(std::sync::atomic::Ordering::Relaxed),
        "redis_version": s.redis_version,
        "redis_url": s.url,
        "private_redis": s.private,
        "sweep": points,
    })
}

fn sweep_text(s: &Sweep) -> String {
    let mut out = format!(
        "ostq bench: {} jobs per point, Redis {} at {}{}\n\n",
        thousands(s.jobs as f64),
        s.redis_version,
        s.url,
        if s.private { " (private)" } else { "" }
    );
    out.push_str(
        "                      default jobs                     with status kept (track)\n",
    );
    out.push_str(
        "  concurrency      jobs/s   Redis µs/job  worker µs/job      jobs/s   Redis µs/job  worker µs/job\n",
    );
    for (c, d, t) in &s.points {
        out.push_str(&format!(
            "  {c:>11}  {:>10}  {:>13.2}  {:>13.2}  {:>10}  {:>13.2}  {:>13.2}\n",
            thousands(d.process_jobs_per_s),
            d.redis_cpu_us_per_job,
            d.bench_cpu_us_per_job,
            thousands(t.process_jobs_per_s),
            t.redis_cpu_us_per_job,
            t.bench_cpu_us_per_job,
        ));
    }
    out
}

async fn bench(url: &str, private: bool, prefix: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    let n = args.jobs;
    let client = connect(url).await?;
    let redis_version = client
        .redis_info()
        .await
        .map_err(lib_err("cannot read Redis INFO"))?
        .version;
    // Ids vary in length: report the mean over the jobs pushed.
    let payload_bytes = (0..n)
        .map(|i| make_payload(i, args.payload_bytes).len())
        .sum::<usize>() as f64
        / n.max(1) as f64;

    warm_up(&client, prefix, args).await?;

    let name = format!("{prefix}-enqueue");
    eprintln!("ostq bench: bulk enqueue, memory and processing of {n} jobs on '{name}'");
    let concurrency = args.concurrency.first().copied().unwrap_or(500);
    let (default, envelope_bytes) =
        throughput(url, &client, &name, args, false, concurrency).await?;

    let name = format!("{prefix}-tracked");
    eprintln!("ostq bench: the same with status records kept (--track) on '{name}'");
    let (tracked, _) = throughput(url, &client, &name, args, true, concurrency).await?;

    let name = format!("{prefix}-latency");
    let samples = (n / 20).clamp(200, 1_000);
    eprintln!("ostq bench: idle push→start latency, {samples} jobs one at a time on '{name}'");
    let latency = latency(url, &client, &name, samples, args.payload_bytes).await?;

    let name = format!("{prefix}-ceiling");
    eprintln!("ostq bench: Redis ceiling, pipelined LPUSH/RPOP of {n} values");
    let ceiling = ceiling(&client, &name, n, args.payload_bytes).await?;

    Ok(Report {
        url: redact(url),
        private,
        redis_version,
        jobs: n,
        concurrency,
        payload_bytes,
        envelope_bytes,
        default,
        tracked,
        latency,
        ceiling,
    })
}

/// The first bulk push a Redis ever gets grows some of its buffers for good (about 75 KB on
/// Redis 7.0), and the first tracked push loads push.lua: both are done once, off the record.
async fn warm_up(client: &ostq::Client, prefix: &str, args: &BenchArgs) -> anyhow::Result<()> {
    let n = args.jobs;
    let name = format!("{prefix}-warmup");
    let warmup = client.queue(&name);
    let payloads = || (0..n.min(PUSH_CHUNK)).map(|i| make_payload(i, args.payload_bytes));
    warmup
        .push_bulk(payloads())
        .await
        .map_err(lib_err("cannot push"))?;
    warmup
        .push_bulk_with(payloads().take(100), &ostq::PushOptions::new().track())
        .await
        .map_err(lib_err("cannot push"))?;
    remove_queue(client, &name).await?;
    settle(client).await
}

/// The payload of job `i`: its number, an id like the Ost gem's video ids and like the peers'
/// `{id: i}` data (the "id-only job"), padded or cut to `size` bytes if given.
fn make_payload(i: usize, size: Option<usize>) -> Vec<u8> {
    let mut p = i.to_string().into_bytes();
    if let Some(size) = size {
        p.resize(size, b'x');
    }
    p
}

/// Bulk enqueue of N jobs (timed), the Redis memory they take while waiting, then one worker
/// draining them (timed from its start until Redis counts N processed), as the peers are measured.
/// Returns the figures and the size of one stored envelope.
async fn throughput(
    url: &str,
    client: &ostq::Client,
    name: &str,
    args: &BenchArgs,
    track: bool,
    concurrency: u32,
) -> anyhow::Result<(Throughput, usize)> {
    let n = args.jobs;
    let queue = client.queue(name);
    let opts = if track {
        ostq::PushOptions::new().track()
    } else {
        ostq::PushOptions::new()
    };
    // Register the queue first, so the set of queue names does not count towards the memory.
    queue
        .push_bulk(Vec::<Vec<u8>>::new())
        .await
        .map_err(lib_err("cannot push"))?;

    let before = used_memory(client).await?;
    let start = Instant::now();
    let mut pushed = 0;
    while pushed < n {
        let end = (pushed + PUSH_CHUNK).min(n);
        let payloads: Vec<Vec<u8>> = (pushed..end)
            .map(|i| make_payload(i, args.payload_bytes))
            .collect();
        queue
            .push_bulk_with(payloads, &opts)
            .await
            .map_err(lib_err("cannot push"))?;
        pushed = end;
    }
    let enqueue_s = start.elapsed().as_secs_f64();
    let after = used_memory(client).await?;
    let memory = queue
        .memory_usage(Measure::Exact)
        .await
        .map_err(lib_err("cannot measure the queue's memory"))?;
    let list_bytes = memory.keys.get("pending").copied();
    let counts = queue.counts().await.map_err(lib_err("cannot count"))?;
    if counts.pending != n as u64 {
        bail!(
            "pushed {n} jobs onto '{name}' but it holds {} pending",
            counts.pending
        );
    }

    let (redis_cpu0, own_cpu0) = (redis_cpu_s(client).await?, own_cpu_s());
    let (process_s, steady_s) = drain(url, &queue, n, concurrency).await?;
    let (redis_cpu1, own_cpu1) = (redis_cpu_s(client).await?, own_cpu_s());
    let counts = queue.counts().await.map_err(lib_err("cannot count"))?;
    if counts.processed_total != n as u64 || counts.failed_total != 0 || counts.pending != 0 {
        bail!(
            "after processing '{name}': {} processed, {} failed, {} pending (expected {n}, 0, 0)",
            counts.processed_total,
            counts.failed_total,
            counts.pending
        );
    }
    Ok((
        Throughput {
            enqueue_jobs_per_s: n as f64 / enqueue_s,
            bytes_per_pending_job: (after as f64 - before as f64) / n as f64,
            list_bytes_per_job: list_bytes.unwrap_or(0) as f64 / n as f64,
            process_jobs_per_s: n as f64 / process_s,
            process_steady_jobs_per_s: if n > 1 && steady_s > 0.0 {
                (n - 1) as f64 / steady_s
            } else {
                n as f64 / process_s
            },
            processed: counts.processed_total,
            failed: counts.failed_total,
            redis_cpu_us_per_job: (redis_cpu1 - redis_cpu0) * 1e6 / n as f64,
            bench_cpu_us_per_job: (own_cpu1 - own_cpu0) * 1e6 / n as f64,
        },
        memory.newest_pending_entry_bytes.unwrap_or(0) as usize,
    ))
}

/// Handler start times, in nanoseconds since `base`: the first and the last.
struct Starts {
    base: Instant,
    first: AtomicU64,
    last: AtomicU64,
}

impl Starts {
    fn stamp(&self) {
        let t = self.base.elapsed().as_nanos() as u64;
        self.first.fetch_min(t, Ordering::Relaxed);
        self.last.fetch_max(t, Ordering::Relaxed);
    }
}

/// Runs a no-op worker on the queue until Redis counts `n` processed jobs. Returns the seconds
/// from the worker's start until then, and from the first handler start to the last.
async fn drain(
    url: &str,
    queue: &ostq::Queue,
    n: usize,
    concurrency: u32,
) -> anyhow::Result<(f64, f64)> {
    // The worker gets connections of its own, as a worker process would.
    let worker_client = connect(url).await?;
    let starts = Arc::new(Starts {
        base: Instant::now(),
        first: AtomicU64::new(u64::MAX),
        last: AtomicU64::new(0),
    });
    let stamps = starts.clone();
    let worker = ostq::Worker::builder(worker_client)
        .queue(queue.name())
        .concurrency(concurrency as usize)
        .history(HISTORY.load(std::sync::atomic::Ordering::Relaxed))
        .metrics(METRICS.load(std::sync::atomic::Ordering::Relaxed))
        .shutdown_timeout(Duration::from_secs(5))
        .handler(move |_job: ostq::Job| {
            stamps.stamp();
            async { Ok::<_, ostq::BoxError>(()) }
        })
        .build()
        .map_err(lib_err("cannot build the worker"))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let start = Instant::now();
    let mut handle = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let target = n as u64;
    let mut last_seen = (0, Instant::now());
    let outcome = loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            ended = &mut handle => break Err(anyhow!("the worker stopped early: {ended:?}")),
        }
        let processed = queue
            .totals()
            .await
            .map_err(lib_err("cannot read the processed counter"))?
            .processed;
        if processed >= target {
            break Ok(start.elapsed().as_secs_f64());
        }
        if processed != last_seen.0 {
            last_seen = (processed, Instant::now());
        } else if last_seen.1.elapsed() > STALL {
            break Err(anyhow!(
                "processing stalled: {processed} of {n} jobs processed, none for {}s",
                STALL.as_secs()
            ));
        }
    };
    stop_worker(stop, &mut handle, outcome.is_ok()).await?;
    let process_s = outcome?;
    let first = starts.first.load(Ordering::Relaxed);
    let last = starts.last.load(Ordering::Relaxed);
    let steady_s = last.saturating_sub(first) as f64 / 1e9;
    Ok((process_s, steady_s))
}

/// With an idle worker (concurrency 1) blocked on the queue, pushes one job at a time and times
/// push start → handler start.
async fn latency(
    url: &str,
    client: &ostq::Client,
    name: &str,
    samples: usize,
    payload_bytes: Option<usize>,
) -> anyhow::Result<Latency> {
    let queue = client.queue(name);
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let worker = ostq::Worker::builder(connect(url).await?)
        .queue(name)
        .concurrency(1)
        .shutdown_timeout(Duration::from_secs(5))
        .handler(move |_job: ostq::Job| {
            let _ = tx.send(Instant::now());
            async { Ok::<_, ostq::BoxError>(()) }
        })
        .build()
        .map_err(lib_err("cannot build the worker"))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    // Let the worker make its first (empty) fetch and block on the list.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut to_start = Vec::with_capacity(samples);
    let mut push_call = Vec::with_capacity(samples);
    let mut outcome = Ok(());
    for i in 0..LATENCY_WARMUP + samples {
        let payload = make_payload(i, payload_bytes);
        let t0 = Instant::now();
        if let Err(e) = queue.push(&payload).await {
            outcome = Err(anyhow::Error::new(e).context("cannot push"));
            break;
        }
        let t1 = Instant::now();
        let started = match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(t)) => t,
            _ => {
                outcome = Err(anyhow!("job {i} did not start within 10 s of its push"));
                break;
            }
        };
        if i >= LATENCY_WARMUP {
            to_start.push(started.saturating_duration_since(t0).as_secs_f64() * 1e6);
            push_call.push((t1 - t0).as_secs_f64() * 1e6);
        }
        tokio::time::sleep(LATENCY_GAP).await;
    }
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
    outcome?;
    Ok(Latency {
        samples: to_start.len(),
        p50_us: percentile(&mut to_start, 50.0),
        p90_us: percentile(&mut to_start, 90.0),
        p99_us: percentile(&mut to_start, 99.0),
        max_us: percentile(&mut to_start, 100.0),
        push_call_p50_us: percentile(&mut push_call, 50.0),
    })
}

/// What Redis itself does for this process: N values LPUSHed then RPOPed, 1,000 commands per
/// pipeline, on a scratch list of queue `name`; and the round-trip time of one PING.
async fn ceiling(
    client: &ostq::Client,
    name: &str,
    n: usize,
    payload_bytes: Option<usize>,
) -> anyhow::Result<Ceiling> {
    let ping = || async { client.ping().await.map_err(lib_err("PING failed")) };
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        rtts.push(ping().await?.as_secs_f64() * 1e6);
    }
    // The same after the pause the latency samples leave: the cost of waking idle CPUs.
    let mut idle_rtts = Vec::with_capacity(PINGS / 5);
    for _ in 0..PINGS / 5 {
        tokio::time::sleep(LATENCY_GAP).await;
        idle_rtts.push(ping().await?.as_secs_f64() * 1e6);
    }
    let value = make_payload(0, payload_bytes);
    let probe = client
        .queue(name)
        .probe_throughput(n, &value)
        .await
        .map_err(lib_err("cannot measure the Redis ceiling"))?;
    if probe.popped != n {
        bail!("the ceiling list gave back {} of {n} values", probe.popped);
    }
    Ok(Ceiling {
        ops_per_s: probe.ops_per_sec(),
        lpush_ops_per_s: probe.push_ops_per_sec(),
        rpop_ops_per_s: probe.pop_ops_per_sec(),
        ping_rtt_p50_us: percentile(&mut rtts, 50.0),
        idle_ping_rtt_p50_us: percentile(&mut idle_rtts, 50.0),
    })
}

/// The p-th percentile (nearest rank) of the values; sorts them.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// `used_memory` from `INFO`.
async fn used_memory(client: &ostq::Client) -> anyhow::Result<u64> {
    let info = client
        .redis_info()
        .await
        .map_err(lib_err("cannot read Redis INFO"))?;
    Ok(info.used_memory)
}

/// CPU seconds Redis has used (user + system, all its threads), from `INFO`.
async fn redis_cpu_s(client: &ostq::Client) -> anyhow::Result<f64> {
    let stats = client
        .server_stats()
        .await
        .map_err(lib_err("cannot read Redis INFO"))?;
    Ok(stats.used_cpu_secs())
}

/// Waits until Redis has freed what deleted keys held in the background, so that the next
/// memory reading does not count it.
async fn settle(client: &ostq::Client) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < SETTLE {
        let stats = client
            .server_stats()
            .await
            .map_err(lib_err("cannot read Redis INFO"))?;
        if stats.lazyfree_pending_objects == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!(
        "Redis did not free deleted keys within {} s",
        SETTLE.as_secs()
    )
}

/// CPU seconds this process has used (user + system, all threads).
fn own_cpu_s() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            (u.user_time().num_microseconds() + u.system_time().num_microseconds()) as f64 / 1e6
        })
        .unwrap_or(0.0)
}

/// Deletes every key of the bench's queues and their names from the set of queues.
async fn remove_queues(url: &str, prefix: &str) -> anyhow::Result<()> {
    let client = connect(url).await?;
    for group in GROUPS {
        remove_queue(&client, &format!("{prefix}-{group}")).await?;
    }
    Ok(())
}

/// Drops one queue entirely (its workers are stopped by then).
async fn remove_queue(client: &ostq::Client, name: &str) -> anyhow::Result<()> {
    match client.queue(name).remove(true).await {
        Ok(Removal::Removed { .. }) => Ok(()),
        Ok(other) => bail!("queue '{name}' was not removed: {other:?}"),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot remove queue '{name}'"))),
    }
}

fn report_json(r: &Report) -> serde_json::Value {
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    json!({
        "jobs": r.jobs,
        "concurrency": r.concurrency,
        "history": HISTORY.load(std::sync::atomic::Ordering::Relaxed),
        "metrics": METRICS.load(std::sync::atomic::Ordering::Relaxed),
        "prometheus_recorder": PROMETHEUS.load(std::sync::atomic::Ordering::Relaxed),
        "payload_bytes": r.payload_bytes,
        "envelope_bytes": r.envelope_bytes,
        "redis_version": r.redis_version,
        "redis_url": r.url,
        "private_redis": r.private,
        "enqueue_jobs_per_s": r.default.enqueue_jobs_per_s.round(),
        "process_jobs_per_s": r.default.process_jobs_per_s.round(),
        "process_steady_jobs_per_s": r.default.process_steady_jobs_per_s.round(),
        "processed_jobs": r.default.processed,
        "failed_jobs": r.default.failed,
        "bytes_per_pending_job": round(r.default.bytes_per_pending_job),
        "pending_list_bytes_per_job": round(r.default.list_bytes_per_job),
        "process_redis_cpu_us_per_job": round2(r.default.redis_cpu_us_per_job),
        "process_bench_cpu_us_per_job": round2(r.default.bench_cpu_us_per_job),
        "enqueue_tracked_jobs_per_s": r.tracked.enqueue_jobs_per_s.round(),
        "process_tracked_jobs_per_s": r.tracked.process_jobs_per_s.round(),
        "process_tracked_steady_jobs_per_s": r.tracked.process_steady_jobs_per_s.round(),
        "processed_tracked_jobs": r.tracked.processed,
        "failed_tracked_jobs": r.tracked.failed,
        "bytes_per_pending_tracked_job": round(r.tracked.bytes_per_pending_job),
        "process_tracked_redis_cpu_us_per_job": round2(r.tracked.redis_cpu_us_per_job),
        "process_tracked_bench_cpu_us_per_job": round2(r.tracked.bench_cpu_us_per_job),
        "latency_samples": r.latency.samples,
        "latency_p50_us": round(r.latency.p50_us),
        "latency_p90_us": round(r.latency.p90_us),
        "latency_p99_us": round(r.latency.p99_us),
        "latency_max_us": round(r.latency.max_us),
        "push_call_p50_us": round(r.latency.push_call_p50_us),
        "ceiling_ops_per_s": r.ceiling.ops_per_s.round(),
        "ceiling_lpush_ops_per_s": r.ceiling.lpush_ops_per_s.round(),
        "ceiling_rpop_ops_per_s": r.ceiling.rpop_ops_per_s.round(),
        "ping_rtt_p50_us": round(r.ceiling.ping_rtt_p50_us),
        "idle_ping_rtt_p50_us": round(r.ceiling.idle_ping_rtt_p50_us),
    })
}

/// One row of the text report: what, the figure, a note.
type Row = (String, String, String);

fn rate(x: f64) -> String {
    format!("{} jobs/s", thousands(x))
}

fn micros(x: f64) -> String {
    format!("{} µs", thousands(x))
}

/// The rows of default jobs: enqueue, processing, CPU, latency, memory.
fn default_rows(r: &Report) -> Vec<Row> {
    let (d, l) = (&r.default, &r.latency);
    vec![
        (
            "bulk enqueue (push_bulk)".to_string(),
            rate(d.enqueue_jobs_per_s),
            format!("{} per call", thousands(PUSH_CHUNK as f64)),
        ),
        (
            format!("process (no-op, concurrency {})", r.concurrency),
            rate(d.process_jobs_per_s),
            format!(
                "worker start → all acked; first→last start {}",
                rate(d.process_steady_jobs_per_s)
            ),
        ),
        (
            "CPU per job while processing".to_string(),
            format!("{:.2} µs", d.redis_cpu_us_per_job),
            format!(
                "Redis; {:.2} µs in this process (worker)",
                d.bench_cpu_us_per_job
            ),
        ),
        (
            "idle latency push → start, p50".to_string(),
            micros(l.p50_us),
            format!("push call p50 {}", micros(l.push_call_p50_us)),
        ),
        (
            "idle latency push → start, p99".to_string(),
            micros(l.p99_us),
            format!(
                "p90 {}, max {}, {} jobs",
                micros(l.p90_us),
                micros(l.max_us),
                l.samples
            ),
        ),
        (
            "Redis memory per waiting job".to_string(),
            format!("{:.1} B", d.bytes_per_pending_job),
            format!(
                "envelope {} B; the pending list alone {:.1} B (MEMORY USAGE)",
                r.envelope_bytes, d.list_bytes_per_job
            ),
        ),
    ]
}

/// The rows of tracked jobs and of Redis itself.
fn tracked_and_ceiling_rows(r: &Report) -> Vec<Row> {
    let (t, c) = (&r.tracked, &r.ceiling);
    vec![
        (
            "with status kept: bulk enqueue".to_string(),
            rate(t.enqueue_jobs_per_s),
            "PushOptions::track()".to_string(),
        ),
        (
            "with status kept: process".to_string(),
            rate(t.process_jobs_per_s),
            format!("first→last start {}", rate(t.process_steady_jobs_per_s)),
        ),
        (
            "with status kept: CPU per job".to_string(),
            format!("{:.2} µs", t.redis_cpu_us_per_job),
            format!(
                "Redis; {:.2} µs in this process (worker)",
                t.bench_cpu_us_per_job
            ),
        ),
        (
            "with status kept: memory per job".to_string(),
            format!("{:.1} B", t.bytes_per_pending_job),
            String::new(),
        ),
        (
            "Redis ceiling (LPUSH+RPOP, -P 1000)".to_string(),
            format!("{} ops/s", thousands(c.ops_per_s)),
            format!(
                "LPUSH {}/s, RPOP {}/s",
                thousands(c.lpush_ops_per_s),
                thousands(c.rpop_ops_per_s),
            ),
        ),
        (
            "PING round trip, p50".to_string(),
            micros(c.ping_rtt_p50_us),
            format!(
                "after {} ms idle, as between latency jobs: {}",
                LATENCY_GAP.as_millis(),
                micros(c.idle_ping_rtt_p50_us)
            ),
        ),
    ]
}

fn report_text(r: &Report) -> String {
    let mut rows = default_rows(r);
    rows.extend(tracked_and_ceiling_rows(r));
    let mut out = format!(
        "ostq bench: {} jobs, concurrency {}, payload {:.1} B (mean), Redis {} at {}{}\n\n",
        thousands(r.jobs as f64),
        r.concurrency,
        r.payload_bytes,
        r.redis_version,
        r.url,
        if r.private { " (private)" } else { "" }
    );
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    for (what, value, note) in rows {
        let line = format!("  {what:<w0$}  {value:>w1$}  {note}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// 1234567.8 → "1,234,568".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Stops a drain's worker (started with `run_until` on `stop`'s receiver) and waits up to 10 s
/// for it. How the worker ended is the phase's error only when the phase itself succeeded
/// (`phase_ok`): a failed phase reports its own cause.
async fn stop_worker<E: std::fmt::Display>(
    stop: oneshot::Sender<()>,
    handle: &mut tokio::task::JoinHandle<Result<(), E>>,
    phase_ok: bool,
) -> anyhow::Result<()> {
    let _ = stop.send(());
    if !handle.is_finished() {
        match tokio::time::timeout(Duration::from_secs(10), handle).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) if phase_ok => bail!("the worker failed: {e}"),
            Ok(Err(e)) if phase_ok => bail!("the worker panicked: {e}"),
            Err(_) if phase_ok => bail!("the worker did not stop within 10 s"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        v.reverse();
        assert_eq!(percentile(&mut v, 50.0), 50.0);
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(percentile(&mut v, 100.0), 100.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(make_payload(42, None), b"42");
        assert_eq!(make_payload(12345, Some(3)), b"123");
        assert_eq!(make_payload(42, Some(5)), b"42xxx");
    }
}
