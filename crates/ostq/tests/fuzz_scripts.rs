//! Fuzzing the inputs that cross a trust boundary: what the Lua scripts read from Redis (envelopes
//! any language, or a hand with redis-cli, can put where scripts decode them) and what `push.lua`
//! takes as arguments (any language can call it).
//!
//! Two targets, each a series of scenarios against a private redis-server:
//! - `envelopes_where_scripts_read_them`: random MessagePack (wrong types, huge, NaN, inf,
//!   negative and fractional numbers, bin/str/ext payloads, short and long arrays, nested maps,
//!   non-arrays, truncated and non-canonical encodings) placed in `pending`, `prioritized`,
//!   `scheduled`/`retry`/`dead` + `jobs`, and inside expired lease groups, next to valid jobs;
//!   then every script runs on them: `fetch.lua` (recovery, promotion, leasing), the worker's
//!   `fail.lua` / `requeue.lua` / `complete.lua` (as `worker/keeper.rs` sends them, and with random
//!   arguments), `enqueue_now.lua`, `delete.lua`, `renew.lua`; at the end a drain (every lease
//!   expired, every delay due, fetch and work until nothing moves).
//! - `push_arguments`: random strings in every `push.lua` field ("nan", "inf", "-1", "1e400",
//!   "1.5", "0x10", " 5", huge ids, non-UTF-8, wrong field counts) next to existing jobs.
//!
//! Properties, after every call: a script either returns normally or returns an error without
//! any write (the keyspace is compared before and after); bad data never makes a call with valid
//! arguments fail; every job is in exactly one place (each input carries a tag, found by a byte
//! search of every place a job can be: no tag twice, no tag gone except by a call that may remove
//! it); the jobs hash and the three zsets agree; every lease group is in `active`; `stats.active`
//! counts the leased entries; recovery counts an attempt for every entry it takes back. After the
//! drain nothing is stuck: everything is dead with a reason, or was completed or removed.
//! `push.lua` must refuse (whole batch, nothing written) any number that is not a decimal integer
//! in range and any bad field count, and store only valid envelopes.
//!
//! Time budget: `OSTQ_FUZZ_SECS` (default 40, shared by the two targets, which run in
//! parallel). `OSTQ_FUZZ_SEED=<n>` replays one scenario (the seed a failure printed, with
//! `--exact <target>`). Inputs that ever made a failure are kept as JSON in `tests/fuzz-corpus/`
//! and replayed first on every run; a new failure is written there (shrunk) before the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ostq::keys::QueueKeys;
use ostq_testkit::RedisServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// MessagePack: a value type, an encoder that can also write non-canonical (wider) forms, and a
// strict decoder.

#[derive(Clone, Debug, PartialEq)]
enum Mp {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    F32(f32),
    F64(f64),
    Str(Vec<u8>),
    Bin(Vec<u8>),
    Arr(Vec<Mp>),
    Map(Vec<(Mp, Mp)>),
    Ext(i8, Vec<u8>),
}

/// How to write lengths and integers: the smallest form, or sometimes a wider one.
struct Enc<'a> {
    rng: Option<&'a mut StdRng>,
}

impl Enc<'_> {
    fn wide(&mut self) -> bool {
        self.rng.as_mut().is_some_and(|r| r.random_bool(0.1))
    }

    fn uint(&mut self, out: &mut Vec<u8>, v: u64) {
        if v < 0x80 && !self.wide() {
            out.push(v as u8);
        } else if v <= 0xff && !self.wide() {
            out.extend([0xcc, v as u8]);
        } else if v <= 0xffff && !self.wide() {
            out.push(0xcd);
            out.extend((v as u16).to_be_bytes());
        } else if v <= 0xffff_ffff && !self.wide() {
            out.push(0xce);
            out.extend((v as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend(v.to_be_bytes());
        }
    }

    fn int(&mut self, out: &mut Vec<u8>, v: i64) {
        if v >= 0 {
            return self.uint(out, v as u64);
        }
        if v >= -32 && !self.wide() {
            out.push(v as i8 as u8);
        } else if v >= -128 && !self.wide() {
            out.extend([0xd0, v as i8 as u8]);
        } else if v >= -32768 && !self.wide() {
            out.push(0xd1);
            out.extend((v as i16).to_be_bytes());
        } else if v >= i64::from(i32::MIN) && !self.wide() {
            out.push(0xd2);
            out.extend((v as i32).to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend(v.to_be_bytes());
        }
    }

    fn len(&mut self, out: &mut Vec<u8>, n: usize, fix: u8, fix_max: usize, base: u8, has8: bool) {
        if n <= fix_max && !self.wide() {
            out.push(fix | n as u8);
        } else if has8 && n <= 0xff && !self.wide() {
            out.extend([base, n as u8]);
        } else if n <= 0xffff && !self.wide() {
            out.push(base + u8::from(has8));
            out.extend((n as u16).to_be_bytes());
        } else {
            out.push(base + 1 + u8::from(has8));
            out.extend((n as u32).to_be_bytes());
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, v: &Mp) {
        match v {
            Mp::Nil => out.push(0xc0),
            Mp::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Mp::Int(i) => self.int(out, *i),
            Mp::UInt(u) => self.uint(out, *u),
            Mp::F32(f) => {
                out.push(0xca);
                out.extend(f.to_bits().to_be_bytes());
            }
            Mp::F64(f) => {
                out.push(0xcb);
                out.extend(f.to_bits().to_be_bytes());
            }
            Mp::Str(s) => {
                self.len(out, s.len(), 0xa0, 31, 0xd9, true);
                out.extend_from_slice(s);
            }
            Mp::Bin(s) => {
                // bin has no fix form: 0xc4 (8), 0xc5 (16), 0xc6 (32)
                if s.len() <= 0xff && !self.wide() {
                    out.extend([0xc4, s.len() as u8]);
                } else if s.len() <= 0xffff {
                    out.push(0xc5);
                    out.extend((s.len() as u16).to_be_bytes());
                } else {
                    out.push(0xc6);
                    out.extend((s.len() as u32).to_be_bytes());
                }
                out.extend_from_slice(s);
            }
            Mp::Arr(a) => {
                self.len(out, a.len(), 0x90, 15, 0xdc, false);
                for x in a {
                    self.value(out, x);
                }
            }
            Mp::Map(m) => {
                self.len(out, m.len(), 0x80, 15, 0xde, false);
                for (k, x) in m {
                    self.value(out, k);
                    self.value(out, x);
                }
            }
            Mp::Ext(t, d) => {
                match d.len() {
                    1 => out.push(0xd4),
                    2 => out.push(0xd5),
                    4 => out.push(0xd6),
                    8 => out.push(0xd7),
                    16 => out.push(0xd8),
                    n => out.extend([0xc7, n as u8]),
                }
                out.push(*t as u8);
                out.extend_from_slice(d);
            }
        }
    }
}

fn mp_encode(v: &Mp) -> Vec<u8> {
    let mut out = Vec::new();
    Enc { rng: None }.value(&mut out, v);
    out
}

fn mp_decode(bytes: &[u8]) -> Option<Mp> {
    let mut at = 0;
    let v = mp_read(bytes, &mut at, 0)?;
    (at == bytes.len()).then_some(v)
}

fn mp_read(b: &[u8], at: &mut usize, depth: usize) -> Option<Mp> {
    if depth > 64 {
        return None;
    }
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = b.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    };
    let be = |s: &[u8]| s.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x));
    let m = *b.get(*at)?;
    *at += 1;
    Some(match m {
        0x00..=0x7f => Mp::UInt(u64::from(m)),
        0x80..=0x8f => mp_map(b, at, usize::from(m & 0x0f), depth)?,
        0x90..=0x9f => mp_arr(b, at, usize::from(m & 0x0f), depth)?,
        0xa0..=0xbf => Mp::Str(take(at, usize::from(m & 0x1f))?.to_vec()),
        0xc0 => Mp::Nil,
        0xc2 => Mp::Bool(false),
        0xc3 => Mp::Bool(true),
        0xc4..=0xc6 => {
            let n = be(take(at, 1 << (m - 0xc4))?) as usize;
            Mp::Bin(take(at, n)?.to_vec())
        }
        0xc7..=0xc9 => {
            let n = be(take(at, 1 << (m - 0xc7))?) as usize;
            let t = *take(at, 1)?.first()? as i8;
            Mp::Ext(t, take(at, n)?.to_vec())
        }
        0xca => Mp::F32(f32::from_bits(be(take(at, 4)?) as u32)),
        0xcb => Mp::F64(f64::from_bits(be(take(at, 8)?))),
        0xcc..=0xcf => Mp::UInt(be(take(at, 1 << (m - 0xcc))?)),
        0xd0 => Mp::Int(i64::from(take(at, 1)?[0] as i8)),
        0xd1 => Mp::Int(i64::from(be(take(at, 2)?) as u16 as i16)),
        0xd2 => Mp::Int(i64::from(be(take(at, 4)?) as u32 as i32)),
        0xd3 => Mp::Int(be(take(at, 8)?) as i64),
        0xd4..=0xd8 => {
            let t = *take(at, 1)?.first()? as i8;
            Mp::Ext(t, take(at, 1 << (m - 0xd4))?.to_vec())
        }
        0xd9..=0xdb => {
            let n = be(take(at, 1 << (m - 0xd9))?) as usize;
            Mp::Str(take(at, n)?.to_vec())
        }
        0xdc | 0xdd => {
            let n = be(take(at, 2 << (m - 0xdc))?) as usize;
            mp_arr(b, at, n, depth)?
        }
        0xde | 0xdf => {
            let n = be(take(at, 2 << (m - 0xde))?) as usize;
            mp_map(b, at, n, depth)?
        }
        0xe0..=0xff => Mp::Int(i64::from(m as i8)),
        0xc1 => return None,
    })
}

fn mp_arr(b: &[u8], at: &mut usize, n: usize, depth: usize) -> Option<Mp> {
    let mut v = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        v.push(mp_read(b, at, depth + 1)?);
    }
    Some(Mp::Arr(v))
}

fn mp_map(b: &[u8], at: &mut usize, n: usize, depth: usize) -> Option<Mp> {
    let mut v = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let k = mp_read(b, at, depth + 1)?;
        v.push((k, mp_read(b, at, depth + 1)?));
    }
    Some(Mp::Map(v))
}

/// An integer as Lua would see it (cmsgpack turns every number into a double; floats that are
/// whole count as integers too: design §3, `lua/lib/envelope.lua`).
fn mp_whole(v: &Mp, lo: f64, hi: f64) -> bool {
    let f = match *v {
        Mp::Int(i) => i as f64,
        Mp::UInt(u) => u as f64,
        Mp::F32(f) => f64::from(f),
        Mp::F64(f) => f,
        _ => return false,
    };
    f.is_finite() && f.fract() == 0.0 && f >= lo && f <= hi
}

fn utf8_str(v: &Mp, max: usize) -> bool {
    matches!(v, Mp::Str(s) if s.len() <= max && std::str::from_utf8(s).is_ok())
}

/// The shared definition of a valid envelope (the brief, design §3, `lua/lib/envelope.lua`).
fn envelope_ok(bytes: &[u8]) -> Result<Vec<Mp>, String> {
    let Some(Mp::Arr(f)) = mp_decode(bytes) else {
        return Err("not a msgpack array".into());
    };
    if f.len() < 9 {
        return Err(format!("{} fields", f.len()));
    }
    let ok = utf8_str(&f[0], 255)
        && f[0] != Mp::Str(Vec::new())
        && mp_whole(&f[1], 0.0, 127.0)
        && matches!(f[2], Mp::Str(_) | Mp::Bin(_))
        && utf8_str(&f[3], usize::MAX)
        && mp_whole(&f[4], 0.0, 4_294_967_295.0)
        && mp_whole(&f[5], 0.0, 4_294_967_295.0)
        && mp_whole(&f[6], -1000.0, 1000.0)
        && mp_whole(&f[7], 0.0, 9_007_199_254_740_992.0)
        && utf8_str(&f[8], usize::MAX)
        && (f.len() < 10 || utf8_str(&f[9], usize::MAX));
    if ok {
        Ok(f)
    } else {
        Err(format!("invalid fields {f:?}"))
    }
}

fn field_int(f: &[Mp], i: usize) -> i64 {
    match f[i] {
        Mp::Int(v) => v,
        Mp::UInt(v) => v as i64,
        Mp::F32(v) => v as i64,
        Mp::F64(v) => v as i64,
        _ => 0,
    }
}

fn field_str(f: &[Mp], i: usize) -> Vec<u8> {
    match &f[i] {
        Mp::Str(s) | Mp::Bin(s) => s.clone(),
        _ => Vec::new(),
    }
}

/// A valid envelope, written the way `Envelope::encode` and `push.lua` write it.
#[allow(clippy::too_many_arguments)]
fn envelope(
    id: &[u8],
    flags: u64,
    payload: &[u8],
    attempt: u64,
    max: u64,
    priority: i64,
    error: &str,
    unique: &str,
) -> Vec<u8> {
    let mut f = vec![
        Mp::Str(id.to_vec()),
        Mp::UInt(flags),
        Mp::Str(payload.to_vec()),
        Mp::Str(Vec::new()),
        Mp::UInt(attempt),
        Mp::UInt(max),
        Mp::Int(priority),
        Mp::UInt(1_700_000_000_000),
        Mp::Str(error.as_bytes().to_vec()),
    ];
    if !unique.is_empty() {
        f.push(Mp::Str(unique.as_bytes().to_vec()));
    }
    mp_encode(&Mp::Arr(f))
}

// ---------------------------------------------------------------------------------------------
// Generating hostile values.

fn rand_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..=max);
    (0..n).map(|_| rng.random::<u8>()).collect()
}

fn hostile_number(rng: &mut StdRng) -> Mp {
    match rng.random_range(0..22) {
        0 => Mp::Int(-1),
        1 => Mp::Int(i64::MIN),
        2 => Mp::UInt(u64::MAX),
        3 => Mp::UInt(4_294_967_296),
        4 => Mp::UInt((1 << 53) + 1),
        5 => Mp::F64(f64::NAN),
        6 => Mp::F64(f64::INFINITY),
        7 => Mp::F64(f64::NEG_INFINITY),
        8 => Mp::F64(1.5),
        9 => Mp::F64(2.0),
        10 => Mp::F64(1e300),
        11 => Mp::F64(-0.0),
        12 => Mp::F32(f32::NAN),
        13 => Mp::F32(3.0),
        14 => Mp::Int(-1001),
        15 => Mp::UInt(1001),
        16 => Mp::UInt(128),
        17 => Mp::UInt(255),
        18 => Mp::Int(-1000),
        19 => Mp::UInt(1000),
        20 => Mp::F64(0.1),
        _ => Mp::UInt(rng.random()),
    }
}

fn hostile_value(rng: &mut StdRng, depth: usize) -> Mp {
    match rng.random_range(0..if depth > 3 { 8 } else { 11 }) {
        0 => Mp::Nil,
        1 => Mp::Bool(rng.random()),
        2 | 3 => hostile_number(rng),
        4 => Mp::Str(rand_bytes(rng, 12)),
        5 => Mp::Str(vec![0xff, 0xfe, b'x']),
        6 => Mp::Bin(rand_bytes(rng, 8)),
        7 => Mp::Ext(rng.random(), rand_bytes(rng, 4)),
        8 => Mp::Arr(
            (0..rng.random_range(0..4))
                .map(|_| hostile_value(rng, depth + 1))
                .collect(),
        ),
        9 => Mp::Map(
            (0..rng.random_range(0..3))
                .map(|_| (hostile_value(rng, depth + 1), hostile_value(rng, depth + 1)))
                .collect(),
        ),
        _ => {
            // Deep nesting.
            let mut v = Mp::Nil;
            for _ in 0..rng.random_range(10..40) {
                v = Mp::Arr(vec![v]);
            }
            v
        }
    }
}

/// A tag carried by an input so it can be found wherever it goes: "@T<n>#".
fn tag(n: usize) -> Vec<u8> {
    format!("@T{n}#").into_bytes()
}

/// Random bytes where an envelope is expected, usually close to a valid one. The tag goes in the
/// payload (or somewhere else when the payload is mutated).
fn hostile_envelope(rng: &mut StdRng, tag: &[u8], id: &[u8]) -> Vec<u8> {
    let mut f = vec![
        Mp::Str(id.to_vec()),
        Mp::UInt(rng.random_range(0..2)),
        Mp::Str(tag.to_vec()),
        Mp::Str(Vec::new()),
        Mp::UInt(rng.random_range(0..3)),
        Mp::UInt(rng.random_range(0..4)),
        Mp::Int(if rng.random_bool(0.7) {
            0
        } else {
            rng.random_range(-5..5)
        }),
        Mp::UInt(1_700_000_000_000),
        Mp::Str(Vec::new()),
    ];
    if rng.random_bool(0.2) {
        f.push(Mp::Str(b"uf".to_vec()));
    }
    let mutations = rng.random_range(0..=3);
    for _ in 0..mutations {
        match rng.random_range(0..16) {
            0..=4 => {
                let i = rng.random_range(0..f.len());
                f[i] = hostile_value(rng, 0);
                if i == 2 {
                    // Past the tenth field (the unique key, which a script may drop).
                    while f.len() < 10 {
                        f.push(Mp::Str(Vec::new()));
                    }
                    f.push(Mp::Str(tag.to_vec()));
                }
            }
            5 if f.len() > 2 => f[2] = Mp::Bin(tag.to_vec()),
            6 if f.len() > 2 => f[2] = Mp::Ext(5, tag.to_vec()),
            7 => {
                // At most 8 fields with the tag: never a valid envelope whose error text is the tag.
                let n = rng.random_range(0..8);
                f.truncate(n);
                f.push(Mp::Str(tag.to_vec()));
            }
            8 => {
                for _ in 0..rng.random_range(1..12) {
                    f.push(hostile_value(rng, 1));
                }
            }
            9 => {
                f[0] = Mp::Str(match rng.random_range(0..5) {
                    0 => Vec::new(),
                    1 => vec![b'i'; 255],
                    2 => vec![b'i'; 256],
                    3 => vec![0xc3, 0x28],
                    _ => vec![b'i'; 40],
                })
            }
            10 => {
                let i = [1, 4, 5, 6, 7][rng.random_range(0..5)];
                if i < f.len() {
                    f[i] = hostile_number(rng);
                }
            }
            11 => {
                let i = [3, 8, 9][rng.random_range(0..3)];
                if i < f.len() {
                    f[i] = Mp::Str(vec![0xff, b'!']);
                }
            }
            12 => {
                // Not an array at all.
                return match rng.random_range(0..5) {
                    0 => mp_encode(&Mp::Map(vec![(
                        Mp::Str(b"p".to_vec()),
                        Mp::Str(tag.to_vec()),
                    )])),
                    1 => mp_encode(&Mp::Str(tag.to_vec())),
                    2 => mp_encode(&Mp::Bin(tag.to_vec())),
                    3 => {
                        let mut b = vec![0x91];
                        b.extend(mp_encode(&Mp::Str(tag.to_vec())));
                        b
                    }
                    _ => [&[0x90][..], tag].concat(),
                };
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    Enc { rng: Some(rng) }.value(&mut out, &Mp::Arr(f));
    match rng.random_range(0..12) {
        0 => {
            let keep = rng.random_range(1..out.len().max(2));
            // (A tag cut in two is no tag: the input then goes untracked.)
            out.truncate(keep);
        }
        1 => out.extend(rand_bytes(rng, 4)),
        2 => {
            let i = rng.random_range(0..out.len());
            out[i] = rng.random();
        }
        _ => {}
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Scenarios: literal steps, so that a failing one can be stored, replayed and shrunk.

#[derive(Clone, Debug)]
enum Step {
    /// A plain Redis command (placing an input, expiring a lease, making a job due).
    Raw(Vec<Vec<Vec<u8>>>),
    /// A script with its arguments; `trusted` when the arguments are valid (as a worker, a
    /// producer or the Queue API would send them): then an error reply is a failure too.
    Script {
        name: String,
        argv: Vec<Vec<u8>>,
        trusted: bool,
    },
    /// The drain: expire every lease, make every job due, fetch and work until nothing moves,
    /// then check that nothing is stuck.
    Drain,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}

fn step_json(step: &Step) -> serde_json::Value {
    match step {
        Step::Raw(cmds) => json!({"raw": cmds
            .iter()
            .map(|args| args.iter().map(|a| hex(a)).collect::<Vec<_>>())
            .collect::<Vec<_>>()}),
        Step::Script {
            name,
            argv,
            trusted,
        } => json!({
            "script": name,
            "trusted": trusted,
            "argv": argv.iter().map(|a| hex(a)).collect::<Vec<_>>(),
        }),
        Step::Drain => json!({"drain": true}),
    }
}

fn step_from_json(v: &serde_json::Value) -> Option<Step> {
    let hexes = |v: &serde_json::Value| -> Option<Vec<Vec<u8>>> {
        Some(
            v.as_array()?
                .iter()
                .map(|a| unhex(a.as_str().unwrap_or("")))
                .collect(),
        )
    };
    if let Some(raw) = v.get("raw") {
        return Some(Step::Raw(
            raw.as_array()?
                .iter()
                .map(hexes)
                .collect::<Option<Vec<_>>>()?,
        ));
    }
    if v.get("drain").is_some() {
        return Some(Step::Drain);
    }
    Some(Step::Script {
        name: v.get("script")?.as_str()?.to_string(),
        argv: hexes(v.get("argv")?)?,
        trusted: v.get("trusted").and_then(|t| t.as_bool()).unwrap_or(false),
    })
}

/// An argument as redis-cli reads it from stdin (double-quoted, with \xNN escapes).
fn cli_quote(arg: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in arg {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s.push('"');
    s
}

// ---------------------------------------------------------------------------------------------
// Redis.

fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_array(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.clone(),
        _ => Vec::new(),
    }
}

const SNAPSHOT_LUA: &str = r"
local out = {}
for _, k in ipairs(redis.call('KEYS', '*')) do
  local t = redis.call('TYPE', k).ok
  local c
  if t == 'string' then c = {redis.call('GET', k)}
  elseif t == 'list' then c = redis.call('LRANGE', k, 0, -1)
  elseif t == 'zset' then c = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  elseif t == 'hash' then c = redis.call('HGETALL', k)
  elseif t == 'set' then c = redis.call('SMEMBERS', k)
  else c = {} end
  out[#out + 1] = {k, t, c, redis.call('PTTL', k)}
end
return out
";

#[derive(Debug, Default, Clone, PartialEq)]
struct Snapshot {
    keys: BTreeMap<String, (String, Vec<Vec<u8>>, bool)>,
}

impl Snapshot {
    fn get(&self, key: &str) -> &[Vec<u8>] {
        self.keys
            .get(key)
            .map(|v| v.1.as_slice())
            .unwrap_or_default()
    }

    fn zset(&self, key: &str) -> Vec<(Vec<u8>, f64)> {
        self.get(key)
            .chunks(2)
            .map(|c| {
                let s = String::from_utf8_lossy(&c[1]);
                let f = match s.as_ref() {
                    "inf" => f64::INFINITY,
                    "-inf" => f64::NEG_INFINITY,
                    s => s.parse().unwrap_or(f64::NAN),
                };
                (c[0].clone(), f)
            })
            .collect()
    }

    fn hash(&self, key: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.get(key)
            .chunks(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect()
    }

    fn stat(&self, keys: &QueueKeys, field: &str) -> i64 {
        self.hash(&keys.stats)
            .get(field.as_bytes())
            .and_then(|v| String::from_utf8_lossy(v).parse().ok())
            .unwrap_or(0)
    }

    /// Lease groups: id → (score, entries); `lease:*` keys without a member get score NaN.
    fn groups(&self, keys: &QueueKeys) -> BTreeMap<String, (f64, Vec<Vec<u8>>)> {
        let mut out: BTreeMap<String, (f64, Vec<Vec<u8>>)> = BTreeMap::new();
        for (g, s) in self.zset(&keys.active) {
            let g = String::from_utf8_lossy(&g).into_owned();
            let entries = self.get(&format!("{}lease:{g}", keys.prefix)).to_vec();
            out.insert(g, (s, entries));
        }
        let lease = format!("{}lease:", keys.prefix);
        for (k, v) in &self.keys {
            if let Some(g) = k.strip_prefix(&lease) {
                out.entry(g.to_string()).or_insert((f64::NAN, v.1.clone()));
            }
        }
        out
    }
}

fn diff(a: &Snapshot, b: &Snapshot) -> String {
    let show = |v: &(String, Vec<Vec<u8>>, bool)| {
        let items: Vec<String> = v.1.iter().take(12).map(|x| cli_quote(x)).collect();
        format!("{} [{}]", v.0, items.join(", "))
    };
    let mut out = String::new();
    for (k, v) in &a.keys {
        match b.keys.get(k) {
            None => {
                let _ = write!(out, "\n    deleted {k}: {}", show(v));
            }
            Some(w) if w != v => {
                let _ = write!(out, "\n    changed {k}: {} -> {}", show(v), show(w));
            }
            _ => {}
        }
    }
    for (k, w) in &b.keys {
        if !a.keys.contains_key(k) {
            let _ = write!(out, "\n    created {k}: {}", show(w));
        }
    }
    out
}

struct Redis {
    con: redis::Connection,
    shas: BTreeMap<&'static str, String>,
}

const SCRIPTS: [(&str, &str); 8] = [
    ("push", ostq::scripts::PUSH),
    ("fetch", ostq::scripts::FETCH),
    ("complete", ostq::scripts::COMPLETE),
    ("fail", ostq::scripts::FAIL),
    ("requeue", ostq::scripts::REQUEUE),
    ("renew", ostq::scripts::RENEW),
    ("enqueue_now", ostq::scripts::ENQUEUE_NOW),
    ("delete", ostq::scripts::DELETE),
];

impl Redis {
    fn connect(url: &str) -> Redis {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let mut shas = BTreeMap::new();
        for (name, src) in SCRIPTS {
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("SCRIPT LOAD {name}: {e}"));
            shas.insert(name, sha);
        }
        Redis { con, shas }
    }

    fn cmd(&mut self, args: &[Vec<u8>]) -> redis::RedisResult<Value> {
        let mut c = redis::cmd(&String::from_utf8_lossy(&args[0]));
        for a in &args[1..] {
            c.arg(a.as_slice());
        }
        c.query(&mut self.con)
    }

    fn q(&mut self, args: &[&str]) -> Value {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        self.cmd(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn snapshot(&mut self) -> Snapshot {
        let reply = redis::cmd("EVAL")
            .arg(SNAPSHOT_LUA)
            .arg(0)
            .query::<Value>(&mut self.con)
            .expect("snapshot");
        let mut snap = Snapshot::default();
        for entry in as_array(&reply) {
            let e = as_array(&entry);
            let key = String::from_utf8_lossy(&as_bytes(&e[0]).unwrap_or_default()).into_owned();
            let ty = String::from_utf8_lossy(&as_bytes(&e[1]).unwrap_or_default()).into_owned();
            let mut content: Vec<Vec<u8>> = as_array(&e[2]).iter().filter_map(as_bytes).collect();
            match ty.as_str() {
                "hash" => {
                    let mut pairs: Vec<Vec<Vec<u8>>> =
                        content.chunks(2).map(<[Vec<u8>]>::to_vec).collect();
                    pairs.sort();
                    content = pairs.concat();
                }
                "set" => content.sort(),
                _ => {}
            }
            let ttl = as_int(&e[3]).unwrap_or(-1) >= 0;
            snap.keys.insert(key, (ty, content, ttl));
        }
        snap
    }

    fn now_ms(&mut self) -> i64 {
        let t = as_array(&self.q(&["TIME"]));
        as_int(&t[0]).unwrap() * 1000 + as_int(&t[1]).unwrap() / 1000
    }
}

fn script_keys(k: &QueueKeys, name: &str) -> Vec<String> {
    let v: Vec<&String> = match name {
        "push" => vec![
            &k.pending,
            &k.prioritized,
            &k.scheduled,
            &k.jobs,
            &k.seq,
            &k.config,
            &k.events,
        ],
        "fetch" => vec![
            &k.pending,
            &k.prioritized,
            &k.scheduled,
            &k.retry,
            &k.jobs,
            &k.active,
            &k.dead,
            &k.seq,
            &k.stats,
            &k.completed,
            &k.paused,
            &k.rate_limit,
            &k.config,
            &k.events,
            &k.started,
        ],
        "complete" => vec![
            &k.active,
            &k.completed,
            &k.stats,
            &k.config,
            &k.events,
            &k.started,
        ],
        "fail" => vec![
            &k.active,
            &k.retry,
            &k.dead,
            &k.jobs,
            &k.stats,
            &k.pending,
            &k.scheduled,
            &k.config,
            &k.events,
        ],
        "requeue" => vec![
            &k.pending,
            &k.prioritized,
            &k.active,
            &k.seq,
            &k.stats,
            &k.started,
        ],
        "renew" => vec![&k.active, &k.started],
        "enqueue_now" => vec![
            &k.pending,
            &k.prioritized,
            &k.scheduled,
            &k.retry,
            &k.dead,
            &k.jobs,
            &k.seq,
            &k.config,
            &k.events,
        ],
        "delete" => vec![&k.scheduled, &k.retry, &k.dead, &k.completed, &k.jobs],
        other => panic!("unknown script {other}"),
    };
    v.into_iter().cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Properties.

#[derive(Clone, Debug)]
struct Failure {
    kind: &'static str,
    detail: String,
}

/// Every tag ("@T<n>#" or "@V<n>#") and the places it is in.
fn tags(snap: &Snapshot, keys: &QueueKeys) -> BTreeMap<Vec<u8>, Vec<String>> {
    let mut out: BTreeMap<Vec<u8>, Vec<String>> = BTreeMap::new();
    let mut scan = |bytes: &[u8], place: String| {
        for t in scan_tags(bytes) {
            out.entry(t).or_default().push(place.clone());
        }
    };
    for e in snap.get(&keys.pending) {
        scan(e, "pending".into());
    }
    for (e, _) in snap.zset(&keys.prioritized) {
        scan(&e, "prioritized".into());
    }
    for (id, e) in snap.hash(&keys.jobs) {
        scan(&e, format!("jobs[{}]", String::from_utf8_lossy(&id)));
    }
    for (g, (_, entries)) in snap.groups(keys) {
        for (i, e) in entries.iter().enumerate() {
            scan(e, format!("lease:{g}[{i}]"));
        }
    }
    out
}

/// The tags in one value.
fn scan_tags(bytes: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut seen = BTreeSet::new();
    let mut i = 0;
    while i + 3 < bytes.len() {
        if bytes[i] == b'@' && (bytes[i + 1] == b'T' || bytes[i + 1] == b'V') {
            let mut j = i + 2;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j > i + 2 && j < bytes.len() && bytes[j] == b'#' {
                seen.insert(bytes[i..=j].to_vec());
            }
        }
        i += 1;
    }
    seen
}

/// The id an entry's header names (fixarray, then a fixstr or str8 id), as the scripts read it.
fn header_id(e: &[u8]) -> Option<Vec<u8>> {
    match (e.first()?, e.get(1)?) {
        (0x91..=0x9f, &b) if (0xa1..=0xbf).contains(&b) => {
            e.get(2..2 + usize::from(b - 0xa0)).map(<[u8]>::to_vec)
        }
        (0x91..=0x9f, 0xd9) => {
            let n = usize::from(*e.get(2)?);
            e.get(3..3 + n).map(<[u8]>::to_vec)
        }
        _ => None,
    }
}

/// For each tag, the ids named by the headers of the lease entries that carry it.
fn leased_tag_ids(snap: &Snapshot, keys: &QueueKeys) -> BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> {
    let mut out: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for (_, (_, entries)) in snap.groups(keys) {
        for e in entries {
            if let Some(id) = header_id(&e) {
                for t in scan_tags(&e) {
                    out.entry(t).or_default().insert(id.clone());
                }
            }
        }
    }
    out
}

/// Tags found in `bytes`.
fn tags_in(bytes: &[u8], _keys: &QueueKeys) -> BTreeSet<Vec<u8>> {
    scan_tags(bytes)
}

/// `exempt`: tags of inputs that were put in `dead` as they are (placed there, or handed to
/// fail.lua by a caller with random arguments): no reason is owed for them.
fn structure(
    snap: &Snapshot,
    keys: &QueueKeys,
    trusted_stats: bool,
    exempt: &BTreeSet<Vec<u8>>,
    exempt_bytes: &BTreeSet<Vec<u8>>,
    reasons_optional: bool,
) -> Vec<Failure> {
    let mut f = Vec::new();
    let jobs = snap.hash(&keys.jobs);
    let zsets: Vec<(&str, BTreeSet<Vec<u8>>)> = [
        ("scheduled", &keys.scheduled),
        ("retry", &keys.retry),
        ("dead", &keys.dead),
    ]
    .iter()
    .map(|(n, k)| (*n, snap.zset(k).into_iter().map(|(m, _)| m).collect()))
    .collect();
    for id in jobs.keys() {
        let n = zsets.iter().filter(|(_, z)| z.contains(id)).count();
        if n != 1 {
            f.push(Failure {
                kind: "STRUCTURE",
                detail: format!(
                    "jobs hash entry {} is in {n} of scheduled/retry/dead",
                    cli_quote(id)
                ),
            });
        }
    }
    for (name, z) in &zsets {
        for id in z {
            if !jobs.contains_key(id) {
                f.push(Failure {
                    kind: "STRUCTURE",
                    detail: format!(
                        "{name} member {} has no envelope in the jobs hash",
                        cli_quote(id)
                    ),
                });
            }
        }
    }
    let mut live = 0i64;
    for (g, (score, entries)) in snap.groups(keys) {
        if score.is_nan() {
            f.push(Failure {
                kind: "ORPHAN_LEASE",
                detail: format!(
                    "lease:{g} ({} entries) is not in active: nothing will ever recover it",
                    entries.len()
                ),
            });
        } else if score > 0.0 && entries.is_empty() {
            f.push(Failure {
                kind: "STRUCTURE",
                detail: format!("active group {g} (score {score}) has no lease list"),
            });
        }
        live += entries.iter().filter(|e| !e.is_empty()).count() as i64;
    }
    if trusted_stats && snap.stat(keys, "active") != live {
        f.push(Failure {
            kind: "STATS",
            detail: format!(
                "stats.active is {} but {live} entries are leased",
                snap.stat(keys, "active")
            ),
        });
    }
    for (id, e) in &jobs {
        let dead = zsets[2].1.contains(id);
        if !dead {
            continue;
        }
        // Dead entries written by the scripts carry a reason (inputs placed in dead as they
        // are, and never touched, are checked at the drain).
        if let Ok(fields) = envelope_ok(e) {
            if field_str(&fields, 8).is_empty()
                && !reasons_optional
                && !exempt_bytes.contains(e)
                && tags_in(e, keys).is_disjoint(exempt)
            {
                f.push(Failure {
                    kind: "DEAD_WITHOUT_REASON",
                    detail: format!("dead job {} has no last error", cli_quote(id)),
                });
            }
        }
    }
    f
}

// ---------------------------------------------------------------------------------------------
// Running scenarios.

struct Ctx {
    r: Redis,
    keys: QueueKeys,
    /// What the scenarios exercised: script calls and errors, entries buried and recovered.
    coverage: BTreeMap<String, u64>,
}

fn buried(snap: &Snapshot, keys: &QueueKeys) -> u64 {
    snap.hash(&keys.jobs)
        .values()
        .filter(|e| envelope_ok(e).is_ok_and(|f| field_str(&f, 8).starts_with(b"invalid")))
        .count() as u64
}

/// What a run observed, for generation (the worker's view) and for the report.
#[derive(Default)]
struct Run {
    /// Lease groups fetched and not yet settled, with their entries (the worker's view).
    held: BTreeMap<String, Vec<Vec<u8>>>,
    /// Tags placed in `dead` as they are (no reason needed).
    placed_dead: BTreeSet<Vec<u8>>,
    /// The exact bytes of inputs placed in `dead`.
    placed_dead_bytes: BTreeSet<Vec<u8>>,
    /// Set once fail.lua got random arguments: it files the envelope it is given, and a caller
    /// may give one with an empty error (the reason then only reaches a tracked job's record).
    reasons_optional: bool,
    /// Whether stats.active can still be trusted (complete.lua with all = 1 takes `k` on trust).
    trusted_stats: bool,
    log: Vec<String>,
}

fn step_line(ctx: &Ctx, step: &Step) -> String {
    match step {
        Step::Raw(cmds) => cmds
            .iter()
            .map(|args| {
                args.iter()
                    .map(|a| cli_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n  "),
        Step::Script { name, argv, .. } => {
            let keys = script_keys(&ctx.keys, name);
            let mut s = format!("EVALSHA $SHA_{} {}", name.to_uppercase(), keys.len());
            for k in keys {
                let _ = write!(s, " {}", cli_quote(k.as_bytes()));
            }
            for a in argv {
                let _ = write!(s, " {}", cli_quote(a));
            }
            s
        }
        Step::Drain => {
            "# drain: expire every lease, make every job due, fetch and work until nothing moves"
                .into()
        }
    }
}

/// Kinds of failure to let pass (`OSTQ_FUZZ_ALLOW=KIND,KIND`), to look past a known hole.
fn allowed(kind: &str) -> bool {
    static ALLOWED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ALLOWED
        .get_or_init(|| {
            std::env::var("OSTQ_FUZZ_ALLOW")
                .unwrap_or_default()
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect()
        })
        .iter()
        .any(|k| k == kind)
}

/// Runs one step and checks the properties; returns the failures.
fn run_step(ctx: &mut Ctx, run: &mut Run, step: &Step) -> Vec<Failure> {
    run.log.push(step_line(ctx, step));
    match step {
        Step::Raw(cmds) => {
            // Placing inputs: not judged. Inputs placed in dead as they are need no reason.
            let dead = cmds.iter().any(|c| {
                c.first().is_some_and(|x| x == b"ZADD")
                    && c.get(1).is_some_and(|k| *k == ctx.keys.dead.as_bytes())
            });
            for c in cmds {
                let _ = ctx.r.cmd(c);
                if dead && c.first().is_some_and(|x| x == b"HSET") {
                    if let Some(v) = c.get(3) {
                        run.placed_dead_bytes.insert(v.clone());
                        let snap = Snapshot {
                            keys: BTreeMap::from([(
                                ctx.keys.pending.clone(),
                                ("list".into(), vec![v.clone()], false),
                            )]),
                        };
                        run.placed_dead.extend(tags(&snap, &ctx.keys).into_keys());
                    }
                }
            }
            Vec::new()
        }
        Step::Script {
            name,
            argv,
            trusted,
        } if name == "push" => {
            let mut f = check_push(ctx, run, argv, *trusted);
            f.retain(|f| !allowed(f.kind));
            f
        }
        Step::Script {
            name,
            argv,
            trusted,
        } => run_script(ctx, run, name, argv, *trusted).1,
        Step::Drain => {
            let mut f = drain(ctx, run);
            f.retain(|f| !allowed(f.kind));
            f
        }
    }
}

/// One script call with every check; returns its reply (None on an error reply).
fn run_script_all(
    ctx: &mut Ctx,
    run: &mut Run,
    name: &str,
    argv: &[Vec<u8>],
    trusted: bool,
) -> (Option<Value>, Vec<Failure>) {
    let mut fails = Vec::new();
    let before = ctx.r.snapshot();
    let now = ctx.r.now_ms();
    let keys = script_keys(&ctx.keys, name);
    let mut args: Vec<Vec<u8>> = vec![
        b"EVALSHA".to_vec(),
        ctx.r.shas[name].clone().into_bytes(),
        keys.len().to_string().into_bytes(),
    ];
    args.extend(keys.iter().map(|k| k.clone().into_bytes()));
    args.extend(argv.iter().cloned());
    let reply = ctx.r.cmd(&args);
    let after = ctx.r.snapshot();
    let outcome = if reply.is_ok() { "ok" } else { "error" };
    *ctx.coverage.entry(format!("{name} {outcome}")).or_default() += 1;
    let newly_buried = buried(&after, &ctx.keys).saturating_sub(buried(&before, &ctx.keys));
    *ctx.coverage
        .entry("entries buried as invalid".into())
        .or_default() += newly_buried;
    let recovered =
        (after.stat(&ctx.keys, "recovered") - before.stat(&ctx.keys, "recovered")).max(0) as u64;
    *ctx.coverage.entry("entries recovered".into()).or_default() += recovered;
    let reply = match reply {
        Ok(v) => Some(v),
        Err(e) => {
            // (A key with a ttl may expire between the two reads: not a write.)
            let mut expiring = before.clone();
            expiring
                .keys
                .retain(|k, v| !v.2 || after.keys.contains_key(k));
            if expiring != after {
                fails.push(Failure {
                    kind: "PARTIAL_WRITE",
                    detail: format!(
                        "{name}.lua returned an error ({e}) after writing:{}",
                        diff(&before, &after)
                    ),
                });
            }
            if trusted {
                fails.push(Failure {
                    kind: "DATA_ERROR",
                    detail: format!(
                        "{name}.lua failed on the data it read (its arguments were valid): {e}"
                    ),
                });
            }
            None
        }
    };
    // Groups a call says it settles whole (all = 1): complete.lua and requeue.lua delete them
    // without looking at entries not listed, and complete.lua subtracts the `k` it is told from
    // stats.active. That is their contract with the worker; random arguments break it.
    let mut whole: BTreeSet<Vec<u8>> = BTreeSet::new();
    if reply.is_some() && (name == "complete" || name == "requeue") {
        let (mut i, per, d_at) = if name == "complete" {
            (2, 5, 3)
        } else {
            (1, 1, 2)
        };
        while i + d_at < argv.len() {
            if argv[i + 1] == b"1" {
                whole.insert(argv[i].clone());
            }
            let d: usize = String::from_utf8_lossy(&argv[i + d_at])
                .parse()
                .unwrap_or(0);
            i += d_at + 1 + per * d.min(10_000);
        }
        if !whole.is_empty() {
            run.trusted_stats = false;
        }
    }
    // Only what this call broke counts (a shrunk scenario may start from a broken state).
    if name == "fail" && !trusted {
        run.reasons_optional = true;
        for a in argv {
            run.placed_dead.extend(tags_in(a, &ctx.keys));
            run.placed_dead_bytes.insert(a.clone());
        }
    }
    let was: BTreeSet<String> = structure(
        &before,
        &ctx.keys,
        run.trusted_stats,
        &run.placed_dead,
        &run.placed_dead_bytes,
        run.reasons_optional,
    )
    .into_iter()
    .map(|f| f.detail)
    .collect();
    fails.extend(
        structure(
            &after,
            &ctx.keys,
            run.trusted_stats,
            &run.placed_dead,
            &run.placed_dead_bytes,
            run.reasons_optional,
        )
        .into_iter()
        .filter(|f| !was.contains(&f.detail)),
    );
    // Tags: none twice; none gone unless this call may remove it.
    let (tb, ta) = (tags(&before, &ctx.keys), tags(&after, &ctx.keys));
    for (t, places) in &ta {
        if places.len() > 1 && tb.get(t).is_none_or(|p| p.len() < places.len()) {
            fails.push(Failure {
                kind: "DUPLICATED",
                detail: format!(
                    "{name}.lua left {} in {} places: {places:?} (before: {:?})",
                    String::from_utf8_lossy(t),
                    places.len(),
                    tb.get(t)
                ),
            });
        }
    }
    let named: BTreeSet<Vec<u8>> = argv.iter().cloned().collect();
    let named_text: BTreeSet<String> = argv
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // A push of an id whose job is dead replaces that dead job (when it creates the job).
    let mut replaced: BTreeSet<Vec<u8>> = BTreeSet::new();
    if name == "push" {
        if let Some(reply) = &reply {
            let dead: BTreeSet<Vec<u8>> = before
                .zset(&ctx.keys.dead)
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            for (job, rep) in argv[1..].chunks(10).zip(as_array(reply)) {
                if as_array(&rep).get(1).and_then(as_int) == Some(1) && dead.contains(&job[0]) {
                    replaced.insert(job[0].clone());
                }
            }
        }
    }
    // A dead entry is superseded when another job is filed under its id (lib/file.lua), and a
    // push of a dead job's id replaces it: that is the design, not a loss.
    let dead_before: BTreeSet<String> = before
        .zset(&ctx.keys.dead)
        .into_iter()
        .map(|(m, _)| String::from_utf8_lossy(&m).into_owned())
        .collect();
    let (jobs_before, jobs_after) = (before.hash(&ctx.keys.jobs), after.hash(&ctx.keys.jobs));
    let superseded = |place: &str| -> bool {
        place
            .strip_prefix("jobs[")
            .and_then(|id| id.strip_suffix(']'))
            .is_some_and(|id| {
                dead_before.contains(id)
                    && jobs_before
                        .iter()
                        .find(|(k, _)| String::from_utf8_lossy(k) == id)
                        .is_some_and(|(k, v)| jobs_after.get(k).is_some_and(|w| w != v))
            })
    };
    // fetch.lua trims the dead set by the cap and retention it is given (fuzzed ones, here).
    let trimmed = |place: &str| -> bool {
        name == "fetch"
            && !trusted
            && place
                .strip_prefix("jobs[")
                .and_then(|id| id.strip_suffix(']'))
                .is_some_and(|id| dead_before.contains(id))
    };
    // Two jobs with one id that both die in one call: the second supersedes the first.
    let leased_ids = leased_tag_ids(&before, &ctx.keys);
    let dead_after: BTreeSet<Vec<u8>> = after
        .zset(&ctx.keys.dead)
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let buried_over = |t: &Vec<u8>| -> bool {
        leased_ids
            .get(t)
            .is_some_and(|ids| ids.iter().any(|id| dead_after.contains(id)))
    };
    // A trace field that is not UTF-8 is blanked with its tracestate whenever a script rewrites
    // the envelope (lib/envelope.lua): a tag that was only in those fields goes with them.
    let groups_before = before.groups(&ctx.keys);
    let only_in_trace = |t: &Vec<u8>, place: &str| -> bool {
        let Some((g, index)) = place
            .strip_prefix("lease:")
            .and_then(|p| p.strip_suffix(']'))
            .and_then(|p| p.split_once('['))
        else {
            return false;
        };
        let entry = index
            .parse::<usize>()
            .ok()
            .and_then(|i| groups_before.get(g).and_then(|(_, es)| es.get(i)));
        entry
            .and_then(|e| envelope_ok(e).ok())
            .is_some_and(|f| (0..10).all(|i| !scan_tags(&field_str(&f, i)).contains(t)))
    };
    for (t, places) in &tb {
        if ta.contains_key(t)
            || places
                .iter()
                .all(|p| superseded(p) || trimmed(p) || only_in_trace(t, p))
            || buried_over(t)
        {
            continue;
        }
        let may = match name {
            // Outcomes end jobs of the groups they name.
            "complete" | "fail" => places.iter().all(|p| {
                p.strip_prefix("lease:")
                    .and_then(|g| g.split('[').next())
                    .is_some_and(|g| named.contains(g.as_bytes()))
            }),
            "requeue" => places.iter().all(|p| {
                p.strip_prefix("lease:")
                    .and_then(|g| g.split('[').next())
                    .is_some_and(|g| whole.contains(g.as_bytes()))
            }),
            "push" => places.iter().all(|p| {
                p.strip_prefix("jobs[")
                    .and_then(|id| id.strip_suffix(']'))
                    .is_some_and(|id| replaced.iter().any(|r| String::from_utf8_lossy(r) == id))
            }),
            // Deletes remove the jobs they name.
            "delete" => places.iter().all(|p| {
                p.strip_prefix("jobs[")
                    .and_then(|id| id.strip_suffix(']'))
                    .is_some_and(|id| named_text.contains(id))
            }),
            _ => false,
        };
        if !may {
            fails.push(Failure {
                kind: "LOST",
                detail: format!(
                    "{name}.lua made {} disappear from {places:?}",
                    String::from_utf8_lossy(t)
                ),
            });
        }
    }
    // Recovery counts an attempt for every entry it takes back, decodable or not, except a job at
    // or past its group's start mark (parked, never started) that Lua reads as valid and that was
    // not recovered unstarted the time before. (Which hostile entries Lua reads as valid is not
    // this reader's judgement in every case: an entry past the mark may count or not. The model
    // test checks start marks exactly, on valid jobs.)
    let marks = before.hash(&ctx.keys.started);
    let parked = |g: &str, index: usize| -> bool {
        marks
            .get(g.as_bytes())
            .and_then(|m| String::from_utf8_lossy(m).parse::<usize>().ok())
            .is_some_and(|mark| index >= mark)
    };
    let reused = name == "fetch"
        && before.groups(&ctx.keys).contains_key(
            String::from_utf8_lossy(argv.get(7).map(Vec::as_slice).unwrap_or_default()).as_ref(),
        );
    if name == "fetch" && reply.is_some() && !reused {
        // The script's own clock (the first field of its reply).
        let now = reply
            .as_ref()
            .and_then(|r| as_array(r).first().and_then(as_int))
            .unwrap_or(now);
        let gb = before.groups(&ctx.keys);
        let ga = after.groups(&ctx.keys);
        let (mut taken, mut past_mark) = (0i64, 0i64);
        // (A fetch given the id of a group that exists appends to it: only fuzzed ids do; skipped.)
        for (g, (score, entries)) in &gb {
            if score.is_nan() || *score > now as f64 {
                continue;
            }
            let live_before = entries.iter().filter(|e| !e.is_empty()).count() as i64;
            let live_after = ga
                .get(g)
                .map(|(_, e)| e.iter().filter(|e| !e.is_empty()).count() as i64)
                .unwrap_or(0);
            taken += live_before - live_after;
            // (Recovery takes entries from the tail: what is left is the group's head.)
            let left = ga.get(g).map_or(0, |(_, e)| e.len());
            for (index, e) in entries.iter().enumerate().skip(left) {
                if !e.is_empty() && parked(g, index) {
                    past_mark += 1;
                }
            }
        }
        for field in ["recovered", "failed", "processed"] {
            let delta = after.stat(&ctx.keys, field) - before.stat(&ctx.keys, field);
            let (low, high) = if field == "recovered" {
                (taken, taken)
            } else {
                (taken - past_mark, taken)
            };
            if delta < low || delta > high {
                fails.push(Failure {
                    kind: "RECOVERY_COUNT",
                    detail: format!("fetch.lua took back {taken} entries of expired groups ({past_mark} of them past their start mark) but {field} grew by {delta}"),
                });
            }
        }
        // Attempts of valid jobs taken back grow by one.
        let attempts = |snap: &Snapshot| -> BTreeMap<Vec<u8>, i64> {
            let mut out = BTreeMap::new();
            let mut all: Vec<Vec<u8>> = snap.get(&ctx.keys.pending).to_vec();
            all.extend(snap.zset(&ctx.keys.prioritized).into_iter().map(|(e, _)| e));
            all.extend(snap.hash(&ctx.keys.jobs).into_values());
            for (_, (_, entries)) in snap.groups(&ctx.keys) {
                all.extend(entries);
            }
            for e in all {
                if let Ok(f) = envelope_ok(&e) {
                    let p = field_str(&f, 2);
                    if p.starts_with(b"@V") || p.starts_with(b"@T") {
                        out.insert(p, field_int(&f, 4));
                    }
                }
            }
            out
        };
        let (ab, aa) = (attempts(&before), attempts(&after));
        for (g, (score, entries)) in &gb {
            if score.is_nan() || *score > now as f64 {
                continue;
            }
            for (index, e) in entries.iter().enumerate().filter(|(_, e)| !e.is_empty()) {
                let Ok(f) = envelope_ok(e) else { continue };
                let p = field_str(&f, 2);
                let (Some(b), Some(a)) = (ab.get(&p), aa.get(&p)) else {
                    continue;
                };
                let still = ga.get(g).is_some_and(|(_, es)| es.contains(e));
                let counted = *a == b + 1 || (parked(g, index) && a == b);
                if !still
                    && !counted
                    && !ta
                        .get(&p)
                        .is_some_and(|pl| pl.iter().any(|x| x.starts_with("lease:")))
                {
                    fails.push(Failure {
                        kind: "RECOVERY_COUNT",
                        detail: format!(
                            "{} was taken back from expired group {g} with attempt {a}, it had {b}",
                            String::from_utf8_lossy(&p)
                        ),
                    });
                }
            }
        }
    }
    (reply, fails)
}

fn run_script(
    ctx: &mut Ctx,
    run: &mut Run,
    name: &str,
    argv: &[Vec<u8>],
    trusted: bool,
) -> (Option<Value>, Vec<Failure>) {
    let (reply, mut fails) = run_script_all(ctx, run, name, argv, trusted);
    fails.retain(|f| !allowed(f.kind));
    (reply, fails)
}

const LEASE_MS: u64 = 600_000;
const DEFAULT_MAX: u64 = 3;

fn fetch_argv(prefix: &str, want: u64, group: u64) -> Vec<Vec<u8>> {
    [
        prefix.to_string(),
        want.to_string(),
        LEASE_MS.to_string(),
        DEFAULT_MAX.to_string(),
        "100000".into(),
        "1000000000000".into(),
        "1000000000000".into(),
        group.to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// What the worker sends for a leased entry it could not decode (worker/executor.rs): a dead job
/// `~<g>.<i>` whose payload is the bytes, with the reason.
fn worker_fail_args(
    group: &str,
    index: usize,
    entry: &[u8],
    dead: bool,
    delay: u64,
) -> Vec<Vec<u8>> {
    match envelope_ok(entry) {
        Ok(f) => {
            let attempt = field_int(&f, 4).max(0) as u64 + 1;
            let max = match field_int(&f, 5) {
                0 => DEFAULT_MAX,
                m => m as u64,
            };
            let dead = dead || attempt >= max;
            let id = field_str(&f, 0);
            let unique = if f.len() > 9 {
                field_str(&f, 9)
            } else {
                Vec::new()
            };
            let error = format!("failure {attempt}");
            let env = envelope(
                &id,
                field_int(&f, 1) as u64,
                &field_str(&f, 2),
                attempt,
                field_int(&f, 5) as u64,
                field_int(&f, 6),
                &error,
                &String::from_utf8_lossy(&unique),
            );
            vec![
                group.as_bytes().to_vec(),
                index.to_string().into_bytes(),
                id,
                env,
                if dead {
                    b"dead".to_vec()
                } else {
                    b"retry".to_vec()
                },
                if dead {
                    b"0".to_vec()
                } else {
                    delay.to_string().into_bytes()
                },
                if field_int(&f, 1) % 2 == 1 {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                },
                attempt.to_string().into_bytes(),
                error.into_bytes(),
                unique,
            ]
        }
        Err(why) => {
            let id = format!("~{group}.{index}");
            let error = format!("invalid envelope: {why}");
            let error = error.chars().take(200).collect::<String>();
            let env = envelope(id.as_bytes(), 0, entry, 1, 0, 0, &error, "");
            vec![
                group.as_bytes().to_vec(),
                index.to_string().into_bytes(),
                id.into_bytes(),
                env,
                b"dead".to_vec(),
                b"0".to_vec(),
                b"0".to_vec(),
                b"1".to_vec(),
                error.into_bytes(),
                Vec::new(),
            ]
        }
    }
}

/// The complete.lua arguments of a worker finishing these entries of a group.
fn worker_complete_args(
    prefix: &str,
    group: &str,
    done: &[(usize, Vec<u8>)],
    all: bool,
) -> Vec<Vec<u8>> {
    let mut argv = vec![prefix.as_bytes().to_vec(), b"86400".to_vec()];
    let detailed: Vec<&(usize, Vec<u8>)> = done
        .iter()
        .filter(|(_, e)| match envelope_ok(e) {
            Ok(f) => !all || field_int(&f, 1) % 2 == 1 || f.len() > 9,
            Err(_) => !all,
        })
        .collect();
    argv.push(group.as_bytes().to_vec());
    argv.push(if all { b"1".to_vec() } else { b"0".to_vec() });
    argv.push(done.len().to_string().into_bytes());
    argv.push(detailed.len().to_string().into_bytes());
    for (i, e) in detailed {
        let (id, tracked, unique) = match envelope_ok(e) {
            Ok(f) => (
                field_str(&f, 0),
                field_int(&f, 1) % 2 == 1,
                if f.len() > 9 {
                    field_str(&f, 9)
                } else {
                    Vec::new()
                },
            ),
            Err(_) => (format!("~{group}.{i}").into_bytes(), false, Vec::new()),
        };
        argv.extend([
            i.to_string().into_bytes(),
            id,
            if tracked {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            b"done".to_vec(),
            unique,
        ]);
    }
    argv
}

/// Expire every lease, make everything due, fetch and work (valid jobs complete, invalid ones are
/// filed dead as the worker does) until nothing moves; then nothing may be stuck.
fn drain(ctx: &mut Ctx, run: &mut Run) -> Vec<Failure> {
    let mut fails = Vec::new();
    let prefix = ctx.keys.prefix.clone();
    for round in 0..30 {
        let snap = ctx.r.snapshot();
        for (g, (score, _)) in snap.groups(&ctx.keys) {
            if !score.is_nan() && score > 0.0 {
                let _ = ctx.r.cmd(&[
                    b"ZADD".to_vec(),
                    ctx.keys.active.clone().into_bytes(),
                    b"XX".to_vec(),
                    b"1".to_vec(),
                    g.into_bytes(),
                ]);
            }
        }
        for z in [&ctx.keys.scheduled, &ctx.keys.retry] {
            for (m, _) in snap.zset(z) {
                let _ = ctx.r.cmd(&[
                    b"ZADD".to_vec(),
                    z.clone().into_bytes(),
                    b"XX".to_vec(),
                    b"1".to_vec(),
                    m,
                ]);
            }
        }
        let group = format!("{}", 1_000_001 + 2 * round);
        let (reply, f) = run_script(
            ctx,
            run,
            "fetch",
            &fetch_argv(&prefix, 1000, group.parse().unwrap()),
            true,
        );
        fails.extend(f);
        let Some(reply) = reply else { break };
        let leased: Vec<Vec<u8>> = as_array(&reply)
            .iter()
            .skip(4)
            .filter_map(as_bytes)
            .collect();
        if !leased.is_empty() {
            let mut fail_argv = vec![prefix.clone().into_bytes()];
            let mut done = Vec::new();
            for (i, e) in leased.iter().enumerate() {
                if envelope_ok(e).is_ok() {
                    done.push((i, e.clone()));
                } else {
                    fail_argv.extend(worker_fail_args(&group, i, e, true, 0));
                }
            }
            if fail_argv.len() > 1 {
                fails.extend(run_script(ctx, run, "fail", &fail_argv, true).1);
            }
            fails.extend(
                run_script(
                    ctx,
                    run,
                    "complete",
                    &worker_complete_args(&prefix, &group, &done, true),
                    true,
                )
                .1,
            );
        }
        if !fails.is_empty() {
            return fails;
        }
        let snap = ctx.r.snapshot();
        let groups = snap.groups(&ctx.keys);
        let waiting = snap
            .get(&ctx.keys.pending)
            .iter()
            .filter(|e| e.as_slice() != [0x90])
            .count()
            + snap.zset(&ctx.keys.prioritized).len()
            + snap.zset(&ctx.keys.scheduled).len()
            + snap.zset(&ctx.keys.retry).len()
            + groups.len();
        if waiting == 0 {
            // Everything left is dead, with a reason (or an input placed in dead as it is).
            for (id, e) in snap.hash(&ctx.keys.jobs) {
                let placed = run.placed_dead_bytes.contains(&e)
                    || tags_in(&e, &ctx.keys)
                        .iter()
                        .any(|t| run.placed_dead.contains(t));
                match envelope_ok(&e) {
                    Ok(f) if !field_str(&f, 8).is_empty() || run.reasons_optional => {}
                    _ if placed => {}
                    other => fails.push(Failure {
                        kind: "DEAD_WITHOUT_REASON",
                        detail: format!(
                            "after the drain, dead job {} has no reason: {other:?}",
                            cli_quote(&id)
                        ),
                    }),
                }
            }
            return fails;
        }
    }
    let snap = ctx.r.snapshot();
    let mut left = Vec::new();
    for e in snap.get(&ctx.keys.pending) {
        left.push(format!("pending {}", cli_quote(e)));
    }
    for (e, s) in snap.zset(&ctx.keys.prioritized) {
        left.push(format!("prioritized {} @{s}", cli_quote(&e)));
    }
    for z in [&ctx.keys.scheduled, &ctx.keys.retry] {
        for (m, s) in snap.zset(z) {
            left.push(format!("{z} {} @{s}", cli_quote(&m)));
        }
    }
    for (g, (s, e)) in snap.groups(&ctx.keys) {
        left.push(format!("group {g} @{s}: {} entries", e.len()));
    }
    fails.push(Failure {
        kind: "STUCK",
        detail: format!("after 30 rounds of expiring, promoting, fetching and working, entries never move: {left:?}"),
    });
    fails
}

// ---------------------------------------------------------------------------------------------
// Target 1: envelopes where scripts read them.

const NUMBER_STRINGS: [&str; 22] = [
    "0",
    "1",
    "2",
    "-1",
    "1.5",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "0x10",
    " 5",
    "",
    "4294967296",
    "99999999999999999999",
    "-0",
    "1e3",
    "3600000",
    "abc",
    "10000000000001",
    "+1",
    "1 ",
    "\u{0663}",
];

fn number_arg_in(rng: &mut StdRng, valid: std::ops::Range<u64>) -> Vec<u8> {
    let v = rng.random_range(valid).to_string();
    number_arg(rng, &v)
}

fn number_arg(rng: &mut StdRng, valid: &str) -> Vec<u8> {
    if rng.random_bool(0.75) {
        valid.as_bytes().to_vec()
    } else {
        NUMBER_STRINGS[rng.random_range(0..NUMBER_STRINGS.len())]
            .as_bytes()
            .to_vec()
    }
}

/// Generates and runs one scenario (steps are chosen from what the previous steps did), checking
/// as it goes. Returns the steps and the first failures.
fn envelope_scenario(ctx: &mut Ctx, seed: u64) -> (Vec<Step>, Vec<Failure>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let _ = ctx.r.q(&["FLUSHALL"]);
    let mut run = Run {
        trusted_stats: true,
        ..Run::default()
    };
    let mut steps = Vec::new();
    let prefix = ctx.keys.prefix.clone();
    let k = ctx.keys.clone();
    let mut ntag = 0usize;
    let exec = |ctx: &mut Ctx, run: &mut Run, steps: &mut Vec<Step>, step: Step| -> Vec<Failure> {
        let f = run_step(ctx, run, &step);
        steps.push(step);
        f
    };
    macro_rules! go {
        ($step:expr) => {{
            let f = exec(ctx, &mut run, &mut steps, $step);
            if !f.is_empty() {
                return (steps, f);
            }
        }};
    }
    // Valid jobs.
    let valid = rng.random_range(0..4);
    if valid > 0 {
        let mut argv = vec![prefix.clone().into_bytes()];
        for v in 0..valid {
            let id = if rng.random_bool(0.5) {
                format!("v{v}")
            } else {
                String::new()
            };
            let delay = if rng.random_bool(0.2) { "3600000" } else { "0" };
            let priority = if rng.random_bool(0.7) { "0" } else { "2" };
            let tracked = if rng.random_bool(0.5) { "1" } else { "0" };
            let unique = if rng.random_bool(0.3) {
                format!("u{v}")
            } else {
                String::new()
            };
            for a in [
                id.as_str(),
                &format!("@V{v}#"),
                "",
                &rng.random_range(0..4).to_string(),
                priority,
                delay,
                "0",
                tracked,
                &unique,
                "0",
            ] {
                argv.push(a.as_bytes().to_vec());
            }
        }
        go!(Step::Script {
            name: "push".into(),
            argv,
            trusted: true,
        });
    }
    if rng.random_bool(0.5) {
        let g = (rng.random::<u64>() >> 1 | 1).to_string();
        go!(Step::Script {
            name: "fetch".into(),
            argv: fetch_argv(&prefix, rng.random_range(1..4), g.parse().unwrap()),
            trusted: true,
        });
    }
    // Now and then a big expired lease group (recovery takes at most 1000 entries per call, so
    // it spans several fetches), with a few hostile entries inside.
    if rng.random_bool(0.01) {
        let g = (rng.random::<u64>() >> 1 | 1).to_string();
        let n = rng.random_range(1001..2100usize);
        let mut cmd = vec![b"RPUSH".to_vec(), format!("{prefix}lease:{g}").into_bytes()];
        let mut live = 0;
        for i in 0..n {
            let e = match rng.random_range(0..50) {
                0 => Vec::new(),
                1 => {
                    let t = tag(ntag);
                    ntag += 1;
                    hostile_envelope(&mut rng, &t, b"big")
                }
                _ => envelope(
                    format!("big{i}").as_bytes(),
                    0,
                    format!("@V{}#", 10_000 + i).as_bytes(),
                    rng.random_range(0..3),
                    rng.random_range(0..4),
                    0,
                    "",
                    "",
                ),
            };
            live += usize::from(!e.is_empty());
            cmd.push(e);
        }
        go!(Step::Raw(vec![
            cmd,
            vec![
                b"HINCRBY".to_vec(),
                k.stats.clone().into_bytes(),
                b"active".to_vec(),
                live.to_string().into_bytes(),
            ],
            vec![
                b"ZADD".to_vec(),
                k.active.clone().into_bytes(),
                b"1".to_vec(),
                g.into_bytes()
            ],
        ]));
        *ctx.coverage.entry("big expired groups".into()).or_default() += 1;
    }
    // Hostile entries where the scripts read them.
    let now = ctx.r.now_ms();
    for _ in 0..rng.random_range(1..=4) {
        let t = tag(ntag);
        ntag += 1;
        let ids: [&[u8]; 6] = [b"f1", b"f2", b"v0", b"~1", b"x y", &[0xff, 0x01]];
        let id = ids[rng.random_range(0..ids.len())].to_vec();
        let own_id = rng.random_bool(0.8);
        let bytes = hostile_envelope(&mut rng, &t, if own_id { &id } else { b"h" });
        match rng.random_range(0..8) {
            0 => go!(Step::Raw(vec![vec![
                b"LPUSH".to_vec(),
                k.pending.clone().into_bytes(),
                bytes
            ]])),
            1 => go!(Step::Raw(vec![vec![
                b"RPUSH".to_vec(),
                k.pending.clone().into_bytes(),
                bytes
            ]])),
            2 => {
                let score = ["-4398046511104", "0", "4398046511105", "-1e300", "inf"]
                    [rng.random_range(0..5)];
                go!(Step::Raw(vec![vec![
                    b"ZADD".to_vec(),
                    k.prioritized.clone().into_bytes(),
                    score.into(),
                    bytes
                ]]));
            }
            3..=5 => {
                let zkey = [&k.scheduled, &k.retry, &k.dead][rng.random_range(0..3)].clone();
                let snap = ctx.r.snapshot();
                if snap.hash(&k.jobs).contains_key(&id) {
                    continue;
                }
                let score = if zkey == k.dead {
                    now.to_string()
                } else if rng.random_bool(0.7) {
                    "1".into()
                } else {
                    (now + 3_600_000).to_string()
                };
                go!(Step::Raw(vec![
                    vec![
                        b"HSET".to_vec(),
                        k.jobs.clone().into_bytes(),
                        id.clone(),
                        bytes
                    ],
                    vec![b"ZADD".to_vec(), zkey.into_bytes(), score.into_bytes(), id],
                ]));
            }
            _ => {
                // An expired lease group holding it, between valid entries and a tombstone.
                let g = (rng.random::<u64>() >> 1 | 1).to_string();
                let key = format!("{}lease:{g}", prefix);
                let mut entries = vec![bytes];
                let mut live = 1;
                if rng.random_bool(0.5) {
                    let vt = format!("@V{}#", 100 + ntag);
                    entries.insert(
                        0,
                        envelope(
                            format!("w{ntag}").as_bytes(),
                            0,
                            vt.as_bytes(),
                            rng.random_range(0..3),
                            rng.random_range(0..4),
                            0,
                            "",
                            "",
                        ),
                    );
                    live += 1;
                }
                if rng.random_bool(0.3) {
                    entries.insert(rng.random_range(0..entries.len()), Vec::new());
                }
                let mut cmd = vec![b"RPUSH".to_vec(), key.into_bytes()];
                cmd.extend(entries);
                go!(Step::Raw(vec![
                    cmd,
                    vec![
                        b"HINCRBY".to_vec(),
                        k.stats.clone().into_bytes(),
                        b"active".to_vec(),
                        live.to_string().into_bytes()
                    ],
                    vec![
                        b"ZADD".to_vec(),
                        k.active.clone().into_bytes(),
                        b"1".to_vec(),
                        g.into_bytes()
                    ],
                ]));
            }
        }
    }
    // Scripts at work on them.
    for _ in 0..rng.random_range(3..=12) {
        let snap = ctx.r.snapshot();
        let groups: Vec<String> = snap.groups(&k).into_keys().collect();
        let mut ids: Vec<Vec<u8>> = snap.hash(&k.jobs).into_keys().collect();
        ids.extend([b"f1".to_vec(), b"nope".to_vec()]);
        let pick_group = |rng: &mut StdRng| -> Vec<u8> {
            if !groups.is_empty() && rng.random_bool(0.8) {
                groups[rng.random_range(0..groups.len())]
                    .clone()
                    .into_bytes()
            } else {
                [&b"7"[..], b"", b"-1", b"1.5", b"99999999999999999999999"][rng.random_range(0..5)]
                    .to_vec()
            }
        };
        match rng.random_range(0..100) {
            0..=29 => {
                let g = (rng.random::<u64>() >> 1 | 1).to_string();
                let mut argv = fetch_argv(&prefix, rng.random_range(0..6), g.parse().unwrap());
                if rng.random_bool(0.5) {
                    // Some of them parked by the worker: the group gets a start mark.
                    argv.push(rng.random_range(0..4u32).to_string().into_bytes());
                }
                let f = exec(
                    ctx,
                    &mut run,
                    &mut steps,
                    Step::Script {
                        name: "fetch".into(),
                        argv,
                        trusted: true,
                    },
                );
                if !f.is_empty() {
                    return (steps, f);
                }
                let snap = ctx.r.snapshot();
                if let Some((_, entries)) = snap.groups(&k).get(&g) {
                    run.held.insert(g, entries.clone());
                }
            }
            30..=44 => {
                // The worker's outcomes for a group it holds: fail, requeue, then complete.
                let Some(g) = run
                    .held
                    .keys()
                    .nth(rng.random_range(0..run.held.len().max(1)))
                    .cloned()
                else {
                    continue;
                };
                let entries = run.held.remove(&g).unwrap();
                let mut fail_argv = vec![prefix.clone().into_bytes()];
                let mut back = Vec::new();
                let mut done = Vec::new();
                for (i, e) in entries.iter().enumerate() {
                    if envelope_ok(e).is_err() {
                        fail_argv.extend(worker_fail_args(&g, i, e, true, 0));
                        continue;
                    }
                    match rng.random_range(0..4) {
                        0 => fail_argv.extend(worker_fail_args(
                            &g,
                            i,
                            e,
                            false,
                            if rng.random_bool(0.5) { 0 } else { 3_600_000 },
                        )),
                        1 => fail_argv.extend(worker_fail_args(&g, i, e, true, 0)),
                        2 => back.push(i),
                        _ => done.push((i, e.clone())),
                    }
                }
                if fail_argv.len() > 1 {
                    go!(Step::Script {
                        name: "fail".into(),
                        argv: fail_argv,
                        trusted: true
                    });
                }
                if !back.is_empty() {
                    let mut argv = vec![
                        prefix.clone().into_bytes(),
                        g.clone().into_bytes(),
                        b"0".to_vec(),
                        back.len().to_string().into_bytes(),
                    ];
                    argv.extend(back.iter().map(|i| i.to_string().into_bytes()));
                    go!(Step::Script {
                        name: "requeue".into(),
                        argv,
                        trusted: true
                    });
                }
                go!(Step::Script {
                    name: "complete".into(),
                    argv: worker_complete_args(&prefix, &g, &done, true),
                    trusted: true
                });
            }
            45..=52 => {
                // complete.lua with random arguments.
                let mut argv = vec![prefix.clone().into_bytes(), number_arg(&mut rng, "86400")];
                for _ in 0..rng.random_range(1..=2) {
                    let d = rng.random_range(0..3);
                    argv.push(pick_group(&mut rng));
                    argv.push([&b"0"[..], b"1", b"2", b""][rng.random_range(0..4)].to_vec());
                    argv.push(number_arg_in(&mut rng, 0..3));
                    argv.push(number_arg(&mut rng, &d.to_string()));
                    for _ in 0..d {
                        argv.push(number_arg_in(&mut rng, 0..4));
                        argv.push(ids[rng.random_range(0..ids.len())].clone());
                        argv.push([&b"0"[..], b"1", b"x"][rng.random_range(0..3)].to_vec());
                        argv.push(rand_bytes(&mut rng, 4));
                        argv.push([&b""[..], b"u0", b"uf"][rng.random_range(0..3)].to_vec());
                    }
                }
                if rng.random_bool(0.2) {
                    argv.truncate(rng.random_range(1..argv.len()));
                }
                go!(Step::Script {
                    name: "complete".into(),
                    argv,
                    trusted: false
                });
            }
            53..=60 => {
                // fail.lua with random arguments (and hostile envelopes).
                let mut argv = vec![prefix.clone().into_bytes()];
                for _ in 0..rng.random_range(1..=2) {
                    let t = tag(ntag);
                    ntag += 1;
                    let id = ids[rng.random_range(0..ids.len())].clone();
                    argv.push(pick_group(&mut rng));
                    argv.push(number_arg_in(&mut rng, 0..4));
                    argv.push(id.clone());
                    argv.push(hostile_envelope(&mut rng, &t, &id));
                    argv.push([&b"retry"[..], b"dead", b"x"][rng.random_range(0..3)].to_vec());
                    argv.push(number_arg(&mut rng, "0"));
                    argv.push([&b"0"[..], b"1", b"2"][rng.random_range(0..3)].to_vec());
                    argv.push(number_arg(&mut rng, "1"));
                    argv.push(b"boom".to_vec());
                    argv.push([&b""[..], b"u0", b"uf"][rng.random_range(0..3)].to_vec());
                }
                if rng.random_bool(0.15) {
                    argv.truncate(rng.random_range(1..argv.len()));
                }
                go!(Step::Script {
                    name: "fail".into(),
                    argv,
                    trusted: false
                });
            }
            61..=66 => {
                let mut argv = vec![prefix.clone().into_bytes()];
                let n = rng.random_range(0..3);
                argv.push(pick_group(&mut rng));
                argv.push([&b"0"[..], b"1", b"x"][rng.random_range(0..3)].to_vec());
                argv.push(number_arg(&mut rng, &n.to_string()));
                for _ in 0..n {
                    argv.push(number_arg_in(&mut rng, 0..4));
                }
                go!(Step::Script {
                    name: "requeue".into(),
                    argv,
                    trusted: false
                });
            }
            67..=76 => {
                let mut argv = vec![prefix.clone().into_bytes()];
                for _ in 0..rng.random_range(1..=3) {
                    argv.push(ids[rng.random_range(0..ids.len())].clone());
                }
                go!(Step::Script {
                    name: "enqueue_now".into(),
                    argv,
                    trusted: true
                });
            }
            77..=81 => {
                let mut argv = vec![prefix.clone().into_bytes()];
                argv.push(ids[rng.random_range(0..ids.len())].clone());
                go!(Step::Script {
                    name: "delete".into(),
                    argv,
                    trusted: true
                });
            }
            82..=85 => {
                let mut argv = vec![number_arg(&mut rng, "600000")];
                for _ in 0..rng.random_range(0..3) {
                    argv.push(pick_group(&mut rng));
                    // Its start mark: none, a count, or anything.
                    argv.push(match rng.random_range(0..3) {
                        0 => Vec::new(),
                        1 => rng.random_range(0..4u32).to_string().into_bytes(),
                        _ => NUMBER_STRINGS[rng.random_range(0..NUMBER_STRINGS.len())]
                            .as_bytes()
                            .to_vec(),
                    });
                }
                go!(Step::Script {
                    name: "renew".into(),
                    argv,
                    trusted: false
                });
            }
            86..=90 => {
                // A fetch with hostile arguments.
                // (Not the dead-set cap and retention: trimming by them is the point of them.)
                let mut argv = fetch_argv(&prefix, 2, 5);
                argv.push(b"1".to_vec());
                let i = [1, 2, 3, 6, 7, 8][rng.random_range(0..6)];
                argv[i] = NUMBER_STRINGS[rng.random_range(0..NUMBER_STRINGS.len())]
                    .as_bytes()
                    .to_vec();
                go!(Step::Script {
                    name: "fetch".into(),
                    argv,
                    trusted: false
                });
            }
            91..=95 => {
                if let Some(g) = groups.get(rng.random_range(0..groups.len().max(1))) {
                    go!(Step::Raw(vec![vec![
                        b"ZADD".to_vec(),
                        k.active.clone().into_bytes(),
                        b"XX".to_vec(),
                        b"1".to_vec(),
                        g.clone().into_bytes()
                    ]]));
                }
            }
            _ => {
                let zkey = if rng.random_bool(0.5) {
                    &k.scheduled
                } else {
                    &k.retry
                };
                if let Some((m, _)) = snap.zset(zkey).first() {
                    go!(Step::Raw(vec![vec![
                        b"ZADD".to_vec(),
                        zkey.clone().into_bytes(),
                        b"XX".to_vec(),
                        b"1".to_vec(),
                        m.clone()
                    ]]));
                }
            }
        }
    }
    go!(Step::Drain);
    (steps, Vec::new())
}

/// Replays literal steps; returns the first failures and the run's log.
fn replay(ctx: &mut Ctx, steps: &[Step]) -> (Vec<Failure>, usize, Vec<String>) {
    let _ = ctx.r.q(&["FLUSHALL"]);
    let mut run = Run {
        trusted_stats: true,
        ..Run::default()
    };
    for (i, step) in steps.iter().enumerate() {
        let f = run_step(ctx, &mut run, step);
        if !f.is_empty() {
            return (f, i, run.log);
        }
    }
    (Vec::new(), steps.len(), run.log)
}

fn shrink(ctx: &mut Ctx, mut steps: Vec<Step>, kind: &str, deadline: Instant) -> Vec<Step> {
    let mut chunk = steps.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut progress = false;
        while i < steps.len() && Instant::now() < deadline {
            let mut candidate = steps.clone();
            let end = (i + chunk).min(candidate.len());
            candidate.drain(i..end);
            let (f, at, _) = replay(ctx, &candidate);
            if f.first().is_some_and(|f| f.kind == kind) {
                candidate.truncate(at + 1);
                steps = candidate;
                progress = true;
            } else {
                i += chunk;
            }
        }
        if Instant::now() >= deadline || (!progress && chunk == 1) {
            return steps;
        }
        if !progress {
            chunk /= 2;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Target 2: push.lua's arguments.

/// What the rules say of one number field: must be refused, must be accepted, or either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Accept,
    Either,
    Refuse,
}

fn judge_number(s: &[u8], lo: i128, hi: i128, soft_hi: i128) -> Verdict {
    if s.is_empty() {
        return Verdict::Either; // "" counts as 0 in push.lua's header
    }
    let text = std::str::from_utf8(s).unwrap_or("\u{fffd}");
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Verdict::Refuse;
    }
    let Ok(v) = text.parse::<i128>() else {
        return Verdict::Refuse;
    };
    if v < lo || v > soft_hi {
        return Verdict::Refuse;
    }
    if v > hi || (digits.len() > 1 && digits.starts_with('0')) || text == "-0" {
        return Verdict::Either;
    }
    Verdict::Accept
}

fn judge_text(s: &[u8], max: usize, utf8_required: bool) -> Verdict {
    if s.len() > max {
        Verdict::Refuse
    } else if std::str::from_utf8(s).is_err() {
        if utf8_required {
            Verdict::Refuse
        } else {
            Verdict::Either
        }
    } else {
        Verdict::Accept
    }
}

const MAX_MS: i128 = 10_000_000_000_000;
const MAX_EXACT: i128 = 9_007_199_254_740_992;

/// The verdict on one job's 10 fields.
fn judge_job(f: &[Vec<u8>]) -> Verdict {
    // Ids starting with "~" are reserved for generated ones (push.lua since 563cbe3+).
    if f[0].first() == Some(&b'~') {
        return Verdict::Refuse;
    }
    [
        judge_text(&f[0], 200, false),
        Verdict::Accept,
        judge_text(&f[2], usize::MAX, false),
        judge_number(&f[3], 0, 4_294_967_295, 4_294_967_295),
        judge_number(&f[4], -1000, 1000, 1000),
        judge_number(&f[5], 0, MAX_MS, MAX_EXACT),
        judge_number(&f[6], 0, MAX_MS, MAX_EXACT),
        judge_number(&f[7], 0, 127, 127),
        judge_text(&f[8], 200, false),
        judge_number(&f[9], 0, MAX_MS, MAX_EXACT),
    ]
    .into_iter()
    .max()
    .unwrap()
}

fn hostile_field(rng: &mut StdRng, i: usize, n: usize, hostile: bool) -> Vec<u8> {
    if !hostile {
        return match i {
            0 => [&b""[..], b"a", b"b", b"p1"][rng.random_range(0..4)].to_vec(),
            1 => format!("@T{n}#").into_bytes(),
            2 => [&b""[..], b"task"][rng.random_range(0..2)].to_vec(),
            3 => rng.random_range(0..5).to_string().into_bytes(),
            4 => [&b"0"[..], b"0", b"5", b"-5", b"1000", b"-1000"][rng.random_range(0..6)].to_vec(),
            5 | 6 => [&b"0"[..], b"0", b"0", b"3600000"][rng.random_range(0..4)].to_vec(),
            7 => [&b"0"[..], b"1"][rng.random_range(0..2)].to_vec(),
            8 => [&b""[..], b"", b"k1", b"k2"][rng.random_range(0..4)].to_vec(),
            _ => [&b"0"[..], b"0", b"60000"][rng.random_range(0..3)].to_vec(),
        };
    }
    match i {
        0 | 8 => match rng.random_range(0..8) {
            0 => vec![b'i'; 200],
            1 => vec![b'i'; 201],
            2 => vec![b'i'; rng.random_range(250..300)],
            3 => vec![0xff, 0xfe],
            4 => b"~1".to_vec(),
            5 => b"a b\n".to_vec(),
            6 => rand_bytes(rng, 8),
            _ => b"{x}".to_vec(),
        },
        1 => {
            let mut p = rand_bytes(rng, 16);
            p.extend(format!("@T{n}#").into_bytes());
            p
        }
        2 => [&[0xc3u8, 0x28][..], b"n\x00m", &[b'n'; 300][..]][rng.random_range(0..3)].to_vec(),
        _ => {
            let extra: [&str; 14] = [
                "4294967295",
                "-1001",
                "1001",
                "127",
                "128",
                "-5",
                "9007199254740993",
                "10000000000000",
                "1e13",
                "0.0",
                "00",
                "-0",
                "5",
                "007",
            ];
            if rng.random_bool(0.5) {
                NUMBER_STRINGS[rng.random_range(0..NUMBER_STRINGS.len())]
                    .as_bytes()
                    .to_vec()
            } else {
                extra[rng.random_range(0..extra.len())].as_bytes().to_vec()
            }
        }
    }
}

/// Whether push.lua stored the fields it was given for the job tagged `tag`.
fn stored_matches(
    snap: &Snapshot,
    keys: &QueueKeys,
    tag: &[u8],
    f: &[Vec<u8>],
) -> Result<(), String> {
    let mut found = Vec::new();
    let mut all: Vec<(String, Vec<u8>)> = snap
        .get(&keys.pending)
        .iter()
        .map(|e| ("pending".to_string(), e.clone()))
        .collect();
    all.extend(
        snap.zset(&keys.prioritized)
            .into_iter()
            .map(|(e, _)| ("prioritized".to_string(), e)),
    );
    all.extend(
        snap.hash(&keys.jobs)
            .into_iter()
            .map(|(id, e)| (format!("jobs[{}]", String::from_utf8_lossy(&id)), e)),
    );
    for (place, e) in all {
        if e.windows(tag.len()).any(|w| w == tag) {
            found.push((place, e));
        }
    }
    let [(place, e)] = found.as_slice() else {
        return Err(format!(
            "the job tagged {} is in {} places",
            String::from_utf8_lossy(tag),
            found.len()
        ));
    };
    let fields = envelope_ok(e).map_err(|why| {
        format!(
            "stored an invalid envelope in {place}: {why} ({})",
            cli_quote(e)
        )
    })?;
    let num = |s: &[u8]| -> i64 { String::from_utf8_lossy(s).parse().unwrap_or(0) };
    let expect_ok = field_str(&fields, 2) == f[1]
        && field_str(&fields, 3) == f[2]
        && field_int(&fields, 5) == num(&f[3])
        && field_int(&fields, 6) == num(&f[4])
        && field_int(&fields, 1) == num(&f[7])
        && (f[0].is_empty() || field_str(&fields, 0) == f[0]);
    if expect_ok {
        Ok(())
    } else {
        Err(format!(
            "stored {fields:?} for fields {:?}",
            f.iter()
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .collect::<Vec<_>>()
        ))
    }
}

fn push_scenario(ctx: &mut Ctx, seed: u64) -> (Vec<Step>, Vec<Failure>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let _ = ctx.r.q(&["FLUSHALL"]);
    let mut run = Run {
        trusted_stats: true,
        ..Run::default()
    };
    let prefix = ctx.keys.prefix.clone();
    let mut steps = Vec::new();
    let mut n = 0;
    for _ in 0..rng.random_range(1..=6) {
        if rng.random_bool(0.15) {
            // Some state for the next pushes to meet: jobs leased and failing.
            let g = (rng.random::<u64>() >> 1 | 1).to_string();
            let step = Step::Script {
                name: "fetch".into(),
                argv: fetch_argv(&prefix, 3, g.parse().unwrap()),
                trusted: true,
            };
            let f = run_step(ctx, &mut run, &step);
            steps.push(step);
            if !f.is_empty() {
                return (steps, f);
            }
            let snap = ctx.r.snapshot();
            if let Some((_, entries)) = snap.groups(&ctx.keys).get(&g) {
                let mut argv = vec![prefix.clone().into_bytes()];
                for (i, e) in entries.iter().enumerate() {
                    argv.extend(worker_fail_args(&g, i, e, rng.random_bool(0.5), 3_600_000));
                }
                let step = Step::Script {
                    name: "fail".into(),
                    argv,
                    trusted: true,
                };
                let f = run_step(ctx, &mut run, &step);
                steps.push(step);
                if !f.is_empty() {
                    return (steps, f);
                }
                let step = Step::Script {
                    name: "complete".into(),
                    argv: worker_complete_args(&prefix, &g, &[], true),
                    trusted: true,
                };
                let f = run_step(ctx, &mut run, &step);
                steps.push(step);
                if !f.is_empty() {
                    return (steps, f);
                }
            }
            continue;
        }
        let jobs = rng.random_range(1..=3);
        let mut argv = vec![prefix.clone().into_bytes()];
        for _ in 0..jobs {
            // Half the jobs valid, the others with one or two hostile fields.
            let mut bad = [false; 10];
            if rng.random_bool(0.5) {
                for _ in 0..rng.random_range(1..=2) {
                    bad[rng.random_range(0..10)] = true;
                }
            }
            for (i, hostile) in bad.into_iter().enumerate() {
                argv.push(hostile_field(&mut rng, i, n, hostile));
            }
            n += 1;
        }
        if rng.random_bool(0.1) {
            match rng.random_range(0..3) {
                0 => argv.truncate(rng.random_range(1..argv.len())),
                1 => argv.extend((0..rng.random_range(1..10)).map(|_| b"0".to_vec())),
                _ => argv.truncate(1),
            }
        }
        let step = Step::Script {
            name: "push".into(),
            argv,
            trusted: false,
        };
        let f = run_step(ctx, &mut run, &step);
        steps.push(step);
        if !f.is_empty() {
            return (steps, f);
        }
    }
    (steps, Vec::new())
}

/// A push.lua call: the script's checks, then the verdict of the rules on its fields.
fn check_push(ctx: &mut Ctx, run: &mut Run, argv: &[Vec<u8>], trusted: bool) -> Vec<Failure> {
    let (reply, mut fails) = run_script(ctx, run, "push", argv, trusted);
    let shape_ok = argv.len() >= 11 && (argv.len() - 1) % 10 == 0;
    let verdict = if shape_ok {
        argv[1..].chunks(10).map(judge_job).max().unwrap()
    } else {
        Verdict::Refuse
    };
    let fields = |argv: &[Vec<u8>]| -> Vec<String> { argv.iter().map(|a| cli_quote(a)).collect() };
    *ctx.coverage
        .entry(format!(
            "push judged {verdict:?}, {}",
            if reply.is_some() {
                "accepted"
            } else {
                "refused"
            }
        ))
        .or_default() += 1;
    match (&reply, verdict) {
        (Some(_), Verdict::Refuse) => fails.push(Failure {
            kind: "ACCEPTED_INVALID",
            detail: format!(
                "push.lua accepted fields the rules refuse: {:?}",
                fields(&argv[1..])
            ),
        }),
        (None, Verdict::Accept) => fails.push(Failure {
            kind: "REFUSED_VALID",
            detail: format!("push.lua refused valid fields: {:?}", fields(&argv[1..])),
        }),
        _ => {}
    }
    if let Some(reply) = reply {
        let snap = ctx.r.snapshot();
        for (job, rep) in argv[1..].chunks(10).zip(as_array(&reply)) {
            let rep = as_array(&rep);
            if rep.get(1).and_then(as_int) != Some(1) {
                continue;
            }
            let tag_at = job[1].windows(2).position(|w| w == b"@T");
            let Some(at) = tag_at else { continue };
            let end = job[1][at..]
                .iter()
                .position(|b| *b == b'#')
                .map(|e| at + e + 1)
                .unwrap_or(job[1].len());
            if let Err(why) = stored_matches(&snap, &ctx.keys, &job[1][at..end], job) {
                fails.push(Failure {
                    kind: "BAD_STORE",
                    detail: why,
                });
            }
        }
    }
    fails
}

// ---------------------------------------------------------------------------------------------
// The driver: corpus first, then random scenarios for the time budget; failures shrunk, stored
// and reported with their seed and redis-cli commands.

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

fn load_corpus(target: &str) -> Vec<(String, Vec<Step>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(corpus_dir()) else {
        return out;
    };
    let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            panic!("{}: not JSON", path.display());
        };
        if v.get("target").and_then(|t| t.as_str()) != Some(target) {
            continue;
        }
        let steps: Vec<Step> = v
            .get("steps")
            .and_then(|s| s.as_array())
            .map(|s| s.iter().filter_map(step_from_json).collect())
            .unwrap_or_default();
        out.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            steps,
        ));
    }
    out
}

fn store(target: &str, seed: u64, steps: &[Step], failures: &[Failure]) -> Option<PathBuf> {
    let kind = failures.first().map(|f| f.kind).unwrap_or("none");
    let body = json!({
        "target": target,
        "seed": seed,
        "found": failures.iter().map(|f| format!("[{}] {}", f.kind, f.detail)).collect::<Vec<_>>(),
        "steps": steps.iter().map(step_json).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&body).ok()?;
    let name = format!("{target}-{}-{seed:016x}.json", kind.to_lowercase());
    let path = corpus_dir().join(name);
    std::fs::create_dir_all(corpus_dir()).ok()?;
    std::fs::write(&path, text).ok()?;
    Some(path)
}

fn budget(share: f64) -> Duration {
    let secs = std::env::var("OSTQ_FUZZ_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(40.0);
    Duration::from_secs_f64(secs * share)
}

fn report(
    ctx: &mut Ctx,
    target: &str,
    seed: u64,
    steps: Vec<Step>,
    failures: Vec<Failure>,
    shrink_for: Duration,
) -> String {
    let kind = failures[0].kind;
    let mut out = format!("\n=== [{kind}] {target}: OSTQ_FUZZ_SEED={seed}\n");
    for f in &failures {
        let _ = writeln!(out, "  [{}] {}", f.kind, f.detail);
    }
    let shrunk = shrink(ctx, steps, kind, Instant::now() + shrink_for);
    let (again, at, log) = replay(ctx, &shrunk);
    let kept = if again.is_empty() {
        None
    } else {
        store(target, seed, &shrunk[..=at.min(shrunk.len() - 1)], &again)
    };
    let _ = writeln!(
        out,
        "shrunk to {} steps{}:",
        shrunk.len(),
        kept.map(|p| format!(", kept in {}", p.display()))
            .unwrap_or_default()
    );
    for f in &again {
        let _ = writeln!(out, "  [{}] {}", f.kind, f.detail);
    }
    let _ = writeln!(out, "redis-cli (queue \"f\"; $SHA_X = SHA1 of the assembled script X, `ostq script x`; feed to redis-cli's stdin):");
    for line in log {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// A target: generates and runs one scenario from a seed; returns its steps and first failures.
type Scenario = fn(&mut Ctx, u64) -> (Vec<Step>, Vec<Failure>);

fn fuzz(target: &str, share: f64, scenario: Scenario) {
    let server = RedisServer::start().expect("start redis-server");
    let mut ctx = Ctx {
        r: Redis::connect(&server.url()),
        keys: QueueKeys::new("f").unwrap(),
        coverage: BTreeMap::new(),
    };
    let mut failures: BTreeMap<&'static str, (u64, Vec<Step>, Vec<Failure>)> = BTreeMap::new();
    let mut out = String::new();
    // The kept inputs first.
    let corpus = load_corpus(target);
    for (name, steps) in &corpus {
        let (f, _, log) = replay(&mut ctx, steps);
        if !f.is_empty() {
            let _ = writeln!(out, "\n=== kept input {name} fails again:");
            for x in &f {
                let _ = writeln!(out, "  [{}] {}", x.kind, x.detail);
            }
            for line in log {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    let replay_seed = std::env::var("OSTQ_FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let start = Instant::now();
    let mut master = StdRng::seed_from_u64(rand::random());
    let (mut scenarios, mut steps_run) = (0u64, 0u64);
    loop {
        let seed = replay_seed.unwrap_or_else(|| master.random());
        let began = Instant::now();
        let (steps, f) = scenario(&mut ctx, seed);
        if began.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "fuzz {target}: scenario OSTQ_FUZZ_SEED={seed} took {:?}",
                began.elapsed()
            );
        }
        scenarios += 1;
        steps_run += steps.len() as u64;
        if !f.is_empty() {
            failures.entry(f[0].kind).or_insert((seed, steps, f));
        }
        if replay_seed.is_some() || start.elapsed() >= budget(share) {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {target}: {} kept inputs, then {scenarios} scenarios, {steps_run} steps in {secs:.1} s ({:.0} scenarios/s, {:.0} steps/s)",
        corpus.len(),
        scenarios as f64 / secs,
        steps_run as f64 / secs
    );
    eprintln!("fuzz {target} coverage: {:?}", ctx.coverage);
    // Shrinking gets 15 s at most in all, shared by the kinds found.
    let shrink_for = Duration::from_secs(15) / failures.len().max(1) as u32;
    for (_, (seed, steps, f)) in failures {
        out.push_str(&report(&mut ctx, target, seed, steps, f, shrink_for));
    }
    if !out.is_empty() {
        panic!("{out}");
    }
}

#[test]
fn envelopes_where_scripts_read_them() {
    fuzz("envelopes", 0.6, envelope_scenario);
}

#[test]
fn push_arguments() {
    fuzz("push", 0.4, push_scenario);
}
