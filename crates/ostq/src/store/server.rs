//! Commands about the Redis server rather than one queue: `INFO`, `PING`, and the pipelined list
//! pushes and pops that measure what Redis itself can do for this client.

use redis::Value;

use super::call::{query, query_pipe};
use super::Conn;
use crate::Result;

/// Every `INFO` text of the server (one section, or the default ones): one, or one per node of
/// a Cluster.
pub(crate) async fn info_texts(conn: &mut Conn, section: Option<&str>) -> Result<Vec<String>> {
    let mut cmd = redis::cmd("INFO");
    if let Some(section) = section {
        cmd.arg(section);
    }
    let reply: Value = query(&cmd, conn).await?;
    let mut texts = Vec::new();
    collect_texts(reply, &mut texts);
    Ok(texts)
}

fn collect_texts(value: Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(&bytes).into_owned()),
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => out.push(text),
        Value::Array(items) => items.into_iter().for_each(|v| collect_texts(v, out)),
        Value::Map(pairs) => pairs.into_iter().for_each(|(_, v)| collect_texts(v, out)),
        _ => {}
    }
}

/// One `PING` (to every primary of a Cluster).
pub(crate) async fn ping(conn: &mut Conn) -> Result<()> {
    let _: Value = query(&redis::cmd("PING"), conn).await?;
    Ok(())
}

/// `LPUSH`es `value` onto `key` `count` times, `per_pipeline` commands per round trip.
pub(crate) async fn push_values(
    conn: &mut Conn,
    key: &str,
    value: &[u8],
    count: usize,
    per_pipeline: usize,
) -> Result<()> {
    let mut done = 0;
    while done < count {
        let end = (done + per_pipeline.max(1)).min(count);
        let mut pipe = redis::pipe();
        for _ in done..end {
            pipe.cmd("LPUSH").arg(key).arg(value).ignore();
        }
        query_pipe::<()>(&pipe, conn).await?;
        done = end;
    }
    Ok(())
}

/// `RPOP`s `key` `count` times, `per_pipeline` commands per round trip; returns how many values
/// came back.
pub(crate) async fn pop_values(
    conn: &mut Conn,
    key: &str,
    count: usize,
    per_pipeline: usize,
) -> Result<usize> {
    let (mut done, mut popped) = (0, 0);
    while done < count {
        let end = (done + per_pipeline.max(1)).min(count);
        let mut pipe = redis::pipe();
        for _ in done..end {
            pipe.cmd("RPOP").arg(key);
        }
        let values: Vec<Option<Vec<u8>>> = query_pipe(&pipe, conn).await?;
        popped += values.iter().filter(|v| v.is_some()).count();
        done = end;
    }
    Ok(popped)
}

/// Deletes one key.
pub(crate) async fn delete_key(conn: &mut Conn, key: &str) -> Result<()> {
    query(redis::cmd("DEL").arg(key), conn).await
}
