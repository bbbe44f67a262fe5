//! The envelope: how a job travels through Redis. A MessagePack array, so that Lua (`cmsgpack`)
//! and any language can read and write it:
//!
//! `[id, flags, payload, name, attempt, max_attempts, priority, enqueued_at_ms, last_error]`
//! and, only for jobs that hold a unique key until they finish, a tenth field: that key. A job
//! pushed inside a traced span also carries its W3C trace context: the `traceparent` as an
//! eleventh field (the tenth is then `""` when the job holds no unique key, never nil, because
//! the scripts keep the fields after the tenth only up to the first nil) and, when not empty, the
//! `tracestate` as a twelfth. Jobs without a trace are not one byte longer.
//!
//! Strings, the payload included, use MessagePack's str family even for non-UTF-8 bytes, because
//! Redis's `cmsgpack` cannot decode the bin family. A payload written as bin (Python's msgpack
//! does that for `bytes`) is accepted: `fetch.lua` turns its marker into str's when it leases the
//! job, so the scripts can read it too. Every other field must be str. Extra trailing fields are
//! ignored, so later versions can append fields.
//!
//! What is valid is defined once, the same here, in `lua/lib/envelope.lua` (which every script
//! that decodes envelopes uses) and in `push.lua`'s argument checks: the id is 1..=255 bytes,
//! flags 0..=127, priority -1000..=1000, attempts and the attempt limit fit in a u32, and id,
//! name, last error and unique key are UTF-8. An envelope outside these limits is refused by
//! workers and by scripts alike, and filed in the dead set with the reason.
//!
//! The trace fields are the exception, since a trace is only a diagnostic: a trace field must be
//! a str (or nil: no trace) like every other field, but a str that is over [`MAX_TRACE_LEN`]
//! bytes or not UTF-8 does not make the job invalid. The job runs without a parent span: here
//! the field reads as empty, and the scripts replace it with `""` when they rewrite the job. (A
//! `tracestate` is dropped with its `traceparent`.)

use crate::{Error, Result};

/// Bit 0 of `flags`: keep a status record for this job.
pub const FLAG_TRACKED: u64 = 1;

/// Number of fields this version writes.
const FIELDS: u32 = 9;
/// Longest id an envelope may carry (the Lua header reader handles ids of up to 255 bytes).
pub const MAX_ENVELOPE_ID_LEN: usize = 255;
/// Flags fit in one MessagePack fixint byte, so Lua can read them without unpacking.
pub const MAX_FLAGS: u64 = 127;
/// Lua numbers are doubles: every whole number up to 2^53 is exact.
const MAX_ENQUEUED_AT_MS: u64 = 1 << 53;
/// Longest `traceparent` or `tracestate` a job keeps (a version-00 traceparent is 55 bytes; the
/// W3C recommends that tracestate be at most 512 characters). A longer one is ignored: the job
/// runs without a parent span.
pub const MAX_TRACE_LEN: usize = 512;
/// MessagePack's nil.
const NIL: u8 = 0xc0;

/// A job as stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// Unique id within its queue.
    pub id: String,
    /// Bit flags, see [`FLAG_TRACKED`]; always below 128 so Lua can read it as one byte.
    pub flags: u64,
    /// The job's data, opaque to ostq.
    pub payload: Vec<u8>,
    /// Task type name for typed dispatch; empty when none.
    pub name: String,
    /// Attempts that already ended (failed or lost).
    pub attempt: u32,
    /// Attempts allowed in all; 0 means the worker's default.
    pub max_attempts: u32,
    /// Higher runs first; 0 is the default.
    pub priority: i32,
    /// When it was first enqueued, unix milliseconds (server clock).
    pub enqueued_at_ms: u64,
    /// The last attempt's error; empty when none.
    pub last_error: String,
    /// The unique key this job holds until it completes or dies; empty when none.
    pub unique: String,
    /// The W3C `traceparent` of the span that pushed the job (field 11); empty when none. Kept
    /// across retries, so that every attempt continues the producer's trace.
    pub traceparent: String,
    /// The W3C `tracestate` that came with [`Envelope::traceparent`] (field 12); empty when none.
    pub tracestate: String,
}

impl Envelope {
    /// Whether a status record is kept.
    pub fn tracked(&self) -> bool {
        self.flags & FLAG_TRACKED != 0
    }

    /// Serializes to MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.id.len() + self.payload.len() + self.name.len());
        self.as_fields().encode_into(&mut out);
        out
    }

    fn as_fields(&self) -> EnvelopeFields<'_> {
        EnvelopeFields {
            id: &self.id,
            flags: self.flags,
            payload: &self.payload,
            name: &self.name,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            priority: self.priority,
            enqueued_at_ms: self.enqueued_at_ms,
            last_error: &self.last_error,
            unique: &self.unique,
            traceparent: &self.traceparent,
            tracestate: &self.tracestate,
        }
    }

    /// Parses MessagePack written by [`Envelope::encode`], by `push.lua` or by another language.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut rd = bytes;
        let len = rmp::decode::read_array_len(&mut rd)
            .map_err(|e| bad(format!("not a msgpack array: {e}")))?;
        if len < FIELDS {
            return Err(bad(format!("{len} fields, expected at least {FIELDS}")));
        }
        let id = read_string(&mut rd, "id")?;
        if id.is_empty() || id.len() > MAX_ENVELOPE_ID_LEN {
            return Err(bad(format!(
                "id must be 1..={MAX_ENVELOPE_ID_LEN} bytes, got {}",
                id.len()
            )));
        }
        let flags = read_int::<u64>(&mut rd, "flags")?;
        if flags > MAX_FLAGS {
            return Err(bad(format!("flags {flags} out of range 0..={MAX_FLAGS}")));
        }
        let payload = read_bytes(&mut rd, "payload", true)?.to_vec();
        let name = read_string(&mut rd, "name")?;
        let attempt = read_int::<u32>(&mut rd, "attempt")?;
        let max_attempts = read_int::<u32>(&mut rd, "max_attempts")?;
        let priority = read_int::<i32>(&mut rd, "priority")?;
        if !crate::producer::PRIORITY_RANGE.contains(&priority) {
            return Err(bad(format!(
                "priority {priority} out of range -1000..=1000"
            )));
        }
        let enqueued_at_ms = read_int::<u64>(&mut rd, "enqueued_at")?;
        if enqueued_at_ms > MAX_ENQUEUED_AT_MS {
            return Err(bad(format!("enqueued_at {enqueued_at_ms} out of range")));
        }
        let last_error = read_string(&mut rd, "last_error")?;
        // The tenth field is the unique key: a string, or nil for none (as lib/envelope.lua reads
        // it; anything else is refused there too). The scripts keep the fields after the tenth
        // only up to the first nil, so a trace after a nil is no trace here either.
        let (unique, traceparent, tracestate) = read_tail(&mut rd, len)?;
        let unique =
            String::from_utf8(unique.to_vec()).map_err(|_| bad("unique is not UTF-8".into()))?;
        let (traceparent, tracestate) = (traceparent.to_string(), tracestate.to_string());
        Ok(Self {
            id,
            flags,
            payload,
            name,
            attempt,
            max_attempts,
            priority,
            enqueued_at_ms,
            last_error,
            unique,
            traceparent,
            tracestate,
        })
    }
}

impl Envelope {
    /// The trace fields of an encoded envelope, `(traceparent, tracestate)`, read without
    /// decoding (or copying) the rest; `None` when it carries no trace or is not an envelope.
    /// The worker reads them as it makes the job's span, before it decodes the job.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn peek_trace(bytes: &[u8]) -> Option<(&str, &str)> {
        // Only envelopes of 11 fields or more carry a trace: one byte tells.
        if !matches!(bytes.first(), Some(0x9b..=0x9f)) {
            return None;
        }
        let mut rd = bytes;
        let len = rmp::decode::read_array_len(&mut rd).ok()?;
        read_bytes(&mut rd, "id", false).ok()?;
        read_int::<u64>(&mut rd, "flags").ok()?;
        read_bytes(&mut rd, "payload", true).ok()?;
        read_bytes(&mut rd, "name", false).ok()?;
        read_int::<u32>(&mut rd, "attempt").ok()?;
        read_int::<u32>(&mut rd, "max_attempts").ok()?;
        read_int::<i32>(&mut rd, "priority").ok()?;
        read_int::<u64>(&mut rd, "enqueued_at").ok()?;
        read_bytes(&mut rd, "last_error", false).ok()?;
        let (_, traceparent, tracestate) = read_tail(&mut rd, len).ok()?;
        (!traceparent.is_empty()).then_some((traceparent, tracestate))
    }
}

/// Fields 10 to 12 of an envelope of `len` fields, after the ninth: the unique key (not yet
/// checked for UTF-8) and the trace fields, `""` for each one absent or not kept.
///
/// The scripts keep the fields after the tenth only up to the first nil, so a trace after a nil
/// is no trace here either. A trace field that is not a str is a bad field, as everywhere; one
/// that is over [`MAX_TRACE_LEN`] bytes or not UTF-8 is not kept (nor is a tracestate without
/// its traceparent), as in lua/lib/envelope.lua, which blanks it.
fn read_tail<'a>(rd: &mut &'a [u8], len: u32) -> Result<(&'a [u8], &'a str, &'a str)> {
    let kept = |bytes: &'a [u8]| -> &'a str {
        if bytes.len() > MAX_TRACE_LEN {
            return "";
        }
        std::str::from_utf8(bytes).unwrap_or_default()
    };
    let present = |rd: &&[u8], field: u32| len >= field && rd.first() != Some(&NIL);
    let mut tail: (&[u8], &str, &str) = (&[], "", "");
    if !present(rd, FIELDS + 1) {
        return Ok(tail);
    }
    tail.0 = read_bytes(rd, "unique", false)?;
    if !present(rd, FIELDS + 2) {
        return Ok(tail);
    }
    let traceparent = kept(read_bytes(rd, "traceparent", false)?);
    let tracestate = if present(rd, FIELDS + 3) {
        kept(read_bytes(rd, "tracestate", false)?)
    } else {
        ""
    };
    if !traceparent.is_empty() {
        (tail.1, tail.2) = (traceparent, tracestate);
    }
    Ok(tail)
}

fn bad(msg: String) -> Error {
    Error::Envelope(msg)
}

/// An [`Envelope`]'s fields, borrowed: what a bulk push encodes straight into its `LPUSH`
/// commands, so a job costs no owned copy of its id, payload and name on the way (issue 16's
/// enqueue rate: allocation was a third of the push path's CPU).
#[derive(Clone, Copy)]
pub(crate) struct EnvelopeFields<'a> {
    pub(crate) id: &'a str,
    pub(crate) flags: u64,
    pub(crate) payload: &'a [u8],
    pub(crate) name: &'a str,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) priority: i32,
    pub(crate) enqueued_at_ms: u64,
    pub(crate) last_error: &'a str,
    pub(crate) unique: &'a str,
    pub(crate) traceparent: &'a str,
    pub(crate) tracestate: &'a str,
}

impl EnvelopeFields<'_> {
    /// Appends the MessagePack form (what [`Envelope::encode`] returns) to `out`.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        // Writes into a Vec cannot fail; the Results below only exist for io::Write in general.
        // The unique key is written when there is one or when trace fields follow it ("" then).
        let fields = match (self.traceparent.is_empty(), self.tracestate.is_empty()) {
            (false, false) => FIELDS + 3,
            (false, true) => FIELDS + 2,
            (true, _) if !self.unique.is_empty() => FIELDS + 1,
            (true, _) => FIELDS,
        };
        let _ = rmp::encode::write_array_len(out, fields);
        write_str(out, self.id.as_bytes());
        let _ = rmp::encode::write_uint(out, self.flags);
        write_str(out, self.payload);
        write_str(out, self.name.as_bytes());
        let _ = rmp::encode::write_uint(out, u64::from(self.attempt));
        let _ = rmp::encode::write_uint(out, u64::from(self.max_attempts));
        let _ = rmp::encode::write_sint(out, i64::from(self.priority));
        let _ = rmp::encode::write_uint(out, self.enqueued_at_ms);
        write_str(out, self.last_error.as_bytes());
        if fields > FIELDS {
            write_str(out, self.unique.as_bytes());
        }
        if fields > FIELDS + 1 {
            write_str(out, self.traceparent.as_bytes());
        }
        if fields > FIELDS + 2 {
            write_str(out, self.tracestate.as_bytes());
        }
    }
}

fn write_str(out: &mut Vec<u8>, bytes: &[u8]) {
    // A payload longer than u32::MAX cannot be sent to Redis anyway (512 MB limit).
    let _ = rmp::encode::write_str_len(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// Reads a str (or, where `bin_ok`, a bin) field.
fn read_bytes<'a>(rd: &mut &'a [u8], field: &str, bin_ok: bool) -> Result<&'a [u8]> {
    let marker = rd
        .first()
        .copied()
        .ok_or_else(|| bad(format!("truncated before {field}")))?;
    let len = match rmp::Marker::from_u8(marker) {
        rmp::Marker::FixStr(_) | rmp::Marker::Str8 | rmp::Marker::Str16 | rmp::Marker::Str32 => {
            rmp::decode::read_str_len(rd).map_err(|e| bad(format!("{field}: {e}")))?
        }
        rmp::Marker::Bin8 | rmp::Marker::Bin16 | rmp::Marker::Bin32 if bin_ok => {
            rmp::decode::read_bin_len(rd).map_err(|e| bad(format!("{field}: {e}")))?
        }
        other => return Err(bad(format!("{field} is {other:?}, expected a string"))),
    } as usize;
    if rd.len() < len {
        return Err(bad(format!("{field} truncated")));
    }
    let (head, tail) = rd.split_at(len);
    *rd = tail;
    Ok(head)
}

fn read_string(rd: &mut &[u8], field: &str) -> Result<String> {
    let bytes = read_bytes(rd, field, false)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| bad(format!("{field} is not UTF-8")))
}

fn read_int<T: num_traits_shim::FromI64>(rd: &mut &[u8], field: &str) -> Result<T> {
    // Lua sees every number as a double, so the scripts cannot tell 2.0 from 2: a float that is a
    // whole number counts as that integer here too (one definition). Fractions, NaN and the
    // infinities are refused.
    let whole = |f: f64| -> Result<i64> {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15 {
            Ok(f as i64)
        } else {
            Err(bad(format!("{field} is {f}, not an integer")))
        }
    };
    let value: i64 = match rd.first().map(|&m| rmp::Marker::from_u8(m)) {
        Some(rmp::Marker::F32) => whole(f64::from(
            rmp::decode::read_f32(rd).map_err(|e| bad(format!("{field}: {e}")))?,
        ))?,
        Some(rmp::Marker::F64) => {
            whole(rmp::decode::read_f64(rd).map_err(|e| bad(format!("{field}: {e}")))?)?
        }
        _ => rmp::decode::read_int(rd).map_err(|e| bad(format!("{field}: {e}")))?,
    };
    T::from_i64(value).ok_or_else(|| bad(format!("{field} out of range: {value}")))
}

mod num_traits_shim {
    pub trait FromI64: Sized {
        fn from_i64(v: i64) -> Option<Self>;
    }
    impl FromI64 for u64 {
        fn from_i64(v: i64) -> Option<Self> {
            u64::try_from(v).ok()
        }
    }
    impl FromI64 for u32 {
        fn from_i64(v: i64) -> Option<Self> {
            u32::try_from(v).ok()
        }
    }
    impl FromI64 for i32 {
        fn from_i64(v: i64) -> Option<Self> {
            i32::try_from(v).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: "01HZX".into(),
            flags: FLAG_TRACKED,
            payload: vec![0, 159, 255, b'$', b'('],
            name: "transcode".into(),
            attempt: 3,
            max_attempts: 25,
            priority: -7,
            enqueued_at_ms: 1_700_000_000_123,
            last_error: "boom".into(),
            unique: String::new(),
            traceparent: String::new(),
            tracestate: String::new(),
        }
    }

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_trace_is_an_eleventh_field_after_an_empty_unique_key() {
        let env = Envelope {
            traceparent: TRACEPARENT.into(),
            ..sample()
        };
        let bytes = env.encode();
        assert_eq!(bytes[0], 0x9b, "fixarray of 11");
        let mut tail = vec![0xa0, 0xd9, 55];
        tail.extend_from_slice(TRACEPARENT.as_bytes());
        assert!(bytes.ends_with(&tail), "\"\" then the traceparent");
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);

        let both = Envelope {
            unique: "video-42".into(),
            traceparent: TRACEPARENT.into(),
            tracestate: "congo=t61rcWkgMzE".into(),
            ..sample()
        };
        let bytes = both.encode();
        assert_eq!(bytes[0], 0x9c, "fixarray of 12");
        assert_eq!(Envelope::decode(&bytes).unwrap(), both);

        // No traceparent: no trace fields at all (a tracestate alone means nothing).
        let none = Envelope {
            tracestate: "congo=t61rcWkgMzE".into(),
            ..sample()
        };
        assert_eq!(none.encode(), sample().encode());
    }

    /// What the worker reads before it decodes the job is what decode reads.
    #[cfg(feature = "opentelemetry")]
    #[test]
    fn peek_trace_reads_what_decode_reads() {
        assert_eq!(Envelope::peek_trace(&sample().encode()), None);
        let env = Envelope {
            traceparent: TRACEPARENT.into(),
            tracestate: "k=v".into(),
            ..sample() // a negative priority and a binary payload on the way
        };
        assert_eq!(
            Envelope::peek_trace(&env.encode()),
            Some((TRACEPARENT, "k=v"))
        );
        for (_, _, bytes, why) in vectors() {
            let peeked = Envelope::peek_trace(&bytes);
            if let Ok(env) = Envelope::decode(&bytes) {
                let decoded = (!env.traceparent.is_empty())
                    .then_some((env.traceparent.as_str(), env.tracestate.as_str()));
                assert_eq!(peeked, decoded, "{why}");
            }
        }
    }

    #[test]
    fn a_malformed_trace_is_ignored_not_fatal() {
        let with = |parent: &[u8], state: Option<&[u8]>| {
            let mut bytes = sample().encode();
            bytes[0] = if state.is_some() { 0x9c } else { 0x9b };
            write_str(&mut bytes, b"");
            write_str(&mut bytes, parent);
            if let Some(state) = state {
                write_str(&mut bytes, state);
            }
            Envelope::decode(&bytes)
        };
        let long = vec![b'a'; MAX_TRACE_LEN + 1];
        for parent in [&long[..], b"\xff\xfe", b""] {
            let env = with(parent, Some(b"k=v")).unwrap();
            assert_eq!(
                (env.traceparent.as_str(), env.tracestate.as_str()),
                ("", "")
            );
        }
        let env = with(TRACEPARENT.as_bytes(), Some(&long)).unwrap();
        assert_eq!(
            (env.traceparent.as_str(), env.tracestate.as_str()),
            (TRACEPARENT, "")
        );
        let longest = vec![b'a'; MAX_TRACE_LEN];
        let env = with(&longest, None).unwrap();
        assert_eq!(env.traceparent.len(), MAX_TRACE_LEN);
        // A trace after a nil tenth field is not kept (the scripts stop at the first nil).
        let mut bytes = sample().encode();
        bytes[0] = 0x9b;
        bytes.push(NIL);
        write_str(&mut bytes, TRACEPARENT.as_bytes());
        assert_eq!(Envelope::decode(&bytes).unwrap(), sample());
        // A trace field that is not a string is a bad field, as everywhere else.
        let mut bytes = sample().encode();
        bytes[0] = 0x9b;
        write_str(&mut bytes, b"");
        bytes.push(0x05);
        assert!(Envelope::decode(&bytes).is_err());
    }

    #[test]
    fn round_trips_binary_payloads() {
        let env = sample();
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
    }

    #[test]
    fn a_unique_key_is_a_tenth_field() {
        let env = Envelope {
            unique: "video-42".into(),
            ..sample()
        };
        let bytes = env.encode();
        assert_eq!(bytes[0], 0x9a);
        assert_eq!(Envelope::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn layout_lets_lua_read_id_and_flags() {
        let bytes = sample().encode();
        assert_eq!(bytes[0], 0x99, "fixarray of 9");
        assert_eq!(bytes[1], 0xa0 + 5, "fixstr id");
        assert_eq!(&bytes[2..7], b"01HZX");
        assert_eq!(bytes[7], 1, "flags as one fixint byte");
    }

    /// The rules shared with `lua/lib/envelope.lua`; `tests/vectors.rs` feeds the same vectors
    /// to the scripts.
    #[test]
    fn shared_vectors_agree_with_decode() {
        for (line, valid, bytes, why) in vectors() {
            assert_eq!(
                Envelope::decode(&bytes).is_ok(),
                valid,
                "line {line} ({why}): {:?}",
                Envelope::decode(&bytes)
            );
        }
    }

    fn vectors() -> Vec<(usize, bool, Vec<u8>, String)> {
        include_str!("../tests/vectors/envelopes.txt")
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|(n, l)| {
                let mut parts = l.splitn(3, ' ');
                let valid = parts.next() == Some("valid");
                let hex = parts.next().unwrap_or_default();
                let bytes = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                (n + 1, valid, bytes, parts.next().unwrap_or_default().into())
            })
            .collect()
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b""[..],
            b"\x90",
            b"\x99\xa1",
            b"\x99\x01\x02",
            b"hello",
            b"\x99\xa1x\xc3",
        ] {
            assert!(Envelope::decode(junk).is_err(), "{junk:?}");
        }
        let mut truncated = sample().encode();
        truncated.truncate(truncated.len() - 2);
        assert!(Envelope::decode(&truncated).is_err());
    }
}
