//! The monitor loop: hands the queues' counts to the user's monitor hook at its interval.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::handler::panic_message;
use super::runtime::Shared;
use super::MonitorHook;

pub(super) async fn monitor_loop(
    shared: Arc<Shared>,
    every: Duration,
    hook: MonitorHook,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let mut all = Vec::with_capacity(shared.queues.len());
        for keys in &shared.queues {
            match crate::admin::counts_of(&shared.client, keys).await {
                Ok(counts) => all.push(counts),
                Err(e) => debug!(error = %e, "monitor could not read counts"),
            }
        }
        if !all.is_empty() {
            // User code: a panic would end the monitor task for good, silently.
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&all))) {
                warn!(panic = %panic_message(panic.as_ref()), "monitor hook panicked");
            }
        }
    }
}
