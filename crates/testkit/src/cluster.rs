//! [`RedisCluster`]: a small Redis Cluster of private servers.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::ports::free_cluster_port;
use crate::resp::Resp;
use crate::server::{not_installed, INSTALL_HINT};
use crate::RedisServer;

/// How long a new cluster may take until every node reports `cluster_state:ok`.
const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Redis Cluster of private `redis-server` processes (masters only).
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
        let nodes = (0..n)
            .map(|_| {
                RedisServer::builder()
                    .args(node_args.iter().copied())
                    .start_on_free_port(free_cluster_port)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cluster = RedisCluster { nodes };
        cluster.create()?;
        cluster.wait_ok()?;
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
    fn cluster_needs_three_nodes() {
        assert!(RedisCluster::start(2).is_err());
    }
}
