//! A worker's commands: fetching (alone, or pipelined behind its idle wait), the wait itself,
//! outcome writes (`fail.lua`, `requeue.lua`, `complete.lua`), lease renewal, the cancel set and
//! progress.

use redis::Value;

use super::call::{self, int_of, is_noscript, query, ScriptCall};
use super::Conn;
use crate::keys::QueueKeys;
use crate::{Error, Result};

/// The worker settings `fetch.lua` applies.
pub(crate) struct FetchSettings {
    pub(crate) lease_ms: u64,
    pub(crate) default_max_attempts: u32,
    pub(crate) dead_max: u64,
    pub(crate) dead_retention_ms: u64,
    pub(crate) completed_retention_ms: u64,
}

/// A fetched batch: server time, when something timed is next due, the lease group and its
/// envelopes in order; `hold` when the queue is paused or out of rate-limit tokens (do not wait
/// on its list, which may be full: sleep until the wake time).
pub(crate) struct Fetched {
    pub(crate) now_ms: i64,
    pub(crate) wake_at_ms: i64,
    pub(crate) group: u64,
    pub(crate) hold: bool,
    /// On hold because the queue is paused (not for its rate limit): a resume pushes onto
    /// `resumed`, which the worker waits on instead.
    pub(crate) paused: bool,
    /// The staged group the fetch was given is registered: the idle wait may move the next job
    /// straight into it ([`wait_staged`]).
    pub(crate) staged: bool,
    pub(crate) envelopes: Vec<Vec<u8>>,
}

/// A lease group for an idle worker's wait (design §7.2): `fetch.lua` registers it when it leases
/// nothing, with a deadline `horizon_ms` away, long enough for the wait and a lease after it.
#[derive(Clone, Copy)]
pub(crate) struct Stage {
    pub(crate) group: u64,
    pub(crate) horizon_ms: u64,
}

/// A new lease group id: random, never 0 (0 means "nothing leased"), so unique without asking
/// Redis for a counter.
pub(crate) fn new_group() -> u64 {
    rand::random::<u64>() >> 1 | 1
}

fn fetch_call(
    keys: &QueueKeys,
    want: usize,
    start_now: usize,
    settings: &FetchSettings,
    stage: Option<Stage>,
) -> ScriptCall {
    let mut call = ScriptCall::new(&call::FETCH, &keys.fetch_keys());
    call.arg(&keys.prefix)
        .arg(want)
        .arg(settings.lease_ms)
        .arg(settings.default_max_attempts)
        .arg(settings.dead_max)
        .arg(settings.dead_retention_ms)
        .arg(settings.completed_retention_ms)
        .arg(new_group());
    if start_now < want {
        // Some will be parked: the group gets a start mark, which `renew` moves on.
        call.arg(start_now);
    } else if stage.is_some() {
        call.arg("");
    }
    if let Some(stage) = stage {
        call.arg(stage.group).arg(stage.horizon_ms);
    }
    call
}

/// Leases up to `want` ready jobs of a queue (`fetch.lua`, which first promotes due jobs and
/// recovers expired leases). The worker starts the first `start_now` at once and parks the rest
/// (prefetch): until [`renew`] says they started, a crash does not count an attempt for them.
pub(crate) async fn fetch(
    conn: &mut Conn,
    keys: &QueueKeys,
    want: usize,
    start_now: usize,
    settings: &FetchSettings,
    stage: Option<Stage>,
) -> Result<Fetched> {
    parse_fetched(
        fetch_call(keys, want, start_now, settings, stage)
            .run(conn)
            .await?,
    )
}

/// The idle wait of a worker whose last fetch staged `group`: `BLMOVE pending lease:<group> RIGHT
/// LEFT`, so the next job pushed is moved into the group and comes back with the wake-up, with
/// no script on its way (design §7.2). `None` when `wait_ms` passed first. [`claim`] follows.
pub(crate) async fn wait_staged(
    conn: &mut Conn,
    keys: &QueueKeys,
    group: u64,
    wait_ms: i64,
) -> Result<Option<Vec<u8>>> {
    query(
        redis::cmd("BLMOVE")
            .arg(&keys.pending)
            .arg(format!("{}lease:{group}", keys.prefix))
            .arg("RIGHT")
            .arg("LEFT")
            .arg(format!("{:.3}", wait_ms as f64 / 1000.0)),
        conn,
    )
    .await
}

/// Makes a staged group that its wait has ended an ordinary lease group (`claim.lua`): the job it
/// holds, as the worker must run it (a bare entry or a bin payload rewritten), or `None` when it
/// holds none (the wait timed out, brought the wake marker, or another script settled the group).
pub(crate) async fn claim(
    conn: &mut Conn,
    keys: &QueueKeys,
    group: u64,
    lease_ms: u64,
) -> Result<Option<Vec<u8>>> {
    let mut call = ScriptCall::new(
        &call::CLAIM,
        &[
            keys.active.as_str(),
            keys.stats.as_str(),
            keys.config.as_str(),
            keys.events.as_str(),
        ],
    );
    call.arg(&keys.prefix).arg(group).arg(lease_ms);
    match call.run::<Value>(conn).await? {
        Value::Array(items) => match items.as_slice() {
            [Value::Int(1), Value::BulkString(entry)] => Ok(Some(entry.clone())),
            [Value::Int(0)] => Ok(None),
            _ => Err(Error::Protocol(format!("claim returned {items:?}"))),
        },
        other => Err(Error::Protocol(format!("claim returned {other:?}"))),
    }
}

/// `BLMOVE list list RIGHT RIGHT` pops and pushes the same end of the same list: it waits for an
/// entry without taking it, so an abandoned wait loses nothing.
fn wait_cmd(list: &str, wait_ms: i64) -> redis::Cmd {
    let mut blmove = redis::cmd("BLMOVE");
    blmove
        .arg(list)
        .arg(list)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(format!("{:.3}", wait_ms as f64 / 1000.0));
    blmove
}

/// Blocks (on a connection of its own) until `list` (a queue's pending list, or its `resumed`
/// list while it is paused) has an entry or `wait_ms` pass; takes nothing. `true` when it ended
/// because the list has an entry.
pub(crate) async fn wait_for_entry(conn: &mut Conn, list: &str, wait_ms: i64) -> Result<bool> {
    query::<Option<Vec<u8>>>(&wait_cmd(list, wait_ms), conn)
        .await
        .map(|entry| entry.is_some())
}

/// Pushes a wake marker onto the queue's pending list, ending the idle waits on it: a worker
/// that stops while its own wait is blocked (with a fetch pipelined behind it) ends it this way.
/// Sent only while that wait is blocked, that is while the list is empty, so the marker keeps
/// to the rule that it is only added to an empty list (push.lua checks it in the script; here a
/// job pushed in the same instant may stand to its right, which only costs `counts` its LPOS).
pub(crate) async fn wake(conn: &mut Conn, keys: &QueueKeys) -> Result<()> {
    query::<()>(
        redis::cmd("LPUSH")
            .arg(&keys.pending)
            .arg(super::queues::WAKE),
        conn,
    )
    .await
}

/// The idle wait of a worker that serves one queue: the wait and `fetch.lua` pipelined on the
/// blocking connection, so Redis runs the fetch the moment the wait ends and the job arrives with
/// the wake-up: one round trip, not two.
pub(crate) async fn wait_then_fetch(
    conn: &mut Conn,
    keys: &QueueKeys,
    want: usize,
    wait_ms: i64,
    settings: &FetchSettings,
) -> Result<Fetched> {
    let fetch = fetch_call(keys, want, want, settings, None);
    let mut pipe = redis::pipe();
    pipe.add_command(wait_cmd(&keys.pending, wait_ms))
        .ignore()
        .add_command(fetch.cmd().clone());
    match pipe.query_async::<(Value,)>(conn).await {
        Ok((value,)) => parse_fetched(value),
        Err(e) if is_noscript(&e) => {
            // The fetch did not run (no jobs were leased): load the script, fetch plainly.
            fetch.load(conn).await?;
            parse_fetched(fetch.run(conn).await?)
        }
        Err(e) => Err(Error::from_redis(e)),
    }
}

/// Reads `fetch.lua`'s reply: `{now, wake_at, group, hold, envelope...}`.
fn parse_fetched(value: Value) -> Result<Fetched> {
    let Value::Array(items) = value else {
        return Err(Error::Protocol(format!("fetch returned {value:?}")));
    };
    let mut items = items.into_iter();
    let now_ms = int_of(items.next(), "fetch's server time")?;
    let wake_at_ms = int_of(items.next(), "fetch's wake time")?;
    // The group comes back as the decimal id the worker sent, or 0 when nothing was leased.
    let group = u64::try_from(int_of(items.next(), "fetch's lease group")?).unwrap_or(0);
    // 1 paused, 2 out of rate-limit tokens, 3 the stage given is registered.
    let hold = int_of(items.next(), "fetch's hold flag")?;
    let envelopes = items
        .map(|item| match item {
            Value::BulkString(bytes) => Ok(bytes),
            other => Err(Error::Protocol(format!(
                "fetch returned {other:?} where a job belongs"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Fetched {
        now_ms,
        wake_at_ms,
        group,
        hold: hold == 1 || hold == 2,
        paused: hold == 1,
        staged: hold == 3,
        envelopes,
    })
}

/// One failed attempt, as `fail.lua` takes it.
pub(crate) struct Failure<'a> {
    pub(crate) group: u64,
    pub(crate) index: u32,
    pub(crate) id: &'a str,
    pub(crate) envelope: &'a [u8],
    pub(crate) dead: bool,
    pub(crate) delay_ms: u64,
    pub(crate) tracked: bool,
    pub(crate) attempt: u32,
    pub(crate) error: &'a str,
    pub(crate) unique: &'a str,
}

/// Moves failed jobs to retry or dead; returns how many were stale (their leases had expired).
pub(crate) async fn fail(
    conn: &mut Conn,
    keys: &QueueKeys,
    failures: &[Failure<'_>],
) -> Result<u64> {
    let mut call = ScriptCall::new(&call::FAIL, &keys.fail_keys());
    call.arg(&keys.prefix);
    for f in failures {
        call.arg(f.group)
            .arg(f.index)
            .arg(f.id)
            .arg(f.envelope)
            .arg(if f.dead { "dead" } else { "retry" })
            .arg(f.delay_ms)
            .arg(flag(f.tracked))
            .arg(f.attempt)
            .arg(f.error)
            .arg(f.unique);
    }
    call.run(conn).await
}

/// Gives leased jobs back to the queue, by group and index in the group (`requeue.lua`);
/// returns how many went back.
pub(crate) async fn requeue(
    conn: &mut Conn,
    keys: &QueueKeys,
    groups: &[(u64, Vec<u32>)],
) -> Result<u64> {
    let mut call = ScriptCall::new(&call::REQUEUE, &keys.requeue_keys());
    call.arg(&keys.prefix);
    for (group, indexes) in groups {
        call.arg(*group).arg("0").arg(indexes.len());
        for index in indexes {
            call.arg(*index);
        }
    }
    call.run(conn).await
}

/// A completed job that needs more than a count: tracked (a record and a result) or holding a
/// unique key, or in a group not finishing whole.
pub(crate) struct Completion<'a> {
    pub(crate) index: u32,
    pub(crate) id: &'a str,
    pub(crate) tracked: bool,
    pub(crate) result: &'a [u8],
    pub(crate) unique: &'a str,
}

/// The completions of one lease group.
pub(crate) struct GroupCompletions<'a> {
    pub(crate) group: u64,
    /// Every job of the group is settled: the group is deleted whole.
    pub(crate) all: bool,
    /// How many of its jobs completed.
    pub(crate) completed: usize,
    pub(crate) detailed: Vec<Completion<'a>>,
}

/// Ends the leases of jobs that succeeded (`complete.lua`); returns how many were stale.
pub(crate) async fn complete(
    conn: &mut Conn,
    keys: &QueueKeys,
    completed_retention_s: u64,
    groups: &[GroupCompletions<'_>],
) -> Result<u64> {
    let mut call = ScriptCall::new(&call::COMPLETE, &keys.complete_keys());
    call.arg(&keys.prefix).arg(completed_retention_s);
    for g in groups {
        call.arg(g.group)
            .arg(flag(g.all))
            .arg(g.completed)
            .arg(g.detailed.len());
        for c in &g.detailed {
            call.arg(c.index)
                .arg(c.id)
                .arg(flag(c.tracked))
                .arg(c.result)
                .arg(c.unique);
        }
    }
    call.run(conn).await
}

/// Extends the leases of `groups` by `lease_ms` and records, for those given one, how many of
/// their entries have started (their start mark); returns the groups that are gone.
pub(crate) async fn renew(
    conn: &mut Conn,
    keys: &QueueKeys,
    lease_ms: u64,
    groups: &[(u64, Option<u32>)],
) -> Result<Vec<u64>> {
    let mut call = ScriptCall::new(&call::RENEW, &keys.renew_keys());
    call.arg(lease_ms);
    for (group, started) in groups {
        call.arg(group);
        match started {
            Some(n) => call.arg(n),
            None => call.arg(""),
        };
    }
    call.run(conn).await
}

/// The ids of running jobs whose cancellation was asked for.
pub(crate) async fn cancel_requests(conn: &mut Conn, keys: &QueueKeys) -> Result<Vec<String>> {
    query(redis::cmd("SMEMBERS").arg(&keys.cancel), conn).await
}

/// Forgets a cancellation request that was honoured, so a later run of the same id is not
/// cancelled too.
pub(crate) async fn forget_cancel(conn: &mut Conn, keys: &QueueKeys, id: &str) -> Result<()> {
    query(redis::cmd("SREM").arg(&keys.cancel).arg(id), conn).await
}

/// Records a running job's progress (JSON) and emits it (`progress.lua`).
pub(crate) async fn progress(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
    json: &str,
) -> Result<()> {
    let mut call = ScriptCall::new(&call::PROGRESS, &keys.progress_keys());
    call.arg(&keys.prefix).arg(id).arg(json);
    call.run::<u64>(conn).await.map(drop)
}

/// Adds a batch's `(field, increment)` figures to the queue's per-minute and per-hour history
/// (`history.lua`).
pub(crate) async fn record_history(
    conn: &mut Conn,
    keys: &QueueKeys,
    fields: &[(String, u64)],
) -> Result<()> {
    let mut call = ScriptCall::new(&call::HISTORY, &[]);
    call.arg(&keys.prefix);
    for (field, n) in fields {
        call.arg(field).arg(*n);
    }
    call.run::<u64>(conn).await.map(drop)
}

fn flag(on: bool) -> &'static str {
    if on {
        "1"
    } else {
        "0"
    }
}
