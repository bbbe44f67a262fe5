//! The key layout, written once. Every key of a queue carries the queue's hash tag, so every script
//! touches a single cluster slot; `docs/design.md` describes each key.

/// Global set of known queue names (written outside the per-queue scripts).
pub const QUEUES: &str = "ostq:queues";

/// Global sorted set of registered workers: worker id → last heartbeat (unix ms, the worker's
/// clock). An id whose entry ([`worker_entry`]) has expired belongs to a dead worker.
pub const WORKERS: &str = "ostq:workers";

/// Global counter of shard-layout changes: `Queue::set_shards` increments it after writing a
/// layout, and running workers read it every couple of seconds (one `GET`) to learn that they
/// should read their queues' layouts again (docs/design.md §19).
pub const LAYOUTS: &str = "ostq:layouts";

/// A worker's registry entry, a HASH (host, pid, queues, concurrency, busy, version, started,
/// last seen) that expires unless the worker's heartbeats renew it.
///
/// ```
/// assert_eq!(ostq::keys::worker_entry("h:1:ab"), "ostq:worker:h:1:ab");
/// ```
pub fn worker_entry(id: &str) -> String {
    format!("ostq:worker:{id}")
}

/// Longest queue name accepted: keys stay small and readable.
pub const MAX_QUEUE_NAME: usize = 200;

/// The keys of one queue, `ostq:{<queue>}:<part>`.
///
/// ```
/// let keys = ostq::keys::QueueKeys::new("videos").unwrap();
/// assert_eq!(keys.pending, "ostq:{videos}:pending");
/// assert_eq!(keys.record("42"), "ostq:{videos}:job:42");
/// ```
#[derive(Debug, Clone)]
pub struct QueueKeys {
    /// The queue's name.
    pub queue: String,
    /// `ostq:{q}:` — scripts build per-job status record keys from it.
    pub prefix: String,
    /// LIST of ready envelopes: producers LPUSH, workers take from the right.
    pub pending: String,
    /// ZSET of ready envelopes with a non-zero priority, scored by priority then FIFO order.
    pub prioritized: String,
    /// ZSET job id → run-at (unix ms) of delayed jobs.
    pub scheduled: String,
    /// ZSET job id → retry-at (unix ms) of failed jobs waiting for another attempt.
    pub retry: String,
    /// ZSET job id → died-at (unix ms) of jobs that spent their attempts.
    pub dead: String,
    /// HASH job id → envelope, for jobs in `scheduled`, `retry` and `dead`.
    pub jobs: String,
    /// ZSET lease group → deadline (unix ms): the groups of jobs workers hold.
    pub active: String,
    /// HASH lease group → how many of its entries, from the first, have started; only for groups
    /// with jobs their worker parked (prefetch). Recovery counts an attempt for those alone.
    pub started: String,
    /// ZSET job id → finished-at (unix ms) of completed tracked jobs, within their retention.
    pub completed: String,
    /// Counter for ids generated in Redis and for FIFO order among equal priorities.
    pub seq: String,
    /// HASH of counters: processed, failed, recovered totals and jobs active now.
    pub stats: String,
    /// Exists while the queue is paused.
    pub paused: String,
    /// HASH max, period (ms), tokens, ts: the queue's rate limit, a token bucket shared by all
    /// workers; absent when the queue has none.
    pub rate_limit: String,
    /// HASH of settings shared by every producer and worker of the queue (`events`).
    pub config: String,
    /// STREAM of job events (capped at about 10,000), and the name of their pub/sub channel.
    pub events: String,
    /// SET of ids of running jobs whose cancellation was asked for (expires a day after the last).
    pub cancel: String,
    /// SET of staged lease groups: registered (empty, in `active`) by `fetch.lua` for an idle
    /// worker, whose wait moves the next job straight into one; `claim.lua` (or whichever script
    /// settles the group first) takes it out. Scripts derive it from the prefix.
    pub staged: String,
}

impl QueueKeys {
    /// The keys of `queue`; the name must be 1..=200 bytes without `{`, `}`, `#` or whitespace.
    pub fn new(queue: &str) -> crate::Result<Self> {
        validate_queue_name(queue)?;
        Ok(Self::unchecked(queue))
    }

    /// The keys of a physical queue: a user's queue, or one shard of a sharded queue, whose name
    /// is `<queue>#<index>.<salt>` ([`shard_name`]); `#` is refused in user names.
    ///
    /// ```
    /// let keys = ostq::keys::QueueKeys::physical("videos#1.7").unwrap();
    /// assert_eq!(keys.pending, "ostq:{videos#1.7}:pending");
    /// assert!(ostq::keys::QueueKeys::new("videos#1.7").is_err());
    /// ```
    pub fn physical(queue: &str) -> crate::Result<Self> {
        match queue.split_once(SHARD_MARK) {
            None => Self::new(queue),
            Some((base, rest)) => {
                validate_queue_name(base)?;
                let ok = rest.split_once('.').is_some_and(|(i, salt)| {
                    !i.is_empty()
                        && !salt.is_empty()
                        && i.bytes().all(|b| b.is_ascii_digit())
                        && salt.bytes().all(|b| b.is_ascii_digit())
                });
                if !ok || rest.len() > 24 {
                    return Err(crate::Error::Config(format!(
                        "{queue:?} is not a shard name (<queue>#<index>.<salt>)"
                    )));
                }
                Ok(Self::unchecked(queue))
            }
        }
    }

    fn unchecked(queue: &str) -> Self {
        let prefix = format!("ostq:{{{queue}}}:");
        let key = |part: &str| format!("{prefix}{part}");
        Self {
            queue: queue.to_string(),
            pending: key("pending"),
            prioritized: key("prioritized"),
            scheduled: key("scheduled"),
            retry: key("retry"),
            dead: key("dead"),
            jobs: key("jobs"),
            active: key("active"),
            started: key("started"),
            completed: key("completed"),
            seq: key("seq"),
            stats: key("stats"),
            paused: key("paused"),
            staged: key("staged"),
            rate_limit: key("ratelimit"),
            config: key("config"),
            events: key("events"),
            cancel: key("cancel"),
            prefix,
        }
    }

    /// The status record of a tracked job, a HASH that expires after its retention.
    pub fn record(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    /// A LIST that gets a token when tracked job `id` completes or dies, for `wait_for`.
    pub fn done(&self, id: &str) -> String {
        format!("{}done:{id}", self.prefix)
    }

    /// The LIST of envelopes leased together by one fetch (lease group `group`).
    pub fn lease_group(&self, group: u64) -> String {
        format!("{}lease:{group}", self.prefix)
    }

    /// The unique-key lock of jobs pushed with unique key `key` (a STRING holding the job's id).
    pub fn unique(&self, key: &str) -> String {
        format!("{}unique:{key}", self.prefix)
    }

    /// A LIST a purge renames the pending list to, so the purge never races with producers.
    pub fn purging(&self, tag: &str) -> String {
        format!("{}purging:{tag}", self.prefix)
    }

    /// HASH of the queue's cron schedules: name → spec (JSON).
    pub fn schedules(&self) -> String {
        format!("{}schedules", self.prefix)
    }

    /// HASH of removed schedules: name → removed at (unix ms), so a process still running an old
    /// schedule does not bring it back.
    pub fn removed_schedules(&self) -> String {
        format!("{}schedules:removed", self.prefix)
    }

    /// HASH of one schedule's state (created, last and next tick).
    pub fn schedule_state(&self, name: &str) -> String {
        format!("{}cron:{name}", self.prefix)
    }

    /// A LIST [`crate::Queue::probe_throughput`] fills and empties to measure Redis itself;
    /// deleted after.
    ///
    /// ```
    /// let keys = ostq::keys::QueueKeys::new("q").unwrap();
    /// assert_eq!(keys.probe(), "ostq:{q}:probe");
    /// ```
    pub fn probe(&self) -> String {
        format!("{}probe", self.prefix)
    }

    /// HASH of per-task history for one minute (`minute` = ⌊unix ms / 60,000⌋ on the server's
    /// clock): fields `<task>|<figure>` (design §2, "History"). Expires 25 hours after its last
    /// write.
    ///
    /// ```
    /// let keys = ostq::keys::QueueKeys::new("q").unwrap();
    /// assert_eq!(keys.history_minute(28_566_720), "ostq:{q}:hist:m:28566720");
    /// ```
    pub fn history_minute(&self, minute: u64) -> String {
        format!("{}hist:m:{minute}", self.prefix)
    }

    /// HASH of per-task history for one hour (`hour` = ⌊unix ms / 3,600,000⌋ on the server's
    /// clock), same fields as [`QueueKeys::history_minute`]. Expires 8 days after its last write.
    ///
    /// ```
    /// let keys = ostq::keys::QueueKeys::new("q").unwrap();
    /// assert_eq!(keys.history_hour(476_112), "ostq:{q}:hist:h:476112");
    /// ```
    pub fn history_hour(&self, hour: u64) -> String {
        format!("{}hist:h:{hour}", self.prefix)
    }

    /// HASH of the queue's per-task totals since the history began, same fields as
    /// [`QueueKeys::history_minute`] (what `/metrics` exports as counters and histograms). No
    /// expiry; at most 20,000 fields (design §2, "History").
    ///
    /// ```
    /// let keys = ostq::keys::QueueKeys::new("q").unwrap();
    /// assert_eq!(keys.history_totals(), "ostq:{q}:hist:all");
    /// ```
    pub fn history_totals(&self) -> String {
        format!("{}hist:all", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every key of the queue, per-job keys included (the queue name
    /// with the pattern's special characters escaped).
    ///
    /// ```
    /// let keys = ostq::keys::QueueKeys::new("a*b").unwrap();
    /// assert_eq!(keys.pattern(), "ostq:{a\\*b}:*");
    /// ```
    pub fn pattern(&self) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 8);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('*');
        out
    }

    /// The `KEYS` of `push.lua`, in its order (each script's header names its keys).
    pub fn push_keys(&self) -> [&str; 7] {
        [
            &self.pending,
            &self.prioritized,
            &self.scheduled,
            &self.jobs,
            &self.seq,
            &self.config,
            &self.events,
        ]
    }

    /// The `KEYS` of `complete.lua`, in its order.
    pub fn complete_keys(&self) -> [&str; 6] {
        [
            &self.active,
            &self.completed,
            &self.stats,
            &self.config,
            &self.events,
            &self.started,
        ]
    }

    /// The `KEYS` of `fail.lua`, in its order.
    pub fn fail_keys(&self) -> [&str; 9] {
        [
            &self.active,
            &self.retry,
            &self.dead,
            &self.jobs,
            &self.stats,
            &self.pending,
            &self.scheduled,
            &self.config,
            &self.events,
        ]
    }

    /// The `KEYS` of `requeue.lua`, in its order.
    pub fn requeue_keys(&self) -> [&str; 6] {
        [
            &self.pending,
            &self.prioritized,
            &self.active,
            &self.seq,
            &self.stats,
            &self.started,
        ]
    }

    /// The `KEYS` of `enqueue_now.lua`, in its order.
    pub fn enqueue_now_keys(&self) -> [&str; 9] {
        [
            &self.pending,
            &self.prioritized,
            &self.scheduled,
            &self.retry,
            &self.dead,
            &self.jobs,
            &self.seq,
            &self.config,
            &self.events,
        ]
    }

    /// The `KEYS` of `delete.lua`, in its order.
    pub fn delete_keys(&self) -> [&str; 5] {
        [
            &self.scheduled,
            &self.retry,
            &self.dead,
            &self.completed,
            &self.jobs,
        ]
    }

    /// The `KEYS` of `delete_pending.lua`, in its order.
    pub fn delete_pending_keys(&self) -> [&str; 2] {
        [&self.pending, &self.prioritized]
    }

    /// The `KEYS` of `progress.lua`, in its order.
    pub fn progress_keys(&self) -> [&str; 2] {
        [&self.config, &self.events]
    }

    /// The `KEYS` of `fetch.lua`, in its order (the script's header names them).
    ///
    /// ```
    /// let keys = ostq::keys::QueueKeys::new("mail").unwrap();
    /// assert_eq!(keys.fetch_keys()[0], "ostq:{mail}:pending");
    /// assert_eq!(keys.fetch_keys().len(), 15);
    /// ```
    pub fn fetch_keys(&self) -> [&str; 15] {
        [
            &self.pending,
            &self.prioritized,
            &self.scheduled,
            &self.retry,
            &self.jobs,
            &self.active,
            &self.dead,
            &self.seq,
            &self.stats,
            &self.completed,
            &self.paused,
            &self.rate_limit,
            &self.config,
            &self.events,
            &self.started,
        ]
    }

    /// The `KEYS` of `renew.lua`, in its order.
    pub fn renew_keys(&self) -> [&str; 2] {
        [&self.active, &self.started]
    }

    /// Every fixed key of the queue (status records and lease groups excluded).
    pub fn all(&self) -> [&str; 17] {
        [
            &self.pending,
            &self.prioritized,
            &self.scheduled,
            &self.retry,
            &self.dead,
            &self.jobs,
            &self.active,
            &self.completed,
            &self.seq,
            &self.stats,
            &self.paused,
            &self.rate_limit,
            &self.config,
            &self.events,
            &self.cancel,
            &self.started,
            &self.staged,
        ]
    }
}

/// The character that separates a sharded queue's name from a shard's index and salt in the
/// shards' physical names (`videos#1.7`); refused in the names users give queues.
pub const SHARD_MARK: char = '#';

/// The physical name of shard `index` (1 or more; shard 0 is the queue itself) of `queue`, with
/// the `salt` that puts its hash tag on the primary chosen for it (design §19).
///
/// ```
/// assert_eq!(ostq::keys::shard_name("videos", 2, 41), "videos#2.41");
/// ```
pub fn shard_name(queue: &str, index: usize, salt: u32) -> String {
    format!("{queue}{SHARD_MARK}{index}.{salt}")
}

/// The Redis Cluster slot of every key of the (physical) queue `queue`: CRC16 (XMODEM) of its
/// hash tag, the name, modulo 16384.
///
/// ```
/// // design §2: the cluster test's queues land in slots 3973, 7290 and 12682.
/// assert_eq!(ostq::keys::slot_of_queue("videos"), 3973);
/// ```
pub fn slot_of_queue(queue: &str) -> u16 {
    let mut crc: u16 = 0;
    for &byte in queue.as_bytes() {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// Checks a queue name: 1..=200 bytes, no braces (they would break the hash tag), no `#` (it marks
/// the shards of a sharded queue), no whitespace.
pub fn validate_queue_name(queue: &str) -> crate::Result<()> {
    let bad = queue.is_empty()
        || queue.len() > MAX_QUEUE_NAME
        || queue.chars().any(|c| {
            c == '{' || c == '}' || c == SHARD_MARK || c.is_whitespace() || c.is_control()
        });
    if bad {
        return Err(crate::Error::Config(format!(
            "queue name {queue:?} must be 1..={MAX_QUEUE_NAME} bytes without braces, #, whitespace or control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(QueueKeys::new("videos").is_ok());
        for bad in ["", "a{b", "a}b", "a b", "x\n", "a#1.2"] {
            assert!(QueueKeys::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(QueueKeys::new(&"q".repeat(201)).is_err());
    }

    #[test]
    fn the_pattern_escapes_glob_characters() {
        let keys = QueueKeys::new("a*b?[c]").unwrap();
        assert_eq!(keys.pattern(), "ostq:{a\\*b\\?\\[c\\]}:*");
        assert_eq!(QueueKeys::new("q").unwrap().pattern(), "ostq:{q}:*");
    }

    #[test]
    fn every_key_shares_the_hash_tag() {
        let keys = QueueKeys::new("q1").unwrap();
        for key in keys.all() {
            assert!(key.starts_with("ostq:{q1}:"), "{key}");
        }
    }
}
