//! Finding jobs in one state by task name, error text or payload, with a bounded scan per call
//! ([`Queue::search`]), and reading a queue's rate limit ([`Queue::rate_limit`]).
//!
//! Redis cannot index what is inside an envelope, so a search reads the state's jobs in order and
//! keeps those that match. Each call examines at most a stated budget of jobs
//! ([`DEFAULT_SEARCH_BUDGET`], at most [`MAX_SEARCH_BUDGET`]), in pages of at most
//! [`SEARCH_CHUNK`] jobs (one or two bounded Redis commands each, through [`Queue::page`]), and
//! returns the matches with a cursor to go on from. A call never runs an unbounded command, at any
//! queue size; a search over a big state is several calls. Because it pages with the listing's
//! cursors, going on from a cursor neither skips nor repeats a job that stays in the state (see
//! [`crate::admin::listing`] for the pending list's one caveat).

use serde::{Deserialize, Serialize};

use super::cursor::Cursor;
use super::history::UNNAMED_TASK;
use super::listing::MAX_PAGE;
use crate::job::{JobInfo, JobState};
use crate::producer::Queue;
use crate::store::search as stored;
use crate::Result;

/// Jobs a [`Queue::search`] call examines by default.
///
/// ```
/// assert_eq!(ostq::admin::search::DEFAULT_SEARCH_BUDGET, 5_000);
/// ```
pub const DEFAULT_SEARCH_BUDGET: usize = 5_000;

/// The largest budget one [`Queue::search`] call accepts; a larger one is lowered to it.
///
/// ```
/// assert_eq!(ostq::admin::search::MAX_SEARCH_BUDGET, 100_000);
/// ```
pub const MAX_SEARCH_BUDGET: usize = 100_000;

/// Jobs read per page (per listing call) while searching: small enough that each Redis command
/// stays short whatever the queue's size.
///
/// ```
/// assert_eq!(ostq::admin::search::SEARCH_CHUNK, 250);
/// ```
pub const SEARCH_CHUNK: usize = 250;

/// What a job must match to be found; every criterion given must match (an empty filter matches
/// every job). Text criteria match ignoring ASCII case.
///
/// JSON: `{"name": "resize" | null, "error": "timeout" | null, "payload": "user 42" | null}`.
///
/// ```
/// use ostq::admin::search::JobFilter;
/// let filter = JobFilter::new().name("resize").error("TIMEOUT");
/// assert!(!filter.is_empty());
/// assert!(JobFilter::new().is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobFilter {
    /// The task name, exactly; [`UNNAMED_TASK`] (`-`) finds jobs pushed without one.
    pub name: Option<String>,
    /// Text the job's last error contains (ASCII case ignored).
    pub error: Option<String>,
    /// Text the job's payload bytes contain (ASCII case ignored). Completed jobs keep no payload,
    /// so they never match it.
    pub payload: Option<String>,
}

impl JobFilter {
    /// A filter that matches every job.
    ///
    /// ```
    /// assert!(ostq::admin::search::JobFilter::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Only jobs of this task name ([`UNNAMED_TASK`], `-`, for jobs without one). An empty
    /// name sets no criterion.
    ///
    /// ```
    /// let filter = ostq::admin::search::JobFilter::new().name("resize");
    /// assert_eq!(filter.name.as_deref(), Some("resize"));
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into()).filter(|n| !n.is_empty());
        self
    }

    /// Only jobs whose last error contains this text (ASCII case ignored). Empty text sets no
    /// criterion.
    ///
    /// ```
    /// let filter = ostq::admin::search::JobFilter::new().error("timed out");
    /// assert_eq!(filter.error.as_deref(), Some("timed out"));
    /// ```
    pub fn error(mut self, text: impl Into<String>) -> Self {
        self.error = Some(text.into()).filter(|t| !t.is_empty());
        self
    }

    /// Only jobs whose payload contains this text (ASCII case ignored). Empty text sets no
    /// criterion.
    ///
    /// ```
    /// let filter = ostq::admin::search::JobFilter::new().payload("\"user\":42");
    /// assert!(filter.payload.is_some());
    /// ```
    pub fn payload(mut self, text: impl Into<String>) -> Self {
        self.payload = Some(text.into()).filter(|t| !t.is_empty());
        self
    }

    /// Whether the filter sets no criterion (and so matches every job).
    ///
    /// ```
    /// assert!(ostq::admin::search::JobFilter::new().error("").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.error.is_none() && self.payload.is_none()
    }

    /// Whether a job matches every criterion.
    ///
    /// ```
    /// use ostq::admin::search::JobFilter;
    /// # fn demo(job: &ostq::JobInfo) {
    /// if JobFilter::new().error("timeout").matches(job) {
    ///     println!("{} timed out", job.id);
    /// }
    /// # }
    /// ```
    pub fn matches(&self, job: &JobInfo) -> bool {
        let name_ok = self.name.as_deref().is_none_or(|wanted| {
            let name = job.name.as_deref().unwrap_or(UNNAMED_TASK);
            name == wanted
        });
        let error_ok = self.error.as_deref().is_none_or(|wanted| {
            let error = job.last_error.as_deref().unwrap_or("");
            contains_ignoring_ascii_case(error.as_bytes(), wanted.as_bytes())
        });
        let payload_ok = self.payload.as_deref().is_none_or(|wanted| {
            job.payload
                .as_deref()
                .is_some_and(|payload| contains_ignoring_ascii_case(payload, wanted.as_bytes()))
        });
        name_ok && error_ok && payload_ok
    }
}

/// Whether `needle` occurs in `haystack`, ASCII letters compared without case.
fn contains_ignoring_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
}

/// What one [`Queue::search`] call found.
///
/// JSON: `{"jobs": [<job>, …], "examined": 5000, "next": "<cursor>" | null}` (jobs as
/// [`JobInfo`] serializes).
///
/// ```
/// let found = ostq::admin::search::Found::default();
/// assert!(found.finished());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Found {
    /// The matching jobs, in the state's listing order.
    pub jobs: Vec<JobInfo>,
    /// How many jobs this call examined.
    pub examined: u64,
    /// Where to go on searching; `None` when the call reached the end of the state. A `Some`
    /// means the call stopped early, at its budget or at its limit of matches.
    pub next: Option<Cursor>,
    /// For pending jobs, one entry per job: where it was in the pending list, as
    /// [`Page::list_index`](crate::admin::Page::list_index). Empty for other states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub list_index: Vec<Option<u64>>,
}

impl Found {
    /// Whether the search reached the end of the state (nothing left to examine).
    ///
    /// ```
    /// assert!(ostq::admin::search::Found::default().finished());
    /// ```
    pub fn finished(&self) -> bool {
        self.next.is_none()
    }
}

impl Queue {
    /// Jobs in `state` that match `filter`, examining at most `budget` jobs (1..=
    /// [`MAX_SEARCH_BUDGET`]) after `cursor` (from the start for `None`) and returning at most
    /// `limit` matches (1..=[`MAX_PAGE`]). Pass [`Found::next`] back as `cursor` to go on: the
    /// matches of successive calls neither skip nor repeat a job that stays in the state.
    ///
    /// Each Redis command reads at most [`SEARCH_CHUNK`] jobs (the pending list's cursor may scan
    /// further to find its place, see [`Queue::page`]), so a call stays cheap at any queue size;
    /// its cost grows with `budget`.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use ostq::admin::search::{JobFilter, DEFAULT_SEARCH_BUDGET};
    /// let queue = client.queue("videos");
    /// let filter = JobFilter::new().error("timed out");
    /// let mut cursor = None;
    /// loop {
    ///     let found = queue
    ///         .search(ostq::JobState::Dead, &filter, cursor.as_ref(), DEFAULT_SEARCH_BUDGET, 100)
    ///         .await?;
    ///     for job in &found.jobs {
    ///         println!("{} {:?}", job.id, job.last_error);
    ///     }
    ///     match found.next {
    ///         Some(next) => cursor = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn search(
        &self,
        state: JobState,
        filter: &JobFilter,
        cursor: Option<&Cursor>,
        budget: usize,
        limit: usize,
    ) -> Result<Found> {
        let budget = budget.clamp(1, MAX_SEARCH_BUDGET);
        let limit = limit.clamp(1, MAX_PAGE);
        let mut found = Found {
            next: cursor.cloned(),
            ..Found::default()
        };
        // Pages that come back short (the pending list's scan cap) still count as a call:
        // bound the calls, not only the jobs.
        let max_calls = budget.div_ceil(SEARCH_CHUNK) * 2 + 4;
        for _ in 0..max_calls {
            let left = budget - found.examined as usize;
            let wanted = limit - found.jobs.len();
            let mut size = left.min(SEARCH_CHUNK);
            let (page, matches) = loop {
                let page = self.page(state, found.next.as_ref(), size).await?;
                let matches: Vec<usize> = (0..page.jobs.len())
                    .filter(|&i| filter.matches(&page.jobs[i]))
                    .collect();
                if matches.len() <= wanted {
                    break (page, matches);
                }
                // More matches than room: read again up to the last match that fits, so the
                // cursor lands right after it (the queue may have changed meanwhile: a page of
                // `wanted` jobs cannot overflow).
                size = if size > matches[wanted - 1] + 1 {
                    matches[wanted - 1] + 1
                } else {
                    wanted
                };
            };
            found.examined += page.jobs.len() as u64;
            if !page.list_index.is_empty() {
                let hints = matches
                    .iter()
                    .map(|&i| page.list_index.get(i).copied().flatten());
                found.list_index.extend(hints);
            }
            let mut jobs = page.jobs;
            let mut kept = matches.into_iter().peekable();
            let mut index = 0;
            jobs.retain(|_| {
                let keep = kept.peek() == Some(&index);
                if keep {
                    kept.next();
                }
                index += 1;
                keep
            });
            found.jobs.extend(jobs);
            found.next = page.next;
            let done = found.next.is_none()
                || found.examined as usize >= budget
                || found.jobs.len() >= limit;
            if done {
                break;
            }
        }
        Ok(found)
    }

    /// The queue's rate limit: `(max, period)` as [`Queue::set_rate_limit`] set it, `None` when
    /// it has none.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// if let Some((max, period)) = client.queue("emails").rate_limit().await? {
    ///     println!("at most {max} jobs per {period:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn rate_limit(&self) -> Result<Option<(u32, std::time::Duration)>> {
        self.keys()?;
        // A sharded queue (design §19): the sum of its shards' shares (draining ones left out).
        let (layout, shards) = self.shard_set().await?;
        let count = layout.count();
        let mut limit: Option<(u64, u64)> = None;
        for shard in shards.iter().take(count) {
            if let Some((max, period)) =
                stored::rate_limit(&mut self.client_ref().conn(), shard.keys()?).await?
            {
                let sum = limit.map_or(0, |(m, _)| m);
                limit = Some((sum + max, period));
            }
        }
        Ok(limit.map(|(max, period_ms)| {
            let max = u32::try_from(max).unwrap_or(u32::MAX);
            (max, std::time::Duration::from_millis(period_ms))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: Option<&str>, error: Option<&str>, payload: Option<&[u8]>) -> JobInfo {
        let mut info: JobInfo = serde_json::from_value(serde_json::json!({
            "id": "1", "queue": "q", "state": "dead", "name": null, "payload": null,
            "attempts": 0, "max_attempts": 0, "priority": 0, "enqueued_at_ms": null,
            "started_at_ms": null, "finished_at_ms": null, "due_at_ms": null,
            "last_error": null, "result": null, "tracked": false
        }))
        .unwrap();
        info.name = name.map(str::to_string);
        info.last_error = error.map(str::to_string);
        info.payload = payload.map(<[u8]>::to_vec);
        info
    }

    #[test]
    fn every_given_criterion_must_match() {
        let j = job(
            Some("resize"),
            Some("Timed OUT after 5s"),
            Some(b"{\"user\":42}"),
        );
        assert!(JobFilter::new().matches(&j));
        assert!(JobFilter::new().name("resize").matches(&j));
        assert!(
            !JobFilter::new().name("resiz").matches(&j),
            "names match exactly"
        );
        assert!(JobFilter::new().error("timed out").matches(&j));
        assert!(JobFilter::new().payload("USER\":4").matches(&j));
        assert!(!JobFilter::new().name("resize").error("refused").matches(&j));
        let bare = job(None, None, Some(b"\xff\x00abc"));
        assert!(JobFilter::new().name(UNNAMED_TASK).matches(&bare));
        assert!(JobFilter::new().payload("ABC").matches(&bare));
        assert!(!JobFilter::new().error("x").matches(&bare));
        let completed = job(Some("resize"), None, None);
        assert!(!JobFilter::new().payload("a").matches(&completed));
    }
}
