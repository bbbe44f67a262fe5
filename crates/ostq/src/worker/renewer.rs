//! The renewer: extends every held lease group every `lease / 3`, in a task of its own so that
//! renewal never waits behind outcome writes, and forgets the groups Redis reports as lost.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::runtime::{groups, Shared, CHUNK};
use crate::store::lease;

/// Renews every held group each `lease / 3`, on its own task: outcome writes, however many or
/// however long retried, never delay it. A renewal that fails is tried again at the next tick.
pub(super) async fn lease_renewer(shared: Arc<Shared>, stop: CancellationToken) {
    let mut renew = tokio::time::interval(shared.config.lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = renew.tick() => {}
        }
        renew_groups(&shared).await;
    }
}

/// Extends every group still held; forgets the ones Redis says are gone (expired, or taken by
/// a recovery under way): their handlers keep running, and their outcomes will be ignored.
pub(super) async fn renew_groups(shared: &Shared) {
    for (queue, keys) in shared.queues.iter().enumerate() {
        let held: Vec<u64> = groups(shared)
            .keys()
            .filter(|(q, _)| *q == queue)
            .map(|(_, g)| *g)
            .collect();
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
                Err(e) => debug!(error = %e, "lease renewal failed; will retry"),
            }
        }
    }
}
