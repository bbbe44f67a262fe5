//! The running worker: one fetch loop for all its queues sharing a concurrency semaphore, one
//! task per job, one lease keeper that writes outcomes, and one renewer that extends the lease
//! groups this worker holds. The keeper batches outcomes into `fail.lua` / `requeue.lua` /
//! `complete.lua` calls (whatever piled up while the previous call was in flight). The renewer
//! has a task of its own so that renewal never waits behind outcome writes, however many there
//! are or however long a failing one is retried. The table of held groups is shared by the three
//! (a mutex, held for short synchronous sections only); the per-job path takes no lock, it sends
//! its outcome over a channel.
//!
//! This file holds what they share and `run`, which starts and stops them; each loop has a file
//! of its own: `fetcher.rs`, `executor.rs` (one job), `keeper.rs`, `renewer.rs`,
//! `cancellation.rs`, `monitor.rs`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::cancellation::watch_cancellations;
use super::fetcher::{fetch_loop, give_back_parked};
use super::handler::Handlers;
use super::heartbeat::{heartbeat_loop, worker_id};
use super::history::{self, history_loop};
use super::keeper::lease_keeper;
use super::layouts::{watch_layouts, Layouts, Served, Watcher};
use super::monitor::monitor_loop;
use super::prefetch::Prefetch;
use super::renewer::lease_renewer;
use super::slots::AppendOnly;
use super::{Config, ErrorHook, MonitorHook, Worker};
use crate::job::JobContext;
use crate::keys::QueueKeys;
use crate::Client;
use crate::Result;

/// Groups per renew call, outcomes per flush.
pub(super) const CHUNK: usize = 1000;

/// An attempt ended: what the lease keeper hears about.
pub(super) struct Outcome {
    pub(super) queue: usize,
    pub(super) group: u64,
    pub(super) index: u32,
    pub(super) settled: Settled,
}

/// How an attempt ended, with what the scripts need to know of the job.
pub(super) struct Settled {
    pub(super) id: String,
    pub(super) tracked: bool,
    /// The unique key the job holds until it completes or dies ("" for none).
    pub(super) unique: String,
    pub(super) kind: OutcomeKind,
    /// What the history records of the attempt (docs/design.md §2, "History").
    pub(super) figures: Figures,
}

impl Settled {
    pub(super) fn new(id: String, tracked: bool, unique: String, kind: OutcomeKind) -> Self {
        Self {
            id,
            tracked,
            unique,
            kind,
            figures: Figures::default(),
        }
    }

    pub(super) fn with(mut self, figures: Figures) -> Self {
        self.figures = figures;
        self
    }
}

/// An attempt's task and durations for the history; `None` where unknown (an attempt refused
/// before it ran has no run time; a bare entry has no enqueue time).
#[derive(Debug, Default, Clone)]
pub(super) struct Figures {
    /// The job's task name ("" for none).
    pub(super) task: String,
    pub(super) run_ms: Option<u64>,
    /// Enqueue to the start of the first attempt (first attempts only).
    pub(super) wait_ms: Option<u64>,
    /// Enqueue to completion (completed jobs only).
    pub(super) total_ms: Option<u64>,
}

pub(super) enum OutcomeKind {
    Completed {
        result: Option<Vec<u8>>,
    },
    Failed {
        envelope: Vec<u8>,
        dead: bool,
        delay_ms: u64,
        attempt: u32,
        error: String,
    },
    /// Shutdown stopped the handler: the job goes back to the queue.
    GivenBack,
}

impl OutcomeKind {
    /// How the attempt ended, as the job's span records it: `completed`, `retry`, `dead` or
    /// `given_back`.
    pub(super) fn name(&self) -> &'static str {
        match self {
            OutcomeKind::Completed { .. } => "completed",
            OutcomeKind::Failed { dead: true, .. } => "dead",
            OutcomeKind::Failed { .. } => "retry",
            OutcomeKind::GivenBack => "given_back",
        }
    }
}

pub(super) struct Shared {
    pub(super) client: Client,
    /// The physical queues served, by index (what lease groups, outcomes and parked jobs name).
    /// Append-only: the fetch loop adds the shards of a new layout while the worker runs
    /// (`layouts.rs`); a queue keeps its index for the worker's life.
    pub(super) queues: AppendOnly<Arc<QueueKeys>>,
    /// Per queue, what its jobs can reach (progress, cancellation).
    pub(super) contexts: AppendOnly<Arc<JobContext>>,
    /// The names of the queues served now (forgotten shards left out): the registry's list.
    pub(super) served: Mutex<Vec<String>>,
    pub(super) config: Config,
    pub(super) handlers: Handlers,
    pub(super) on_error: Option<ErrorHook>,
    pub(super) semaphore: Arc<Semaphore>,
    pub(super) events: mpsc::UnboundedSender<Outcome>,
    /// The lease groups this worker holds, by (queue index, group). The fetch loop adds a group
    /// as soon as a fetch returns it, before any of its jobs starts; the keeper counts settled
    /// jobs and removes groups whose outcomes are all written (or given up); the renewer renews
    /// what is here and removes what Redis says is lost. Locked only for short synchronous
    /// sections, never across an `.await`.
    pub(super) groups: Mutex<HashMap<(usize, u64), Group>>,
    /// Cancelled when the shutdown grace time is over: running handlers stop, jobs go back.
    pub(super) abort_jobs: CancellationToken,
    /// This worker's id in the registry.
    pub(super) worker_id: String,
    /// Jobs running now (the semaphore also counts slots the fetch loop holds while it waits).
    pub(super) running: AtomicUsize,
    /// History figures written but not yet sent (see `history.rs`).
    pub(super) history: history::Pending,
    /// Attempts this worker ended and wrote: completed, retried, dead (the monitor's report).
    pub(super) ended: [AtomicU64; 3],
    /// Jobs leased ahead of free slots, waiting for one (`prefetch.rs`).
    pub(super) prefetch: Prefetch,
}

pub(super) async fn run(worker: Worker, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let Worker {
        client,
        queues,
        weights,
        config,
        handlers,
        on_error,
        on_monitor,
    } = worker;
    // Each queue's shard layout, read before anything is served (design §19).
    let mut watcher = Watcher::new(client.clone(), queues.clone());
    watcher.start().await?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(Arc::new(HashSet::new()));
    let shared = Arc::new(Shared {
        contexts: AppendOnly::default(),
        semaphore: Arc::new(Semaphore::new(config.concurrency)),
        client,
        queues: AppendOnly::default(),
        served: Mutex::new(Vec::new()),
        config,
        handlers,
        on_error,
        events: tx,
        groups: Mutex::new(HashMap::new()),
        abort_jobs: CancellationToken::new(),
        worker_id: worker_id(),
        running: AtomicUsize::new(0),
        history: Default::default(),
        ended: Default::default(),
        prefetch: Prefetch::default(),
    });
    let mut served = Served::new(queues.into_iter().zip(weights).collect(), cancel_rx);
    served.sync(&shared, watcher.layouts());
    for keys in &shared.queues {
        shared.client.register_queue(&keys.queue).await?;
    }
    let (layouts_tx, layouts_rx) = watch::channel(Arc::new(watcher.layouts().clone()));
    let layouts = Following {
        served,
        changes: layouts_rx,
    };

    let tasks = Tasks::spawn(&shared, layouts, rx, cancel_tx, on_monitor);
    let layout_watcher = tokio::spawn(watch_layouts(
        watcher,
        layouts_tx,
        tasks.stop_fetching.clone(),
    ));
    info!(
        queues = ?shared.queues.iter().map(|k| k.queue.as_str()).collect::<Vec<_>>(),
        concurrency = shared.config.concurrency,
        "worker started"
    );
    shutdown.await;
    tasks.shut_down(&shared).await;
    let _ = layout_watcher.await;
    info!("worker stopped");
    Ok(())
}

/// What the fetch loop needs to follow the layouts: the queues it serves, and the watcher's news.
pub(super) struct Following {
    pub(super) served: Served,
    pub(super) changes: watch::Receiver<Arc<Layouts>>,
}

/// The worker's loops, and the signals that stop them in order.
struct Tasks {
    stop_fetching: CancellationToken,
    stop_background: CancellationToken,
    stop_renewing: CancellationToken,
    fetcher: JoinHandle<()>,
    keeper: JoinHandle<()>,
    renewer: JoinHandle<()>,
    canceller: JoinHandle<()>,
    heart: JoinHandle<()>,
    history: JoinHandle<()>,
    monitor: Option<JoinHandle<()>>,
}

impl Tasks {
    fn spawn(
        shared: &Arc<Shared>,
        layouts: Following,
        outcomes: mpsc::UnboundedReceiver<Outcome>,
        cancel_tx: watch::Sender<Arc<HashSet<String>>>,
        on_monitor: Option<(Duration, MonitorHook)>,
    ) -> Self {
        let stop_fetching = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let stop_renewing = CancellationToken::new();
        let background = stop_background.clone();
        Self {
            fetcher: tokio::spawn(fetch_loop(shared.clone(), layouts, stop_fetching.clone())),
            keeper: tokio::spawn(lease_keeper(shared.clone(), outcomes, background.clone())),
            renewer: tokio::spawn(lease_renewer(shared.clone(), stop_renewing.clone())),
            canceller: tokio::spawn(watch_cancellations(
                shared.clone(),
                cancel_tx,
                background.clone(),
            )),
            heart: tokio::spawn(heartbeat_loop(shared.clone(), background.clone())),
            // Stops with the renewer: after the keeper's last writes, whose figures it sends.
            history: tokio::spawn(history_loop(shared.clone(), stop_renewing.clone())),
            monitor: on_monitor.map(|(every, hook)| {
                tokio::spawn(monitor_loop(shared.clone(), every, hook, background))
            }),
            stop_fetching,
            stop_background,
            stop_renewing,
        }
    }

    /// Stops fetching; gives running jobs the grace time, then stops their handlers (their jobs go
    /// back); lets the keeper write every outcome; only then stops renewing.
    async fn shut_down(self, shared: &Shared) {
        info!("worker shutting down: no more fetches");
        self.stop_fetching.cancel();
        // At once, not when the fetch loop next looks: a fetch in flight would let the slots
        // start parked jobs meanwhile.
        give_back_parked(shared);
        let _ = self.fetcher.await;
        let all = u32::try_from(shared.config.concurrency).unwrap_or(u32::MAX);
        let grace = shared.config.shutdown_timeout;
        if tokio::time::timeout(grace, shared.semaphore.acquire_many(all))
            .await
            .is_err()
        {
            info!("shutdown grace time over: giving unfinished jobs back to their queues");
            shared.abort_jobs.cancel();
            // Handlers stop at their next await; their jobs are reported as given back.
            let five_s = Duration::from_secs(5);
            let _ = tokio::time::timeout(five_s, shared.semaphore.acquire_many(all)).await;
        }
        self.stop_background.cancel();
        let _ = self.keeper.await;
        // Only now: while the keeper was still writing (or retrying) outcomes, their groups had
        // to stay renewed. What it gave up on or never heard of is left to expire and be
        // recovered.
        self.stop_renewing.cancel();
        let _ = self.renewer.await;
        let _ = self.history.await;
        let _ = self.canceller.await;
        let _ = self.heart.await;
        if let Some(monitor) = self.monitor {
            let _ = monitor.await;
        }
    }
}

/// The table of held groups. A panic while it was locked cannot leave it half-updated (each
/// section is a single insert, update or removal), so a poisoned lock is used as is.
pub(super) fn groups(shared: &Shared) -> MutexGuard<'_, HashMap<(usize, u64), Group>> {
    shared.groups.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records a group a fetch just leased, so that it is renewed from now on.
pub(super) fn hold_group(shared: &Shared, queue: usize, group: u64, jobs: usize) {
    if jobs == 0 {
        return;
    }
    groups(shared).insert(
        (queue, group),
        Group {
            total: u32::try_from(jobs).unwrap_or(u32::MAX),
            settled: 0,
            closing: false,
        },
    );
}

/// A lease group this worker holds: how many jobs it has and how many are settled in Redis.
pub(super) struct Group {
    pub(super) total: u32,
    pub(super) settled: u32,
    /// The keeper is writing the outcomes that settle the group's last jobs, which deletes the
    /// group: if renewal then finds it gone, that is our own doing, not a lost lease.
    pub(super) closing: bool,
}
