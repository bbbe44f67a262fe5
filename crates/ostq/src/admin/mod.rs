//! The admin API: the one data API under the CLI, the dashboard and export. Counts per state,
//! job listings with paging, one job by id, retry, delete, purge, cancel, pause and resume, rate
//! limits and Redis's own figures. It speaks in queues and jobs; the commands are in the storage
//! layer (`store::queues`).

use std::time::Duration;

use crate::envelope::Envelope;
use crate::job::{JobInfo, JobState};
use crate::keys::QueueKeys;
use crate::producer::Queue;
use crate::store::queues::{self as stored, SCAN_CHUNK};
use crate::store::Conn;
use crate::Client;
use crate::{Error, Result};

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
    let c = stored::counts(&mut client.conn(), keys).await?;
    Ok(QueueCounts {
        queue: keys.queue.clone(),
        pending: c.pending_list.saturating_sub(u64::from(c.wake_marker)) + c.prioritized,
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

impl Client {
    /// Redis's version, memory (used, limit, eviction policy) and client connections, through
    /// whatever this client connects to (one server, a Sentinel-managed primary, a Cluster).
    pub async fn redis_info(&self) -> Result<RedisInfo> {
        let texts = stored::info_texts(&mut self.conn()).await?;
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
        let mut names = stored::queue_names(&mut self.conn()).await?;
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
    pub async fn job(&self, id: &str) -> Result<Option<JobInfo>> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let queue = keys.queue.as_str();
        let envelope = stored::envelopes_by_id(&mut conn, keys, &[id]).await?;
        let mut found: Option<JobInfo> = None;
        if let Some(bytes) = envelope.into_iter().next().flatten() {
            let scores = stored::timed_scores(&mut conn, keys, id).await?;
            let (state, due) = match scores {
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
        stored::enqueue_now(&mut self.client_ref().conn(), keys, ids).await
    }

    /// Moves every dead job back to pending. Returns how many moved.
    pub async fn retry_all_dead(&self) -> Result<u64> {
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
        let mut conn = self.client_ref().conn();
        let mut removed = 0;
        for id in ids {
            if stored::delete(&mut conn, keys, &[id]).await? > 0 {
                removed += 1;
                continue;
            }
            if let Some((bytes, _)) = find_pending(&mut conn, keys, id).await? {
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
        let keys = self.keys()?;
        stored::set_paused(&mut self.client_ref().conn(), keys, true).await
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
        let limit = (u64::from(max), period.as_millis() as u64);
        stored::set_rate_limit(&mut self.client_ref().conn(), keys, Some(limit)).await
    }

    /// Removes the queue's rate limit.
    pub async fn clear_rate_limit(&self) -> Result<()> {
        let keys = self.keys()?;
        stored::set_rate_limit(&mut self.client_ref().conn(), keys, None).await
    }

    /// Lets workers fetch this queue again.
    pub async fn resume(&self) -> Result<()> {
        let keys = self.keys()?;
        stored::set_paused(&mut self.client_ref().conn(), keys, false).await
    }
}

/// The first ids of a sorted set (lowest scores), one scan chunk.
async fn oldest_ids(conn: &mut Conn, zset: &str) -> Result<Vec<String>> {
    let stop = SCAN_CHUNK as isize - 1;
    let ids = stored::ids_with_scores(conn, zset, 0, stop, false).await?;
    Ok(ids.into_iter().map(|(id, _)| id).collect())
}

/// Reads jobs kept by id, with their due (or died-at) times.
async fn infos_by_id(
    conn: &mut Conn,
    keys: &QueueKeys,
    state: JobState,
    ids: Vec<(String, u64)>,
) -> Result<Vec<JobInfo>> {
    let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let envelopes = stored::envelopes_by_id(conn, keys, &names).await?;
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
async fn active_jobs(conn: &mut Conn, keys: &QueueKeys) -> Result<Vec<JobInfo>> {
    let mut out = Vec::new();
    for (_, deadline, entries) in stored::lease_groups(conn, keys).await? {
        for bytes in entries.iter().filter(|b| !b.is_empty()) {
            let mut info = info_from_bytes(&keys.queue, JobState::Active, bytes);
            info.due_at_ms = Some(deadline);
            out.push(info);
        }
    }
    Ok(out)
}

async fn find_active(conn: &mut Conn, keys: &QueueKeys, id: &str) -> Result<Option<JobInfo>> {
    Ok(active_jobs(conn, keys)
        .await?
        .into_iter()
        .find(|info| info.id == id))
}

/// Scans the pending list and zset for an id: O(pending), for inspection only.
async fn find_pending(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
) -> Result<Option<(Vec<u8>, JobInfo)>> {
    for (key, is_list) in [(&keys.prioritized, false), (&keys.pending, true)] {
        let mut start = 0;
        loop {
            let entries = stored::pending_chunk(conn, key, is_list, start).await?;
            if entries.is_empty() {
                break;
            }
            start += entries.len();
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
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
    found: Option<JobInfo>,
) -> Result<Option<JobInfo>> {
    let record = stored::record(conn, keys, id).await?;
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
        assert_eq!(envelope_id(crate::store::queues::WAKE), None);
    }
}
