//! Python values to the library's and back: payloads, durations and times, push options, JSON.
//! Every check happens here, before anything is sent to Redis, so a bad argument writes nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::errors::{config_error, payload_error};

/// A payload from Python: `bytes`, `bytearray` or `str` (sent as UTF-8).
///
/// Anything else (a number, a dict) is refused rather than guessed at: `enqueue(name, params)`
/// is the way to send structured data, as JSON.
pub(crate) fn payload(value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(bytes) = value.cast::<PyBytes>() {
        return Ok(bytes.as_bytes().to_vec());
    }
    if let Ok(text) = value.cast::<PyString>() {
        return Ok(text.to_cow()?.as_bytes().to_vec());
    }
    if let Ok(array) = value.cast::<PyByteArray>() {
        return Ok(array.to_vec());
    }
    Err(payload_error(format!(
        "a payload must be bytes or str, not {} (use enqueue(name, params) for JSON)",
        type_name(value)
    )))
}

/// The name of a value's type, for error messages.
pub(crate) fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// A duration given in seconds (an `int` or a `float`) or as a `datetime.timedelta`; `what`
/// names the argument in errors. Negative, NaN and infinite values are refused.
pub(crate) fn duration(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    let seconds: f64 = if value.hasattr("total_seconds")? {
        value.call_method0("total_seconds")?.extract()?
    } else {
        value.extract().map_err(|_| {
            config_error(format!(
                "{what} must be a number of seconds or a timedelta, not {}",
                type_name(value)
            ))
        })?
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| {
        config_error(format!(
            "{what} must be a finite, non-negative number of seconds, got {seconds}"
        ))
    })
}

/// A point in time given as a `datetime` (naive ones are local time, as `datetime.timestamp()`
/// reads them) or as Unix seconds.
pub(crate) fn time(value: &Bound<'_, PyAny>, what: &str) -> PyResult<SystemTime> {
    let seconds: f64 = if value.hasattr("timestamp")? {
        value.call_method0("timestamp")?.extract()?
    } else {
        value.extract().map_err(|_| {
            config_error(format!(
                "{what} must be a datetime or Unix seconds, not {}",
                type_name(value)
            ))
        })?
    };
    let since_epoch = Duration::try_from_secs_f64(seconds).map_err(|_| {
        config_error(format!(
            "{what} must be a finite time after 1970, got {seconds}"
        ))
    })?;
    Ok(UNIX_EPOCH + since_epoch)
}

/// Seconds as a float, for Python.
pub(crate) fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// The push options Python passes as keywords (`push(data, *, id=, name=, delay=, at=, …)`).
#[derive(Default)]
pub(crate) struct PushArgs<'py> {
    pub(crate) id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) delay: Option<Bound<'py, PyAny>>,
    pub(crate) at: Option<Bound<'py, PyAny>>,
    pub(crate) priority: i32,
    pub(crate) max_attempts: u32,
    pub(crate) track: bool,
    pub(crate) unique: Option<String>,
    pub(crate) unique_for: Option<Bound<'py, PyAny>>,
    /// The ordering key (`PushOptions::key`): one shard per key on a sharded queue.
    pub(crate) key: Option<String>,
}

impl PushArgs<'_> {
    /// The library's options; the library checks ranges and ids itself (same messages as Rust).
    pub(crate) fn options(&self) -> PyResult<ostq::PushOptions> {
        let mut options = ostq::PushOptions::new()
            .priority(self.priority)
            .max_attempts(self.max_attempts);
        if let Some(id) = &self.id {
            options = options.id(id.clone());
        }
        if let Some(name) = &self.name {
            options = options.name(name.clone());
        }
        match (&self.delay, &self.at) {
            (Some(_), Some(_)) => {
                return Err(config_error("give delay or at, not both"));
            }
            (Some(delay), None) => options = options.delay(duration(delay, "delay")?),
            (None, Some(at)) => options = options.run_at(time(at, "at")?),
            (None, None) => {}
        }
        if self.track {
            options = options.track();
        }
        match (&self.unique, &self.unique_for) {
            (Some(key), Some(ttl)) => {
                options = options.unique_for(key.clone(), duration(ttl, "unique_for")?)
            }
            (Some(key), None) => options = options.unique(key.clone()),
            (None, Some(_)) => {
                return Err(config_error(
                    "unique_for needs a key: push(data, unique=KEY, unique_for=SECONDS)",
                ))
            }
            (None, None) => {}
        }
        if let Some(key) = &self.key {
            options = options.key(key.clone());
        }
        Ok(options)
    }
}

/// Python's `json` module functions, imported once.
fn json_function<'py>(py: Python<'py>, name: &'static str) -> PyResult<Bound<'py, PyAny>> {
    static JSON: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module = JSON.get_or_try_init(py, || py.import("json").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

/// `value` as compact JSON text, or an `ostq.PayloadError` saying what could not be encoded.
pub(crate) fn to_json(value: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    let py = value.py();
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("separators", (",", ":"))?;
    kwargs.set_item("ensure_ascii", false)?;
    json_function(py, "dumps")?
        .call((value,), Some(&kwargs))
        .and_then(|text| text.extract::<String>())
        .map_err(|e| payload_error(format!("{what} is not JSON: {}", e.value(py))))
}

/// JSON text (or bytes) as a Python value.
pub(crate) fn from_json<'py>(py: Python<'py>, text: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    json_function(py, "loads")?.call1((PyBytes::new(py, text),))
}

/// What a handler's return value becomes: `None` no result, `bytes`/`str` as they are, anything
/// else as JSON (a dict, a list, a number). Like Rust's `IntoOutput`.
pub(crate) fn output(value: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
    if value.is_none() {
        return Ok(None);
    }
    match payload(value) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(_) => Ok(Some(
            to_json(value, "the handler's return value")?.into_bytes(),
        )),
    }
}

/// Optional bytes for Python: `bytes` or `None`.
pub(crate) fn bytes_or_none(py: Python<'_>, bytes: Option<Vec<u8>>) -> PyResult<Py<PyAny>> {
    Ok(match bytes {
        Some(bytes) => PyBytes::new(py, &bytes).into_any().unbind(),
        None => py.None(),
    })
}
