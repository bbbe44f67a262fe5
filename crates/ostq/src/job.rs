//! The job model: what a handler receives ([`Job`]), the states a job moves through
//! ([`JobState`]) and what inspection reports ([`JobInfo`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

use tokio::sync::watch;

use crate::envelope::Envelope;
use crate::keys::QueueKeys;
use crate::store;
use crate::Client;
use crate::{Error, Result};

/// A job as a handler sees it.
///
/// ```
/// # fn handle(job: &ostq::Job) -> ostq::Result<()> {
/// let video_id: &str = job.payload_str()?;
/// println!("attempt {} of job {} on {}: {video_id}", job.attempt, job.id, job.queue);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Job {
    /// Unique id within its queue (generated, or given by the producer).
    pub id: String,
    /// The queue it came from.
    pub queue: String,
    /// Task type name, for typed tasks.
    pub name: Option<String>,
    /// The payload bytes, as pushed.
    pub payload: Vec<u8>,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// Attempts allowed in all (the worker's default filled in).
    pub max_attempts: u32,
    /// Higher runs first.
    pub priority: i32,
    /// When it was first enqueued.
    pub enqueued_at: SystemTime,
    /// The previous attempt's error, if any.
    pub last_error: Option<String>,
    /// Whether a status record is kept for it.
    pub tracked: bool,
    pub(crate) context: Option<Arc<JobContext>>,
    #[cfg(feature = "opentelemetry")]
    pub(crate) trace: Option<crate::otel::TraceContext>,
}

/// What a running job can reach: its queue, to report progress, and the worker's view of the
/// cancellations asked for. One per queue per worker, shared by its jobs.
pub(crate) struct JobContext {
    pub(crate) client: Client,
    pub(crate) keys: Arc<QueueKeys>,
    pub(crate) cancelled: watch::Receiver<Arc<HashSet<String>>>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("queue", &self.keys.queue)
            .finish()
    }
}

impl Job {
    pub(crate) fn from_envelope(queue: &str, env: Envelope, default_max_attempts: u32) -> Self {
        let max_attempts = if env.max_attempts == 0 {
            default_max_attempts
        } else {
            env.max_attempts
        };
        Self {
            tracked: env.tracked(),
            id: env.id,
            queue: queue.to_string(),
            name: (!env.name.is_empty()).then_some(env.name),
            payload: env.payload,
            attempt: env.attempt + 1,
            max_attempts,
            priority: env.priority,
            enqueued_at: from_ms(env.enqueued_at_ms),
            last_error: (!env.last_error.is_empty()).then_some(env.last_error),
            context: None,
            #[cfg(feature = "opentelemetry")]
            trace: crate::otel::TraceContext::of_envelope(env.traceparent, env.tracestate),
        }
    }

    /// The W3C trace context the job was pushed with (feature `opentelemetry`): the producer's
    /// span, which the worker's `job` span already continues; `None` when it was pushed without
    /// one (or with one that is not W3C syntax). For handing on to what the handler starts, as
    /// `ostq worker -- CMD` does with the `TRACEPARENT` environment variable.
    ///
    /// ```
    /// # fn handle(job: &ostq::Job) {
    /// if let Some(trace) = job.trace() {
    ///     println!("pushed from span {}", trace.traceparent());
    /// }
    /// # }
    /// ```
    #[cfg(feature = "opentelemetry")]
    pub fn trace(&self) -> Option<&crate::otel::TraceContext> {
        self.trace.as_ref()
    }

    /// Reports progress: a number or a small JSON value. Tracked jobs keep the latest in their
    /// status record (see [`JobInfo::progress`]); with events on, a `progress` event is emitted.
    ///
    /// ```no_run
    /// # async fn handle(job: ostq::Job) -> Result<(), ostq::BoxError> {
    /// for (done, _frame) in [1, 2, 3].iter().enumerate() {
    ///     job.progress(serde_json::json!({"frames": done + 1, "of": 3})).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn progress(&self, value: impl serde::Serialize) -> Result<()> {
        let Some(context) = &self.context else {
            return Ok(()); // a Job built outside a worker (in a test, say) has nowhere to report
        };
        let json = serde_json::to_string(&value)
            .map_err(|e| Error::Payload(format!("progress of job {} is not JSON: {e}", self.id)))?;
        let mut conn = context.client.conn();
        store::lease::progress(&mut conn, &context.keys, &self.id, &json).await
    }

    /// Whether someone asked for this job to be cancelled ([`crate::Queue::cancel`]).
    pub fn is_cancelled(&self) -> bool {
        self.context
            .as_ref()
            .is_some_and(|c| c.cancelled.borrow().contains(&self.id))
    }

    /// Resolves when someone asks for this job to be cancelled; a handler selects on it to stop
    /// early. The worker notices a request within about half a second. A job whose handler then
    /// fails goes to the dead set as cancelled, without retries.
    ///
    /// ```no_run
    /// # async fn transcode(_: &[u8]) {}
    /// # async fn handle(job: ostq::Job) -> Result<(), ostq::BoxError> {
    /// tokio::select! {
    ///     _ = transcode(&job.payload) => Ok(()),
    ///     _ = job.cancelled() => Err("stopped on request".into()),
    /// }
    /// # }
    /// ```
    pub async fn cancelled(&self) {
        let Some(context) = &self.context else {
            return std::future::pending().await;
        };
        let mut watch = context.cancelled.clone();
        loop {
            if watch.borrow_and_update().contains(&self.id) {
                return;
            }
            if watch.changed().await.is_err() {
                return std::future::pending().await; // the worker is gone; nobody will cancel
            }
        }
    }

    /// The payload as UTF-8 text, or an error naming the job.
    pub fn payload_str(&self) -> Result<&str> {
        std::str::from_utf8(&self.payload)
            .map_err(|e| Error::Payload(format!("job {} payload is not UTF-8: {e}", self.id)))
    }

    /// The payload decoded from JSON (how typed tasks are stored).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            Error::Payload(format!(
                "job {} payload is not the expected JSON: {e}",
                self.id
            ))
        })
    }

    /// Whether this is the last attempt the job gets.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// Where a job is in its life.
///
/// ```text
///  push ──► pending ──fetch──► active ──ok──► completed
///    │         ▲                 │  │
///    ▼         │ due             │  └─error, attempts left──► retry ──due──► pending
///  scheduled ──┘                 ├─error, none left─────────► dead ──retry──► pending
///                                └─lease expired────────────► pending (or dead)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its run-at time.
    Scheduled,
    /// Ready, waiting for a worker.
    Pending,
    /// Leased by a worker that is running it.
    Active,
    /// Finished successfully (kept only for tracked jobs, for their retention).
    Completed,
    /// Failed, waiting for its next attempt.
    Retry,
    /// Spent its attempts (or could not be run at all); kept for inspection and manual retry.
    Dead,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Pending,
        JobState::Active,
        JobState::Completed,
        JobState::Retry,
        JobState::Dead,
    ];

    /// The lowercase name used in Redis records and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Pending => "pending",
            JobState::Active => "active",
            JobState::Completed => "completed",
            JobState::Retry => "retry",
            JobState::Dead => "dead",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown state {s:?}: expected scheduled, pending, active, completed, retry or dead"
                ))
            })
    }
}

/// What inspection knows about one job. Its JSON form is stable: bytes come as text when they
/// are UTF-8, else as `payload_base64` / `result_base64` (see [`crate::admin`]).
///
/// ```
/// # fn show(info: &ostq::JobInfo) -> serde_json::Result<()> {
/// let json = serde_json::to_string(info)?;
/// let back: ostq::JobInfo = serde_json::from_str(&json)?;
/// assert_eq!(&back, info);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(
    into = "crate::admin::views::JobView",
    try_from = "crate::admin::views::JobView"
)]
#[non_exhaustive]
pub struct JobInfo {
    /// The job's id.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Its state now.
    pub state: JobState,
    /// Task type name, if any.
    pub name: Option<String>,
    /// The payload, when the job's envelope is still in Redis (not for completed jobs).
    pub payload: Option<Vec<u8>>,
    /// Attempts that already ended.
    pub attempts: u32,
    /// Attempts allowed (0 = the worker's default).
    pub max_attempts: u32,
    /// Priority.
    pub priority: i32,
    /// When it was enqueued (unix ms).
    pub enqueued_at_ms: Option<u64>,
    /// When the latest attempt started (unix ms; tracked jobs only).
    pub started_at_ms: Option<u64>,
    /// When it completed or died (unix ms; tracked jobs only).
    pub finished_at_ms: Option<u64>,
    /// When it is due, for scheduled and retry jobs; the lease deadline for active ones (unix ms).
    pub due_at_ms: Option<u64>,
    /// The last error.
    pub last_error: Option<String>,
    /// The handler's result (tracked jobs only).
    pub result: Option<Vec<u8>>,
    /// The latest progress its handler reported, as JSON text (tracked jobs only).
    pub progress: Option<String>,
    /// Whether a status record is kept.
    pub tracked: bool,
}

impl JobInfo {
    pub(crate) fn from_envelope(queue: &str, state: JobState, env: Envelope) -> Self {
        Self {
            tracked: env.tracked(),
            id: env.id,
            queue: queue.to_string(),
            state,
            name: (!env.name.is_empty()).then_some(env.name),
            payload: Some(env.payload),
            attempts: env.attempt,
            max_attempts: env.max_attempts,
            priority: env.priority,
            enqueued_at_ms: Some(env.enqueued_at_ms),
            started_at_ms: None,
            finished_at_ms: None,
            due_at_ms: None,
            last_error: (!env.last_error.is_empty()).then_some(env.last_error),
            result: None,
            progress: None,
        }
    }
}

pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
