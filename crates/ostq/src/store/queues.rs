//! The admin API's commands: counts, listings, lookups by id, and the operator's writes (retry,
//! delete, purge, cancel, pause, rate limit). Reads are bounded per call (`SCAN_CHUNK` entries);
//! the writes that move jobs are scripts.

use std::collections::HashMap;

use redis::{Cmd, FromRedisValue};

use super::call::{self, query, query_pipe, ScriptCall};
use super::Conn;
use crate::envelope::Envelope;
use crate::keys::{QueueKeys, QUEUES};
use crate::{Error, Result};

/// The wake marker `push.lua` and `fail.lua` leave on an empty pending list; never a job.
pub(crate) const WAKE: &[u8] = &[0x90];
/// Entries read per round trip when scanning, and ids per script call.
pub(crate) const SCAN_CHUNK: usize = 500;

/// Names of the queues ever pushed to or served (unsorted).
pub(crate) async fn queue_names(conn: &mut Conn) -> Result<Vec<String>> {
    query(redis::cmd("SMEMBERS").arg(QUEUES), conn).await
}

/// A queue's sizes and counters as stored.
pub(crate) struct StoredCounts {
    /// Entries of the pending list, wake markers included.
    pub(crate) pending_list: u64,
    /// Wake markers in the list (among its last 1,000 entries).
    pub(crate) wake_markers: u64,
    pub(crate) prioritized: u64,
    pub(crate) scheduled: u64,
    pub(crate) retry: u64,
    pub(crate) dead: u64,
    pub(crate) completed: u64,
    /// `processed`, `failed`, `recovered`, `active` of the stats hash (absent as 0).
    pub(crate) processed: u64,
    pub(crate) failed: u64,
    pub(crate) recovered: u64,
    pub(crate) active: u64,
    pub(crate) paused: bool,
}

/// Sizes and counters in one round trip.
pub(crate) async fn counts(conn: &mut Conn, keys: &QueueKeys) -> Result<StoredCounts> {
    let mut pipe = redis::pipe();
    pipe.llen(&keys.pending)
        // Wake markers are not jobs. One is only ever added to an empty list, and the markers a
        // pause or a rate limit adds for staged waits (one per waiting worker) are taken at once
        // or sit at the right end, so few entries (recovered or given-back jobs pushed to the
        // right) can stand to their right.
        .cmd("LPOS")
        .arg(&keys.pending)
        .arg(WAKE)
        .arg("RANK")
        .arg(-1)
        .arg("COUNT")
        .arg(0)
        .arg("MAXLEN")
        .arg(1000)
        .zcard(&keys.prioritized)
        .zcard(&keys.scheduled)
        .zcard(&keys.retry)
        .zcard(&keys.dead)
        .zcard(&keys.completed)
        .hmget(&keys.stats, &["processed", "failed", "recovered", "active"])
        .exists(&keys.paused);
    #[allow(clippy::type_complexity)]
    let (pending_list, marker, prioritized, scheduled, retry, dead, completed, totals, paused): (
        u64,
        Vec<u64>,
        u64,
        u64,
        u64,
        u64,
        u64,
        Vec<Option<i64>>,
        bool,
    ) = query_pipe(&pipe, conn).await?;
    let total = |i: usize| totals.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
    Ok(StoredCounts {
        pending_list,
        wake_markers: marker.len() as u64,
        prioritized,
        scheduled,
        retry,
        dead,
        completed,
        processed: total(0),
        failed: total(1),
        recovered: total(2),
        active: total(3),
        paused,
    })
}

/// Entries `start..=stop` of the prioritized set, in run order.
pub(crate) async fn prioritized_range(
    conn: &mut Conn,
    keys: &QueueKeys,
    start: isize,
    stop: isize,
) -> Result<Vec<Vec<u8>>> {
    query(
        redis::cmd("ZRANGE")
            .arg(&keys.prioritized)
            .arg(start)
            .arg(stop),
        conn,
    )
    .await
}

/// How many entries the prioritized set holds.
pub(crate) async fn prioritized_len(conn: &mut Conn, keys: &QueueKeys) -> Result<usize> {
    query(redis::cmd("ZCARD").arg(&keys.prioritized), conn).await
}

/// Entries of the pending list counted from its right end (the next to run): `skip` entries
/// skipped, up to `take` returned in run order (the wake marker left out).
pub(crate) async fn pending_from_right(
    conn: &mut Conn,
    keys: &QueueKeys,
    skip: usize,
    take: usize,
) -> Result<Vec<Vec<u8>>> {
    let mut entries = pending_window(conn, keys, skip as u64, take as u64).await?;
    entries.retain(|b| b.as_slice() != WAKE);
    Ok(entries)
}

/// Entries in the pending list (the wake marker included).
pub(crate) async fn pending_len(conn: &mut Conn, keys: &QueueKeys) -> Result<u64> {
    query(redis::cmd("LLEN").arg(&keys.pending), conn).await
}

/// Up to `take` entries of the pending list from index `from_right` (0 is the right end, the
/// next to run), in run order, wake marker included: one `LRANGE`, so one consistent snapshot.
pub(crate) async fn pending_window(
    conn: &mut Conn,
    keys: &QueueKeys,
    from_right: u64,
    take: u64,
) -> Result<Vec<Vec<u8>>> {
    if take == 0 {
        return Ok(Vec::new());
    }
    let (skip, take) = (from_right as i64, take as i64);
    let mut entries: Vec<Vec<u8>> = query(
        redis::cmd("LRANGE")
            .arg(&keys.pending)
            .arg(-(skip + take))
            .arg(-(skip + 1)),
        conn,
    )
    .await?;
    entries.reverse();
    Ok(entries)
}

/// How many entries of a sorted set come before score `score` in ascending order (scores below
/// it) or, `descending`, in descending order (scores above it). O(log N).
pub(crate) async fn zset_count_before(
    conn: &mut Conn,
    zset: &str,
    score: f64,
    descending: bool,
) -> Result<u64> {
    let bound = format!("({score}");
    let mut cmd = redis::cmd("ZCOUNT");
    if descending {
        cmd.arg(zset).arg(bound).arg("+inf");
    } else {
        cmd.arg(zset).arg("-inf").arg(bound);
    }
    query(&cmd, conn).await
}

/// Members (as bytes) and scores of ranks `start..start + take` of a sorted set, ascending or
/// `descending`: one `ZRANGE`, so one consistent snapshot.
pub(crate) async fn zset_window(
    conn: &mut Conn,
    zset: &str,
    start: u64,
    take: u64,
    descending: bool,
) -> Result<Vec<(Vec<u8>, f64)>> {
    if take == 0 {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(zset).arg(start).arg(start + take - 1);
    if descending {
        cmd.arg("REV");
    }
    query(cmd.arg("WITHSCORES"), conn).await
}

/// Ids and scores `start..=stop` of a sorted set, ascending or (`newest_first`) descending.
pub(crate) async fn ids_with_scores(
    conn: &mut Conn,
    zset: &str,
    start: isize,
    stop: isize,
    newest_first: bool,
) -> Result<Vec<(String, u64)>> {
    let mut cmd = redis::cmd("ZRANGE");
    cmd.arg(zset).arg(start).arg(stop);
    if newest_first {
        cmd.arg("REV");
    }
    query(cmd.arg("WITHSCORES"), conn).await
}

/// The envelopes of jobs kept by id (scheduled, retry, dead), `None` where missing.
pub(crate) async fn envelopes_by_id(
    conn: &mut Conn,
    keys: &QueueKeys,
    ids: &[&str],
) -> Result<Vec<Option<Vec<u8>>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    query(redis::cmd("HMGET").arg(&keys.jobs).arg(ids), conn).await
}

/// Where a job kept by id is: its scores in the scheduled, retry and dead sets.
pub(crate) async fn timed_scores(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
) -> Result<(Option<u64>, Option<u64>, Option<u64>)> {
    let mut pipe = redis::pipe();
    pipe.zscore(&keys.scheduled, id)
        .zscore(&keys.retry, id)
        .zscore(&keys.dead, id);
    query_pipe(&pipe, conn).await
}

/// Every lease group with its deadline and its entries ("" for a finished one). O(active jobs),
/// for inspection only.
pub(crate) async fn lease_groups(
    conn: &mut Conn,
    keys: &QueueKeys,
) -> Result<Vec<(u64, u64, Vec<Vec<u8>>)>> {
    let groups = lease_deadlines(conn, keys).await?;
    let ids: Vec<u64> = groups.iter().map(|(group, _)| *group).collect();
    let entries = lease_entries(conn, keys, &ids).await?;
    Ok(groups
        .into_iter()
        .zip(entries)
        .map(|((group, deadline), entries)| (group, deadline, entries))
        .collect())
}

/// Every lease group with its deadline (unix ms). O(groups): one per fetch, not per job.
pub(crate) async fn lease_deadlines(conn: &mut Conn, keys: &QueueKeys) -> Result<Vec<(u64, u64)>> {
    query(
        redis::cmd("ZRANGE")
            .arg(&keys.active)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
        conn,
    )
    .await
}

/// The entries of the given lease groups ("" for a finished one; none for a group gone), in one
/// round trip.
pub(crate) async fn lease_entries(
    conn: &mut Conn,
    keys: &QueueKeys,
    groups: &[u64],
) -> Result<Vec<Vec<Vec<u8>>>> {
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for group in groups {
        pipe.lrange(keys.lease_group(*group), 0, -1);
    }
    query_pipe(&pipe, conn).await
}

/// Entries `start..start + count` of the pending list (from the left) or the prioritized set,
/// for scans.
pub(crate) async fn pending_chunk(
    conn: &mut Conn,
    key: &str,
    is_list: bool,
    start: usize,
    count: usize,
) -> Result<Vec<Vec<u8>>> {
    let stop = start + count.max(1) - 1;
    let cmd = if is_list { "LRANGE" } else { "ZRANGE" };
    query(redis::cmd(cmd).arg(key).arg(start).arg(stop), conn).await
}

/// A tracked job's status record (empty when there is none).
pub(crate) async fn record(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
) -> Result<HashMap<String, Vec<u8>>> {
    query(redis::cmd("HGETALL").arg(keys.record(id)), conn).await
}

/// The status records of several jobs in one round trip (empty where there is none).
pub(crate) async fn records(
    conn: &mut Conn,
    keys: &QueueKeys,
    ids: &[&str],
) -> Result<Vec<HashMap<String, Vec<u8>>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hgetall(keys.record(id));
    }
    query_pipe(&pipe, conn).await
}

/// The running totals of the stats hash: `processed`, `failed`, `recovered` and `active` (absent
/// as 0). One `HMGET`, cheap enough to poll.
pub(crate) async fn totals(conn: &mut Conn, keys: &QueueKeys) -> Result<[u64; 4]> {
    let values: Vec<Option<i64>> = query(
        redis::cmd("HMGET")
            .arg(&keys.stats)
            .arg(&["processed", "failed", "recovered", "active"]),
        conn,
    )
    .await?;
    let total = |i: usize| values.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
    Ok([total(0), total(1), total(2), total(3)])
}

/// Asks the worker running job `id` to stop it (the cancel set expires a day after the last).
pub(crate) async fn request_cancel(conn: &mut Conn, keys: &QueueKeys, id: &str) -> Result<()> {
    let mut pipe = redis::pipe();
    pipe.sadd(&keys.cancel, id)
        .pexpire(&keys.cancel, 24 * 3600 * 1000);
    query_pipe(&pipe, conn).await
}

/// Moves scheduled, retry or dead jobs to pending now (`enqueue_now.lua`); returns how many.
pub(crate) async fn enqueue_now(conn: &mut Conn, keys: &QueueKeys, ids: &[&str]) -> Result<u64> {
    let mut moved = 0;
    for chunk in ids.chunks(SCAN_CHUNK) {
        let mut call = ScriptCall::new(&call::ENQUEUE_NOW, &keys.enqueue_now_keys());
        call.arg(&keys.prefix).arg(chunk);
        moved += call.run::<u64>(conn).await?;
    }
    Ok(moved)
}

/// Deletes scheduled, retry, dead or completed jobs by id (`delete.lua`); returns how many.
pub(crate) async fn delete(conn: &mut Conn, keys: &QueueKeys, ids: &[&str]) -> Result<u64> {
    let mut removed = 0;
    for chunk in ids.chunks(SCAN_CHUNK) {
        let mut call = ScriptCall::new(&call::DELETE, &keys.delete_keys());
        call.arg(&keys.prefix).arg(chunk);
        removed += call.run::<u64>(conn).await?;
    }
    Ok(removed)
}

/// Deletes one pending job given its exact envelope (`delete_pending.lua`); returns 0 or 1.
pub(crate) async fn delete_pending(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
    envelope: &[u8],
) -> Result<u64> {
    let mut call = ScriptCall::new(&call::DELETE_PENDING, &keys.delete_pending_keys());
    call.arg(&keys.prefix).arg(id).arg(envelope);
    call.run(conn).await
}

/// Moves a pending list or zset aside atomically (so pushes that race with the purge are kept),
/// then deletes it, the status records of its tracked jobs and the unique keys its jobs held.
/// Returns how many jobs it held.
pub(crate) async fn purge_pending(
    conn: &mut Conn,
    keys: &QueueKeys,
    key: &str,
    is_list: bool,
) -> Result<u64> {
    let aside = keys.purging(&crate::producer::new_id());
    let renamed = query::<()>(redis::cmd("RENAME").arg(key).arg(&aside), conn).await;
    if renamed.is_err() {
        return Ok(0); // nothing to purge
    }
    let mut removed = 0;
    let mut start = 0;
    loop {
        let entries = pending_chunk(conn, &aside, is_list, start, SCAN_CHUNK).await?;
        if entries.is_empty() {
            break;
        }
        start += entries.len();
        for bytes in entries.iter().filter(|b| b.as_slice() != WAKE) {
            removed += 1;
            if let Ok(env) = Envelope::decode(bytes) {
                release_purged(conn, keys, &env).await?;
            }
        }
    }
    // UNLINK: a big list is freed in the background, not while Redis serves everyone else.
    query::<()>(redis::cmd("UNLINK").arg(&aside), conn).await?;
    Ok(removed)
}

/// Deletes a purged job's status record and frees the unique key it held.
async fn release_purged(conn: &mut Conn, keys: &QueueKeys, env: &Envelope) -> Result<()> {
    if env.tracked() {
        query::<()>(redis::cmd("DEL").arg(keys.record(&env.id)), conn).await?;
    }
    if !env.unique.is_empty() {
        // The job is gone, so its key is free. (Not atomic: a key that changed hands between
        // these two commands would be freed early; purges are rare.)
        let unique = keys.unique(&env.unique);
        let holder: Option<String> = query(redis::cmd("GET").arg(&unique), conn).await?;
        if holder.as_deref() == Some(env.id.as_str()) {
            query::<()>(redis::cmd("DEL").arg(&unique), conn).await?;
        }
    }
    Ok(())
}

/// Pauses (or resumes) the queue: workers fetch nothing while the flag exists.
pub(crate) async fn set_paused(conn: &mut Conn, keys: &QueueKeys, paused: bool) -> Result<()> {
    // Idle workers holding a paused queue wait on `resumed` (a paused queue's list may be full,
    // so they cannot wait on it): a resume pushes onto it, a pause deletes it. It expires soon
    // after a resume: a worker still holding the queue by then fetches at its safety re-check.
    let resumed = resumed_key(keys);
    let mut pipe = redis::pipe();
    if paused {
        pipe.atomic().set(&keys.paused, 1).del(&resumed);
    } else {
        pipe.atomic()
            .del(&keys.paused)
            .del(&resumed)
            .rpush(&resumed, 1)
            .pexpire(&resumed, RESUMED_TTL_MS);
    }
    query_pipe::<()>(&pipe, conn).await?;
    if paused {
        wake_staged(conn, keys).await?;
    }
    Ok(())
}

/// Ends the waits of idle workers whose staged group (design §7.2) would take the next job
/// whatever the queue's hold: one wake marker per staged group, after the hold is written. Each
/// such wait takes one entry; a group staged once the hold was written cannot be (fetch.lua checks
/// the hold before it stages), and every group staged before it is counted, so the markers come
/// before any job pushed later, and the workers fetch, see the hold and wait for it to end. Spare
/// markers (a group staged but not waited on) are dropped by the next fetch.
async fn wake_staged(conn: &mut Conn, keys: &QueueKeys) -> Result<()> {
    // (SMEMBERS rather than SCARD: one member per idle worker, and the ACL rule of design §15
    // already grants it.)
    let staged: Vec<Vec<u8>> = query(redis::cmd("SMEMBERS").arg(&keys.staged), conn).await?;
    let staged = staged.len();
    if staged == 0 {
        return Ok(());
    }
    let mut lpush = redis::cmd("LPUSH");
    lpush.arg(&keys.pending);
    for _ in 0..staged.min(10_000) {
        lpush.arg(WAKE);
    }
    query(&lpush, conn).await
}

/// How long the `resumed` list outlives a resume: far longer than a worker takes from a fetch
/// that found the queue paused to its wait on the list.
const RESUMED_TTL_MS: i64 = 10_000;

/// `ostq:{q}:resumed`: a list that exists for a few seconds after `Queue::resume`, which idle
/// workers holding the paused queue wait on (design §7.5).
pub(crate) fn resumed_key(keys: &QueueKeys) -> String {
    format!("{}resumed", keys.prefix)
}

/// Sets (`Some((max, period_ms))`) or clears the queue's token bucket.
pub(crate) async fn set_rate_limit(
    conn: &mut Conn,
    keys: &QueueKeys,
    limit: Option<(u64, u64)>,
) -> Result<()> {
    let mut pipe = redis::pipe();
    pipe.atomic().del(&keys.rate_limit);
    if let Some((max, period_ms)) = limit {
        pipe.hset_multiple(&keys.rate_limit, &[("max", max), ("period", period_ms)]);
    }
    query_pipe::<()>(&pipe, conn).await?;
    if limit.is_some() {
        // A job a staged wait moves takes no token: those waits end first (fetch.lua does not
        // stage a rate-limited queue).
        wake_staged(conn, keys).await?;
    }
    Ok(())
}

/// `MEMORY USAGE` of each key, `None` where it does not exist, in one round trip. `exact` counts
/// every element (`SAMPLES 0`: O(elements)) instead of Redis's sampled estimate.
pub(crate) async fn memory_usage(
    conn: &mut Conn,
    keys: &[String],
    exact: bool,
) -> Result<Vec<Option<u64>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("MEMORY").arg("USAGE").arg(key);
        if exact {
            pipe.arg("SAMPLES").arg(0);
        }
    }
    query_pipe(&pipe, conn).await
}

/// The newest entry of the pending list (its left end), as stored.
pub(crate) async fn newest_pending(conn: &mut Conn, keys: &QueueKeys) -> Result<Option<Vec<u8>>> {
    query(redis::cmd("LINDEX").arg(&keys.pending).arg(0), conn).await
}

/// One `SCAN` step over every key of the queue (`ostq:{<queue>}:*`, per-job keys included), on
/// the node that holds them. Returns the next scan cursor (0 at the end) and the keys found.
pub(crate) async fn scan_queue_keys(
    conn: &mut Conn,
    keys: &QueueKeys,
    cursor: u64,
) -> Result<(u64, Vec<Vec<u8>>)> {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor)
        .arg("MATCH")
        .arg(keys.pattern())
        .arg("COUNT")
        .arg(1000);
    on_queue_node(&cmd, keys, conn).await
}

/// Sends a keyless command to the node that holds the queue's keys: on a Cluster, `SCAN` would
/// otherwise go to any node.
async fn on_queue_node<T: FromRedisValue>(
    cmd: &Cmd,
    keys: &QueueKeys,
    conn: &mut Conn,
) -> Result<T> {
    if let Conn::Cluster(cluster) = conn {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let route = Route::with_key(keys.pending.as_bytes(), SlotAddr::Master);
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
        let value = cluster
            .route_command(cmd.clone(), routing)
            .await
            .map_err(Error::from_redis)?;
        return T::from_redis_value(value).map_err(|e| Error::Protocol(e.to_string()));
    }
    query(cmd, conn).await
}

/// Deletes keys (`UNLINK`: big ones are freed in the background); returns how many existed.
pub(crate) async fn unlink(conn: &mut Conn, keys: &[Vec<u8>]) -> Result<u64> {
    if keys.is_empty() {
        return Ok(0);
    }
    query(redis::cmd("UNLINK").arg(keys), conn).await
}

/// Removes a queue's name from the set of known queues.
pub(crate) async fn forget_queue(conn: &mut Conn, queue: &str) -> Result<()> {
    query(redis::cmd("SREM").arg(QUEUES).arg(queue), conn).await
}
