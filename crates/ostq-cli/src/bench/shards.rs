//! `ostq bench --shards N`: what sharding one queue over the primaries of a Redis Cluster buys
//! (design §19, issue 15). The same jobs are pushed and drained on an unsharded queue (one
//! primary does all its work) and on an N-shard queue, in the same run, so the two are compared
//! under the same load of the machine. For each, per primary: its share of the jobs (each
//! shard's processed counter, read on the node that serves it) and of Redis CPU time
//! (`used_cpu_sys + used_cpu_user` of `INFO`, before and after the drain), the CPU seconds per
//! job there, the jobs per Lua script call there (`INFO commandstats`: the batch size the worker
//! got), and the projected ceiling of the logical queue, Σ over primaries of
//! 1 / (CPU s per job on that primary): the rate at which every primary would be saturated. On a
//! small machine the worker shares the cores with the Redis servers, so the drained rate says
//! little; the projection is the figure. Then the idle push→start latency of each queue.
//!
//! Two additions for finding where CPU per job goes, both off by default and set by
//! environment (`scripts/bench-cluster` sets them): `OSTQ_BENCH_BY_HAND=1` adds a control phase,
//! N plain queues on N primaries drained by one worker (how users shard by hand), and
//! `OSTQ_BENCH_HOOK` runs a command at each mark where the CPU is read, which the script's
//! `CALLGRIND=1` mode uses to count each primary's instructions in the same windows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ostq_testkit::RedisCluster;
use serde_json::json;

use super::{latency, make_payload, remove_queue, stop_worker, Latency, POLL, PUSH_CHUNK, STALL};
use crate::cli::{BenchArgs, Global};
use crate::util::{check_queue, connect, lib_err, redact};

/// Latency samples per queue (one push at a time to an idle worker).
const LATENCY_SAMPLES: usize = 200;
/// How often the queue's counts are read once the handlers have seen every job: only then, so
/// that polling adds no Redis CPU to the drain being measured.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// One queue's drain: per primary (in node order) the jobs processed there and the Redis CPU
/// seconds used while it was drained.
struct Phase {
    /// "unsharded", "sharded" or "by hand".
    label: &'static str,
    shards: usize,
    jobs_per_node: Vec<u64>,
    cpu_per_node: Vec<f64>,
    /// What each primary used of CPU while the cluster was idle, over as long as the phase took
    /// between its two CPU readings (cluster bus, `serverCron`): a cost that does not grow with
    /// the jobs, so the ceiling is also given without it.
    idle_cpu_per_node: Vec<f64>,
    /// Lua script calls (`EVALSHA` and `EVAL`, from `INFO commandstats`) each primary ran while
    /// the queue was pushed and drained: jobs per call is the batch size the worker got there.
    script_calls_per_node: Vec<u64>,
    /// Redis CPU seconds each primary used while the jobs were pushed (the rest of
    /// `cpu_per_node` is the drain).
    push_cpu_per_node: Vec<f64>,
    /// Per command (as `INFO commandstats` names it, commands run inside scripts included), the
    /// calls and microseconds of all primaries over the phase: where the CPU per job went.
    commands: Vec<(String, u64, u64)>,
    push_s: f64,
    drain_s: f64,
    latency: Latency,
}

impl Phase {
    fn jobs(&self) -> u64 {
        self.jobs_per_node.iter().sum()
    }

    fn cpu(&self) -> f64 {
        self.cpu_per_node.iter().sum()
    }

    /// Σ over the primaries that did jobs of jobs / CPU seconds there.
    fn ceiling(&self) -> f64 {
        ceiling(&self.jobs_per_node, self.cpu_per_node.iter().copied())
    }

    /// The same with each primary's idle CPU taken off: the marginal cost of a job, which is
    /// what bounds a saturated primary.
    fn ceiling_net(&self) -> f64 {
        let net = self
            .cpu_per_node
            .iter()
            .zip(&self.idle_cpu_per_node)
            .map(|(cpu, idle)| cpu - idle);
        ceiling(&self.jobs_per_node, net)
    }

    /// Pushed and drained, jobs per second of wall-clock time.
    fn rate(&self) -> f64 {
        self.jobs() as f64 / (self.push_s + self.drain_s)
    }

    /// Mean Redis CPU µs per job on the primaries that did jobs.
    fn cpu_us_per_job(&self) -> f64 {
        let (jobs, cpu) = self
            .jobs_per_node
            .iter()
            .zip(&self.cpu_per_node)
            .filter(|(jobs, _)| **jobs > 0)
            .fold((0u64, 0.0), |(j, c), (jobs, cpu)| (j + jobs, c + cpu));
        cpu / jobs.max(1) as f64 * 1e6
    }
}

/// Σ over the primaries that did jobs of jobs / CPU seconds there.
fn ceiling(jobs: &[u64], cpu: impl Iterator<Item = f64>) -> f64 {
    jobs.iter()
        .zip(cpu)
        .filter(|(jobs, cpu)| **jobs > 0 && *cpu > 0.0)
        .map(|(jobs, cpu)| *jobs as f64 / cpu)
        .sum()
}

/// How long the idle CPU of each primary is measured before the phases.
const IDLE: Duration = Duration::from_secs(2);

pub(super) async fn run(global: &Global, args: &BenchArgs, shards: usize) -> anyhow::Result<()> {
    let prefix = match &args.queue {
        Some(q) => q.clone(),
        None => format!("bench-{}", ulid::Ulid::new().to_string().to_lowercase()),
    };
    let (flat, sharded) = (format!("{prefix}-flat"), format!("{prefix}-sharded"));
    check_queue(&flat)?;
    check_queue(&sharded)?;
    let by_hand = std::env::var_os(BY_HAND_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    let mut by_hand_queues: Vec<String> = Vec::new();

    // Only an explicit --url is used; without one, a private cluster of one primary per shard.
    let mut private = None;
    let (url, nodes) = match global.url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => (url.to_string(), node_urls(url)?),
        None => {
            let primaries = shards.max(3);
            let cluster = tokio::task::spawn_blocking(move || RedisCluster::start(primaries))
                .await
                .map_err(|e| anyhow!("cannot start a Redis Cluster: {e}"))??;
            let nodes = cluster.urls();
            let url = format!(
                "redis+cluster://{}",
                nodes
                    .iter()
                    .map(|u| u.trim_start_matches("redis://"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            private = Some(cluster);
            (url, nodes)
        }
    };
    eprintln!(
        "ostq bench: {} jobs on an unsharded queue then on {shards} shards, concurrency {}, {} \
         cluster of {} primaries at {}; queues {prefix}-*",
        args.jobs,
        concurrency(args),
        if private.is_some() {
            "a private"
        } else {
            "the"
        },
        nodes.len(),
        redact(&url)
    );
    let outcome = async {
        let client = connect(&url).await?;
        if !client.is_cluster() {
            bail!("--shards measures a Redis Cluster: give its primaries as redis+cluster://host:port,host:port,…");
        }
        // A plain connection to each primary: INFO and the counters of the shards it serves.
        let mut node_clients = Vec::with_capacity(nodes.len());
        for node in &nodes {
            node_clients.push(
                ostq::Client::connect(node)
                    .await
                    .map_err(lib_err("cannot connect to a primary"))?,
            );
        }
        hook("idle-start").await?;
        let before = cpu_per_node(&node_clients).await?;
        tokio::time::sleep(IDLE).await;
        let after = cpu_per_node(&node_clients).await?;
        hook("idle-end").await?;
        let idle: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a - b) / IDLE.as_secs_f64())
            .collect();
        let flat_phase = phase(&url, &client, &node_clients, &idle, &flat, Kind::Shards(1), args).await?;
        let sharded_phase = phase(&url, &client, &node_clients, &idle, &sharded, Kind::Shards(shards), args).await?;
        let by_hand_phase = if by_hand {
            let names = by_hand_names(&node_clients, &prefix, shards).await?;
            by_hand_queues.clone_from(&names);
            Some(phase(&url, &client, &node_clients, &idle, &format!("{prefix}-hand"), Kind::ByHand(names), args).await?)
        } else {
            None
        };
        Ok::<_, anyhow::Error>((flat_phase, sharded_phase, by_hand_phase))
    }
    .await;
    if private.is_none() {
        if let Ok(client) = connect(&url).await {
            for name in [&flat, &sharded].into_iter().chain(&by_hand_queues) {
                if let Err(e) = remove_queue(&client, name).await {
                    eprintln!("ostq bench: could not delete the queue {name}: {e:#}");
                }
            }
        }
    }
    if let Some(cluster) = private.take() {
        let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    }
    let (flat_phase, sharded_phase, by_hand_phase) = outcome?;
    let by_hand_phase = by_hand_phase.as_ref();
    if global.json {
        println!(
            "{}",
            serde_json::to_string(&report_json(
                &url,
                args,
                nodes.len(),
                &flat_phase,
                &sharded_phase,
                by_hand_phase
            ))?
        );
    } else {
        print!(
            "{}",
            report_text(
                &url,
                args,
                nodes.len(),
                &flat_phase,
                &sharded_phase,
                by_hand_phase
            )
        );
    }
    Ok(())
}

fn concurrency(args: &BenchArgs) -> u32 {
    args.concurrency.first().copied().unwrap_or(500)
}

/// `redis+cluster://[user:password@]host:port,host:port` → `redis://[user:password@]host:port`
/// for each node (`rediss://` for `rediss+cluster://`).
fn node_urls(url: &str) -> anyhow::Result<Vec<String>> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("bad Redis URL {:?}", redact(url)))?;
    let plain = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => bail!(
            "--shards measures a Redis Cluster: give its primaries as \
             redis+cluster://host:port,host:port,… (not {})",
            redact(url)
        ),
    };
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .trim_end_matches('/')
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| format!("{plain}://{auth}{host}"))
        .collect();
    if nodes.is_empty() {
        bail!("no node in {}", redact(url));
    }
    Ok(nodes)
}

/// What a phase pushes to and drains.
enum Kind {
    /// One logical queue of this many shards (`set_shards`; 1 is the unsharded queue).
    Shards(usize),
    /// The control: plain unsharded queues, one per primary, pushed in turn and served by one
    /// worker, as users shard by hand (no `set_shards`, no shard ids).
    ByHand(Vec<String>),
}

/// Pushes and drains `args.jobs` jobs on `name` (as `kind` says), then times idle pushes
/// (not for [`Kind::ByHand`], which has no one queue to push to).
async fn phase(
    url: &str,
    client: &ostq::Client,
    nodes: &[ostq::Client],
    idle_per_s: &[f64],
    name: &str,
    kind: Kind,
    args: &BenchArgs,
) -> anyhow::Result<Phase> {
    let n = args.jobs;
    // The physical queues, the queue handles pushed to, and how a job is mapped to the index of
    // its physical queue.
    let (label, physical, pushed_to, index_of): (_, Vec<String>, Vec<ostq::Queue>, IndexOf) =
        match kind {
            Kind::Shards(shards) => {
                let queue = client.queue(name);
                let layout = queue
                    .set_shards(shards)
                    .await
                    .map_err(lib_err("cannot set the shards"))?;
                let shard_of = layout.clone();
                (
                    if shards == 1 { "unsharded" } else { "sharded" },
                    layout.shards.clone(),
                    vec![queue],
                    Arc::new(move |job: &ostq::Job| shard_of.shard_of_id(&job.id)),
                )
            }
            Kind::ByHand(names) => {
                let queues = names.iter().map(|q| client.queue(q)).collect();
                let lookup = names.clone();
                (
                    "by hand",
                    names,
                    queues,
                    Arc::new(move |job: &ostq::Job| {
                        lookup
                            .iter()
                            .position(|q| *q == job.queue)
                            .unwrap_or(usize::MAX)
                    }),
                )
            }
        };
    eprintln!(
        "ostq bench: {n} jobs on '{name}' ({label}, {} physical queue{})",
        physical.len(),
        if physical.len() == 1 { "" } else { "s" }
    );
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| make_payload(i, args.payload_bytes))
        .collect();
    hook(&format!("{}-start", label.replace(' ', "-"))).await?;
    let before = counters_per_node(nodes).await?;
    let start = Instant::now();
    for chunk in payloads.chunks(PUSH_CHUNK) {
        // By hand: each chunk split evenly over the queues, one bulk push each, in turn.
        let part = chunk.len().div_ceil(pushed_to.len());
        for (queue, part) in pushed_to.iter().zip(chunk.chunks(part)) {
            queue
                .push_bulk(part)
                .await
                .map_err(lib_err("cannot push"))?;
        }
    }
    let push_s = start.elapsed().as_secs_f64();
    let pushed = counters_per_node(nodes).await?;
    hook(&format!("{}-pushed", label.replace(' ', "-"))).await?;
    let (drain_s, per_queue) =
        drain(url, &pushed_to, &physical, index_of, n, concurrency(args)).await?;
    let after = counters_per_node(nodes).await?;
    hook(&format!("{}-drained", label.replace(' ', "-"))).await?;
    let wall_s = start.elapsed().as_secs_f64();

    // Jobs per primary: the jobs each physical queue gave the handlers, on the node serving it.
    let mut jobs_per_node = vec![0u64; nodes.len()];
    for (queue, jobs) in physical.iter().zip(&per_queue) {
        jobs_per_node[owner(nodes, queue).await?] += jobs;
    }
    let latency = if pushed_to.len() == 1 {
        latency(url, client, name, LATENCY_SAMPLES, args.payload_bytes)
            .await
            .with_context(|| format!("idle latency on '{name}'"))?
    } else {
        Latency {
            samples: 0,
            p50_us: 0.0,
            p90_us: 0.0,
            p99_us: 0.0,
            max_us: 0.0,
            push_call_p50_us: 0.0,
        }
    };
    Ok(Phase {
        label,
        shards: physical.len(),
        jobs_per_node,
        cpu_per_node: before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.used_cpu_secs() - b.used_cpu_secs())
            .collect(),
        idle_cpu_per_node: idle_per_s.iter().map(|rate| rate * wall_s).collect(),
        script_calls_per_node: before
            .iter()
            .zip(&after)
            .map(|(b, a)| script_calls(a).saturating_sub(script_calls(b)))
            .collect(),
        push_cpu_per_node: before
            .iter()
            .zip(&pushed)
            .map(|(b, a)| a.used_cpu_secs() - b.used_cpu_secs())
            .collect(),
        commands: command_deltas(&before, &after),
        push_s,
        drain_s,
        latency,
    })
}

/// Maps a job to the index of the physical queue it came from.
type IndexOf = Arc<dyn Fn(&ostq::Job) -> usize + Send + Sync>;

/// The environment variable that adds the by-hand control phase ([`Kind::ByHand`]).
const BY_HAND_ENV: &str = "OSTQ_BENCH_BY_HAND";

/// The environment variable naming a command run at each boundary of the measured windows
/// (`sh -c '<command> "$1"' sh <mark>`, waited for, its failure an error), with the mark
/// `idle-start`, `idle-end`, then `<phase>-start`, `<phase>-pushed` and `<phase>-drained` for
/// the phases `unsharded`, `sharded` and `by-hand`: the CPU readings of a phase are taken just
/// after `-start` and just before `-pushed` and `-drained`. `scripts/bench-cluster`'s
/// `CALLGRIND=1` mode uses it to count each primary's instructions in the same windows.
const HOOK_ENV: &str = "OSTQ_BENCH_HOOK";

/// Runs the `OSTQ_BENCH_HOOK` command, if any, with `mark`.
async fn hook(mark: &str) -> anyhow::Result<()> {
    let Some(command) = std::env::var_os(HOOK_ENV).filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    let mut script = command.clone();
    script.push(" \"$1\"");
    let mark = mark.to_string();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .arg(&mark)
            .status()
    })
    .await?
    .with_context(|| format!("cannot run {HOOK_ENV}"))?;
    if !status.success() {
        bail!("{HOOK_ENV} {command:?} failed: {status}");
    }
    Ok(())
}

/// For the by-hand control: `shards` plain queue names, the i-th served by primary i.
async fn by_hand_names(
    nodes: &[ostq::Client],
    prefix: &str,
    shards: usize,
) -> anyhow::Result<Vec<String>> {
    if nodes.len() < shards {
        bail!(
            "the by-hand control needs a primary per queue: {shards} queues, {} primaries",
            nodes.len()
        );
    }
    let mut names = Vec::with_capacity(shards);
    for i in 0..shards {
        let mut found = None;
        for salt in 0..10_000u32 {
            let name = format!("{prefix}-hand{i}-{salt}");
            if owner(nodes, &name).await? == i {
                found = Some(name);
                break;
            }
        }
        names.push(found.ok_or_else(|| anyhow!("no queue name found on primary {i}"))?);
    }
    Ok(names)
}

/// The index of the node that serves physical queue `shard`. A shard's own name is not one a
/// user may open (it has a `#`), so this asks for the counters of a probe queue name in the same
/// hash slot: the node serving the slot answers, the others redirect (MOVED).
async fn owner(nodes: &[ostq::Client], shard: &str) -> anyhow::Result<usize> {
    let slot = ostq::keys::slot_of_queue(shard);
    // About 16,384 names are tried on average (CRC16 is cheap); the bound only ends the search.
    let probe = (0..1_000_000u32)
        .map(|k| format!("ostq-bench-probe-{k}"))
        .find(|name| ostq::keys::slot_of_queue(name) == slot)
        .ok_or_else(|| anyhow!("no probe name found for slot {slot}"))?;
    let mut errors = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        match node.queue(&probe).totals().await {
            Ok(_) => return Ok(i),
            Err(e) => errors.push(e.to_string()),
        }
    }
    bail!(
        "no primary given serves shard {shard} (slot {slot}); list every primary in the URL: {}",
        errors.join("; ")
    )
}

/// Runs a worker on its own connections, serving every queue in `queues` (a sharded queue's
/// worker follows its layout), until its handlers have seen `n` jobs and the queues count them
/// processed; returns the seconds taken and the jobs each physical queue gave (`index_of`).
async fn drain(
    url: &str,
    queues: &[ostq::Queue],
    physical: &[String],
    index_of: IndexOf,
    n: usize,
    concurrency: u32,
) -> anyhow::Result<(f64, Vec<u64>)> {
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let per_queue: Arc<Vec<AtomicU64>> =
        Arc::new(physical.iter().map(|_| AtomicU64::new(0)).collect());
    let tally = per_queue.clone();
    let mut builder = ostq::Worker::builder(connect(url).await?);
    for queue in queues {
        builder = builder.queue(queue.name());
    }
    let worker = builder
        .concurrency(concurrency as usize)
        .doctor(false)
        .shutdown_timeout(Duration::from_secs(5))
        .handler(move |job: ostq::Job| {
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(queue) = tally.get(index_of(&job)) {
                queue.fetch_add(1, Ordering::Relaxed);
            }
            async { Ok::<_, ostq::BoxError>(()) }
        })
        .build()
        .map_err(lib_err("cannot build the worker"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let mut handle = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let target = n as u64;
    let mut last_seen = (0, Instant::now());
    // Counted in this process first (no Redis read while the jobs run), then confirmed in Redis.
    let outcome = async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                ended = &mut handle => bail!("the worker stopped early: {ended:?}"),
            }
            let started = seen.load(Ordering::Relaxed);
            if started >= target {
                break;
            }
            if started != last_seen.0 {
                last_seen = (started, Instant::now());
            } else if last_seen.1.elapsed() > STALL {
                bail!(
                    "processing stalled: {started} of {n} jobs started, none for {}s",
                    STALL.as_secs()
                );
            }
        }
        let deadline = Instant::now() + STALL;
        loop {
            let (mut processed, mut active) = (0, 0);
            for queue in queues {
                let counts = queue
                    .counts()
                    .await
                    .map_err(lib_err("cannot read the counts"))?;
                processed += counts.processed_total;
                active += counts.active;
            }
            if processed >= target && active == 0 {
                return Ok(start.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("{processed} of {n} jobs counted processed");
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
    .await;
    stop_worker(stop, &mut handle, outcome.is_ok()).await?;
    let drain_s = outcome?;
    Ok((
        drain_s,
        per_queue
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect(),
    ))
}

/// One `INFO` per primary, in node order.
async fn counters_per_node(
    nodes: &[ostq::Client],
) -> anyhow::Result<Vec<ostq::admin::ServerStats>> {
    let mut stats = Vec::with_capacity(nodes.len());
    for node in nodes {
        stats.push(
            node.server_stats()
                .await
                .map_err(lib_err("cannot read INFO of a primary"))?,
        );
    }
    Ok(stats)
}

/// Lua script calls (`EVALSHA` + `EVAL`) a primary has run so far.
fn script_calls(stats: &ostq::admin::ServerStats) -> u64 {
    ["evalsha", "eval"]
        .iter()
        .filter_map(|name| stats.commands.get(*name))
        .map(|c| c.calls)
        .sum()
}

/// Calls and microseconds per command between two readings of every primary, summed over the
/// primaries, most microseconds first. `CONFIG RESETSTAT` in between would only lose a command.
fn command_deltas(
    before: &[ostq::admin::ServerStats],
    after: &[ostq::admin::ServerStats],
) -> Vec<(String, u64, u64)> {
    let mut sums: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for (b, a) in before.iter().zip(after) {
        for (name, now) in &a.commands {
            let (calls, usec) = b
                .commands
                .get(name)
                .map_or((0, 0), |then| (then.calls, then.usec));
            let sum = sums.entry(name).or_default();
            sum.0 += now.calls.saturating_sub(calls);
            sum.1 += now.usec.saturating_sub(usec);
        }
    }
    let mut out: Vec<_> = sums
        .into_iter()
        .filter(|(_, (calls, _))| *calls > 0)
        .map(|(name, (calls, usec))| (name.to_string(), calls, usec))
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.2));
    out
}

/// Redis CPU seconds (user + system) used so far by each primary.
async fn cpu_per_node(nodes: &[ostq::Client]) -> anyhow::Result<Vec<f64>> {
    Ok(counters_per_node(nodes)
        .await?
        .iter()
        .map(|s| s.used_cpu_secs())
        .collect())
}

fn phase_json(p: &Phase) -> serde_json::Value {
    let jobs = p.jobs().max(1) as f64;
    let cpu = p.cpu();
    json!({
        "shards": p.shards,
        "jobs": p.jobs(),
        "push_s": p.push_s,
        "drain_s": p.drain_s,
        "jobs_per_s": p.rate(),
        "redis_cpu_us_per_job": p.cpu_us_per_job(),
        "push_redis_cpu_us_per_job": p.push_cpu_per_node.iter().sum::<f64>() / jobs * 1e6,
        "commands": p.commands.iter().map(|(name, calls, usec)| json!({
            "command": name,
            "calls": calls,
            "usec": usec,
            "usec_per_job": *usec as f64 / jobs,
            "calls_per_job": *calls as f64 / jobs,
        })).collect::<Vec<_>>(),
        "ceiling_jobs_per_s": p.ceiling(),
        "ceiling_net_of_idle_jobs_per_s": p.ceiling_net(),
        "primaries": p.jobs_per_node.iter().zip(&p.cpu_per_node).enumerate().map(|(i, (j, c))| json!({
            "jobs": j,
            "job_share": *j as f64 / jobs,
            "cpu_s": c,
            "idle_cpu_s": p.idle_cpu_per_node.get(i).copied().unwrap_or(0.0),
            "script_calls": p.script_calls_per_node.get(i).copied().unwrap_or(0),
            "push_cpu_s": p.push_cpu_per_node.get(i).copied().unwrap_or(0.0),
            "cpu_share": if cpu > 0.0 { c / cpu } else { 0.0 },
            "cpu_us_per_job": if *j > 0 { c / *j as f64 * 1e6 } else { 0.0 },
        })).collect::<Vec<_>>(),
        "latency_us": {
            "samples": p.latency.samples,
            "p50": p.latency.p50_us,
            "p90": p.latency.p90_us,
            "p99": p.latency.p99_us,
            "max": p.latency.max_us,
        },
    })
}

fn report_json(
    url: &str,
    args: &BenchArgs,
    primaries: usize,
    flat: &Phase,
    sharded: &Phase,
    by_hand: Option<&Phase>,
) -> serde_json::Value {
    let mut report = json!({
        "url": redact(url),
        "jobs": args.jobs,
        "concurrency": concurrency(args),
        "primaries": primaries,
        "unsharded": phase_json(flat),
        "sharded": phase_json(sharded),
        "ratios": {
            "ceiling": sharded.ceiling() / flat.ceiling(),
            "ceiling_net_of_idle": sharded.ceiling_net() / flat.ceiling_net(),
            "rate": sharded.rate() / flat.rate(),
            "cpu_per_job": sharded.cpu_us_per_job() / flat.cpu_us_per_job(),
            "latency_p50": sharded.latency.p50_us / flat.latency.p50_us,
            "latency_p90": sharded.latency.p90_us / flat.latency.p90_us,
        },
    });
    if let Some(hand) = by_hand {
        report["by_hand"] = phase_json(hand);
        report["ratios"]["by_hand"] = json!({
            "ceiling": hand.ceiling() / flat.ceiling(),
            "ceiling_net_of_idle": hand.ceiling_net() / flat.ceiling_net(),
            "rate": hand.rate() / flat.rate(),
            "cpu_per_job": hand.cpu_us_per_job() / flat.cpu_us_per_job(),
        });
    }
    report
}

fn phase_text(p: &Phase) -> String {
    let mut out = format!(
        "\n{}: {} physical queue{}, {} jobs pushed in {:.2} s and drained in {:.2} s ({:.0} jobs/s)\n",
        p.label,
        p.shards,
        if p.shards == 1 { "" } else { "s" },
        p.jobs(),
        p.push_s,
        p.drain_s,
        p.rate()
    );
    out += "  primary  jobs       share    Redis CPU s  share    CPU µs/job  jobs/script call\n";
    let (jobs, cpu) = (p.jobs().max(1) as f64, p.cpu());
    for (i, (j, c)) in p.jobs_per_node.iter().zip(&p.cpu_per_node).enumerate() {
        let per_job = if *j > 0 {
            format!("{:.2}", c / *j as f64 * 1e6)
        } else {
            "-".into()
        };
        let calls = p.script_calls_per_node.get(i).copied().unwrap_or(0);
        let per_call = if *j > 0 && calls > 0 {
            format!("{:.1}", *j as f64 / calls as f64)
        } else {
            "-".into()
        };
        out += &format!(
            "  {i:<7}  {j:<9}  {:>5.1} %  {c:>11.3}  {:>5.1} %  {per_job:>10}  {per_call:>16}\n",
            100.0 * *j as f64 / jobs,
            if cpu > 0.0 { 100.0 * c / cpu } else { 0.0 },
        );
    }
    out += &format!(
        "  projected ceiling Σ 1/(CPU s per job): {:.0} jobs/s ({:.0} without the primaries' \
         idle CPU)\n",
        p.ceiling(),
        p.ceiling_net(),
    );
    if p.latency.samples > 0 {
        out += &format!(
            "  idle latency push→start ({} samples): p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs\n",
            p.latency.samples, p.latency.p50_us, p.latency.p90_us, p.latency.p99_us
        );
    }
    let push_cpu: f64 = p.push_cpu_per_node.iter().sum();
    out += &format!(
        "  Redis CPU µs per job: {:.2} pushing, {:.2} draining; per command (µs/job, calls/job):",
        push_cpu / jobs * 1e6,
        (cpu - push_cpu) / jobs * 1e6
    );
    for (name, calls, usec) in p.commands.iter().take(8) {
        out += &format!(
            " {name} {:.2} ({:.3})",
            *usec as f64 / jobs,
            *calls as f64 / jobs
        );
    }
    out += "\n";
    out
}

fn report_text(
    url: &str,
    args: &BenchArgs,
    primaries: usize,
    flat: &Phase,
    sharded: &Phase,
    by_hand: Option<&Phase>,
) -> String {
    let mut out = format!(
        "ostq bench --shards {} on {} ({primaries} primaries), {} jobs, concurrency {}\n",
        sharded.shards,
        redact(url),
        args.jobs,
        concurrency(args)
    );
    out += &phase_text(flat);
    out += &phase_text(sharded);
    if let Some(hand) = by_hand {
        out += &phase_text(hand);
    }
    out += &format!(
        "\nsharded / unsharded: ceiling {:.2}x ({:.2}x without idle CPU), rate {:.2}x, Redis CPU per job {:.2}x, idle \
         latency p50 {:.2}x, p90 {:.2}x\n",
        sharded.ceiling() / flat.ceiling(),
        sharded.ceiling_net() / flat.ceiling_net(),
        sharded.rate() / flat.rate(),
        sharded.cpu_us_per_job() / flat.cpu_us_per_job(),
        sharded.latency.p50_us / flat.latency.p50_us,
        sharded.latency.p90_us / flat.latency.p90_us,
    );
    if let Some(hand) = by_hand {
        out += &format!(
            "by hand / unsharded: ceiling {:.2}x, rate {:.2}x, Redis CPU per job {:.2}x\n",
            hand.ceiling() / flat.ceiling(),
            hand.rate() / flat.rate(),
            hand.cpu_us_per_job() / flat.cpu_us_per_job(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_split_a_cluster_url() -> anyhow::Result<()> {
        assert_eq!(
            node_urls("redis+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001")?,
            ["redis://u:p@10.0.0.1:7000", "redis://u:p@10.0.0.2:7001"]
        );
        assert_eq!(node_urls("rediss+cluster://h:1")?, ["rediss://h:1"]);
        assert!(node_urls("redis://127.0.0.1:6379").is_err());
        Ok(())
    }
}
