//! The cancellation watcher: while jobs run, reads each queue's cancel set and tells the jobs.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::runtime::Shared;
use crate::store::lease;

/// Keeps the worker's view of cancellation requests fresh: while jobs run, reads each queue's
/// cancel set every half second (one SMEMBERS per queue; nothing while idle) and tells the jobs
/// when it changes.
pub(super) async fn watch_cancellations(
    shared: Arc<Shared>,
    tx: watch::Sender<Arc<HashSet<String>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
        // Nothing running: nothing to cancel. (Counted by `running`, not by the free permits: a
        // worker serving one queue holds its free permits through its idle wait, which made an
        // idle worker read the cancel set twice a second.)
        if shared.running.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let mut wanted = HashSet::new();
        let mut conn = shared.client.conn();
        for keys in &shared.queues {
            match lease::cancel_requests(&mut conn, keys).await {
                Ok(ids) => wanted.extend(ids),
                Err(e) => debug!(error = %e, "could not read cancellations"),
            }
        }
        if **tx.borrow() != wanted {
            let _ = tx.send(Arc::new(wanted));
        }
    }
}
