//! The worker registry as the admin API shows it: every live worker, library or `ostq worker`,
//! with what it serves and how busy it is.

use std::collections::HashMap;

use crate::store;
use crate::{Client, Result};

/// A live worker, from its registry entry (renewed by its heartbeat; gone within three heartbeats
/// of the process dying).
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// for w in client.workers().await? {
///     println!("{} on {} pid {}: {}/{} busy, queues {:?}", w.id, w.host, w.pid, w.busy, w.concurrency, w.queues);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// `host:pid:random`, unique per running worker.
    pub id: String,
    /// The machine's host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Jobs it may run at once.
    pub concurrency: u64,
    /// Jobs running at its last heartbeat.
    pub busy: u64,
    /// The ostq version it runs.
    pub version: String,
    /// When it started (unix ms).
    pub started_at_ms: u64,
    /// Its last heartbeat (unix ms, its own clock).
    pub last_seen_ms: u64,
}

impl WorkerInfo {
    fn from_entry(id: String, entry: &HashMap<String, String>) -> Self {
        let text = |field: &str| entry.get(field).cloned().unwrap_or_default();
        let number = |field: &str| text(field).parse::<u64>().unwrap_or(0);
        Self {
            host: text("host"),
            pid: text("pid").parse().unwrap_or(0),
            queues: serde_json::from_str(&text("queues")).unwrap_or_default(),
            concurrency: number("concurrency"),
            busy: number("busy"),
            version: text("version"),
            started_at_ms: number("started"),
            last_seen_ms: number("last_seen"),
            id,
        }
    }

    /// Whether it serves `queue`.
    ///
    /// ```
    /// # fn demo(w: &ostq::admin::WorkerInfo) {
    /// if !w.serves("videos") { /* ... */ }
    /// # }
    /// ```
    pub fn serves(&self, queue: &str) -> bool {
        self.queues.iter().any(|q| q == queue)
    }
}

impl Client {
    /// Every live worker, library or `ostq worker`, sorted by id. Entries of workers that died
    /// without unregistering expire within three heartbeats and are pruned here.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        let entries = store::workers::live(&mut self.conn()).await?;
        let mut workers: Vec<WorkerInfo> = entries
            .into_iter()
            .map(|(id, entry)| WorkerInfo::from_entry(id, &entry))
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }
}
