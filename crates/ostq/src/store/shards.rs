//! Sharded queues (design §19): the shard settings in the queue's settings hash, and the
//! cluster's slot map the placement of new shards is chosen from.

use redis::Value;

use super::call::query;
use super::Conn;
use crate::keys::QueueKeys;
use crate::{Error, Result};

/// The settings a producer caches (one `HMGET`): `events`, `shards`, `shards_draining`,
/// `shards_retired`.
pub(crate) async fn cached_settings(
    conn: &mut Conn,
    keys: &QueueKeys,
) -> Result<[Option<String>; 4]> {
    query(
        redis::cmd("HMGET")
            .arg(&keys.config)
            .arg("events")
            .arg("shards")
            .arg("shards_draining")
            .arg("shards_retired"),
        conn,
    )
    .await
}

/// When each draining shard began to drain (`shards_draining_since`: unix ms on the server's
/// clock, space-separated, in the order of `shards_draining`; absent before this field existed).
pub(crate) async fn draining_since(conn: &mut Conn, keys: &QueueKeys) -> Result<Option<String>> {
    query(
        redis::cmd("HGET")
            .arg(&keys.config)
            .arg("shards_draining_since"),
        conn,
    )
    .await
}

/// Writes the shard fields in one `HSET` (one command: no reader sees one without the others).
pub(crate) async fn write_shards(
    conn: &mut Conn,
    keys: &QueueKeys,
    shards: &str,
    draining: &str,
    draining_since: &str,
    retired: &str,
) -> Result<()> {
    query(
        redis::cmd("HSET")
            .arg(&keys.config)
            .arg("shards")
            .arg(shards)
            .arg("shards_draining")
            .arg(draining)
            .arg("shards_draining_since")
            .arg(draining_since)
            .arg("shards_retired")
            .arg(retired),
        conn,
    )
    .await
}

/// Counts a layout change (`INCR ostq:layouts`), so running workers re-read their layouts.
pub(crate) async fn bump_layout_version(conn: &mut Conn) -> Result<()> {
    query::<i64>(redis::cmd("INCR").arg(crate::keys::LAYOUTS), conn)
        .await
        .map(drop)
}

/// The layout-change counter as stored (`None` before any change, or once flushed). Compared
/// for equality only, so whatever it holds is fine.
pub(crate) async fn layout_version(conn: &mut Conn) -> Result<Option<String>> {
    query(redis::cmd("GET").arg(crate::keys::LAYOUTS), conn).await
}

/// The primaries of a Cluster and the slot ranges each serves: `(start, end, "host:port")`. On a
/// server that is not a Cluster, an empty list.
pub(crate) async fn slot_map(conn: &mut Conn) -> Result<Vec<(u16, u16, String)>> {
    if !matches!(conn, Conn::Cluster(_)) {
        return Ok(Vec::new());
    }
    let reply: Value = query(redis::cmd("CLUSTER").arg("SLOTS"), conn).await?;
    let Value::Array(ranges) = reply else {
        return Err(Error::Protocol(format!("CLUSTER SLOTS answered {reply:?}")));
    };
    let mut out = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => continue,
        };
        let port = match node.get(1) {
            Some(Value::Int(p)) => *p,
            _ => continue,
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else {
            continue;
        };
        out.push((start, end, format!("{host}:{port}")));
    }
    Ok(out)
}
