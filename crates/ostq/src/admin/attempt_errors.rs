//! Every error of a job's attempts, as far as the queue's event stream still holds them.
//!
//! A job keeps only its latest error (the envelope's `last_error`). When the queue's events go to
//! its capped stream ([`EventSink::Stream`] or [`EventSink::Both`]), each failed attempt also left
//! a `failed`, `dead` or `recovered` event with its attempt number and error: reading those back
//! gives every error of every attempt, for the attempts recent enough that the stream (about the
//! last 10,000 events of the queue) still keeps them. Nothing is written for this: no Lua script
//! or envelope change, only reads of the stream through the storage layer.
//!
//! Cost: the stream is read from its oldest entry to its newest (up to [`MAX_EVENTS_READ`]
//! entries, in batches of 1,000), so one call is O(events kept), not O(jobs).

use crate::events::{Event, EventKind, EventSink};
use crate::producer::Queue;
use crate::store::stream;
use crate::Result;

/// The most stream entries one [`Queue::attempt_errors`] call reads.
///
/// ```
/// assert_eq!(ostq::admin::attempt_errors::MAX_EVENTS_READ, 20_000);
/// ```
pub const MAX_EVENTS_READ: usize = 20_000;

/// One failed attempt of a job, from its event.
///
/// ```
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let found = client.queue("emails").attempt_errors("01HZX…").await?;
/// if let Some(first) = found.errors.first() {
///     assert_eq!(first.attempt, Some(1));
///     println!("{:?}: {}", first.kind, first.error);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AttemptError {
    /// The attempt it concerns (1 for the first), when the event says.
    pub attempt: Option<u32>,
    /// When it was recorded, unix ms (Redis server clock).
    pub at_ms: u64,
    /// `Failed` (retried later), `Dead` (out of attempts) or `Recovered` (its worker was lost).
    pub kind: EventKind,
    /// The error.
    pub error: String,
}

/// What [`Queue::attempt_errors`] found.
///
/// ```
/// let nothing = ostq::admin::attempt_errors::AttemptErrors::default();
/// assert!(nothing.errors.is_empty() && !nothing.stream_on && !nothing.truncated);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AttemptErrors {
    /// The job's errors, oldest first.
    pub errors: Vec<AttemptError>,
    /// Whether the queue's events go to its stream now (if not, errors of new attempts are not
    /// kept there).
    pub stream_on: bool,
    /// How many stream entries were read.
    pub examined: usize,
    /// The time of the oldest event still in the stream, unix ms: errors before it are gone.
    pub kept_since_ms: Option<u64>,
    /// Whether the read stopped at [`MAX_EVENTS_READ`] before the newest event.
    pub truncated: bool,
}

/// A stream id `<ms>-<seq>` as numbers, to compare ids; `None` when malformed.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

impl Queue {
    /// Every error of the job `id`'s attempts that the queue's event stream still holds, oldest
    /// first (see the module's documentation for when it holds them and what it costs).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let found = client.queue("emails").attempt_errors("01HZX…").await?;
    /// for e in &found.errors {
    ///     println!("attempt {:?} at {}: {}", e.attempt, e.at_ms, e.error);
    /// }
    /// if !found.stream_on {
    ///     println!("turn the queue's events on (ostq events emails --enable) to keep them");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn attempt_errors(&self, id: &str) -> Result<AttemptErrors> {
        let keys = self.keys()?;
        let (layout, shards) = self.shard_set().await?;
        if shards.len() > 1 {
            // A sharded queue (design §19): a job's events are in the stream of the shard it
            // runs in, the one its id names (a given id routed by a key elsewhere is missed).
            if let Some(shard) = shards.get(layout.shard_of_id(id)) {
                return Box::pin(shard.attempt_errors(id)).await;
            }
        }
        let sink = self.events_sink().await?;
        let mut found = AttemptErrors {
            stream_on: matches!(sink, EventSink::Stream | EventSink::Both),
            ..AttemptErrors::default()
        };
        let mut conn = self.client_ref().conn();
        let Some(newest) = stream::last_event_id(&mut conn, keys).await? else {
            return Ok(found);
        };
        let Some(newest_id) = stream_id(&newest) else {
            return Ok(found);
        };
        // Entries after `after` exist up to `newest` (trimming only drops the oldest), so XREAD
        // answers at once and never waits on this shared connection.
        let mut after = "0-0".to_string();
        'read: loop {
            let batch = stream::read_events(&mut conn, keys, &after).await?;
            if batch.is_empty() {
                break;
            }
            for (entry_id, json) in batch {
                let position = stream_id(&entry_id);
                after = entry_id;
                found.examined += 1;
                let Some(event) = json.and_then(|j| serde_json::from_str::<Event>(&j).ok()) else {
                    continue;
                };
                if found.kept_since_ms.is_none() {
                    found.kept_since_ms = Some(event.ts);
                }
                if event.id == id
                    && matches!(
                        event.event,
                        EventKind::Failed | EventKind::Dead | EventKind::Recovered
                    )
                {
                    if let Some(error) = event.error {
                        found.errors.push(AttemptError {
                            attempt: event.attempt,
                            at_ms: event.ts,
                            kind: event.event,
                            error,
                        });
                    }
                }
                if position.is_none_or(|p| p >= newest_id) {
                    break 'read;
                }
                if found.examined >= MAX_EVENTS_READ {
                    found.truncated = true;
                    break 'read;
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::stream_id;

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(stream_id("1700000000000-10") > stream_id("1700000000000-9"));
        assert!(stream_id("1700000000001-0") > stream_id("1700000000000-99"));
        assert_eq!(stream_id("junk"), None);
    }
}
