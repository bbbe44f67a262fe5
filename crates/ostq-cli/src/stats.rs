//! `ostq stats`: counts, throughput, failure rate and latency per queue, Redis memory and clients,
//! alert thresholds for cron.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::cli::{Global, StatsArgs};
use crate::util::{check_queue, connect, lib_err, now_ms, short_duration, Exit};

/// The window jobs/s is measured over in `--watch`.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// What one look at a queue found.
#[derive(Debug, Clone)]
pub struct QueueStats {
    pub counts: ostq::QueueCounts,
    /// Age of the job that runs next, if any is pending.
    pub oldest_pending: Option<Duration>,
    /// Attempts finished per second over `rate_window`, when measured.
    pub jobs_per_sec: Option<f64>,
    pub rate_window: Option<Duration>,
}

impl QueueStats {
    /// failed / processed since the queue began.
    pub fn failure_rate(&self) -> Option<f64> {
        let c = &self.counts;
        (c.processed_total > 0).then(|| c.failed_total as f64 / c.processed_total as f64)
    }
}

pub use ostq::RedisInfo;

/// One full look: every queue and Redis.
pub struct Snapshot {
    pub queues: Vec<QueueStats>,
    pub redis: RedisInfo,
}

/// Reads the stats of the given queues (all known queues for an empty list).
pub struct Collector {
    client: ostq::Client,
    names: Vec<String>,
    /// (when, processed_total per queue) samples, newest last.
    history: VecDeque<(Instant, BTreeMap<String, u64>)>,
}

impl Collector {
    pub async fn new(url: &str, names: Vec<String>) -> anyhow::Result<Self> {
        for q in &names {
            check_queue(q)?;
        }
        let client = connect(url).await?;
        Ok(Self {
            client,
            names,
            history: VecDeque::new(),
        })
    }

    async fn queue_names(&self) -> anyhow::Result<Vec<String>> {
        if self.names.is_empty() {
            self.client
                .queues()
                .await
                .map_err(lib_err("cannot list the queues"))
        } else {
            Ok(self.names.clone())
        }
    }

    /// Processed totals now, remembered for the rate.
    pub async fn sample(&mut self) -> anyhow::Result<Vec<ostq::QueueCounts>> {
        let mut all = Vec::new();
        for name in self.queue_names().await? {
            let counts = self
                .client
                .queue(&name)
                .counts()
                .await
                .map_err(lib_err("cannot read queue counts"))?;
            all.push(counts);
        }
        let now = Instant::now();
        let totals = all
            .iter()
            .map(|c| (c.queue.clone(), c.processed_total))
            .collect();
        self.history.push_back((now, totals));
        while self
            .history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.history.pop_front();
        }
        Ok(all)
    }

    /// A full look; jobs/s is measured against the oldest remembered sample.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let all = self.sample().await?;
        let (now, _) = self
            .history
            .back()
            .cloned()
            .unwrap_or((Instant::now(), BTreeMap::new()));
        let oldest = self.history.front().cloned();
        let mut queues = Vec::new();
        for counts in all {
            let (jobs_per_sec, rate_window) = match &oldest {
                Some((then, totals)) if now.duration_since(*then) >= Duration::from_millis(200) => {
                    let dt = now.duration_since(*then);
                    let before = totals.get(&counts.queue).copied().unwrap_or(0);
                    let done = counts.processed_total.saturating_sub(before);
                    (Some(done as f64 / dt.as_secs_f64()), Some(dt))
                }
                _ => (None, None),
            };
            let oldest_pending = if counts.pending > 0 {
                let head = self
                    .client
                    .queue(&counts.queue)
                    .jobs(ostq::JobState::Pending, 0, 1)
                    .await
                    .map_err(lib_err("cannot read pending jobs"))?;
                head.first()
                    .and_then(|j| j.enqueued_at_ms)
                    .map(|t| Duration::from_millis(now_ms().saturating_sub(t)))
            } else {
                None
            };
            queues.push(QueueStats {
                counts,
                oldest_pending,
                jobs_per_sec,
                rate_window,
            });
        }
        let redis = self.redis_info().await?;
        Ok(Snapshot { queues, redis })
    }

    async fn redis_info(&mut self) -> anyhow::Result<RedisInfo> {
        self.client
            .redis_info()
            .await
            .map_err(lib_err("cannot read Redis INFO"))
    }
}

/// The thresholds a snapshot is checked against.
struct Thresholds {
    max_pending: Option<u64>,
    max_failure_rate: Option<f64>,
    max_latency: Option<Duration>,
}

fn alerts(snap: &Snapshot, t: &Thresholds) -> Vec<String> {
    let mut out = Vec::new();
    for q in &snap.queues {
        let name = &q.counts.queue;
        if let Some(max) = t.max_pending {
            if q.counts.pending > max {
                out.push(format!(
                    "queue '{name}' has {} pending jobs (max {max})",
                    q.counts.pending
                ));
            }
        }
        if let (Some(max), Some(rate)) = (t.max_failure_rate, q.failure_rate()) {
            if rate > max {
                out.push(format!(
                    "queue '{name}' failure rate is {:.1}% (max {:.1}%)",
                    rate * 100.0,
                    max * 100.0
                ));
            }
        }
        if let (Some(max), Some(age)) = (t.max_latency, q.oldest_pending) {
            if age > max {
                out.push(format!(
                    "queue '{name}' latency is {} (max {})",
                    short_duration(age),
                    short_duration(max)
                ));
            }
        }
    }
    out
}

/// The JSON document of a snapshot.
pub fn snapshot_json(snap: &Snapshot, alerts: &[String]) -> Value {
    let mut queues = Map::new();
    for q in &snap.queues {
        let c = &q.counts;
        queues.insert(
            c.queue.clone(),
            json!({
                "pending": c.pending,
                "active": c.active,
                "scheduled": c.scheduled,
                "retry": c.retry,
                "dead": c.dead,
                "completed": c.completed,
                "processed_total": c.processed_total,
                "failed_total": c.failed_total,
                "recovered_total": c.recovered_total,
                "paused": c.paused,
                "failure_rate": q.failure_rate(),
                "oldest_pending_age_ms": q.oldest_pending.map(|d| d.as_millis() as u64),
                "jobs_per_sec": q.jobs_per_sec,
                "rate_window_secs": q.rate_window.map(|d| d.as_secs_f64()),
            }),
        );
    }
    json!({
        "queues": queues,
        "redis": serde_json::to_value(&snap.redis).unwrap_or_default(),
        "alerts": alerts,
    })
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
            .failure_rate()
            .map(|r| format!("{:.1}", r * 100.0))
            .unwrap_or_else(|| "-".into());
        let jps = q
            .jobs_per_sec
            .map(|r| format!("{r:.1}"))
            .unwrap_or_else(|| "-".into());
        let latency = q
            .oldest_pending
            .map(short_duration)
            .unwrap_or_else(|| "-".into());
        window = window.or(q.rate_window);
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
    thresholds: &Thresholds,
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
    let thresholds = Thresholds {
        max_pending: args.max_pending,
        max_failure_rate: args.max_failure_rate.map(|r| r.0),
        max_latency: args.max_latency,
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
            message: format!("alert: {}", found.join("; ")),
        }
        .into());
    }
    Ok(())
}
