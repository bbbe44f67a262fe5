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

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
