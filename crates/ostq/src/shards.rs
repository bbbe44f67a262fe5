//! Sharded queues (design §19): one logical queue over N physical queues, each with its own hash
//! tag, so that one busy queue can use every primary of a Redis Cluster.
//!
//! Shard 0 is the queue itself (its plain name: existing jobs and bare `LPUSH`es still work);
//! shard `i ≥ 1` is the physical queue `<queue>#<i>.<salt>`, the salt chosen from the cluster's
//! slot map so that the shards spread over the primaries. The names are stored in the queue's
//! settings hash (`shards`), so correctness never depends on where slots are later, only balance.
//!
//! ```no_run
//! # async fn demo(client: ostq::Client) -> ostq::Result<()> {
//! let queue = client.queue("videos");
//! let layout = queue.set_shards(3).await?;
//! assert_eq!(layout.shards[0], "videos");
//! queue.push("42").await?; // round-robin over the 3 shards
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys::{shard_name, slot_of_queue, QueueKeys, SHARD_MARK};
use crate::producer::Queue;
use crate::store;
use crate::{Error, Result};

/// Most shards a queue may have.
pub const MAX_SHARDS: usize = 64;

/// How long a shard drains before `set_shards` may forget it (if it is empty by then): producers
/// re-read the layout every second and running workers every 2 s, so by then nothing pushes
/// there any more; the margin covers a producer that stalled between reading and pushing.
pub const DRAIN_GRACE_MS: i64 = 60_000;

/// How long a `Queue` trusts its cached view of the queue's settings (events, shards).
pub(crate) const CONFIG_CACHE: Duration = Duration::from_secs(1);

/// The physical queues of a logical queue, as stored in its settings hash.
///
/// ```
/// let layout = ostq::shards::ShardLayout::single("videos");
/// assert_eq!(layout.count(), 1);
/// assert_eq!(layout.shard_of_id("anything"), 0);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ShardLayout {
    /// Shard `i`'s physical queue name; `shards[0]` is the queue itself. Producers push here.
    pub shards: Vec<String>,
    /// Former shards (left by a smaller count) that workers keep serving until they are empty.
    pub draining: Vec<String>,
}

impl ShardLayout {
    /// The layout of an unsharded queue: the queue alone.
    pub fn single(queue: &str) -> Self {
        Self {
            shards: vec![queue.to_string()],
            draining: Vec::new(),
        }
    }

    fn parse(queue: &str, shards: Option<&str>, draining: Option<&str>) -> Result<Self> {
        let names = |text: Option<&str>| -> Result<Vec<String>> {
            text.unwrap_or_default()
                .split(' ')
                .filter(|n| !n.is_empty())
                .map(|n| {
                    QueueKeys::physical(n)?;
                    Ok(n.to_string())
                })
                .collect::<Result<Vec<String>>>()
                .map_err(|e| Error::Protocol(format!("queue {queue}: stored shards: {e}")))
        };
        let mut shards = names(shards)?;
        if shards.is_empty() {
            shards.push(queue.to_string());
        }
        if shards[0] != queue {
            return Err(Error::Protocol(format!(
                "queue {queue}: stored shard 0 is {:?}",
                shards[0]
            )));
        }
        Ok(Self {
            shards,
            draining: names(draining)?,
        })
    }

    /// Shards producers push to.
    pub fn count(&self) -> usize {
        self.shards.len()
    }

    /// Every physical queue a worker of this queue serves: the shards, then the draining ones.
    pub fn physical(&self) -> impl Iterator<Item = &str> {
        self.shards
            .iter()
            .chain(self.draining.iter())
            .map(String::as_str)
    }

    /// The shard that holds job `id`: the index a generated id carries after `#`
    /// (`01J…#2`), else a hash of the id (how a caller-given id was routed).
    ///
    /// ```
    /// let layout = ostq::shards::ShardLayout {
    ///     shards: vec!["q".into(), "q#1.0".into(), "q#2.5".into()],
    ///     draining: vec![],
    /// };
    /// assert_eq!(layout.shard_of_id("01JABC#2"), 2);
    /// assert!(layout.shard_of_id("order-7") < 3);
    /// ```
    pub fn shard_of_id(&self, id: &str) -> usize {
        let n = self.count();
        if let Some((_, index)) = id.rsplit_once(SHARD_MARK) {
            if let Ok(i) = index.parse::<usize>() {
                if i < n {
                    return i;
                }
            }
        }
        self.shard_of_key(id)
    }

    /// The shard an ordering key or a unique key routes to: FNV-1a of the key modulo the count.
    ///
    /// ```
    /// let layout = ostq::shards::ShardLayout {
    ///     shards: vec!["q".into(), "q#1.0".into()],
    ///     draining: vec![],
    /// };
    /// assert_eq!(layout.shard_of_key("user-1"), layout.shard_of_key("user-1"));
    /// ```
    pub fn shard_of_key(&self, key: &str) -> usize {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in key.as_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % self.count() as u64) as usize
    }
}

/// What a `Queue` caches of its settings hash.
#[derive(Debug)]
pub(crate) struct CachedConfig {
    pub(crate) events_on: bool,
    pub(crate) layout: Arc<ShardLayout>,
    /// Shards a change forgot: nothing runs there any more, but their running totals and
    /// history stay part of the queue's, so its counters never go back (a Prometheus counter
    /// that drops reads as a reset).
    pub(crate) retired: Arc<Vec<String>>,
}

/// At most this many forgotten shards are remembered for the queue's totals (the oldest go).
const MAX_RETIRED: usize = 64;

/// The index a shard name carries (`q#2.41` → 2).
fn index_of(name: &str) -> Option<usize> {
    let (_, rest) = name.split_once(SHARD_MARK)?;
    rest.split_once('.')?.0.parse().ok()
}

impl Queue {
    /// The queue's shard layout as stored now (one round trip).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// println!("{:?}", client.queue("videos").shards().await?.shards);
    /// # Ok(()) }
    /// ```
    pub async fn shards(&self) -> Result<ShardLayout> {
        Ok((*self.read_config().await?.layout).clone())
    }

    /// Reads the queue's cached settings afresh (one `HMGET`).
    pub(crate) async fn read_config(&self) -> Result<Arc<CachedConfig>> {
        let keys = self.keys()?;
        let [events, shards, draining, retired] =
            store::shards::cached_settings(&mut self.client_ref().conn(), keys).await?;
        let (layout, retired) = if self.is_shard() {
            (ShardLayout::single(&keys.queue), Vec::new())
        } else {
            let layout = ShardLayout::parse(&keys.queue, shards.as_deref(), draining.as_deref())?;
            // (Read like `draining`: a malformed name is an error.)
            let retired = ShardLayout::parse(&keys.queue, None, retired.as_deref())?.draining;
            (layout, retired)
        };
        let config = Arc::new(CachedConfig {
            events_on: !matches!(events.as_deref(), None | Some("")),
            layout: Arc::new(layout),
            retired: Arc::new(retired),
        });
        if let Ok(mut cache) = self.config_cache.lock() {
            *cache = Some((Instant::now(), config.clone()));
        }
        Ok(config)
    }

    /// The queue's settings, cached for a second: producers pay no read per push.
    pub(crate) async fn config(&self) -> Result<Arc<CachedConfig>> {
        if let Ok(cache) = self.config_cache.lock() {
            if let Some((at, config)) = &*cache {
                if at.elapsed() < CONFIG_CACHE {
                    return Ok(config.clone());
                }
            }
        }
        self.read_config().await
    }

    /// One handle per physical queue of this queue (shards, then draining ones): what the admin
    /// API sums over. An unsharded queue (or a shard's own handle) gives itself.
    ///
    /// The layout comes from the handle's settings cache (one `HMGET` a second at most, as for
    /// producers): the admin calls of one scrape or one page (counts, history, oldest job) then
    /// pay one read per queue, not one each, and an admin view lags a new layout by at most the
    /// second producers lag it by.
    pub(crate) async fn shard_queues(&self) -> Result<Vec<Queue>> {
        Ok(self.shard_set().await?.1)
    }

    /// [`Self::shard_queues`] and the shards a change forgot (empty, unserved): what the
    /// queue's running totals and history are summed over, so they never go back when a shard
    /// is forgotten, and what `remove` deletes.
    pub(crate) async fn counted_queues(&self) -> Result<Vec<Queue>> {
        let mut queues = self.shard_queues().await?;
        if !self.is_shard() {
            for name in self.config().await?.retired.iter() {
                queues.push(self.shard(name)?);
            }
        }
        Ok(queues)
    }

    /// The cached layout and one handle per physical queue in it, from one read of the settings
    /// (so callers that need both never see two layouts).
    pub(crate) async fn shard_set(&self) -> Result<(Arc<ShardLayout>, Vec<Queue>)> {
        if self.is_shard() {
            let keys = self.keys()?;
            let layout = Arc::new(ShardLayout::single(&keys.queue));
            return Ok((layout, vec![self.clone()]));
        }
        let layout = self.config().await?.layout.clone();
        if layout.count() == 1 && layout.draining.is_empty() {
            return Ok((layout, vec![self.clone()]));
        }
        let shards = layout
            .physical()
            .map(|name| self.shard(name))
            .collect::<Result<Vec<Queue>>>()?;
        Ok((layout, shards))
    }

    /// Gives the queue `count` shards (1..=64), for every producer (within a second) and every
    /// worker, running ones included (within about 2 s, design §19).
    /// Shard 0 is the queue itself; kept shards keep their names; a new shard's hash tag is
    /// searched so that its slot lands on the Cluster primary holding fewest shards of the
    /// queue. Shards beyond `count` become draining: workers keep serving them, and a later
    /// `set_shards` forgets those it finds empty once they have drained for
    /// [`DRAIN_GRACE_MS`]. The queue's pause and rate limit are carried
    /// to the new layout. Returns the layout written.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let layout = client.queue("videos").set_shards(3).await?;
    /// println!("{:?}", layout.shards);
    /// # Ok(()) }
    /// ```
    pub async fn set_shards(&self, count: usize) -> Result<ShardLayout> {
        if !(1..=MAX_SHARDS).contains(&count) {
            return Err(Error::Config(format!(
                "a queue has 1..={MAX_SHARDS} shards, not {count}"
            )));
        }
        if self.is_shard() {
            return Err(Error::Config(format!(
                "{} is a shard: set the shards of its queue",
                self.name()
            )));
        }
        let keys = self.keys()?;
        let queue = keys.queue.clone();
        let current = self.shards().await?;
        let limit = self.rate_limit().await?;
        if let Some((max, _)) = limit {
            if (max as usize) < count {
                return Err(Error::Config(format!(
                    "the queue's rate limit of {max} cannot be split over {count} shards"
                )));
            }
        }
        let paused = self.counts().await?.paused;
        let events = self.events_sink().await?;
        let mut conn = self.client_ref().conn();
        let slots = store::shards::slot_map(&mut conn).await?;
        let owner = |name: &str| -> Option<&str> {
            let slot = slot_of_queue(name);
            slots
                .iter()
                .find(|(start, end, _)| (*start..=*end).contains(&slot))
                .map(|(_, _, node)| node.as_str())
        };
        let mut nodes: Vec<&str> = slots.iter().map(|(_, _, n)| n.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();

        let now = store::cron::server_time_ms(&mut conn).await?;
        let since_field = store::shards::draining_since(&mut conn, keys).await?;
        let mut retired = (*self.read_config().await?.retired).clone();
        let mut since: HashMap<String, i64> = current
            .draining
            .iter()
            .cloned()
            .zip(
                since_field
                    .as_deref()
                    .unwrap_or_default()
                    .split_ascii_whitespace()
                    .map(|ms| ms.parse().unwrap_or(now)),
            )
            .collect();
        let mut draining = current.draining.clone();
        let mut shards = vec![queue.clone()];
        for index in 1..count {
            if let Some(name) = current.shards.get(index) {
                shards.push(name.clone());
            } else if let Some(pos) = draining.iter().position(|d| index_of(d) == Some(index)) {
                shards.push(draining.remove(pos));
            } else {
                // The primary with fewest shards of this queue so far; the first salt whose
                // slot it serves.
                let target = nodes
                    .iter()
                    .min_by_key(|node| shards.iter().filter(|s| owner(s) == Some(**node)).count())
                    .copied();
                let salt = match target {
                    None => 0,
                    Some(target) => (0..100_000u32)
                        .find(|salt| owner(&shard_name(&queue, index, *salt)) == Some(target))
                        .unwrap_or(0),
                };
                shards.push(shard_name(&queue, index, salt));
            }
        }
        for old in current.shards.iter().skip(count) {
            if !draining.contains(old) {
                draining.push(old.clone());
                since.insert(old.clone(), now);
            }
        }
        // Forget draining shards that hold nothing any more, once every producer has long
        // stopped pushing there: one that read the layout just before this change may still push
        // to the shard for a second (its cache), and a job pushed to a forgotten shard would sit
        // where no worker looks.
        let mut kept = Vec::new();
        let mut kept_since = Vec::new();
        for name in draining {
            let began = since.get(&name).copied().unwrap_or(now);
            let c = self.shard(&name)?.counts().await?;
            let empty = c.pending + c.active + c.scheduled + c.retry + c.dead + c.completed == 0;
            if !empty || now - began < DRAIN_GRACE_MS {
                kept.push(name);
                kept_since.push(began.to_string());
            } else if !retired.contains(&name) {
                retired.push(name);
            }
        }
        // A name in use again counts as a shard; the list keeps the newest forgotten ones.
        retired.retain(|name| !shards.contains(name) && !kept.contains(name));
        let excess = retired.len().saturating_sub(MAX_RETIRED);
        retired.drain(..excess);
        let layout = ShardLayout {
            shards,
            draining: kept,
        };
        store::shards::write_shards(
            &mut conn,
            keys,
            &layout.shards.join(" "),
            &layout.draining.join(" "),
            &kept_since.join(" "),
            &retired.join(" "),
        )
        .await?;
        // After the layout, so that a worker that sees the new count reads the new layout. If
        // this fails the call fails: running workers would not notice the change, and calling
        // again writes the same layout and counts it.
        store::shards::bump_layout_version(&mut conn).await?;
        if let Ok(mut cache) = self.config_cache.lock() {
            *cache = None;
        }
        if paused {
            self.pause().await?;
        }
        if let Some((max, period)) = limit {
            self.set_rate_limit(max, period).await?;
        }
        if events != crate::events::EventSink::Off {
            self.set_events(events).await?;
        }
        Ok(layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_layouts_are_checked() {
        let layout = ShardLayout::parse("q", Some("q q#1.3 q#2.0"), Some("q#3.9")).unwrap();
        assert_eq!(layout.count(), 3);
        assert_eq!(layout.physical().count(), 4);
        assert_eq!(ShardLayout::parse("q", None, None).unwrap().count(), 1);
        assert!(ShardLayout::parse("q", Some("other q#1.3"), None).is_err());
        assert!(ShardLayout::parse("q", Some("q q{x}"), None).is_err());
        assert_eq!(index_of("q#12.4"), Some(12));
    }

    #[test]
    fn ids_route_by_their_mark_or_their_hash() {
        let layout = ShardLayout::parse("q", Some("q q#1.3 q#2.0"), None).unwrap();
        assert_eq!(layout.shard_of_id("X#1"), 1);
        assert_eq!(layout.shard_of_id("X#7"), layout.shard_of_key("X#7"));
        let mut seen = [0; 3];
        for i in 0..300 {
            seen[layout.shard_of_key(&format!("k{i}"))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
