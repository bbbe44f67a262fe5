//! Following the shard layouts of the worker's queues while it runs (design §19). A worker is
//! told logical queues; each is served through the physical queues of its layout (its shards,
//! then its draining former shards). `Queue::set_shards` counts every change in `ostq:layouts`,
//! which the layout watcher reads every `LAYOUT_CHECK` (one `GET`, whatever the number of
//! queues: an idle worker's cost stays flat, issue 16) and, when it changed, reads each queue's
//! layout again and hands it to the fetch loop. The fetch loop adds the new physical queues
//! (`Served::sync`) and drops the forgotten ones once it holds nothing there (`Served::retire`).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::runtime::{groups, Shared};
use crate::job::JobContext;
use crate::keys::QueueKeys;
use crate::shards::ShardLayout;
use crate::store;
use crate::{Client, Result};

/// How often a running worker reads the layout counter: a new layout is served within this
/// (plus one fetch). 0.5 commands a second, the idle worker's only cost besides its heartbeat.
pub(super) const LAYOUT_CHECK: Duration = Duration::from_secs(2);

/// The layouts of the queues the worker was told to serve, by their rank in the builder; `None`
/// where unknown (Redis could not be reached when it was last read).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Layouts {
    pub(super) of: Vec<Option<ShardLayout>>,
}

/// Reads the layouts when the counter moved, and keeps trying those it could not read.
pub(super) struct Watcher {
    client: Client,
    logical: Vec<Arc<QueueKeys>>,
    /// The counter as of the last complete read; `None` before one.
    seen: Option<Option<String>>,
    layouts: Layouts,
}

impl Watcher {
    pub(super) fn new(client: Client, logical: Vec<Arc<QueueKeys>>) -> Self {
        let layouts = Layouts {
            of: vec![None; logical.len()],
        };
        Self {
            client,
            logical,
            seen: None,
            layouts,
        }
    }

    pub(super) fn layouts(&self) -> &Layouts {
        &self.layouts
    }

    /// The first read, at start. Redis unreachable: every layout stays unknown (the worker then
    /// serves each queue as named, its shard 0, and the watcher keeps trying). A stored layout
    /// that cannot be parsed stops the start, as it did before layouts were followed.
    pub(super) async fn start(&mut self) -> Result<()> {
        match self.refresh(true).await {
            Err(e) if e.is_transient() => {
                warn!(error = %e, "shard layouts unknown: serving each queue's shard 0 until Redis answers");
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Reads the counter, and the layouts if it moved (or some are unknown). Whether the
    /// layouts changed.
    async fn refresh(&mut self, at_start: bool) -> Result<bool> {
        let version = match store::shards::layout_version(&mut self.client.conn()).await {
            Ok(version) => Some(version),
            // Refused for good (an ACL without the counter, say): the worker still starts, with
            // the layouts as they are now, and follows no change (each later check fails here).
            Err(e) if at_start && !e.is_transient() => {
                warn!(error = %e, "cannot read the shard layout counter: new layouts need a restart");
                None
            }
            Err(e) => return Err(e),
        };
        let moved = version.is_none() || self.seen != version;
        if !moved && self.layouts.of.iter().all(Option::is_some) {
            return Ok(false);
        }
        let mut next = self.layouts.clone();
        let mut complete = true;
        for (rank, keys) in self.logical.iter().enumerate() {
            if !moved && next.of[rank].is_some() {
                continue;
            }
            match self.client.queue(&keys.queue).shards().await {
                Ok(layout) => next.of[rank] = Some(layout),
                Err(e) if e.is_transient() => {
                    // Tried again at the next check (the counter is not taken as seen).
                    debug!(queue = %keys.queue, error = %e, "could not read the shard layout");
                    complete = false;
                }
                Err(e) if at_start => return Err(e),
                // A layout that cannot be parsed: the worker keeps what it serves.
                Err(e) => {
                    warn!(queue = %keys.queue, error = %e, "unreadable shard layout; kept the one served")
                }
            }
        }
        if complete && version.is_some() {
            self.seen = version;
        }
        let changed = next != self.layouts;
        self.layouts = next;
        Ok(changed)
    }
}

/// Checks the layouts every `LAYOUT_CHECK` until `stop`; hands each change to the fetch loop.
pub(super) async fn watch_layouts(
    mut watcher: Watcher,
    tx: watch::Sender<Arc<Layouts>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LAYOUT_CHECK) => {}
            _ = stop.cancelled() => return,
        }
        match watcher.refresh(false).await {
            Ok(true) => {
                info!(layouts = ?watcher.layouts().of, "shard layout changed");
                let _ = tx.send(Arc::new(watcher.layouts().clone()));
            }
            Ok(false) => {}
            Err(e) => debug!(error = %e, "could not read the layout counter; will retry"),
        }
    }
}

/// The physical queues the worker serves, by index in `Shared::queues`. Indices never change:
/// lease groups, outcomes, parked jobs, renewal and history refer to a queue by its index, so a
/// queue is only ever added at the end, and a forgotten one is marked retired, not removed.
pub(super) struct Served {
    /// The queues as the builder named them, with their weights.
    logical: Vec<(Arc<QueueKeys>, u32)>,
    /// Per physical queue: its logical queue's weight, and rank (strict order follows it).
    pub(super) weights: Vec<u32>,
    pub(super) rank: Vec<usize>,
    /// In no layout any more (a later `set_shards` forgot it): retired once nothing is held there.
    forgotten: Vec<bool>,
    /// Not fetched nor waited on any more.
    pub(super) retired: Vec<bool>,
    cancelled: watch::Receiver<Arc<std::collections::HashSet<String>>>,
}

impl Served {
    pub(super) fn new(
        logical: Vec<(Arc<QueueKeys>, u32)>,
        cancelled: watch::Receiver<Arc<std::collections::HashSet<String>>>,
    ) -> Self {
        Self {
            logical,
            weights: Vec::new(),
            rank: Vec::new(),
            forgotten: Vec::new(),
            retired: Vec::new(),
            cancelled,
        }
    }

    /// Serves every physical queue of `layouts` (a queue whose layout is unknown: as named);
    /// marks as forgotten the queues no known layout names any more. Returns the queues added at
    /// the end or served again, to be fetched at once.
    pub(super) fn sync(&mut self, shared: &Shared, layouts: &Layouts) -> Vec<usize> {
        let mut served = Vec::new();
        let mut wanted: Vec<(&str, usize)> = Vec::new();
        for (rank, (keys, _)) in self.logical.iter().enumerate() {
            match layouts.of.get(rank).and_then(Option::as_ref) {
                Some(layout) => wanted.extend(layout.physical().map(|name| (name, rank))),
                None => wanted.push((keys.queue.as_str(), rank)),
            }
        }
        for queue in 0..self.rank.len() {
            let name = &shared.queues[queue].queue;
            let known = layouts
                .of
                .get(self.rank[queue])
                .is_some_and(Option::is_some);
            // (An unknown layout forgets nothing: it is unknown, not empty.)
            self.forgotten[queue] = known && !wanted.iter().any(|(w, _)| *w == name.as_str());
        }
        for (name, rank) in wanted {
            if let Some(queue) = shared.queues.iter().position(|k| k.queue == name) {
                if self.retired[queue] {
                    self.retired[queue] = false;
                    served.push(queue);
                }
                continue;
            }
            let keys = if name == self.logical[rank].0.queue {
                self.logical[rank].0.clone()
            } else {
                match QueueKeys::physical(name) {
                    Ok(keys) => Arc::new(keys),
                    // (Checked when the layout was parsed: not expected.)
                    Err(e) => {
                        warn!(queue = name, error = %e, "not a queue name; not served");
                        continue;
                    }
                }
            };
            // The context first: a job of a queue can only be fetched once the queue is listed.
            let context = Arc::new(JobContext {
                client: shared.client.clone(),
                keys: keys.clone(),
                cancelled: self.cancelled.clone(),
            });
            let (Some(at), Some(same)) = (shared.contexts.push(context), shared.queues.push(keys))
            else {
                warn!(queue = name, "too many queues; not served");
                continue;
            };
            debug_assert_eq!(at, same);
            self.weights.push(self.logical[rank].1);
            self.rank.push(rank);
            self.forgotten.push(false);
            self.retired.push(false);
            served.push(same);
        }
        self.publish(shared);
        served
    }

    /// Retires the forgotten queues on which this worker holds no lease group (running, parked
    /// or being settled jobs all belong to one): from then on they are not fetched nor waited on.
    pub(super) fn retire(&mut self, shared: &Shared) -> Vec<usize> {
        let mut retired = Vec::new();
        for queue in 0..self.rank.len() {
            if !self.forgotten[queue] || self.retired[queue] {
                continue;
            }
            if groups(shared).keys().any(|(q, _)| *q == queue) {
                continue;
            }
            self.retired[queue] = true;
            retired.push(queue);
        }
        if !retired.is_empty() {
            info!(queues = ?retired.iter().map(|&q| &shared.queues[q].queue).collect::<Vec<_>>(), "stopped serving forgotten shards");
            self.publish(shared);
        }
        retired
    }

    /// Whether any forgotten queue is still served (waiting for its leases to end).
    pub(super) fn retiring(&self) -> bool {
        (0..self.rank.len()).any(|q| self.forgotten[q] && !self.retired[q])
    }

    /// The queues served now, in strict order: by the logical queue's rank, then as added.
    pub(super) fn active(&self) -> Vec<usize> {
        let mut active: Vec<usize> = (0..self.rank.len()).filter(|&q| !self.retired[q]).collect();
        active.sort_by_key(|&q| self.rank[q]);
        active
    }

    /// Tells the registry (the heartbeat) which physical queues are served now.
    fn publish(&self, shared: &Shared) {
        let names: Vec<String> = self
            .active()
            .into_iter()
            .map(|q| shared.queues[q].queue.clone())
            .collect();
        *shared.served.lock().unwrap_or_else(PoisonError::into_inner) = names;
    }
}
