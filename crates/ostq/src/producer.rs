//! Producing jobs: [`Queue`] handles and [`PushOptions`].
//!
//! Plain immediate jobs take the fast path: envelopes are encoded here and appended with `LPUSH`,
//! many per command, pipelined. Jobs with a delay, a priority or a status record go through
//! `push.lua`, which also builds envelopes for producers written in other languages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::durability::{Acked, Durability};
use crate::envelope::{EnvelopeFields, FLAG_TRACKED};
use crate::job::now_ms;
use crate::keys::{QueueKeys, SHARD_MARK};
use crate::shards::CachedConfig;
use crate::store::{self, push::PushFields};
use crate::task::Task;
use crate::Client;
use crate::{Error, Result};

/// Longest id a caller may give (the Lua header parser reads ids up to 255 bytes).
pub const MAX_ID_LEN: usize = 200;
/// Priorities accepted (higher runs first).
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
/// Longest delay, latest run-at (after 1970) and longest unique ttl that `push.lua` accepts: 10^14
/// ms, about 3,170 years. (An unbounded one, `inf` say, would schedule a job that never runs.)
pub const MAX_DELAY: Duration = Duration::from_millis(100_000_000_000_000);
/// Largest payload accepted by default, on push and by workers (8 MiB): Redis keeps every waiting
/// job in memory, and one huge payload stalls the server for everyone while it is copied.
pub const DEFAULT_MAX_PAYLOAD: usize = 8 * 1024 * 1024;

/// Options of a push. The default is an immediate, untracked job with priority 0 and the worker's
/// default attempt limit.
///
/// ```
/// use std::time::Duration;
/// let opts = ostq::PushOptions::new()
///     .delay(Duration::from_secs(30))
///     .priority(5)
///     .max_attempts(3)
///     .track();
/// ```
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    id: Option<String>,
    delay: Option<Duration>,
    run_at: Option<SystemTime>,
    priority: i32,
    max_attempts: u32,
    track: bool,
    name: Option<String>,
    unique: Option<(String, Option<Duration>)>,
    key: Option<String>,
    durable: Option<Durability>,
    #[cfg(feature = "opentelemetry")]
    trace: Option<crate::otel::TraceContext>,
}

impl PushOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this id instead of a generated ULID (1..=200 bytes, not starting with `~`, which marks
    /// generated ids). Not allowed in bulk pushes. An id names one job at a time: the push fails
    /// with [`Error::IdTaken`] while a job with this id is scheduled or waiting to retry (or,
    /// tracked, pending or running); a dead job's id may be pushed again (the new job replaces
    /// the dead entry).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Run no earlier than `delay` from now (measured on the Redis server's clock).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Run no earlier than `at`.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Higher runs first; FIFO among equals; -1000..=1000, default 0.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Attempts allowed in all (0 = the worker's default).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Keep a status record, so the job's state and result can be read by id until its retention
    /// ends. Costs a hash per job in Redis and a few commands per transition.
    pub fn track(mut self) -> Self {
        self.track = true;
        self
    }

    /// Don't enqueue this job while another job with the same key is pending, scheduled, waiting
    /// to retry or running: the push fails with [`Error::Duplicate`] naming that job. The key is
    /// released when the job completes or dies.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let opts = ostq::PushOptions::new().unique("transcode:42");
    /// match client.queue("videos").push_with("42", &opts).await {
    ///     Ok(id) => println!("enqueued {id}"),
    ///     Err(ostq::Error::Duplicate { existing_id, .. }) => println!("already queued as {existing_id}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn unique(mut self, key: impl Into<String>) -> Self {
        self.unique = Some((key.into(), None));
        self
    }

    /// Like [`PushOptions::unique`], but the key is held for `ttl` from the push, whatever becomes
    /// of the job (for "at most once per hour" style deduplication).
    pub fn unique_for(mut self, key: impl Into<String>, ttl: Duration) -> Self {
        self.unique = Some((key.into(), Some(ttl.max(Duration::from_millis(1)))));
        self
    }

    /// Wait for this many copies before the push is reported done, instead of the client's
    /// setting ([`crate::connection::ClientBuilder::durability`]); [`Durability::Async`] turns it
    /// off for this push. The push and its `WAIT` (or `WAITAOF`) go in one round trip on a
    /// connection of their own; when fewer copies are confirmed in time the push fails with
    /// [`Error::NotDurable`], although the jobs are on the primary (see there for pushing again).
    /// Not available on Redis Cluster.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use std::time::Duration;
    /// let opts = ostq::PushOptions::new()
    ///     .durable(ostq::Durability::replicas(1, Duration::from_millis(500)));
    /// client.queue("payments").push_with("charge 42", &opts).await?;
    /// # Ok(()) }
    /// ```
    pub fn durable(mut self, durability: Durability) -> Self {
        self.durable = Some(durability);
        self
    }

    /// Set the task type name (typed tasks set it for you).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Store this W3C trace context in the jobs instead of the current span's (feature
    /// `opentelemetry`). Without it, a push stores the trace context of the span it is made in,
    /// if that span has one ([`crate::otel::TraceContext::current`]).
    ///
    /// ```
    /// // What `ostq push` does with a TRACEPARENT environment variable.
    /// let trace = ostq::otel::TraceContext::parse(
    ///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ///     "",
    /// )?;
    /// let opts = ostq::PushOptions::new().trace(trace);
    /// # Ok::<(), ostq::Error>(())
    /// ```
    #[cfg(feature = "opentelemetry")]
    pub fn trace(mut self, trace: crate::otel::TraceContext) -> Self {
        self.trace = Some(trace);
        self
    }

    /// An ordering key: on a sharded queue (design §19) every job with the same key goes to the
    /// same shard, so jobs with one key are fetched in the order they were pushed (FIFO per
    /// key). Without it jobs go round-robin over the shards. On an unsharded queue it changes
    /// nothing.
    ///
    /// ```
    /// let opts = ostq::PushOptions::new().key("customer-17");
    /// ```
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Whether jobs pushed with these options take the plain `LPUSH` path (about 1 µs of Redis
    /// time each) rather than `push.lua` (15-22 µs: a delay, a time, a priority, a status record,
    /// a unique key or a given id). A queue whose events are on uses `push.lua` whatever the
    /// options. Callers that push many jobs size their batches by it: a bulk push is one
    /// `MULTI`/`EXEC`, during which Redis serves no one else (design §18).
    ///
    /// ```
    /// assert!(ostq::PushOptions::new().is_plain());
    /// assert!(!ostq::PushOptions::new().track().is_plain());
    /// ```
    pub fn is_plain(&self) -> bool {
        // A given id goes through push.lua, which refuses an id a waiting job already has.
        self.id.is_none()
            && self.delay.is_none()
            && self.run_at.is_none()
            && self.priority == 0
            && !self.track
            && self.unique.is_none()
    }

    fn check(&self) -> Result<()> {
        if let Some(id) = &self.id {
            if id.is_empty() || id.len() > MAX_ID_LEN {
                return Err(Error::Config(format!(
                    "job id must be 1..={MAX_ID_LEN} bytes, got {}",
                    id.len()
                )));
            }
            if id.starts_with('~') {
                return Err(Error::Config(format!(
                    "job id {id:?}: ids starting with ~ are reserved for generated ones"
                )));
            }
        }
        if let Some((key, _)) = &self.unique {
            if key.is_empty() || key.len() > MAX_ID_LEN {
                return Err(Error::Config(format!(
                    "unique key must be 1..={MAX_ID_LEN} bytes"
                )));
            }
        }
        if let Some(key) = &self.key {
            if key.is_empty() || key.len() > MAX_ID_LEN {
                return Err(Error::Config(format!(
                    "ordering key must be 1..={MAX_ID_LEN} bytes"
                )));
            }
        }
        if self.delay.is_some_and(|d| d > MAX_DELAY) {
            return Err(Error::Config(format!(
                "delay must be at most {MAX_DELAY:?} (about 3,170 years)"
            )));
        }
        if let Some(at) = self.run_at {
            if at.duration_since(UNIX_EPOCH).unwrap_or_default() > MAX_DELAY {
                return Err(Error::Config(
                    "run_at must be before the year 5138 (10^14 ms after 1970)".into(),
                ));
            }
        }
        if let Some((_, Some(ttl))) = &self.unique {
            if *ttl > MAX_DELAY {
                return Err(Error::Config(format!(
                    "unique_for ttl must be at most {MAX_DELAY:?}"
                )));
            }
        }
        if let Some(durability) = &self.durable {
            durability.check()?;
        }
        if !PRIORITY_RANGE.contains(&self.priority) {
            return Err(Error::Config(format!(
                "priority {} is outside -1000..=1000",
                self.priority
            )));
        }
        Ok(())
    }
}

/// A named queue to push jobs onto. Get one with [`Client::queue`].
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let videos = client.queue("videos");
/// videos.push("42").await?;                                   // the Ost one-liner
/// videos.push_bulk(["43", "44", "45"]).await?;                 // pipelined
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    name: String,
    keys: std::result::Result<Arc<QueueKeys>, String>,
    max_payload: usize,
    /// When the queue's event setting was last read, and whether events were on.
    /// The queue's settings (events, shards) and when they were read.
    pub(crate) config_cache: ConfigCache,
    /// A shard's own handle (the admin API's per-shard calls): never sharded itself.
    shard: bool,
    /// The round-robin position over the shards, shared by clones of this handle; it starts at
    /// a random shard.
    round_robin: Arc<AtomicUsize>,
}

type ConfigCache = Arc<std::sync::Mutex<Option<(std::time::Instant, Arc<CachedConfig>)>>>;

impl Client {
    /// A handle on the queue `name` (1..=200 bytes, no braces or whitespace; a bad name is
    /// reported by the first push).
    pub fn queue(&self, name: &str) -> Queue {
        Queue {
            client: self.clone(),
            name: name.to_string(),
            keys: QueueKeys::new(name)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            max_payload: DEFAULT_MAX_PAYLOAD,
            config_cache: Arc::default(),
            shard: false,
            // A random start: code that makes a new handle per push still spreads its jobs.
            round_robin: Arc::new(AtomicUsize::new(ulid::Ulid::new().random() as usize)),
        }
    }
}

impl Queue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same queue with another payload size limit for pushes (default
    /// [`DEFAULT_MAX_PAYLOAD`]); a larger payload is refused before anything is written.
    pub fn with_max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    pub(crate) fn client_ref(&self) -> &Client {
        &self.client
    }

    /// Whether this handle is one shard of a sharded queue (design §19).
    pub(crate) fn is_shard(&self) -> bool {
        self.shard
    }

    /// The handle of physical queue `name` (a shard of this queue, or the queue itself).
    pub(crate) fn shard(&self, name: &str) -> Result<Queue> {
        Ok(Queue {
            client: self.client.clone(),
            name: name.to_string(),
            keys: Ok(Arc::new(QueueKeys::physical(name)?)),
            max_payload: self.max_payload,
            config_cache: Arc::default(),
            shard: true,
            round_robin: Arc::default(),
        })
    }

    pub(crate) fn keys(&self) -> Result<&QueueKeys> {
        self.keys.as_deref().map_err(|e| Error::Config(e.clone()))
    }

    /// Pushes one job with default options; returns its id.
    pub async fn push(&self, payload: impl AsRef<[u8]>) -> Result<String> {
        self.push_with(payload, &PushOptions::default()).await
    }

    /// Pushes one job with options; returns its id.
    pub async fn push_with(&self, payload: impl AsRef<[u8]>, opts: &PushOptions) -> Result<String> {
        let mut ids = self
            .push_many(std::iter::once(payload.as_ref()), opts, true)
            .await?;
        ids.pop()
            .ok_or_else(|| Error::Protocol("push returned no id".into()))
    }

    /// Pushes many jobs with default options, pipelined in batches; returns their ids in order.
    pub async fn push_bulk<I, P>(&self, payloads: I) -> Result<Vec<String>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        self.push_bulk_with(payloads, &PushOptions::default()).await
    }

    /// Pushes many jobs sharing `opts` (which must not set an id); returns their ids in order.
    pub async fn push_bulk_with<I, P>(&self, payloads: I, opts: &PushOptions) -> Result<Vec<String>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        if opts.id.is_some() || opts.unique.is_some() {
            return Err(Error::Config(
                "a bulk push cannot share one job id or unique key".into(),
            ));
        }
        let payloads: Vec<P> = payloads.into_iter().collect();
        self.push_many(payloads.iter().map(|p| p.as_ref()), opts, false)
            .await
    }

    /// Enqueues a typed task (JSON payload, the task's name).
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Transcode { video_id: u64 }
    /// # impl ostq::Task for Transcode { const NAME: &'static str = "transcode"; }
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// client.queue("videos").enqueue(&Transcode { video_id: 42 }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue<T: Task>(&self, task: &T) -> Result<String> {
        self.enqueue_with(task, PushOptions::default()).await
    }

    /// Enqueues a typed task with options.
    pub async fn enqueue_with<T: Task>(&self, task: &T, mut opts: PushOptions) -> Result<String> {
        let payload = serde_json::to_vec(task)
            .map_err(|e| Error::Payload(format!("cannot encode task {}: {e}", T::NAME)))?;
        // Carry the task's attempt limit in the job, so that whoever recovers it from a lost
        // worker (in Lua, without the task's policy) applies the same limit.
        if opts.max_attempts == 0 {
            if let Some(limit) = T::retry_policy().and_then(|p| p.attempt_limit()) {
                opts.max_attempts = limit;
            }
        }
        self.push_with(payload, &opts.name(T::NAME)).await
    }

    async fn push_many<'p>(
        &self,
        payloads: impl ExactSizeIterator<Item = &'p [u8]>,
        opts: &PushOptions,
        single: bool,
    ) -> Result<Vec<String>> {
        opts.check()?;
        let keys = self.keys()?;
        let payloads: Vec<&[u8]> = payloads.collect();
        if let Some(big) = payloads.iter().find(|p| p.len() > self.max_payload) {
            return Err(Error::Payload(format!(
                "payload of {} bytes is over the limit of {} bytes for queue {}",
                big.len(),
                self.max_payload,
                self.name
            )));
        }
        let durability = opts.durable.unwrap_or_else(|| self.client.durability());
        // Before anything is written: a durability this server cannot give is refused here.
        let durable = if durability.is_durable() {
            Some(Durable {
                conn: self.client.durable_conn(&durability).await?,
                wait: store::durable::wait_cmd(&durability),
                durability,
            })
        } else {
            None
        };
        self.client.register_queue(&self.name).await?;
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let given_id = if single { opts.id.clone() } else { None };
        // The trace context the jobs carry (the current span's, unless given): "" for none.
        #[cfg(feature = "opentelemetry")]
        let trace = opts
            .trace
            .clone()
            .or_else(crate::otel::TraceContext::current);
        #[cfg(feature = "opentelemetry")]
        let trace = trace
            .as_ref()
            .map(|t| Trace(t.traceparent(), t.tracestate()))
            .unwrap_or_default();
        #[cfg(not(feature = "opentelemetry"))]
        let trace = Trace::default();
        // Cached for a second: no read per push.
        let config = self.config().await?;
        // Plain LPUSH emits no `pushed` event: with events on, every push goes through push.lua.
        let plain = opts.is_plain() && !config.events_on;
        let mut conn = match &durable {
            Some(durable) => durable.conn.clone(),
            None => self.client.conn(),
        };
        let wait = durable.as_ref().and_then(|d| d.wait.as_ref());
        // Each job's shard and id (design §19): by ordering key, by unique key, by a given id,
        // or round-robin; a generated id carries its shard after `#`.
        let layout = &config.layout;
        let count = layout.count();
        let mut fresh_ids = IdSource::new();
        let mut routes = Vec::with_capacity(payloads.len());
        let mut ids = Vec::with_capacity(payloads.len());
        for _ in 0..payloads.len() {
            if count == 1 {
                routes.push(0);
                ids.push(given_id.clone().unwrap_or_else(|| fresh_ids.next()));
                continue;
            }
            let shard = if let Some(key) = &opts.key {
                layout.shard_of_key(key)
            } else if let Some((unique, _)) = &opts.unique {
                layout.shard_of_key(unique)
            } else if let Some(id) = &given_id {
                layout.shard_of_id(id)
            } else {
                self.round_robin.fetch_add(1, Ordering::Relaxed) % count
            };
            routes.push(shard);
            ids.push(
                given_id
                    .clone()
                    .unwrap_or_else(|| format!("{}{SHARD_MARK}{shard}", fresh_ids.next())),
            );
        }
        if count == 1 {
            // One physical queue: every job goes in one call, with no regrouping by shard.
            let (pushed, acked) = if plain {
                self.push_plain(&mut conn, keys, &payloads, opts, ids, trace, wait)
                    .await?
            } else {
                self.push_scripted(
                    &mut conn,
                    keys,
                    payloads.iter().copied(),
                    opts,
                    ids,
                    trace,
                    wait,
                )
                .await?
            };
            return match (durable, acked) {
                (Some(durable), Some(acked)) if !acked.satisfies(&durable.durability) => {
                    Err(acked.shortfall(&durable.durability, pushed))
                }
                _ => Ok(pushed),
            };
        }
        let mut out = vec![String::new(); payloads.len()];
        let mut short = None;
        for shard in 0..count {
            let members: Vec<usize> = (0..routes.len()).filter(|&j| routes[j] == shard).collect();
            if members.is_empty() {
                continue;
            }
            let shard_keys;
            let keys = if count == 1 {
                keys
            } else {
                shard_keys = QueueKeys::physical(&layout.shards[shard])?;
                &shard_keys
            };
            let group: Vec<&[u8]> = members.iter().map(|&j| payloads[j]).collect();
            let group_ids = members.iter().map(|&j| ids[j].clone()).collect();
            let (pushed, acked) = if plain {
                self.push_plain(&mut conn, keys, &group, opts, group_ids, trace, wait)
                    .await?
            } else {
                self.push_scripted(
                    &mut conn,
                    keys,
                    group.into_iter(),
                    opts,
                    group_ids,
                    trace,
                    wait,
                )
                .await?
            };
            for (&j, id) in members.iter().zip(pushed) {
                out[j] = id;
            }
            if let (Some(durable), Some(acked)) = (&durable, acked) {
                if short.is_none() && !acked.satisfies(&durable.durability) {
                    short = Some(acked);
                }
            }
        }
        match (durable, short) {
            (Some(durable), Some(acked)) => Err(acked.shortfall(&durable.durability, out)),
            _ => Ok(out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_plain(
        &self,
        conn: &mut store::Conn,
        keys: &QueueKeys,
        payloads: &[&[u8]],
        opts: &PushOptions,
        ids: Vec<String>,
        trace: Trace<'_>,
        wait: Option<&store::durable::WaitFor>,
    ) -> Result<(Vec<String>, Option<Acked>)> {
        let enqueued_at_ms = now_ms();
        let name = opts.name.as_deref().unwrap_or_default();
        let mut batch = store::push::PlainPush::new(keys, payloads.len());
        for (payload, id) in payloads.iter().zip(&ids) {
            batch.add(&EnvelopeFields {
                id,
                flags: 0,
                payload,
                name,
                attempt: 0,
                max_attempts: opts.max_attempts,
                priority: 0,
                enqueued_at_ms,
                last_error: "",
                unique: "",
                traceparent: trace.0,
                tracestate: trace.1,
            });
        }
        let acked = batch.send(conn, wait).await?;
        Ok((ids, acked))
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_scripted<'p>(
        &self,
        conn: &mut store::Conn,
        keys: &QueueKeys,
        payloads: impl Iterator<Item = &'p [u8]>,
        opts: &PushOptions,
        given_ids: Vec<String>,
        trace: Trace<'_>,
        wait: Option<&store::durable::WaitFor>,
    ) -> Result<(Vec<String>, Option<Acked>)> {
        let run_at_ms = opts
            .run_at
            .map(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(1)
            })
            .unwrap_or(0);
        let (unique, unique_ttl_ms) = match &opts.unique {
            Some((key, ttl)) => (key.as_str(), ttl.map(|t| t.as_millis() as u64).unwrap_or(0)),
            None => ("", 0),
        };
        let fields = PushFields {
            name: opts.name.as_deref().unwrap_or_default(),
            max_attempts: opts.max_attempts,
            priority: opts.priority,
            delay_ms: opts.delay.map(|d| d.as_millis() as u64).unwrap_or(0),
            run_at_ms,
            flags: if opts.track { FLAG_TRACKED } else { 0 },
            unique,
            unique_ttl_ms,
            traceparent: trace.0,
            tracestate: trace.1,
        };
        let jobs: Vec<(String, &[u8])> = given_ids.into_iter().zip(payloads).collect();
        let (pushed, acked) = store::push::push_scripted(conn, keys, &jobs, &fields, wait).await?;
        let mut ids = Vec::with_capacity(pushed.len());
        for job in pushed {
            if !job.created {
                return Err(match job.why.as_str() {
                    "unique" | "" => Error::Duplicate {
                        key: unique.to_string(),
                        existing_id: job.id,
                    },
                    state => Error::IdTaken {
                        id: job.id,
                        state: state.to_string(),
                    },
                });
            }
            ids.push(job.id);
        }
        Ok((ids, acked))
    }
}

/// A durable push's connection and wait, chosen before anything is written.
struct Durable {
    conn: store::Conn,
    wait: Option<store::durable::WaitFor>,
    durability: Durability,
}

/// The W3C trace context a push stores in its jobs, `(traceparent, tracestate)`; empty (the
/// default, and always without the `opentelemetry` feature) for none: then the envelopes are
/// exactly what they would be without the feature.
#[derive(Clone, Copy, Default)]
struct Trace<'a>(&'a str, &'a str);

/// A new job id: a ULID, sortable by creation time.
pub(crate) fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// The ids of one push's jobs: ULIDs that share the push's millisecond and follow each other
/// (ULID's monotonic form), so they sort in push order and a bulk push reads the clock and the
/// random source once, not once per job.
struct IdSource(Option<ulid::Ulid>);

impl IdSource {
    fn new() -> Self {
        Self(None)
    }

    fn next(&mut self) -> String {
        // `increment` is None only when the 80 random bits overflow: start again from fresh ones.
        let id = match self.0.and_then(|last| last.increment()) {
            Some(id) => id,
            None => ulid::Ulid::new(),
        };
        self.0 = Some(id);
        id.to_string()
    }
}
