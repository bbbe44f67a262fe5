//! The worker's figures through the `metrics` facade (`crate::metrics` lists them): the lease
//! keeper hands each written batch here, beside the history, so it costs a few lookups per
//! batch and one histogram record per duration, never a round trip.

use std::sync::atomic::Ordering;

use metrics::{counter, gauge, histogram, Histogram};

use super::runtime::{Outcome, OutcomeKind, Shared};
use crate::metrics::{BUSY, JOBS, RUN_DURATION, SLOTS, WAIT_DURATION};

/// The `task` label of a job: its name when a typed handler is registered for it, `-` without a
/// name, `~other` otherwise (producers choose names; label sets must stay bounded).
fn task_label<'a>(shared: &'a Shared, task: &'a str) -> &'a str {
    if task.is_empty() || shared.handlers.by_name.contains_key(task) {
        super::history::task_label(task)
    } else {
        "~other"
    }
}

/// One task label's part of a batch: outcomes counted (completed, retried, dead), and the
/// histograms its durations go to. The histograms are fetched once per task and batch and
/// recorded as the outcomes are read: collecting the durations first cost a `Vec` growth per job
/// on the keeper's path, with or without a recorder installed.
struct TaskShare<'a> {
    task: &'a str,
    counts: [u64; 3],
    run: Option<Histogram>,
    wait: Option<Histogram>,
}

/// Records a written batch of one queue's outcomes.
pub(super) fn record(shared: &Shared, queue: usize, outcomes: &[Outcome]) {
    let queue_name = &shared.queues[queue].queue;
    // A batch has few tasks: a linear search is cheapest.
    let mut by_task: Vec<TaskShare> = Vec::new();
    for outcome in outcomes {
        let slot = match &outcome.settled.kind {
            OutcomeKind::GivenBack => continue,
            OutcomeKind::Completed { .. } => 0,
            OutcomeKind::Failed { dead: false, .. } => 1,
            OutcomeKind::Failed { dead: true, .. } => 2,
        };
        let figures = &outcome.settled.figures;
        let task = task_label(shared, &figures.task);
        let at = match by_task.iter().position(|t| t.task == task) {
            Some(at) => at,
            None => {
                by_task.push(TaskShare {
                    task,
                    counts: [0; 3],
                    run: None,
                    wait: None,
                });
                by_task.len() - 1
            }
        };
        let share = &mut by_task[at];
        share.counts[slot] += 1;
        if let Some(ms) = figures.run_ms {
            share
                .run
                .get_or_insert_with(|| histogram!(RUN_DURATION, "queue" => queue_name.clone(), "task" => task.to_owned()))
                .record(ms as f64 / 1000.0);
        }
        if let Some(ms) = figures.wait_ms {
            share
                .wait
                .get_or_insert_with(|| histogram!(WAIT_DURATION, "queue" => queue_name.clone(), "task" => task.to_owned()))
                .record(ms as f64 / 1000.0);
        }
    }
    for TaskShare { task, counts, .. } in by_task {
        for (n, outcome) in counts.into_iter().zip(["completed", "retried", "dead"]) {
            if n > 0 {
                counter!(JOBS, "queue" => queue_name.clone(), "task" => task.to_owned(), "outcome" => outcome)
                    .increment(n);
            }
        }
    }
    record_slots(shared);
}

/// Sets the slot gauges: concurrency and jobs running now.
pub(super) fn record_slots(shared: &Shared) {
    gauge!(SLOTS).set(shared.config.concurrency as f64);
    gauge!(BUSY).set(shared.running.load(Ordering::Relaxed) as f64);
}
