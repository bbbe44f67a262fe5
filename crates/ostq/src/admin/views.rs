//! The stable JSON form of a job ([`JobInfo`]), which the CLI's `--json` and the dashboard print.
//! Bytes (the payload, the result) come as text when they are valid UTF-8; otherwise the text
//! field is `null` and a `<field>_base64` field holds them in standard base64 (with padding):
//!
//! ```json
//! {"id": "01HZX…", "queue": "videos", "state": "dead", "name": null,
//!  "payload": null, "payload_base64": "//5vaw==",
//!  "attempts": 1, "max_attempts": 1, "priority": 0,
//!  "enqueued_at_ms": 1714000000000, "started_at_ms": null, "finished_at_ms": 1714000000500,
//!  "due_at_ms": null, "last_error": "exit code 1", "result": null, "progress": null,
//!  "tracked": false}
//! ```
//!
//! Times are unix milliseconds; `progress` is the JSON text the handler reported. Fields may be
//! added; none is renamed or removed.

use serde::{Deserialize, Serialize};

use crate::job::{JobInfo, JobState};

/// The serde form of [`JobInfo`] (see the module docs).
#[derive(Serialize, Deserialize)]
pub(crate) struct JobView {
    id: String,
    queue: String,
    state: JobState,
    name: Option<String>,
    payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    attempts: u32,
    max_attempts: u32,
    priority: i32,
    enqueued_at_ms: Option<u64>,
    started_at_ms: Option<u64>,
    finished_at_ms: Option<u64>,
    due_at_ms: Option<u64>,
    last_error: Option<String>,
    result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result_base64: Option<String>,
    #[serde(default)]
    progress: Option<String>,
    tracked: bool,
}

/// Bytes as (text, base64): text when valid UTF-8, else base64.
fn split_bytes(bytes: Option<Vec<u8>>) -> (Option<String>, Option<String>) {
    match bytes.map(String::from_utf8) {
        None => (None, None),
        Some(Ok(text)) => (Some(text), None),
        Some(Err(e)) => (None, Some(base64::encode(e.as_bytes(), false))),
    }
}

/// The bytes back from (text, base64).
fn join_bytes(
    text: Option<String>,
    b64: Option<String>,
    field: &str,
) -> Result<Option<Vec<u8>>, String> {
    match (text, b64) {
        (Some(text), _) => Ok(Some(text.into_bytes())),
        (None, Some(b64)) => base64::decode(&b64, false)
            .map(Some)
            .ok_or_else(|| format!("{field}_base64 is not valid base64")),
        (None, None) => Ok(None),
    }
}

impl From<JobInfo> for JobView {
    fn from(info: JobInfo) -> Self {
        let (payload, payload_base64) = split_bytes(info.payload);
        let (result, result_base64) = split_bytes(info.result);
        JobView {
            id: info.id,
            queue: info.queue,
            state: info.state,
            name: info.name,
            payload,
            payload_base64,
            attempts: info.attempts,
            max_attempts: info.max_attempts,
            priority: info.priority,
            enqueued_at_ms: info.enqueued_at_ms,
            started_at_ms: info.started_at_ms,
            finished_at_ms: info.finished_at_ms,
            due_at_ms: info.due_at_ms,
            last_error: info.last_error,
            result,
            result_base64,
            progress: info.progress,
            tracked: info.tracked,
        }
    }
}

impl TryFrom<JobView> for JobInfo {
    type Error = String;

    fn try_from(view: JobView) -> Result<Self, String> {
        Ok(JobInfo {
            payload: join_bytes(view.payload, view.payload_base64, "payload")?,
            result: join_bytes(view.result, view.result_base64, "result")?,
            id: view.id,
            queue: view.queue,
            state: view.state,
            name: view.name,
            attempts: view.attempts,
            max_attempts: view.max_attempts,
            priority: view.priority,
            enqueued_at_ms: view.enqueued_at_ms,
            started_at_ms: view.started_at_ms,
            finished_at_ms: view.finished_at_ms,
            due_at_ms: view.due_at_ms,
            last_error: view.last_error,
            progress: view.progress,
            tracked: view.tracked,
        })
    }
}

/// Base64 (RFC 4648): the standard alphabet with padding for payloads, the URL-safe one without
/// padding for cursors. (Small enough not to need a dependency.)
pub(crate) mod base64 {
    const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// Encodes `bytes`; `url` picks the URL-safe alphabet without padding.
    pub(crate) fn encode(bytes: &[u8], url: bool) -> String {
        let alphabet = if url { URL_SAFE } else { STANDARD };
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
            }
            if !url {
                for _ in chunk.len()..3 {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Decodes text made by [`encode`] with the same `url`; `None` when it is not base64.
    pub(crate) fn decode(text: &str, url: bool) -> Option<Vec<u8>> {
        let alphabet = if url { URL_SAFE } else { STANDARD };
        let text = if url {
            text
        } else {
            text.trim_end_matches('=')
        };
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0);
        for c in text.bytes() {
            let value = alphabet.iter().position(|&a| a == c)? as u32;
            acc = (acc << 6) | value;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        // Leftover bits must be zero padding, and a lone sixth of a byte cannot occur.
        (acc == 0 && bits < 6).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_both_alphabets() {
        assert_eq!(base64::encode(b"\xff\xfeok", false), "//5vaw==");
        assert_eq!(base64::encode(b"\xff\xfeok", true), "__5vaw");
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
            for url in [false, true] {
                let text = base64::encode(&bytes, url);
                assert_eq!(
                    base64::decode(&text, url).as_deref(),
                    Some(&bytes[..]),
                    "{text}"
                );
            }
        }
        assert_eq!(base64::decode("a", false), None);
        assert_eq!(base64::decode("ab$d", true), None);
    }

    #[test]
    fn bytes_are_text_or_base64_and_come_back() {
        let mut info = JobInfo {
            id: "1".into(),
            queue: "q".into(),
            state: JobState::Dead,
            name: None,
            payload: Some(b"\xff\xfeok".to_vec()),
            attempts: 1,
            max_attempts: 1,
            priority: 0,
            enqueued_at_ms: Some(5),
            started_at_ms: None,
            finished_at_ms: None,
            due_at_ms: None,
            last_error: None,
            result: Some(b"done".to_vec()),
            progress: Some("{\"n\":1}".into()),
            tracked: true,
        };
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["payload"], serde_json::Value::Null);
        assert_eq!(json["payload_base64"], "//5vaw==");
        assert_eq!(json["result"], "done");
        assert!(json.get("result_base64").is_none());
        assert_eq!(json["state"], "dead");
        let back: JobInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, info);
        info.payload = None;
        let json = serde_json::to_string(&info).unwrap();
        assert_eq!(serde_json::from_str::<JobInfo>(&json).unwrap(), info);
    }
}
