//! [`RedisCluster`]: a small Redis Cluster of private servers.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::ports::free_cluster_port;
use crate::resp::Resp;
use crate::server::{log_tail, not_installed, INSTALL_HINT};
use crate::RedisServer;

/// How long a new cluster may take until every node reports `cluster_state:ok`.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`RedisCluster::failover`] waits before asking again: a little over the 5 s after
/// which Redis abandons a manual failover.
const MANUAL_FAILOVER_RETRY: Duration = Duration::from_secs(6);

/// A Redis Cluster of private `redis-server` processes: masters only
/// ([`RedisCluster::start`]), or masters with replicas
/// ([`RedisCluster::start_with_replicas`]).
///
/// Dropping it stops all nodes and removes their directories.
///
/// ```no_run
/// use ostq_testkit::RedisCluster;
///
/// # fn main() -> anyhow::Result<()> {
/// let cluster = RedisCluster::start(3)?;
/// let urls = cluster.urls(); // one "redis://127.0.0.1:PORT" per node
/// assert_eq!(urls.len(), 3);
/// // `-c` makes redis-cli follow MOVED redirects to the right node.
/// cluster.nodes()[0].cli(&["-c", "SET", "a", "1"])?;
/// assert_eq!(cluster.nodes()[1].cli(&["-c", "GET", "a"])?, "1");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Replicas per master, given to `redis-cli --cluster create`.
    replicas: usize,
}

impl RedisCluster {
    /// Starts `n` (at least 3) cluster-enabled masters without replicas, each
    /// on a free port below 55000 whose cluster bus port (`port + 10000`) is
    /// free too, joins them with `redis-cli --cluster create ...
    /// --cluster-replicas 0 --cluster-yes`, and waits until every node reports
    /// `cluster_state:ok` and knows all `n` nodes.
    ///
    /// The nodes run with `--cluster-node-timeout 5000`, so a killed node is
    /// noticed by the others after about 5 s.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start(3)?;
    /// assert_eq!(cluster.nodes().len(), 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(n: usize) -> anyhow::Result<RedisCluster> {
        Self::start_with(n, &[])
    }

    /// Like [`RedisCluster::start`], with extra `redis-server` arguments for
    /// every node, appended after the defaults.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start_with(3, &["--appendonly", "yes"])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_with(n: usize, args: &[&str]) -> anyhow::Result<RedisCluster> {
        Self::start_nodes(n, 0, args)
    }

    /// Starts `masters` (at least 3) masters with `replicas` replicas each, e.g.
    /// to test a failover: `masters * (1 + replicas)` nodes joined with
    /// `redis-cli --cluster create ... --cluster-replicas <replicas>`, which
    /// picks the replica of each master. Waits as [`RedisCluster::start`] does,
    /// and also until every replica's link to its master is up (its initial
    /// sync done), so a [`failover`](RedisCluster::failover) may follow at once.
    ///
    /// Node order is creation order; which nodes are masters is not fixed:
    /// ask [`masters`](RedisCluster::masters) and
    /// [`replicas_of`](RedisCluster::replicas_of).
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start_with_replicas(3, 1)?;
    /// assert_eq!(cluster.nodes().len(), 6);
    /// let master = cluster.masters()?[0];
    /// let replica = cluster.replicas_of(master)?[0];
    /// cluster.failover(replica)?; // the replica now serves the master's slots
    /// assert!(cluster.masters()?.contains(&replica));
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_with_replicas(masters: usize, replicas: usize) -> anyhow::Result<RedisCluster> {
        Self::start_nodes(masters, replicas, &[])
    }

    fn start_nodes(n: usize, replicas: usize, args: &[&str]) -> anyhow::Result<RedisCluster> {
        if n < 3 {
            bail!("a Redis Cluster needs at least 3 masters, got {n}");
        }
        let mut node_args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ];
        node_args.extend_from_slice(args);
        let nodes = (0..n * (1 + replicas))
            .map(|_| {
                RedisServer::builder()
                    .args(node_args.iter().copied())
                    .start_on_free_port(free_cluster_port)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = RedisCluster { nodes, replicas };
        cluster.create()?;
        cluster.wait_ok()?;
        cluster.wait_replicas_synced()?;
        Ok(cluster)
    }

    /// Joins the nodes and assigns the slots.
    fn create(&self) -> anyhow::Result<()> {
        let addresses: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args([
                "--cluster-replicas",
                &self.replicas.to_string(),
                "--cluster-yes",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => not_installed("redis-cli", INSTALL_HINT),
                _ => anyhow::Error::new(error).context("running redis-cli --cluster create"),
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("[OK] All 16384 slots covered") {
            bail!(
                "redis-cli --cluster create {} failed ({}):\n{}\n{}",
                addresses.join(" "),
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Waits until every node reports `cluster_state:ok` and knows all nodes.
    fn wait_ok(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        let known = self.nodes.len().to_string();
        for node in &self.nodes {
            loop {
                let state = cluster_info(node.port(), "cluster_state");
                let nodes = cluster_info(node.port(), "cluster_known_nodes");
                let (state, nodes) = match (state, nodes) {
                    (Ok(state), Ok(nodes)) => (state, nodes),
                    (Err(error), _) | (_, Err(error)) => (Some(error.to_string()), None),
                };
                if state.as_deref() == Some("ok") && nodes.as_deref() == Some(known.as_str()) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "cluster node on port {} not ready within {:?}: cluster_state {:?}, \
                         cluster_known_nodes {:?}",
                        node.port(),
                        CLUSTER_READY_TIMEOUT,
                        state,
                        nodes
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Waits until every replica reports `master_link_status:up`.
    fn wait_replicas_synced(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        for node in &self.nodes {
            loop {
                let role = replication_info(node.port(), "role")?;
                if role.as_deref() != Some("slave")
                    || replication_info(node.port(), "master_link_status")?.as_deref() == Some("up")
                {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "replica on port {} not in sync within {:?}",
                        node.port(),
                        CLUSTER_READY_TIMEOUT
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// The indexes (into [`nodes`](RedisCluster::nodes)) of the nodes that are
    /// masters now, by `INFO replication` of each node.
    pub fn masters(&self) -> anyhow::Result<Vec<usize>> {
        let mut masters = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if replication_info(node.port(), "role")?.as_deref() == Some("master") {
                masters.push(i);
            }
        }
        Ok(masters)
    }

    /// The indexes of the nodes replicating node `master` now.
    pub fn replicas_of(&self, master: usize) -> anyhow::Result<Vec<usize>> {
        let Some(port) = self.nodes.get(master).map(|node| node.port().to_string()) else {
            bail!("no node {master} in a cluster of {}", self.nodes.len());
        };
        let mut replicas = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if replication_info(node.port(), "role")?.as_deref() == Some("slave")
                && replication_info(node.port(), "master_port")?.as_deref() == Some(&port)
            {
                replicas.push(i);
            }
        }
        Ok(replicas)
    }

    /// A planned failover: sends `CLUSTER FAILOVER` (neither `FORCE` nor
    /// `TAKEOVER`) to the replica `replica`, then waits until it is a master
    /// and its former master a replica. In a planned failover the master stops
    /// its clients and the replica takes over only once it has caught up with
    /// the master's replication offset, so no acknowledged write is lost.
    pub fn failover(&self, replica: usize) -> anyhow::Result<()> {
        let Some(node) = self.nodes.get(replica) else {
            bail!("no node {replica} in a cluster of {}", self.nodes.len());
        };
        let Some(master_port) = replication_info(node.port(), "master_port")? else {
            bail!("node {replica} (port {}) is not a replica", node.port());
        };
        let master_port: u16 = master_port
            .parse()
            .with_context(|| format!("master_port {master_port:?}"))?;
        let deadline = Instant::now() + CLUSTER_READY_TIMEOUT;
        // Redis gives up a manual failover after 5 s (e.g. when the masters' votes do not come
        // in time, as happens to a second failover soon after a first); ask again then.
        let mut asked: Option<Instant> = None;
        loop {
            if asked.is_none_or(|at| at.elapsed() >= MANUAL_FAILOVER_RETRY) {
                let reply = node.cli(&["CLUSTER", "FAILOVER"])?;
                if reply != "OK" {
                    bail!("CLUSTER FAILOVER on port {}: {reply}", node.port());
                }
                asked = Some(Instant::now());
            }
            let promoted = replication_info(node.port(), "role")?.as_deref() == Some("master");
            let demoted = replication_info(master_port, "role")?.as_deref() == Some("slave");
            if promoted && demoted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "failover of port {} to port {} not done within {:?}; its log:\n{}",
                    master_port,
                    node.port(),
                    CLUSTER_READY_TIMEOUT,
                    log_tail(node.dir(), 20)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL of every node, `redis://127.0.0.1:PORT`, in node order.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start(3)?;
    /// for url in cluster.urls() {
    ///     assert!(url.starts_with("redis://127.0.0.1:"));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, e.g. to run `redis-cli` against one of them.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let cluster = ostq_testkit::RedisCluster::start(3)?;
    /// let info = cluster.nodes()[0].cli(&["CLUSTER", "INFO"])?;
    /// assert!(info.contains("cluster_state:ok"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes, mutably, e.g. to [`kill`](RedisServer::kill) or
    /// [`restart`](RedisServer::restart) one of them.
    ///
    /// ```no_run
    /// # fn main() -> anyhow::Result<()> {
    /// let mut cluster = ostq_testkit::RedisCluster::start(3)?;
    /// cluster.nodes_mut()[2].restart()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

/// The value of `field` in `CLUSTER INFO` of the node on `port`.
fn cluster_info(port: u16, field: &str) -> anyhow::Result<Option<String>> {
    Resp::connect(port)
        .context("connecting to a cluster node")?
        .info_field(&["CLUSTER", "INFO"], field)
}

/// The value of `field` in `INFO replication` of the node on `port`.
fn replication_info(port: u16, field: &str) -> anyhow::Result<Option<String>> {
    Resp::connect(port)
        .context("connecting to a cluster node")?
        .info_field(&["INFO", "replication"], field)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    use super::*;
    use crate::ports::CLUSTER_PORT_LIMIT;
    use crate::server::tests::{pid_of, process_exists};

    #[test]
    fn cluster_of_three_routes_keys_to_all_nodes() {
        let cluster = RedisCluster::start(3).unwrap();
        assert_eq!(cluster.nodes().len(), 3);
        let urls = cluster.urls();
        assert_eq!(urls.len(), 3);
        for (url, node) in urls.iter().zip(cluster.nodes()) {
            assert_eq!(*url, node.url());
            assert!(node.port() < CLUSTER_PORT_LIMIT);
            let info = node.cli(&["CLUSTER", "INFO"]).unwrap();
            assert!(info.contains("cluster_state:ok"), "{info}");
            assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
            assert!(info.contains("cluster_known_nodes:3"), "{info}");
        }

        // "a", "b", "c" hash to slots 15495, 3300 and 7365: one per master.
        let keys = ["a", "b", "c"];
        let slots: BTreeSet<String> = keys
            .iter()
            .map(|key| {
                cluster.nodes()[0]
                    .cli(&["CLUSTER", "KEYSLOT", key])
                    .unwrap()
            })
            .collect();
        assert_eq!(slots.len(), 3);
        for key in keys {
            let value = format!("value-of-{key}");
            assert_eq!(
                cluster.nodes()[0].cli(&["-c", "SET", key, &value]).unwrap(),
                "OK"
            );
        }
        for node in cluster.nodes() {
            for key in keys {
                assert_eq!(
                    node.cli(&["-c", "GET", key]).unwrap(),
                    format!("value-of-{key}")
                );
            }
            // Each master holds exactly one of the keys.
            assert_eq!(node.cli(&["DBSIZE"]).unwrap(), "1");
        }

        let pids: Vec<u32> = cluster.nodes().iter().map(pid_of).collect();
        let dirs: Vec<PathBuf> = cluster
            .nodes()
            .iter()
            .map(|node| node.dir().to_path_buf())
            .collect();
        drop(cluster);
        assert!(pids.iter().all(|pid| !process_exists(*pid)));
        assert!(dirs.iter().all(|dir| !dir.exists()));
    }

    #[test]
    fn a_replica_takes_over_its_masters_slots_in_a_failover() {
        let cluster = RedisCluster::start_with_replicas(3, 1).unwrap();
        assert_eq!(cluster.nodes().len(), 6);
        let masters = cluster.masters().unwrap();
        assert_eq!(masters.len(), 3);
        for node in cluster.nodes() {
            let info = node.cli(&["CLUSTER", "INFO"]).unwrap();
            assert!(info.contains("cluster_known_nodes:6"), "{info}");
        }
        // Write "a" (slot 15495) through whichever master serves it.
        assert_eq!(
            cluster.nodes()[0].cli(&["-c", "SET", "a", "1"]).unwrap(),
            "OK"
        );
        let master = masters
            .iter()
            .copied()
            .find(|&i| cluster.nodes()[i].cli(&["GET", "a"]).unwrap() == "1")
            .unwrap();
        let replicas = cluster.replicas_of(master).unwrap();
        assert_eq!(replicas.len(), 1);
        cluster.failover(replicas[0]).unwrap();
        let after = cluster.masters().unwrap();
        assert!(after.contains(&replicas[0]) && !after.contains(&master));
        assert_eq!(cluster.replicas_of(replicas[0]).unwrap(), [master]);
        // The promoted replica has the write and serves the slot now.
        assert_eq!(
            cluster.nodes()[replicas[0]].cli(&["GET", "a"]).unwrap(),
            "1"
        );
        assert!(cluster.nodes()[master]
            .cli(&["GET", "a"])
            .unwrap()
            .starts_with("MOVED"));
        // A master is refused: only a replica can be failed over to.
        assert!(cluster.failover(replicas[0]).is_err());
    }

    #[test]
    fn cluster_needs_three_nodes() {
        assert!(RedisCluster::start(2).is_err());
    }
}
