//! The scheduler's commands: the server clock, registering, firing and removing schedules, and
//! reading the registry.

use std::collections::HashMap;

use super::call::{self, query, query_pipe, ScriptCall};
use super::Conn;
use crate::keys::QueueKeys;
use crate::Result;

/// The server's clock, unix ms (`TIME`).
pub(crate) async fn server_time_ms(conn: &mut Conn) -> Result<i64> {
    let (secs, micros): (i64, i64) = query(&redis::cmd("TIME"), conn).await?;
    Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
}

/// Records a schedule in its queue's registry (`cron_register.lua`); returns the server time
/// (unix ms) and whether the registry changed.
pub(crate) async fn register(
    conn: &mut Conn,
    keys: &QueueKeys,
    name: &str,
    spec_json: &str,
    next_tick_ms: u64,
) -> Result<(i64, bool)> {
    let state = keys.schedule_state(name);
    let (registry, removed) = (keys.schedules(), keys.removed_schedules());
    let mut call = ScriptCall::new(&call::CRON_REGISTER, &[&registry, &state, &removed]);
    call.arg(name).arg(spec_json).arg(next_tick_ms);
    let (server_ms, changed): (i64, i64) = call.run(conn).await?;
    Ok((server_ms, changed == 1))
}

/// One tick of a schedule and the job it enqueues.
pub(crate) struct TickJob<'a> {
    pub(crate) name: &'a str,
    pub(crate) spec_json: &'a str,
    pub(crate) tick_ms: u64,
    pub(crate) next_tick_ms: u64,
    pub(crate) job_id: &'a str,
    pub(crate) payload: &'a [u8],
    pub(crate) task_name: &'a str,
    pub(crate) max_attempts: u32,
    pub(crate) priority: i32,
    pub(crate) flags: u64,
}

/// Enqueues a tick's job, exactly once across processes (`cron_fire.lua`); returns what happened
/// (`fired`, `taken`, `early`, `removed`, `superseded`) and the server time (unix ms).
pub(crate) async fn fire(
    conn: &mut Conn,
    keys: &QueueKeys,
    tick: &TickJob<'_>,
) -> Result<(String, i64)> {
    let (registry, removed) = (keys.schedules(), keys.removed_schedules());
    let state = keys.schedule_state(tick.name);
    let record = keys.record(tick.job_id);
    let script_keys = [
        keys.pending.as_str(),
        &keys.prioritized,
        &registry,
        &state,
        &keys.seq,
        &record,
        &removed,
        &keys.config,
        &keys.events,
    ];
    let mut call = ScriptCall::new(&call::CRON_FIRE, &script_keys);
    call.arg(tick.name)
        .arg(tick.spec_json)
        .arg(tick.tick_ms)
        .arg(tick.next_tick_ms)
        .arg(tick.job_id)
        .arg(tick.payload)
        .arg(tick.task_name)
        .arg(tick.max_attempts)
        .arg(tick.priority)
        .arg(tick.flags)
        .arg(&keys.prefix);
    call.run(conn).await
}

/// The registry: schedule name → spec JSON.
pub(crate) async fn specs(conn: &mut Conn, keys: &QueueKeys) -> Result<HashMap<String, String>> {
    query(redis::cmd("HGETALL").arg(keys.schedules()), conn).await
}

/// A schedule's state: created, last tick, next tick, last job id, ticks fired.
pub(crate) type StoredState = (
    Option<u64>,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<u64>,
);

/// The states of the named schedules, in one round trip.
pub(crate) async fn states(
    conn: &mut Conn,
    keys: &QueueKeys,
    names: &[String],
) -> Result<Vec<StoredState>> {
    let mut pipe = redis::pipe();
    for name in names {
        pipe.cmd("HMGET").arg(keys.schedule_state(name)).arg(&[
            "created",
            "last_tick",
            "next_tick",
            "last_job",
            "fired",
        ]);
    }
    query_pipe(&pipe, conn).await
}

/// Removes a schedule and its state (`cron_remove.lua`); returns whether it was registered.
pub(crate) async fn remove(conn: &mut Conn, keys: &QueueKeys, name: &str) -> Result<bool> {
    let state = keys.schedule_state(name);
    let (registry, removed) = (keys.schedules(), keys.removed_schedules());
    let mut call = ScriptCall::new(&call::CRON_REMOVE, &[&registry, &state, &removed]);
    call.arg(name);
    Ok(call.run::<i64>(conn).await? == 1)
}
