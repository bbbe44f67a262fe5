//! Rust errors as Python exceptions. The classes are defined in Python (`ostq/_errors.py`, so
//! that they carry attributes such as `JobFailed.error` and read as ordinary Python); this file
//! maps each [`ostq::Error`] variant to one of them.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The module holding the exception classes.
const ERRORS_MODULE: &str = "ostq._errors";

/// The exception class `name` of `ostq._errors`, imported once.
pub(crate) fn class<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyType>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = MODULE.get_or_try_init(py, || py.import(ERRORS_MODULE).map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// The Python exception for a library error: `ostq.ConnectionError` for an unreachable Redis,
/// `ostq.JobFailed` (with `.id` and `.error`) for a dead job a wait was for, and so on; every
/// class derives from `ostq.Error`.
pub(crate) fn to_py_err(error: ostq::Error) -> PyErr {
    Python::attach(|py| {
        let message = error.to_string();
        let made = match error {
            ostq::Error::Unreachable { .. } => raise(py, "ConnectionError", (message,)),
            ostq::Error::Auth { .. } => raise(py, "AuthError", (message,)),
            ostq::Error::Redis { .. } => raise(py, "RedisError", (message,)),
            ostq::Error::OutOfMemory(_) => raise(py, "OutOfMemory", (message,)),
            ostq::Error::Config(_) => raise(py, "ConfigError", (message,)),
            ostq::Error::NotFound(_) => raise(py, "NotFound", (message,)),
            ostq::Error::Envelope(_) | ostq::Error::Payload(_) => {
                raise(py, "PayloadError", (message,))
            }
            ostq::Error::Protocol(_) => raise(py, "ProtocolError", (message,)),
            ostq::Error::Timeout(_) => raise(py, "Timeout", (message,)),
            ostq::Error::Duplicate { key, existing_id } => {
                raise(py, "Duplicate", (message, key, existing_id))
            }
            ostq::Error::IdTaken { id, state } => raise(py, "IdTaken", (message, id, state)),
            ostq::Error::JobFailed { id, error } => raise(py, "JobFailed", (message, id, error)),
            ostq::Error::NotDurable {
                ids, acked, wanted, ..
            } => raise(py, "NotDurable", (message, ids, acked, wanted)),
            _ => raise(py, "Error", (message,)),
        };
        made.unwrap_or_else(|failed| failed)
    })
}

/// An `ostq._errors.<name>` exception built from `args`, or the error of building it.
fn raise<'py, A>(py: Python<'py>, name: &'static str, args: A) -> PyResult<PyErr>
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let exception = class(py, name)?.call1(args)?;
    Ok(PyErr::from_value(exception))
}

/// An `ostq.ConfigError` with this message: a bad argument from Python.
pub(crate) fn config_error(message: impl Into<String>) -> PyErr {
    to_py_err(ostq::Error::Config(message.into()))
}

/// An `ostq.PayloadError` with this message.
pub(crate) fn payload_error(message: impl Into<String>) -> PyErr {
    to_py_err(ostq::Error::Payload(message.into()))
}
