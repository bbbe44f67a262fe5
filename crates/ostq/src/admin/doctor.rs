//! `ostq doctor`: checks of the Redis deployment and of the queues that say, before it costs a
//! job, what would lose jobs or stop workers, each with its fix in one line.
//!
//! [`Client::doctor`] runs every check that applies and returns a [`Report`]; each [`Check`] is
//! [`Status::Pass`], [`Status::Warn`] or [`Status::Fail`]. In a Cluster every primary is asked
//! and a check names the node that fails it. The checks only read (`INFO`, `CONFIG GET`, `TIME`,
//! `ACL WHOAMI`, `ACL DRYRUN`, `SCRIPT EXISTS`, `CLUSTER INFO`, the queues' counts and the worker
//! registry); a command the ACL user may not run makes its check say "cannot check" (a warning)
//! instead of failing the report.
//!
//! JSON (stable: fields may be added, none renamed or removed):
//!
//! ```json
//! {"worst": "fail", "checks": [
//!   {"name": "eviction", "status": "fail",
//!    "summary": "maxmemory-policy is allkeys-lru: Redis may evict queue keys, and their jobs with them",
//!    "fix": "CONFIG SET maxmemory-policy noeviction (and set it in redis.conf)"},
//!   {"name": "persistence", "status": "pass", "summary": "AOF on, appendfsync everysec: …", "fix": null}]}
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use redis::Value;
use serde::{Deserialize, Serialize};

use crate::store::doctor::{self as stored, config_pairs, flags_of, text_of, time_micros};
use crate::{Client, Error, Result};

/// How a check came out. Ordered: `Pass < Warn < Fail`, so the worst of several is their `max`.
///
/// ```
/// use ostq::admin::doctor::Status;
/// assert!(Status::Fail > Status::Warn && Status::Warn > Status::Pass);
/// assert_eq!(serde_json::to_string(&Status::Warn).unwrap(), "\"warn\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Pass,
    /// Works, with a risk or a cost the operator should know of (or the check could not run).
    Warn,
    /// Jobs can be lost or workers cannot run: fix before relying on the queues.
    Fail,
}

impl Status {
    /// `PASS`, `WARN` or `FAIL`, as `ostq doctor` prints it.
    ///
    /// ```
    /// assert_eq!(ostq::admin::doctor::Status::Fail.label(), "FAIL");
    /// ```
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's outcome: what was found and, unless it passed, the fix in one line.
///
/// ```
/// use ostq::admin::doctor::{Check, Status};
/// let check = Check::new("clock", Status::Pass, "Redis TIME is 3 ms from this host");
/// assert_eq!(check.fix, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Check {
    /// Which check: `server`, `eviction`, `persistence`, `memory`, `cluster`, `acl`, `scripts`,
    /// `clock`, `workers`, `leases`, `dead`.
    pub name: String,
    /// How it came out.
    pub status: Status,
    /// What was found, in one line.
    pub summary: String,
    /// What to do about it, in one line; `None` when it passed.
    pub fix: Option<String>,
}

impl Check {
    /// A check without a fix (for a pass, or a warning that only informs).
    pub fn new(name: &str, status: Status, summary: impl Into<String>) -> Self {
        Check {
            name: name.to_string(),
            status,
            summary: summary.into(),
            fix: None,
        }
    }

    /// The same check with its fix.
    ///
    /// ```
    /// use ostq::admin::doctor::{Check, Status};
    /// let check = Check::new("memory", Status::Warn, "no maxmemory").with_fix("set maxmemory");
    /// assert_eq!(check.fix.as_deref(), Some("set maxmemory"));
    /// ```
    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Every check that applied, in a fixed order.
///
/// ```
/// use ostq::admin::doctor::{Check, Report, Status};
/// let report = Report::new(vec![
///     Check::new("clock", Status::Pass, "in step"),
///     Check::new("memory", Status::Warn, "no maxmemory").with_fix("CONFIG SET maxmemory 2gb"),
/// ]);
/// assert_eq!(report.worst, Status::Warn);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// The worst status among the checks (`pass` when there are none).
    pub worst: Status,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// A report of these checks, with their worst status.
    pub fn new(checks: Vec<Check>) -> Self {
        let worst = checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Pass);
        Report { worst, checks }
    }

    /// The check of this name, if it ran.
    ///
    /// ```
    /// use ostq::admin::doctor::{Check, Report, Status};
    /// let report = Report::new(vec![Check::new("clock", Status::Pass, "in step")]);
    /// assert!(report.check("clock").is_some() && report.check("acl").is_none());
    /// ```
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// Clock skew between this host and Redis above which the clock check warns. Delays and cron
/// run on the server's clock, so skew does not move jobs; but figures that mix both clocks
/// (wait times, ages computed here) are off by the skew.
pub const CLOCK_SKEW_WARN_MS: u64 = 1_000;

/// Share of `maxmemory` in use from which the memory check warns.
pub const MEMORY_WARN_RATIO: f64 = 0.75;
/// Share of `maxmemory` in use from which the memory check fails: with `noeviction`, pushes are
/// refused at the limit.
pub const MEMORY_FAIL_RATIO: f64 = 0.90;

/// How far past its deadline a lease group must be for the leases check to warn: recovery
/// happens at the next fetch of any worker on the queue, within seconds when one runs.
pub const STALE_LEASE_MS: u64 = 60_000;

/// The dead set's cap when workers keep the default (`WorkerBuilder::dead_set`); the real cap
/// is each worker's setting, which Redis does not hold.
pub const DEFAULT_DEAD_SET_CAP: u64 = 10_000;
/// Share of [`DEFAULT_DEAD_SET_CAP`] from which the dead check warns.
pub const DEAD_SET_WARN_RATIO: f64 = 0.8;

/// Who needs a command of [`REQUIRED_COMMANDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeededBy {
    /// Producers and workers (docs/design.md §15's ACL rule): without it, jobs do not move.
    Workers,
    /// The operator's tools (`ostq stats`, paging, `memory_usage`, `bench`).
    Operators,
}

/// Key that [`REQUIRED_COMMANDS`]' sample calls name (inside `~ostq:*`; `ACL DRYRUN` never runs
/// them).
const K: &str = "ostq:{doctor}:k";
const K2: &str = "ostq:{doctor}:k2";

/// The commands ostq runs, each with a sample call of the right arity for `ACL DRYRUN` (which
/// checks arity, keys and channels as well as the command). The workers' list is the ACL rule
/// of docs/design.md §15 (and `tests/security.rs`, which checks it covers every `redis.call`
/// of the scripts).
///
/// ```
/// use ostq::admin::doctor::{NeededBy, REQUIRED_COMMANDS};
/// assert!(REQUIRED_COMMANDS.iter().any(|(name, by, _)| *name == "blmove" && *by == NeededBy::Workers));
/// ```
pub const REQUIRED_COMMANDS: &[(&str, NeededBy, &[&str])] = {
    use NeededBy::{Operators as O, Workers as W};
    &[
        (
            "evalsha",
            W,
            &[
                "EVALSHA",
                "0000000000000000000000000000000000000000",
                "1",
                K,
            ],
        ),
        ("script|load", W, &["SCRIPT", "LOAD", "return 1"]),
        ("multi", W, &["MULTI"]),
        ("exec", W, &["EXEC"]),
        ("time", W, &["TIME"]),
        ("exists", W, &["EXISTS", K]),
        ("del", W, &["DEL", K]),
        ("unlink", W, &["UNLINK", K]),
        ("rename", W, &["RENAME", K, K2]),
        ("expire", W, &["EXPIRE", K, "1"]),
        ("persist", W, &["PERSIST", K]),
        ("get", W, &["GET", K]),
        ("set", W, &["SET", K, "v"]),
        ("incr", W, &["INCR", K]),
        ("lpush", W, &["LPUSH", K, "v"]),
        ("rpush", W, &["RPUSH", K, "v"]),
        ("rpop", W, &["RPOP", K]),
        ("llen", W, &["LLEN", K]),
        ("lindex", W, &["LINDEX", K, "0"]),
        ("lset", W, &["LSET", K, "0", "v"]),
        ("lrange", W, &["LRANGE", K, "0", "1"]),
        ("lrem", W, &["LREM", K, "0", "v"]),
        ("lpos", W, &["LPOS", K, "v"]),
        ("blmove", W, &["BLMOVE", K, K2, "RIGHT", "LEFT", "1"]),
        ("hset", W, &["HSET", K, "f", "v"]),
        ("hsetnx", W, &["HSETNX", K, "f", "v"]),
        ("hmset", W, &["HMSET", K, "f", "v"]),
        ("hget", W, &["HGET", K, "f"]),
        ("hmget", W, &["HMGET", K, "f"]),
        ("hgetall", W, &["HGETALL", K]),
        ("hdel", W, &["HDEL", K, "f"]),
        ("hexists", W, &["HEXISTS", K, "f"]),
        ("hincrby", W, &["HINCRBY", K, "f", "1"]),
        ("hlen", W, &["HLEN", K]),
        ("hstrlen", W, &["HSTRLEN", K, "f"]),
        ("sadd", W, &["SADD", "ostq:queues", "q"]),
        ("smembers", W, &["SMEMBERS", "ostq:queues"]),
        ("srem", W, &["SREM", K, "m"]),
        ("pexpire", W, &["PEXPIRE", K, "1"]),
        ("publish", W, &["PUBLISH", "ostq:{doctor}:events", "m"]),
        ("xadd", W, &["XADD", K, "*", "f", "v"]),
        ("xread", W, &["XREAD", "STREAMS", K, "0"]),
        ("xrevrange", W, &["XREVRANGE", K, "+", "-"]),
        ("zadd", W, &["ZADD", K, "1", "m"]),
        ("zrem", W, &["ZREM", K, "m"]),
        ("zcard", W, &["ZCARD", K]),
        ("zscore", W, &["ZSCORE", K, "m"]),
        ("zmscore", W, &["ZMSCORE", K, "m"]),
        ("zrange", W, &["ZRANGE", K, "0", "1"]),
        ("zrevrange", W, &["ZREVRANGE", K, "0", "1"]),
        ("zrangebyscore", W, &["ZRANGEBYSCORE", K, "0", "1"]),
        ("zremrangebyscore", W, &["ZREMRANGEBYSCORE", K, "0", "1"]),
        ("info", O, &["INFO"]),
        ("zcount", O, &["ZCOUNT", K, "0", "1"]),
        ("scan", O, &["SCAN", "0"]),
        ("memory|usage", O, &["MEMORY", "USAGE", K]),
        ("ping", O, &["PING"]),
    ]
};

/// What one server said about itself (`INFO` and, when permitted, `CONFIG GET`).
#[derive(Debug, Default)]
struct NodeFacts {
    node: String,
    info: Vec<(String, String)>,
    /// `CONFIG GET` answers; `None` when the user may not run it.
    config: Option<Vec<(String, String)>>,
}

impl NodeFacts {
    fn info(&self, field: &str) -> Option<&str> {
        self.info
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v.as_str())
    }

    fn config(&self, name: &str) -> Option<&str> {
        self.config
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `" on host:port"` in a Cluster, `""` otherwise: a suffix for summaries.
    fn on(&self) -> String {
        if self.node.is_empty() {
            String::new()
        } else {
            format!(" on {}", self.node)
        }
    }
}

fn info_fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The server's kind and version, read from `INFO server`.
///
/// ```
/// use ostq::admin::doctor::ServerKind;
/// let info = "redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n";
/// assert_eq!(ServerKind::from_info(info), (ServerKind::Valkey, "8.0.1".to_string()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// Redis itself.
    Redis,
    /// Valkey (the Linux Foundation fork of Redis 7.2).
    Valkey,
    /// Dragonfly (a reimplementation).
    Dragonfly,
    /// KeyDB (a multithreaded fork of Redis 6).
    KeyDb,
}

impl ServerKind {
    /// The kind and its own version (Valkey's and Dragonfly's, not the Redis version they
    /// report for compatibility) from an `INFO` text.
    pub fn from_info(text: &str) -> (ServerKind, String) {
        let fields = info_fields(text);
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let redis_version = get("redis_version").unwrap_or_default();
        if let Some(v) = get("dragonfly_version") {
            return (ServerKind::Dragonfly, v);
        }
        if get("server_name").as_deref() == Some("valkey") || get("valkey_version").is_some() {
            return (
                ServerKind::Valkey,
                get("valkey_version").unwrap_or(redis_version),
            );
        }
        // KeyDB keeps Redis's field names; its executable, modes and a few fields name it.
        let keydb = fields
            .iter()
            .any(|(k, v)| k.contains("keydb") || (k == "executable" && v.contains("keydb")))
            || get("server_name").is_some_and(|n| n.eq_ignore_ascii_case("keydb"));
        if keydb {
            return (ServerKind::KeyDb, redis_version);
        }
        (ServerKind::Redis, redis_version)
    }
}

/// `major.minor` of a version text (`"7.0.15"` → `(7, 0)`).
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.trim().parse().ok()?;
    let minor = parts.next().unwrap_or("0").trim().parse().ok()?;
    Some((major, minor))
}

/// The server check for one node's `INFO`.
fn server_check(facts: &[NodeFacts]) -> Check {
    let mut seen = Vec::new();
    let mut worst: Option<Check> = None;
    for node in facts {
        let text: String = node
            .info
            .iter()
            .map(|(k, v)| format!("{k}:{v}\n"))
            .collect();
        let (kind, version) = ServerKind::from_info(&text);
        let redis_version = node.info("redis_version").unwrap_or("").to_string();
        seen.push(format!("{kind:?} {version}"));
        let check = match kind {
            ServerKind::Redis | ServerKind::Valkey => match major_minor(&redis_version) {
                Some(v) if v >= (7, 0) => Check::new(
                    "server",
                    Status::Pass,
                    format!("{kind:?} {version}{}: everything ostq uses is there", node.on()),
                ),
                Some(v) if v >= (6, 2) => Check::new(
                    "server",
                    Status::Pass,
                    format!(
                        "{kind:?} {version}{}: works; `ostq doctor` cannot check ACLs (ACL DRYRUN is Redis 7)",
                        node.on()
                    ),
                ),
                _ => Check::new(
                    "server",
                    Status::Fail,
                    format!(
                        "{kind:?} {version}{}: ostq needs Redis 6.2 or later (BLMOVE, ZMSCORE, LPOS, Lua scripts)",
                        node.on()
                    ),
                )
                .with_fix("upgrade to Redis 6.2 or later (7.x recommended)"),
            },
            ServerKind::Dragonfly => Check::new(
                "server",
                Status::Warn,
                format!(
                    "Dragonfly {version}{}: untested; ostq's scripts touch keys they do not declare (status records, lease groups), which Dragonfly refuses by default",
                    node.on()
                ),
            )
            .with_fix("start Dragonfly with --default_lua_flags=allow-undeclared-keys, or use Redis/Valkey"),
            ServerKind::KeyDb => Check::new(
                "server",
                Status::Warn,
                format!(
                    "KeyDB (Redis {redis_version} compatible){}: untested; active-active replication can run a job twice or lose its outcome",
                    node.on()
                ),
            )
            .with_fix("use one primary (no active-replica/multi-master), or Redis/Valkey"),
        };
        if worst.as_ref().is_none_or(|w| check.status > w.status) {
            worst = Some(check);
        }
    }
    seen.sort();
    seen.dedup();
    match worst {
        Some(check) if seen.len() > 1 && check.status == Status::Pass => Check::new(
            "server",
            Status::Warn,
            format!(
                "the Cluster's primaries run different servers: {}",
                seen.join(", ")
            ),
        )
        .with_fix("run one version on every node"),
        Some(check) => check,
        None => Check::new("server", Status::Warn, "INFO answered nothing")
            .with_fix("check that the user may run INFO (+info)"),
    }
}

fn eviction_check(facts: &[NodeFacts]) -> Check {
    for node in facts {
        match node.info("maxmemory_policy") {
            Some("noeviction") => {}
            Some(policy) => {
                return Check::new(
                    "eviction",
                    Status::Fail,
                    format!(
                        "maxmemory-policy is {policy}{}: Redis may evict queue keys, and their jobs with them",
                        node.on()
                    ),
                )
                .with_fix("CONFIG SET maxmemory-policy noeviction (and set it in redis.conf)")
            }
            None => {
                return Check::new(
                    "eviction",
                    Status::Warn,
                    format!("cannot check: INFO has no maxmemory_policy{}", node.on()),
                )
                .with_fix("check by hand that maxmemory-policy is noeviction")
            }
        }
    }
    Check::new(
        "eviction",
        Status::Pass,
        "maxmemory-policy is noeviction: at the limit Redis refuses writes instead of deleting jobs",
    )
}

fn persistence_check(facts: &[NodeFacts]) -> Check {
    let mut worst: Option<Check> = None;
    for node in facts {
        let aof = node.info("aof_enabled") == Some("1");
        let fsync = node.config("appendfsync");
        let save = node.config("save");
        let check = match (aof, fsync) {
            (true, Some("always")) => Check::new(
                "persistence",
                Status::Pass,
                format!("AOF on, appendfsync always{}: nothing acknowledged is lost on a crash", node.on()),
            ),
            (true, Some("everysec")) => Check::new(
                "persistence",
                Status::Pass,
                format!(
                    "AOF on, appendfsync everysec{}: a restart loses nothing; an OS crash or power loss can lose about the last second",
                    node.on()
                ),
            ),
            (true, Some(other)) => Check::new(
                "persistence",
                Status::Warn,
                format!(
                    "AOF on, appendfsync {other}{}: the OS decides when to write, so a crash can lose about 30 s of pushes and outcomes",
                    node.on()
                ),
            )
            .with_fix("CONFIG SET appendfsync everysec (a second at most; `always` for none, at a cost in throughput)"),
            (true, None) => Check::new(
                "persistence",
                Status::Pass,
                format!("AOF on{} (appendfsync unknown: CONFIG GET not permitted)", node.on()),
            ),
            (false, _) => {
                let rdb = match save {
                    Some(s) if !s.trim().is_empty() => format!("RDB only (save {s})"),
                    Some(_) => "no persistence at all (no AOF, no RDB save points)".to_string(),
                    None => "no AOF (RDB settings unknown: CONFIG GET not permitted)".to_string(),
                };
                Check::new(
                    "persistence",
                    Status::Warn,
                    format!(
                        "{rdb}{}: a restart loses every push and outcome since the last snapshot (fine for a cache, not for jobs)",
                        node.on()
                    ),
                )
                .with_fix("CONFIG SET appendonly yes (then CONFIG REWRITE); appendfsync everysec costs little")
            }
        };
        if worst.as_ref().is_none_or(|w| check.status > w.status) {
            worst = Some(check);
        }
    }
    worst.unwrap_or_else(|| Check::new("persistence", Status::Warn, "INFO answered nothing"))
}

/// A replica lagging more than this many seconds (`lag` in `INFO replication`) is reported.
pub const REPLICA_LAG_WARN_S: u64 = 10;

/// Replicas, `min-replicas-to-write` and replica lag, for a deployment that has replicas or is
/// reached through Sentinel (none otherwise: a lone server has nothing to fail over to, and the
/// persistence check covers its restarts).
fn replication_check(facts: &[NodeFacts], via_sentinel: bool) -> Option<Check> {
    let mut worst: Option<Check> = None;
    for node in facts {
        let Some(check) = node_replication(node, via_sentinel) else {
            continue;
        };
        if worst.as_ref().is_none_or(|w| check.status > w.status) {
            worst = Some(check);
        }
    }
    worst
}

fn node_replication(node: &NodeFacts, via_sentinel: bool) -> Option<Check> {
    const NAME: &str = "replication";
    let on = node.on();
    match node.info("role") {
        Some("master") => {}
        Some("slave") => {
            return Some(
                Check::new(
                    NAME,
                    Status::Fail,
                    format!("this server{on} is a replica: every write is refused (READONLY)"),
                )
                .with_fix("point the URL at the primary (or at the sentinels: redis+sentinel://host:port/service)"),
            )
        }
        _ => return None,
    }
    let replicas: Vec<(String, bool, u64)> = node
        .info
        .iter()
        .filter(|(k, _)| k.starts_with("slave") && k[5..].bytes().all(|b| b.is_ascii_digit()))
        .map(|(_, v)| {
            let field = |name: &str| {
                v.split(',')
                    .find_map(|kv| kv.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                    .unwrap_or_default()
                    .to_string()
            };
            let addr = format!("{}:{}", field("ip"), field("port"));
            let online = field("state") == "online";
            let lag = field("lag").parse().unwrap_or(u64::MAX);
            (addr, online, lag)
        })
        .collect();
    if replicas.is_empty() && !via_sentinel {
        return None;
    }
    if replicas.is_empty() {
        return Some(
            Check::new(
                NAME,
                Status::Warn,
                format!("the primary{on} has no replica: Sentinel has nothing to fail over to"),
            )
            .with_fix(
                "start a replica (replicaof <primary> <port>) that the sentinels can promote",
            ),
        );
    }
    let good = replicas
        .iter()
        .filter(|(_, online, lag)| *online && *lag <= REPLICA_LAG_WARN_S)
        .count();
    let min_to_write: Option<u64> = node
        .config("min-replicas-to-write")
        .and_then(|v| v.parse().ok());
    let max_lag = node.config("min-replicas-max-lag").unwrap_or("?");
    let lagging: Vec<String> = replicas
        .iter()
        .filter(|(_, online, lag)| !*online || *lag > REPLICA_LAG_WARN_S)
        .map(|(addr, online, lag)| match (online, *lag) {
            (false, _) => format!("{addr} not online"),
            (true, u64::MAX) => format!("{addr} lag unknown"),
            (true, lag) => format!("{addr} {lag} s behind"),
        })
        .collect();
    let count = replicas.len();
    let count_said = match count {
        1 => "1 replica".to_string(),
        n => format!("{n} replicas"),
    };
    let check = match min_to_write {
        Some(min) if min as usize > good => Check::new(
            NAME,
            Status::Fail,
            format!(
                "min-replicas-to-write is {min} but {good} of {count} replicas{on} are online and \
                 in step: the primary refuses writes (NOREPLICAS){}",
                if lagging.is_empty() { String::new() } else { format!(" ({})", lagging.join(", ")) }
            ),
        )
        .with_fix("bring the replicas back (or lower min-replicas-to-write)"),
        _ if !lagging.is_empty() => Check::new(
            NAME,
            Status::Warn,
            format!("{count_said}{on}, {}: a failover to one of them loses what it has not received", lagging.join(", ")),
        )
        .with_fix("check the replicas' links and load (INFO replication on each)"),
        Some(0) => Check::new(
            NAME,
            Status::Warn,
            format!(
                "{count_said}{on}, min-replicas-to-write 0: pushes the primary acknowledged \
                 but had not yet replicated are lost when it fails over (about a third of a \
                 steady producer's pushes during each failover in tests/sentinel.rs)"
            ),
        )
        .with_fix("push with durability (ostq push --durable 1, Durability::replicas), and/or CONFIG SET min-replicas-to-write 1 with min-replicas-max-lag 10"),
        Some(min) => Check::new(
            NAME,
            Status::Pass,
            format!(
                "{count_said}{on} in step, min-replicas-to-write {min} (max lag {max_lag} s): \
                 a failover loses at most the replication lag's writes, none of the durable pushes"
            ),
        ),
        None => Check::new(
            NAME,
            Status::Warn,
            format!("{count_said}{on} in step; min-replicas-to-write unknown (CONFIG GET not permitted)"),
        )
        .with_fix("check min-replicas-to-write by hand, or use durable pushes"),
    };
    Some(check)
}

fn memory_check(facts: &[NodeFacts]) -> Check {
    let mut worst: Option<Check> = None;
    for node in facts {
        let number = |f: &str| node.info(f).and_then(|v| v.parse::<u64>().ok());
        let (Some(used), Some(max)) = (number("used_memory"), number("maxmemory")) else {
            continue;
        };
        let check = if max == 0 {
            Check::new(
                "memory",
                Status::Warn,
                format!(
                    "no maxmemory{} ({} used): Redis grows until the OS swaps or kills it, losing everything since the last save",
                    node.on(),
                    node.info("used_memory_human").unwrap_or("?")
                ),
            )
            .with_fix("CONFIG SET maxmemory <about 3/4 of the machine's RAM> with maxmemory-policy noeviction")
        } else {
            let ratio = used as f64 / max as f64;
            let summary = format!(
                "{:.0}% of maxmemory in use{} ({} of {} MiB)",
                ratio * 100.0,
                node.on(),
                used / 1_048_576,
                max / 1_048_576
            );
            if ratio >= MEMORY_FAIL_RATIO {
                Check::new(
                    "memory",
                    Status::Fail,
                    format!("{summary}: pushes are refused (OOM) at the limit"),
                )
                .with_fix("raise maxmemory, or drain the queues and trim dead/completed jobs")
            } else if ratio >= MEMORY_WARN_RATIO {
                Check::new("memory", Status::Warn, summary)
                    .with_fix("raise maxmemory before pushes are refused")
            } else {
                Check::new("memory", Status::Pass, summary)
            }
        };
        if worst.as_ref().is_none_or(|w| check.status > w.status) {
            worst = Some(check);
        }
    }
    worst.unwrap_or_else(|| {
        Check::new(
            "memory",
            Status::Warn,
            "cannot check: INFO has no used_memory/maxmemory",
        )
    })
}

/// Judges `TIME` against this host's clock: `skews_ms` are (node, server − local, round trip).
fn clock_check(skews_ms: &[(String, i64, u64)]) -> Check {
    let Some((node, skew, rtt)) = skews_ms
        .iter()
        .max_by_key(|(_, skew, _)| skew.unsigned_abs())
    else {
        return Check::new("clock", Status::Warn, "cannot check: TIME answered nothing");
    };
    let on = if node.is_empty() {
        String::new()
    } else {
        format!(" ({node})")
    };
    let direction = if *skew >= 0 { "ahead of" } else { "behind" };
    let summary = format!(
        "Redis's clock{on} is {} ms {direction} this host's (± {} ms round trip)",
        skew.unsigned_abs(),
        rtt / 2 + 1
    );
    if skew.unsigned_abs() > CLOCK_SKEW_WARN_MS + rtt / 2 {
        Check::new(
            "clock",
            Status::Warn,
            format!(
                "{summary}: delays and cron use Redis's clock, but wait times and ages mix both"
            ),
        )
        .with_fix("run NTP (chrony, systemd-timesyncd) on this host and on the Redis host")
    } else {
        Check::new("clock", Status::Pass, summary)
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Client {
    /// Runs every check that applies to this deployment (see the module docs) and returns them
    /// in a fixed order. Fails only when Redis cannot be reached; a check whose commands the
    /// ACL user may not run, or that gets no answer (a Cluster with slots missing times out
    /// commands on keys), says "cannot check" instead.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use ostq::admin::doctor::Status;
    /// let report = client.doctor().await?;
    /// for check in report.checks.iter().filter(|c| c.status != Status::Pass) {
    ///     eprintln!("{} {}: {} ({})", check.status.label(), check.name, check.summary,
    ///               check.fix.as_deref().unwrap_or(""));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn doctor(&self) -> Result<Report> {
        let facts = self.node_facts(false).await?;
        let mut checks = self.fact_checks(&facts);
        // From here a check that cannot get its answers (a Cluster missing slots times out
        // key-routed commands, say) says so and the others still run.
        if self.is_cluster() {
            checks.push(could_not("cluster", self.cluster_check().await));
        }
        checks.push(could_not("acl", self.acl_check().await));
        checks.push(could_not("scripts", self.scripts_check().await));
        checks.push(could_not("clock", self.clock_check().await));
        checks.push(could_not("workers", self.workers_check().await));
        match self.queue_checks().await {
            Ok(more) => checks.extend(more),
            Err(e) => checks.push(could_not("leases", Err(e))),
        }
        Ok(Report::new(checks))
    }

    /// `INFO` and the settings the checks read, from every server: one round trip to a single
    /// server (one pipeline), one per command to a Cluster. With `info_first`, `INFO` goes
    /// alone first and the settings only when it was permitted (two round trips), so that a user
    /// limited to the commands producers and workers need (§15) gets one refusal, not five.
    async fn node_facts(&self, info_first: bool) -> Result<Vec<NodeFacts>> {
        let mut conn = self.conn();
        if info_first {
            let replies = stored::on_every_node(&mut conn, &["INFO"]).await?;
            if replies
                .iter()
                .all(|r| matches!(&r.reply, Err(e) if e.is_no_permission()))
            {
                return Ok(Vec::new());
            }
        }
        // One name per CONFIG GET: Redis 6.2 takes only one.
        const SETTINGS: [&str; 4] = [
            "appendfsync",
            "save",
            "min-replicas-to-write",
            "min-replicas-max-lag",
        ];
        let mut commands: Vec<&[&str]> = vec![&["INFO"]];
        let config_gets: Vec<[&str; 3]> = SETTINGS.iter().map(|n| ["CONFIG", "GET", n]).collect();
        commands.extend(config_gets.iter().map(|c| c.as_slice()));
        let mut replies = stored::each_on_every_node(&mut conn, &commands)
            .await?
            .into_iter();
        let mut facts = Vec::new();
        for reply in replies.next().unwrap_or_default() {
            let info = match reply.reply {
                Ok(value) => text_of(&value).map(|t| info_fields(&t)).unwrap_or_default(),
                Err(e) if e.is_no_permission() => Vec::new(),
                Err(e) => return Err(e),
            };
            facts.push(NodeFacts {
                node: reply.node,
                info,
                config: Some(Vec::new()),
            });
        }
        for per_node in replies {
            for reply in per_node {
                let Some(node) = facts.iter_mut().find(|f| f.node == reply.node) else {
                    continue;
                };
                match reply.reply {
                    Ok(value) => {
                        if let Some(config) = node.config.as_mut() {
                            config.extend(config_pairs(&value));
                        }
                    }
                    Err(e) if e.is_no_permission() => node.config = None,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(facts)
    }

    /// The checks that need only `INFO` and `CONFIG GET` (two round trips to a single server):
    /// server, eviction, persistence, memory and, with replicas or Sentinel, replication. What a
    /// worker runs at start ([`crate::WorkerBuilder::doctor`]) and `ostq worker` prints.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use ostq::admin::doctor::Status;
    /// for check in client.quick_doctor().await?.checks {
    ///     if check.status != Status::Pass {
    ///         eprintln!("{} {}: {}", check.status.label(), check.name, check.summary);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// `INFO` is sent first, alone: when the user may not run it (a worker's user limited to
    /// the commands of docs/design.md §15), the report is one `server` warning saying so, and
    /// nothing else is sent.
    pub async fn quick_doctor(&self) -> Result<Report> {
        let facts = self.node_facts(true).await?;
        if facts.is_empty() {
            return Ok(Report::new(vec![Check::new(
                "server",
                Status::Warn,
                "cannot check: the user may not run INFO",
            )
            .with_fix(
                "grant +info +config|get to check at start, or turn the start-up checks off \
                 (ostq worker --no-doctor, WorkerBuilder::doctor(false))",
            )]));
        }
        Ok(Report::new(self.fact_checks(&facts)))
    }

    fn fact_checks(&self, facts: &[NodeFacts]) -> Vec<Check> {
        let mut checks = vec![
            server_check(facts),
            eviction_check(facts),
            persistence_check(facts),
            memory_check(facts),
        ];
        checks.extend(replication_check(facts, self.is_sentinel()));
        checks
    }

    async fn acl_check(&self) -> Result<Check> {
        let mut conn = self.conn();
        let cannot = |why: String| {
            Check::new("acl", Status::Warn, format!("cannot check: {why}")).with_fix(
                "grant +acl|whoami +acl|dryrun to check, or compare the user's rules with docs/design.md §15",
            )
        };
        let mut missing_for_workers = Vec::new();
        let mut missing_for_operators = Vec::new();
        let mut user_name = String::new();
        for who in stored::on_every_node(&mut conn, &["ACL", "WHOAMI"]).await? {
            let user = match who.reply {
                Ok(value) => text_of(&value).unwrap_or_default(),
                Err(e) => return Ok(cannot(format!("ACL WHOAMI refused ({})", one_line(&e)))),
            };
            user_name = user.clone();
            for (name, needed_by, call) in REQUIRED_COMMANDS {
                let mut args = vec!["ACL", "DRYRUN", user.as_str()];
                args.extend_from_slice(call);
                let verdict = stored::on_every_node(&mut conn, &args).await?;
                let Some(verdict) = verdict.into_iter().find(|r| r.node == who.node) else {
                    continue;
                };
                match verdict.reply {
                    Ok(Value::Okay) => {}
                    Ok(value) if text_of(&value).as_deref() == Some("OK") => {}
                    Ok(_) => match needed_by {
                        NeededBy::Workers => missing_for_workers.push(*name),
                        NeededBy::Operators => missing_for_operators.push(*name),
                    },
                    Err(e) => {
                        return Ok(cannot(format!(
                            "ACL DRYRUN refused ({}; it needs Redis 7 and +acl|dryrun)",
                            one_line(&e)
                        )))
                    }
                }
            }
        }
        missing_for_workers.dedup();
        missing_for_operators.dedup();
        Ok(if !missing_for_workers.is_empty() {
            Check::new(
                "acl",
                Status::Fail,
                format!(
                    "user {user_name} may not run {} on ostq:*: producers or workers will be refused",
                    missing_for_workers.join(", ")
                ),
            )
            .with_fix(format!(
                "ACL SETUSER {user_name} +{} (the whole rule: docs/design.md §15)",
                missing_for_workers.join(" +")
            ))
        } else if !missing_for_operators.is_empty() {
            Check::new(
                "acl",
                Status::Warn,
                format!(
                    "user {user_name} can run workers and producers, but not {} (ostq stats, paging, bench)",
                    missing_for_operators.join(", ")
                ),
            )
            .with_fix(format!(
                "ACL SETUSER {user_name} +{} for the operator's tools",
                missing_for_operators.join(" +")
            ))
        } else {
            Check::new(
                "acl",
                Status::Pass,
                format!("user {user_name} may run every command ostq needs on ostq:*"),
            )
        })
    }

    async fn cluster_check(&self) -> Result<Check> {
        let mut conn = self.conn();
        for reply in stored::on_every_node(&mut conn, &["CLUSTER", "INFO"]).await? {
            let text = match reply.reply {
                Ok(value) => text_of(&value).unwrap_or_default(),
                Err(e) => {
                    return Ok(Check::new(
                        "cluster",
                        Status::Warn,
                        format!(
                            "cannot check: CLUSTER INFO refused on {} ({})",
                            reply.node,
                            one_line(&e)
                        ),
                    )
                    .with_fix("grant +cluster|info to check"))
                }
            };
            let fields = info_fields(&text);
            let get = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let state = get("cluster_state").unwrap_or("unknown");
            let assigned = get("cluster_slots_assigned").unwrap_or("0");
            let failing = get("cluster_slots_fail").unwrap_or("0");
            if state != "ok" || assigned != "16384" || failing != "0" {
                return Ok(Check::new(
                    "cluster",
                    Status::Fail,
                    format!(
                        "{} sees cluster_state {state}, {assigned} of 16384 slots assigned, {failing} failing: queues in the missing slots refuse every command",
                        reply.node
                    ),
                )
                .with_fix("assign every slot (redis-cli --cluster fix host:port) and bring failed primaries back"));
            }
        }
        Ok(Check::new(
            "cluster",
            Status::Pass,
            "every primary sees cluster_state ok with all 16384 slots assigned",
        ))
    }

    async fn scripts_check(&self) -> Result<Check> {
        let hashes: Vec<String> = crate::scripts::ALL
            .iter()
            .map(|(_, source)| redis::Script::new(source).get_hash().to_string())
            .collect();
        let mut args = vec!["SCRIPT", "EXISTS"];
        args.extend(hashes.iter().map(String::as_str));
        let mut conn = self.conn();
        let mut per_node = Vec::new();
        for reply in stored::on_every_node(&mut conn, &args).await? {
            let flags = match reply.reply {
                Ok(value) => flags_of(&value)
                    .ok_or_else(|| Error::Protocol(format!("{value:?} for SCRIPT EXISTS")))?,
                Err(e) => {
                    return Ok(Check::new(
                        "scripts",
                        Status::Warn,
                        format!("cannot check: SCRIPT EXISTS refused ({})", one_line(&e)),
                    )
                    .with_fix("grant +script|exists to check"))
                }
            };
            let loaded = flags.iter().filter(|f| **f).count();
            per_node.push((reply.node, loaded));
        }
        let total = hashes.len();
        let shown: Vec<String> = per_node
            .iter()
            .map(|(node, loaded)| {
                if node.is_empty() {
                    format!("{loaded} of this version's {total} scripts loaded")
                } else {
                    format!("{node}: {loaded}/{total}")
                }
            })
            .collect();
        let workers = self.workers().await.unwrap_or_default();
        let own = env!("CARGO_PKG_VERSION");
        let others: Vec<String> = {
            let mut v: Vec<String> = workers
                .iter()
                .filter(|w| w.version != own)
                .map(|w| w.version.clone())
                .collect();
            v.sort();
            v.dedup();
            v
        };
        Ok(if !others.is_empty() {
            Check::new(
                "scripts",
                Status::Warn,
                format!(
                    "live workers run ostq {} while this is {own}: scripts of two versions run on the same keys ({})",
                    others.join(", "),
                    shown.join(", ")
                ),
            )
            .with_fix("run one ostq version everywhere (`ostq workers --json` shows each worker's)")
        } else {
            // Scripts are loaded on first use (and again after NOSCRIPT), so an unloaded one
            // is not a fault.
            Check::new("scripts", Status::Pass, shown.join(", "))
        })
    }

    async fn clock_check(&self) -> Result<Check> {
        let mut conn = self.conn();
        let before = unix_micros();
        let replies = stored::on_every_node(&mut conn, &["TIME"]).await?;
        let after = unix_micros();
        let local = (before / 2 + after / 2) as i64;
        let rtt_ms = after.saturating_sub(before) / 1000;
        let mut skews = Vec::new();
        for reply in replies {
            match reply.reply {
                Ok(value) => {
                    let server = time_micros(&value)
                        .ok_or_else(|| Error::Protocol(format!("{value:?} for TIME")))?;
                    skews.push((reply.node, (server as i64 - local) / 1000, rtt_ms));
                }
                Err(e) => {
                    return Ok(Check::new(
                        "clock",
                        Status::Warn,
                        format!("cannot check: TIME refused ({})", one_line(&e)),
                    ))
                }
            }
        }
        Ok(clock_check(&skews))
    }

    /// Lease groups long past their deadline (nobody fetches from the queue, so nobody
    /// recovers them) and dead sets near the workers' default cap.
    async fn queue_checks(&self) -> Result<Vec<Check>> {
        let mut stale = Vec::new();
        let mut crowded = Vec::new();
        let mut conn = self.conn();
        for name in self.queues().await? {
            let keys = crate::keys::QueueKeys::new(&name)?;
            let (late, _) = stored::leases_due_before(&mut conn, &keys, STALE_LEASE_MS).await?;
            if late > 0 {
                stale.push(format!("{name} ({late})"));
            }
            let dead = self.queue(&name).counts().await?.dead;
            if dead as f64 >= DEAD_SET_WARN_RATIO * DEFAULT_DEAD_SET_CAP as f64 {
                crowded.push(format!("{name} ({dead})"));
            }
        }
        let leases = if stale.is_empty() {
            Check::new(
                "leases",
                Status::Pass,
                "no lease group is more than a minute past its deadline",
            )
        } else {
            Check::new(
                "leases",
                Status::Warn,
                format!(
                    "lease groups over a minute past their deadline, so no worker is fetching to recover their jobs: {}",
                    stale.join(", ")
                ),
            )
            .with_fix("start a worker on those queues (its first fetch recovers them), or resume them if paused")
        };
        let dead = if crowded.is_empty() {
            Check::new(
                "dead",
                Status::Pass,
                format!(
                    "every dead set is under {:.0}% of the default cap ({DEFAULT_DEAD_SET_CAP})",
                    DEAD_SET_WARN_RATIO * 100.0
                ),
            )
        } else {
            Check::new(
                "dead",
                Status::Warn,
                format!(
                    "dead sets near the workers' default cap of {DEFAULT_DEAD_SET_CAP} (the oldest are trimmed, reasons and all): {}",
                    crowded.join(", ")
                ),
            )
            .with_fix("look at why they died (ostq jobs Q --state dead), retry or purge them; or raise the cap (WorkerBuilder::dead_set)")
        };
        Ok(vec![leases, dead])
    }

    async fn workers_check(&self) -> Result<Check> {
        let workers = match self.workers().await {
            Ok(w) => w,
            Err(e) if e.is_no_permission() => {
                return Ok(Check::new(
                    "workers",
                    Status::Warn,
                    format!(
                        "cannot check: the worker registry is not readable ({})",
                        one_line(&e)
                    ),
                ))
            }
            Err(e) => return Err(e),
        };
        let mut unserved = Vec::new();
        let queues = self.queues().await?;
        for name in &queues {
            let counts = self.queue(name).counts().await?;
            let waiting = counts.pending + counts.retry;
            if waiting > 0 && !counts.paused && !workers.iter().any(|w| w.serves(name)) {
                unserved.push(format!("{name} ({} pending)", counts.pending));
            }
        }
        Ok(if unserved.is_empty() {
            Check::new(
                "workers",
                Status::Pass,
                format!(
                    "{} live worker(s), {} queue(s): no pending job waits on a queue without a worker",
                    workers.len(),
                    queues.len()
                ),
            )
        } else {
            Check::new(
                "workers",
                Status::Warn,
                format!(
                    "jobs wait with no live worker serving their queue: {}",
                    unserved.join(", ")
                ),
            )
            .with_fix(
                "start workers for them (`ostq worker --queue Q -- CMD`), or pause the queues",
            )
        })
    }
}

/// A check's outcome, or a warning that it could not run and why.
fn could_not(name: &str, outcome: Result<Check>) -> Check {
    outcome.unwrap_or_else(|e| {
        Check::new(
            name,
            Status::Warn,
            format!("cannot check: {}", one_line(&e)),
        )
        .with_fix("run `ostq doctor` again once the errors above are fixed")
    })
}

fn one_line(e: &Error) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_over_a_second_warns() {
        let near = clock_check(&[(String::new(), 40, 2)]);
        assert_eq!(near.status, Status::Pass, "{near:?}");
        let far = clock_check(&[("a:1".into(), 10, 2), ("b:2".into(), -2_500, 2)]);
        assert_eq!(far.status, Status::Warn, "{far:?}");
        assert!(far.summary.contains("2500 ms behind"), "{}", far.summary);
        assert!(far.summary.contains("b:2"), "{}", far.summary);
        assert!(far.fix.is_some());
    }

    #[test]
    fn server_kinds_are_told_apart() {
        assert_eq!(
            ServerKind::from_info("redis_version:7.0.15\r\nexecutable:/usr/bin/redis-server\r\n").0,
            ServerKind::Redis
        );
        assert_eq!(
            ServerKind::from_info("redis_version:6.3.4\r\nexecutable:/usr/bin/keydb-server\r\n").0,
            ServerKind::KeyDb
        );
        assert_eq!(
            ServerKind::from_info("redis_version:7.2.0\r\ndragonfly_version:df-v1.20.0\r\n"),
            (ServerKind::Dragonfly, "df-v1.20.0".to_string())
        );
    }

    #[test]
    fn an_old_redis_fails_the_server_check() {
        let node = |v: &str| NodeFacts {
            node: String::new(),
            info: info_fields(&format!("redis_version:{v}\r\n")),
            config: None,
        };
        assert_eq!(server_check(&[node("6.0.16")]).status, Status::Fail);
        assert_eq!(server_check(&[node("6.2.0")]).status, Status::Pass);
        assert_eq!(server_check(&[node("7.2.4")]).status, Status::Pass);
    }

    #[test]
    fn report_json_is_stable() {
        let report = Report::new(vec![Check::new("eviction", Status::Fail, "allkeys-lru")
            .with_fix("CONFIG SET maxmemory-policy noeviction")]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["worst"], "fail");
        assert_eq!(json["checks"][0]["name"], "eviction");
        assert_eq!(json["checks"][0]["status"], "fail");
        assert_eq!(
            json["checks"][0]["fix"],
            "CONFIG SET maxmemory-policy noeviction"
        );
    }
}
