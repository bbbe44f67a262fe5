//! Events and results: the queue's settings hash, reading its event stream, and waiting for a
//! tracked job to finish.

use std::time::Duration;

use super::call::{self, query, ScriptCall};
use super::Conn;
use crate::keys::QueueKeys;
use crate::Result;

/// One field of the queue's settings hash (`events`, ...).
pub(crate) async fn setting(
    conn: &mut Conn,
    keys: &QueueKeys,
    field: &str,
) -> Result<Option<String>> {
    query(redis::cmd("HGET").arg(&keys.config).arg(field), conn).await
}

/// Sets one field of the queue's settings hash.
pub(crate) async fn set_setting(
    conn: &mut Conn,
    keys: &QueueKeys,
    field: &str,
    value: &str,
) -> Result<()> {
    query(
        redis::cmd("HSET").arg(&keys.config).arg(field).arg(value),
        conn,
    )
    .await
}

/// The id of the newest event kept, if any.
pub(crate) async fn last_event_id(conn: &mut Conn, keys: &QueueKeys) -> Result<Option<String>> {
    let last: Vec<(String, Vec<(String, String)>)> = query(
        redis::cmd("XREVRANGE")
            .arg(&keys.events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1),
        conn,
    )
    .await?;
    Ok(last.into_iter().next().map(|(id, _)| id))
}

/// What XREAD answers: per stream, its entries as (id, field/value pairs).
type XreadReply = Option<Vec<(String, Vec<(String, Vec<(String, String)>)>)>>;

/// Up to 1000 events after stream id `after`, waiting up to a second for the first: each as its
/// stream id and its `e` field (the event's JSON; `None` for an entry without one).
pub(crate) async fn read_events(
    conn: &mut Conn,
    keys: &QueueKeys,
    after: &str,
) -> Result<Vec<(String, Option<String>)>> {
    let reply: XreadReply = query(
        redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&keys.events)
            .arg(after),
        conn,
    )
    .await?;
    Ok(reply
        .into_iter()
        .flatten()
        .flat_map(|(_, entries)| entries)
        .map(|(id, fields)| {
            let json = fields.into_iter().find(|(f, _)| f == "e").map(|(_, v)| v);
            (id, json)
        })
        .collect())
}

/// A tracked job's state, result and error, from its status record (`None` state: no record),
/// marking an unfinished job as waited on, so that its completion pushes the token
/// `wait_done` waits for (`wait.lua`: the mark and the read are one step).
pub(crate) async fn job_outcome_marking_waiter(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
) -> Result<(Option<String>, Option<Vec<u8>>, Option<String>)> {
    let record = keys.record(id);
    ScriptCall::new(&call::WAIT, &[record.as_str()])
        .run(conn)
        .await
}

/// Waits (on a connection of its own) up to `wait` for the token the scripts push when tracked
/// job `id` finishes. `BLMOVE done done RIGHT RIGHT` takes nothing, so every waiter wakes.
pub(crate) async fn wait_done(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
    wait: Duration,
) -> Result<()> {
    let done = keys.done(id);
    let mut blmove = redis::cmd("BLMOVE");
    blmove
        .arg(&done)
        .arg(&done)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(format!("{:.3}", wait.as_secs_f64()));
    query::<Option<Vec<u8>>>(&blmove, conn).await.map(drop)
}
