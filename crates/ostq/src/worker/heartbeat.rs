//! The heartbeat: registers the worker in the registry (`ostq:workers`, `ostq:worker:<id>`) at
//! start, renews its entry every `heartbeat` with the number of busy slots, and removes it at a
//! clean shutdown. An entry expires three heartbeats after the last one, so a killed worker
//! disappears on its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::runtime::Shared;
use crate::job::now_ms;
use crate::store::workers;

/// Beats until `stop`, then unregisters.
pub(super) async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.heartbeat;
    let ttl_ms = (every * 3).as_millis() as u64;
    let started = now_ms().to_string();
    let fixed = [
        ("host", host_name()),
        ("pid", std::process::id().to_string()),
        ("concurrency", shared.config.concurrency.to_string()),
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("started", started),
    ];
    let mut first = true;
    // The queues as last written: a new shard layout changes them while the worker runs.
    let mut listed = String::new();
    loop {
        if shared.config.metrics {
            super::metrics::record_slots(&shared);
        }
        let busy = shared.running.load(Ordering::Relaxed);
        let now = now_ms();
        let mut fields = vec![("busy", busy.to_string()), ("last_seen", now.to_string())];
        let queues = serving(&shared);
        if first {
            fields.extend(fixed.iter().cloned());
        }
        if first || queues != listed {
            fields.push(("queues", queues.clone()));
        }
        let mut conn = shared.client.conn();
        match workers::heartbeat(&mut conn, &shared.worker_id, &fields, ttl_ms, now).await {
            Ok(()) => {
                first = false;
                listed = queues;
            }
            // Written again in full next time: the entry may have expired meanwhile.
            Err(e) => {
                first = true;
                debug!(error = %e, "heartbeat failed; will retry");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => break,
        }
    }
    let mut conn = shared.client.conn();
    if let Err(e) = workers::unregister(&mut conn, &shared.worker_id).await {
        debug!(error = %e, "could not unregister the worker; its entry expires by itself");
    }
}

/// The physical queues served now, as the registry's JSON list.
fn serving(shared: &Shared) -> String {
    let served = shared
        .served
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    serde_json::to_string(&*served).unwrap_or_default()
}

/// A worker id: host, pid and a random part (several workers may share a process).
pub(super) fn worker_id() -> String {
    format!(
        "{}:{}:{:08x}",
        host_name(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The machine's host name, as the kernel has it (`unknown` where it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
