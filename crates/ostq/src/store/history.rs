//! Reading the per-task history hashes (`hist:m:<minute>`, `hist:h:<hour>`, design §2
//! "History"). The write side is `history.lua`, called by workers beside their outcome writes.

use std::collections::HashMap;

use super::call::query_pipe;
use super::Conn;
use crate::keys::QueueKeys;
use crate::Result;

/// Which hashes to read: per minute or per hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    Minute,
    Hour,
}

/// Buckets `first..=last` (minute or hour numbers) with their fields, in one pipelined round
/// trip (`HGETALL` each key), oldest first. Every bucket is returned, an absent hash as an empty
/// map. Field names that are not UTF-8 are read lossily; values that are not unsigned integers
/// are left out (never an error).
pub(crate) async fn read(
    conn: &mut Conn,
    keys: &QueueKeys,
    span: Span,
    first: u64,
    last: u64,
) -> Result<Vec<(u64, HashMap<String, u64>)>> {
    if first > last {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for bucket in first..=last {
        let key = match span {
            Span::Minute => keys.history_minute(bucket),
            Span::Hour => keys.history_hour(bucket),
        };
        pipe.cmd("HGETALL").arg(key);
    }
    let replies: Vec<HashMap<Vec<u8>, Vec<u8>>> = query_pipe(&pipe, conn).await?;
    Ok((first..=last)
        .zip(replies)
        .map(|(bucket, raw)| (bucket, numeric_fields(raw)))
        .collect())
}

/// The queue's totals hash (`hist:all`), in one round trip; read as [`read`] reads a bucket.
pub(crate) async fn read_totals(conn: &mut Conn, keys: &QueueKeys) -> Result<HashMap<String, u64>> {
    let raw: HashMap<Vec<u8>, Vec<u8>> =
        super::call::query(redis::cmd("HGETALL").arg(keys.history_totals()), conn).await?;
    Ok(numeric_fields(raw))
}

/// The fields whose values are unsigned integers, names as text.
fn numeric_fields(raw: HashMap<Vec<u8>, Vec<u8>>) -> HashMap<String, u64> {
    raw.into_iter()
        .filter_map(|(field, value)| {
            let n = std::str::from_utf8(&value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?;
            Some((String::from_utf8_lossy(&field).into_owned(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_are_not_numbers_are_left_out() {
        let raw: HashMap<Vec<u8>, Vec<u8>> = [
            (b"ok|processed".to_vec(), b"3".to_vec()),
            (b"ok|failed".to_vec(), b"x".to_vec()),
            (b"ok|dead".to_vec(), b"-1".to_vec()),
            (b"ok|retried".to_vec(), vec![0xff]),
        ]
        .into_iter()
        .collect();
        let fields = numeric_fields(raw);
        assert_eq!(fields.len(), 1);
        assert_eq!(fields["ok|processed"], 3);
    }
}
