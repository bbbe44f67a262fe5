//! Reading jobs out of what Redis stores: envelopes into [`JobInfo`], status records merged in,
//! and the scans that find one job by id.

use std::collections::HashMap;

use crate::envelope::Envelope;
use crate::job::{JobInfo, JobState};
use crate::keys::QueueKeys;
use crate::store::queues::{self as stored, SCAN_CHUNK};
use crate::store::Conn;
use crate::Result;

/// The first ids of a sorted set (lowest scores), one scan chunk.
pub(super) async fn oldest_ids(conn: &mut Conn, zset: &str) -> Result<Vec<String>> {
    let stop = SCAN_CHUNK as isize - 1;
    let ids = stored::ids_with_scores(conn, zset, 0, stop, false).await?;
    Ok(ids.into_iter().map(|(id, _)| id).collect())
}

/// Reads jobs kept by id, with their due (or died-at) times; ids no longer there are left out.
pub(super) async fn infos_by_id(
    conn: &mut Conn,
    keys: &QueueKeys,
    state: JobState,
    ids: Vec<(String, u64)>,
) -> Result<Vec<JobInfo>> {
    let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let envelopes = stored::envelopes_by_id(conn, keys, &names).await?;
    Ok(ids
        .into_iter()
        .zip(envelopes)
        .filter_map(|((id, due), bytes)| {
            let mut info = info_from_bytes(&keys.queue, state, bytes.as_deref()?);
            info.id = id;
            if state == JobState::Dead {
                info.finished_at_ms = Some(due);
            } else {
                info.due_at_ms = Some(due);
            }
            Some(info)
        })
        .collect())
}

/// Completed jobs by id, from their status records; ids whose record expired are left out.
pub(super) async fn completed_infos(
    conn: &mut Conn,
    keys: &QueueKeys,
    ids: &[&str],
) -> Result<Vec<JobInfo>> {
    let records = stored::records(conn, keys, ids).await?;
    Ok(ids
        .iter()
        .zip(records)
        .filter_map(|(id, record)| merge_record(keys, id, None, &record))
        .collect())
}

pub(super) fn info_from_bytes(queue: &str, state: JobState, bytes: &[u8]) -> JobInfo {
    match Envelope::decode(bytes) {
        Ok(env) => JobInfo::from_envelope(queue, state, env),
        Err(e) => {
            // A bare entry (plain LPUSH) or garbage: show the bytes as they are.
            let bare = !bytes.first().is_some_and(|b| (0x90..=0x9f).contains(b));
            let env = Envelope {
                id: "(unassigned)".into(),
                payload: bytes.to_vec(),
                last_error: if bare { String::new() } else { e.to_string() },
                ..Envelope::default()
            };
            JobInfo::from_envelope(queue, state, env)
        }
    }
}

/// Reads an envelope's id without decoding the rest (the layout `fetch.lua` relies on too).
pub(super) fn envelope_id(bytes: &[u8]) -> Option<&[u8]> {
    match (bytes.first()?, bytes.get(1)?) {
        (0x91..=0x9f, &b) if (0xa0..=0xbf).contains(&b) => bytes.get(2..2 + usize::from(b - 0xa0)),
        (0x91..=0x9f, 0xd9) => {
            let len = usize::from(*bytes.get(2)?);
            bytes.get(3..3 + len)
        }
        _ => None,
    }
}

/// Every job workers hold now: the entries of each lease group that are not finished (""), with
/// the group's deadline. O(active jobs), for inspection only.
pub(super) async fn active_jobs(conn: &mut Conn, keys: &QueueKeys) -> Result<Vec<JobInfo>> {
    let mut out = Vec::new();
    for (_, deadline, entries) in stored::lease_groups(conn, keys).await? {
        for bytes in entries.iter().filter(|b| !b.is_empty()) {
            out.push(active_info(keys, bytes, deadline));
        }
    }
    Ok(out)
}

/// A leased job, its lease's deadline as its due time.
pub(super) fn active_info(keys: &QueueKeys, bytes: &[u8], deadline: u64) -> JobInfo {
    let mut info = info_from_bytes(&keys.queue, JobState::Active, bytes);
    info.due_at_ms = Some(deadline);
    info
}

pub(super) async fn find_active(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
) -> Result<Option<JobInfo>> {
    Ok(active_jobs(conn, keys)
        .await?
        .into_iter()
        .find(|info| info.id == id))
}

/// Merges a tracked job's status record into what was found of its envelope.
pub(super) async fn record_info(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
    found: Option<JobInfo>,
) -> Result<Option<JobInfo>> {
    let record = stored::record(conn, keys, id).await?;
    if record.is_empty() {
        return Ok(found);
    }
    Ok(merge_record(keys, id, found, &record))
}

/// What is known of a job from its status record, on top of its envelope when one was found.
/// `None` without either.
fn merge_record(
    keys: &QueueKeys,
    id: &str,
    found: Option<JobInfo>,
    record: &HashMap<String, Vec<u8>>,
) -> Option<JobInfo> {
    if record.is_empty() {
        return found;
    }
    let text = |field: &str| {
        record
            .get(field)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let number = |field: &str| text(field).and_then(|v| v.parse::<u64>().ok());
    let recorded_state = text("state").and_then(|s| s.parse::<JobState>().ok());
    let mut info = found.unwrap_or_else(|| JobInfo {
        id: id.to_string(),
        queue: keys.queue.clone(),
        state: recorded_state.unwrap_or(JobState::Completed),
        name: None,
        payload: None,
        attempts: 0,
        max_attempts: 0,
        priority: 0,
        enqueued_at_ms: None,
        started_at_ms: None,
        finished_at_ms: None,
        due_at_ms: None,
        last_error: None,
        result: None,
        progress: None,
        tracked: true,
    });
    info.tracked = true;
    if info.payload.is_none() {
        if let Some(state) = recorded_state {
            info.state = state;
        }
    }
    info.attempts = number("attempt").map(|n| n as u32).unwrap_or(info.attempts);
    info.enqueued_at_ms = number("enqueued_at").or(info.enqueued_at_ms);
    info.started_at_ms = number("started_at").or(info.started_at_ms);
    info.finished_at_ms = number("finished_at").or(info.finished_at_ms);
    info.last_error = text("error").filter(|e| !e.is_empty()).or(info.last_error);
    info.result = record.get("result").cloned();
    info.progress = text("progress");
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_id_reads_the_header() {
        let env = Envelope {
            id: "abc".into(),
            ..Envelope::default()
        };
        assert_eq!(envelope_id(&env.encode()), Some(&b"abc"[..]));
        let long = Envelope {
            id: "x".repeat(100),
            ..Envelope::default()
        };
        assert_eq!(envelope_id(&long.encode()).map(<[u8]>::len), Some(100));
        assert_eq!(envelope_id(b"42"), None);
        assert_eq!(envelope_id(crate::store::queues::WAKE), None);
    }
}
