//! `ostq stats`: counts, throughput, failure rate and latency per queue, Redis memory and clients,
//! alert thresholds for cron.

use std::io::IsTerminal;
use std::time::Duration;

use ostq::admin::alerts::{self, AlertRules};
use ostq::admin::{Snapshot, StatsSampler};
use serde_json::Value;

use crate::cli::{Global, StatsArgs};
use crate::util::{check_queue, connect, lib_err, short_duration, Exit};

/// The window jobs/s is measured over in `--watch`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Reads the stats of the given queues (all known queues for an empty list), through the
/// library's [`StatsSampler`]: rates, failure rate and the age of the next job are computed there.
pub struct Collector {
    sampler: StatsSampler,
}

impl Collector {
    pub async fn new(url: &str, names: Vec<String>) -> anyhow::Result<Self> {
        for q in &names {
            check_queue(q)?;
        }
        let client = connect(url).await?;
        let sampler = StatsSampler::new(&client).queues(names).window(RATE_WINDOW);
        Ok(Self { sampler })
    }

    /// Processed totals now, remembered for the rate.
    pub async fn sample(&mut self) -> anyhow::Result<Vec<ostq::QueueCounts>> {
        self.sampler
            .sample()
            .await
            .map_err(lib_err("cannot read queue counts"))
    }

    /// A full look; jobs/s is measured against the oldest remembered sample.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        self.sampler
            .snapshot()
            .await
            .map_err(lib_err("cannot read the queue stats"))
    }
}

/// One line per crossed threshold, as the library words it.
fn alerts(snap: &Snapshot, rules: &AlertRules) -> Vec<String> {
    alerts::check(snap, rules)
        .into_iter()
        .map(|a| a.message)
        .collect()
}

/// The JSON document of a snapshot: the library's [`Snapshot`] as it serializes, and the alerts.
pub fn snapshot_json(snap: &Snapshot, alerts: &[String]) -> Value {
    #[derive(serde::Serialize)]
    struct Document<'a> {
        #[serde(flatten)]
        snapshot: &'a Snapshot,
        alerts: &'a [String],
    }
    serde_json::to_value(Document {
        snapshot: snap,
        alerts,
    })
    .unwrap_or_default()
}

/// The table of a snapshot for people.
pub fn snapshot_text(snap: &Snapshot) -> String {
    let mut out = format!(
        "{:<24} {:>8} {:>7} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8} {:>6} {:>8} {:>9}\n",
        "QUEUE",
        "PENDING",
        "ACTIVE",
        "SCHED",
        "RETRY",
        "DEAD",
        "DONE",
        "PROCESSED",
        "FAILED",
        "FAIL%",
        "JOBS/S",
        "LATENCY"
    );
    if snap.queues.is_empty() {
        out.push_str("(no queues yet: `ostq push QUEUE PAYLOAD` creates one)\n");
    }
    let mut window = None;
    for q in &snap.queues {
        let c = &q.counts;
        let name = if c.paused {
            format!("{} (paused)", c.queue)
        } else {
            c.queue.clone()
        };
        let rate = q
            .failure_rate
            .map(|r| format!("{:.1}", r * 100.0))
            .unwrap_or_else(|| "-".into());
        let jps = q
            .jobs_per_sec
            .map(|r| format!("{r:.1}"))
            .unwrap_or_else(|| "-".into());
        let latency = q
            .oldest_pending_age()
            .map(short_duration)
            .unwrap_or_else(|| "-".into());
        window = window.or(q.rate_window());
        out.push_str(&format!(
            "{:<24} {:>8} {:>7} {:>6} {:>6} {:>6} {:>6} {:>10} {:>8} {:>6} {:>8} {:>9}\n",
            name,
            c.pending,
            c.active,
            c.scheduled,
            c.retry,
            c.dead,
            c.completed,
            c.processed_total,
            c.failed_total,
            rate,
            jps,
            latency
        ));
    }
    let rate_note = match window {
        Some(w) => format!("jobs/s measured over the last {}", short_duration(w)),
        None => "jobs/s not measured (--sample 0)".to_string(),
    };
    out.push_str(&format!(
        "redis: {} used ({} bytes), {} connected clients, version {}; {rate_note}\n",
        if snap.redis.used_memory_human.is_empty() {
            "?".to_string()
        } else {
            snap.redis.used_memory_human.clone()
        },
        snap.redis.used_memory,
        snap.redis.connected_clients,
        snap.redis.version,
    ));
    let policy = &snap.redis.maxmemory_policy;
    if !policy.is_empty() && policy != "noeviction" {
        out.push_str(&format!(
            "warning: maxmemory-policy is {policy}: Redis may evict queue keys (use noeviction)\n"
        ));
    }
    out
}

async fn watch_loop(
    collector: &mut Collector,
    thresholds: &AlertRules,
    json: bool,
    interval: Duration,
) -> anyhow::Result<()> {
    let clear = std::io::stdout().is_terminal() && !json;
    loop {
        let snap = collector.snapshot().await?;
        let found = alerts(&snap, thresholds);
        if json {
            println!("{}", snapshot_json(&snap, &found));
        } else {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", snapshot_text(&snap));
            for a in &found {
                println!("ALERT: {a}");
            }
            if clear {
                println!(
                    "(refreshing every {}; ctrl-c to stop)",
                    short_duration(interval)
                );
            }
        }
        tokio::time::sleep(interval).await;
    }
}

pub async fn run(global: &Global, args: StatsArgs) -> anyhow::Result<()> {
    let thresholds = AlertRules {
        max_pending: args.max_pending,
        max_failure_rate: args.max_failure_rate.map(|r| r.0),
        max_recent_failure_rate: args.max_recent_failure_rate.map(|r| r.0),
        max_latency: args.max_latency,
        require_workers: args.require_workers,
        max_memory: args.max_memory.map(|r| r.0),
        max_connections: args.max_connections,
        max_dead: args.max_dead,
    };
    let mut collector = Collector::new(&global.redis_url(), args.queues.clone()).await?;

    if args.watch {
        let watch = watch_loop(&mut collector, &thresholds, global.json, args.interval);
        tokio::select! {
            r = watch => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        return Ok(());
    }

    if !args.sample.is_zero() {
        collector.sample().await?;
        tokio::time::sleep(args.sample).await;
    }
    let snap = collector.snapshot().await?;
    let found = alerts(&snap, &thresholds);
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&snapshot_json(&snap, &found))?
        );
    } else {
        print!("{}", snapshot_text(&snap));
    }
    if !found.is_empty() {
        return Err(Exit {
            code: 3,
            message: found
                .iter()
                .map(|a| format!("alert: {a}"))
                .collect::<Vec<_>>()
                .join("\n"),
        }
        .into());
    }
    Ok(())
}
