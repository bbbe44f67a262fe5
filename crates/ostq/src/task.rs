//! Typed tasks: a serde type with a name. Producers enqueue values; workers register one handler
//! per name and ostq dispatches on the job's name (the seed's `task_type` switch).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::retry::RetryPolicy;

/// A task type. Its payload is stored as JSON, so other languages can produce it too.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Transcode { video_id: u64, preset: String }
///
/// impl ostq::Task for Transcode {
///     const NAME: &'static str = "transcode";
/// }
/// ```
pub trait Task: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name jobs of this type carry; worker dispatch keys on it.
    const NAME: &'static str;

    /// How failed jobs of this type are retried; `None` uses the worker's policy.
    fn retry_policy() -> Option<RetryPolicy> {
        None
    }
}
