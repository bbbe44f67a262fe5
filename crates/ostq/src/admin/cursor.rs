//! Listing cursors: where the last page of a listing ended, as an opaque string. Inside, a cursor
//! names the last entry seen (and a hint of where it was), never an offset, so pages neither skip
//! nor repeat jobs when jobs before the cursor come and go.

use std::fmt;
use std::str::FromStr;

use super::views::base64;
use crate::job::JobState;
use crate::{Error, Result};

/// Where a listing ([`crate::Queue::page`]) goes on: pass it back to get the next page. Opaque:
/// its text may change between ostq versions; keep it only as long as you page.
///
/// ```
/// let cursor: ostq::admin::Cursor = "MXx6fGRlYWR8NXwwfDB8YQ".parse().unwrap();
/// assert_eq!(cursor.to_string(), "MXx6fGRlYWR8NXwwfDB8YQ");
/// assert!("not a cursor".parse::<ostq::admin::Cursor>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cursor(String);

impl Cursor {
    /// The cursor as text (URL-safe).
    ///
    /// ```
    /// # let cursor: ostq::admin::Cursor = "MXxsfA".parse().unwrap();
    /// assert_eq!(cursor.as_str(), "MXxsfA");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_position(position: &Position) -> Self {
        Cursor(base64::encode(&position.encode(), true))
    }

    pub(crate) fn position(&self) -> Result<Position> {
        base64::decode(&self.0, true)
            .and_then(|bytes| Position::decode(&bytes))
            .ok_or_else(|| Error::Config(format!("{:?} is not a listing cursor", self.0)))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let cursor = Cursor(text.to_string());
        cursor.position()?;
        Ok(cursor)
    }
}

impl TryFrom<String> for Cursor {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        text.parse()
    }
}

impl From<Cursor> for String {
    fn from(cursor: Cursor) -> String {
        cursor.0
    }
}

/// Longest member kept in a cursor: prioritized members are whole envelopes, so only their start
/// (which holds the job's id) is kept.
pub(crate) const MEMBER_MAX: usize = 256;

/// The last entry seen in a sorted set: its score and member, and its index among the entries of
/// equal score (a hint; the entry is found again by comparison).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mark {
    pub(crate) score: f64,
    pub(crate) member: Vec<u8>,
    /// `member` is the first `MEMBER_MAX` bytes of a longer one.
    pub(crate) truncated: bool,
    pub(crate) tie: u64,
}

impl Mark {
    pub(crate) fn new(member: &[u8], score: f64, tie: u64) -> Self {
        let truncated = member.len() > MEMBER_MAX;
        Mark {
            score,
            member: member[..member.len().min(MEMBER_MAX)].to_vec(),
            truncated,
            tie,
        }
    }
}

/// How an entry of the pending list is recognised: by its job id, or (a bare payload pushed
/// without an envelope) by a hash of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKey {
    Id(String),
    Bare(u64),
}

/// The last entry seen in the pending list and its index from the right end then (a hint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListMark {
    pub(crate) key: EntryKey,
    pub(crate) from_right: u64,
}

/// Where one shard's sorted set is in a merged listing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ShardMark {
    /// Nothing of it listed yet.
    Start,
    /// After this entry.
    After(Mark),
    /// Listed to its end.
    Done,
}

/// What a cursor holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Position {
    /// Scheduled, retry, dead or completed: after this entry of the state's sorted set.
    Sorted(JobState, Mark),
    /// Pending, prioritized above the list (negative scores): after this entry.
    High(Mark),
    /// Pending, in the list: after this entry (from the right end for `None`).
    List(Option<ListMark>),
    /// Pending, prioritized below the list: after this entry (from the first for `None`).
    Low(Option<Mark>),
    /// Active: after entry `index` of lease group `group` (groups in id order).
    Active { group: u64, index: u64 },
    /// A sharded queue's scheduled, retry, dead or completed jobs merged by score over its
    /// shards (design §19): where each shard's sorted set is.
    Merged(JobState, Vec<ShardMark>),
    /// A sharded queue's listing (design §19): in shard `index`, after `inner` (from the
    /// shard's start for `None`).
    Shard {
        index: u64,
        inner: Option<Box<Position>>,
    },
}

const VERSION: &[u8] = b"1|";

impl Position {
    fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_vec();
        match self {
            Position::Sorted(state, mark) => {
                out.extend_from_slice(format!("z|{state}|").as_bytes());
                encode_mark(mark, &mut out);
            }
            Position::High(mark) => {
                out.extend_from_slice(b"h|");
                encode_mark(mark, &mut out);
            }
            Position::Low(mark) => {
                out.extend_from_slice(b"o|");
                if let Some(mark) = mark {
                    encode_mark(mark, &mut out);
                }
            }
            Position::List(mark) => {
                out.extend_from_slice(b"l|");
                if let Some(ListMark { key, from_right }) = mark {
                    let key = match key {
                        EntryKey::Id(id) => format!("i|{id}"),
                        EntryKey::Bare(hash) => format!("b|{hash:x}"),
                    };
                    out.extend_from_slice(format!("{from_right}|{key}").as_bytes());
                }
            }
            Position::Active { group, index } => {
                out.extend_from_slice(format!("a|{group}|{index}").as_bytes())
            }
            Position::Merged(state, marks) => {
                out.extend_from_slice(format!("m|{state}|").as_bytes());
                for mark in marks {
                    match mark {
                        ShardMark::Start => out.push(b's'),
                        ShardMark::Done => out.push(b'd'),
                        ShardMark::After(mark) => {
                            // Length-prefixed: a member may hold any byte.
                            let mut bytes = Vec::new();
                            encode_mark(mark, &mut bytes);
                            out.extend_from_slice(format!("a{}|", bytes.len()).as_bytes());
                            out.extend_from_slice(&bytes);
                        }
                    }
                }
            }
            Position::Shard { index, inner } => {
                // The shard's own position follows whole (with its version), so it nests.
                out.extend_from_slice(format!("s|{index}|").as_bytes());
                if let Some(inner) = inner {
                    out.extend_from_slice(&inner.encode());
                }
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Position> {
        let rest = bytes.strip_prefix(VERSION)?;
        let (kind, rest) = split(rest)?;
        Some(match kind {
            b"z" => {
                let (state, rest) = split(rest)?;
                let state = std::str::from_utf8(state).ok()?.parse::<JobState>().ok()?;
                Position::Sorted(state, decode_mark(rest)?)
            }
            b"h" => Position::High(decode_mark(rest)?),
            b"o" if rest.is_empty() => Position::Low(None),
            b"o" => Position::Low(Some(decode_mark(rest)?)),
            b"l" if rest.is_empty() => Position::List(None),
            b"l" => Position::List(Some(decode_list_mark(rest)?)),
            b"a" => {
                let (group, index) = split(rest)?;
                Position::Active {
                    group: number(group)?,
                    index: number(index)?,
                }
            }
            b"m" => {
                let (state, mut rest) = split(rest)?;
                let state = std::str::from_utf8(state).ok()?.parse::<JobState>().ok()?;
                let mut marks = Vec::new();
                while let Some((&tag, after)) = rest.split_first() {
                    rest = after;
                    marks.push(match tag {
                        b's' => ShardMark::Start,
                        b'd' => ShardMark::Done,
                        b'a' => {
                            let (len, after) = split(rest)?;
                            let len = usize::try_from(number(len)?).ok()?;
                            let bytes = after.get(..len)?;
                            rest = &after[len..];
                            ShardMark::After(decode_mark(bytes)?)
                        }
                        _ => return None,
                    });
                    if marks.len() > crate::shards::MAX_SHARDS * 2 {
                        return None;
                    }
                }
                Position::Merged(state, marks)
            }
            b"s" => {
                let (index, rest) = split(rest)?;
                let inner = if rest.is_empty() {
                    None
                } else {
                    match Position::decode(rest)? {
                        // One level only: a shard is never sharded itself.
                        Position::Shard { .. } => return None,
                        inner => Some(Box::new(inner)),
                    }
                };
                Position::Shard {
                    index: number(index)?,
                    inner,
                }
            }
            _ => return None,
        })
    }
}

fn encode_mark(mark: &Mark, out: &mut Vec<u8>) {
    let head = format!("{}|{}|{}|", mark.score, mark.tie, u8::from(mark.truncated));
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&mark.member);
}

fn decode_mark(bytes: &[u8]) -> Option<Mark> {
    let (score, rest) = split(bytes)?;
    let (tie, rest) = split(rest)?;
    let (truncated, member) = split(rest)?;
    let score: f64 = std::str::from_utf8(score).ok()?.parse().ok()?;
    if !score.is_finite() || member.len() > MEMBER_MAX {
        return None;
    }
    Some(Mark {
        score,
        member: member.to_vec(),
        truncated: match truncated {
            b"0" => false,
            b"1" => true,
            _ => return None,
        },
        tie: number(tie)?,
    })
}

fn decode_list_mark(bytes: &[u8]) -> Option<ListMark> {
    let (from_right, rest) = split(bytes)?;
    let (kind, key) = split(rest)?;
    let key = match kind {
        b"i" => EntryKey::Id(String::from_utf8(key.to_vec()).ok()?),
        b"b" => EntryKey::Bare(u64::from_str_radix(std::str::from_utf8(key).ok()?, 16).ok()?),
        _ => return None,
    };
    Some(ListMark {
        key,
        from_right: number(from_right)?,
    })
}

/// The bytes before the first `|` and those after it.
fn split(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == b'|')?;
    Some((&bytes[..at], &bytes[at + 1..]))
}

fn number(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_cursors() {
        let long = vec![b'|'; 300];
        let positions = [
            Position::Sorted(JobState::Dead, Mark::new(b"01HZX|odd", 1714000000123.0, 3)),
            Position::High(Mark::new(&long, -4398046511104.0 * 7.0 + 12.0, 0)),
            Position::Low(None),
            Position::Low(Some(Mark::new(b"", 0.0, 0))),
            Position::List(None),
            Position::List(Some(ListMark {
                key: EntryKey::Id("a|b".into()),
                from_right: 41,
            })),
            Position::List(Some(ListMark {
                key: EntryKey::Bare(u64::MAX),
                from_right: 0,
            })),
            Position::Active {
                group: 18446744073709551615,
                index: 999,
            },
            Position::Shard {
                index: 2,
                inner: None,
            },
            Position::Merged(
                JobState::Retry,
                vec![
                    ShardMark::Start,
                    ShardMark::After(Mark::new(&long, 17.5, 2)),
                    ShardMark::Done,
                    ShardMark::After(Mark::new(b"a|b", 0.0, 0)),
                ],
            ),
            Position::Shard {
                index: 1,
                inner: Some(Box::new(Position::List(Some(ListMark {
                    key: EntryKey::Id("01J#1".into()),
                    from_right: 3,
                })))),
            },
            Position::Shard {
                index: 0,
                inner: Some(Box::new(Position::Sorted(
                    JobState::Dead,
                    Mark::new(b"x|y", 5.0, 1),
                ))),
            },
        ];
        for position in positions {
            let cursor = Cursor::from_position(&position);
            let parsed: Cursor = cursor.as_str().parse().unwrap();
            assert_eq!(parsed.position().unwrap(), position, "{cursor}");
            let json = serde_json::to_string(&cursor).unwrap();
            assert_eq!(serde_json::from_str::<Cursor>(&json).unwrap(), cursor);
        }
        assert!(Mark::new(&long, 1.0, 0).truncated);
        assert!(serde_json::from_str::<Cursor>("\"x\"").is_err());
        let nested = Position::Shard {
            index: 0,
            inner: Some(Box::new(Position::Shard {
                index: 1,
                inner: None,
            })),
        };
        assert!(Cursor::from_position(&nested).position().is_err());
    }

    #[test]
    fn the_documented_cursor_is_a_dead_mark() {
        let cursor: Cursor = "MXx6fGRlYWR8NXwwfDB8YQ".parse().unwrap();
        assert_eq!(
            cursor.position().unwrap(),
            Position::Sorted(JobState::Dead, Mark::new(b"a", 5.0, 0))
        );
    }
}
