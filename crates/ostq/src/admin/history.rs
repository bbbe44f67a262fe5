//! Per-task history: what each task's jobs did per minute (kept 25 hours) and per hour (kept 8
//! days), as workers recorded it beside their outcome writes (design §2, "History").
//!
//! [`Queue::history`] reads a range of points, [`Queue::failure_rate_over`] a recent failure
//! rate. Every type here has a stable JSON form (fields may be added, none renamed or removed);
//! `ostq history … --json` prints a `Vec<HistoryPoint>`:
//!
//! ```json
//! [{"at_ms": 1714000020000,
//!   "tasks": {"resize": {"processed": 3, "completed": 3, "failed": 0, "retried": 0, "dead": 0,
//!                        "run": [0, 2, 1, 0, …], "wait": […], "total": […]}}}]
//! ```
//!
//! Histograms have 24 fixed log-scale buckets: bucket `b` counts durations `d` with
//! `5·2^(b-1) ms < d ≤ 5·2^b ms` (bucket 0: `d ≤ 5 ms`; bucket 23: everything above
//! `5·2^22 ms` ≈ 5.8 h).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::producer::Queue;
use crate::store::history::{self as stored, Span};
use crate::{Error, Result};

/// How many buckets a [`Histogram`] has.
///
/// ```
/// assert_eq!(ostq::admin::HISTOGRAM_BUCKETS, 24);
/// ```
pub const HISTOGRAM_BUCKETS: usize = 24;

/// The most points one [`Queue::history`] call returns (25 hours of minutes, the time minute
/// points are kept).
///
/// ```
/// assert_eq!(ostq::admin::MAX_HISTORY_POINTS, 1_500);
/// ```
pub const MAX_HISTORY_POINTS: u64 = 1_500;

/// The task name history gives jobs pushed without one.
///
/// ```
/// assert_eq!(ostq::admin::UNNAMED_TASK, "-");
/// ```
pub const UNNAMED_TASK: &str = "-";

/// The resolution of [`Queue::history`]: one point per minute or per hour.
///
/// JSON: `"minute"` or `"hour"`.
///
/// ```
/// use ostq::admin::Resolution;
/// assert_eq!(serde_json::to_string(&Resolution::Hour).unwrap(), "\"hour\"");
/// assert_eq!(Resolution::Minute.step().as_secs(), 60);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// One point per minute; minute points are kept 25 hours.
    Minute,
    /// One point per hour; hour points are kept 8 days.
    Hour,
}

impl Resolution {
    /// The time one point covers.
    ///
    /// ```
    /// assert_eq!(ostq::admin::Resolution::Hour.step().as_secs(), 3_600);
    /// ```
    pub fn step(self) -> Duration {
        Duration::from_millis(self.step_ms())
    }

    fn step_ms(self) -> u64 {
        match self {
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
        }
    }

    fn span(self) -> Span {
        match self {
            Resolution::Minute => Span::Minute,
            Resolution::Hour => Span::Hour,
        }
    }
}

/// Counts of durations in 24 fixed log-scale buckets: bucket `b` counts durations `d` with
/// `5·2^(b-1) ms < d ≤ 5·2^b ms` (bucket 0: `d ≤ 5 ms`; the last bucket has no upper bound).
///
/// JSON: an array of 24 counts, bucket 0 first.
///
/// ```
/// use std::time::Duration;
/// let mut h = ostq::admin::Histogram::default();
/// h.buckets[0] = 1; // ≤ 5 ms
/// h.buckets[3] = 3; // 20 ms < d ≤ 40 ms
/// assert_eq!(h.count(), 4);
/// assert_eq!(h.quantile(0.5), Some(Duration::from_millis(40)));
/// assert_eq!(serde_json::to_value(&h).unwrap()[3], 3);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram {
    /// Counts per bucket.
    pub buckets: [u64; HISTOGRAM_BUCKETS],
}

impl Histogram {
    /// How many durations were counted.
    ///
    /// ```
    /// assert_eq!(ostq::admin::Histogram::default().count(), 0);
    /// ```
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |sum, n| sum.saturating_add(*n))
    }

    /// The largest duration bucket `b` counts (`5·2^b` ms); `None` for the last bucket (no
    /// bound) and for numbers past it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ostq::admin::Histogram;
    /// assert_eq!(Histogram::upper_bound(0), Some(Duration::from_millis(5)));
    /// assert_eq!(Histogram::upper_bound(22), Some(Duration::from_millis(5 << 22)));
    /// assert_eq!(Histogram::upper_bound(23), None);
    /// ```
    pub fn upper_bound(b: usize) -> Option<Duration> {
        (b + 1 < HISTOGRAM_BUCKETS).then(|| Duration::from_millis(5u64 << b))
    }

    /// The duration bucket `b` counts from (exclusive): 0 for bucket 0, else `5·2^(b-1)` ms;
    /// `None` past the last bucket.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ostq::admin::Histogram;
    /// assert_eq!(Histogram::lower_bound(0), Some(Duration::ZERO));
    /// assert_eq!(Histogram::lower_bound(23), Some(Duration::from_millis(5 << 22)));
    /// ```
    pub fn lower_bound(b: usize) -> Option<Duration> {
        match b {
            0 => Some(Duration::ZERO),
            b if b < HISTOGRAM_BUCKETS => Some(Duration::from_millis(5u64 << (b - 1))),
            _ => None,
        }
    }

    /// The bucket the `q`-th quantile (`q` in 0..=1, clamped) falls in: the first bucket where
    /// at least ⌈q·count⌉ (and at least one) of the durations are counted. `None` when empty or
    /// `q` is NaN.
    ///
    /// ```
    /// let mut h = ostq::admin::Histogram::default();
    /// h.buckets[2] = 9;
    /// h.buckets[23] = 1;
    /// assert_eq!(h.quantile_bucket(0.9), Some(2));
    /// assert_eq!(h.quantile_bucket(0.95), Some(23));
    /// ```
    pub fn quantile_bucket(&self, q: f64) -> Option<usize> {
        let count = self.count();
        if count == 0 || q.is_nan() {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0u64;
        for (b, n) in self.buckets.iter().enumerate() {
            seen = seen.saturating_add(*n);
            if seen >= rank {
                return Some(b);
            }
        }
        None
    }

    /// An upper estimate of the `q`-th quantile (`q` in 0..=1, clamped): the upper bound of the
    /// bucket it falls in ([`Histogram::quantile_bucket`]). When it falls in the last bucket,
    /// which has no upper bound, this is that bucket's **lower** bound (`5·2^22` ms ≈ 5.8 h),
    /// to be read as "more than"; check [`Histogram::quantile_bucket`] to tell. `None` when
    /// empty or `q` is NaN.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut h = ostq::admin::Histogram::default();
    /// assert_eq!(h.quantile(0.5), None);
    /// h.buckets[1] = 50; // 5 ms < d ≤ 10 ms
    /// h.buckets[4] = 50; // 40 ms < d ≤ 80 ms
    /// assert_eq!(h.quantile(0.5), Some(Duration::from_millis(10)));
    /// assert_eq!(h.quantile(0.95), Some(Duration::from_millis(80)));
    /// ```
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let b = self.quantile_bucket(q)?;
        Histogram::upper_bound(b).or_else(|| Histogram::lower_bound(b))
    }

    /// Adds `other`'s counts to these.
    ///
    /// ```
    /// let mut a = ostq::admin::Histogram::default();
    /// let mut b = a;
    /// a.buckets[0] = 1;
    /// b.buckets[0] = 2;
    /// a.merge(&b);
    /// assert_eq!(a.buckets[0], 3);
    /// ```
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }
}

/// What one task's jobs did in one minute or hour (or, merged, over several).
///
/// JSON: `{"processed": 4, "completed": 2, "failed": 2, "retried": 1, "dead": 1, "recovered": 0,
/// "run": [24 counts], "wait": [24 counts], "total": [24 counts]}`.
///
/// ```
/// let mut a = ostq::admin::TaskFigures::default();
/// a.processed = 2;
/// a.failed = 1;
/// let mut b = ostq::admin::TaskFigures::default();
/// b.processed = 2;
/// a.merge(&b);
/// assert_eq!(a.processed, 4);
/// assert_eq!(a.failure_rate(), Some(0.25));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskFigures {
    /// Attempts that ended, successful or not.
    pub processed: u64,
    /// Attempts that completed.
    pub completed: u64,
    /// Attempts that failed (errors, panics, timeouts).
    pub failed: u64,
    /// Failures sent to retry.
    pub retried: u64,
    /// Failures sent to the dead set.
    pub dead: u64,
    /// Jobs taken back from workers whose leases expired (counted in `processed` and `failed`
    /// as well, and in `retried` or `dead`). Written by `fetch.lua` when it recovers them.
    #[serde(default)]
    pub recovered: u64,
    /// Run time of attempts: start to end, on the worker's clock.
    pub run: Histogram,
    /// Wait time of jobs: enqueue to the start of their first attempt (jobs with an enqueue
    /// time only; bare `LPUSH`es have none).
    pub wait: Histogram,
    /// Total time of completed jobs: enqueue to completion (jobs with an enqueue time only).
    pub total: Histogram,
    /// The run times counted in `run`, summed, in ms.
    #[serde(default)]
    pub run_sum_ms: u64,
    /// The wait times counted in `wait`, summed, in ms.
    #[serde(default)]
    pub wait_sum_ms: u64,
    /// The total times counted in `total`, summed, in ms.
    #[serde(default)]
    pub total_sum_ms: u64,
}

impl TaskFigures {
    /// Adds `other`'s counts to these.
    ///
    /// ```
    /// let mut a = ostq::admin::TaskFigures::default();
    /// a.dead = 1;
    /// let copy = a;
    /// a.merge(&copy);
    /// assert_eq!(a.dead, 2);
    /// ```
    pub fn merge(&mut self, other: &TaskFigures) {
        self.processed = self.processed.saturating_add(other.processed);
        self.completed = self.completed.saturating_add(other.completed);
        self.failed = self.failed.saturating_add(other.failed);
        self.retried = self.retried.saturating_add(other.retried);
        self.dead = self.dead.saturating_add(other.dead);
        self.recovered = self.recovered.saturating_add(other.recovered);
        self.run.merge(&other.run);
        self.wait.merge(&other.wait);
        self.total.merge(&other.total);
        self.run_sum_ms = self.run_sum_ms.saturating_add(other.run_sum_ms);
        self.wait_sum_ms = self.wait_sum_ms.saturating_add(other.wait_sum_ms);
        self.total_sum_ms = self.total_sum_ms.saturating_add(other.total_sum_ms);
    }

    /// Failed over processed attempts; `None` when nothing was processed.
    ///
    /// ```
    /// assert_eq!(ostq::admin::TaskFigures::default().failure_rate(), None);
    /// ```
    pub fn failure_rate(&self) -> Option<f64> {
        (self.processed > 0).then(|| self.failed as f64 / self.processed as f64)
    }

    /// Adds one stored field (`figure` being the part after the last `|`); `false` when the
    /// figure is not one ostq knows (the field is then ignored).
    fn add(&mut self, figure: &str, n: u64) -> bool {
        let count = match figure {
            "processed" => &mut self.processed,
            "completed" => &mut self.completed,
            "failed" => &mut self.failed,
            "retried" => &mut self.retried,
            "dead" => &mut self.dead,
            "recovered" => &mut self.recovered,
            _ => {
                let Some((kind, bucket)) = figure.split_once(':') else {
                    return false;
                };
                let (histogram, sum) = match kind {
                    "run" => (&mut self.run, &mut self.run_sum_ms),
                    "wait" => (&mut self.wait, &mut self.wait_sum_ms),
                    "total" => (&mut self.total, &mut self.total_sum_ms),
                    _ => return false,
                };
                if bucket == "sum" {
                    *sum = sum.saturating_add(n);
                    return true;
                }
                // Only the canonical decimal form ("0".."23"), as `history.lua` writes it.
                let b = match bucket.parse::<usize>() {
                    Ok(b) if b < HISTOGRAM_BUCKETS && bucket == b.to_string() => b,
                    _ => return false,
                };
                &mut histogram.buckets[b]
            }
        };
        *count = count.saturating_add(n);
        true
    }
}

/// One minute or hour of a queue's history: what each task's jobs did in it.
///
/// JSON: `{"at_ms": 1714000020000, "tasks": {"<task>": <TaskFigures>, …}}`, `at_ms` being the
/// start of the minute or hour (unix ms) and the tasks sorted by name. Jobs pushed without a
/// task name are under `"-"` ([`UNNAMED_TASK`]). A minute or hour in which nothing was recorded
/// has no tasks.
///
/// ```
/// use ostq::admin::{HistoryPoint, TaskFigures};
/// let mut point = HistoryPoint { at_ms: 60_000, tasks: Default::default() };
/// let mut ok = TaskFigures::default();
/// ok.processed = 3;
/// point.tasks.insert("ok".into(), ok);
/// point.tasks.insert("-".into(), ok);
/// assert_eq!(point.all_tasks().processed, 6);
/// assert_eq!(point.at().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 60);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// The start of the minute or hour, unix ms.
    pub at_ms: u64,
    /// Figures per task name.
    pub tasks: BTreeMap<String, TaskFigures>,
}

impl HistoryPoint {
    /// Every task's figures merged.
    ///
    /// ```
    /// assert_eq!(ostq::admin::HistoryPoint::default().all_tasks().processed, 0);
    /// ```
    pub fn all_tasks(&self) -> TaskFigures {
        let mut all = TaskFigures::default();
        for figures in self.tasks.values() {
            all.merge(figures);
        }
        all
    }

    /// [`HistoryPoint::at_ms`] as a time.
    ///
    /// ```
    /// let point = ostq::admin::HistoryPoint::default();
    /// assert_eq!(point.at(), std::time::UNIX_EPOCH);
    /// ```
    pub fn at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at_ms)
    }

    /// The point of one stored hash: fields `<task>|<figure>` (split on the last `|`); fields
    /// without a `|` or with an unknown figure are ignored.
    fn from_fields(at_ms: u64, fields: HashMap<String, u64>) -> HistoryPoint {
        let mut tasks: BTreeMap<String, TaskFigures> = BTreeMap::new();
        for (field, n) in fields {
            let Some((task, figure)) = field.rsplit_once('|') else {
                continue;
            };
            let mut figures = tasks.get(task).copied().unwrap_or_default();
            if figures.add(figure, n) {
                tasks.insert(task.to_owned(), figures);
            }
        }
        HistoryPoint { at_ms, tasks }
    }
}

impl HistoryPoint {
    /// Adds another point's figures, task by task (the shards of one queue, design §19).
    fn add(&mut self, other: &HistoryPoint) {
        for (task, figures) in &other.tasks {
            self.tasks.entry(task.clone()).or_default().merge(figures);
        }
    }
}

/// Unix ms of a time (0 before 1970).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Queue {
    /// The queue's history from `from` to `to` (both included): one point per minute or hour
    /// that overlaps the range, oldest first, **including** minutes or hours in which nothing
    /// was recorded (points without tasks). Minute points are kept 25 hours, hour points 8
    /// days: older ones come back empty.
    ///
    /// Points are numbered by the **server's** clock when written (⌊unix ms / 60,000⌋ or
    /// ⌊unix ms / 3,600,000⌋), while `from` and `to` are read against those numbers as given,
    /// usually from the client's clock: a small skew between the two just shifts the window.
    ///
    /// One round trip (pipelined). Refused with [`Error::Config`] when `from` is after `to`
    /// or the range spans more than [`MAX_HISTORY_POINTS`] points. Fields ostq does not know
    /// and values that are not numbers are ignored.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use std::time::{Duration, SystemTime};
    /// use ostq::admin::Resolution;
    /// let now = SystemTime::now();
    /// let hour_ago = now - Duration::from_secs(3600);
    /// let points = client.queue("videos").history(Resolution::Minute, hour_ago, now).await?;
    /// for point in &points {
    ///     let all = point.all_tasks();
    ///     println!("{}: {} processed, run p95 {:?}", point.at_ms, all.processed, all.run.quantile(0.95));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history(
        &self,
        resolution: Resolution,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<HistoryPoint>> {
        let keys = self.keys()?;
        let (from_ms, to_ms) = (unix_ms(from), unix_ms(to));
        if from_ms > to_ms {
            return Err(Error::Config(
                "history: the start of the range is after its end".into(),
            ));
        }
        let step = resolution.step_ms();
        let (first, last) = (from_ms / step, to_ms / step);
        let points = last - first + 1;
        if points > MAX_HISTORY_POINTS {
            return Err(Error::Config(format!(
                "history: {points} {resolution:?} points asked for, at most {MAX_HISTORY_POINTS} per call \
                 (use hours for long ranges, or split the range)"
            )));
        }
        let shards = self.counted_queues().await?;
        if shards.len() > 1 {
            // A sharded queue (design §19): each shard's workers write its own history; the
            // queue's is their sum, point by point (every shard's reply has the same points).
            let mut sum: Vec<HistoryPoint> = Vec::new();
            for shard in &shards {
                let points = Box::pin(shard.history(resolution, from, to)).await?;
                if sum.is_empty() {
                    sum = points;
                    continue;
                }
                for (total, point) in sum.iter_mut().zip(&points) {
                    total.add(point);
                }
            }
            return Ok(sum);
        }
        let mut conn = self.client_ref().conn();
        let buckets = stored::read(&mut conn, keys, resolution.span(), first, last).await?;
        Ok(buckets
            .into_iter()
            .map(|(bucket, fields)| HistoryPoint::from_fields(bucket * step, fields))
            .collect())
    }

    /// What each task's jobs did since the queue's history began (the `hist:all` hash, design
    /// §2 "History"): counts, histograms and the sums of their durations, by task name, in one
    /// round trip. These only grow, so they are what Prometheus counters and histograms are
    /// made of (`ostq metrics` exports them). Workers built with `history(false)` add nothing;
    /// once the hash is full (20,000 fields), new task names are counted under `~other`.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// for (task, figures) in client.queue("videos").history_totals().await? {
    ///     println!("{task}: {} processed, {} dead, run p99 {:?}",
    ///              figures.processed, figures.dead, figures.run.quantile(0.99));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn history_totals(&self) -> Result<BTreeMap<String, TaskFigures>> {
        self.keys()?;
        // A sharded queue (design §19): the sum of its shards' totals (one read each).
        let mut sum = HistoryPoint::default();
        for shard in self.counted_queues().await? {
            let keys = shard.keys()?;
            let fields = stored::read_totals(&mut self.client_ref().conn(), keys).await?;
            sum.add(&HistoryPoint::from_fields(0, fields));
        }
        Ok(sum.tasks)
    }

    /// Failed over processed attempts, every task together, in the minute points covering the
    /// last `window` by the client's clock (so up to a minute more than `window`: the current
    /// minute and those reaching back to `now - window`); `None` when nothing was processed.
    /// `window` may be at most 1,499 minutes ([`MAX_HISTORY_POINTS`]).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use std::time::Duration;
    /// let rate = client.queue("videos").failure_rate_over(Duration::from_secs(300)).await?;
    /// if rate.is_some_and(|r| r > 0.1) {
    ///     println!("more than 10% of attempts failed over the last 5 minutes");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn failure_rate_over(&self, window: Duration) -> Result<Option<f64>> {
        let now = SystemTime::now();
        let from = now.checked_sub(window).unwrap_or(UNIX_EPOCH);
        let mut all = TaskFigures::default();
        for point in self.history(Resolution::Minute, from, now).await? {
            all.merge(&point.all_tasks());
        }
        Ok(all.failure_rate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(counts: &[(usize, u64)]) -> Histogram {
        let mut h = Histogram::default();
        for &(b, n) in counts {
            h.buckets[b] = n;
        }
        h
    }

    #[test]
    fn bounds_double_from_5_ms() {
        assert_eq!(Histogram::upper_bound(1), Some(Duration::from_millis(10)));
        assert_eq!(Histogram::lower_bound(1), Some(Duration::from_millis(5)));
        assert_eq!(
            Histogram::upper_bound(22),
            Some(Duration::from_millis(20_971_520))
        );
        assert_eq!(Histogram::upper_bound(23), None);
        assert_eq!(Histogram::upper_bound(99), None);
        assert_eq!(Histogram::lower_bound(24), None);
        for b in 1..HISTOGRAM_BUCKETS - 1 {
            assert_eq!(Histogram::lower_bound(b + 1), Histogram::upper_bound(b));
        }
    }

    #[test]
    fn quantiles_take_the_upper_bound_of_their_bucket() {
        let h = histogram(&[(0, 1), (2, 2), (5, 1)]);
        assert_eq!(h.count(), 4);
        assert_eq!(h.quantile(0.0), Some(Duration::from_millis(5)));
        assert_eq!(h.quantile(0.25), Some(Duration::from_millis(5)));
        assert_eq!(h.quantile(0.26), Some(Duration::from_millis(20)));
        assert_eq!(h.quantile(0.75), Some(Duration::from_millis(20)));
        assert_eq!(h.quantile(0.76), Some(Duration::from_millis(160)));
        assert_eq!(h.quantile(1.0), Some(Duration::from_millis(160)));
        assert_eq!(h.quantile(7.0), Some(Duration::from_millis(160)));
        assert_eq!(h.quantile(-1.0), Some(Duration::from_millis(5)));
        assert_eq!(h.quantile(f64::NAN), None);
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn a_quantile_in_the_last_bucket_is_its_lower_bound() {
        let h = histogram(&[(23, 2)]);
        assert_eq!(h.quantile_bucket(0.5), Some(23));
        assert_eq!(h.quantile(0.5), Some(Duration::from_millis(5 << 22)));
    }

    #[test]
    fn huge_counts_saturate() {
        let mut h = histogram(&[(0, u64::MAX), (1, 5)]);
        assert_eq!(h.count(), u64::MAX);
        h.merge(&histogram(&[(0, 1)]));
        assert_eq!(h.buckets[0], u64::MAX);
        // Past u64::MAX the figures are only approximate, but never a panic.
        assert!(h.quantile(1.0).is_some());
        assert_eq!(h.quantile(0.5), Some(Duration::from_millis(5)));
    }

    #[test]
    fn fields_split_on_the_last_bar() {
        let fields: HashMap<String, u64> = [
            ("a|b|processed", 2),
            ("a|b|run:3", 2),
            ("-|failed", 1),
            ("-|wait:23", 1),
            ("x|total:0", 4),
            ("x|total:24", 9),
            ("x|total:03", 9),
            ("x|run:", 9),
            ("x|latency:1", 9),
            ("x|requeued", 9),
            ("noBar", 9),
            ("y|unknown", 9),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let point = HistoryPoint::from_fields(120_000, fields);
        assert_eq!(point.at_ms, 120_000);
        assert_eq!(
            point.tasks.keys().collect::<Vec<_>>(),
            vec!["-", "a|b", "x"]
        );
        assert_eq!(point.tasks["a|b"].processed, 2);
        assert_eq!(point.tasks["a|b"].run.buckets[3], 2);
        assert_eq!(point.tasks["-"].failed, 1);
        assert_eq!(point.tasks["-"].wait.buckets[23], 1);
        assert_eq!(point.tasks["x"].total, histogram(&[(0, 4)]));
        assert_eq!(point.tasks["x"].processed, 0);
        assert_eq!(point.all_tasks().processed, 2);
    }

    #[test]
    fn json_is_stable() {
        let mut figures = TaskFigures {
            processed: 4,
            completed: 2,
            failed: 2,
            retried: 1,
            dead: 1,
            ..TaskFigures::default()
        };
        figures.run.buckets[1] = 4;
        let point = HistoryPoint {
            at_ms: 60_000,
            tasks: [("ok".to_owned(), figures)].into_iter().collect(),
        };
        let json = serde_json::to_value(&point).unwrap();
        assert_eq!(json["at_ms"], 60_000);
        let ok = &json["tasks"]["ok"];
        for (k, v) in [
            ("processed", 4),
            ("completed", 2),
            ("failed", 2),
            ("retried", 1),
            ("dead", 1),
        ] {
            assert_eq!(ok[k], v, "{k}");
        }
        assert_eq!(ok["run"].as_array().unwrap().len(), 24);
        assert_eq!(ok["run"][1], 4);
        assert_eq!(ok["wait"][0], 0);
        let back: HistoryPoint = serde_json::from_value(json).unwrap();
        assert_eq!(back, point);
        assert_eq!(serde_json::to_value(Resolution::Minute).unwrap(), "minute");
        let r: Resolution = serde_json::from_str("\"hour\"").unwrap();
        assert_eq!(r, Resolution::Hour);
    }
}
