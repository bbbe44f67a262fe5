//! The admin API: the one data API under the CLI, the dashboard and export. It speaks in queues
//! and jobs; the commands are in the storage layer (`store::queues`, `store::server`).
//!
//! - this file: counts per state ([`QueueCounts`]), one job by id, retry, delete, purge, cancel,
//!   pause and resume, rate limits, and the offset listing [`Queue::jobs`];
//! - [`listing`]: listings with cursors ([`Queue::page`], [`Page`], [`Cursor`]) that neither skip
//!   nor repeat jobs while the queue changes;
//! - [`stats`]: failure rate, age of the next job, jobs per second over a window
//!   ([`QueueStats`], [`Snapshot`], [`StatsSampler`]);
//! - [`server`]: Redis's figures ([`RedisInfo`], [`ServerStats`]), [`Client::ping`], and
//!   [`Queue::probe_throughput`];
//! - `remove`: [`Queue::memory_usage`] and [`Queue::remove`];
//! - `views`: the stable JSON form of [`JobInfo`];
//! - `workers`: the live workers ([`Client::workers`], [`WorkerInfo`]);
//! - [`backup`]: export and import as JSON Lines ([`Queue::exporter`], [`Client::importer`]);
//! - [`doctor`]: checks of the deployment and the queues, PASS/WARN/FAIL with their fixes
//!   ([`Client::doctor`], `ostq doctor`);
//! - [`alerts`]: thresholds checked against a [`Snapshot`] ([`alerts::AlertRules`],
//!   [`alerts::check`]), for `ostq stats` and the dashboard alike.
//!
//! Every type here serializes to a stable JSON form (documented on each): fields may be added,
//! none is renamed or removed. `ostq … --json` prints exactly these. A job ([`JobInfo`]) comes
//! with its bytes (payload, result) as text when they are valid UTF-8; otherwise the text field
//! is `null` and `payload_base64` / `result_base64` holds them in standard base64; times are
//! unix milliseconds and `progress` is the JSON text its handler reported:
//!
//! ```json
//! {"id": "01HZX…", "queue": "videos", "state": "dead", "name": null,
//!  "payload": null, "payload_base64": "//5vaw==",
//!  "attempts": 1, "max_attempts": 1, "priority": 0,
//!  "enqueued_at_ms": 1714000000000, "started_at_ms": null, "finished_at_ms": 1714000000500,
//!  "due_at_ms": null, "last_error": "exit code 1", "result": null, "progress": null,
//!  "tracked": false}
//! ```
//!
//! A new admin call goes here (or in the file of its area) and reads or writes through one new
//! function in `store/queues.rs` (or `store/server.rs` for the server's own figures).

use std::time::Duration;

use crate::job::{JobInfo, JobState};
use crate::keys::QueueKeys;
use crate::producer::Queue;
use crate::shards::ShardLayout;
use crate::store::queues as stored;
use crate::Client;
use crate::{Error, Result};

pub mod alerts;
pub mod attempt_errors;
pub mod backup;
mod cursor;
pub mod doctor;
mod history;
mod jobs;
pub mod listing;
pub mod lookup;
mod remove;
pub mod search;
pub mod server;
pub mod stats;
pub(crate) mod views;
mod workers;

use jobs::{active_jobs, info_from_bytes, infos_by_id, oldest_ids, record_info};
use lookup::{find_pending_within, Found, JobLookup, Scan};

pub use cursor::Cursor;
pub use history::{
    Histogram, HistoryPoint, Resolution, TaskFigures, HISTOGRAM_BUCKETS, MAX_HISTORY_POINTS,
    UNNAMED_TASK,
};
pub use listing::Page;
pub use remove::{Measure, QueueMemory, Removal};
pub use server::{CommandStats, Probe, RedisInfo, ServerStats};
pub use stats::{QueueStats, QueueTotals, Snapshot, StatsSampler};
pub use workers::WorkerInfo;

/// What [`Queue::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The job had not started: it is gone.
    Removed,
    /// The job is running: its worker will tell the handler to stop.
    Signalled,
    /// No such job waiting or running (it may have finished).
    NotFound,
}

/// How many jobs a queue holds in each state, and its totals.
///
/// JSON: `{"queue": "videos", "pending": 3, "active": 1, "scheduled": 0, "retry": 0, "dead": 2,
/// "completed": 0, "processed_total": 10, "failed_total": 2, "recovered_total": 0,
/// "paused": false}`.
///
/// ```
/// let counts = ostq::QueueCounts::default();
/// assert_eq!(serde_json::to_value(&counts).unwrap()["pending"], 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct QueueCounts {
    /// The queue.
    pub queue: String,
    /// Ready to run.
    pub pending: u64,
    /// Leased by workers.
    pub active: u64,
    /// Waiting for their run-at time.
    pub scheduled: u64,
    /// Waiting for another attempt.
    pub retry: u64,
    /// Out of attempts.
    pub dead: u64,
    /// Completed tracked jobs within their retention.
    pub completed: u64,
    /// Attempts that finished, successful or not, since the queue began.
    pub processed_total: u64,
    /// Attempts that failed (errors, panics, timeouts, lost workers).
    pub failed_total: u64,
    /// Jobs taken back from workers whose leases expired.
    pub recovered_total: u64,
    /// Whether workers are told not to fetch.
    pub paused: bool,
}

impl QueueCounts {
    /// Failed over processed attempts since the queue began; `None` before the first attempt.
    ///
    /// ```
    /// let mut counts = ostq::QueueCounts::default();
    /// assert_eq!(counts.failure_rate(), None);
    /// counts.processed_total = 4;
    /// counts.failed_total = 1;
    /// assert_eq!(counts.failure_rate(), Some(0.25));
    /// ```
    pub fn failure_rate(&self) -> Option<f64> {
        (self.processed_total > 0).then(|| self.failed_total as f64 / self.processed_total as f64)
    }
}

pub(crate) async fn counts_of(client: &Client, keys: &QueueKeys) -> Result<QueueCounts> {
    let c = stored::counts(&mut client.conn(), keys).await?;
    Ok(QueueCounts {
        queue: keys.queue.clone(),
        pending: c.pending_list.saturating_sub(c.wake_markers) + c.prioritized,
        active: c.active,
        scheduled: c.scheduled,
        retry: c.retry,
        dead: c.dead,
        completed: c.completed,
        processed_total: c.processed,
        failed_total: c.failed,
        recovered_total: c.recovered,
        paused: c.paused,
    })
}

impl Client {
    /// Names of the queues ever pushed to or served, sorted.
    pub async fn queues(&self) -> Result<Vec<String>> {
        let mut names = stored::queue_names(&mut self.conn()).await?;
        // Shards of sharded queues (a worker registers what it serves) are part of their queue.
        names.retain(|n| !n.contains(crate::keys::SHARD_MARK));
        names.sort();
        Ok(names)
    }
}

impl Queue {
    /// Counts per state and totals.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let counts = client.queue("videos").counts().await?;
    /// println!("{} pending, {} dead", counts.pending, counts.dead);
    /// # Ok(()) }
    /// ```
    pub async fn counts(&self) -> Result<QueueCounts> {
        let keys = self.keys()?;
        let shards = self.counted_queues().await?;
        if shards.len() == 1 {
            return counts_of(self.client_ref(), keys).await;
        }
        // A sharded queue (design §19): the sum over its shards, paused if any shard is.
        let mut sum = QueueCounts {
            queue: keys.queue.clone(),
            ..QueueCounts::default()
        };
        for shard in shards {
            let c = counts_of(self.client_ref(), shard.keys()?).await?;
            sum.pending += c.pending;
            sum.active += c.active;
            sum.scheduled += c.scheduled;
            sum.retry += c.retry;
            sum.dead += c.dead;
            sum.completed += c.completed;
            sum.processed_total += c.processed_total;
            sum.failed_total += c.failed_total;
            sum.recovered_total += c.recovered_total;
            sum.paused |= c.paused;
        }
        Ok(sum)
    }

    /// Jobs in `state`, `offset` and `limit` for paging. Pending jobs come prioritized first,
    /// then the list in run order; dead and completed ones newest first, scheduled and retry by
    /// due time. Offsets shift while workers and producers change the queue, so consecutive
    /// calls may skip or repeat jobs: [`Queue::page`] pages with cursors that do not.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let dead = client.queue("videos").jobs(ostq::JobState::Dead, 0, 20).await?;
    /// println!("{} dead jobs shown", dead.len());
    /// # Ok(()) }
    /// ```
    pub async fn jobs(&self, state: JobState, offset: usize, limit: usize) -> Result<Vec<JobInfo>> {
        let keys = self.keys()?;
        let shards = self.shard_queues().await?;
        if shards.len() > 1 {
            // A sharded queue (design §19): shard 0's jobs, then shard 1's, and so on; offsets
            // count over that concatenation, so each shard lists at most offset + limit jobs.
            let mut out = Vec::new();
            let mut skip = offset;
            for shard in shards {
                if out.len() >= limit {
                    break;
                }
                let got = Box::pin(shard.jobs(state, 0, skip + limit - out.len())).await?;
                let n = got.len();
                out.extend(got.into_iter().skip(skip).map(|mut job| {
                    job.queue = keys.queue.clone();
                    job
                }));
                skip = skip.saturating_sub(n);
            }
            out.truncate(limit);
            return Ok(out);
        }
        let mut conn = self.client_ref().conn();
        let queue = keys.queue.as_str();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (start, stop) = (offset as isize, (offset + limit) as isize - 1);
        Ok(match state {
            JobState::Pending => {
                let mut out = Vec::new();
                let prioritized = stored::prioritized_range(&mut conn, keys, start, stop).await?;
                let skipped = offset.min(stored::prioritized_len(&mut conn, keys).await?);
                for bytes in prioritized {
                    out.push(info_from_bytes(queue, JobState::Pending, &bytes));
                }
                if out.len() < limit {
                    let want = limit - out.len();
                    let entries =
                        stored::pending_from_right(&mut conn, keys, offset - skipped, want).await?;
                    for bytes in entries {
                        out.push(info_from_bytes(queue, JobState::Pending, &bytes));
                    }
                }
                out
            }
            JobState::Active => active_jobs(&mut conn, keys)
                .await?
                .into_iter()
                .skip(offset)
                .take(limit)
                .collect(),
            JobState::Scheduled | JobState::Retry | JobState::Dead => {
                let zkey = match state {
                    JobState::Scheduled => &keys.scheduled,
                    JobState::Retry => &keys.retry,
                    _ => &keys.dead,
                };
                let newest_first = state == JobState::Dead;
                let ids =
                    stored::ids_with_scores(&mut conn, zkey, start, stop, newest_first).await?;
                infos_by_id(&mut conn, keys, state, ids).await?
            }
            JobState::Completed => {
                let ids =
                    stored::ids_with_scores(&mut conn, &keys.completed, start, stop, true).await?;
                let mut out = Vec::new();
                for (id, _) in ids {
                    if let Some(info) = record_info(&mut conn, keys, &id, None).await? {
                        out.push(info);
                    }
                }
                out
            }
        })
    }

    /// One job by id. Tracked jobs are found in any state until their record expires; untracked
    /// ones while scheduled, pending, active, retry or dead (a completed untracked job leaves only
    /// the processed counter behind).
    ///
    /// A pending job is looked for through the whole pending list, O(pending) at worst;
    /// [`Queue::find_job`] bounds that scan and takes a listing's hint.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// if let Some(job) = client.queue("videos").job("01HZX").await? {
    ///     println!("{} after {} attempts", job.state, job.attempts);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn job(&self, id: &str) -> Result<Option<JobInfo>> {
        // `find_job` routes a sharded queue's ids to their shard (design §19).
        match self.find_job(id, JobLookup::whole()).await? {
            Found::Job { job, .. } => Ok(Some(*job)),
            Found::NotFound | Found::StoppedEarly { .. } => Ok(None),
        }
    }

    /// The shard of a sharded queue that holds job `id`, and the job (its `queue` the shard's
    /// name), looked for through [`Queue::find_job`]'s routing over `layout` and `shards`.
    async fn holder(
        &self,
        id: &str,
        layout: &ShardLayout,
        shards: &[Queue],
    ) -> Result<Option<(Queue, JobInfo)>> {
        for i in lookup::shard_order(layout, shards.len(), id) {
            if let Some(shard) = shards.get(i) {
                if let Found::Job { job, .. } = shard.find_job(id, JobLookup::whole()).await? {
                    return Ok(Some((shard.clone(), *job)));
                }
            }
        }
        Ok(None)
    }

    /// For a sharded queue, the shard handles holding each of `ids` (ids not found left out);
    /// `None` for an unsharded queue.
    async fn holders(&self, ids: &[&str]) -> Result<Option<Vec<(Queue, String)>>> {
        let (layout, shards) = self.shard_set().await?;
        if shards.len() == 1 {
            return Ok(None);
        }
        let mut out = Vec::new();
        for id in ids {
            if let Some((shard, _)) = self.holder(id, &layout, &shards).await? {
                out.push((shard, (*id).to_string()));
            }
        }
        Ok(Some(out))
    }

    /// Cancels a job: one that has not started (pending, scheduled, waiting to retry) is removed;
    /// a running one's handler is told to stop ([`crate::Job::cancelled`]) and, if it then fails,
    /// the job goes to the dead set without retries.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use ostq::admin::Cancel;
    /// match client.queue("videos").cancel("01HZX").await? {
    ///     Cancel::Removed => println!("it never ran"),
    ///     Cancel::Signalled => println!("its worker was told to stop"),
    ///     Cancel::NotFound => println!("no such job, or it already finished"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self, id: &str) -> Result<Cancel> {
        let keys = self.keys()?;
        if let Some(holders) = self.holders(&[id]).await? {
            return match holders.into_iter().next() {
                Some((shard, id)) => Box::pin(shard.cancel(&id)).await,
                None => Ok(Cancel::NotFound),
            };
        }
        let Some(info) = self.job(id).await? else {
            return Ok(Cancel::NotFound);
        };
        match info.state {
            JobState::Pending | JobState::Scheduled | JobState::Retry => {
                Ok(if self.delete(&[id]).await? > 0 {
                    Cancel::Removed
                } else {
                    Cancel::NotFound
                })
            }
            JobState::Active => {
                stored::request_cancel(&mut self.client_ref().conn(), keys, id).await?;
                Ok(Cancel::Signalled)
            }
            JobState::Completed | JobState::Dead => Ok(Cancel::NotFound),
        }
    }

    /// Moves scheduled, retry or dead jobs to pending now (dead ones get a fresh attempt count).
    /// Returns how many moved.
    pub async fn retry_now(&self, ids: &[&str]) -> Result<u64> {
        let keys = self.keys()?;
        if let Some(holders) = self.holders(ids).await? {
            let mut moved = 0;
            for (shard, id) in holders {
                moved += Box::pin(shard.retry_now(&[&id])).await?;
            }
            return Ok(moved);
        }
        stored::enqueue_now(&mut self.client_ref().conn(), keys, ids).await
    }

    /// Moves every dead job back to pending. Returns how many moved.
    pub async fn retry_all_dead(&self) -> Result<u64> {
        let shards = self.shard_queues().await?;
        if shards.len() > 1 {
            let mut moved = 0;
            for shard in shards {
                moved += Box::pin(shard.retry_all_dead()).await?;
            }
            return Ok(moved);
        }
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let mut moved = 0;
        loop {
            let ids = oldest_ids(&mut conn, &keys.dead).await?;
            if ids.is_empty() {
                return Ok(moved);
            }
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let n = self.retry_now(&refs).await?;
            if n == 0 {
                return Ok(moved);
            }
            moved += n;
        }
    }

    /// Deletes jobs by id in any state but active (a running job belongs to its worker until it
    /// finishes; delete it afterwards). Returns how many were found and deleted.
    pub async fn delete(&self, ids: &[&str]) -> Result<u64> {
        let keys = self.keys()?;
        if let Some(holders) = self.holders(ids).await? {
            let mut removed = 0;
            for (shard, id) in holders {
                removed += Box::pin(shard.delete(&[&id])).await?;
            }
            return Ok(removed);
        }
        let mut conn = self.client_ref().conn();
        let mut removed = 0;
        for id in ids {
            if stored::delete(&mut conn, keys, &[id]).await? > 0 {
                removed += 1;
                continue;
            }
            if let Scan::Found { bytes, .. } =
                find_pending_within(&mut conn, keys, id, JobLookup::whole()).await?
            {
                removed += stored::delete_pending(&mut conn, keys, id, &bytes).await?;
                continue;
            }
            // An active job is left to its worker, which owns it until it finishes.
        }
        Ok(removed)
    }

    /// Removes every job in `state` (or in every state but active, for `None`). Active jobs
    /// cannot be purged: their workers own them until they finish. Returns jobs removed.
    pub async fn purge(&self, state: Option<JobState>) -> Result<u64> {
        let states: Vec<JobState> = match state {
            Some(JobState::Active) => {
                return Err(Error::Config(
                    "active jobs cannot be purged while workers own them; purge or delete them once they finish"
                        .into(),
                ))
            }
            Some(state) => vec![state],
            None => vec![
                JobState::Pending,
                JobState::Scheduled,
                JobState::Retry,
                JobState::Dead,
                JobState::Completed,
            ],
        };
        let keys = self.keys()?;
        let shards = self.shard_queues().await?;
        if shards.len() > 1 {
            let mut removed = 0;
            for shard in shards {
                removed += Box::pin(shard.purge(state)).await?;
            }
            return Ok(removed);
        }
        let mut conn = self.client_ref().conn();
        let mut removed = 0;
        for state in states {
            removed += match state {
                JobState::Pending => {
                    let mut n = stored::purge_pending(&mut conn, keys, &keys.pending, true).await?;
                    n += stored::purge_pending(&mut conn, keys, &keys.prioritized, false).await?;
                    n
                }
                JobState::Scheduled | JobState::Retry | JobState::Dead | JobState::Completed => {
                    let zkey = match state {
                        JobState::Scheduled => &keys.scheduled,
                        JobState::Retry => &keys.retry,
                        JobState::Dead => &keys.dead,
                        _ => &keys.completed,
                    };
                    let mut n = 0;
                    loop {
                        let ids = oldest_ids(&mut conn, zkey).await?;
                        if ids.is_empty() {
                            break;
                        }
                        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                        n += stored::delete(&mut conn, keys, &refs).await?;
                    }
                    n
                }
                JobState::Active => 0,
            };
        }
        Ok(removed)
    }

    /// Stops workers from fetching this queue (pushes are still accepted).
    pub async fn pause(&self) -> Result<()> {
        self.keys()?;
        for shard in self.shard_queues().await? {
            stored::set_paused(&mut self.client_ref().conn(), shard.keys()?, true).await?;
        }
        Ok(())
    }

    /// Limits how many jobs of this queue start per `period`, across all workers (a token bucket
    /// in Redis: up to `max` at once after a quiet spell, then `max` per `period` on average).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use std::time::Duration;
    /// client.queue("emails").set_rate_limit(50, Duration::from_secs(1)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_rate_limit(&self, max: u32, period: Duration) -> Result<()> {
        if max == 0 || period.is_zero() {
            return Err(Error::Config(
                "a rate limit needs max > 0 and a period > 0".into(),
            ));
        }
        self.keys()?;
        // A sharded queue (design §19): each shard's bucket gets its share of `max` (the first
        // `max % n` one more), so the shards together allow `max` per period.
        let (layout, shards) = self.shard_set().await?;
        let n = layout.count() as u64;
        if u64::from(max) < n {
            return Err(Error::Config(format!(
                "a rate limit of {max} cannot be split over {n} shards: at least 1 per shard"
            )));
        }
        for (i, shard) in shards.iter().enumerate() {
            let share = if (i as u64) < n {
                u64::from(max) / n + u64::from((i as u64) < u64::from(max) % n)
            } else {
                // A draining shard keeps a share: it drains at most at an n-th of the rate.
                (u64::from(max) / n).max(1)
            };
            let limit = (share, period.as_millis() as u64);
            stored::set_rate_limit(&mut self.client_ref().conn(), shard.keys()?, Some(limit))
                .await?;
        }
        Ok(())
    }

    /// Removes the queue's rate limit.
    pub async fn clear_rate_limit(&self) -> Result<()> {
        self.keys()?;
        for shard in self.shard_queues().await? {
            stored::set_rate_limit(&mut self.client_ref().conn(), shard.keys()?, None).await?;
        }
        Ok(())
    }

    /// Lets workers fetch this queue again.
    pub async fn resume(&self) -> Result<()> {
        self.keys()?;
        for shard in self.shard_queues().await? {
            stored::set_paused(&mut self.client_ref().conn(), shard.keys()?, false).await?;
        }
        Ok(())
    }
}
