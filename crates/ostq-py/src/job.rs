//! The job model for Python: what a handler receives ([`Job`]), what inspection returns
//! ([`JobInfo`], [`QueueCounts`]) and what the error hook is told ([`Failure`]).

use std::time::UNIX_EPOCH;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::convert;
use crate::runtime::{awaitable, wait};

/// A job as a handler sees it: its payload, its name and attempt, and the means to report
/// progress and notice cancellation.
///
/// ```python
/// def handler(job: ostq.Job) -> None:
///     print(f"attempt {job.attempt} of {job.max_attempts} of job {job.id}: {job.text}")
///     job.progress({"done": 50})
///     if job.cancelled:
///         raise RuntimeError("stopped on request")
/// ```
#[pyclass(frozen, module = "ostq")]
pub(crate) struct Job {
    pub(crate) inner: ostq::Job,
}

#[pymethods]
impl Job {
    /// The job's id (generated, or given by the producer).
    #[getter]
    fn id(&self) -> &str {
        &self.inner.id
    }

    /// The queue it came from.
    #[getter]
    fn queue(&self) -> &str {
        &self.inner.queue
    }

    /// Its task name (`enqueue(name, …)`, `push(…, name=…)`), or `None`.
    #[getter]
    fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// The payload bytes, as pushed.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.payload)
    }

    /// The payload as text (UTF-8); `ostq.PayloadError` when it is not.
    #[getter]
    fn text(&self) -> PyResult<&str> {
        self.inner.payload_str().map_err(crate::errors::to_py_err)
    }

    /// The payload decoded from JSON (how `enqueue` stores a task's params).
    ///
    /// ```python
    /// params = job.json()
    /// ```
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        convert::from_json(py, &self.inner.payload).map_err(|e| {
            crate::errors::payload_error(format!(
                "job {} payload is not JSON: {}",
                self.inner.id,
                e.value(py)
            ))
        })
    }

    /// Which attempt this is, from 1.
    #[getter]
    fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// Attempts allowed in all (the worker's default filled in).
    #[getter]
    fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// Whether this is the last attempt the job gets.
    #[getter]
    fn is_last_attempt(&self) -> bool {
        self.inner.is_last_attempt()
    }

    /// Its priority (higher runs first).
    #[getter]
    fn priority(&self) -> i32 {
        self.inner.priority
    }

    /// When it was first enqueued, in Unix seconds.
    #[getter]
    fn enqueued_at(&self) -> f64 {
        self.inner
            .enqueued_at
            .duration_since(UNIX_EPOCH)
            .map(convert::seconds)
            .unwrap_or(0.0)
    }

    /// The previous attempt's error, if any.
    #[getter]
    fn last_error(&self) -> Option<&str> {
        self.inner.last_error.as_deref()
    }

    /// Whether a status record is kept for it (`push(…, track=True)`).
    #[getter]
    fn tracked(&self) -> bool {
        self.inner.tracked
    }

    /// Whether someone asked for this job to be cancelled (`queue.cancel(id)`); the worker
    /// notices within about half a second. A handler that then raises sends the job to the dead
    /// set as cancelled, without retries.
    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }

    /// Reports progress: any JSON value (a number, a small dict). A tracked job keeps the latest
    /// in its status record (`queue.job(id).progress`); with events on, a `progress` event is
    /// emitted. Blocks until Redis has it (use `progress_async` in a coroutine).
    ///
    /// ```python
    /// job.progress({"frames": 10, "of": 40})
    /// ```
    fn progress(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = progress_value(value)?;
        let job = self.inner.clone();
        wait(py, async move { job.progress(value).await })
    }

    /// `progress` for coroutine handlers: an awaitable.
    ///
    /// ```python
    /// await job.progress_async(50)
    /// ```
    fn progress_async<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = progress_value(value)?;
        let job = self.inner.clone();
        awaitable(py, async move { job.progress(value).await }, |py, ()| {
            Ok(py.None())
        })
    }

    /// An awaitable that completes when someone asks for this job to be cancelled: a coroutine
    /// handler races its work against it.
    ///
    /// ```python
    /// async def handler(job):
    ///     work = asyncio.ensure_future(transcode(job.payload))
    ///     stop = asyncio.ensure_future(job.wait_cancelled())
    ///     done, _ = await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    ///     if stop in done:
    ///         work.cancel()
    ///         raise RuntimeError("stopped on request")
    /// ```
    fn wait_cancelled<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let job = self.inner.clone();
        awaitable(
            py,
            async move {
                job.cancelled().await;
                Ok(())
            },
            |py, ()| Ok(py.None()),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Job(id={:?}, queue={:?}, name={:?}, attempt={})",
            self.inner.id, self.inner.queue, self.inner.name, self.inner.attempt
        )
    }
}

/// A progress value as the library takes it: the JSON text Python's `json` wrote, passed on
/// verbatim (a `serde_json::Value` would reorder the keys).
fn progress_value(value: &Bound<'_, PyAny>) -> PyResult<Box<serde_json::value::RawValue>> {
    let text = convert::to_json(value, "progress")?;
    serde_json::value::RawValue::from_string(text)
        .map_err(|e| crate::errors::payload_error(format!("progress is not JSON: {e}")))
}

/// What inspection knows about one job (`queue.job(id)`, `queue.jobs(state)`).
///
/// ```python
/// info = queue.job(job_id)
/// if info is not None:
///     print(info.state, info.attempts, info.last_error, info.result)
/// ```
#[pyclass(frozen, get_all, module = "ostq")]
pub(crate) struct JobInfo {
    /// The job's id.
    id: String,
    /// Its queue.
    queue: String,
    /// Its state now: "scheduled", "pending", "active", "completed", "retry" or "dead".
    state: String,
    /// Task name, if any.
    name: Option<String>,
    /// The payload, while the job's envelope is in Redis (not for completed jobs).
    payload: Option<Py<PyBytes>>,
    /// Attempts that already ended.
    attempts: u32,
    /// Attempts allowed (0 = the worker's default).
    max_attempts: u32,
    /// Priority.
    priority: i32,
    /// When it was enqueued, Unix seconds.
    enqueued_at: Option<f64>,
    /// When the latest attempt started, Unix seconds (tracked jobs only).
    started_at: Option<f64>,
    /// When it completed or died, Unix seconds (tracked jobs only).
    finished_at: Option<f64>,
    /// When it is due (scheduled, retry) or its lease ends (active), Unix seconds.
    due_at: Option<f64>,
    /// The last error (for a Python handler, its traceback).
    last_error: Option<String>,
    /// The handler's result (tracked jobs only).
    result: Option<Py<PyBytes>>,
    /// The latest progress reported, as JSON text (tracked jobs only).
    progress: Option<String>,
    /// Whether a status record is kept.
    tracked: bool,
}

#[pymethods]
impl JobInfo {
    fn __repr__(&self) -> String {
        format!(
            "JobInfo(id={:?}, queue={:?}, state={:?}, name={:?}, attempts={})",
            self.id, self.queue, self.state, self.name, self.attempts
        )
    }
}

impl JobInfo {
    pub(crate) fn new(py: Python<'_>, info: ostq::JobInfo) -> Self {
        let seconds = |ms: Option<u64>| ms.map(|ms| ms as f64 / 1000.0);
        let bytes = |b: Option<Vec<u8>>| b.map(|b| PyBytes::new(py, &b).unbind());
        Self {
            id: info.id,
            queue: info.queue,
            state: info.state.as_str().to_string(),
            name: info.name,
            payload: bytes(info.payload),
            attempts: info.attempts,
            max_attempts: info.max_attempts,
            priority: info.priority,
            enqueued_at: seconds(info.enqueued_at_ms),
            started_at: seconds(info.started_at_ms),
            finished_at: seconds(info.finished_at_ms),
            due_at: seconds(info.due_at_ms),
            last_error: info.last_error,
            result: bytes(info.result),
            progress: info.progress,
            tracked: info.tracked,
        }
    }
}

/// How many jobs a queue holds in each state, and its totals (`queue.counts()`).
///
/// ```python
/// counts = queue.counts()
/// print(f"{counts.pending} pending, {counts.active} running, {counts.dead} dead")
/// ```
#[pyclass(frozen, get_all, module = "ostq")]
pub(crate) struct QueueCounts {
    /// The queue.
    queue: String,
    /// Ready to run.
    pending: u64,
    /// Leased by workers.
    active: u64,
    /// Waiting for their run-at time.
    scheduled: u64,
    /// Waiting for another attempt.
    retry: u64,
    /// Out of attempts.
    dead: u64,
    /// Completed tracked jobs within their retention.
    completed: u64,
    /// Attempts that finished, successful or not, since the queue began.
    processed_total: u64,
    /// Attempts that failed.
    failed_total: u64,
    /// Jobs taken back from workers whose leases expired.
    recovered_total: u64,
    /// Whether workers are told not to fetch.
    paused: bool,
}

#[pymethods]
impl QueueCounts {
    /// Failed over processed attempts since the queue began; `None` before the first attempt.
    #[getter]
    fn failure_rate(&self) -> Option<f64> {
        (self.processed_total > 0).then(|| self.failed_total as f64 / self.processed_total as f64)
    }

    fn __repr__(&self) -> String {
        format!(
            "QueueCounts(queue={:?}, pending={}, active={}, scheduled={}, retry={}, dead={}, completed={})",
            self.queue, self.pending, self.active, self.scheduled, self.retry, self.dead, self.completed
        )
    }
}

impl From<ostq::QueueCounts> for QueueCounts {
    fn from(c: ostq::QueueCounts) -> Self {
        Self {
            queue: c.queue,
            pending: c.pending,
            active: c.active,
            scheduled: c.scheduled,
            retry: c.retry,
            dead: c.dead,
            completed: c.completed,
            processed_total: c.processed_total,
            failed_total: c.failed_total,
            recovered_total: c.recovered_total,
            paused: c.paused,
        }
    }
}

/// Why an attempt failed and what happens next: what `on_error(job, failure)` receives.
///
/// ```python
/// def on_error(job: ostq.Job, failure: ostq.Failure) -> None:
///     when = "for good" if failure.dead else f"retry in {failure.retry_in:.1f} s"
///     print(f"job {job.id} failed ({when}): {failure.error}")
/// ```
#[pyclass(frozen, get_all, module = "ostq")]
pub(crate) struct Failure {
    /// The error text (for a Python handler, the traceback).
    error: String,
    /// Whether the job went to the dead set.
    dead: bool,
    /// Seconds until the next attempt, when there is one.
    retry_in: Option<f64>,
}

#[pymethods]
impl Failure {
    fn __repr__(&self) -> String {
        format!(
            "Failure(dead={}, retry_in={:?}, error={:?})",
            self.dead, self.retry_in, self.error
        )
    }
}

impl From<&ostq::Failure> for Failure {
    fn from(failure: &ostq::Failure) -> Self {
        Self {
            error: failure.error.clone(),
            dead: failure.dead,
            retry_in: failure.retry_in.map(convert::seconds),
        }
    }
}
