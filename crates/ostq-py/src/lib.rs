//! The Python package `ostq`: the Rust library bound to Python with PyO3, one engine for both
//! languages. This crate builds the extension module `ostq._ostq`; the pure-Python part of the
//! package (`python/ostq/`) re-exports it, defines the exception classes and the few helpers
//! that are plainer in Python (tracebacks, signatures, the asyncio side of a worker's shutdown).
//!
//! ```python
//! import ostq
//!
//! client = ostq.Client("redis://127.0.0.1:6379")
//! client.queue("tasks").push("generate the report")
//! ```
//!
//! Every Redis command is the Rust library's. The sync API blocks on a tokio runtime owned by the
//! module with the GIL released (`runtime::wait`), and the asyncio API hands the same futures to
//! the running event loop (`pyo3-async-runtimes`).

mod client;
mod convert;
mod errors;
mod events;
mod job;
mod runtime;
mod worker;

use pyo3::prelude::*;

/// The extension module `ostq._ostq`; `import ostq` is the way in.
#[pymodule]
fn _ostq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<client::AsyncClient>()?;
    m.add_class::<client::Queue>()?;
    m.add_class::<client::AsyncQueue>()?;
    m.add_class::<job::Job>()?;
    m.add_class::<job::JobInfo>()?;
    m.add_class::<job::QueueCounts>()?;
    m.add_class::<job::Failure>()?;
    m.add_class::<events::Event>()?;
    m.add_class::<events::Events>()?;
    m.add_class::<events::AsyncEvents>()?;
    m.add_class::<worker::Worker>()?;
    m.add_class::<worker::TaskDecorator>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
