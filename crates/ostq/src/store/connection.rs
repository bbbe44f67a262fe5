//! Connecting to Redis (single server, Sentinel-managed primary, or cluster) and the redis-rs
//! traps we work around:
//! - redis-rs times out a reply after 500 ms by default; ordinary commands get a longer limit and
//!   blocking commands get their own connection whose limit is above the block time;
//! - a blocking command holds up its connection, so each blocking wait gets a dedicated one;
//! - a command that failed on a reconnect is not retried by redis-rs: every state transition is a
//!   script keyed by a lease, so running it twice is harmless (the second run finds the lease gone);
//! - redis-rs resolves a Sentinel primary once and keeps talking to it after a failover (it then
//!   answers `READONLY`): the connection follows the primary the sentinels name (asked four times a
//!   second, and again on `READONLY` and connection errors), retrying a command only when Redis
//!   certainly did not run it, so a push never runs twice;
//! - a connect that fails for a wrong address or password says so within a fraction of a second;
//!   a lazy client ([`ClientBuilder::lazy`]) lets a worker start before Redis is up;
//! - Redis's `OOM` error reply is reworded to say what happened and what to do;
//! - TLS through rustls needs one crypto provider (ring, installed here) and, for a private CA,
//!   that CA passed in: the default trust store rejects it.
//!
//! URLs accepted by [`Client::connect`] and [`Client::builder`]:
//! - `redis://[user:password@]host[:port][/db]` and `rediss://…` (TLS);
//! - `redis+sentinel://[user:password@]host:port[,host:port…]/<service-name>[/db]` and
//!   `rediss+sentinel://…`: the sentinels to ask for the primary of `<service-name>`; the
//!   credentials and the database are those of the primary (see
//!   [`ClientBuilder::sentinel_password`] for sentinels that require a password).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult,
    ServerError, ServerErrorKind, TlsCertificates, Value,
};
use tracing::{debug, info, warn};

use crate::durability::Durability;
use crate::keys::QUEUES;
use crate::{Error, Result};

/// Reply limit for ordinary commands and scripts.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest block ostq asks for: an idle worker's wait on a queue's list (its timeout is the
/// queue's next deadline, at most this; a wait that reaches it is sent again, one command).
/// Long, so that idle waits cost next to nothing; a connection that dies silently (no reset)
/// is noticed after it plus the margin below.
pub(crate) const MAX_BLOCK: Duration = Duration::from_secs(300);
/// Reply limit for a dedicated blocking connection: above the longest block ostq asks for.
const BLOCKING_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300 + 15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reply limit on a durable connection: a write's `WAIT` may take up to
/// [`crate::durability::MAX_DURABLE_TIMEOUT`], and a write queued behind another's `WAIT` waits
/// for it too (Redis runs a connection's commands in order).
const DURABLE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections for durable writes. `WAIT` blocks its connection in Redis, so each carries one
/// write and its wait at a time; a few let concurrent producers wait in parallel.
const DURABLE_CONNECTIONS: usize = 4;
/// Connect and reply limit when asking a sentinel, so that a dead sentinel does not hold up the
/// next one for long.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the sentinels are asked whether the primary moved.
const SENTINEL_POLL: Duration = Duration::from_millis(250);
/// A burst of failing commands asks the sentinels once, not once per command.
const RESOLVE_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Backoff of the background registration of a queue name while Redis is unreachable.
const REGISTER_BACKOFF_MIN: Duration = Duration::from_millis(100);
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Default port of a sentinel.
const SENTINEL_DEFAULT_PORT: u16 = 26379;

/// Why durable writes are refused on Cluster.
const NO_DURABLE_CLUSTER: &str = "durable writes (WAIT/WAITAOF) are not supported on Redis \
     Cluster by ostq yet: a write and its WAIT must go over the same connection to the queue's \
     node, and the cluster client routes WAIT to every primary";

/// What Redis's `OOM` error becomes: the raw one ("command not allowed when used memory >
/// 'maxmemory'") does not say what happened to the write or what to do.
pub(crate) const OOM_TEXT: &str =
    "Redis is out of memory (used memory is above `maxmemory` and the \
     eviction policy is `noeviction`): the command was refused and wrote nothing; free memory \
     (let workers drain the queues, trim dead or completed jobs) or raise `maxmemory`";

#[derive(Clone)]
enum Target {
    /// One server.
    Single(Box<redis::Client>),
    /// A primary found through sentinels.
    Sentinel(Arc<SentinelResolver>),
    Cluster(Vec<ConnectionInfo>),
}

/// A connection to one Redis server, a Sentinel-managed primary or a Redis Cluster; cheap to
/// clone, reconnects by itself. Error replies come back readable (see [`OOM_TEXT`]).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(FailoverConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let value = match self {
                // A refused connection sent nothing: try once more on the reconnection that
                // the failure started (Redis may be back since the last attempt).
                Conn::Single(c) => match c.req_packed_command(cmd).await {
                    Err(e) if e.is_connection_refusal() => c.req_packed_command(cmd).await?,
                    other => other?,
                },
                Conn::Cluster(c) => c.req_packed_command(cmd).await?,
                Conn::Sentinel(c) => c.command(cmd).await?,
            };
            Ok(readable(value))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let values = match self {
                Conn::Single(c) => match c.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if e.is_connection_refusal() => {
                        c.req_packed_commands(pipeline, offset, count).await?
                    }
                    other => other?,
                },
                Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await?,
                Conn::Sentinel(c) => c.commands(pipeline, offset, count).await?,
            };
            Ok(values.into_iter().map(readable).collect())
        })
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.db(),
        }
    }
}

/// Rewrites error replies that Redis words cryptically; everything else passes through.
fn readable(value: Value) -> Value {
    match value {
        Value::ServerError(e) if e.code() == "OOM" => Value::ServerError(oom_error().unwrap_or(e)),
        Value::Array(items) => Value::Array(items.into_iter().map(readable).collect()),
        other => other,
    }
}

fn oom_error() -> Option<ServerError> {
    redis::make_extension_error("OOM".into(), Some(OOM_TEXT.into()))
        .into_server_errors()
        .and_then(|errors| errors.first().map(|(_, e)| e.clone()))
}

/// Whether an error is worth waiting out (Redis down, loading, out of memory, failing over)
/// rather than a mistake that retrying cannot fix (no permission, wrong type).
pub(crate) fn is_transient(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
        return true;
    }
    matches!(
        e.code(),
        Some(
            "OOM"
                | "LOADING"
                | "BUSY"
                | "MASTERDOWN"
                | "READONLY"
                | "NOREPLICAS"
                | "TRYAGAIN"
                | "CLUSTERDOWN"
        )
    )
}

struct Inner {
    target: Target,
    conn: Conn,
    /// What pushes wait for unless a push says otherwise.
    durability: Durability,
    /// Connections of their own for durable writes, opened on first use (see
    /// [`Client::durable_conn`]).
    durable_conns: tokio::sync::OnceCell<Vec<Conn>>,
    next_durable: std::sync::atomic::AtomicUsize,
    /// Whether the server knows `WAITAOF`, asked once.
    waitaof: tokio::sync::OnceCell<bool>,
    registered_queues: Mutex<HashSet<String>>,
    /// Queues whose registration waits for Redis in a background task.
    deferred_queues: Mutex<HashSet<String>>,
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
            Target::Sentinel(_) => "sentinel",
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("Client").field("kind", &kind).finish()
    }
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_min_delay(Duration::from_millis(25))
        .set_max_delay(Duration::from_secs(1))
        // Fail fast at start (a wrong address or password should say so at once); the worker
        // loops retry with their own capped backoff after that.
        .set_number_of_retries(2)
}

fn parse_url(url: &str) -> Result<ConnectionInfo> {
    use redis::IntoConnectionInfo;
    url.into_connection_info()
        .map_err(|e| Error::Config(format!("bad Redis URL {:?}: {e}", redact(url))))
}

/// A URL with its credentials hidden, to show in messages and logs.
///
/// ```
/// assert_eq!(ostq::connection::redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
/// assert_eq!(ostq::connection::redact("redis://h:1"), "redis://h:1");
/// ```
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Installs ring as the process's rustls crypto provider unless the application chose one.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // An error means a provider is installed already: keep the application's choice.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Options for [`Client`] beyond the URL: a CA file for `rediss://`, a client certificate,
/// connecting lazily, the sentinels' password.
///
/// ```no_run
/// # async fn demo() -> ostq::Result<()> {
/// let client = ostq::Client::builder("rediss://ostq:secret@redis.internal:6380")
///     .ca_file("/etc/ssl/redis-ca.pem")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    url: String,
    ca_file: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    lazy: bool,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
    durability: Durability,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &redact(&self.url))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("lazy", &self.lazy)
            .field("sentinel_username", &self.sentinel_username)
            .field(
                "sentinel_password",
                &self.sentinel_password.as_ref().map(|_| "***"),
            )
            .field("durability", &self.durability)
            .finish()
    }
}

impl ClientBuilder {
    /// Trust the CA certificate(s) in this PEM file (instead of the system's trust store) for
    /// `rediss://` connections, e.g. a private CA that signed the server's certificate.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Present this client certificate and key (PEM files) to servers that verify clients
    /// (`tls-auth-clients yes`).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some((cert.into(), key.into()));
        self
    }

    /// Do not contact Redis now: connect on first use, and again after every failure. A worker
    /// built on a lazy client can start before Redis is up; its fetch loop retries with capped
    /// backoff and logs one line when Redis fails and one when it is back. Commands sent while
    /// Redis is down fail (producers see the error).
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// The password (and optionally the user) of the sentinels, when they require one; the
    /// credentials in a `redis+sentinel://` URL are those of the primary.
    pub fn sentinel_password(mut self, username: Option<&str>, password: &str) -> Self {
        self.sentinel_username = username.map(str::to_string);
        self.sentinel_password = Some(password.to_string());
        self
    }

    /// Make every push of this client durable: it is reported done only once the copies
    /// `durability` asks for are confirmed (`WAIT` or `WAITAOF`, sent with the push in one round
    /// trip), and fails with [`Error::NotDurable`] otherwise. A push can override it
    /// ([`crate::PushOptions::durable`]). Not available on Redis Cluster. Cost on loopback with
    /// one replica: `docs/operations.md`.
    ///
    /// ```no_run
    /// # async fn demo() -> ostq::Result<()> {
    /// use std::time::Duration;
    /// let client = ostq::Client::builder("redis+sentinel://10.0.0.1:26379/jobs")
    ///     .durability(ostq::Durability::replicas(1, Duration::from_millis(500)))
    ///     .connect()
    ///     .await?;
    /// client.queue("invoices").push("42").await?; // on the primary and one replica
    /// # Ok(()) }
    /// ```
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Connects (or, with [`ClientBuilder::lazy`], only checks the options).
    ///
    /// Fails fast with [`Error::Config`] on a malformed URL or an unreadable certificate file and
    /// with [`Error::Redis`] when the server cannot be reached or refuses the credentials.
    pub async fn connect(self) -> Result<Client> {
        self.durability.check()?;
        let certs = self.certificates()?;
        let (target, conn) = match split_scheme(&self.url)? {
            (Scheme::Plain | Scheme::Tls, _) => {
                let info = parse_url(&self.url)?;
                let client = make_client(info, certs.as_ref())?;
                let conn = if self.lazy {
                    ConnectionManager::new_lazy_with_config(
                        client.clone(),
                        manager_config(RESPONSE_TIMEOUT),
                    )
                    .map_err(Error::from_redis)?
                } else {
                    ConnectionManager::new_with_config(
                        client.clone(),
                        manager_config(RESPONSE_TIMEOUT),
                    )
                    .await
                    .map_err(|e| explain_refusal(e, &self.url, client.get_connection_info()))
                    .map_err(Error::from_redis)?
                };
                (Target::Single(Box::new(client)), Conn::Single(conn))
            }
            (Scheme::Cluster { tls }, rest) => {
                // (No lazy mode: a cluster client needs the slot map of a live node.)
                let nodes = cluster_nodes(&self.url, tls, rest)?;
                if tls {
                    install_crypto_provider();
                }
                let conn = cluster_connection(&nodes, RESPONSE_TIMEOUT).await?;
                (Target::Cluster(nodes), Conn::Cluster(conn))
            }
            (Scheme::Sentinel { tls }, rest) => {
                let resolver = Arc::new(SentinelResolver::parse(
                    &self.url,
                    tls,
                    rest,
                    certs,
                    self.sentinel_username.as_deref(),
                    self.sentinel_password.as_deref(),
                )?);
                tokio::spawn(watch_sentinels(Arc::downgrade(&resolver)));
                let conn = FailoverConn::new(resolver.clone(), RESPONSE_TIMEOUT);
                if !self.lazy {
                    conn.first_connect()
                        .await
                        .map_err(|e| explain_refusal(e, &self.url, &resolver.node_template))
                        .map_err(Error::from_redis)?;
                }
                (Target::Sentinel(resolver), Conn::Sentinel(conn))
            }
        };
        if self.durability.is_durable() && matches!(target, Target::Cluster(_)) {
            return Err(Error::Config(NO_DURABLE_CLUSTER.into()));
        }
        Ok(Client::from_parts(target, conn, self.durability))
    }

    /// Reads the PEM files given as options.
    fn certificates(&self) -> Result<Option<TlsCertificates>> {
        if self.ca_file.is_none() && self.client_cert.is_none() {
            return Ok(None);
        }
        if !matches!(
            split_scheme(&self.url)?.0,
            Scheme::Tls | Scheme::Sentinel { tls: true }
        ) {
            return Err(Error::Config(
                "a CA file or client certificate needs a rediss:// (or rediss+sentinel://) URL"
                    .into(),
            ));
        }
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                Error::Config(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let root_cert = self
            .ca_file
            .as_ref()
            .map(|path| read("CA file", path))
            .transpose()?;
        let client_tls = match &self.client_cert {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("client certificate", cert)?,
                client_key: read("client key", key)?,
            }),
            None => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// Says who was refused where when Redis rejects the credentials ("WRONGPASS" alone does not),
/// without the password.
fn explain_refusal(e: RedisError, url: &str, info: &ConnectionInfo) -> RedisError {
    if e.kind() != ErrorKind::AuthenticationFailed && e.code() != Some("WRONGPASS") {
        return e;
    }
    let user = info.redis_settings().username().unwrap_or("default");
    RedisError::from((
        ErrorKind::AuthenticationFailed,
        "authentication failed",
        format!(
            "Redis refused user {user:?} at {} (wrong password, unknown user, or user disabled)",
            redact(url)
        ),
    ))
}

enum Scheme {
    Plain,
    Tls,
    Sentinel { tls: bool },
    Cluster { tls: bool },
}

/// The nodes of a `redis+cluster://[user:password@]host:port[,host:port…]` URL, each a URL of
/// its own with the same credentials.
fn cluster_nodes(url: &str, tls: bool, rest: &str) -> Result<Vec<ConnectionInfo>> {
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (Some(auth), hosts),
        None => (None, rest),
    };
    let hosts = hosts.trim_end_matches('/');
    if hosts.contains('/') {
        return Err(Error::Config(format!(
            "bad Redis URL {:?}: a cluster has no database number",
            redact(url)
        )));
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let nodes = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|host| match auth {
            Some(auth) => parse_url(&format!("{scheme}://{auth}@{host}")),
            None => parse_url(&format!("{scheme}://{host}")),
        })
        .collect::<Result<Vec<_>>>()?;
    if nodes.is_empty() {
        return Err(Error::Config(format!(
            "bad Redis URL {:?}: name at least one node (host:port)",
            redact(url)
        )));
    }
    Ok(nodes)
}

/// The scheme of a URL and what follows `://`.
fn split_scheme(url: &str) -> Result<(Scheme, &str)> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Error::Config(format!(
            "bad Redis URL {:?}: expected redis://, rediss://, redis+sentinel://, \
             rediss+sentinel://, redis+cluster:// or rediss+cluster://",
            redact(url)
        )));
    };
    let scheme = match scheme {
        "redis+sentinel" => Scheme::Sentinel { tls: false },
        "rediss+sentinel" => Scheme::Sentinel { tls: true },
        "redis+cluster" => Scheme::Cluster { tls: false },
        "rediss+cluster" => Scheme::Cluster { tls: true },
        "rediss" => Scheme::Tls,
        // redis-rs reports anything else (unix sockets included) itself.
        _ => Scheme::Plain,
    };
    Ok((scheme, rest))
}

/// A redis-rs client, with our certificates for TLS addresses.
fn make_client(info: ConnectionInfo, certs: Option<&TlsCertificates>) -> Result<redis::Client> {
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    if tls {
        install_crypto_provider();
    }
    let client = match certs {
        Some(certs) if tls => redis::Client::build_with_tls(info, certs.clone()),
        _ => redis::Client::open(info),
    };
    client.map_err(|e| Error::Config(format!("{e}")))
}

impl Client {
    /// Connects to Redis: one server (`redis://[user:password@]host[:port][/db]`, `rediss://`
    /// for TLS with the system's trust store), a primary found through sentinels
    /// (`redis+sentinel://host:port[,host:port]/<service-name>`) or a Cluster, given some of
    /// its nodes (`redis+cluster://[user:password@]host:port[,host:port…]`, `rediss+cluster://`).
    /// See [`Client::builder`] for a CA file and other options.
    ///
    /// Fails fast with [`Error::Config`] on a malformed URL and with [`Error::Redis`] when the
    /// server cannot be reached or refuses the credentials.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// Like [`Client::connect`], without contacting Redis: the connection is made on first use
    /// and again after each failure, so a worker can start before Redis is up. Fails only on a
    /// malformed URL. Shorthand for `Client::builder(url).lazy().connect()`.
    ///
    /// ```no_run
    /// # async fn demo() -> ostq::Result<()> {
    /// let client = ostq::Client::connect_lazy("redis://127.0.0.1:6379").await?; // Redis may be down
    /// # Ok(()) }
    /// ```
    pub async fn connect_lazy(url: &str) -> Result<Self> {
        Self::builder(url).lazy().connect().await
    }

    /// Options beyond the URL: [`ClientBuilder::ca_file`], [`ClientBuilder::client_cert`],
    /// [`ClientBuilder::lazy`], [`ClientBuilder::sentinel_password`].
    ///
    /// ```no_run
    /// # async fn demo() -> ostq::Result<()> {
    /// let client = ostq::Client::builder("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/jobs")
    ///     .lazy()
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_string(),
            ca_file: None,
            client_cert: None,
            lazy: false,
            sentinel_username: None,
            sentinel_password: None,
            durability: Durability::Async,
        }
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
        if nodes
            .iter()
            .any(|n| matches!(n.addr(), ConnectionAddr::TcpTls { .. }))
        {
            install_crypto_provider();
        }
        let conn = cluster_connection(&nodes, RESPONSE_TIMEOUT).await?;
        Ok(Self::from_parts(
            Target::Cluster(nodes),
            Conn::Cluster(conn),
            Durability::Async,
        ))
    }

    fn from_parts(target: Target, conn: Conn, durability: Durability) -> Self {
        Self {
            inner: Arc::new(Inner {
                target,
                conn,
                durability,
                durable_conns: tokio::sync::OnceCell::new(),
                next_durable: std::sync::atomic::AtomicUsize::new(0),
                waitaof: tokio::sync::OnceCell::new(),
                registered_queues: Mutex::new(HashSet::new()),
                deferred_queues: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The shared connection for ordinary commands and scripts.
    pub(crate) fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// A new connection of its own, for a blocking command that must not hold up anything else.
    pub(crate) async fn blocking_conn(&self) -> Result<Conn> {
        self.own_conn(BLOCKING_RESPONSE_TIMEOUT).await
    }

    async fn own_conn(&self, response_timeout: Duration) -> Result<Conn> {
        Ok(match &self.inner.target {
            Target::Single(client) => Conn::Single(
                ConnectionManager::new_with_config(
                    client.as_ref().clone(),
                    manager_config(response_timeout),
                )
                .await
                .map_err(Error::from_redis)?,
            ),
            Target::Sentinel(resolver) => {
                let conn = FailoverConn::new(resolver.clone(), response_timeout);
                conn.first_connect().await.map_err(Error::from_redis)?;
                Conn::Sentinel(conn)
            }
            Target::Cluster(nodes) => {
                Conn::Cluster(cluster_connection(nodes, response_timeout).await?)
            }
        })
    }

    /// What this client's pushes wait for by default ([`ClientBuilder::durability`]).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) {
    /// assert!(!client.durability().is_durable()); // the default
    /// # }
    /// ```
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }

    /// A connection for one durable write and its `WAIT`, taken in turn from a small pool opened
    /// on first use. `WAIT` blocks its connection in Redis until the replicas answer (or its
    /// timeout, when one is down), so durable writes never go through the shared connection:
    /// fetches, renewals and plain pushes are not held up by a slow replica. Checks first that
    /// `durability` can be had here (no Cluster; `WAITAOF` only where Redis knows it), before
    /// anything is written.
    pub(crate) async fn durable_conn(&self, durability: &Durability) -> Result<Conn> {
        durability.check()?;
        if self.is_cluster() {
            return Err(Error::Config(NO_DURABLE_CLUSTER.into()));
        }
        let conns = self
            .inner
            .durable_conns
            .get_or_try_init(|| async {
                let mut conns = Vec::with_capacity(DURABLE_CONNECTIONS);
                for _ in 0..DURABLE_CONNECTIONS {
                    conns.push(self.own_conn(DURABLE_RESPONSE_TIMEOUT).await?);
                }
                Ok::<_, Error>(conns)
            })
            .await?;
        let turn = self
            .inner
            .next_durable
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let conn = conns[turn % conns.len()].clone();
        if matches!(durability, Durability::Aof { .. }) {
            let known = self
                .inner
                .waitaof
                .get_or_try_init(|| {
                    let mut conn = conn.clone();
                    async move { super::durable::supports_waitaof(&mut conn).await }
                })
                .await?;
            if !*known {
                return Err(Error::Config(
                    "durability aof needs WAITAOF (Redis 7.2 or later), which this server does \
                     not know; use Durability::Replicas (WAIT) instead"
                        .into(),
                ));
            }
        }
        Ok(conn)
    }

    /// Adds `queue` to the global set of known queues, once per client. The set lives outside the
    /// queue's hash tag, so it is written here rather than in the per-queue scripts.
    ///
    /// While Redis is unreachable (or loading, or out of memory) this does not fail: a background
    /// task registers the name once Redis answers, so a worker can start before Redis is up. A
    /// producer's push fails on its own command in that case.
    pub(crate) async fn register_queue(&self, queue: &str) -> Result<()> {
        if self.is_registered(queue) {
            return Ok(());
        }
        match self.add_to_queue_set(queue).await {
            Ok(()) => Ok(()),
            Err(e) if is_transient(&e) => {
                self.register_later(queue, e);
                Ok(())
            }
            Err(e) => Err(Error::from_redis(e)),
        }
    }

    fn is_registered(&self, queue: &str) -> bool {
        self.inner
            .registered_queues
            .lock()
            .map(|set| set.contains(queue))
            .unwrap_or(false)
    }

    async fn add_to_queue_set(&self, queue: &str) -> RedisResult<()> {
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

    /// Retries the registration of `queue` in the background with capped backoff, until it
    /// works, fails for good, or every handle on this client is gone.
    fn register_later(&self, queue: &str, error: RedisError) {
        let first = self
            .inner
            .deferred_queues
            .lock()
            .map(|mut set| set.insert(queue.to_string()))
            .unwrap_or(false);
        if !first {
            return;
        }
        debug!(queue, %error, "cannot register the queue yet; retrying in the background");
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let queue = queue.to_string();
        tokio::spawn(async move {
            let mut backoff = REGISTER_BACKOFF_MIN;
            loop {
                tokio::time::sleep(backoff).await;
                let Some(inner) = weak.upgrade() else { return };
                let client = Client { inner };
                let result = client.add_to_queue_set(&queue).await;
                let done = match result {
                    Ok(()) => {
                        debug!(queue = %queue, "queue registered");
                        true
                    }
                    Err(e) if is_transient(&e) => false,
                    Err(e) => {
                        warn!(queue = %queue, error = %e, "cannot register the queue in ostq:queues");
                        true
                    }
                };
                if done {
                    if let Ok(mut set) = client.inner.deferred_queues.lock() {
                        set.remove(&queue);
                    }
                    return;
                }
                backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
            }
        });
    }

    /// Whether this client finds its primary through Sentinel.
    pub(crate) fn is_sentinel(&self) -> bool {
        matches!(self.inner.target, Target::Sentinel(_))
    }

    /// Whether this client talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.target, Target::Cluster(_))
    }
}

async fn cluster_connection(
    nodes: &[ConnectionInfo],
    response_timeout: Duration,
) -> Result<ClusterConnection> {
    let client = ClusterClient::builder(nodes.to_vec())
        .response_timeout(response_timeout)
        .connection_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(Error::from_redis)?;
    client
        .get_async_connection()
        .await
        .map_err(Error::from_redis)
}

/// Finds the primary of a Sentinel-managed service.
struct SentinelResolver {
    service: String,
    /// One client per sentinel, asked in order.
    sentinels: Vec<redis::Client>,
    /// A connection to each sentinel, kept between questions.
    sentinel_conns: tokio::sync::Mutex<Vec<Option<MultiplexedConnection>>>,
    /// Credentials, database and TLS mode of the data nodes; the address is replaced.
    node_template: ConnectionInfo,
    certs: Option<TlsCertificates>,
    /// The primary the sentinels named last (`host:port`), kept fresh by [`watch_sentinels`].
    latest: Mutex<Option<String>>,
}

impl SentinelResolver {
    /// Parses what follows `redis+sentinel://`: `[user:password@]host:port[,host:port…]/<service>[/db]`.
    fn parse(
        url: &str,
        tls: bool,
        rest: &str,
        certs: Option<TlsCertificates>,
        sentinel_username: Option<&str>,
        sentinel_password: Option<&str>,
    ) -> Result<Self> {
        let shown = || redact(url);
        let bad = |why: &str| {
            Error::Config(format!(
                "bad Sentinel URL {:?}: {why}; expected \
                 redis+sentinel://[user:password@]host:port[,host:port]/<service-name>[/db]",
                shown()
            ))
        };
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("the service name is missing"))?;
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let mut segments = path.split('/');
        let service = segments.next().unwrap_or_default();
        if service.is_empty() || service.contains(['?', '#']) {
            return Err(bad("the service name is missing or has a query"));
        }
        let db = match (segments.next(), segments.next()) {
            (None, _) => "0",
            (Some(db), None) if !db.is_empty() && db.bytes().all(|b| b.is_ascii_digit()) => db,
            _ => {
                return Err(bad(
                    "after the service name only a database number may follow",
                ))
            }
        };
        if hosts.is_empty() {
            return Err(bad("no sentinel address"));
        }
        let scheme = if tls { "rediss" } else { "redis" };
        let sentinel_auth = match (sentinel_username, sentinel_password) {
            (_, None) => String::new(),
            (user, Some(password)) => format!(
                "{}:{}@",
                percent_encode(user.unwrap_or_default()),
                percent_encode(password)
            ),
        };
        let sentinels = hosts
            .split(',')
            .map(|host| {
                if host.is_empty() {
                    return Err(bad("an empty sentinel address"));
                }
                let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
                    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':')
                }) && !(host.starts_with('[') && host.ends_with(']'));
                let host = if has_port {
                    host.to_string()
                } else {
                    format!("{host}:{SENTINEL_DEFAULT_PORT}")
                };
                let info = parse_url(&format!("{scheme}://{sentinel_auth}{host}"))
                    .map_err(|_| bad("a sentinel address is not host:port"))?;
                make_client(info, certs.as_ref())
            })
            .collect::<Result<Vec<_>>>()?;
        let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let node_template = parse_url(&format!("{scheme}://{userinfo}127.0.0.1/{db}"))
            .map_err(|_| bad("bad credentials"))?;
        Ok(Self {
            service: service.to_string(),
            sentinel_conns: tokio::sync::Mutex::new(vec![None; sentinels.len()]),
            sentinels,
            node_template,
            certs,
            latest: Mutex::new(None),
        })
    }

    /// Asks the sentinels in turn for the primary and checks that it says it is one. Returns
    /// a client for it and its `host:port`.
    async fn primary(&self) -> RedisResult<(redis::Client, String)> {
        let mut last_error = None;
        for index in 0..self.sentinels.len() {
            let (host, port) = match self.ask(index).await {
                Ok(addr) => addr,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let shown = show_addr(&host, port);
            let client = self.node_client(host, port)?;
            match is_primary(&client).await {
                Ok(true) => {
                    self.set_latest(&shown);
                    return Ok((client, shown));
                }
                Ok(false) => {
                    last_error = Some(RedisError::from((
                        ErrorKind::Server(ServerErrorKind::MasterDown),
                        "the sentinels name a primary that is not one (failover in progress?)",
                        shown,
                    )))
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((ErrorKind::EmptySentinelList, "no sentinel configured"))
        }))
    }

    /// Which primary the first sentinel that answers names (no check of the primary itself).
    async fn named_primary(&self) -> RedisResult<String> {
        let mut last_error = None;
        for index in 0..self.sentinels.len() {
            match self.ask(index).await {
                Ok((host, port)) => return Ok(show_addr(&host, port)),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            RedisError::from((ErrorKind::EmptySentinelList, "no sentinel configured"))
        }))
    }

    /// Asks sentinel `index` for the primary's address, on its kept connection.
    async fn ask(&self, index: usize) -> RedisResult<(String, u16)> {
        let cached = self
            .sentinel_conns
            .lock()
            .await
            .get(index)
            .cloned()
            .flatten();
        let mut conn = match cached {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(SENTINEL_TIMEOUT))
                    .set_response_timeout(Some(SENTINEL_TIMEOUT));
                let conn = self.sentinels[index]
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                if let Some(slot) = self.sentinel_conns.lock().await.get_mut(index) {
                    *slot = Some(conn.clone());
                }
                conn
            }
        };
        let reply: RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.service)
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(Some(addr)) => Ok(addr),
            Ok(None) => Err(RedisError::from((
                ErrorKind::MasterNameNotFoundBySentinel,
                "the sentinel does not know this service",
                self.service.clone(),
            ))),
            Err(e) => {
                debug!(error = %e, "a sentinel did not answer");
                if let Some(slot) = self.sentinel_conns.lock().await.get_mut(index) {
                    *slot = None;
                }
                Err(e)
            }
        }
    }

    fn latest(&self) -> Option<String> {
        self.latest.lock().ok().and_then(|latest| latest.clone())
    }

    fn set_latest(&self, addr: &str) {
        if let Ok(mut latest) = self.latest.lock() {
            if latest.as_deref() != Some(addr) {
                *latest = Some(addr.to_string());
            }
        }
    }

    fn node_client(&self, host: String, port: u16) -> RedisResult<redis::Client> {
        let addr = match self.node_template.addr() {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = self.node_template.clone().set_addr(addr);
        make_client(info, self.certs.as_ref()).map_err(|e| {
            RedisError::from((
                ErrorKind::InvalidClientConfig,
                "bad primary address",
                e.to_string(),
            ))
        })
    }
}

fn show_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Asks the sentinels for the primary every [`SENTINEL_POLL`] while the client lives, so that
/// connections leave a demoted primary soon after the switch: Sentinel demotes the old primary
/// only seconds later, and until then it accepts writes that the failover then discards.
async fn watch_sentinels(resolver: Weak<SentinelResolver>) {
    loop {
        tokio::time::sleep(SENTINEL_POLL).await;
        let Some(resolver) = resolver.upgrade() else {
            return;
        };
        match resolver.named_primary().await {
            Ok(addr) => resolver.set_latest(&addr),
            Err(e) => debug!(error = %e, "no sentinel answered"),
        }
    }
}

/// `ROLE` says `master`. A user not allowed `ROLE` gets the benefit of the doubt.
async fn is_primary(client: &redis::Client) -> RedisResult<bool> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let role: RedisResult<Value> = redis::cmd("ROLE").query_async(&mut conn).await;
    match role {
        Ok(Value::Array(items)) => Ok(matches!(
            items.first(),
            Some(Value::BulkString(role)) if role.as_slice() == b"master"
        )),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) => Ok(true),
        Err(e) => Err(e),
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A connection to whichever server the sentinels name as primary. It follows the primary the
/// sentinels name (they are asked every [`SENTINEL_POLL`]), and on `READONLY` / `NOREPLICAS`
/// (the server was demoted) or a connection error it asks the sentinels again and switches. The failed command is sent again only when Redis certainly did not run it
/// (`READONLY`, or the connection was refused), so that non-idempotent commands (pushes) never
/// run twice; other errors go back to the caller, whose own retries then reach the new primary.
#[derive(Clone)]
pub(crate) struct FailoverConn {
    shared: Arc<Failover>,
}

struct Failover {
    resolver: Arc<SentinelResolver>,
    response_timeout: Duration,
    state: Mutex<FailoverState>,
    /// One resolution at a time.
    resolving: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct FailoverState {
    node: Option<Node>,
    /// Bumped on every switch, so that concurrent failures switch once.
    generation: u64,
    resolved_at: Option<Instant>,
}

#[derive(Clone)]
struct Node {
    addr: String,
    manager: ConnectionManager,
}

enum Request<'a> {
    One(&'a redis::Cmd),
    Many(&'a redis::Pipeline, usize, usize),
}

enum Reply {
    One(Value),
    Many(Vec<Value>),
}

impl Reply {
    /// A `READONLY` error reply (the node is a replica now) or `NOREPLICAS` (a primary with
    /// `min-replicas-to-write` that lost its replicas, as an old primary does in a failover):
    /// the node ran nothing.
    fn refused_by_old_primary(&self) -> bool {
        let refused = |v: &Value| {
            matches!(v, Value::ServerError(e)
                if e.kind() == Some(ServerErrorKind::ReadOnly) || e.code() == "NOREPLICAS")
        };
        match self {
            Reply::One(v) => refused(v),
            Reply::Many(vs) => vs.iter().any(refused),
        }
    }
}

impl FailoverConn {
    fn new(resolver: Arc<SentinelResolver>, response_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Failover {
                resolver,
                response_timeout,
                state: Mutex::new(FailoverState::default()),
                resolving: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn db(&self) -> i64 {
        self.shared.resolver.node_template.redis_settings().db()
    }

    /// Resolves the primary and connects to it now (fails fast).
    async fn first_connect(&self) -> RedisResult<()> {
        self.switch(0, true).await.map(|_| ())
    }

    async fn command(&self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match self.request(Request::One(cmd)).await? {
            Reply::One(v) => Ok(v),
            Reply::Many(_) => Err(RedisError::from((ErrorKind::Client, "unexpected reply"))),
        }
    }

    async fn commands(
        &self,
        pipeline: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self.request(Request::Many(pipeline, offset, count)).await? {
            Reply::Many(v) => Ok(v),
            Reply::One(_) => Err(RedisError::from((ErrorKind::Client, "unexpected reply"))),
        }
    }

    async fn request(&self, request: Request<'_>) -> RedisResult<Reply> {
        let (mut generation, mut node) = self.node().await?;
        if let Some(latest) = self.shared.resolver.latest() {
            if latest != node.addr {
                // The sentinels named another primary: follow it before sending anything.
                match self.switch(generation, false).await {
                    Ok(found) => (generation, node) = found,
                    Err(e) => debug!(error = %e, "cannot follow the new primary yet"),
                }
            }
        }
        let (not_run, failure) = match send(node.manager, &request).await {
            Ok(reply) if reply.refused_by_old_primary() => (true, Ok(reply)),
            Ok(reply) => return Ok(reply),
            Err(e) if e.is_connection_refusal() => (true, Err(e)),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                (false, Err(e))
            }
            Err(e) => return Err(e),
        };
        let (next_generation, next) = match self.switch(generation, false).await {
            Ok(found) => found,
            Err(e) => {
                debug!(error = %e, "sentinels could not name a primary");
                return failure;
            }
        };
        if not_run && next_generation != generation {
            send(next.manager, &request).await
        } else {
            failure
        }
    }

    /// The current primary, resolving it first if there is none yet.
    async fn node(&self) -> RedisResult<(u64, Node)> {
        let current = self.current();
        match current {
            Some(found) => Ok(found),
            None => self.switch(0, false).await,
        }
    }

    fn current(&self) -> Option<(u64, Node)> {
        let state = self.shared.state.lock().ok()?;
        state.node.clone().map(|n| (state.generation, n))
    }

    /// Asks the sentinels for the primary unless someone switched since `seen` (or asked a moment
    /// ago), and switches to it if it moved. `eager` connects before returning.
    async fn switch(&self, seen: u64, eager: bool) -> RedisResult<(u64, Node)> {
        let shared = &self.shared;
        let _one_at_a_time = shared.resolving.lock().await;
        if let Some(found) = self.unless_switched(seen) {
            return Ok(found);
        }
        let resolved = shared.resolver.primary().await;
        let (client, addr) = {
            let mut state = lock(&shared.state)?;
            state.resolved_at = Some(Instant::now());
            let (client, addr) = resolved?;
            if let Some(node) = &state.node {
                if node.addr == addr {
                    return Ok((state.generation, node.clone()));
                }
            }
            (client, addr)
        };
        let config = manager_config(shared.response_timeout);
        let manager = if eager {
            ConnectionManager::new_with_config(client, config).await?
        } else {
            ConnectionManager::new_lazy_with_config(client, config)?
        };
        let node = Node { addr, manager };
        let (generation, previous) = {
            let mut state = lock(&shared.state)?;
            let previous = state.node.replace(node.clone());
            state.generation += 1;
            (state.generation, previous)
        };
        match previous {
            Some(old) => info!(
                service = %shared.resolver.service,
                primary = %node.addr,
                previous = %old.addr,
                "sentinel: following the new primary"
            ),
            None => {
                debug!(service = %shared.resolver.service, primary = %node.addr, "sentinel: primary found")
            }
        }
        Ok((generation, node))
    }

    /// The current node if someone switched since `seen` or asked the sentinels a moment ago.
    fn unless_switched(&self, seen: u64) -> Option<(u64, Node)> {
        let state = self.shared.state.lock().ok()?;
        let node = state.node.as_ref()?;
        let recent = state
            .resolved_at
            .is_some_and(|t| t.elapsed() < RESOLVE_MIN_INTERVAL);
        (state.generation != seen || recent).then(|| (state.generation, node.clone()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> RedisResult<std::sync::MutexGuard<'_, T>> {
    mutex
        .lock()
        .map_err(|_| RedisError::from((ErrorKind::Client, "poisoned lock")))
}

async fn send(mut manager: ConnectionManager, request: &Request<'_>) -> RedisResult<Reply> {
    match *request {
        Request::One(cmd) => manager.req_packed_command(cmd).await.map(Reply::One),
        Request::Many(pipeline, offset, count) => manager
            .req_packed_commands(pipeline, offset, count)
            .await
            .map(Reply::Many),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_in_errors() {
        assert_eq!(redact("redis://u:secret@host:1/0"), "redis://***@host:1/0");
        assert_eq!(redact("redis://host:1"), "redis://host:1");
        assert_eq!(
            redact("redis+sentinel://:secret@h:1,h:2/svc"),
            "redis+sentinel://***@h:1,h:2/svc"
        );
    }

    #[tokio::test]
    async fn a_bad_url_is_a_config_error() {
        let err = Client::connect("http://nope").await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        let err = Client::connect("redis://u:secret@[::zz]:1")
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = Client::connect("no-scheme").await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    #[tokio::test]
    async fn sentinel_urls_are_parsed() {
        let r = SentinelResolver::parse(
            "",
            false,
            "u:p%40ss@h1:1,h2,[::1]:3/jobs/2",
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(r.service, "jobs");
        assert_eq!(r.sentinels.len(), 3);
        let addrs: Vec<String> = r
            .sentinels
            .iter()
            .map(|c| c.get_connection_info().addr().to_string())
            .collect();
        assert_eq!(addrs, ["h1:1", "h2:26379", "::1:3"]);
        let node = r.node_template.redis_settings();
        assert_eq!(
            (node.username(), node.password(), node.db()),
            (Some("u"), Some("p@ss"), 2)
        );
        // Sentinels get no credentials unless given separately.
        assert_eq!(
            r.sentinels[0]
                .get_connection_info()
                .redis_settings()
                .password(),
            None
        );
        let r =
            SentinelResolver::parse("", false, "h:1/jobs", None, Some("s"), Some("p w")).unwrap();
        let s = r.sentinels[0].get_connection_info().redis_settings();
        assert_eq!((s.username(), s.password()), (Some("s"), Some("p w")));
        assert_eq!(r.node_template.redis_settings().db(), 0);
    }

    #[tokio::test]
    async fn bad_sentinel_urls_say_why_without_the_password() {
        for url in [
            "redis+sentinel://:secret@h:1",
            "redis+sentinel://:secret@h:1/",
            "redis+sentinel://:secret@/svc",
            "redis+sentinel://:secret@h:1/svc/x",
            "redis+sentinel://:secret@h:1,/svc",
        ] {
            let err = Client::connect(url).await.unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{url}: {err}");
            assert!(!err.to_string().contains("secret"), "{err}");
            assert!(err.to_string().contains("redis+sentinel://"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_ca_file_needs_a_tls_url() {
        let err = Client::builder("redis://127.0.0.1:1")
            .ca_file("/nonexistent.pem")
            .connect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        let err = Client::builder("rediss://127.0.0.1:1")
            .ca_file("/nonexistent.pem")
            .connect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent.pem"), "{err}");
    }

    #[test]
    fn oom_replies_become_readable() {
        let oom = redis::make_extension_error(
            "OOM".into(),
            Some("command not allowed when used memory > 'maxmemory'.".into()),
        )
        .into_server_errors()
        .unwrap()[0]
            .1
            .clone();
        let Value::ServerError(e) = readable(Value::ServerError(oom)) else {
            panic!("not an error")
        };
        assert_eq!(e.code(), "OOM");
        assert!(e.to_string().contains("out of memory"), "{e}");
        assert!(matches!(readable(Value::Int(1)), Value::Int(1)));
    }
}
