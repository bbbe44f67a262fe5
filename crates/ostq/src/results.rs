//! Results on demand: wait for a tracked job to finish without polling, and a request/response
//! convenience on top.
//!
//! When a tracked job completes or dies, the scripts push a token on `ostq:{q}:done:<id>` (kept
//! 60 s). A waiter reads the status record, and while the job is unfinished it waits on that list
//! with `BLMOVE done done RIGHT RIGHT` (which takes nothing, so any number of waiters wake), at
//! most a second at a time before it reads the record again.

use std::time::{Duration, Instant};

use crate::producer::{PushOptions, Queue};
use crate::store::stream;
use crate::{Error, Result};

impl Queue {
    /// Waits until tracked job `id` finishes: its result on completion, [`Error::JobFailed`] when it
    /// dies, [`Error::Timeout`] after `timeout`. Returns at once for a job that already finished
    /// (within its record's retention).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use std::time::Duration;
    /// let queue = client.queue("thumbnails");
    /// let id = queue.push_with("video-42", &ostq::PushOptions::new().track()).await?;
    /// let result = queue.wait_for(&id, Duration::from_secs(30)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_for(&self, id: &str, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let keys = self.keys()?;
        let deadline = Instant::now() + timeout;
        let mut conn = self.client_ref().conn();
        let mut blocking = None;
        loop {
            let (state, result, error) =
                stream::job_outcome_marking_waiter(&mut conn, keys, id).await?;
            match state.as_deref() {
                None => {
                    return Err(Error::NotFound(format!(
                        "job {id} on queue {} has no status record: push it with PushOptions::track() to wait for it",
                        keys.queue
                    )))
                }
                Some("completed") => return Ok(result),
                Some("dead") => {
                    return Err(Error::JobFailed {
                        id: id.to_string(),
                        error: error.unwrap_or_default(),
                    })
                }
                Some(_) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(format!(
                    "job {id} did not finish within {timeout:?}"
                )));
            }
            if blocking.is_none() {
                blocking = Some(self.client_ref().blocking_conn().await?);
            }
            if let Some(conn) = blocking.as_mut() {
                let wait = left
                    .min(Duration::from_secs(1))
                    .max(Duration::from_millis(1));
                stream::wait_done(conn, keys, id, wait).await?;
            }
        }
    }

    /// Pushes a tracked job and waits for its result: request/response over the queue.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use std::time::Duration;
    /// let frames = client
    ///     .queue("probe")
    ///     .push_and_wait("video-42", ostq::PushOptions::new(), Duration::from_secs(10))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn push_and_wait(
        &self,
        payload: impl AsRef<[u8]>,
        opts: PushOptions,
        timeout: Duration,
    ) -> Result<Option<Vec<u8>>> {
        let id = self.push_with(payload, &opts.track()).await?;
        self.wait_for(&id, timeout).await
    }
}
