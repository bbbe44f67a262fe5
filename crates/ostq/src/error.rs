//! The library's error type: one variant per thing a caller may branch on. Errors from the Redis
//! client library are classified once, in [`Error::from_redis`], and kept only as a
//! [`source`](std::error::Error::source), so ostq's public API does not expose redis-rs's types.

/// The underlying cause of an error, kept for [`std::error::Error::source`] and logs.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong talking to ostq.
///
/// ```
/// let err = ostq::Error::Config("bad url".into());
/// assert_eq!(err.to_string(), "invalid configuration: bad url");
/// assert!(!err.is_transient());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached or did not answer in time: connection refused or dropped, a
    /// timeout, or Redis loading its data set or failing over. Worth retrying later.
    #[error("redis: {message}")]
    Unreachable {
        /// What happened, in Redis's or the client's words.
        message: String,
        /// The client library's error.
        #[source]
        source: Source,
    },
    /// Redis refused the credentials: a wrong password, an unknown or disabled user, or a
    /// password missing where one is required.
    #[error("redis: {message}")]
    Auth {
        /// What Redis said.
        message: String,
        /// The client library's error.
        #[source]
        source: Source,
    },
    /// Redis refused a command for a reason retrying does not fix (no permission under its ACL,
    /// a script error, a key of the wrong type).
    #[error("redis: {message}")]
    Redis {
        /// What Redis said.
        message: String,
        /// The client library's error.
        #[source]
        source: Source,
    },
    /// A URL, option or argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// What was asked for does not exist: a job without a status record, an unknown queue or
    /// schedule.
    #[error("not found: {0}")]
    NotFound(String),
    /// A job's bytes in Redis are not a valid ostq envelope.
    #[error("malformed job envelope: {0}")]
    Envelope(String),
    /// A payload could not be encoded or decoded.
    #[error("payload: {0}")]
    Payload(String),
    /// Redis answered something the scripts never return: a bug or a foreign key of the same name.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// Waiting for something took longer than allowed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Redis is out of memory (`maxmemory` with `noeviction`): the command wrote nothing.
    #[error("{0}")]
    OutOfMemory(String),
    /// A job with the same unique key is already pending, scheduled, waiting to retry or running.
    #[error("a job with unique key {key:?} already exists: {existing_id}")]
    Duplicate {
        /// The unique key.
        key: String,
        /// The id of the job that holds it.
        existing_id: String,
    },
    /// A job with the id given to a push is still waiting (scheduled, waiting to retry, or pending
    /// or running while tracked): an id names one job at a time. (A dead job's id may be reused:
    /// the new job takes the dead entry's place.)
    #[error("job id {id:?} is taken by a job that is {state}")]
    IdTaken {
        /// The id.
        id: String,
        /// The state of the job that has it: `scheduled`, `retry`, `pending` or `active`.
        state: String,
    },
    /// A durable push ([`crate::Durability`]) was written on the primary, but fewer copies than
    /// asked for were confirmed within the timeout (a replica is down or lagging, or a failover is
    /// under way).
    ///
    /// **The jobs are in Redis** on the primary (their ids are here) and will run unless a failover
    /// or crash drops them. The push is not reported as durable, so the caller decides: accept the
    /// risk, or push again. Pushing again **with the same id** ([`crate::PushOptions::id`]) is safe
    /// for tracked jobs ([`crate::PushOptions::track`]) and delayed or scheduled ones: `push.lua`
    /// refuses an id such a job still holds ([`Error::IdTaken`]: the first push survived, nothing to
    /// do). An untracked immediate job is not indexed by id, so pushing it again may make a second
    /// copy when the first survived (it runs twice; handlers are idempotent anyway, §16), or use a
    /// unique key ([`crate::PushOptions::unique`]) to refuse the second one.
    ///
    /// ```no_run
    /// # async fn demo(queue: ostq::Queue) -> ostq::Result<()> {
    /// use std::time::Duration;
    /// let opts = ostq::PushOptions::new()
    ///     .track()
    ///     .id("invoice-42")
    ///     .durable(ostq::Durability::replicas(1, Duration::from_millis(500)));
    /// match queue.push_with("42", &opts).await {
    ///     Ok(id) => println!("{id} is on a replica too"),
    ///     Err(ostq::Error::NotDurable { acked, wanted, .. }) => {
    ///         println!("only {acked} of {wanted} replicas: pushing again later");
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    #[error(
        "the write is on the primary but not durable: {acked} of {wanted} replicas confirmed it \
         in time{}; it may be lost in a failover (jobs {})",
        if *local_fsync_missing { ", and the primary's AOF fsync was not confirmed" } else { "" },
        show_ids(ids)
    )]
    NotDurable {
        /// The jobs written (on the primary).
        ids: Vec<String>,
        /// Replicas that confirmed the write (`WAIT`'s or `WAITAOF`'s count).
        acked: u32,
        /// Replicas asked for.
        wanted: u32,
        /// `WAITAOF` with the local fsync asked for, and the primary did not confirm it.
        local_fsync_missing: bool,
    },
    /// The job spent its attempts (or failed permanently); `wait_for` reports it.
    #[error("job {id} failed: {error}")]
    JobFailed {
        /// The job.
        id: String,
        /// Its last error.
        error: String,
    },
}

impl Error {
    /// The one conversion from redis-rs's errors: names out-of-memory refusals plainly (even
    /// inside an aborted transaction), and sorts the rest into unreachable, refused credentials
    /// and other refusals.
    pub(crate) fn from_redis(e: redis::RedisError) -> Self {
        use redis::ErrorKind;
        let oom = e.code() == Some("OOM") || e.to_string().contains("\"OOM\"");
        if oom {
            return Error::OutOfMemory(crate::connection::OOM_TEXT.to_string());
        }
        let message = e.to_string();
        let auth = e.kind() == ErrorKind::AuthenticationFailed
            || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"));
        if auth {
            Error::Auth {
                message,
                source: Box::new(e),
            }
        } else if crate::connection::is_transient(&e) {
            Error::Unreachable {
                message,
                source: Box::new(e),
            }
        } else {
            Error::Redis {
                message,
                source: Box::new(e),
            }
        }
    }

    /// Whether trying again later may succeed: Redis unreachable, out of memory, or a wait that
    /// timed out.
    ///
    /// ```
    /// assert!(ostq::Error::Timeout("job 1".into()).is_transient());
    /// assert!(!ostq::Error::NotFound("job 1".into()).is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::OutOfMemory(_) | Error::Timeout(_)
        )
    }

    /// Whether Redis refused the command under the connection's ACL user (`NOPERM`).
    pub(crate) fn is_no_permission(&self) -> bool {
        let Error::Redis { source, message } = self else {
            return false;
        };
        let code = source
            .downcast_ref::<redis::RedisError>()
            .and_then(|e| e.code().map(str::to_owned));
        code.as_deref() == Some("NOPERM")
            || message.contains("NOPERM")
            || message.contains("NoPerm")
    }
}

/// The first few ids of a list, for messages (a bulk push may name thousands).
fn show_ids(ids: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = ids
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(", … {} in all", ids.len()));
    }
    text
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
