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
        let before = cpu_per_node(&node_clients).await?;
        tokio::time::sleep(IDLE).await;
        let after = cpu_per_node(&node_clients).await?;
        let idle: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a - b) / IDLE.as_secs_f64())
            .collect();
        let flat_phase = phase(&url, &client, &node_clients, &idle, &flat, 1, args).await?;
        let sharded_phase =
            phase(&url, &client, &node_clients, &idle, &sharded, shards, args).await?;
        Ok::<_, anyhow::Error>((flat_phase, sharded_phase))
    }
    .await;
    if private.is_none() {
        if let Ok(client) = connect(&url).await {
            for name in [&flat, &sharded] {
                if let Err(e) = remove_queue(&client, name).await {
                    eprintln!("ostq bench: could not delete the queue {name}: {e:#}");
                }
            }
        }
    }
    if let Some(cluster) = private.take() {
        let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    }
    let (flat_phase, sharded_phase) = outcome?;
    if global.json {
        println!(
            "{}",
            serde_json::to_string(&report_json(
                &url,
                args,
                nodes.len(),
                &flat_phase,
                &sharded_phase
            ))?
        );
    } else {
        print!(
            "{}",
            report_text(&url, args, nodes.len(), &flat_phase, &sharded_phase)
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

/// Pushes and drains `args.jobs` jobs on `name` with `shards` shards, then times idle pushes.
async fn phase(
    url: &str,
    client: &ostq::Client,
    nodes: &[ostq::Client],
    idle_per_s: &[f64],
    name: &str,
    shards: usize,
    args: &BenchArgs,
) -> anyhow::Result<Phase> {
    let n = args.jobs;
    let queue = client.queue(name);
    let layout = queue
        .set_shards(shards)
        .await
        .map_err(lib_err("cannot set the shards"))?;
    eprintln!(
        "ostq bench: {n} jobs on '{name}' ({shards} shard{})",
        if shards == 1 { "" } else { "s" }
    );
    let before = counters_per_node(nodes).await?;
    let start = Instant::now();
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| make_payload(i, args.payload_bytes))
        .collect();
    for chunk in payloads.chunks(PUSH_CHUNK) {
        queue
            .push_bulk(chunk)
            .await
            .map_err(lib_err("cannot push"))?;
    }
    let push_s = start.elapsed().as_secs_f64();
    let pushed = counters_per_node(nodes).await?;
    let (drain_s, per_shard) = drain(url, &queue, &layout, n, concurrency(args)).await?;
    let after = counters_per_node(nodes).await?;
    let wall_s = start.elapsed().as_secs_f64();

    // Jobs per primary: the jobs each shard gave the handlers, on the node that serves it.
    let mut jobs_per_node = vec![0u64; nodes.len()];
    for (shard, jobs) in layout.shards.iter().zip(&per_shard) {
        jobs_per_node[owner(nodes, shard).await?] += jobs;
    }
    let latency = latency(url, client, name, LATENCY_SAMPLES, args.payload_bytes)
        .await
        .with_context(|| format!("idle latency on '{name}'"))?;
    Ok(Phase {
        shards,
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

/// Runs a worker on its own connections until its handlers have seen `n` jobs and the queue
/// counts them processed; returns the seconds taken and the jobs each shard gave (by the shard a
/// generated id names).
async fn drain(
    url: &str,
    queue: &ostq::Queue,
    layout: &ostq::shards::ShardLayout,
    n: usize,
    concurrency: u32,
) -> anyhow::Result<(f64, Vec<u64>)> {
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let per_shard: Arc<Vec<AtomicU64>> =
        Arc::new(layout.shards.iter().map(|_| AtomicU64::new(0)).collect());
    let tally = per_shard.clone();
    let shard_of = Arc::new(layout.clone());
    let worker = ostq::Worker::builder(connect(url).await?)
        .queue(queue.name())
        .concurrency(concurrency as usize)
        .doctor(false)
        .shutdown_timeout(Duration::from_secs(5))
        .handler(move |job: ostq::Job| {
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(shard) = tally.get(shard_of.shard_of_id(&job.id)) {
                shard.fetch_add(1, Ordering::Relaxed);
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
            let counts = queue
                .counts()
                .await
                .map_err(lib_err("cannot read the counts"))?;
            if counts.processed_total >= target && counts.active == 0 {
                return Ok(start.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("{} of {n} jobs counted processed", counts.processed_total);
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }
    .await;
    stop_worker(stop, &mut handle, outcome.is_ok()).await?;
    let drain_s = outcome?;
    Ok((
        drain_s,
        per_shard
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
) -> serde_json::Value {
    json!({
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
    })
}

fn phase_text(name: &str, p: &Phase) -> String {
    let mut out = format!(
        "\n{name}: {} shard{}, {} jobs pushed in {:.2} s and drained in {:.2} s ({:.0} jobs/s)\n",
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
         idle CPU)\n  idle latency push→start \
         ({} samples): p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs\n",
        p.ceiling(),
        p.ceiling_net(),
        p.latency.samples,
        p.latency.p50_us,
        p.latency.p90_us,
        p.latency.p99_us
    );
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
) -> String {
    let mut out = format!(
        "ostq bench --shards {} on {} ({primaries} primaries), {} jobs, concurrency {}\n",
        sharded.shards,
        redact(url),
        args.jobs,
        concurrency(args)
    );
    out += &phase_text("unsharded", flat);
    out += &phase_text("sharded", sharded);
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
