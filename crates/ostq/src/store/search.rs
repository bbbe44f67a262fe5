//! The reads behind `admin::search` that the listing commands do not cover: a queue's rate limit
//! as set by `Queue::set_rate_limit`. (Searching itself pages through `admin::listing`, whose
//! commands are bounded per call.)

use super::call::query;
use super::Conn;
use crate::keys::QueueKeys;
use crate::Result;

/// The queue's rate limit as stored: `(max, period_ms)`, `None` when it has none (or the hash
/// holds something that is not a limit). One `HMGET`.
pub(crate) async fn rate_limit(conn: &mut Conn, keys: &QueueKeys) -> Result<Option<(u64, u64)>> {
    let values: Vec<Option<String>> = query(
        redis::cmd("HMGET")
            .arg(&keys.rate_limit)
            .arg(&["max", "period"]),
        conn,
    )
    .await?;
    let number = |i: usize| {
        values
            .get(i)
            .cloned()
            .flatten()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|n| *n > 0)
    };
    Ok(number(0).zip(number(1)))
}
