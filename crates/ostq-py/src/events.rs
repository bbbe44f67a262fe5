//! A queue's events for Python: an iterator ([`Events`]) and an async iterator
//! ([`AsyncEvents`]) over the library's event stream, each yielding [`Event`]s.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::convert;
use crate::runtime::{awaitable, wait};

/// One job event: what happened (`event`), to which job (`id`), when (`ts`, Unix ms on the
/// Redis server's clock), and the details of its kind.
///
/// ```python
/// for event in queue.events():
///     if event.event == "dead":
///         print(f"job {event.id} died: {event.error}")
/// ```
#[pyclass(frozen, module = "ostq")]
pub(crate) struct Event {
    /// "pushed", "started", "completed", "failed", "retried", "dead", "recovered" or "progress".
    #[pyo3(get)]
    event: String,
    /// The queue.
    #[pyo3(get)]
    queue: String,
    /// The job.
    #[pyo3(get)]
    id: String,
    /// When, Unix milliseconds (Redis server clock).
    #[pyo3(get)]
    ts: u64,
    /// The attempt it concerns (failed, dead, recovered).
    #[pyo3(get)]
    attempt: Option<u32>,
    /// The error (failed, dead, recovered).
    #[pyo3(get)]
    error: Option<String>,
    /// For "pushed": "pending" or "scheduled".
    #[pyo3(get)]
    state: Option<String>,
    /// For "failed": milliseconds until the next attempt.
    #[pyo3(get)]
    retry_in_ms: Option<u64>,
    /// For "retried" by hand: where the job came from (scheduled, retry or dead).
    #[pyo3(get)]
    from_: Option<String>,
    /// The stream entry id: `queue.events(start=stream_id)` resumes after it.
    #[pyo3(get)]
    stream_id: String,
    progress_json: Option<String>,
}

#[pymethods]
impl Event {
    /// For "progress": what the handler reported (any JSON value), else `None`.
    #[getter]
    fn progress<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match &self.progress_json {
            Some(json) => convert::from_json(py, json.as_bytes()),
            None => Ok(py.None().into_bound(py)),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Event(event={:?}, queue={:?}, id={:?}, ts={})",
            self.event, self.queue, self.id, self.ts
        )
    }
}

impl From<ostq::events::Event> for Event {
    fn from(e: ostq::events::Event) -> Self {
        Self {
            event: format!("{:?}", e.event).to_lowercase(),
            queue: e.queue,
            id: e.id,
            ts: e.ts,
            attempt: e.attempt,
            error: e.error,
            state: e.state,
            retry_in_ms: e.retry_in_ms,
            from_: e.from,
            stream_id: e.stream_id,
            progress_json: e.progress.map(|p| p.to_string()),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = ostq::Result<ostq::events::Event>> + Send>>;

/// The stream under both iterators, opened on the first `next` (its own Redis connection).
#[derive(Clone)]
struct Reader {
    client: ostq::Client,
    queue: String,
    start: String,
    stream: Arc<tokio::sync::Mutex<Option<EventStream>>>,
}

impl Reader {
    fn new(client: ostq::Client, queue: &str, start: &str) -> Self {
        Self {
            client,
            queue: queue.to_string(),
            start: start.to_string(),
            stream: Arc::default(),
        }
    }

    /// The next event; waits for one as long as it takes.
    async fn next(self) -> ostq::Result<ostq::events::Event> {
        let mut stream = self.stream.lock().await;
        if stream.is_none() {
            let from = match self.start.as_str() {
                "now" => ostq::events::EventsFrom::Now,
                "beginning" => ostq::events::EventsFrom::Beginning,
                id => ostq::events::EventsFrom::After(id.to_string()),
            };
            *stream = Some(Box::pin(self.client.events(&self.queue, from).await?));
        }
        match stream.as_mut() {
            Some(events) => events
                .next()
                .await
                .unwrap_or_else(|| Err(ostq::Error::Protocol("the event stream ended".into()))),
            None => Err(ostq::Error::Protocol("no event stream".into())),
        }
    }
}

/// A queue's events, one at a time: `for event in queue.events(): …` waits (the GIL released,
/// ctrl-c honoured) until the next one. It never ends by itself; `break` when done.
#[pyclass(module = "ostq")]
pub(crate) struct Events {
    reader: Reader,
}

impl Events {
    pub(crate) fn new(client: ostq::Client, queue: &str, start: &str) -> Self {
        Self {
            reader: Reader::new(client, queue, start),
        }
    }
}

#[pymethods]
impl Events {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Event> {
        Ok(wait(py, self.reader.clone().next())?.into())
    }
}

/// A queue's events for asyncio: `async for event in queue.events(): …`.
#[pyclass(module = "ostq")]
pub(crate) struct AsyncEvents {
    reader: Reader,
}

impl AsyncEvents {
    pub(crate) fn new(client: ostq::Client, queue: &str, start: &str) -> Self {
        Self {
            reader: Reader::new(client, queue, start),
        }
    }
}

#[pymethods]
impl AsyncEvents {
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        awaitable(py, self.reader.clone().next(), |py, event| {
            Event::from(event).into_py_any(py)
        })
    }
}
