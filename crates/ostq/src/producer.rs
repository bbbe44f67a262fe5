//! Producing jobs: [`Queue`] handles and [`PushOptions`].
//!
//! Plain immediate jobs take the fast path: envelopes are encoded here and appended with `LPUSH`,
//! many per command, pipelined. Jobs with a delay, a priority or a status record go through
//! `push.lua`, which also builds envelopes for producers written in other languages.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::connection::Client;
use crate::envelope::{Envelope, FLAG_TRACKED};
use crate::job::now_ms;
use crate::keys::QueueKeys;
use crate::scripts::PUSH_SCRIPT;
use crate::task::Task;
use crate::{Error, Result};

/// Jobs per LPUSH command and per `push.lua` call in bulk pushes.
const BULK_CHUNK: usize = 1000;
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

    /// Set the task type name (typed tasks set it for you).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn is_plain(&self) -> bool {
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
    pub(crate) events_cache: Arc<std::sync::Mutex<Option<(std::time::Instant, bool)>>>,
}

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
            events_cache: Arc::default(),
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
        self.client.register_queue(&self.name).await?;
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let given_id = if single { opts.id.clone() } else { None };
        // Plain LPUSH emits no `pushed` event: with events on, every push goes through push.lua.
        if opts.is_plain() && !self.events_on().await? {
            self.push_plain(keys, payloads.into_iter(), opts, given_id)
                .await
        } else {
            self.push_scripted(keys, payloads.into_iter(), opts, given_id)
                .await
        }
    }

    async fn push_plain<'p>(
        &self,
        keys: &QueueKeys,
        payloads: impl Iterator<Item = &'p [u8]>,
        opts: &PushOptions,
        given_id: Option<String>,
    ) -> Result<Vec<String>> {
        let enqueued_at_ms = now_ms();
        let mut ids = Vec::new();
        let mut pipe = redis::pipe();
        let mut cmd = redis::cmd("LPUSH");
        cmd.arg(&keys.pending);
        let mut in_cmd = 0;
        for payload in payloads {
            let id = given_id.clone().unwrap_or_else(new_id);
            let env = Envelope {
                id: id.clone(),
                flags: 0,
                payload: payload.to_vec(),
                name: opts.name.clone().unwrap_or_default(),
                attempt: 0,
                max_attempts: opts.max_attempts,
                priority: 0,
                enqueued_at_ms,
                last_error: String::new(),
                unique: String::new(),
            };
            cmd.arg(env.encode());
            ids.push(id);
            in_cmd += 1;
            if in_cmd == BULK_CHUNK {
                pipe.add_command(std::mem::replace(&mut cmd, redis::cmd("LPUSH")))
                    .ignore();
                cmd.arg(&keys.pending);
                in_cmd = 0;
            }
        }
        if in_cmd > 0 {
            pipe.add_command(cmd).ignore();
        }
        // More than one LPUSH: in MULTI/EXEC, so that a bulk push lands whole or not at all
        // (under OOM, say, Redis refuses the transaction rather than its later commands).
        if pipe.len() > 1 {
            pipe.atomic();
        }
        let mut conn = self.client.conn();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(Error::from_redis)?;
        Ok(ids)
    }

    async fn push_scripted<'p>(
        &self,
        keys: &QueueKeys,
        payloads: impl Iterator<Item = &'p [u8]>,
        opts: &PushOptions,
        given_id: Option<String>,
    ) -> Result<Vec<String>> {
        let delay_ms = opts.delay.map(|d| d.as_millis() as u64).unwrap_or(0);
        let run_at_ms = opts
            .run_at
            .map(|t| {
                t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(1)
            })
            .unwrap_or(0);
        let flags = if opts.track { FLAG_TRACKED } else { 0 };
        let name = opts.name.clone().unwrap_or_default();
        let (unique, unique_ttl_ms) = match &opts.unique {
            Some((key, ttl)) => (key.as_str(), ttl.map(|t| t.as_millis() as u64).unwrap_or(0)),
            None => ("", 0),
        };
        let mut chunks = Vec::new();
        let mut payloads = payloads.peekable();
        while payloads.peek().is_some() {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(PUSH_SCRIPT.get_hash()).arg(7);
            for key in [
                &keys.pending,
                &keys.prioritized,
                &keys.scheduled,
                &keys.jobs,
                &keys.seq,
                &keys.config,
                &keys.events,
            ] {
                cmd.arg(key);
            }
            cmd.arg(&keys.prefix);
            for payload in payloads.by_ref().take(BULK_CHUNK) {
                let id = given_id.clone().unwrap_or_else(new_id);
                cmd.arg(id)
                    .arg(payload)
                    .arg(&name)
                    .arg(opts.max_attempts)
                    .arg(opts.priority)
                    .arg(delay_ms)
                    .arg(run_at_ms)
                    .arg(flags)
                    .arg(unique)
                    .arg(unique_ttl_ms);
            }
            chunks.push(cmd);
        }
        let mut conn = self.client.conn();
        let replies: Vec<Vec<Vec<redis::Value>>> = if chunks.len() == 1 {
            match chunks[0].query_async(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    PUSH_SCRIPT.load_async(&mut conn).await?;
                    vec![chunks[0]
                        .query_async(&mut conn)
                        .await
                        .map_err(Error::from_redis)?]
                }
                reply => vec![reply.map_err(Error::from_redis)?],
            }
        } else {
            // Loaded first: a NOSCRIPT inside MULTI/EXEC would not be retried.
            PUSH_SCRIPT.load_async(&mut conn).await?;
            // Several calls in one MULTI/EXEC: all or nothing (under OOM, say).
            let mut pipe = redis::pipe();
            pipe.atomic();
            for cmd in chunks {
                pipe.add_command(cmd);
            }
            pipe.query_async(&mut conn)
                .await
                .map_err(Error::from_redis)?
        };
        let mut ids = Vec::new();
        for reply in replies.into_iter().flatten() {
            let (id, created, why) = parse_pushed(reply)?;
            if created == 0 {
                return Err(match why.as_str() {
                    "unique" | "" => Error::Duplicate {
                        key: unique.to_string(),
                        existing_id: id,
                    },
                    state => Error::IdTaken {
                        id,
                        state: state.to_string(),
                    },
                });
            }
            ids.push(id);
        }
        Ok(ids)
    }
}

/// One `{id, created, why}` answer of push.lua (older versions answered `{id, created}`).
fn parse_pushed(reply: Vec<redis::Value>) -> Result<(String, i64, String)> {
    use redis::FromRedisValue;
    let mut fields = reply.into_iter();
    let (Some(id), Some(created)) = (fields.next(), fields.next()) else {
        return Err(Error::Protocol(
            "push.lua answered a job with fewer than 2 fields".into(),
        ));
    };
    let bad = |e: redis::ParsingError| Error::Protocol(format!("push.lua answered: {e}"));
    let why = match fields.next() {
        Some(v) => String::from_redis_value(v).map_err(bad)?,
        None => String::new(),
    };
    Ok((
        String::from_redis_value(id).map_err(bad)?,
        i64::from_redis_value(created).map_err(bad)?,
        why,
    ))
}

/// A new job id: a ULID, sortable by creation time.
pub(crate) fn new_id() -> String {
    ulid::Ulid::new().to_string()
}
