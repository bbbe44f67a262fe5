//! The monitor loop: hands the user's monitor hook a [`MonitorReport`] at its interval: the
//! worker's queues as `ostq stats` sees them (counts, jobs per second, failure rates, the age of
//! the next job, live workers), Redis's figures, the alerts of [`AlertRules::recommended`], and
//! this worker's own figures.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::handler::panic_message;
use super::runtime::Shared;
use super::MonitorHook;
use crate::admin::alerts::{self, Alert, AlertRules};
use crate::admin::{Snapshot, StatsSampler};

/// What the monitor hook ([`WorkerBuilder::on_monitor`](super::WorkerBuilder::on_monitor))
/// receives at each interval.
///
/// JSON: `{"snapshot": <Snapshot>, "alerts": [<Alert>…], "worker": <WorkerFigures>}` (the
/// [`Snapshot`] as `ostq stats --json` prints it).
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// use std::time::Duration;
/// ostq::Worker::builder(client)
///     .queue("videos")
///     .handler(|_job: ostq::Job| async { Ok::<_, ostq::BoxError>(()) })
///     .on_monitor(Duration::from_secs(10), |report| {
///         for q in &report.snapshot.queues {
///             println!("{}: {} pending, {:?} jobs/s, next job waited {:?}",
///                      q.counts.queue, q.counts.pending, q.jobs_per_sec, q.oldest_pending_age());
///         }
///         for alert in &report.alerts {
///             eprintln!("ALERT: {}", alert.message);
///         }
///         println!("this worker: {} of {} slots busy", report.worker.busy, report.worker.concurrency);
///     })
///     .build()?
///     .run()
///     .await
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MonitorReport {
    /// The worker's queues and Redis's figures; jobs per second are measured between reports
    /// (absent in the first).
    pub snapshot: Snapshot,
    /// What [`AlertRules::recommended`] raises for them.
    pub alerts: Vec<Alert>,
    /// This worker's own figures.
    pub worker: WorkerFigures,
}

/// One worker's own figures, since it started.
///
/// ```
/// let figures = ostq::worker::WorkerFigures::default();
/// assert_eq!(figures.completed + figures.retried + figures.dead, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerFigures {
    /// Its id in the registry (`host:pid:random`).
    pub id: String,
    /// Jobs it may run at once.
    pub concurrency: usize,
    /// Jobs it is running now.
    pub busy: usize,
    /// Attempts it completed.
    pub completed: u64,
    /// Attempts of its that failed and went to retry.
    pub retried: u64,
    /// Attempts of its that failed and went to the dead set.
    pub dead: u64,
}

pub(super) async fn monitor_loop(
    shared: Arc<Shared>,
    every: Duration,
    hook: MonitorHook,
    stop: CancellationToken,
) {
    // The logical queues: a sharded queue's own name sums all its shards, those a new layout
    // adds included (its shards listed too would be counted twice).
    let names: Vec<String> = shared
        .queues
        .iter()
        .map(|k| k.queue.clone())
        .filter(|name| !name.contains(crate::keys::SHARD_MARK))
        .collect();
    // Rates over the last minute, or two reports when they are further apart.
    let window = (every * 2).max(Duration::from_secs(60));
    let mut sampler = StatsSampler::new(&shared.client)
        .queues(names)
        .window(window);
    let rules = AlertRules::recommended();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let snapshot = match sampler.snapshot().await {
            Ok(snapshot) => snapshot,
            // A worker's ACL user need not have +info: report without Redis's figures.
            Err(e) if e.is_no_permission() => {
                warn!(
                    "the monitor may not run INFO under this ACL user: its reports carry no Redis \
                     figures from now on (grant +info to have them)"
                );
                sampler = sampler.redis_figures(false);
                continue;
            }
            Err(e) => {
                debug!(error = %e, "monitor could not read the queues");
                continue;
            }
        };
        let report = MonitorReport {
            alerts: alerts::check(&snapshot, &rules),
            snapshot,
            worker: own_figures(&shared),
        };
        // User code: a panic would end the monitor task for good, silently.
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&report))) {
            warn!(panic = %panic_message(panic.as_ref()), "monitor hook panicked");
        }
    }
}

fn own_figures(shared: &Shared) -> WorkerFigures {
    let [completed, retried, dead] = &shared.ended;
    WorkerFigures {
        id: shared.worker_id.clone(),
        concurrency: shared.config.concurrency,
        busy: shared.running.load(Ordering::Relaxed),
        completed: completed.load(Ordering::Relaxed),
        retried: retried.load(Ordering::Relaxed),
        dead: dead.load(Ordering::Relaxed),
    }
}
