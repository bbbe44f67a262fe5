//! The renewer: extends every held lease group every `lease / 3`, in a task of its own so that
//! renewal never waits behind outcome writes, and forgets the groups Redis reports as lost. It
//! also sends the start marks of groups whose parked jobs started (`prefetch.rs`), within
//! [`MARK_DELAY`] of the start, so that a crash counts an attempt for those jobs and no other.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::runtime::{groups, Shared, CHUNK};
use crate::store::lease;

/// How long after a parked job starts its start mark is sent: the starts of that time go in one
/// call per queue. A crash in between re-runs such a job without counting the attempt, once
/// (design §16).
pub(super) const MARK_DELAY: Duration = Duration::from_millis(50);

/// Renews every held group each `lease / 3`, on its own task: outcome writes, however many or
/// however long retried, never delay it. A renewal that fails is tried again at the next tick.
/// Between ticks, sends the start marks of parked jobs that started.
pub(super) async fn lease_renewer(shared: Arc<Shared>, stop: CancellationToken) {
    let mut renew = tokio::time::interval(shared.config.lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = renew.tick() => renew_groups(&shared).await,
            _ = shared.prefetch.marked.notified() => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(MARK_DELAY) => {}
                }
                send_marks(&shared).await;
            }
        }
    }
}

/// Extends every group still held (with the start marks waiting to be sent); forgets the ones
/// Redis says are gone (expired, or taken by a recovery under way): their handlers keep running,
/// and their outcomes will be ignored.
async fn renew_groups(shared: &Shared) {
    let mut marks = shared.prefetch.take_marks();
    for queue in 0..shared.queues.len() {
        let held: Vec<(u64, Option<u32>)> = groups(shared)
            .keys()
            .filter(|(q, _)| *q == queue)
            .map(|&(q, g)| (g, marks.remove(&(q, g))))
            .collect();
        renew_some(shared, queue, &held).await;
    }
}

/// Sends the start marks waiting to be sent (renewing those groups on the way).
async fn send_marks(shared: &Shared) {
    let mut by_queue: HashMap<usize, Vec<(u64, Option<u32>)>> = HashMap::new();
    for ((queue, group), mark) in shared.prefetch.take_marks() {
        by_queue.entry(queue).or_default().push((group, Some(mark)));
    }
    for (queue, marked) in by_queue {
        renew_some(shared, queue, &marked).await;
    }
}

/// One queue's `renew.lua` calls for `held` (groups, with a start mark where there is news).
async fn renew_some(shared: &Shared, queue: usize, held: &[(u64, Option<u32>)]) {
    let keys = &shared.queues[queue];
    for chunk in held.chunks(CHUNK) {
        let mut conn = shared.client.conn();
        let lease_ms = shared.config.lease.as_millis() as u64;
        match lease::renew(&mut conn, keys, lease_ms, chunk).await {
            Ok(gone) => {
                let mut lost = Vec::new();
                {
                    let mut held = groups(shared);
                    for group in gone {
                        // Not in the table any more, or closing: the keeper settled it and
                        // deleted it while this call was in flight. Nothing was lost.
                        if let Some(state) = held.remove(&(queue, group)) {
                            if !state.closing {
                                lost.push(group);
                            }
                        }
                    }
                }
                if !lost.is_empty() {
                    // Their parked jobs are not started: they are recovered elsewhere.
                    shared.prefetch.drop_groups(queue, &lost);
                    warn!(queue = %keys.queue, groups = ?lost, "lost leases: their jobs may run again elsewhere");
                }
            }
            Err(e) => {
                debug!(error = %e, "lease renewal failed; will retry");
                // The marks go with the next call (the renewal is retried at the next tick).
                shared.prefetch.restore_marks(queue, chunk);
            }
        }
    }
}
