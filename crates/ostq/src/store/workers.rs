//! The worker registry: heartbeats, unregistering, and listing live workers. The registry keys
//! live outside every queue's hash tag (a worker may serve queues in several slots of a Cluster),
//! so these are single-key commands sent side by side, never a script or a transaction.

use std::collections::HashMap;

use super::call::query;
use super::Conn;
use crate::keys::{worker_entry, WORKERS};
use crate::Result;

/// Writes a worker's entry (`fields`), renews its expiry to `ttl_ms`, and notes the beat at
/// `now_ms` in the index.
pub(crate) async fn heartbeat(
    conn: &mut Conn,
    id: &str,
    fields: &[(&str, String)],
    ttl_ms: u64,
    now_ms: u64,
) -> Result<()> {
    let entry = worker_entry(id);
    let mut hset = redis::cmd("HSET");
    hset.arg(&entry);
    for (field, value) in fields {
        hset.arg(*field).arg(value);
    }
    let (mut c1, mut c2, mut c3) = (conn.clone(), conn.clone(), conn.clone());
    let expire = redis::cmd("PEXPIRE").arg(&entry).arg(ttl_ms).clone();
    let index = redis::cmd("ZADD").arg(WORKERS).arg(now_ms).arg(id).clone();
    let (a, b, c) = futures::join!(
        query::<()>(&hset, &mut c1),
        query::<()>(&expire, &mut c2),
        query::<()>(&index, &mut c3)
    );
    a.and(b).and(c)
}

/// Removes a worker that stops cleanly.
pub(crate) async fn unregister(conn: &mut Conn, id: &str) -> Result<()> {
    query::<()>(redis::cmd("DEL").arg(worker_entry(id)), conn).await?;
    query(redis::cmd("ZREM").arg(WORKERS).arg(id), conn).await
}

/// Every live worker's id and entry, oldest beat first. Ids whose entry has expired (the worker
/// died without unregistering) are removed from the index on the way.
pub(crate) async fn live(conn: &mut Conn) -> Result<Vec<(String, HashMap<String, String>)>> {
    let ids: Vec<String> = query(redis::cmd("ZRANGE").arg(WORKERS).arg(0).arg(-1), conn).await?;
    let reads = ids.iter().map(|id| {
        let mut conn = conn.clone();
        async move {
            query::<HashMap<String, String>>(redis::cmd("HGETALL").arg(worker_entry(id)), &mut conn)
                .await
        }
    });
    let entries = futures::future::join_all(reads).await;
    let mut live = Vec::new();
    let mut dead = Vec::new();
    for (id, entry) in ids.into_iter().zip(entries) {
        let entry = entry?;
        if entry.is_empty() {
            dead.push(id);
        } else {
            live.push((id, entry));
        }
    }
    if !dead.is_empty() {
        query::<()>(redis::cmd("ZREM").arg(WORKERS).arg(&dead), conn).await?;
    }
    Ok(live)
}
