//! Connecting to Redis (single server or cluster) and the redis-rs traps we work around:
//! - redis-rs times out a reply after 500 ms by default; ordinary commands get a longer limit and
//!   blocking commands get their own connection whose limit is above the block time;
//! - a blocking command holds up its connection, so each blocking wait gets a dedicated one;
//! - a command that failed on a reconnect is not retried by redis-rs: every state transition is a
//!   script keyed by a lease, so running it twice is harmless (the second run finds the lease gone).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::keys::QUEUES;
use crate::{Error, Result};

/// Reply limit for ordinary commands and scripts.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reply limit for a dedicated blocking connection: above the longest block ostq asks for (1 s).
const BLOCKING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(Vec<redis::ConnectionInfo>),
}

/// A connection to one Redis server or to a Redis Cluster; cheap to clone, reconnects by itself.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct Inner {
    target: Target,
    conn: Conn,
    registered_queues: Mutex<HashSet<String>>,
}

/// A handle on Redis for producers, workers and inspection. Clone it freely: clones share one
/// multiplexed connection that reconnects by itself.
///
/// ```no_run
/// # async fn demo() -> ostq::Result<()> {
/// let client = ostq::Client::connect("redis://127.0.0.1:6379").await?;
/// let id = client.queue("videos").push("42").await?;
/// println!("enqueued job {id}");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.inner.target {
            Target::Single(_) => "single",
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("Client").field("kind", &kind).finish()
    }
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_max_delay(Duration::from_secs(1))
        // Fail fast at start (a wrong address or password should say so at once); the worker
        // loops retry with their own capped backoff after that.
        .set_number_of_retries(2)
}

fn parse_url(url: &str) -> Result<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    url.into_connection_info()
        .map_err(|e| Error::Config(format!("bad Redis URL {:?}: {e}", redact(url))))
}

/// Hides a password in a URL before it is shown in an error.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl Client {
    /// Connects to one Redis server: `redis://[user:password@]host[:port][/db]`.
    ///
    /// Fails fast with [`Error::Config`] on a malformed URL and with [`Error::Redis`] when the
    /// server cannot be reached or refuses the credentials.
    pub async fn connect(url: &str) -> Result<Self> {
        let info = parse_url(url)?;
        let client = redis::Client::open(info).map_err(|e| Error::Config(format!("{e}")))?;
        let conn =
            ConnectionManager::new_with_config(client.clone(), manager_config(RESPONSE_TIMEOUT))
                .await?;
        Ok(Self::from_parts(Target::Single(client), Conn::Single(conn)))
    }

    /// Connects to a Redis Cluster given the URLs of some of its nodes.
    ///
    /// ```no_run
    /// # async fn demo() -> ostq::Result<()> {
    /// let client = ostq::Client::connect_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes = urls
            .into_iter()
            .map(|u| parse_url(u.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if nodes.is_empty() {
            return Err(Error::Config(
                "a cluster needs at least one node URL".into(),
            ));
        }
        let conn = cluster_connection(&nodes, RESPONSE_TIMEOUT).await?;
        Ok(Self::from_parts(
            Target::Cluster(nodes),
            Conn::Cluster(conn),
        ))
    }

    fn from_parts(target: Target, conn: Conn) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                conn,
                registered_queues: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The shared connection for ordinary commands and scripts.
    pub(crate) fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// A new connection of its own, for a blocking command that must not hold up anything else.
    pub(crate) async fn blocking_conn(&self) -> Result<Conn> {
        Ok(match &self.inner.target {
            Target::Single(client) => Conn::Single(
                ConnectionManager::new_with_config(
                    client.clone(),
                    manager_config(BLOCKING_RESPONSE_TIMEOUT),
                )
                .await?,
            ),
            Target::Cluster(nodes) => {
                Conn::Cluster(cluster_connection(nodes, BLOCKING_RESPONSE_TIMEOUT).await?)
            }
        })
    }

    /// Adds `queue` to the global set of known queues, once per client. The set lives outside the
    /// queue's hash tag, so it is written here rather than in the per-queue scripts.
    pub(crate) async fn register_queue(&self, queue: &str) -> Result<()> {
        let known = self
            .inner
            .registered_queues
            .lock()
            .map(|set| set.contains(queue))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        let mut conn = self.conn();
        redis::cmd("SADD")
            .arg(QUEUES)
            .arg(queue)
            .query_async::<()>(&mut conn)
            .await?;
        if let Ok(mut set) = self.inner.registered_queues.lock() {
            set.insert(queue.to_string());
        }
        Ok(())
    }

    /// Whether this client talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster(_))
    }
}

async fn cluster_connection(
    nodes: &[redis::ConnectionInfo],
    response_timeout: Duration,
) -> Result<ClusterConnection> {
    let client = ClusterClient::builder(nodes.to_vec())
        .response_timeout(response_timeout)
        .connection_timeout(CONNECT_TIMEOUT)
        .build()?;
    Ok(client.get_async_connection().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_errors() {
        assert_eq!(redact("redis://u:secret@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact("redis://host:1"), "redis://host:1");
    }

    #[tokio::test]
    async fn a_bad_url_is_a_config_error() {
        let err = Client::connect("http://nope").await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        let err = Client::connect("redis://u:secret@[::zz]:1")
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
