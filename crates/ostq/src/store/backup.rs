//! The writes behind `ostq import` (`admin::backup`): which of a batch of job ids a queue
//! already holds, and one `MULTI`/`EXEC` per batch that files each job in its state, with its
//! envelope, index entry and status record. No script: the ids checked absent are written with
//! plain commands, and the batch lands whole or not at all (under OOM, say).

use super::call::{query, query_pipe};
use super::Conn;
use crate::keys::QueueKeys;
use crate::Result;

/// Where an imported job goes.
pub(crate) enum Slot {
    /// The tail of the pending list (priority 0), in file order: the list keeps the run order.
    Pending,
    /// The prioritized set, with its score (`-priority·2^42 + seq`).
    Prioritized(f64),
    /// `scheduled`, `retry` or `dead` with its due (or death) time; the envelope goes in `jobs`.
    Indexed { key: String, score: u64 },
    /// The completed index with its finish time; only the status record holds the job.
    Completed(u64),
}

/// One job to write.
pub(crate) struct JobWrite {
    pub(crate) id: String,
    pub(crate) envelope: Vec<u8>,
    pub(crate) slot: Slot,
    /// Status record fields, for tracked jobs.
    pub(crate) record: Vec<(&'static str, Vec<u8>)>,
    /// Seconds until the record expires (completed jobs keep the default retention).
    pub(crate) record_ttl_secs: Option<u64>,
}

/// For each id, whether the queue already has a job under it in `scheduled`, `retry` or `dead`
/// (the jobs hash), or a status record (a tracked job in any state).
pub(crate) async fn ids_present(
    conn: &mut Conn,
    keys: &QueueKeys,
    ids: &[&str],
) -> Result<Vec<bool>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HEXISTS").arg(&keys.jobs).arg(*id);
        pipe.cmd("EXISTS").arg(keys.record(id));
    }
    let flags: Vec<bool> = query_pipe(&pipe, conn).await?;
    Ok(flags
        .chunks(2)
        .map(|pair| pair.iter().any(|f| *f))
        .collect())
}

/// Reserves `count` FIFO sequence numbers; returns the first.
pub(crate) async fn reserve_seq(conn: &mut Conn, keys: &QueueKeys, count: u64) -> Result<u64> {
    let last: u64 = query(redis::cmd("INCRBY").arg(&keys.seq).arg(count), conn).await?;
    Ok(last.saturating_sub(count) + 1)
}

/// Writes the batch in one `MULTI`/`EXEC`.
pub(crate) async fn write_jobs(conn: &mut Conn, keys: &QueueKeys, jobs: &[JobWrite]) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for job in jobs {
        match &job.slot {
            Slot::Pending => {
                pipe.cmd("LPUSH")
                    .arg(&keys.pending)
                    .arg(&job.envelope)
                    .ignore();
            }
            Slot::Prioritized(score) => {
                pipe.cmd("ZADD")
                    .arg(&keys.prioritized)
                    .arg(*score)
                    .arg(&job.envelope)
                    .ignore();
            }
            Slot::Indexed { key, score } => {
                pipe.cmd("HSET")
                    .arg(&keys.jobs)
                    .arg(&job.id)
                    .arg(&job.envelope)
                    .ignore();
                pipe.cmd("ZADD").arg(key).arg(*score).arg(&job.id).ignore();
            }
            Slot::Completed(at) => {
                pipe.cmd("ZADD")
                    .arg(&keys.completed)
                    .arg(*at)
                    .arg(&job.id)
                    .ignore();
            }
        }
        if !job.record.is_empty() {
            let record = keys.record(&job.id);
            let mut hset = redis::cmd("HSET");
            hset.arg(&record);
            for (field, value) in &job.record {
                hset.arg(*field).arg(value.as_slice());
            }
            pipe.add_command(hset).ignore();
            if let Some(ttl) = job.record_ttl_secs {
                pipe.cmd("EXPIRE").arg(&record).arg(ttl).ignore();
            }
        }
    }
    query_pipe::<()>(&pipe, conn).await
}
