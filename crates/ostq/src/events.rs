//! Events: each job transition (pushed, started, completed, failed, retried, dead, recovered) is
//! published on the queue's pub/sub channel `ostq:{q}:events` for live listeners and appended to
//! the capped stream of the same name for listeners that come back later. Both are off unless
//! turned on per queue, because they cost Redis work on every job (see docs/design.md).

use std::collections::VecDeque;

use futures::Stream;
use serde::{Deserialize, Serialize};

use crate::keys::QueueKeys;
use crate::producer::Queue;
use crate::store::{stream, Conn};
use crate::Client;
use crate::{Error, Result};

/// Where a queue's events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSink {
    /// Nowhere (the default): no cost.
    Off,
    /// The pub/sub channel only: live listeners, nothing kept.
    PubSub,
    /// The capped stream only (about the last 10,000 events): listeners can catch up.
    Stream,
    /// Both.
    Both,
}

impl EventSink {
    fn as_str(self) -> &'static str {
        match self {
            EventSink::Off => "",
            EventSink::PubSub => "pubsub",
            EventSink::Stream => "stream",
            EventSink::Both => "both",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "pubsub" => EventSink::PubSub,
            "stream" => EventSink::Stream,
            "both" => EventSink::Both,
            _ => EventSink::Off,
        }
    }
}

/// What happened to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Enqueued (now or for later: see `state`).
    Pushed,
    /// A worker took it.
    Started,
    /// It succeeded.
    Completed,
    /// An attempt failed; it will be retried.
    Failed,
    /// It went back to pending from the retry set (or by hand from scheduled, retry or dead).
    Retried,
    /// It spent its attempts.
    Dead,
    /// Its worker was lost; it went back to pending.
    Recovered,
    /// Its handler reported progress (see `progress`).
    Progress,
}

/// One job event. JSON: its fields as they are in the stream (`ostq --json events` prints one
/// per line), without `stream_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Event {
    /// What happened.
    pub event: EventKind,
    /// The queue.
    pub queue: String,
    /// The job.
    pub id: String,
    /// When, unix ms (Redis server clock).
    pub ts: u64,
    /// The attempt it concerns (failed, dead, recovered).
    #[serde(default)]
    pub attempt: Option<u32>,
    /// The error (failed, dead, recovered).
    #[serde(default)]
    pub error: Option<String>,
    /// For `pushed`: "pending" or "scheduled".
    #[serde(default)]
    pub state: Option<String>,
    /// For `failed`: how long until the next attempt, in ms.
    #[serde(default)]
    pub retry_in_ms: Option<u64>,
    /// For `retried` by hand: where the job came from (scheduled, retry or dead).
    #[serde(default)]
    pub from: Option<String>,
    /// For `progress`: what the handler reported.
    #[serde(default)]
    pub progress: Option<serde_json::Value>,
    /// The stream entry id, to resume after it with [`EventsFrom::After`].
    #[serde(skip)]
    pub stream_id: String,
}

/// Where a listener starts reading the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsFrom {
    /// Only events after now.
    Now,
    /// Everything the stream still holds.
    Beginning,
    /// Events after this stream id (the last one a listener saw before it went away).
    After(String),
}

impl Queue {
    /// Turns the queue's events on or off, for every producer and worker (they notice within a
    /// second).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// client.queue("videos").set_events(ostq::events::EventSink::Both).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_events(&self, sink: EventSink) -> Result<()> {
        self.keys()?;
        let mut conn = self.client_ref().conn();
        // Every shard's scripts read the setting from their own settings hash.
        for shard in self.shard_queues().await? {
            stream::set_setting(&mut conn, shard.keys()?, "events", sink.as_str()).await?;
        }
        // Reading the shards cached the settings from before this write: this handle's next
        // push reads them again.
        if let Ok(mut cache) = self.config_cache.lock() {
            *cache = None;
        }
        Ok(())
    }

    /// Where the queue's events go now.
    pub async fn events_sink(&self) -> Result<EventSink> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let value = stream::setting(&mut conn, keys, "events").await?;
        Ok(EventSink::parse(value.as_deref().unwrap_or("")))
    }
}

impl Client {
    /// The queue's events as a `Stream`, read from its capped stream (so a listener that
    /// reconnects with [`EventsFrom::After`] misses nothing still kept). Needs the queue's sink to
    /// be `Stream` or `Both`.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use futures::StreamExt;
    /// let mut events = Box::pin(client.events("videos", ostq::events::EventsFrom::Now).await?);
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     println!("{:?} {}", event.event, event.id);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn events(
        &self,
        queue: &str,
        from: EventsFrom,
    ) -> Result<impl Stream<Item = Result<Event>> + use<>> {
        let keys = QueueKeys::new(queue)?;
        let mut conn = self.blocking_conn().await?;
        let start = match from {
            EventsFrom::Beginning => "0-0".to_string(),
            EventsFrom::After(id) => id,
            EventsFrom::Now => stream::last_event_id(&mut conn, &keys)
                .await?
                .unwrap_or_else(|| "0-0".to_string()),
        };
        let reader = EventReader {
            conn,
            keys,
            last: start,
            buffered: VecDeque::new(),
        };
        Ok(futures::stream::unfold(reader, |mut reader| async move {
            let next = reader.next().await;
            Some((next, reader))
        }))
    }
}

/// Reads a queue's event stream in batches, remembering where it is.
struct EventReader {
    conn: Conn,
    keys: QueueKeys,
    /// The id of the last entry read: the next read starts after it.
    last: String,
    buffered: VecDeque<Event>,
}

impl EventReader {
    async fn next(&mut self) -> Result<Event> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Ok(event);
            }
            for (id, json) in stream::read_events(&mut self.conn, &self.keys, &self.last).await? {
                self.last = id.clone();
                let Some(json) = json else { continue };
                let mut event = serde_json::from_str::<Event>(&json)
                    .map_err(|e| Error::Protocol(format!("event {id} is not ostq's: {e}")))?;
                event.stream_id = id;
                self.buffered.push_back(event);
            }
        }
    }
}
