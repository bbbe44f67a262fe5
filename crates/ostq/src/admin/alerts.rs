//! Alerts: thresholds checked against a [`Snapshot`], the same for `ostq stats` (one `alert:`
//! line each, exit code 3), the dashboard's banners and anything else that watches queues. The
//! five figures an operator must watch (queue length, time to run, Redis memory, failure rate,
//! Redis connections) each have a threshold, plus dead jobs and "pending jobs but no live
//! worker".
//!
//! ```
//! use ostq::admin::alerts::{check, AlertKind, AlertRules};
//! use ostq::admin::{QueueStats, Snapshot};
//!
//! let mut queue = QueueStats::default();
//! queue.counts.queue = "emails".into();
//! queue.counts.pending = 12;
//! queue.workers = Some(0);
//! let mut snapshot = Snapshot::default();
//! snapshot.queues.push(queue);
//!
//! let rules = AlertRules { require_workers: true, ..AlertRules::default() };
//! let alerts = check(&snapshot, &rules);
//! assert_eq!(alerts.len(), 1);
//! assert_eq!(alerts[0].kind, AlertKind::NoWorkers);
//! assert_eq!(alerts[0].queue.as_deref(), Some("emails"));
//! assert_eq!(alerts[0].message, "queue 'emails' has 12 pending jobs and no live worker");
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::server::RedisInfo;
use super::stats::{QueueStats, Snapshot, RECENT_FAILURE_WINDOW};

/// The thresholds to check. The default checks nothing; set the ones you want (and end the
/// literal with `..Default::default()`: later versions may add rules).
///
/// ```
/// use std::time::Duration;
/// let rules = ostq::admin::alerts::AlertRules {
///     max_latency: Some(Duration::from_secs(300)),
///     max_memory: Some(0.8),
///     ..Default::default()
/// };
/// assert!(!rules.require_workers);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertRules {
    /// Pending jobs per queue above this.
    pub max_pending: Option<u64>,
    /// Dead jobs per queue above this.
    pub max_dead: Option<u64>,
    /// Failed over processed attempts since the queue began (0..1) above this.
    pub max_failure_rate: Option<f64>,
    /// Failed over processed attempts in the last [`RECENT_FAILURE_WINDOW`] (0..1) above this.
    pub max_recent_failure_rate: Option<f64>,
    /// The next job has waited longer than this.
    pub max_latency: Option<Duration>,
    /// A queue with pending jobs has no live worker (paused queues are left out).
    pub require_workers: bool,
    /// Redis memory as a share of `maxmemory` (0..1) above this. With no `maxmemory` set, the
    /// rule itself raises [`AlertKind::MemoryUnchecked`]: nothing bounds the memory then.
    pub max_memory: Option<f64>,
    /// Redis client connections above this.
    pub max_connections: Option<u64>,
}

impl AlertRules {
    /// Rules worth showing to anyone looking at queues, without configuration: pending jobs
    /// with no live worker, Redis memory above 90 % of `maxmemory`, and more than half of the
    /// attempts of the last 5 minutes failing.
    ///
    /// ```
    /// let rules = ostq::admin::alerts::AlertRules::recommended();
    /// assert!(rules.require_workers);
    /// assert_eq!(rules.max_memory, Some(0.9));
    /// ```
    pub fn recommended() -> Self {
        Self {
            require_workers: true,
            max_memory: Some(0.9),
            max_recent_failure_rate: Some(0.5),
            ..Self::default()
        }
    }
}

/// Which threshold an [`Alert`] crossed.
///
/// JSON: snake case, e.g. `"no_workers"`.
///
/// ```
/// use ostq::admin::alerts::AlertKind;
/// assert_eq!(serde_json::to_string(&AlertKind::RecentFailureRate).unwrap(), "\"recent_failure_rate\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertKind {
    /// [`AlertRules::max_pending`].
    Pending,
    /// [`AlertRules::max_dead`].
    Dead,
    /// [`AlertRules::max_failure_rate`].
    FailureRate,
    /// [`AlertRules::max_recent_failure_rate`].
    RecentFailureRate,
    /// [`AlertRules::max_latency`].
    Latency,
    /// [`AlertRules::require_workers`].
    NoWorkers,
    /// [`AlertRules::max_memory`].
    Memory,
    /// [`AlertRules::max_memory`] was asked for but Redis has no `maxmemory`.
    MemoryUnchecked,
    /// [`AlertRules::max_connections`].
    Connections,
}

/// One crossed threshold.
///
/// JSON: `{"kind": "latency", "queue": "emails", "message": "queue 'emails' latency is 7m 2s
/// (max 5m 0s)"}` (`queue` is `null` for Redis-wide alerts).
///
/// ```
/// use ostq::admin::alerts::{Alert, AlertKind};
/// let alert = Alert { kind: AlertKind::Connections, queue: None, message: "…".into() };
/// assert!(alert.queue.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Which threshold.
    pub kind: AlertKind,
    /// The queue it concerns; `None` for Redis-wide figures.
    pub queue: Option<String>,
    /// One line for people, with the figure and the threshold.
    pub message: String,
}

/// Every crossed threshold of `snapshot`: Redis's first, then each queue's in order. No figure
/// is an alert when it is unknown (a failure rate before the first attempt, the age of a bare
/// entry that has no enqueue time, workers a snapshot did not read).
///
/// ```
/// use ostq::admin::alerts::{check, AlertKind, AlertRules};
/// let mut snapshot = ostq::admin::Snapshot::default();
/// snapshot.redis.maxmemory = 0; // no limit: the memory rule cannot be checked, and says so
/// let alerts = check(&snapshot, &AlertRules::recommended());
/// assert_eq!(alerts.len(), 1);
/// assert_eq!(alerts[0].kind, AlertKind::MemoryUnchecked);
/// assert!(check(&snapshot, &AlertRules::default()).is_empty());
/// ```
pub fn check(snapshot: &Snapshot, rules: &AlertRules) -> Vec<Alert> {
    let mut out = redis_alerts(&snapshot.redis, rules);
    for queue in &snapshot.queues {
        queue_alerts(queue, rules, &mut out);
    }
    out
}

/// The threshold when `value` exceeds it (`None` when not given or not crossed).
fn exceeded<T: PartialOrd + Copy>(max: Option<T>, value: T) -> Option<T> {
    max.filter(|max| value > *max)
}

fn redis_alert(kind: AlertKind, message: String) -> Alert {
    Alert {
        kind,
        queue: None,
        message,
    }
}

/// Memory (share of maxmemory) and client connections.
fn redis_alerts(redis: &RedisInfo, rules: &AlertRules) -> Vec<Alert> {
    let mut out = Vec::new();
    if let Some(max) = rules.max_memory {
        if redis.maxmemory == 0 {
            out.push(redis_alert(
                AlertKind::MemoryUnchecked,
                "Redis has no maxmemory: its memory use cannot be checked against a limit"
                    .to_string(),
            ));
        } else {
            let share = redis.used_memory as f64 / redis.maxmemory as f64;
            if share > max {
                out.push(redis_alert(
                    AlertKind::Memory,
                    format!(
                        "Redis memory is {:.1}% of maxmemory ({} of {} bytes; max {:.1}%)",
                        share * 100.0,
                        redis.used_memory,
                        redis.maxmemory,
                        max * 100.0
                    ),
                ));
            }
        }
    }
    if let Some(max) = exceeded(rules.max_connections, redis.connected_clients) {
        out.push(redis_alert(
            AlertKind::Connections,
            format!(
                "Redis has {} connected clients (max {max})",
                redis.connected_clients
            ),
        ));
    }
    out
}

/// Pending, dead, failure rates (all-time and recent), live workers and latency of one queue.
fn queue_alerts(q: &QueueStats, rules: &AlertRules, out: &mut Vec<Alert>) {
    let name = &q.counts.queue;
    let mut push = |kind, message| {
        out.push(Alert {
            kind,
            queue: Some(name.clone()),
            message,
        })
    };
    let counted = [
        (
            rules.max_pending,
            q.counts.pending,
            "pending",
            AlertKind::Pending,
        ),
        (rules.max_dead, q.counts.dead, "dead", AlertKind::Dead),
    ];
    for (max, count, state, kind) in counted {
        if let Some(max) = exceeded(max, count) {
            push(
                kind,
                format!("queue '{name}' has {count} {state} jobs (max {max})"),
            );
        }
    }
    let recent = format!(" over the last {}m", RECENT_FAILURE_WINDOW.as_secs() / 60);
    let rates = [
        (
            rules.max_failure_rate,
            q.failure_rate,
            "",
            AlertKind::FailureRate,
        ),
        (
            rules.max_recent_failure_rate,
            q.recent_failure_rate,
            &*recent,
            AlertKind::RecentFailureRate,
        ),
    ];
    for (max, rate, span, kind) in rates {
        let Some(rate) = rate else { continue };
        if let Some(max) = exceeded(max, rate) {
            push(
                kind,
                format!(
                    "queue '{name}' failure rate{span} is {:.1}% (max {:.1}%)",
                    rate * 100.0,
                    max * 100.0
                ),
            );
        }
    }
    // A paused queue is meant not to be served.
    if rules.require_workers && q.counts.pending > 0 && q.workers == Some(0) && !q.counts.paused {
        push(
            AlertKind::NoWorkers,
            format!(
                "queue '{name}' has {} pending jobs and no live worker",
                q.counts.pending
            ),
        );
    }
    if let (Some(max), Some(age)) = (rules.max_latency, q.oldest_pending_age()) {
        if age > max {
            push(
                AlertKind::Latency,
                format!(
                    "queue '{name}' latency is {} (max {})",
                    short_duration(age),
                    short_duration(max)
                ),
            );
        }
    }
}

/// A duration for people: `850ms`, `4.2s`, `7m 2s`, `3h 5m`, `2d 4h`.
///
/// ```
/// use std::time::Duration;
/// use ostq::admin::alerts::short_duration;
/// assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
/// assert_eq!(short_duration(Duration::from_secs(422)), "7m 2s");
/// assert_eq!(short_duration(Duration::from_secs(2 * 86_400 + 4 * 3_600)), "2d 4h");
/// ```
pub fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s < 60 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    if s < 3600 {
        return format!("{}m {}s", s / 60, s % 60);
    }
    if s < 86400 {
        return format!("{}h {}m", s / 3600, (s % 3600) / 60);
    }
    format!("{}d {}h", s / 86400, (s % 86400) / 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str) -> QueueStats {
        let mut q = QueueStats::default();
        q.counts.queue = name.into();
        q
    }

    #[test]
    fn unknown_figures_never_alert() {
        let mut q = queue("q");
        q.counts.pending = 5;
        // Workers not read, no failure rate yet, age of a bare entry unknown.
        let snapshot = Snapshot {
            queues: vec![q],
            ..Snapshot::default()
        };
        let rules = AlertRules {
            max_failure_rate: Some(0.0),
            max_recent_failure_rate: Some(0.0),
            max_latency: Some(Duration::ZERO),
            require_workers: true,
            ..AlertRules::default()
        };
        assert_eq!(check(&snapshot, &rules), Vec::new());
    }

    #[test]
    fn each_threshold_fires_only_when_crossed() {
        let mut q = queue("q");
        q.counts.pending = 10;
        q.counts.dead = 3;
        q.failure_rate = Some(0.25);
        q.recent_failure_rate = Some(0.5);
        q.oldest_pending_age_ms = Some(61_000);
        q.workers = Some(0);
        let mut snapshot = Snapshot {
            queues: vec![q],
            ..Snapshot::default()
        };
        snapshot.redis.used_memory = 95;
        snapshot.redis.maxmemory = 100;
        snapshot.redis.connected_clients = 7;
        let at_the_line = AlertRules {
            max_pending: Some(10),
            max_dead: Some(3),
            max_failure_rate: Some(0.25),
            max_recent_failure_rate: Some(0.5),
            max_latency: Some(Duration::from_millis(61_000)),
            require_workers: false,
            max_memory: Some(0.95),
            max_connections: Some(7),
        };
        assert_eq!(check(&snapshot, &at_the_line), Vec::new());
        let below = AlertRules {
            max_pending: Some(9),
            max_dead: Some(2),
            max_failure_rate: Some(0.2),
            max_recent_failure_rate: Some(0.4),
            max_latency: Some(Duration::from_secs(60)),
            require_workers: true,
            max_memory: Some(0.9),
            max_connections: Some(6),
        };
        let kinds: Vec<AlertKind> = check(&snapshot, &below).iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [
                AlertKind::Memory,
                AlertKind::Connections,
                AlertKind::Pending,
                AlertKind::Dead,
                AlertKind::FailureRate,
                AlertKind::RecentFailureRate,
                AlertKind::NoWorkers,
                AlertKind::Latency,
            ]
        );
    }

    #[test]
    fn a_paused_queue_without_workers_is_no_alert() {
        let mut q = queue("held");
        q.counts.pending = 3;
        q.counts.paused = true;
        q.workers = Some(0);
        let snapshot = Snapshot {
            queues: vec![q],
            ..Snapshot::default()
        };
        let rules = AlertRules {
            require_workers: true,
            ..AlertRules::default()
        };
        assert_eq!(check(&snapshot, &rules), Vec::new());
    }

    #[test]
    fn memory_without_maxmemory_says_so() {
        let rules = AlertRules {
            max_memory: Some(0.5),
            ..AlertRules::default()
        };
        let alerts = check(&Snapshot::default(), &rules);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::MemoryUnchecked);
    }
}
