//! The Redis server's own figures: version, memory and clients ([`RedisInfo`]); CPU, lazy frees
//! and per-command costs ([`ServerStats`]); the round trip of a `PING`; and what Redis itself can
//! do for this client ([`Queue::probe_throughput`]). Summed over the nodes of a Cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::producer::Queue;
use crate::store::server as stored;
use crate::Client;
use crate::{Error, Result};

/// Redis's own figures, from `INFO` (summed over the nodes of a Cluster).
///
/// JSON: `{"version": "7.0.15", "used_memory": 1048576, "used_memory_human": "1.00M",
/// "maxmemory": 0, "maxmemory_policy": "noeviction", "connected_clients": 3}`.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let info = client.redis_info().await?;
/// if info.maxmemory_policy != "noeviction" {
///     eprintln!("Redis {} may evict queue keys ({})", info.version, info.maxmemory_policy);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// The `field:value` lines of an `INFO` text.
fn fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| line.trim().split_once(':'))
}

impl RedisInfo {
    /// Reads the text of one `INFO` reply into `self`, adding the counters (for Cluster nodes).
    fn add(&mut self, text: &str) {
        for (key, value) in fields(text) {
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

    /// The figures of every node's `INFO` text, summed.
    fn summed(texts: &[String]) -> Result<Self> {
        if texts.is_empty() {
            return Err(Error::Protocol("INFO answered no text".into()));
        }
        let mut info = RedisInfo::default();
        for text in texts {
            info.add(text);
        }
        if texts.len() > 1 {
            // Summed over the nodes: the human form of one node would mislead.
            info.used_memory_human = format!("{:.2}M", info.used_memory as f64 / 1048576.0);
        }
        Ok(info)
    }
}

/// What one Redis command has cost since the server started (or the last `CONFIG RESETSTAT`),
/// from `INFO commandstats`.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let stats = client.server_stats().await?;
/// if let Some(evalsha) = stats.commands.get("evalsha") {
///     println!("{} script calls, {} µs each", evalsha.calls, evalsha.usec_per_call());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CommandStats {
    /// Calls.
    pub calls: u64,
    /// Microseconds spent in them, in all.
    pub usec: u64,
    /// Calls refused before running (Redis 7: wrong arguments, OOM, ACL…).
    pub rejected_calls: u64,
    /// Calls that ran and failed (Redis 7).
    pub failed_calls: u64,
}

impl CommandStats {
    /// Microseconds per call (0 without calls).
    ///
    /// ```
    /// let mut stats = ostq::admin::CommandStats::default();
    /// assert_eq!(stats.usec_per_call(), 0.0);
    /// stats.calls = 4;
    /// stats.usec = 10;
    /// assert_eq!(stats.usec_per_call(), 2.5);
    /// ```
    pub fn usec_per_call(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.usec as f64 / self.calls as f64
        }
    }

    fn add(&mut self, text: &str) {
        for (key, value) in text.split(',').filter_map(|kv| kv.split_once('=')) {
            let number = value.parse::<u64>().unwrap_or(0);
            match key {
                "calls" => self.calls += number,
                "usec" => self.usec += number,
                "rejected_calls" => self.rejected_calls += number,
                "failed_calls" => self.failed_calls += number,
                _ => {}
            }
        }
    }
}

/// What the Redis server has been doing, from `INFO all`, summed over the nodes of a Cluster:
/// the figures of [`RedisInfo`] and CPU time, objects waiting to be freed in the background, and
/// the cost of each command. Two readings apart give rates (CPU per job, commands per job).
///
/// JSON: the fields of [`RedisInfo`], then `nodes`, `used_cpu_user_secs`, `used_cpu_sys_secs`,
/// `lazyfree_pending_objects`, `total_commands_processed` and `commands`, an object of command
/// name (lowercase, `client|list` for subcommands) → `{calls, usec, rejected_calls,
/// failed_calls}`.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let before = client.server_stats().await?;
/// // … run some jobs …
/// let after = client.server_stats().await?;
/// println!("Redis used {:.3} s of CPU", after.used_cpu_secs() - before.used_cpu_secs());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerStats {
    /// Version, memory, clients.
    #[serde(flatten)]
    pub info: RedisInfo,
    /// Servers answering (the primaries of a Cluster; 1 otherwise).
    pub nodes: u64,
    /// CPU seconds in user mode, all threads (`used_cpu_user`).
    pub used_cpu_user_secs: f64,
    /// CPU seconds in the kernel, all threads (`used_cpu_sys`).
    pub used_cpu_sys_secs: f64,
    /// Objects deleted but not yet freed (`UNLINK`, lazy expiry); 0 when memory has settled.
    pub lazyfree_pending_objects: u64,
    /// Commands run since the server started (`total_commands_processed`).
    pub total_commands_processed: u64,
    /// Per command, by lowercase name.
    pub commands: BTreeMap<String, CommandStats>,
}

impl ServerStats {
    /// CPU seconds used, user and system.
    ///
    /// ```
    /// let stats = ostq::admin::ServerStats::default();
    /// assert_eq!(stats.used_cpu_secs(), 0.0);
    /// ```
    pub fn used_cpu_secs(&self) -> f64 {
        self.used_cpu_user_secs + self.used_cpu_sys_secs
    }

    fn add(&mut self, text: &str) {
        self.nodes += 1;
        for (key, value) in fields(text) {
            let seconds = || value.parse::<f64>().unwrap_or(0.0);
            let number = || value.parse::<u64>().unwrap_or(0);
            match key {
                "used_cpu_user" => self.used_cpu_user_secs += seconds(),
                "used_cpu_sys" => self.used_cpu_sys_secs += seconds(),
                "lazyfree_pending_objects" => self.lazyfree_pending_objects += number(),
                "total_commands_processed" => self.total_commands_processed += number(),
                _ => {
                    if let Some(name) = key.strip_prefix("cmdstat_") {
                        self.commands
                            .entry(name.to_string())
                            .or_default()
                            .add(value);
                    }
                }
            }
        }
    }
}

/// What [`Queue::probe_throughput`] measured: `values` pushed then popped, pipelined.
///
/// JSON: `{"values": 100000, "push_secs": 0.05, "pop_secs": 0.06, "popped": 100000}`.
///
/// ```
/// let probe = ostq::admin::Probe { values: 1000, push_secs: 0.5, pop_secs: 0.5, popped: 1000 };
/// assert_eq!(probe.push_ops_per_sec(), 2000.0);
/// assert_eq!(probe.ops_per_sec(), 2000.0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Values pushed (and popped).
    pub values: usize,
    /// Seconds the pushes took.
    pub push_secs: f64,
    /// Seconds the pops took.
    pub pop_secs: f64,
    /// Values that came back (all of them, unless something else touched the list).
    pub popped: usize,
}

impl Probe {
    /// Pushes per second.
    ///
    /// ```
    /// let probe = ostq::admin::Probe { values: 10, push_secs: 0.5, pop_secs: 1.0, popped: 10 };
    /// assert_eq!(probe.push_ops_per_sec(), 20.0);
    /// ```
    pub fn push_ops_per_sec(&self) -> f64 {
        self.values as f64 / self.push_secs
    }

    /// Pops per second.
    ///
    /// ```
    /// let probe = ostq::admin::Probe { values: 10, push_secs: 0.5, pop_secs: 1.0, popped: 10 };
    /// assert_eq!(probe.pop_ops_per_sec(), 10.0);
    /// ```
    pub fn pop_ops_per_sec(&self) -> f64 {
        self.values as f64 / self.pop_secs
    }

    /// Pushes and pops per second, over both phases.
    ///
    /// ```
    /// let probe = ostq::admin::Probe { values: 10, push_secs: 0.5, pop_secs: 1.5, popped: 10 };
    /// assert_eq!(probe.ops_per_sec(), 10.0);
    /// ```
    pub fn ops_per_sec(&self) -> f64 {
        2.0 * self.values as f64 / (self.push_secs + self.pop_secs)
    }
}

/// Commands per round trip in [`Queue::probe_throughput`].
///
/// ```
/// assert_eq!(ostq::admin::server::PROBE_PIPELINE, 1_000);
/// ```
pub const PROBE_PIPELINE: usize = 1_000;

impl Client {
    /// Redis's version, memory (used, limit, eviction policy) and client connections, through
    /// whatever this client connects to (one server, a Sentinel-managed primary, a Cluster).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// println!("{} used", client.redis_info().await?.used_memory_human);
    /// # Ok(()) }
    /// ```
    pub async fn redis_info(&self) -> Result<RedisInfo> {
        let texts = stored::info_texts(&mut self.conn(), None).await?;
        RedisInfo::summed(&texts)
    }

    /// CPU time, lazy frees and per-command costs as well as [`Client::redis_info`]'s figures
    /// (`INFO all`; summed over the primaries of a Cluster). See [`ServerStats`].
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let stats = client.server_stats().await?;
    /// println!("{:.1} s of CPU on {} node(s)", stats.used_cpu_secs(), stats.nodes);
    /// # Ok(()) }
    /// ```
    pub async fn server_stats(&self) -> Result<ServerStats> {
        let texts = stored::info_texts(&mut self.conn(), Some("all")).await?;
        let mut stats = ServerStats {
            info: RedisInfo::summed(&texts)?,
            ..ServerStats::default()
        };
        for text in &texts {
            stats.add(text);
        }
        Ok(stats)
    }

    /// The round trip of one `PING` (to every primary of a Cluster, in parallel): how far Redis
    /// is from this process, network and scheduling included.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// println!("Redis answers in {:?}", client.ping().await?);
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self) -> Result<Duration> {
        let start = Instant::now();
        stored::ping(&mut self.conn()).await?;
        Ok(start.elapsed())
    }
}

impl Queue {
    /// Measures what Redis itself does for this client: `values` copies of `value` pushed
    /// (`LPUSH`) then popped (`RPOP`), [`PROBE_PIPELINE`] commands per round trip, on a scratch
    /// list of this queue (`ostq:{<queue>}:probe`, deleted before and after). A ceiling to read
    /// the queue's own rates against; it loads Redis while it runs.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let probe = client.queue("bench").probe_throughput(100_000, b"42").await?;
    /// println!("Redis ceiling: {:.0} list ops/s", probe.ops_per_sec());
    /// # Ok(()) }
    /// ```
    pub async fn probe_throughput(&self, values: usize, value: &[u8]) -> Result<Probe> {
        let key = self.keys()?.probe();
        let mut conn = self.client_ref().conn();
        stored::delete_key(&mut conn, &key).await?;
        let start = Instant::now();
        stored::push_values(&mut conn, &key, value, values, PROBE_PIPELINE).await?;
        let push_secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let popped = stored::pop_values(&mut conn, &key, values, PROBE_PIPELINE).await?;
        let pop_secs = start.elapsed().as_secs_f64();
        stored::delete_key(&mut conn, &key).await?;
        Ok(Probe {
            values,
            push_secs,
            pop_secs,
            popped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nused_memory:1234\r\nused_memory_human:1.21K\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\nlazyfree_pending_objects:2\r\n# Clients\r\nconnected_clients:7\r\n# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n# Stats\r\ntotal_commands_processed:99\r\n# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00,rejected_calls=1,failed_calls=0\r\ncmdstat_client|list:calls=1,usec=3,usec_per_call=3.00\r\n";

    #[test]
    fn info_is_read_and_summed_over_nodes() {
        let mut info = RedisInfo::default();
        info.add(NODE);
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
        info.add(NODE);
        assert_eq!((info.used_memory, info.connected_clients), (2468, 14));
        let two = RedisInfo::summed(&[NODE.to_string(), NODE.to_string()]).unwrap();
        assert_eq!(two.used_memory_human, "0.00M");
        assert!(RedisInfo::summed(&[]).is_err());
    }

    #[test]
    fn server_stats_read_cpu_and_commands() {
        let mut stats = ServerStats::default();
        stats.add(NODE);
        stats.add(NODE);
        assert_eq!(stats.nodes, 2);
        assert_eq!(stats.used_cpu_secs(), 7.5);
        assert_eq!(
            (
                stats.lazyfree_pending_objects,
                stats.total_commands_processed
            ),
            (4, 198)
        );
        let evalsha = &stats.commands["evalsha"];
        assert_eq!(
            (evalsha.calls, evalsha.usec, evalsha.rejected_calls),
            (20, 100, 2)
        );
        assert_eq!(stats.commands["client|list"].usec_per_call(), 3.0);
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["commands"]["evalsha"]["calls"], 20);
        assert_eq!(json["used_cpu_user_secs"], 4.5);
    }
}
