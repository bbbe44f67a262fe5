//! The history: the lease keeper adds each written batch of outcomes to a pending tally, per queue
//! and task: counts and duration histograms, as plain arrays; the history loop turns that tally
//! into `<task>|<figure>` increments (docs/design.md §2, "History") and sends them to
//! `history.lua` once a second per queue and at shutdown. The history is minute-grained, so a
//! second's delay changes nothing, and its cost does not grow with the number of batches (one call
//! per batch cost 15 % of `ostq bench`'s throughput). The field names are formatted only then:
//! formatting them for every batch cost a dozen allocations per keeper round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::runtime::{Outcome, OutcomeKind, Shared};
use crate::store::lease;

/// How often the pending tally is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Figures written but not yet sent, per queue index: each task's sums.
pub(super) type Pending = Mutex<HashMap<usize, Vec<TaskSums>>>;

/// Adds a written batch to the pending tally.
pub(super) fn add(shared: &Shared, queue: usize, outcomes: &[Outcome]) {
    let mut pending = shared
        .history
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    add_to(pending.entry(queue).or_default(), outcomes);
}

/// Sends the pending tally every second, and once more when `stop` is cancelled (after the lease
/// keeper's last writes). Best effort: a tally Redis refuses is dropped with a debug line, since
/// the history is a report and must never hold up outcomes.
pub(super) async fn history_loop(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(FLUSH_EVERY) => false,
            _ = stop.cancelled() => true,
        };
        flush(&shared).await;
        if stopping {
            return;
        }
    }
}

async fn flush(shared: &Shared) {
    let pending = std::mem::take(
        &mut *shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    for (queue, sums) in pending {
        let keys = &shared.queues[queue];
        let fields: Vec<(String, u64)> = sums.iter().flat_map(TaskSums::fields).collect();
        if fields.is_empty() {
            continue;
        }
        let mut conn = shared.client.conn();
        if let Err(e) = lease::record_history(&mut conn, keys, &fields).await {
            debug!(queue = %keys.queue, error = %e, "could not record the history; dropped");
        }
    }
}

/// Histogram buckets: bucket `b` counts durations `d` (ms) with `5·2^(b-1) < d ≤ 5·2^b`; the last
/// one everything above `5·2^22` ms (about 5.8 h).
pub(super) const BUCKETS: u32 = 24;

/// The bucket of a duration in ms.
pub(super) fn bucket(ms: u64) -> u32 {
    (0..BUCKETS - 1)
        .find(|&b| ms <= 5u64 << b)
        .unwrap_or(BUCKETS - 1)
}

/// Adds one batch to a queue's sums. Per task, plain arrays: a batch has few tasks (usually
/// one), so a linear search and a few array increments per job.
fn add_to(sums: &mut Vec<TaskSums>, outcomes: &[Outcome]) {
    for outcome in outcomes {
        let figures = &outcome.settled.figures;
        let counts: &[usize] = match &outcome.settled.kind {
            OutcomeKind::GivenBack => continue,
            OutcomeKind::Completed { .. } => &[PROCESSED, COMPLETED],
            OutcomeKind::Failed { dead: true, .. } => &[PROCESSED, FAILED, DEAD],
            OutcomeKind::Failed { .. } => &[PROCESSED, FAILED, RETRIED],
        };
        let task = task_label(&figures.task);
        let at = match sums.iter().position(|t| t.task == task) {
            Some(at) => at,
            None => {
                sums.push(TaskSums::new(task.to_owned()));
                sums.len() - 1
            }
        };
        let sum = &mut sums[at];
        for &count in counts {
            sum.counts[count] += 1;
        }
        let durations = [figures.run_ms, figures.wait_ms, figures.total_ms];
        for ((histogram, total_ms), ms) in sum
            .histograms
            .iter_mut()
            .zip(&mut sum.sums_ms)
            .zip(durations)
        {
            if let Some(ms) = ms {
                histogram[bucket(ms) as usize] += 1;
                *total_ms = total_ms.saturating_add(ms);
            }
        }
    }
}

const PROCESSED: usize = 0;
const COMPLETED: usize = 1;
const FAILED: usize = 2;
const RETRIED: usize = 3;
const DEAD: usize = 4;
const COUNT_NAMES: [&str; 5] = ["processed", "completed", "failed", "retried", "dead"];
const HISTOGRAM_NAMES: [&str; 3] = ["run", "wait", "total"];

/// One task's sums since the last flush.
pub(super) struct TaskSums {
    task: String,
    counts: [u64; 5],
    /// Run, wait and total time, by bucket.
    histograms: [[u64; BUCKETS as usize]; 3],
    /// Run, wait and total time summed, in ms (a Prometheus histogram's `_sum`).
    sums_ms: [u64; 3],
}

impl TaskSums {
    fn new(task: String) -> Self {
        Self {
            task,
            counts: [0; 5],
            histograms: [[0; BUCKETS as usize]; 3],
            sums_ms: [0; 3],
        }
    }

    /// The non-zero sums as `("<task>|<figure>", n)`.
    fn fields(&self) -> Vec<(String, u64)> {
        let task = &self.task;
        let counts = COUNT_NAMES.iter().zip(self.counts);
        let mut fields: Vec<(String, u64)> = counts
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| (format!("{task}|{name}"), n))
            .collect();
        for ((name, histogram), &sum) in HISTOGRAM_NAMES
            .iter()
            .zip(&self.histograms)
            .zip(&self.sums_ms)
        {
            for (b, &n) in histogram.iter().enumerate().filter(|(_, n)| **n > 0) {
                fields.push((format!("{task}|{name}:{b}"), n));
            }
            // Durations of 0 ms add nothing: the field exists only with a non-zero sum.
            if sum > 0 {
                fields.push((format!("{task}|{name}:sum"), sum));
            }
        }
        fields
    }
}

/// Jobs without a task name are filed under `-` ([`crate::admin::UNNAMED_TASK`]).
pub(super) fn task_label(task: &str) -> &str {
    if task.is_empty() {
        crate::admin::UNNAMED_TASK
    } else {
        task
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_double_from_5_ms() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(5), 0);
        assert_eq!(bucket(6), 1);
        assert_eq!(bucket(10), 1);
        assert_eq!(bucket(11), 2);
        assert_eq!(bucket(5 << 22), 22);
        assert_eq!(bucket((5 << 22) + 1), 23);
        assert_eq!(bucket(u64::MAX), 23);
    }
}
