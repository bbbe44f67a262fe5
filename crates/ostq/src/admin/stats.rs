//! Queue statistics, as `ostq stats` and the dashboard show them: counts per state, the failure
//! rate, how long the next job has waited, and jobs per second over a window of samples.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::server::RedisInfo;
use super::QueueCounts;
use crate::job::{now_ms, JobState};
use crate::producer::Queue;
use crate::store::queues as stored;
use crate::{Client, Result};

/// The window jobs per second are measured over by default ([`StatsSampler::window`]).
///
/// ```
/// assert_eq!(ostq::admin::stats::DEFAULT_RATE_WINDOW.as_secs(), 60);
/// ```
pub const DEFAULT_RATE_WINDOW: Duration = Duration::from_secs(60);
/// Samples closer together than this give no rate (too noisy).
///
/// ```
/// assert_eq!(ostq::admin::stats::MIN_RATE_SPAN.as_millis(), 200);
/// ```
pub const MIN_RATE_SPAN: Duration = Duration::from_millis(200);

/// Queues read at once: their commands are pipelined over the client's multiplexed connection,
/// so a snapshot of many queues takes a few round trips per 64 queues, not per queue.
const QUEUES_IN_FLIGHT: usize = 64;

/// The window [`QueueStats::recent_failure_rate`] is measured over (the minute points of the
/// per-task history covering it).
///
/// ```
/// assert_eq!(ostq::admin::stats::RECENT_FAILURE_WINDOW.as_secs(), 300);
/// ```
pub const RECENT_FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// A queue's running totals, from one cheap read (`HMGET`): fit for polling.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let totals = client.queue("videos").totals().await?;
/// println!("{} processed, {} running now", totals.processed, totals.active);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueTotals {
    /// Attempts that finished, successful or not, since the queue began.
    pub processed: u64,
    /// Attempts that failed (errors, panics, timeouts, lost workers).
    pub failed: u64,
    /// Jobs taken back from workers whose leases expired.
    pub recovered: u64,
    /// Jobs leased by workers now.
    pub active: u64,
}

/// One queue's figures: its counts and what is computed from them.
///
/// JSON: the fields of [`QueueCounts`], then `failure_rate` (0..1 or `null` before the first
/// attempt), `recent_failure_rate` (the same over the last 5 minutes, or `null` when nothing was
/// processed in them), `oldest_pending_age_ms` (how long the job that runs next has waited, or
/// `null`), `jobs_per_sec` and `rate_window_secs` (`null` until two samples are far enough
/// apart).
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let stats = client.queue("videos").stats().await?;
/// if let Some(age) = stats.oldest_pending_age() {
///     println!("the next job has waited {age:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// Counts per state and totals.
    #[serde(flatten)]
    pub counts: QueueCounts,
    /// Failed over processed attempts since the queue began.
    pub failure_rate: Option<f64>,
    /// Failed over processed attempts in the last [`RECENT_FAILURE_WINDOW`] (from the per-task
    /// history, [`Queue::failure_rate_over`]); `null` when nothing was processed in it.
    pub recent_failure_rate: Option<f64>,
    /// How long the job that runs next has waited, in ms.
    pub oldest_pending_age_ms: Option<u64>,
    /// Attempts finished per second over `rate_window_secs`.
    pub jobs_per_sec: Option<f64>,
    /// The span jobs per second were measured over, in seconds.
    pub rate_window_secs: Option<f64>,
    /// Live workers serving the queue (from the registry), when the snapshot read it.
    pub workers: Option<u64>,
}

impl QueueStats {
    /// [`QueueStats::oldest_pending_age_ms`] as a duration.
    ///
    /// ```
    /// let stats = ostq::admin::QueueStats::default();
    /// assert_eq!(stats.oldest_pending_age(), None);
    /// ```
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.oldest_pending_age_ms.map(Duration::from_millis)
    }

    /// [`QueueStats::rate_window_secs`] as a duration.
    ///
    /// ```
    /// let stats = ostq::admin::QueueStats::default();
    /// assert_eq!(stats.rate_window(), None);
    /// ```
    pub fn rate_window(&self) -> Option<Duration> {
        self.rate_window_secs.map(Duration::from_secs_f64)
    }
}

/// Every queue's figures and Redis's, at one moment.
///
/// JSON: `{"queues": {"<name>": <QueueStats>, …}, "redis": <RedisInfo>, "taken_at_ms": …}`.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let mut sampler = ostq::admin::StatsSampler::new(&client);
/// let snapshot = sampler.snapshot().await?;
/// println!("{}", serde_json::to_string_pretty(&snapshot)?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// Per queue, in the order asked for (by name for every queue); keyed by name in JSON.
    #[serde(with = "by_name")]
    pub queues: Vec<QueueStats>,
    /// Redis's figures.
    pub redis: RedisInfo,
    /// When it was taken (unix ms).
    pub taken_at_ms: u64,
}

/// `Vec<QueueStats>` as a JSON object keyed by queue name.
mod by_name {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::QueueStats;

    pub(super) fn serialize<S: Serializer>(queues: &[QueueStats], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(queues.iter().map(|q| (&q.counts.queue, q)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<QueueStats>, D::Error> {
        let map = BTreeMap::<String, QueueStats>::deserialize(d)?;
        Ok(map
            .into_iter()
            .map(|(name, mut stats)| {
                stats.counts.queue = name;
                stats
            })
            .collect())
    }
}

/// Processed totals per queue at one moment.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    processed: BTreeMap<String, u64>,
}

/// Takes [`Snapshot`]s of some queues (or all) and measures jobs per second between its samples,
/// over a sliding window.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// use std::time::Duration;
/// let mut sampler = ostq::admin::StatsSampler::new(&client).queues(["videos", "emails"]);
/// sampler.sample().await?;
/// tokio::time::sleep(Duration::from_secs(1)).await;
/// for queue in sampler.snapshot().await?.queues {
///     println!("{}: {:?} jobs/s", queue.counts.queue, queue.jobs_per_sec);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct StatsSampler {
    client: Client,
    names: Vec<String>,
    window: Duration,
    history: VecDeque<Sample>,
    redis_figures: bool,
}

impl StatsSampler {
    /// A sampler of every known queue, with a [`DEFAULT_RATE_WINDOW`].
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// let sampler = ostq::admin::StatsSampler::new(&client);
    /// # }
    /// ```
    pub fn new(client: &Client) -> Self {
        StatsSampler {
            client: client.clone(),
            names: Vec::new(),
            window: DEFAULT_RATE_WINDOW,
            history: VecDeque::new(),
            redis_figures: true,
        }
    }

    /// Whether snapshots read Redis's figures (`INFO`); on by default. Off, [`Snapshot::redis`]
    /// is left empty: for an ACL user without `+info` (a worker's user need not have it).
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// let sampler = ostq::admin::StatsSampler::new(&client).redis_figures(false);
    /// # }
    /// ```
    pub fn redis_figures(mut self, on: bool) -> Self {
        self.redis_figures = on;
        self
    }

    /// Only these queues, in this order (an empty list: every known queue, by name).
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// let sampler = ostq::admin::StatsSampler::new(&client).queues(["videos"]);
    /// # }
    /// ```
    pub fn queues<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.names = names.into_iter().map(Into::into).collect();
        self
    }

    /// Measures jobs per second over samples at most this old.
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// use std::time::Duration;
    /// let sampler = ostq::admin::StatsSampler::new(&client).window(Duration::from_secs(10));
    /// # }
    /// ```
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    async fn queue_names(&self) -> Result<Vec<String>> {
        if self.names.is_empty() {
            self.client.queues().await
        } else {
            Ok(self.names.clone())
        }
    }

    /// Reads every queue's counts and remembers the processed totals for the rate.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let mut sampler = ostq::admin::StatsSampler::new(&client);
    /// let counts = sampler.sample().await?;
    /// println!("{} queues", counts.len());
    /// # Ok(()) }
    /// ```
    pub async fn sample(&mut self) -> Result<Vec<QueueCounts>> {
        Ok(self
            .sample_queues()
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// [`StatsSampler::sample`] with the handle each queue was read through: a snapshot reads
    /// the rest of its figures through the same handle, so a sharded queue's layout is read once
    /// (the handle caches it, design §19).
    async fn sample_queues(&mut self) -> Result<Vec<(Queue, QueueCounts)>> {
        let client = &self.client;
        let all: Vec<(Queue, QueueCounts)> = futures::stream::iter(self.queue_names().await?)
            .map(|name| async move {
                let queue = client.queue(&name);
                let counts = queue.counts().await?;
                Ok::<_, crate::Error>((queue, counts))
            })
            .buffered(QUEUES_IN_FLIGHT)
            .try_collect()
            .await?;
        let at = Instant::now();
        let processed = all
            .iter()
            .map(|(_, c)| (c.queue.clone(), c.processed_total))
            .collect();
        self.history.push_back(Sample { at, processed });
        while self
            .history
            .front()
            .is_some_and(|s| at.duration_since(s.at) > self.window)
        {
            self.history.pop_front();
        }
        Ok(all)
    }

    /// A sample, with jobs per second measured against the oldest sample in the window, the
    /// age of each queue's next job, and Redis's figures.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let mut sampler = ostq::admin::StatsSampler::new(&client);
    /// let snapshot = sampler.snapshot().await?;
    /// println!("Redis {} with {} queues", snapshot.redis.version, snapshot.queues.len());
    /// # Ok(()) }
    /// ```
    pub async fn snapshot(&mut self) -> Result<Snapshot> {
        let all = self.sample_queues().await?;
        let newest = self.history.back().map_or_else(Instant::now, |s| s.at);
        let oldest = self.history.front().cloned();
        let redis = async {
            if self.redis_figures {
                self.client.redis_info().await
            } else {
                Ok(RedisInfo::default())
            }
        };
        let (workers, redis) = tokio::try_join!(self.client.workers(), redis)?;
        let read: Vec<QueueStats> = futures::stream::iter(all)
            .map(|(queue, counts)| async move { stats_of(&queue, counts).await })
            .buffered(QUEUES_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut queues = Vec::with_capacity(read.len());
        for mut stats in read {
            let serving = workers.iter().filter(|w| w.serves(&stats.counts.queue));
            stats.workers = Some(serving.count() as u64);
            if let Some(oldest) = &oldest {
                let span = newest.duration_since(oldest.at);
                if span >= MIN_RATE_SPAN {
                    let name = &stats.counts.queue;
                    let before = oldest.processed.get(name).copied().unwrap_or(0);
                    let done = stats.counts.processed_total.saturating_sub(before);
                    stats.jobs_per_sec = Some(done as f64 / span.as_secs_f64());
                    stats.rate_window_secs = Some(span.as_secs_f64());
                }
            }
            queues.push(stats);
        }
        Ok(Snapshot {
            queues,
            redis,
            taken_at_ms: now_ms(),
        })
    }
}

/// The figures of one look at a queue (no rate: that takes two).
async fn stats_of(queue: &Queue, counts: QueueCounts) -> Result<QueueStats> {
    let oldest_pending_age_ms = if counts.pending > 0 {
        queue
            .oldest_pending_age()
            .await?
            .map(|d| d.as_millis() as u64)
    } else {
        None
    };
    let recent_failure_rate = queue.failure_rate_over(RECENT_FAILURE_WINDOW).await?;
    Ok(QueueStats {
        failure_rate: counts.failure_rate(),
        recent_failure_rate,
        counts,
        oldest_pending_age_ms,
        jobs_per_sec: None,
        rate_window_secs: None,
        workers: None,
    })
}

impl Queue {
    /// The running totals (processed, failed, recovered, active now) in one cheap read, for
    /// polling; [`Queue::counts`] has every figure.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let queue = client.queue("videos");
    /// while queue.totals().await?.processed < 100 {
    ///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn totals(&self) -> Result<QueueTotals> {
        self.keys()?;
        // A sharded queue (design §19): the sum over its shards, one read each.
        let mut sum = QueueTotals::default();
        for shard in self.counted_queues().await? {
            let [processed, failed, recovered, active] =
                stored::totals(&mut self.client_ref().conn(), shard.keys()?).await?;
            sum.processed += processed;
            sum.failed += failed;
            sum.recovered += recovered;
            sum.active += active;
        }
        Ok(sum)
    }

    /// How long the job that runs next has waited since it was enqueued (`None` when nothing is
    /// pending, or the next entry is a bare payload with no enqueue time).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// if let Some(age) = client.queue("videos").oldest_pending_age().await? {
    ///     println!("latency: {age:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn oldest_pending_age(&self) -> Result<Option<Duration>> {
        let shards = self.shard_queues().await?;
        if shards.len() > 1 {
            // A sharded queue (design §19): the oldest over its shards.
            let mut oldest: Option<Duration> = None;
            for shard in shards {
                if let Some(age) = Box::pin(shard.oldest_pending_age()).await? {
                    oldest = Some(oldest.map_or(age, |o| o.max(age)));
                }
            }
            return Ok(oldest);
        }
        let page = self.page(JobState::Pending, None, 1).await?;
        Ok(page
            .jobs
            .first()
            .and_then(|job| job.enqueued_at_ms)
            .filter(|&t| t > 0)
            .map(|t| Duration::from_millis(now_ms().saturating_sub(t))))
    }

    /// The queue's figures now: counts, failure rate and the age of its next job (jobs per
    /// second take two looks: see [`StatsSampler`]).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let stats = client.queue("videos").stats().await?;
    /// println!("{:?}", stats.failure_rate);
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<QueueStats> {
        let counts = self.counts().await?;
        stats_of(self, counts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_keyed_by_queue_name_in_json() {
        let mut stats = QueueStats::default();
        stats.counts.queue = "videos".into();
        stats.counts.pending = 3;
        stats.failure_rate = Some(0.25);
        let snapshot = Snapshot {
            queues: vec![stats],
            redis: RedisInfo::default(),
            taken_at_ms: 7,
        };
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["queues"]["videos"]["pending"], 3);
        assert_eq!(json["queues"]["videos"]["failure_rate"], 0.25);
        assert_eq!(
            json["queues"]["videos"]["jobs_per_sec"],
            serde_json::Value::Null
        );
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, snapshot);
    }
}
