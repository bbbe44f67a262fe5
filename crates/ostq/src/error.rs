//! The library's error type.

/// Everything that can go wrong talking to ostq.
///
/// ```
/// let err = ostq::Error::Config("bad url".into());
/// assert_eq!(err.to_string(), "invalid configuration: bad url");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused a command, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A URL, option or argument is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
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
    /// Maps a Redis error, naming out-of-memory refusals plainly even when Redis reports them
    /// inside an aborted transaction.
    pub(crate) fn from_redis(e: redis::RedisError) -> Self {
        let oom = e.code() == Some("OOM") || e.to_string().contains("\"OOM\"");
        if oom {
            Error::OutOfMemory(crate::connection::OOM_TEXT.to_string())
        } else {
            Error::Redis(e)
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
