//! Malformed entries, pushed by hand (`LPUSH`) next to the good jobs, and how to find each one in
//! the dead set afterwards.

use std::collections::{BTreeMap, HashMap, HashSet};

use ostq::envelope::Envelope;
use ostq::JobInfo;
use rand::Rng;

use crate::worker::{Chaos, SIZE_LIMIT};

/// The kinds of malformed entries, in equal shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// Random bytes whose first byte is not a msgpack fixarray marker: a bare payload without a
    /// task name, on a worker that has no default handler.
    RandomBytes,
    /// `0x99` (a 9-element array) followed by junk: starts like an envelope, is not one.
    BrokenEnvelope,
    /// A valid envelope whose task name no worker handles.
    UnknownTask,
    /// A valid `chaos` envelope whose payload is not the task's JSON.
    BadJson,
    /// A valid `chaos` envelope whose payload is over the size limit.
    Oversize,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::RandomBytes,
        Kind::BrokenEnvelope,
        Kind::UnknownTask,
        Kind::BadJson,
        Kind::Oversize,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::RandomBytes => "random_bytes",
            Kind::BrokenEnvelope => "broken_envelope",
            Kind::UnknownTask => "unknown_task",
            Kind::BadJson => "undecodable_json",
            Kind::Oversize => "oversize",
        }
    }
}

/// One malformed entry: the exact bytes pushed, and the id it keeps when it has a valid envelope.
pub(crate) struct BadEntry {
    pub(crate) kind: Kind,
    pub(crate) bytes: Vec<u8>,
    id: Option<String>,
}

/// `count` malformed entries in a random order, kinds in equal shares.
pub(crate) fn generate(count: usize) -> Vec<BadEntry> {
    let mut rng = rand::rng();
    let mut seen = HashSet::new();
    let mut entries = Vec::with_capacity(count);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for k in 0..count {
        let kind = Kind::ALL[k % Kind::ALL.len()];
        let entry = match kind {
            Kind::RandomBytes => loop {
                let len = rng.random_range(1..=48);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                while (0x90..=0x9f).contains(&bytes[0]) {
                    bytes[0] = rng.random();
                }
                // Unique, so that each one can be found in the dead set by its bytes.
                if seen.insert(bytes.clone()) {
                    break BadEntry {
                        kind,
                        bytes,
                        id: None,
                    };
                }
            },
            Kind::BrokenEnvelope => {
                let mut bytes = vec![0x99];
                if k % 2 == 0 {
                    // A reserved msgpack byte right after the array marker.
                    bytes.push(0xc1);
                } else {
                    // A header that fetch.lua can read (id, flags with the "tracked" bit), then junk.
                    let id = format!("broken-{k}");
                    bytes.push(0xa0 + id.len() as u8);
                    bytes.extend_from_slice(id.as_bytes());
                    bytes.push(1);
                    bytes.push(0xc1);
                }
                bytes.extend_from_slice(&(k as u32).to_le_bytes());
                let junk = rng.random_range(0..24);
                bytes.extend((0..junk).map(|_| rng.random::<u8>()));
                seen.insert(bytes.clone());
                BadEntry {
                    kind,
                    bytes,
                    id: None,
                }
            }
            Kind::UnknownTask | Kind::BadJson | Kind::Oversize => {
                let id = format!("bad-{}-{k}", kind.as_str());
                let (name, payload) = match kind {
                    Kind::UnknownTask => ("no-such-task", br#"{"n":0}"#.to_vec()),
                    Kind::BadJson => ("chaos", format!("not json {k}").into_bytes()),
                    _ => {
                        let pad = "x".repeat(SIZE_LIMIT + rng.random_range(1..8192));
                        let task = Chaos {
                            n: u64::MAX - k as u64,
                            pad,
                            ms: None,
                        };
                        ("chaos", serde_json::to_vec(&task).unwrap_or_default())
                    }
                };
                // An unknown task name is an ordinary failure that retries: two attempts, so it
                // retries once and then dies.
                let max_attempts = if kind == Kind::UnknownTask { 2 } else { 0 };
                let envelope = Envelope {
                    id: id.clone(),
                    payload,
                    name: name.to_string(),
                    max_attempts,
                    enqueued_at_ms: now_ms,
                    ..Envelope::default()
                };
                BadEntry {
                    kind,
                    bytes: envelope.encode(),
                    id: Some(id),
                }
            }
        };
        entries.push(entry);
    }
    // Shuffle so the kinds are mixed in every slice of the run.
    for i in (1..entries.len()).rev() {
        let j = rng.random_range(0..=i);
        entries.swap(i, j);
    }
    entries
}

/// Which malformed entries the dead set holds, with a reason.
pub(crate) struct DeadReport {
    /// Entries found dead with a non-empty reason.
    pub(crate) found: usize,
    /// Found per kind.
    pub(crate) by_kind: BTreeMap<&'static str, usize>,
    /// One reason per kind, as stored.
    pub(crate) reasons: BTreeMap<&'static str, String>,
    /// Entries missing from the dead set (kind and bytes, for the report).
    pub(crate) missing: Vec<(Kind, Vec<u8>)>,
}

/// Matches the dead set against the malformed entries: entries with a valid envelope by id, the
/// others by their bytes (the worker keeps them as the dead job's payload).
pub(crate) fn account(entries: &[BadEntry], dead: &[JobInfo]) -> DeadReport {
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut by_bytes: HashMap<&[u8], usize> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        match &entry.id {
            Some(id) => by_id.insert(id.as_str(), i),
            None => by_bytes.insert(entry.bytes.as_slice(), i),
        };
    }
    let mut found = vec![false; entries.len()];
    let mut reasons = BTreeMap::new();
    for job in dead {
        let index = by_id.get(job.id.as_str()).copied().or_else(|| {
            job.payload
                .as_deref()
                .and_then(|p| by_bytes.get(p).copied())
        });
        let Some(i) = index else { continue };
        let reason = job.last_error.clone().unwrap_or_default();
        if reason.is_empty() {
            continue;
        }
        found[i] = true;
        reasons.entry(entries[i].kind.as_str()).or_insert(reason);
    }
    let mut by_kind = BTreeMap::new();
    for kind in Kind::ALL {
        by_kind.insert(kind.as_str(), 0);
    }
    let mut missing = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if found[i] {
            *by_kind.entry(entry.kind.as_str()).or_insert(0) += 1;
        } else {
            missing.push((entry.kind, entry.bytes.clone()));
        }
    }
    DeadReport {
        found: found.iter().filter(|&&f| f).count(),
        by_kind,
        reasons,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_in_equal_shares_and_are_well_formed_as_intended() {
        let entries = generate(1000);
        assert_eq!(entries.len(), 1000);
        for kind in Kind::ALL {
            assert_eq!(entries.iter().filter(|e| e.kind == kind).count(), 200);
        }
        for e in &entries {
            let first = e.bytes[0];
            match e.kind {
                Kind::RandomBytes => assert!(!(0x90..=0x9f).contains(&first)),
                Kind::BrokenEnvelope => {
                    assert_eq!(first, 0x99);
                    assert!(Envelope::decode(&e.bytes).is_err());
                }
                _ => {
                    let env = Envelope::decode(&e.bytes).unwrap();
                    assert_eq!(Some(env.id), e.id.clone());
                    if e.kind == Kind::Oversize {
                        assert!(env.payload.len() > SIZE_LIMIT);
                    }
                }
            }
        }
    }
}
