//! A queue's footprint in Redis ([`Queue::memory_usage`]) and dropping a queue entirely
//! ([`Queue::remove`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::producer::Queue;
use crate::store::queues as stored;
use crate::{Error, Result};

/// How [`Queue::memory_usage`] measures.
///
/// ```
/// assert_eq!(ostq::admin::Measure::default(), ostq::admin::Measure::Estimate);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Measure {
    /// Redis's estimate from a few elements of each key (`MEMORY USAGE`'s default): cheap.
    #[default]
    Estimate,
    /// Every element counted (`SAMPLES 0`): exact, and O(elements) inside Redis.
    Exact,
}

/// The memory a queue's keys hold in Redis, from `MEMORY USAGE`.
///
/// JSON: `{"queue": "videos", "total_bytes": 5120, "keys": {"pending": 4096, "stats": 1024},
/// "lease_groups_bytes": 0, "newest_pending_entry_bytes": 43}`.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// use ostq::admin::Measure;
/// let memory = client.queue("videos").memory_usage(Measure::Estimate).await?;
/// println!("{} bytes, {:?} in the pending list", memory.total_bytes, memory.keys.get("pending"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueMemory {
    /// The queue.
    pub queue: String,
    /// The keys below and the lease groups, in bytes.
    pub total_bytes: u64,
    /// Bytes of each fixed key of the queue that exists, by its last part (`pending`, `jobs`,
    /// `dead`, `stats`, …: see [`crate::keys::QueueKeys`]).
    pub keys: BTreeMap<String, u64>,
    /// Bytes of the lease groups: the jobs workers hold now.
    pub lease_groups_bytes: u64,
    /// Length of the newest entry of the pending list as stored (its envelope): what one
    /// waiting job's data is, before the list's own overhead.
    pub newest_pending_entry_bytes: Option<u64>,
}

/// What [`Queue::remove`] did.
///
/// JSON: `{"outcome": "removed", "keys": 12, "active": 0}` or `{"outcome": "busy", "active": 3}`.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// use ostq::admin::Removal;
/// match client.queue("old").remove(false).await? {
///     Removal::Removed { keys, .. } => println!("{keys} keys deleted"),
///     Removal::Busy { active } => println!("{active} jobs still running: stop the workers"),
///     _ => {}
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
#[non_exhaustive]
pub enum Removal {
    /// Every key of the queue is gone and its name is out of the list of queues.
    Removed {
        /// Keys deleted.
        keys: u64,
        /// Jobs workers held at the time (only with `force`): they run to their end, but
        /// nothing is recorded of them.
        active: u64,
    },
    /// Workers hold jobs of the queue: nothing was deleted.
    Busy {
        /// Jobs workers hold.
        active: u64,
    },
}

impl Queue {
    /// The bytes the queue's fixed keys and lease groups hold (`MEMORY USAGE` of each, in one
    /// round trip, plus one per lease group). Per-job keys (status records, unique keys), cron
    /// schedules and results waiting for `wait_for` are not counted: finding them takes a scan of
    /// the keyspace (as [`Queue::remove`] does).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use ostq::admin::Measure;
    /// let exact = client.queue("videos").memory_usage(Measure::Exact).await?;
    /// println!("{} bytes", exact.total_bytes);
    /// # Ok(()) }
    /// ```
    pub async fn memory_usage(&self, measure: Measure) -> Result<QueueMemory> {
        let keys = self.keys()?;
        let shards = self.counted_queues().await?;
        if shards.len() > 1 {
            // A sharded queue (design §19): each key part summed over the shards.
            let mut sum = QueueMemory {
                queue: keys.queue.clone(),
                ..QueueMemory::default()
            };
            for shard in shards {
                let one = Box::pin(shard.memory_usage(measure)).await?;
                for (part, size) in one.keys {
                    *sum.keys.entry(part).or_default() += size;
                }
                sum.total_bytes += one.total_bytes;
                sum.lease_groups_bytes += one.lease_groups_bytes;
                if sum.newest_pending_entry_bytes.is_none() {
                    sum.newest_pending_entry_bytes = one.newest_pending_entry_bytes;
                }
            }
            return Ok(sum);
        }
        let mut conn = self.client_ref().conn();
        let exact = measure == Measure::Exact;
        let fixed: Vec<String> = keys.all().iter().map(|k| k.to_string()).collect();
        let sizes = stored::memory_usage(&mut conn, &fixed, exact).await?;
        let mut memory = QueueMemory {
            queue: keys.queue.clone(),
            ..QueueMemory::default()
        };
        for (key, size) in fixed.iter().zip(sizes) {
            if let Some(size) = size {
                let part = key.strip_prefix(&keys.prefix).unwrap_or(key);
                memory.keys.insert(part.to_string(), size);
                memory.total_bytes += size;
            }
        }
        let groups: Vec<String> = stored::lease_deadlines(&mut conn, keys)
            .await?
            .into_iter()
            .map(|(group, _)| keys.lease_group(group))
            .collect();
        let sizes = stored::memory_usage(&mut conn, &groups, exact).await?;
        memory.lease_groups_bytes = sizes.into_iter().flatten().sum();
        memory.total_bytes += memory.lease_groups_bytes;
        let newest = stored::newest_pending(&mut conn, keys).await?;
        memory.newest_pending_entry_bytes = newest.map(|entry| entry.len() as u64);
        Ok(memory)
    }

    /// Drops the queue entirely: every key of it (jobs in every state, status records, lease
    /// groups, unique keys, events, cron schedules, counters, settings) and its name from the
    /// list of queues. Keys are found with `SCAN` (on the node that holds them, in a Cluster)
    /// and deleted with `UNLINK`, so big ones are freed in the background.
    ///
    /// Like Sidekiq's `Queue#clear`, removing does not stop anything that runs; unlike it, ostq
    /// refuses by default while workers hold jobs of the queue ([`Removal::Busy`], nothing
    /// deleted). With `force` it goes ahead: held jobs run to their end in their workers, whose
    /// outcomes then find no lease and are ignored (no retry, no record). Stop the queue's
    /// workers first: a worker still serving the queue keeps polling it and recreates its
    /// counters. Not atomic: a job pushed while the removal runs may survive it. A
    /// [`crate::Client`] that pushed to the queue before does not add its name to the list of
    /// queues again.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let removal = client.queue("bench-1").remove(true).await?;
    /// println!("{removal:?}");
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, force: bool) -> Result<Removal> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let shards = self.counted_queues().await?;
        if shards.len() > 1 {
            // A sharded queue (design §19): busy if any shard is; the other shards first and
            // shard 0, which holds the layout, last, so a failure half-way leaves the layout.
            let mut active = 0;
            let mut busy = false;
            for shard in &shards {
                let shard_keys = shard.keys()?;
                let [_, _, _, held] = stored::totals(&mut conn, shard_keys).await?;
                let groups = stored::lease_deadlines(&mut conn, shard_keys).await?.len();
                active += held;
                busy |= held > 0 || groups > 0;
            }
            if busy && !force {
                return Ok(Removal::Busy { active });
            }
            let mut deleted = 0;
            for shard in shards.iter().rev() {
                if let Removal::Removed { keys, .. } = Box::pin(shard.remove(true)).await? {
                    deleted += keys;
                }
            }
            // The layout is gone: running workers re-read it and stop waiting on the shards.
            crate::store::shards::bump_layout_version(&mut conn).await?;
            return Ok(Removal::Removed {
                keys: deleted,
                active,
            });
        }
        let [_, _, _, active] = stored::totals(&mut conn, keys).await?;
        let groups = stored::lease_deadlines(&mut conn, keys).await?.len();
        if (active > 0 || groups > 0) && !force {
            return Ok(Removal::Busy { active });
        }
        stored::forget_queue(&mut conn, &keys.queue).await?;
        let (mut cursor, mut deleted) = (0, 0);
        for _ in 0..MAX_SCAN_STEPS {
            let (next, found) = stored::scan_queue_keys(&mut conn, keys, cursor).await?;
            deleted += stored::unlink(&mut conn, &found).await?;
            if next == 0 {
                return Ok(Removal::Removed {
                    keys: deleted,
                    active,
                });
            }
            cursor = next;
        }
        Err(Error::Timeout(format!(
            "removing queue {:?}: the key scan did not end in {MAX_SCAN_STEPS} steps",
            keys.queue
        )))
    }
}

/// A `SCAN` of 1,000 slots per step covers 10^9 keys in this many steps.
const MAX_SCAN_STEPS: usize = 1_000_000;
