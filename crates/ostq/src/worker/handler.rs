//! Handler plumbing: what a handler may return, and how typed tasks are dispatched by name.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::job::Job;
use crate::retry::RetryPolicy;
use crate::task::Task;

/// Any error a handler returns (`anyhow::Error`, `String`, `&str` and std errors convert).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub(crate) type HandlerFuture =
    Pin<Box<dyn Future<Output = Result<Option<Vec<u8>>, BoxError>> + Send>>;
pub(crate) type DynHandler = Arc<dyn Fn(Job) -> HandlerFuture + Send + Sync>;

/// Return this error (or wrap one in it) to send the job straight to the dead set, without the
/// remaining retries: for input that can never succeed.
///
/// ```
/// async fn handle(job: ostq::Job) -> Result<(), ostq::BoxError> {
///     if job.payload.is_empty() {
///         return Err(ostq::Permanent::new("empty payload").into());
///     }
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Permanent(String);

impl Permanent {
    /// A permanent failure with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Permanent {}

/// What a handler's success value becomes: the job's result, kept for tracked jobs.
///
/// ```
/// use ostq::IntoOutput;
/// assert_eq!(().into_output(), None);
/// assert_eq!("done".into_output(), Some(b"done".to_vec()));
/// assert_eq!(serde_json::json!({"ok": true}).into_output(), Some(br#"{"ok":true}"#.to_vec()));
/// ```
pub trait IntoOutput {
    /// The result bytes, or `None` for no result.
    fn into_output(self) -> Option<Vec<u8>>;
}

impl IntoOutput for () {
    fn into_output(self) -> Option<Vec<u8>> {
        None
    }
}

impl IntoOutput for Vec<u8> {
    fn into_output(self) -> Option<Vec<u8>> {
        Some(self)
    }
}

impl IntoOutput for String {
    fn into_output(self) -> Option<Vec<u8>> {
        Some(self.into_bytes())
    }
}

impl IntoOutput for &'static str {
    fn into_output(self) -> Option<Vec<u8>> {
        Some(self.as_bytes().to_vec())
    }
}

impl IntoOutput for serde_json::Value {
    fn into_output(self) -> Option<Vec<u8>> {
        serde_json::to_vec(&self).ok()
    }
}

impl<T: IntoOutput> IntoOutput for Option<T> {
    fn into_output(self) -> Option<Vec<u8>> {
        self.and_then(IntoOutput::into_output)
    }
}

/// The text of a panic's payload (`panic!` with a literal or with format arguments), for the
/// job's last error and the logs.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Calling the result runs `f(job)` at once, so a closure that panics before it returns its
/// future panics in the caller: the runtime calls handlers inside `catch_unwind` for that reason.
pub(crate) fn boxed<F, Fut, O, E>(f: F) -> DynHandler
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    O: IntoOutput,
    E: Into<BoxError>,
{
    Arc::new(move |job| {
        let fut = f(job);
        Box::pin(async move { fut.await.map(IntoOutput::into_output).map_err(Into::into) })
    })
}

pub(crate) fn boxed_task<T, F, Fut, O, E>(f: F) -> DynHandler
where
    T: Task,
    F: Fn(T, Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    O: IntoOutput,
    E: Into<BoxError>,
{
    let f = Arc::new(f);
    boxed(move |job: Job| {
        let f = f.clone();
        async move {
            let task: T = serde_json::from_slice(&job.payload).map_err(|e| -> BoxError {
                Box::new(Permanent::new(format!(
                    "cannot decode payload of task '{}': {e}",
                    T::NAME
                )))
            })?;
            f(task, job).await.map_err(Into::into)
        }
    })
}

/// Why a job has no handler here, and what becomes of it.
#[derive(Debug)]
pub(crate) enum Unhandled {
    /// A task name this worker does not know: a failed attempt, retried (in a rolling deploy,
    /// a worker of the release that knows it may take it next), as Sidekiq and asynq do.
    Retry(String),
    /// No name and no default handler: a bare entry or a plain push that only a default
    /// handler can ever run. Dead at once.
    Dead(String),
}

/// The handlers a worker dispatches to.
#[derive(Default, Clone)]
pub(crate) struct Handlers {
    pub(crate) default: Option<DynHandler>,
    pub(crate) by_name: HashMap<String, (DynHandler, Option<RetryPolicy>)>,
}

impl Handlers {
    /// The handler for a job's name and its retry policy, or why there is none: the typed
    /// handler of that name, else the default handler (named jobs included). A name no handler
    /// claims is an [`Unhandled::Retry`]: a worker of another release may know it.
    pub(crate) fn pick(
        &self,
        name: Option<&str>,
    ) -> Result<(DynHandler, Option<RetryPolicy>), Unhandled> {
        match name {
            Some(name) => self
                .by_name
                .get(name)
                .cloned()
                .or_else(|| self.default.clone().map(|h| (h, None)))
                .ok_or_else(|| {
                    let mut known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    Unhandled::Retry(format!(
                        "no handler for task '{name}' (this worker handles: {})",
                        known.join(", ")
                    ))
                }),
            None => self.default.clone().map(|h| (h, None)).ok_or_else(|| {
                Unhandled::Dead(
                    "job has no task name and this worker has no default handler".to_string(),
                )
            }),
        }
    }

    /// The attempt limit that applies to jobs named `name` that do not set their own.
    pub(crate) fn policy_for(&self, name: Option<&str>) -> Option<&RetryPolicy> {
        name.and_then(|n| self.by_name.get(n))
            .and_then(|(_, p)| p.as_ref())
    }
}
