//! Clients and queue handles, sync ([`Client`], [`Queue`]) and asyncio ([`AsyncClient`],
//! [`AsyncQueue`]). Each operation is written once, as a future of the library's
//! ([`operations`]); the sync methods wait for it with the GIL released, the async ones return
//! it as an awaitable.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3::IntoPyObjectExt;

use crate::convert::{self, PushArgs};
use crate::errors::{config_error, to_py_err};
use crate::events::{AsyncEvents, Events};
use crate::job::{JobInfo, QueueCounts};
use crate::runtime::{awaitable, wait};
use crate::worker::{Worker, WorkerSettings};

/// The default URL: a Redis on this machine.
const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Connects as the library does: `url` is anything `ostq::Client::connect` takes.
fn builder(
    url: &str,
    ca_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    lazy: bool,
    durable: Option<&str>,
) -> PyResult<ostq::connection::ClientBuilder> {
    let mut builder = ostq::Client::builder(url);
    if let Some(ca_file) = ca_file {
        builder = builder.ca_file(ca_file);
    }
    match (client_cert, client_key) {
        (Some(cert), Some(key)) => builder = builder.client_cert(cert, key),
        (None, None) => {}
        _ => return Err(config_error("client_cert and client_key go together")),
    }
    if lazy {
        builder = builder.lazy();
    }
    if let Some(durable) = durable {
        // "1", "1:500ms", "aof:1", "none": what `ostq push --durable` takes.
        let durability: ostq::Durability = durable.parse().map_err(to_py_err)?;
        builder = builder.durability(durability);
    }
    Ok(builder)
}

/// A connection to Redis, for producing, inspecting and working. Takes every URL the Rust
/// client takes: `redis://[user:password@]host[:port][/db]`, `rediss://` (TLS),
/// `redis+sentinel://host:port[,host:port]/service`, `redis+cluster://host:port[,host:port…]`.
/// Connects at once (`ostq.ConnectionError` if Redis cannot be reached) unless `lazy=True`.
/// `durable="1"` (or `"1:500ms"`, `"aof:1"`) makes every push wait for that many replicas
/// (`WAIT`, in the push's round trip); fewer in time raises `ostq.NotDurable` (the job is on the
/// primary; see docs/operations.md).
///
/// ```python
/// import ostq
///
/// client = ostq.Client("redis://127.0.0.1:6379")
/// tasks = client.queue("tasks")
/// job_id = tasks.push("generate the report")
/// ```
#[pyclass(frozen, module = "ostq")]
pub(crate) struct Client {
    inner: ostq::Client,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (url = DEFAULT_URL, *, ca_file = None, client_cert = None, client_key = None, lazy = false, durable = None))]
    fn new(
        py: Python<'_>,
        url: &str,
        ca_file: Option<String>,
        client_cert: Option<String>,
        client_key: Option<String>,
        lazy: bool,
        durable: Option<&str>,
    ) -> PyResult<Self> {
        let builder = builder(url, ca_file, client_cert, client_key, lazy, durable)?;
        let inner = wait(py, builder.connect())?;
        Ok(Self { inner })
    }

    /// A handle on the queue `name` (1–200 bytes, no braces or whitespace; a bad name is
    /// reported by the first call that uses it).
    ///
    /// ```python
    /// videos = client.queue("videos")
    /// ```
    fn queue(&self, name: &str) -> Queue {
        Queue {
            inner: self.inner.queue(name),
            client: self.inner.clone(),
        }
    }

    /// The names of the queues ostq knows on this Redis.
    fn queues(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let client = self.inner.clone();
        wait(py, async move { client.queues().await })
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// The asyncio twin of [`Client`]: the same URLs and options, and queues whose methods are
/// coroutines. It connects on first use (no `await` in a constructor), so a wrong address is
/// reported by the first call.
///
/// ```python
/// client = ostq.AsyncClient("redis://127.0.0.1:6379")
/// job_id = await client.queue("tasks").push("generate the report")
/// ```
#[pyclass(frozen, module = "ostq")]
pub(crate) struct AsyncClient {
    inner: ostq::Client,
}

#[pymethods]
impl AsyncClient {
    #[new]
    #[pyo3(signature = (url = DEFAULT_URL, *, ca_file = None, client_cert = None, client_key = None, durable = None))]
    fn new(
        py: Python<'_>,
        url: &str,
        ca_file: Option<String>,
        client_cert: Option<String>,
        client_key: Option<String>,
        durable: Option<&str>,
    ) -> PyResult<Self> {
        // Lazy: only the options are checked here, nothing waits on the network.
        let builder = builder(url, ca_file, client_cert, client_key, true, durable)?;
        let inner = wait(py, builder.connect())?;
        Ok(Self { inner })
    }

    /// A handle on the queue `name` whose methods are coroutines.
    fn queue(&self, name: &str) -> AsyncQueue {
        AsyncQueue {
            inner: self.inner.queue(name),
            client: self.inner.clone(),
        }
    }

    /// The names of the queues ostq knows on this Redis.
    fn queues<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.inner.clone();
        awaitable(py, async move { client.queues().await }, |py, names| {
            names.into_py_any(py)
        })
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// The library's operations on a queue, written once for both APIs: each returns a future that
/// owns what it needs, so the sync API can wait for it and the async API can hand it to asyncio.
mod operations {
    use super::*;

    pub(super) fn push(
        queue: &ostq::Queue,
        payload: Vec<u8>,
        options: ostq::PushOptions,
    ) -> impl std::future::Future<Output = ostq::Result<String>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.push_with(payload, &options).await }
    }

    pub(super) fn push_bulk(
        queue: &ostq::Queue,
        payloads: Vec<Vec<u8>>,
        options: ostq::PushOptions,
    ) -> impl std::future::Future<Output = ostq::Result<Vec<String>>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.push_bulk_with(payloads, &options).await }
    }

    pub(super) fn job(
        queue: &ostq::Queue,
        id: String,
    ) -> impl std::future::Future<Output = ostq::Result<Option<ostq::JobInfo>>> + Send + 'static
    {
        let queue = queue.clone();
        async move { queue.job(&id).await }
    }

    pub(super) fn jobs(
        queue: &ostq::Queue,
        state: ostq::JobState,
        offset: usize,
        limit: usize,
    ) -> impl std::future::Future<Output = ostq::Result<Vec<ostq::JobInfo>>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.jobs(state, offset, limit).await }
    }

    pub(super) fn wait_for(
        queue: &ostq::Queue,
        id: String,
        timeout: Duration,
    ) -> impl std::future::Future<Output = ostq::Result<Option<Vec<u8>>>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.wait_for(&id, timeout).await }
    }

    pub(super) fn push_and_wait(
        queue: &ostq::Queue,
        payload: Vec<u8>,
        options: ostq::PushOptions,
        timeout: Duration,
    ) -> impl std::future::Future<Output = ostq::Result<Option<Vec<u8>>>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.push_and_wait(payload, options, timeout).await }
    }

    pub(super) fn counts(
        queue: &ostq::Queue,
    ) -> impl std::future::Future<Output = ostq::Result<ostq::QueueCounts>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.counts().await }
    }

    pub(super) fn set_events(
        queue: &ostq::Queue,
        sink: ostq::events::EventSink,
    ) -> impl std::future::Future<Output = ostq::Result<()>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.set_events(sink).await }
    }

    pub(super) fn cancel(
        queue: &ostq::Queue,
        id: String,
    ) -> impl std::future::Future<Output = ostq::Result<&'static str>> + Send + 'static {
        let queue = queue.clone();
        async move {
            Ok(match queue.cancel(&id).await? {
                ostq::Cancel::Removed => "removed",
                ostq::Cancel::Signalled => "signalled",
                ostq::Cancel::NotFound => "not_found",
            })
        }
    }

    pub(super) fn retry_all_dead(
        queue: &ostq::Queue,
    ) -> impl std::future::Future<Output = ostq::Result<u64>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.retry_all_dead().await }
    }

    pub(super) fn purge(
        queue: &ostq::Queue,
        state: Option<ostq::JobState>,
    ) -> impl std::future::Future<Output = ostq::Result<u64>> + Send + 'static {
        let queue = queue.clone();
        async move { queue.purge(state).await }
    }
}

/// The payloads of a bulk push, every one checked before anything is sent.
fn bulk_payloads(items: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u8>>> {
    let mut payloads = Vec::new();
    for (index, item) in items.try_iter()?.enumerate() {
        let item = item?;
        payloads.push(convert::payload(&item).map_err(|e| {
            crate::errors::payload_error(format!(
                "item {index} of the bulk push: {}",
                e.value(item.py())
            ))
        })?);
    }
    Ok(payloads)
}

/// A typed task's payload (its params as JSON) and options (its name).
fn task_job(
    name: &str,
    params: &Bound<'_, PyAny>,
    args: &PushArgs<'_>,
) -> PyResult<(Vec<u8>, ostq::PushOptions)> {
    if name.is_empty() {
        return Err(config_error("a task name must not be empty"));
    }
    let payload = convert::to_json(params, &format!("the params of task {name:?}"))?;
    let options = args.options()?.name(name);
    Ok((payload.into_bytes(), options))
}

fn event_sink(sink: &str) -> PyResult<ostq::events::EventSink> {
    use ostq::events::EventSink;
    match sink {
        "off" | "" => Ok(EventSink::Off),
        "pubsub" => Ok(EventSink::PubSub),
        "stream" => Ok(EventSink::Stream),
        "both" => Ok(EventSink::Both),
        other => Err(config_error(format!(
            "unknown event sink {other:?}: expected \"off\", \"pubsub\", \"stream\" or \"both\""
        ))),
    }
}

fn job_state(state: &str) -> PyResult<ostq::JobState> {
    state.parse().map_err(crate::errors::to_py_err)
}

fn infos(py: Python<'_>, infos: Vec<ostq::JobInfo>) -> PyResult<Py<PyAny>> {
    let infos: Vec<JobInfo> = infos.into_iter().map(|i| JobInfo::new(py, i)).collect();
    Ok(PyList::new(py, infos)?.into_any().unbind())
}

fn info(py: Python<'_>, info: Option<ostq::JobInfo>) -> PyResult<Py<PyAny>> {
    match info {
        Some(info) => JobInfo::new(py, info).into_py_any(py),
        None => Ok(py.None()),
    }
}

/// A named queue: push jobs, wait for their results, inspect it, and work it.
///
/// ```python
/// tasks = client.queue("tasks")
/// tasks.push("42")                                   # the Ost one-liner
/// tasks.push("43", delay=30, priority=5, max_attempts=3, track=True)
/// tasks.enqueue("generate_log_file", {"date": "2026-11-26"})
/// ```
#[pyclass(frozen, module = "ostq")]
pub(crate) struct Queue {
    inner: ostq::Queue,
    /// The queue's client, for what the library reaches through it (events, workers).
    client: ostq::Client,
}

#[pymethods]
impl Queue {
    /// The queue's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// Pushes one job; returns its id. `data` is bytes or str. Options: `id` (instead of a
    /// generated one), `name` (a task name for `@worker.task` dispatch), `delay` (seconds or a
    /// timedelta) or `at` (a datetime or Unix seconds), `priority` (-1000..1000, higher first),
    /// `max_attempts` (0: the worker's default), `track` (keep a status record and the result),
    /// `unique` (no second job with this key while one is queued or running), `unique_for`
    /// (hold the key this long instead) and `key` (an ordering key: on a sharded queue every job
    /// with one key goes to one shard, so they are fetched in push order).
    ///
    /// ```python
    /// job_id = tasks.push(b"42", track=True)
    /// ```
    #[pyo3(signature = (data, *, id = None, name = None, delay = None, at = None, priority = 0, max_attempts = 0, track = false, unique = None, unique_for = None, key = None))]
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        id: Option<String>,
        name: Option<String>,
        delay: Option<Bound<'_, PyAny>>,
        at: Option<Bound<'_, PyAny>>,
        priority: i32,
        max_attempts: u32,
        track: bool,
        unique: Option<String>,
        unique_for: Option<Bound<'_, PyAny>>,
        key: Option<String>,
    ) -> PyResult<String> {
        let args = PushArgs {
            id,
            name,
            delay,
            at,
            priority,
            max_attempts,
            track,
            unique,
            unique_for,
            key,
        };
        let options = args.options()?;
        let payload = convert::payload(data)?;
        wait(py, operations::push(&self.inner, payload, options))
    }

    /// Pushes many jobs sharing options (no `id` or `unique`), in few round trips; returns their
    /// ids in order. Every item is checked first: one bad item and nothing is pushed.
    ///
    /// ```python
    /// ids = tasks.push_bulk(str(n) for n in range(1000))
    /// ```
    #[pyo3(signature = (items, *, name = None, delay = None, at = None, priority = 0, max_attempts = 0, track = false, key = None))]
    #[allow(clippy::too_many_arguments)]
    fn push_bulk(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        name: Option<String>,
        delay: Option<Bound<'_, PyAny>>,
        at: Option<Bound<'_, PyAny>>,
        priority: i32,
        max_attempts: u32,
        track: bool,
        key: Option<String>,
    ) -> PyResult<Vec<String>> {
        let args = PushArgs {
            name,
            delay,
            at,
            priority,
            max_attempts,
            track,
            key,
            ..PushArgs::default()
        };
        let options = args.options()?;
        let payloads = bulk_payloads(items)?;
        wait(py, operations::push_bulk(&self.inner, payloads, options))
    }

    /// Enqueues a task for `@worker.task(name)` (in Python or Rust): `params` is sent as JSON,
    /// as the Rust library's typed tasks are. Same options as `push`.
    ///
    /// ```python
    /// tasks.enqueue("generate_log_file", {"date": "2026-11-26", "level": "error"})
    /// ```
    #[pyo3(signature = (name, params, *, id = None, delay = None, at = None, priority = 0, max_attempts = 0, track = false, unique = None, unique_for = None, key = None))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        py: Python<'_>,
        name: &str,
        params: &Bound<'_, PyAny>,
        id: Option<String>,
        delay: Option<Bound<'_, PyAny>>,
        at: Option<Bound<'_, PyAny>>,
        priority: i32,
        max_attempts: u32,
        track: bool,
        unique: Option<String>,
        unique_for: Option<Bound<'_, PyAny>>,
        key: Option<String>,
    ) -> PyResult<String> {
        let args = PushArgs {
            id,
            delay,
            at,
            priority,
            max_attempts,
            track,
            unique,
            unique_for,
            key,
            ..PushArgs::default()
        };
        let (payload, options) = task_job(name, params, &args)?;
        wait(py, operations::push(&self.inner, payload, options))
    }

    /// What is known about job `id`, or `None`. A pending job is found by scanning the pending
    /// list; tracked jobs are found by their status record, even once completed.
    fn job(&self, py: Python<'_>, id: String) -> PyResult<Option<JobInfo>> {
        let found = wait(py, operations::job(&self.inner, id))?;
        Ok(found.map(|found| JobInfo::new(py, found)))
    }

    /// The jobs in `state` ("scheduled", "pending", "active", "completed", "retry" or "dead"),
    /// `limit` at most from `offset`.
    ///
    /// ```python
    /// for info in tasks.jobs("dead"):
    ///     print(info.id, info.last_error)
    /// ```
    #[pyo3(signature = (state, offset = 0, limit = 100))]
    fn jobs(
        &self,
        py: Python<'_>,
        state: &str,
        offset: usize,
        limit: usize,
    ) -> PyResult<Vec<JobInfo>> {
        let found = wait(
            py,
            operations::jobs(&self.inner, job_state(state)?, offset, limit),
        )?;
        Ok(found.into_iter().map(|i| JobInfo::new(py, i)).collect())
    }

    /// Waits until tracked job `id` finishes (without polling): its result (bytes, or `None`
    /// when the handler returned nothing); `ostq.JobFailed` if it went to the dead set,
    /// `ostq.Timeout` after `timeout` seconds, `ostq.NotFound` for a job pushed without
    /// `track=True`.
    ///
    /// ```python
    /// job_id = tasks.push("42", track=True)
    /// result = tasks.wait_for(job_id, timeout=30)
    /// ```
    fn wait_for(
        &self,
        py: Python<'_>,
        id: String,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let timeout = convert::duration(timeout, "timeout")?;
        let result = wait(py, operations::wait_for(&self.inner, id, timeout))?;
        convert::bytes_or_none(py, result)
    }

    /// Pushes a tracked job and waits for its result: request/response over the queue. Same
    /// options as `push`; errors as `wait_for`.
    ///
    /// ```python
    /// thumbnail = tasks.push_and_wait(b"video-42", timeout=10)
    /// ```
    #[pyo3(signature = (data, timeout, *, id = None, name = None, delay = None, at = None, priority = 0, max_attempts = 0, unique = None, unique_for = None, key = None))]
    #[allow(clippy::too_many_arguments)]
    fn push_and_wait(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
        id: Option<String>,
        name: Option<String>,
        delay: Option<Bound<'_, PyAny>>,
        at: Option<Bound<'_, PyAny>>,
        priority: i32,
        max_attempts: u32,
        unique: Option<String>,
        unique_for: Option<Bound<'_, PyAny>>,
        key: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let args = PushArgs {
            id,
            name,
            delay,
            at,
            priority,
            max_attempts,
            track: true,
            unique,
            unique_for,
            key,
        };
        let options = args.options()?;
        let payload = convert::payload(data)?;
        let timeout = convert::duration(timeout, "timeout")?;
        let result = wait(
            py,
            operations::push_and_wait(&self.inner, payload, options, timeout),
        )?;
        convert::bytes_or_none(py, result)
    }

    /// How many jobs the queue holds in each state, and its totals.
    fn counts(&self, py: Python<'_>) -> PyResult<QueueCounts> {
        Ok(wait(py, operations::counts(&self.inner))?.into())
    }

    /// Turns the queue's events on or off for every producer and worker: "pubsub" (live
    /// listeners on the channel `ostq:{queue}:events`), "stream" (a capped stream that
    /// `events()` reads), "both" or "off" (the default; events cost Redis work on every job).
    fn set_events(&self, py: Python<'_>, sink: &str) -> PyResult<()> {
        let sink = event_sink(sink)?;
        wait(py, operations::set_events(&self.inner, sink))
    }

    /// The queue's events as an iterator (blocking between events); needs `set_events("stream")`
    /// or `"both"`. `start` is "now" (only what happens from here on), "beginning" (everything
    /// the stream still holds) or a stream id seen before (`event.stream_id`): what came after it.
    ///
    /// ```python
    /// tasks.set_events("stream")
    /// for event in tasks.events():
    ///     print(event.event, event.id)
    /// ```
    #[pyo3(signature = (start = "now"))]
    fn events(&self, start: &str) -> Events {
        Events::new(self.client.clone(), self.inner.name(), start)
    }

    /// Cancels job `id`: removes it if it has not started ("removed"), asks its worker to stop it
    /// if it is running ("signalled": the handler sees `job.cancelled`), else "not_found".
    fn cancel(&self, py: Python<'_>, id: String) -> PyResult<&'static str> {
        wait(py, operations::cancel(&self.inner, id))
    }

    /// Moves every dead job back to pending (attempts reset); returns how many moved.
    fn retry_all_dead(&self, py: Python<'_>) -> PyResult<u64> {
        wait(py, operations::retry_all_dead(&self.inner))
    }

    /// Removes the jobs in `state` (every state but active when `None`); returns how many.
    #[pyo3(signature = (state = None))]
    fn purge(&self, py: Python<'_>, state: Option<&str>) -> PyResult<u64> {
        let state = state.map(job_state).transpose()?;
        wait(py, operations::purge(&self.inner, state))
    }

    /// A worker for this queue. `handler(job)` serves jobs without a task name (and named ones no
    /// `@worker.task` claims); `on_error(job, failure)` is called after every failed attempt,
    /// `on_monitor(report)` every `monitor_interval` seconds with the monitor report as a dict.
    /// Handlers may be plain functions (run on a pool of `concurrency` threads) or coroutine
    /// functions (run on an asyncio loop). See `Worker`.
    ///
    /// ```python
    /// worker = tasks.worker(execute_task, error_handler, monitor_handler, concurrency=8)
    /// worker.run()  # until ctrl-c or SIGTERM, then shuts down gracefully
    /// ```
    #[pyo3(signature = (handler = None, on_error = None, on_monitor = None, *, concurrency = 10, lease = None, timeout = None, shutdown_timeout = None, monitor_interval = None, max_attempts = None, backoff = None))]
    #[allow(clippy::too_many_arguments)]
    fn worker(
        &self,
        handler: Option<Bound<'_, PyAny>>,
        on_error: Option<Bound<'_, PyAny>>,
        on_monitor: Option<Bound<'_, PyAny>>,
        concurrency: usize,
        lease: Option<Bound<'_, PyAny>>,
        timeout: Option<Bound<'_, PyAny>>,
        shutdown_timeout: Option<Bound<'_, PyAny>>,
        monitor_interval: Option<Bound<'_, PyAny>>,
        max_attempts: Option<u32>,
        backoff: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Worker> {
        let settings = WorkerSettings::new(
            concurrency,
            lease,
            timeout,
            shutdown_timeout,
            monitor_interval,
            max_attempts,
            backoff,
        )?;
        Worker::new(
            self.client.clone(),
            self.inner.name().to_string(),
            handler,
            on_error,
            on_monitor,
            settings,
        )
    }

    fn __repr__(&self) -> String {
        format!("Queue({:?})", self.inner.name())
    }
}

/// The asyncio twin of [`Queue`]: the same methods, as coroutines.
///
/// ```python
/// tasks = ostq.AsyncClient().queue("tasks")
/// job_id = await tasks.push("42", track=True)
/// result = await tasks.wait_for(job_id, timeout=30)
/// ```
#[pyclass(frozen, module = "ostq")]
pub(crate) struct AsyncQueue {
    inner: ostq::Queue,
    /// The queue's client, for what the library reaches through it (events, workers).
    client: ostq::Client,
}

#[pymethods]
impl AsyncQueue {
    /// The queue's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// `Queue.push`, as a coroutine.
    #[pyo3(signature = (data, *, id = None, name = None, delay = None, at = None, priority = 0, max_attempts = 0, track = false, unique = None, unique_for = None, key = None))]
    #[allow(clippy::too_many_arguments)]
    fn push<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        id: Option<String>,
        name: Option<String>,
        delay: Option<Bound<'py, PyAny>>,
        at: Option<Bound<'py, PyAny>>,
        priority: i32,
        max_attempts: u32,
        track: bool,
        unique: Option<String>,
        unique_for: Option<Bound<'py, PyAny>>,
        key: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = PushArgs {
            id,
            name,
            delay,
            at,
            priority,
            max_attempts,
            track,
            unique,
            unique_for,
            key,
        };
        let options = args.options()?;
        let payload = convert::payload(data)?;
        awaitable(
            py,
            operations::push(&self.inner, payload, options),
            |py, id| id.into_py_any(py),
        )
    }

    /// `Queue.push_bulk`, as a coroutine.
    #[pyo3(signature = (items, *, name = None, delay = None, at = None, priority = 0, max_attempts = 0, track = false, key = None))]
    #[allow(clippy::too_many_arguments)]
    fn push_bulk<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        name: Option<String>,
        delay: Option<Bound<'py, PyAny>>,
        at: Option<Bound<'py, PyAny>>,
        priority: i32,
        max_attempts: u32,
        track: bool,
        key: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = PushArgs {
            name,
            delay,
            at,
            priority,
            max_attempts,
            track,
            key,
            ..PushArgs::default()
        };
        let options = args.options()?;
        let payloads = bulk_payloads(items)?;
        awaitable(
            py,
            operations::push_bulk(&self.inner, payloads, options),
            |py, ids| ids.into_py_any(py),
        )
    }

    /// `Queue.enqueue`, as a coroutine.
    #[pyo3(signature = (name, params, *, id = None, delay = None, at = None, priority = 0, max_attempts = 0, track = false, unique = None, unique_for = None, key = None))]
    #[allow(clippy::too_many_arguments)]
    fn enqueue<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        params: &Bound<'py, PyAny>,
        id: Option<String>,
        delay: Option<Bound<'py, PyAny>>,
        at: Option<Bound<'py, PyAny>>,
        priority: i32,
        max_attempts: u32,
        track: bool,
        unique: Option<String>,
        unique_for: Option<Bound<'py, PyAny>>,
        key: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = PushArgs {
            id,
            delay,
            at,
            priority,
            max_attempts,
            track,
            unique,
            unique_for,
            key,
            ..PushArgs::default()
        };
        let (payload, options) = task_job(name, params, &args)?;
        awaitable(
            py,
            operations::push(&self.inner, payload, options),
            |py, id| id.into_py_any(py),
        )
    }

    /// `Queue.job`, as a coroutine.
    fn job<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, operations::job(&self.inner, id), info)
    }

    /// `Queue.jobs`, as a coroutine.
    #[pyo3(signature = (state, offset = 0, limit = 100))]
    fn jobs<'py>(
        &self,
        py: Python<'py>,
        state: &str,
        offset: usize,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let state = job_state(state)?;
        awaitable(
            py,
            operations::jobs(&self.inner, state, offset, limit),
            infos,
        )
    }

    /// `Queue.wait_for`, as a coroutine.
    fn wait_for<'py>(
        &self,
        py: Python<'py>,
        id: String,
        timeout: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let timeout = convert::duration(timeout, "timeout")?;
        awaitable(
            py,
            operations::wait_for(&self.inner, id, timeout),
            convert::bytes_or_none,
        )
    }

    /// `Queue.push_and_wait`, as a coroutine.
    #[pyo3(signature = (data, timeout, *, id = None, name = None, delay = None, at = None, priority = 0, max_attempts = 0, unique = None, unique_for = None, key = None))]
    #[allow(clippy::too_many_arguments)]
    fn push_and_wait<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
        timeout: &Bound<'py, PyAny>,
        id: Option<String>,
        name: Option<String>,
        delay: Option<Bound<'py, PyAny>>,
        at: Option<Bound<'py, PyAny>>,
        priority: i32,
        max_attempts: u32,
        unique: Option<String>,
        unique_for: Option<Bound<'py, PyAny>>,
        key: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let args = PushArgs {
            id,
            name,
            delay,
            at,
            priority,
            max_attempts,
            track: true,
            unique,
            unique_for,
            key,
        };
        let options = args.options()?;
        let payload = convert::payload(data)?;
        let timeout = convert::duration(timeout, "timeout")?;
        awaitable(
            py,
            operations::push_and_wait(&self.inner, payload, options, timeout),
            convert::bytes_or_none,
        )
    }

    /// `Queue.counts`, as a coroutine.
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, operations::counts(&self.inner), |py, counts| {
            QueueCounts::from(counts).into_py_any(py)
        })
    }

    /// `Queue.set_events`, as a coroutine.
    fn set_events<'py>(&self, py: Python<'py>, sink: &str) -> PyResult<Bound<'py, PyAny>> {
        let sink = event_sink(sink)?;
        awaitable(py, operations::set_events(&self.inner, sink), |py, ()| {
            Ok(py.None())
        })
    }

    /// The queue's events as an async iterator (`async for event in queue.events(): …`).
    #[pyo3(signature = (start = "now"))]
    fn events(&self, start: &str) -> AsyncEvents {
        AsyncEvents::new(self.client.clone(), self.inner.name(), start)
    }

    /// `Queue.cancel`, as a coroutine.
    fn cancel<'py>(&self, py: Python<'py>, id: String) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, operations::cancel(&self.inner, id), |py, what| {
            what.into_py_any(py)
        })
    }

    /// `Queue.retry_all_dead`, as a coroutine.
    fn retry_all_dead<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, operations::retry_all_dead(&self.inner), |py, n| {
            n.into_py_any(py)
        })
    }

    /// `Queue.purge`, as a coroutine.
    #[pyo3(signature = (state = None))]
    fn purge<'py>(&self, py: Python<'py>, state: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
        let state = state.map(job_state).transpose()?;
        awaitable(py, operations::purge(&self.inner, state), |py, n| {
            n.into_py_any(py)
        })
    }

    /// `Queue.worker`: the same worker (run it with `await worker.run_async()`).
    #[pyo3(signature = (handler = None, on_error = None, on_monitor = None, *, concurrency = 10, lease = None, timeout = None, shutdown_timeout = None, monitor_interval = None, max_attempts = None, backoff = None))]
    #[allow(clippy::too_many_arguments)]
    fn worker(
        &self,
        handler: Option<Bound<'_, PyAny>>,
        on_error: Option<Bound<'_, PyAny>>,
        on_monitor: Option<Bound<'_, PyAny>>,
        concurrency: usize,
        lease: Option<Bound<'_, PyAny>>,
        timeout: Option<Bound<'_, PyAny>>,
        shutdown_timeout: Option<Bound<'_, PyAny>>,
        monitor_interval: Option<Bound<'_, PyAny>>,
        max_attempts: Option<u32>,
        backoff: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Worker> {
        let settings = WorkerSettings::new(
            concurrency,
            lease,
            timeout,
            shutdown_timeout,
            monitor_interval,
            max_attempts,
            backoff,
        )?;
        Worker::new(
            self.client.clone(),
            self.inner.name().to_string(),
            handler,
            on_error,
            on_monitor,
            settings,
        )
    }

    fn __repr__(&self) -> String {
        format!("AsyncQueue({:?})", self.inner.name())
    }
}
