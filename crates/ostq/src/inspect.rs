//! Inspection and operations: the data API under the CLI and the dashboard. Counts per state,
//! job listings with paging, one job by id, retry, delete, purge, pause and resume.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use crate::connection::Client;
use crate::envelope::Envelope;
use crate::job::{JobInfo, JobState};
use crate::keys::{QueueKeys, QUEUES};
use crate::producer::Queue;
use crate::scripts::{DELETE_PENDING_SCRIPT, DELETE_SCRIPT, ENQUEUE_NOW_SCRIPT};
use crate::{Error, Result};

/// The wake marker `push.lua` and `fail.lua` leave on an empty pending list; never a job.
const WAKE: &[u8] = &[0x90];
/// Entries read per round trip when scanning.
const SCAN_CHUNK: isize = 500;

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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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

pub(crate) async fn counts_of(client: &Client, keys: &QueueKeys) -> Result<QueueCounts> {
    let mut conn = client.conn();
    #[allow(clippy::type_complexity)]
    let (pending, marker, prioritized, scheduled, retry, dead, completed, totals, paused): (
        u64,
        Option<u64>,
        u64,
        u64,
        u64,
        u64,
        u64,
        Vec<Option<i64>>,
        bool,
    ) = redis::pipe()
        .llen(&keys.pending)
        // The wake marker is not a job. It is only ever added to an empty list, so few entries
        // (recovered or given-back jobs pushed to the right) can stand to its right.
        .cmd("LPOS")
        .arg(&keys.pending)
        .arg(WAKE)
        .arg("RANK")
        .arg(-1)
        .arg("MAXLEN")
        .arg(1000)
        .zcard(&keys.prioritized)
        .zcard(&keys.scheduled)
        .zcard(&keys.retry)
        .zcard(&keys.dead)
        .zcard(&keys.completed)
        .hmget(&keys.stats, &["processed", "failed", "recovered", "active"])
        .exists(&keys.paused)
        .query_async(&mut conn)
        .await?;
    let total = |i: usize| totals.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
    Ok(QueueCounts {
        queue: keys.queue.clone(),
        pending: pending.saturating_sub(u64::from(marker.is_some())) + prioritized,
        active: total(3),
        scheduled,
        retry,
        dead,
        completed,
        processed_total: total(0),
        failed_total: total(1),
        recovered_total: total(2),
        paused,
    })
}

/// Redis's own figures, from `INFO` (summed over the nodes of a Cluster).
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let info = client.redis_info().await?;
/// if info.maxmemory_policy != "noeviction" {
///     eprintln!("Redis {} may evict queue keys ({})", info.version, info.maxmemory_policy);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RedisInfo {
    /// `redis_version`.
    pub version: String,
    /// Bytes in use (`used_memory`).
    pub used_memory: u64,
    /// The same, as Redis writes it for people (`used_memory_human`).
    pub used_memory_human: String,
    /// The memory limit in bytes; 0 when there is none.
    pub maxmemory: u64,
    /// What Redis does at the limit; anything but `noeviction` may delete queue keys.
    pub maxmemory_policy: String,
    /// Client connections (`connected_clients`).
    pub connected_clients: u64,
}

impl RedisInfo {
    /// Reads the text of one `INFO` reply into `self`, adding the counters (for Cluster nodes).
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            let Some((key, value)) = line.trim().split_once(':') else {
                continue;
            };
            let number = || value.parse::<u64>().unwrap_or(0);
            match key {
                "redis_version" => self.version = value.to_string(),
                "used_memory" => self.used_memory += number(),
                "used_memory_human" if self.used_memory_human.is_empty() => {
                    self.used_memory_human = value.to_string()
                }
                "maxmemory" => self.maxmemory += number(),
                "maxmemory_policy" => self.maxmemory_policy = value.to_string(),
                "connected_clients" => self.connected_clients += number(),
                _ => {}
            }
        }
    }
}

/// Every `INFO` text in a reply: one for a server, one per node for a Cluster.
fn info_texts(value: redis::Value, out: &mut Vec<String>) {
    match value {
        redis::Value::BulkString(bytes) => out.push(String::from_utf8_lossy(&bytes).into_owned()),
        redis::Value::VerbatimString { text, .. } | redis::Value::SimpleString(text) => {
            out.push(text)
        }
        redis::Value::Array(items) => items.into_iter().for_each(|v| info_texts(v, out)),
        redis::Value::Map(pairs) => pairs.into_iter().for_each(|(_, v)| info_texts(v, out)),
        _ => {}
    }
}

impl Client {
    /// Redis's version, memory (used, limit, eviction policy) and client connections, through
    /// whatever this client connects to (one server, a Sentinel-managed primary, a Cluster).
    pub async fn redis_info(&self) -> Result<RedisInfo> {
        let mut conn = self.conn();
        let reply: redis::Value = redis::cmd("INFO")
            .query_async(&mut conn)
            .await
            .map_err(Error::from_redis)?;
        let mut texts = Vec::new();
        info_texts(reply, &mut texts);
        if texts.is_empty() {
            return Err(Error::Protocol("INFO answered no text".into()));
        }
        let mut info = RedisInfo::default();
        for text in &texts {
            info.add(text);
        }
        if texts.len() > 1 {
            // Summed over the nodes: the human form of one node would mislead.
            info.used_memory_human = format!("{:.2}M", info.used_memory as f64 / 1048576.0);
        }
        Ok(info)
    }

    /// Names of the queues ever pushed to or served, sorted.
    pub async fn queues(&self) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let mut names: Vec<String> = conn.smembers(QUEUES).await?;
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
        counts_of(self.client_ref(), self.keys()?).await
    }

    /// Jobs in `state`, `offset` and `limit` for paging. Pending jobs come in run order
    /// (prioritized first), dead and completed ones newest first, scheduled and retry by due time.
    pub async fn jobs(&self, state: JobState, offset: usize, limit: usize) -> Result<Vec<JobInfo>> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let queue = keys.queue.as_str();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (start, stop) = (offset as isize, (offset + limit) as isize - 1);
        Ok(match state {
            JobState::Pending => {
                let mut out = Vec::new();
                let prioritized: Vec<Vec<u8>> = conn.zrange(&keys.prioritized, start, stop).await?;
                let skipped = offset.min(conn.zcard::<_, usize>(&keys.prioritized).await?);
                for bytes in prioritized {
                    out.push(info_from_bytes(queue, JobState::Pending, &bytes));
                }
                if out.len() < limit {
                    // The list runs from its right end: index -1 is next.
                    let list_offset = (offset - skipped) as isize;
                    let want = (limit - out.len()) as isize;
                    let entries: Vec<Vec<u8>> = conn
                        .lrange(&keys.pending, -(list_offset + want), -(list_offset + 1))
                        .await?;
                    for bytes in entries.iter().rev().filter(|b| b.as_slice() != WAKE) {
                        out.push(info_from_bytes(queue, JobState::Pending, bytes));
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
                let ids: Vec<(String, u64)> = if state == JobState::Dead {
                    conn.zrevrange_withscores(zkey, start, stop).await?
                } else {
                    conn.zrange_withscores(zkey, start, stop).await?
                };
                self.infos_by_id(&mut conn, keys, state, ids).await?
            }
            JobState::Completed => {
                let ids: Vec<String> = conn.zrevrange(&keys.completed, start, stop).await?;
                let mut out = Vec::new();
                for id in ids {
                    if let Some(info) = record_info(&mut conn, keys, &id, None).await? {
                        out.push(info);
                    }
                }
                out
            }
        })
    }

    async fn infos_by_id(
        &self,
        conn: &mut crate::connection::Conn,
        keys: &QueueKeys,
        state: JobState,
        ids: Vec<(String, u64)>,
    ) -> Result<Vec<JobInfo>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        let envelopes: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(&keys.jobs)
            .arg(&names)
            .query_async(conn)
            .await?;
        Ok(ids
            .into_iter()
            .zip(envelopes)
            .filter_map(|((id, due), bytes)| {
                let mut info = info_from_bytes(&keys.queue, state, bytes.as_deref()?);
                info.id = id;
                if state == JobState::Dead {
                    info.finished_at_ms = Some(due);
                } else {
                    info.due_at_ms = Some(due);
                }
                Some(info)
            })
            .collect())
    }

    /// One job by id. Tracked jobs are found in any state until their record expires; untracked
    /// ones while scheduled, pending, active, retry or dead (a completed untracked job leaves only
    /// the processed counter behind).
    pub async fn job(&self, id: &str) -> Result<Option<JobInfo>> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let queue = keys.queue.as_str();
        let envelope: Option<Vec<u8>> = conn.hget(&keys.jobs, id).await?;
        let mut found: Option<JobInfo> = None;
        if let Some(bytes) = envelope {
            let (in_scheduled, in_retry, in_dead): (Option<u64>, Option<u64>, Option<u64>) =
                redis::pipe()
                    .zscore(&keys.scheduled, id)
                    .zscore(&keys.retry, id)
                    .zscore(&keys.dead, id)
                    .query_async(&mut conn)
                    .await?;
            let (state, due) = match (in_scheduled, in_retry, in_dead) {
                (Some(t), _, _) => (JobState::Scheduled, Some(t)),
                (_, Some(t), _) => (JobState::Retry, Some(t)),
                (_, _, Some(t)) => (JobState::Dead, Some(t)),
                _ => (JobState::Pending, None), // being promoted right now
            };
            let mut info = info_from_bytes(queue, state, &bytes);
            if state == JobState::Dead {
                info.finished_at_ms = due;
            } else {
                info.due_at_ms = due;
            }
            found = Some(info);
        }
        if found.is_none() {
            found = find_active(&mut conn, keys, id).await?;
        }
        if found.is_none() {
            found = find_pending(&mut conn, keys, id)
                .await?
                .map(|(_, info)| info);
        }
        record_info(&mut conn, keys, id, found).await
    }

    /// Cancels a job: one that has not started (pending, scheduled, waiting to retry) is removed;
    /// a running one's handler is told to stop ([`crate::Job::cancelled`]) and, if it then fails,
    /// the job goes to the dead set without retries.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use ostq::inspect::Cancel;
    /// match client.queue("videos").cancel("01HZX").await? {
    ///     Cancel::Removed => println!("it never ran"),
    ///     Cancel::Signalled => println!("its worker was told to stop"),
    ///     Cancel::NotFound => println!("no such job, or it already finished"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self, id: &str) -> Result<Cancel> {
        let keys = self.keys()?;
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
                let mut conn = self.client_ref().conn();
                let _: () = redis::pipe()
                    .sadd(&keys.cancel, id)
                    .pexpire(&keys.cancel, 24 * 3600 * 1000)
                    .query_async(&mut conn)
                    .await?;
                Ok(Cancel::Signalled)
            }
            JobState::Completed | JobState::Dead => Ok(Cancel::NotFound),
        }
    }

    /// Moves scheduled, retry or dead jobs to pending now (dead ones get a fresh attempt count).
    /// Returns how many moved.
    pub async fn retry_now(&self, ids: &[&str]) -> Result<u64> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let mut moved = 0;
        for chunk in ids.chunks(SCAN_CHUNK as usize) {
            let mut invocation = ENQUEUE_NOW_SCRIPT.prepare_invoke();
            invocation
                .key(&keys.pending)
                .key(&keys.prioritized)
                .key(&keys.scheduled)
                .key(&keys.retry)
                .key(&keys.dead)
                .key(&keys.jobs)
                .key(&keys.seq)
                .key(&keys.config)
                .key(&keys.events)
                .arg(&keys.prefix);
            for id in chunk {
                invocation.arg(*id);
            }
            moved += invocation.invoke_async::<u64>(&mut conn).await?;
        }
        Ok(moved)
    }

    /// Moves every dead job back to pending. Returns how many moved.
    pub async fn retry_all_dead(&self) -> Result<u64> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let mut moved = 0;
        loop {
            let ids: Vec<String> = conn.zrange(&keys.dead, 0, SCAN_CHUNK - 1).await?;
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
        let mut conn = self.client_ref().conn();
        let mut removed = 0;
        for id in ids {
            let mut invocation = DELETE_SCRIPT.prepare_invoke();
            invocation
                .key(&keys.scheduled)
                .key(&keys.retry)
                .key(&keys.dead)
                .key(&keys.completed)
                .key(&keys.jobs)
                .arg(&keys.prefix)
                .arg(*id);
            if invocation.invoke_async::<u64>(&mut conn).await? > 0 {
                removed += 1;
                continue;
            }
            if let Some((bytes, _)) = find_pending(&mut conn, keys, id).await? {
                let mut invocation = DELETE_PENDING_SCRIPT.prepare_invoke();
                invocation
                    .key(&keys.pending)
                    .key(&keys.prioritized)
                    .arg(&keys.prefix)
                    .arg(*id)
                    .arg(bytes);
                removed += invocation.invoke_async::<u64>(&mut conn).await?;
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
        let mut conn = self.client_ref().conn();
        let mut removed = 0;
        for state in states {
            removed += match state {
                JobState::Pending => {
                    let mut n = purge_pending(&mut conn, keys, &keys.pending, true).await?;
                    n += purge_pending(&mut conn, keys, &keys.prioritized, false).await?;
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
                        let ids: Vec<String> = conn.zrange(zkey, 0, SCAN_CHUNK - 1).await?;
                        if ids.is_empty() {
                            break;
                        }
                        let mut invocation = DELETE_SCRIPT.prepare_invoke();
                        invocation
                            .key(&keys.scheduled)
                            .key(&keys.retry)
                            .key(&keys.dead)
                            .key(&keys.completed)
                            .key(&keys.jobs)
                            .arg(&keys.prefix);
                        for id in &ids {
                            invocation.arg(id);
                        }
                        n += invocation.invoke_async::<u64>(&mut conn).await?;
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
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let _: () = conn.set(&keys.paused, 1).await?;
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
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let _: () = redis::pipe()
            .atomic()
            .del(&keys.rate_limit)
            .hset_multiple(
                &keys.rate_limit,
                &[
                    ("max", u64::from(max)),
                    ("period", period.as_millis() as u64),
                ],
            )
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes the queue's rate limit.
    pub async fn clear_rate_limit(&self) -> Result<()> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let _: () = conn.del(&keys.rate_limit).await?;
        Ok(())
    }

    /// Lets workers fetch this queue again.
    pub async fn resume(&self) -> Result<()> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let _: () = conn.del(&keys.paused).await?;
        Ok(())
    }
}

/// Moves a pending list or zset aside atomically (so pushes that race with the purge are kept),
/// then deletes it, the status records of its tracked jobs and the unique keys its jobs held.
async fn purge_pending(
    conn: &mut crate::connection::Conn,
    keys: &QueueKeys,
    key: &str,
    is_list: bool,
) -> Result<u64> {
    let aside = format!("{}purging:{}", keys.prefix, crate::producer::new_id());
    let renamed: redis::RedisResult<()> = redis::cmd("RENAME")
        .arg(key)
        .arg(&aside)
        .query_async(conn)
        .await;
    if renamed.is_err() {
        return Ok(0); // nothing to purge
    }
    let mut removed = 0;
    let mut start = 0isize;
    loop {
        let entries: Vec<Vec<u8>> = if is_list {
            conn.lrange(&aside, start, start + SCAN_CHUNK - 1).await?
        } else {
            conn.zrange(&aside, start, start + SCAN_CHUNK - 1).await?
        };
        if entries.is_empty() {
            break;
        }
        start += entries.len() as isize;
        for bytes in entries.iter().filter(|b| b.as_slice() != WAKE) {
            removed += 1;
            if let Ok(env) = Envelope::decode(bytes) {
                if env.tracked() {
                    let _: () = conn.del(keys.record(&env.id)).await?;
                }
                if !env.unique.is_empty() {
                    // The job is gone, so its key is free. (Not atomic: a key that changed hands
                    // between these two commands would be freed early; purges are rare.)
                    let unique = format!("{}unique:{}", keys.prefix, env.unique);
                    let holder: Option<String> = conn.get(&unique).await?;
                    if holder.as_deref() == Some(env.id.as_str()) {
                        let _: () = conn.del(&unique).await?;
                    }
                }
            }
        }
    }
    // UNLINK: a big list is freed in the background, not while Redis serves everyone else.
    let _: () = conn.unlink(&aside).await?;
    Ok(removed)
}

fn info_from_bytes(queue: &str, state: JobState, bytes: &[u8]) -> JobInfo {
    match Envelope::decode(bytes) {
        Ok(env) => JobInfo::from_envelope(queue, state, env),
        Err(e) => {
            // A bare entry (plain LPUSH) or garbage: show the bytes as they are.
            let bare = !bytes.first().is_some_and(|b| (0x90..=0x9f).contains(b));
            let env = Envelope {
                id: "(unassigned)".into(),
                payload: bytes.to_vec(),
                last_error: if bare { String::new() } else { e.to_string() },
                ..Envelope::default()
            };
            JobInfo::from_envelope(queue, state, env)
        }
    }
}

/// Reads an envelope's id without decoding the rest (the layout `fetch.lua` relies on too).
fn envelope_id(bytes: &[u8]) -> Option<&[u8]> {
    match (bytes.first()?, bytes.get(1)?) {
        (0x91..=0x9f, &b) if (0xa0..=0xbf).contains(&b) => bytes.get(2..2 + usize::from(b - 0xa0)),
        (0x91..=0x9f, 0xd9) => {
            let len = usize::from(*bytes.get(2)?);
            bytes.get(3..3 + len)
        }
        _ => None,
    }
}

/// Every job workers hold now: the entries of each lease group that are not finished (""), with
/// the group's deadline. O(active jobs), for inspection only.
async fn active_jobs(conn: &mut crate::connection::Conn, keys: &QueueKeys) -> Result<Vec<JobInfo>> {
    let groups: Vec<(u64, u64)> = conn.zrange_withscores(&keys.active, 0, -1).await?;
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (group, _) in &groups {
        pipe.lrange(keys.lease_group(*group), 0, -1);
    }
    let entries: Vec<Vec<Vec<u8>>> = pipe.query_async(conn).await?;
    let mut out = Vec::new();
    for ((_, deadline), entries) in groups.into_iter().zip(entries) {
        for bytes in entries.iter().filter(|b| !b.is_empty()) {
            let mut info = info_from_bytes(&keys.queue, JobState::Active, bytes);
            info.due_at_ms = Some(deadline);
            out.push(info);
        }
    }
    Ok(out)
}

async fn find_active(
    conn: &mut crate::connection::Conn,
    keys: &QueueKeys,
    id: &str,
) -> Result<Option<JobInfo>> {
    Ok(active_jobs(conn, keys)
        .await?
        .into_iter()
        .find(|info| info.id == id))
}

/// Scans the pending list and zset for an id: O(pending), for inspection only.
async fn find_pending(
    conn: &mut crate::connection::Conn,
    keys: &QueueKeys,
    id: &str,
) -> Result<Option<(Vec<u8>, JobInfo)>> {
    for (key, is_list) in [(&keys.prioritized, false), (&keys.pending, true)] {
        let mut start = 0isize;
        loop {
            let entries: Vec<Vec<u8>> = if is_list {
                conn.lrange(key, start, start + SCAN_CHUNK - 1).await?
            } else {
                conn.zrange(key, start, start + SCAN_CHUNK - 1).await?
            };
            if entries.is_empty() {
                break;
            }
            start += entries.len() as isize;
            if let Some(bytes) = entries
                .into_iter()
                .find(|b| envelope_id(b) == Some(id.as_bytes()))
            {
                let info = info_from_bytes(&keys.queue, JobState::Pending, &bytes);
                return Ok(Some((bytes, info)));
            }
        }
    }
    Ok(None)
}

/// Merges a tracked job's status record into what was found of its envelope.
async fn record_info(
    conn: &mut crate::connection::Conn,
    keys: &QueueKeys,
    id: &str,
    found: Option<JobInfo>,
) -> Result<Option<JobInfo>> {
    let record: HashMap<String, Vec<u8>> = conn.hgetall(keys.record(id)).await?;
    if record.is_empty() {
        return Ok(found);
    }
    let text = |field: &str| {
        record
            .get(field)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let number = |field: &str| text(field).and_then(|v| v.parse::<u64>().ok());
    let recorded_state = text("state").and_then(|s| s.parse::<JobState>().ok());
    let mut info = found.unwrap_or_else(|| JobInfo {
        id: id.to_string(),
        queue: keys.queue.clone(),
        state: recorded_state.unwrap_or(JobState::Completed),
        name: None,
        payload: None,
        attempts: 0,
        max_attempts: 0,
        priority: 0,
        enqueued_at_ms: None,
        started_at_ms: None,
        finished_at_ms: None,
        due_at_ms: None,
        last_error: None,
        result: None,
        progress: None,
        tracked: true,
    });
    info.tracked = true;
    if info.payload.is_none() {
        if let Some(state) = recorded_state {
            info.state = state;
        }
    }
    info.attempts = number("attempt").map(|n| n as u32).unwrap_or(info.attempts);
    info.enqueued_at_ms = number("enqueued_at").or(info.enqueued_at_ms);
    info.started_at_ms = number("started_at").or(info.started_at_ms);
    info.finished_at_ms = number("finished_at").or(info.finished_at_ms);
    info.last_error = text("error").filter(|e| !e.is_empty()).or(info.last_error);
    info.result = record.get("result").cloned();
    info.progress = text("progress");
    Ok(Some(info))
}

#[cfg(test)]
mod tests {
    #[test]
    fn info_is_read_and_summed_over_nodes() {
        let node = "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nused_memory:1234\r\nused_memory_human:1.21K\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n# Clients\r\nconnected_clients:7\r\n";
        let mut info = RedisInfo::default();
        info.add(node);
        assert_eq!(
            (
                info.version.as_str(),
                info.used_memory,
                info.used_memory_human.as_str()
            ),
            ("7.0.15", 1234, "1.21K")
        );
        assert_eq!(
            (info.maxmemory_policy.as_str(), info.connected_clients),
            ("noeviction", 7)
        );
        info.add(node);
        assert_eq!((info.used_memory, info.connected_clients), (2468, 14));
    }

    use super::*;

    #[test]
    fn envelope_id_reads_the_header() {
        let env = Envelope {
            id: "abc".into(),
            ..Envelope::default()
        };
        assert_eq!(envelope_id(&env.encode()), Some(&b"abc"[..]));
        let long = Envelope {
            id: "x".repeat(100),
            ..Envelope::default()
        };
        assert_eq!(envelope_id(&long.encode()).map(<[u8]>::len), Some(100));
        assert_eq!(envelope_id(b"42"), None);
        assert_eq!(envelope_id(WAKE), None);
    }
}
