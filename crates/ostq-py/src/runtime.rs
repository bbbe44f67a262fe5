//! The tokio runtime under every call, and the two ways Python waits on it: the sync API blocks
//! with the GIL released ([`wait`]), the asyncio API gets an awaitable ([`awaitable`]).

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

use crate::errors::to_py_err;

/// How often a blocking call looks for a signal (ctrl-c) while it waits on Redis: Python runs
/// signal handlers only between bytecodes, never while a thread sits in Rust.
pub(crate) const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The module's runtime, started on first use: the library's futures (connections, workers,
/// waits) run on its threads whatever Python thread or event loop asked for them.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("ostq")
            .build()
            // No runtime means no threads or no epoll: nothing in this module can work, and
            // Python shows the panic as a `PanicException` naming the reason.
            .unwrap_or_else(|e| panic!("ostq cannot start its tokio runtime: {e}"));
        runtime
    })
}

/// Runs `future` to completion for a sync call: the GIL is released while it waits on Redis (so
/// other Python threads run), and every [`SIGNAL_CHECK`] it takes the GIL back to let Python run
/// signal handlers; a `KeyboardInterrupt` (or any exception a handler raises) drops the future,
/// which abandons the operation, and is raised to the caller.
pub(crate) fn wait<F, T>(py: Python<'_>, future: F) -> PyResult<T>
where
    F: Future<Output = ostq::Result<T>> + Send,
    T: Send,
{
    wait_py(py, async { future.await.map_err(to_py_err) })
}

/// Like [`wait`] for futures whose errors are already Python exceptions.
pub(crate) fn wait_py<F, T>(py: Python<'_>, future: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
    let runtime = runtime();
    let mut future = std::pin::pin!(future);
    loop {
        let step = py.detach(|| {
            runtime.block_on(async { tokio::time::timeout(SIGNAL_CHECK, future.as_mut()).await })
        });
        match step {
            Ok(result) => return result,
            Err(_still_running) => py.check_signals()?,
        }
    }
}

/// An asyncio awaitable of `future`, bound to the running event loop: the future runs on the
/// module's runtime, its result (made a Python object by `convert`, with the GIL) or its error
/// is delivered to the loop, and cancelling the awaitable drops the future.
pub(crate) fn awaitable<'py, F, T, C>(
    py: Python<'py>,
    future: F,
    convert: C,
) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = ostq::Result<T>> + Send + 'static,
    T: Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    init_async_runtime();
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let value = future.await.map_err(to_py_err)?;
        Python::attach(|py| convert(py, value))
    })
}

/// Like [`awaitable`] for futures whose errors are already Python exceptions and whose value
/// converts to Python as it is.
pub(crate) fn awaitable_py<'py, F, T>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    init_async_runtime();
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let value = future.await?;
        Python::attach(|py| value.into_py_any(py))
    })
}

/// Points `pyo3-async-runtimes` at the module's runtime (it would otherwise start one of its own).
fn init_async_runtime() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // Err only when it was already given one: ours, since nothing else in the module sets it.
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime());
    });
}
