//! Workers with Python handlers. The Rust library's worker does all the queue work (fetching,
//! leases, renewal, retries, outcomes, recovery, graceful shutdown); this file hands each job to
//! Python and brings back how it ended:
//!
//! - plain functions run on a pool of Python threads (at most `concurrency`), which hold the
//!   GIL only while Python code runs: waiting on Redis happens in Rust, without it;
//! - coroutine functions run as tasks on an asyncio loop (the running one under
//!   `run_async()`, a private one on a thread of its own under `run()`); jobs are handed over in
//!   batches, one `call_soon_threadsafe` per batch.
//!
//! Dispatch by task name happens here (`@worker.task(name)`), with the library's wording for a
//! job no handler claims.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyCFunction, PyDict, PyTuple};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::convert;
use crate::errors::{config_error, to_py_err};
use crate::job::{Failure, Job};
use crate::runtime::{runtime, SIGNAL_CHECK};

/// What a Python handler's attempt came to, in the library's terms.
type Outcome = Result<Option<Vec<u8>>, ostq::BoxError>;

/// A worker's settings, checked when the worker is made.
pub(crate) struct WorkerSettings {
    concurrency: usize,
    lease: Option<Duration>,
    /// `Some(None)`: no time limit (`timeout=math.inf`).
    timeout: Option<Option<Duration>>,
    shutdown_timeout: Option<Duration>,
    monitor_interval: Duration,
    max_attempts: Option<u32>,
    backoff: Option<ostq::RetryPolicy>,
}

impl WorkerSettings {
    pub(crate) fn new(
        concurrency: usize,
        lease: Option<Bound<'_, PyAny>>,
        timeout: Option<Bound<'_, PyAny>>,
        shutdown_timeout: Option<Bound<'_, PyAny>>,
        monitor_interval: Option<Bound<'_, PyAny>>,
        max_attempts: Option<u32>,
        backoff: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let seconds = |value: &Option<Bound<'_, PyAny>>, what| {
            value
                .as_ref()
                .map(|v| convert::duration(v, what))
                .transpose()
        };
        let timeout = match &timeout {
            Some(value) if value.extract::<f64>().is_ok_and(f64::is_infinite) => Some(None),
            other => seconds(other, "timeout")?.map(Some),
        };
        let backoff = match &backoff {
            None => None,
            Some(value) => Some(retry_policy(value)?),
        };
        Ok(Self {
            concurrency,
            lease: seconds(&lease, "lease")?,
            timeout,
            shutdown_timeout: seconds(&shutdown_timeout, "shutdown_timeout")?,
            monitor_interval: seconds(&monitor_interval, "monitor_interval")?
                .unwrap_or(Duration::from_secs(10)),
            max_attempts,
            backoff,
        })
    }
}

/// `backoff=`: seconds for a fixed wait, or `(base, max)` for exponential backoff with jitter.
fn retry_policy(value: &Bound<'_, PyAny>) -> PyResult<ostq::RetryPolicy> {
    if let Ok((base, max)) = value.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>() {
        return Ok(ostq::RetryPolicy::exponential(
            convert::duration(&base, "backoff base")?,
            convert::duration(&max, "backoff max")?,
        ));
    }
    Ok(ostq::RetryPolicy::fixed(convert::duration(
        value, "backoff",
    )?))
}

/// A registered Python handler.
struct PyHandler {
    function: Py<PyAny>,
    /// `async def`: runs on the event loop.
    coroutine: bool,
    /// For task handlers: called as `f(params, job)` rather than `f(params)`.
    takes_job: bool,
}

impl PyHandler {
    fn new(function: &Bound<'_, PyAny>) -> PyResult<Self> {
        if !function.is_callable() {
            return Err(config_error(format!(
                "a handler must be callable, not {}",
                convert::type_name(function)
            )));
        }
        let py = function.py();
        Ok(Self {
            function: function.clone().unbind(),
            coroutine: support(py, "is_coroutine_function")?
                .call1((function,))?
                .extract()?,
            takes_job: support(py, "takes_job")?.call1((function,))?.extract()?,
        })
    }
}

/// A helper of `ostq._support`, imported once.
fn support<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || py.import("ostq._support").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

/// Why a job has no handler here: an unknown task name retries, a job without a name (which
/// only a default handler can run) dies at once, as in the library.
enum Unhandled {
    Retry(String),
    Dead(String),
}

/// The handlers a worker dispatches to.
#[derive(Default)]
struct Handlers {
    default: Option<Arc<PyHandler>>,
    tasks: BTreeMap<String, Arc<PyHandler>>,
}

impl Handlers {
    /// The handler of a job and whether it is a task handler (params as JSON), or why there is
    /// none, in the library's words.
    fn pick(&self, name: Option<&str>) -> Result<(Arc<PyHandler>, bool), Unhandled> {
        if let Some(handler) = name.and_then(|name| self.tasks.get(name)) {
            return Ok((handler.clone(), true));
        }
        match (&self.default, name) {
            (Some(handler), _) => Ok((handler.clone(), false)),
            (None, Some(name)) => {
                let known: Vec<&str> = self.tasks.keys().map(String::as_str).collect();
                Err(Unhandled::Retry(format!(
                    "no handler for task '{name}' (this worker handles: {})",
                    known.join(", ")
                )))
            }
            (None, None) => Err(Unhandled::Dead(
                "job has no task name and this worker has no default handler".to_string(),
            )),
        }
    }

    fn any(&self, wanted: impl Fn(&PyHandler) -> bool) -> bool {
        self.default
            .iter()
            .chain(self.tasks.values())
            .any(|h| wanted(h))
    }
}

/// One job handed to Python, and where its outcome goes.
struct Call {
    job: ostq::Job,
    handler: Arc<PyHandler>,
    as_task: bool,
    reply: oneshot::Sender<Outcome>,
    /// For a coroutine: where the drain puts its asyncio task, for [`CancelOnDrop`].
    task: Option<Arc<TaskSlot>>,
}

/// A coroutine handler's asyncio task, once it has one.
type TaskSlot = Mutex<Option<Py<PyAny>>>;

/// Cancels a coroutine handler's task when the worker stops waiting for it (the attempt timed
/// out, or shutdown gave the job back): a coroutine is cancellable, as a Rust future is by
/// being dropped. Disarmed once the handler has answered.
struct CancelOnDrop {
    task: Arc<TaskSlot>,
    event_loop: Arc<Py<PyAny>>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return; // not started: the drain sees the closed reply and skips the job
        };
        Python::attach(|py| {
            let cancel = task.bind(py).getattr("cancel");
            if let Ok(cancel) = cancel {
                // Err: the loop is closed, and the task with it.
                let _ = self
                    .event_loop
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (cancel,));
            }
        });
    }
}

impl Call {
    /// The handler's arguments: `(job,)`, or `(params,)` / `(params, job)` for a task. A task
    /// whose payload is not JSON fails for good, as a Rust task whose payload does not decode.
    fn arguments<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyTuple>, Outcome> {
        let job = Bound::new(
            py,
            Job {
                inner: self.job.clone(),
            },
        )
        .map_err(|e| Err(error_text(py, &e).into()))?;
        let arguments = if self.as_task {
            let params = convert::from_json(py, &self.job.payload).map_err(|e| {
                let name = self.job.name.as_deref().unwrap_or_default();
                let reason = format!("cannot decode payload of task '{name}': {}", e.value(py));
                Err(Box::new(ostq::Permanent::new(reason)) as ostq::BoxError)
            })?;
            if self.handler.takes_job {
                PyTuple::new(py, [params, job.into_any()])
            } else {
                PyTuple::new(py, [params])
            }
        } else {
            PyTuple::new(py, [job.into_any()])
        };
        arguments.map_err(|e| Err(error_text(py, &e).into()))
    }
}

/// An exception as a failed attempt: its traceback is the job's error; `ostq.Permanent` sends
/// the job to the dead set without the remaining retries.
fn failed(py: Python<'_>, error: &PyErr) -> Outcome {
    let text = error_text(py, error);
    let permanent = crate::errors::class(py, "Permanent")
        .map(|permanent| error.is_instance(py, &permanent))
        .unwrap_or(false);
    if permanent {
        Err(Box::new(ostq::Permanent::new(text)))
    } else {
        Err(text.into())
    }
}

fn error_text(py: Python<'_>, error: &PyErr) -> String {
    support(py, "format_exception")
        .and_then(|format| format.call1((error.value(py), error.traceback(py))))
        .and_then(|text| text.extract::<String>())
        .unwrap_or_else(|_| error.to_string())
}

/// A plain function's attempt, on a pool thread with the GIL.
fn run_plain(py: Python<'_>, call: Call) {
    if call.reply.is_closed() {
        return; // timed out or given back at shutdown before it started: nobody waits for it
    }
    let outcome = match call.arguments(py) {
        Ok(arguments) => match call.handler.function.bind(py).call1(arguments) {
            Ok(value) => convert::output(&value).map_err(|e| error_text(py, &e).into()),
            Err(error) => failed(py, &error),
        },
        Err(refused) => refused,
    };
    let _ = call.reply.send(outcome);
}

/// How long a handler may hold a pool thread before the pool starts another one for the jobs
/// waiting behind it.
const BLOCKED_AFTER: Duration = Duration::from_millis(5);

/// The threads that run plain functions. One thread runs jobs back to back while it holds the
/// GIL (no hand-over between threads per job, which costs more than a short handler); another
/// is started whenever jobs wait and every thread has been inside one handler for longer than
/// [`BLOCKED_AFTER`] (a handler sleeping or blocked on I/O), up to `concurrency` threads.
#[derive(Clone)]
struct ThreadPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    state: Mutex<PoolState>,
    /// Idle threads wait here for jobs.
    ready: Condvar,
    limit: usize,
    /// When the pool started: the clock of `Runner::started_at`.
    epoch: Instant,
}

#[derive(Default)]
struct PoolState {
    queue: VecDeque<Call>,
    idle: usize,
    runners: Vec<Arc<Runner>>,
    threads: Vec<JoinHandle<()>>,
    closed: bool,
}

/// One pool thread, as the others see it.
#[derive(Default)]
struct Runner {
    /// Microseconds since the pool's epoch at which its current handler started; 0 between jobs.
    started_at: AtomicU64,
}

impl ThreadPool {
    fn new(limit: usize) -> Self {
        let pool = Self {
            inner: Arc::new(PoolInner {
                state: Mutex::default(),
                ready: Condvar::new(),
                limit: limit.max(1),
                epoch: Instant::now(),
            }),
        };
        // The watchdog: jobs waiting behind handlers that block get threads of their own.
        let watched = pool.clone();
        runtime().spawn(async move {
            loop {
                tokio::time::sleep(BLOCKED_AFTER).await;
                let mut state = watched.state();
                if state.closed {
                    return;
                }
                watched.grow(&mut state);
            }
        });
        pool
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now_micros(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn submit(&self, call: Call) {
        let mut state = self.state();
        if state.closed {
            return; // the reply is dropped with the call: the job fails and is retried
        }
        state.queue.push_back(call);
        if state.idle > 0 {
            self.inner.ready.notify_one();
        } else {
            self.grow(&mut state);
        }
    }

    /// Starts threads for waiting jobs: the first one, or more while every thread is blocked.
    fn grow(&self, state: &mut PoolState) {
        let now = self.now_micros();
        let blocked_after = BLOCKED_AFTER.as_micros() as u64;
        let blocked = |runner: &Arc<Runner>| {
            let started = runner.started_at.load(Ordering::Acquire);
            started != 0 && now.saturating_sub(started) >= blocked_after
        };
        let mut wanted = state.queue.len().saturating_sub(state.idle);
        if !state.runners.iter().all(blocked) {
            // A thread is free or about to be: it takes the next job.
            wanted = wanted.min(usize::from(state.runners.is_empty()));
        }
        while wanted > 0 && state.runners.len() < self.inner.limit {
            let runner = Arc::new(Runner::default());
            let pool = self.clone();
            let mine = runner.clone();
            let spawned = std::thread::Builder::new()
                .name("ostq-handler".into())
                .spawn(move || pool.run_jobs(&mine));
            match spawned {
                Ok(thread) => {
                    state.runners.push(runner);
                    state.threads.push(thread);
                }
                // No thread to be had now: the watchdog tries again; with none at all, the jobs
                // wait until one can be started.
                Err(_) => break,
            }
            wanted -= 1;
        }
    }

    /// A pool thread: takes jobs (without the GIL) and runs them back to back (with it).
    fn run_jobs(&self, runner: &Runner) {
        while let Some(first) = self.next_call() {
            Python::attach(|py| {
                let mut call = Some(first);
                while let Some(current) = call.take() {
                    runner
                        .started_at
                        .store(self.now_micros().max(1), Ordering::Release);
                    run_plain(py, current);
                    runner.started_at.store(0, Ordering::Release);
                    call = self.state().queue.pop_front();
                }
            });
        }
    }

    /// The next job, waiting for one; `None` once the pool is shut and drained.
    fn next_call(&self) -> Option<Call> {
        let mut state = self.state();
        loop {
            if let Some(call) = state.queue.pop_front() {
                return Some(call);
            }
            if state.closed {
                return None;
            }
            state.idle += 1;
            state = self
                .inner
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
        }
    }

    /// Closes the pool and waits for its threads to finish what they hold (call it without the
    /// GIL: they need it to finish).
    fn shut(&self) {
        let threads = {
            let mut state = self.state();
            state.closed = true;
            std::mem::take(&mut state.threads)
        };
        self.inner.ready.notify_all();
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// The asyncio side: jobs for coroutine handlers, handed to the loop in batches.
struct Bridge {
    event_loop: Arc<Py<PyAny>>,
    calls: crossbeam_channel::Sender<Call>,
    drain: Py<Drain>,
    wake_pending: Arc<AtomicBool>,
}

impl Bridge {
    fn new(py: Python<'_>, event_loop: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (calls, receiver) = crossbeam_channel::unbounded();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let drain = Py::new(
            py,
            Drain {
                event_loop: event_loop.clone().unbind(),
                calls: receiver,
                wake_pending: wake_pending.clone(),
            },
        )?;
        Ok(Self {
            event_loop: Arc::new(event_loop.clone().unbind()),
            calls,
            drain,
            wake_pending,
        })
    }

    fn submit(&self, call: Call) {
        if self.calls.send(call).is_err() {
            return;
        }
        // One wake-up of the loop per batch: the drain clears the flag before it takes jobs.
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            Python::attach(|py| {
                let scheduled = self
                    .event_loop
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (self.drain.bind(py),));
                if scheduled.is_err() {
                    // The loop is closed: fail what waits, so the worker's shutdown gives it back.
                    self.wake_pending.store(false, Ordering::Release);
                    self.drain
                        .get()
                        .fail_all("the asyncio event loop is closed");
                }
            });
        }
    }
}

/// Runs on the event loop: starts a task for every job waiting.
#[pyclass(frozen)]
struct Drain {
    event_loop: Py<PyAny>,
    calls: crossbeam_channel::Receiver<Call>,
    wake_pending: Arc<AtomicBool>,
}

impl Drain {
    fn fail_all(&self, reason: &str) {
        while let Ok(call) = self.calls.try_recv() {
            let _ = call.reply.send(Err(reason.into()));
        }
    }
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        self.wake_pending.store(false, Ordering::Release);
        let event_loop = self.event_loop.bind(py);
        while let Ok(call) = self.calls.try_recv() {
            if call.reply.is_closed() {
                continue;
            }
            let arguments = match call.arguments(py) {
                Ok(arguments) => arguments,
                Err(refused) => {
                    let _ = call.reply.send(refused);
                    continue;
                }
            };
            let started = call
                .handler
                .function
                .bind(py)
                .call1(arguments)
                .and_then(|coroutine| event_loop.call_method1("create_task", (coroutine,)));
            match started {
                Ok(task) => {
                    if let Some(slot) = &call.task {
                        *slot.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(task.clone().unbind());
                    }
                    if call.reply.is_closed() {
                        // Given up on between the check above and now: stop it at once.
                        let _ = task.call_method0("cancel");
                    }
                    let completion = Completion {
                        reply: Mutex::new(Some(call.reply)),
                    };
                    let added = Py::new(py, completion).and_then(|completion| {
                        task.call_method1("add_done_callback", (completion,))
                    });
                    if let Err(error) = added {
                        error.write_unraisable(py, Some(&task));
                    }
                }
                Err(error) => {
                    let _ = call.reply.send(failed(py, &error));
                }
            }
        }
    }
}

/// A coroutine handler's task is done: its outcome goes back to the worker.
#[pyclass(frozen)]
struct Completion {
    reply: Mutex<Option<oneshot::Sender<Outcome>>>,
}

#[pymethods]
impl Completion {
    fn __call__(&self, task: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = task.py();
        let Some(reply) = self
            .reply
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return Ok(());
        };
        let outcome = if task.call_method0("cancelled")?.is_truthy()? {
            Err("the handler's task was cancelled".into())
        } else {
            let exception = task.call_method0("exception")?;
            if exception.is_none() {
                convert::output(&task.call_method0("result")?)
                    .map_err(|e| error_text(py, &e).into())
            } else {
                failed(py, &PyErr::from_value(exception))
            }
        };
        let _ = reply.send(outcome);
        Ok(())
    }
}

/// Where a worker's jobs go: the threads, the loop, or both.
struct Dispatch {
    handlers: Handlers,
    threads: Option<ThreadPool>,
    bridge: Option<Bridge>,
}

impl Dispatch {
    async fn run(self: Arc<Self>, job: ostq::Job) -> Outcome {
        let (handler, as_task) = self
            .handlers
            .pick(job.name.as_deref())
            .map_err(|unhandled| match unhandled {
                // An ordinary failure that retries, as in the library: in a rolling deploy the
                // next worker may know the name.
                Unhandled::Retry(reason) => ostq::BoxError::from(reason),
                Unhandled::Dead(reason) => Box::new(ostq::Permanent::new(reason)),
            })?;
        let (reply, outcome) = oneshot::channel();
        let mut call = Call {
            job,
            handler,
            as_task,
            reply,
            task: None,
        };
        let mut guard = None;
        match (call.handler.coroutine, &self.threads, &self.bridge) {
            (true, _, Some(bridge)) => {
                let task = Arc::new(TaskSlot::default());
                call.task = Some(task.clone());
                guard = Some(CancelOnDrop {
                    task,
                    event_loop: bridge.event_loop.clone(),
                    armed: true,
                });
                bridge.submit(call);
            }
            (false, Some(threads), _) => threads.submit(call),
            _ => return Err("no way to run this handler (worker misconfigured)".into()),
        }
        let outcome = outcome
            .await
            .unwrap_or_else(|_| Err("the handler was not run: the worker is stopping".into()));
        if let Some(guard) = guard.as_mut() {
            guard.armed = false;
        }
        outcome
    }
}

/// A worker serving one queue with Python handlers, made by `queue.worker(...)`.
///
/// `run()` blocks until ctrl-c, SIGTERM or `stop()`; `await run_async()` runs on the current
/// event loop until cancelled, SIGTERM or `stop()`. Either way it shuts down gracefully: no more
/// fetching, running jobs get `shutdown_timeout` to finish, the others go back to the queue at
/// once. A worker killed outright (SIGKILL) loses nothing either: its jobs run again on any
/// worker, Python or Rust, once their lease runs out.
///
/// ```python
/// worker = client.queue("tasks").worker(concurrency=8)
///
/// @worker.task("generate_log_file")
/// def generate_log_file(params):
///     return {"lines": write_log(params["date"])}  # the result, as JSON, for tracked jobs
///
/// worker.run()
/// ```
#[pyclass(frozen, module = "ostq")]
pub(crate) struct Worker {
    client: ostq::Client,
    queue: String,
    handlers: Mutex<Handlers>,
    on_error: Option<Py<PyAny>>,
    on_monitor: Option<Py<PyAny>>,
    settings: WorkerSettings,
    /// The running worker's stop signal; `None` while it is not running.
    running: Mutex<Option<CancellationToken>>,
}

impl Worker {
    pub(crate) fn new(
        client: ostq::Client,
        queue: String,
        handler: Option<Bound<'_, PyAny>>,
        on_error: Option<Bound<'_, PyAny>>,
        on_monitor: Option<Bound<'_, PyAny>>,
        settings: WorkerSettings,
    ) -> PyResult<Self> {
        for (hook, what) in [(&on_error, "on_error"), (&on_monitor, "on_monitor")] {
            if let Some(hook) = hook {
                if !hook.is_callable() {
                    return Err(config_error(format!("{what} must be callable")));
                }
            }
        }
        let handlers = Handlers {
            default: handler
                .as_ref()
                .map(PyHandler::new)
                .transpose()?
                .map(Arc::new),
            tasks: BTreeMap::new(),
        };
        Ok(Self {
            client,
            queue,
            handlers: Mutex::new(handlers),
            on_error: on_error.map(Bound::unbind),
            on_monitor: on_monitor.map(Bound::unbind),
            settings,
            running: Mutex::new(None),
        })
    }

    fn handlers(&self) -> std::sync::MutexGuard<'_, Handlers> {
        self.handlers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the worker running; refuses a second run at once.
    fn start(&self) -> PyResult<CancellationToken> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.is_some() {
            return Err(PyRuntimeError::new_err("this worker is already running"));
        }
        let token = CancellationToken::new();
        *running = Some(token.clone());
        Ok(token)
    }

    fn finish(&self) {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The library's worker, with its handler sending jobs to `dispatch`.
    fn build(&self, py: Python<'_>, dispatch: Arc<Dispatch>) -> PyResult<ostq::Worker> {
        let s = &self.settings;
        let mut builder = ostq::Worker::builder(self.client.clone())
            .queue(&self.queue)
            .concurrency(s.concurrency);
        if let Some(lease) = s.lease {
            builder = builder.lease(lease);
        }
        if let Some(timeout) = s.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(shutdown_timeout) = s.shutdown_timeout {
            builder = builder.shutdown_timeout(shutdown_timeout);
        }
        match (&s.backoff, s.max_attempts) {
            (Some(policy), Some(n)) => builder = builder.retry(policy.clone().max_attempts(n)),
            (Some(policy), None) => builder = builder.retry(policy.clone()),
            (None, Some(n)) => {
                builder = builder.retry(ostq::RetryPolicy::default().max_attempts(n))
            }
            (None, None) => {}
        }
        builder = builder.handler(move |job: ostq::Job| dispatch.clone().run(job));
        if let Some(hook) = &self.on_error {
            let hook = hook.clone_ref(py);
            builder = builder.on_error(move |job, failure| call_error_hook(&hook, job, failure));
        }
        if let Some(hook) = &self.on_monitor {
            let hook = hook.clone_ref(py);
            builder = builder.on_monitor(s.monitor_interval, move |report| {
                call_monitor_hook(&hook, report)
            });
        }
        builder.build().map_err(to_py_err)
    }

    /// The dispatch for a run: a thread pool if any handler is a plain function, a bridge to
    /// `event_loop` if any is a coroutine function.
    fn dispatch(
        &self,
        py: Python<'_>,
        event_loop: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Dispatch> {
        let handlers = self.handlers();
        if handlers.default.is_none() && handlers.tasks.is_empty() {
            return Err(config_error(
                "a worker needs a handler or at least one @worker.task",
            ));
        }
        let snapshot = Handlers {
            default: handlers.default.clone(),
            tasks: handlers.tasks.clone(),
        };
        let threads = snapshot
            .any(|h| !h.coroutine)
            .then(|| ThreadPool::new(self.settings.concurrency));
        let bridge = match (snapshot.any(|h| h.coroutine), event_loop) {
            (true, Some(event_loop)) => Some(Bridge::new(py, event_loop)?),
            (true, None) => {
                return Err(config_error("coroutine handlers need an event loop"));
            }
            (false, _) => None,
        };
        Ok(Dispatch {
            handlers: snapshot,
            threads,
            bridge,
        })
    }

    fn needs_loop(&self) -> bool {
        self.handlers().any(|h| h.coroutine)
    }
}

fn call_error_hook(hook: &Py<PyAny>, job: &ostq::Job, failure: &ostq::Failure) {
    // Off the runtime's worker role: the hook may use the sync API (push to another queue, say),
    // which blocks on the runtime, and waiting for the GIL must not hold up other tasks.
    tokio::task::block_in_place(|| {
        Python::attach(|py| {
            let job = Job { inner: job.clone() };
            if let Err(error) = hook.bind(py).call1((job, Failure::from(failure))) {
                error.write_unraisable(py, Some(hook.bind(py)));
            }
        })
    });
}

fn call_monitor_hook(hook: &Py<PyAny>, report: &ostq::worker::MonitorReport) {
    let Ok(json) = serde_json::to_vec(report) else {
        return;
    };
    // As for the error hook: the monitor hook may block and use the sync API.
    tokio::task::block_in_place(|| {
        Python::attach(|py| {
            let called =
                convert::from_json(py, &json).and_then(|report| hook.bind(py).call1((report,)));
            if let Err(error) = called {
                error.write_unraisable(py, Some(hook.bind(py)));
            }
        })
    });
}

/// An event loop on a thread of its own, for coroutine handlers under the blocking `run()`.
struct PrivateLoop {
    event_loop: Py<PyAny>,
    thread: JoinHandle<()>,
}

impl PrivateLoop {
    fn start(py: Python<'_>) -> PyResult<Self> {
        let event_loop = py
            .import("asyncio")?
            .call_method0("new_event_loop")?
            .unbind();
        let running = event_loop.clone_ref(py);
        let thread = std::thread::Builder::new()
            .name("ostq-asyncio".into())
            .spawn(move || {
                Python::attach(|py| {
                    let event_loop = running.bind(py);
                    if let Err(error) = event_loop.call_method0("run_forever") {
                        error.write_unraisable(py, Some(event_loop));
                    }
                    let _ = event_loop.call_method0("close");
                })
            })
            .map_err(|e| {
                PyRuntimeError::new_err(format!("cannot start the asyncio thread: {e}"))
            })?;
        Ok(Self { event_loop, thread })
    }

    fn stop(self, py: Python<'_>) {
        let event_loop = self.event_loop.bind(py);
        if let Ok(stop) = event_loop.getattr("stop") {
            let _ = event_loop.call_method1("call_soon_threadsafe", (stop,));
        }
        let thread = self.thread;
        py.detach(|| {
            let _ = thread.join();
        });
    }
}

/// SIGTERM stops the worker gracefully while `run()` runs on the main thread; the handler that
/// was there before comes back afterwards.
struct SigtermGuard {
    previous: Option<Py<PyAny>>,
}

impl SigtermGuard {
    fn install(py: Python<'_>, token: CancellationToken) -> PyResult<Self> {
        let threading = py.import("threading")?;
        let main = threading.call_method0("main_thread")?;
        if !threading.call_method0("current_thread")?.is(&main) {
            return Ok(Self { previous: None });
        }
        let signal = py.import("signal")?;
        let sigterm = signal.getattr("SIGTERM")?;
        let handler = PyCFunction::new_closure(
            py,
            None,
            None,
            move |_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>| {
                token.cancel();
            },
        )?;
        let previous = signal.call_method1("getsignal", (&sigterm,))?;
        // None: a handler Python did not install; SIG_DFL is what it comes back to.
        let previous = if previous.is_none() {
            signal.getattr("SIG_DFL")?
        } else {
            previous
        };
        signal.call_method1("signal", (&sigterm, handler))?;
        Ok(Self {
            previous: Some(previous.unbind()),
        })
    }

    fn restore(self, py: Python<'_>) -> PyResult<()> {
        if let Some(previous) = self.previous {
            let signal = py.import("signal")?;
            signal.call_method1("signal", (signal.getattr("SIGTERM")?, previous))?;
        }
        Ok(())
    }
}

#[pymethods]
impl Worker {
    /// Registers `handler` for jobs named `name` (`queue.enqueue(name, params)`, or a Rust
    /// `Task` whose `NAME` it is); it is called with the params decoded from JSON, and the job
    /// too if it takes two arguments. Without `handler`, returns a decorator. Register tasks
    /// before `run()`: a run dispatches on the tasks it started with.
    ///
    /// ```python
    /// @worker.task("generate_log_file")
    /// def generate_log_file(params, job):
    ///     job.progress(50)
    ///     return "done"
    /// ```
    #[pyo3(signature = (name, handler = None))]
    fn task(
        slf: &Bound<'_, Self>,
        name: &str,
        handler: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        if name.is_empty() {
            return Err(config_error("a task name must not be empty"));
        }
        match handler {
            Some(handler) => {
                let registered = PyHandler::new(&handler)?;
                slf.get()
                    .handlers()
                    .tasks
                    .insert(name.to_string(), Arc::new(registered));
                Ok(handler.unbind())
            }
            None => Ok(Py::new(
                slf.py(),
                TaskDecorator {
                    worker: slf.clone().unbind(),
                    name: name.to_string(),
                },
            )?
            .into_any()),
        }
    }

    /// The task names this worker dispatches on.
    #[getter]
    fn tasks(&self) -> Vec<String> {
        self.handlers().tasks.keys().cloned().collect()
    }

    /// Whether the worker is running.
    #[getter]
    fn running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Asks a running worker to shut down gracefully (from a handler, a hook, a signal handler or
    /// another thread); `run()` returns once it has.
    fn stop(&self) {
        if let Some(token) = &*self.running.lock().unwrap_or_else(PoisonError::into_inner) {
            token.cancel();
        }
    }

    /// Runs the worker until ctrl-c, SIGTERM or `stop()`, then shuts down gracefully and returns.
    /// Blocks the calling thread; plain handlers run on the worker's threads, coroutine handlers
    /// on a private event loop.
    ///
    /// ```python
    /// worker.run()
    /// ```
    fn run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let me = slf.get();
        let token = me.start()?;
        let outcome = me.run_blocking(py, token);
        me.finish();
        outcome
    }

    /// Runs the worker on the running asyncio loop until the awaiting task is cancelled,
    /// SIGTERM or `stop()`; each shuts it down gracefully. Coroutine handlers run on this loop,
    /// plain ones on the worker's threads.
    ///
    /// ```python
    /// async def main():
    ///     worker = ostq.AsyncClient().queue("tasks").worker(handle)
    ///     await worker.run_async()
    /// ```
    fn run_async<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        support(slf.py(), "run_async")?.call1((slf,))
    }

    /// Starts the worker on `event_loop` and returns an awaitable of its end: the engine of
    /// `run_async` (which shields it so that a cancellation shuts down gracefully).
    fn _start_async<'py>(
        slf: &Bound<'py, Self>,
        event_loop: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let me = slf.get();
        let token = me.start()?;
        let started = me
            .dispatch(py, Some(event_loop))
            .map(Arc::new)
            .and_then(|dispatch| Ok((me.build(py, dispatch.clone())?, dispatch)));
        let (worker, dispatch) = match started {
            Ok(started) => started,
            Err(error) => {
                me.finish();
                return Err(error);
            }
        };
        let owner = slf.clone().unbind();
        let run = runtime().spawn(worker.run_until(token.cancelled_owned()));
        crate::runtime::awaitable_py(py, async move {
            let ended = run.await;
            // The pool threads finish what they hold; joined off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || shut_dispatch(dispatch)).await;
            Python::attach(|py| owner.bind(py).get().finish());
            match ended {
                Ok(result) => result.map_err(to_py_err),
                Err(panic) => Err(PyRuntimeError::new_err(format!(
                    "the worker panicked: {panic}"
                ))),
            }
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Worker(queue={:?}, tasks={:?}, running={})",
            self.queue,
            self.tasks(),
            self.running()
        )
    }
}

/// Waits for the pool threads of a finished run.
fn shut_dispatch(dispatch: Arc<Dispatch>) {
    if let Some(threads) = &dispatch.threads {
        threads.shut();
    }
}

impl Worker {
    fn run_blocking(&self, py: Python<'_>, token: CancellationToken) -> PyResult<()> {
        let private_loop = if self.needs_loop() {
            Some(PrivateLoop::start(py)?)
        } else {
            None
        };
        let event_loop = private_loop.as_ref().map(|l| l.event_loop.bind(py).clone());
        let built = self
            .dispatch(py, event_loop.as_ref())
            .map(Arc::new)
            .and_then(|dispatch| Ok((self.build(py, dispatch.clone())?, dispatch)));
        let (worker, dispatch) = match built {
            Ok(built) => built,
            Err(error) => {
                if let Some(private_loop) = private_loop {
                    private_loop.stop(py);
                }
                return Err(error);
            }
        };
        let sigterm = SigtermGuard::install(py, token.clone())?;
        let mut run = runtime().spawn(worker.run_until(token.clone().cancelled_owned()));
        let mut raised: Option<PyErr> = None;
        let ended = loop {
            let step = py.detach(|| {
                runtime().block_on(async { tokio::time::timeout(SIGNAL_CHECK, &mut run).await })
            });
            match step {
                Ok(ended) => break ended,
                Err(_still_running) => {
                    if let Err(error) = py.check_signals() {
                        // ctrl-c (or a signal handler's exception): shut down gracefully first.
                        token.cancel();
                        raised.get_or_insert(error);
                    }
                }
            }
        };
        py.detach(|| shut_dispatch(dispatch));
        if let Some(private_loop) = private_loop {
            private_loop.stop(py);
        }
        sigterm.restore(py)?;
        match ended {
            Ok(result) => result.map_err(to_py_err)?,
            Err(panic) => {
                return Err(PyRuntimeError::new_err(format!(
                    "the worker panicked: {panic}"
                )))
            }
        }
        match raised {
            // ctrl-c is how a worker is meant to stop: a clean return, as in Rust.
            Some(error) if error.is_instance_of::<PyKeyboardInterrupt>(py) => Ok(()),
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// What `@worker.task(name)` returns: registers the function it decorates and gives it back.
#[pyclass(frozen, module = "ostq")]
pub(crate) struct TaskDecorator {
    worker: Py<Worker>,
    name: String,
}

#[pymethods]
impl TaskDecorator {
    fn __call__(&self, py: Python<'_>, handler: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        Worker::task(self.worker.bind(py), &self.name, Some(handler))
    }
}
