//! Model-based test of the queue's scripts: a small reference model of one queue, written here in
//! Rust, and a random sequence of operations run side by side against the model and a real
//! redis-server. The scripts are driven directly (`EVALSHA` of the `ostq::scripts` texts), with the
//! worker's side (what `worker/keeper.rs` sends to `fail.lua`, `requeue.lua` and `complete.lua`)
//! simulated here, so every step is deterministic; operator actions go through the `Queue` API
//! (`retry_now`, `delete`, `purge`, `pause`, `resume`, `counts`). Leases expire by rewriting the
//! group's score in `active`, and delayed jobs fall due by rewriting their score, so no step
//! sleeps.
//!
//! The staged lease groups of idle single-queue workers (design §7.2) are driven the same way:
//! a fetch with a stage (`FetchStage`), the staged wait's BLMOVE as one `LMOVE pending lease:<g>
//! RIGHT LEFT` into a group still staged and empty (`Move`), `claim.lua` (`Claim`, or a timed-out
//! wait), the job's outcome before or after its claim (a runnable entry is held, so `Round`
//! settles it), recovery of staged groups, and the wake markers `Queue::pause` and
//! `Queue::set_rate_limit` push per staged group. A staged group's job is active in place but
//! counted in stats.active (and its record says active) only once claimed.
//!
//! After every step the test reads the queue's whole keyspace and checks:
//! - every job pushed is in exactly one place (pending, scheduled, retry, active, dead), or has
//!   completed, or was removed by an operator, and where the model says;
//! - attempts never decrease (except a dead job sent back, which starts over);
//! - no status record and no unique key outlives its job; the counters match;
//! - no script call fails (with valid arguments none should); a failing call wrote nothing.
//!
//! The model follows the rules of design.md (job ids: a clash is filed under `<id>~<n>`, ids
//! starting with `~` are reserved; a dead job's id may be taken over by a push that creates a
//! job; records and unique keys go with the job). Each kind of failure found in the time budget
//! is reported once, with the sequence's seed, the violated invariant, a shrunk list of
//! operations and the Redis commands of the shrunk run. Environment:
//! - `OSTQ_MODEL_SEED=<n>`: replay one sequence (the seed a failure printed);
//! - `OSTQ_MODEL_SECS=<s>`: run for that long (default 25 s); `OSTQ_MODEL_STEPS=<n>`: steps per
//!   sequence (default 30..150, random);
//! - `OSTQ_MODEL_IDS=a,b,x`: the job ids pushes give (default `a,b,c,a~1,~1,x`; each sequence
//!   uses the first 1, 2, 3 or all of them); a seed replays only with the same list;
//! - `OSTQ_MODEL_ALLOW=KIND,KIND`: let those kinds of failure pass, to look past a known hole;
//! - `OSTQ_MODEL_DEBUG=1`: print what a mismatching fetch changed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ostq::keys::QueueKeys;
use ostq_testkit::RedisServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;

// ---------------------------------------------------------------------------------------------
// MessagePack, as much as the test needs (its own codec: the envelopes are checked, not trusted).

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
        let s = b.get(*at..*at + n)?;
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
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(mp_read(b, at, depth + 1)?);
    }
    Some(Mp::Arr(v))
}

fn mp_map(b: &[u8], at: &mut usize, n: usize, depth: usize) -> Option<Mp> {
    let mut v = Vec::new();
    for _ in 0..n {
        let k = mp_read(b, at, depth + 1)?;
        v.push((k, mp_read(b, at, depth + 1)?));
    }
    Some(Mp::Map(v))
}

fn mp_int(v: &Mp) -> Option<i64> {
    match *v {
        Mp::Int(i) => Some(i),
        Mp::UInt(u) => i64::try_from(u).ok(),
        _ => None,
    }
}

fn mp_str(v: &Mp) -> Option<&[u8]> {
    match v {
        Mp::Str(s) => Some(s),
        _ => None,
    }
}

fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= 0xff {
        out.extend([0xcc, v as u8]);
    } else if v <= 0xffff {
        out.push(0xcd);
        out.extend((v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(0xce);
        out.extend((v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend(v.to_be_bytes());
    }
}

fn write_sint(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= -128 {
        out.extend([0xd0, v as i8 as u8]);
    } else if v >= -32768 {
        out.push(0xd1);
        out.extend((v as i16).to_be_bytes());
    } else {
        out.push(0xd2);
        out.extend((v as i32).to_be_bytes());
    }
}

fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= 0xff {
        out.extend([0xd9, n as u8]);
    } else if n <= 0xffff {
        out.push(0xda);
        out.extend((n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend((n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

// ---------------------------------------------------------------------------------------------
// Envelopes.

/// A job's envelope, the fields the model predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Env {
    id: String,
    flags: u64,
    payload: Vec<u8>,
    name: String,
    attempt: u64,
    max_attempts: u64,
    priority: i64,
    last_error: String,
    unique: String,
}

impl Env {
    /// What `Envelope::encode` writes (the worker's rewrite of a failed job).
    fn encode(&self, enqueued_at: u64) -> Vec<u8> {
        let mut out = vec![if self.unique.is_empty() { 0x99 } else { 0x9a }];
        write_str(&mut out, self.id.as_bytes());
        write_uint(&mut out, self.flags);
        write_str(&mut out, &self.payload);
        write_str(&mut out, self.name.as_bytes());
        write_uint(&mut out, self.attempt);
        write_uint(&mut out, self.max_attempts);
        write_sint(&mut out, self.priority);
        write_uint(&mut out, enqueued_at);
        write_str(&mut out, self.last_error.as_bytes());
        if !self.unique.is_empty() {
            write_str(&mut out, self.unique.as_bytes());
        }
        out
    }

    /// Decodes by the rules every reader shares (design §3; `lua/lib/envelope.lua`).
    fn decode(bytes: &[u8]) -> Result<(Env, u64), String> {
        let Some(Mp::Arr(f)) = mp_decode(bytes) else {
            return Err("not a msgpack array".into());
        };
        if f.len() < 9 {
            return Err(format!("{} fields", f.len()));
        }
        let text = |i: usize| -> Result<String, String> {
            let s = mp_str(&f[i]).ok_or_else(|| format!("field {} is {:?}", i + 1, f[i]))?;
            String::from_utf8(s.to_vec()).map_err(|_| format!("field {} is not UTF-8", i + 1))
        };
        let int = |i: usize, lo: i64, hi: i64| -> Result<i64, String> {
            mp_int(&f[i])
                .filter(|v| (lo..=hi).contains(v))
                .ok_or_else(|| format!("field {} is {:?}", i + 1, f[i]))
        };
        let id = text(0)?;
        if id.is_empty() || id.len() > 255 {
            return Err("bad id".into());
        }
        let payload = match &f[2] {
            Mp::Str(s) | Mp::Bin(s) => s.clone(),
            other => return Err(format!("payload is {other:?}")),
        };
        let env = Env {
            id,
            flags: int(1, 0, 127)? as u64,
            payload,
            name: text(3)?,
            attempt: int(4, 0, 4_294_967_295)? as u64,
            max_attempts: int(5, 0, 4_294_967_295)? as u64,
            priority: int(6, -1000, 1000)?,
            last_error: text(8)?,
            unique: if f.len() > 9 {
                text(9).unwrap_or_default()
            } else {
                String::new()
            },
        };
        let enqueued_at = int(7, 0, 1 << 53)? as u64;
        Ok((env, enqueued_at))
    }
}

// ---------------------------------------------------------------------------------------------
// Redis access: one synchronous connection, scripts by EVALSHA, every command logged.

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

/// An argument as redis-cli reads it (double-quoted, with \xNN escapes).
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

struct Scripts {
    push: String,
    fetch: String,
    complete: String,
    fail: String,
    requeue: String,
    renew: String,
    claim: String,
}

struct Redis {
    con: redis::Connection,
    scripts: Scripts,
    names: BTreeMap<String, &'static str>,
    log: Vec<String>,
    logging: bool,
}

impl Redis {
    fn connect(url: &str) -> Redis {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let mut names = BTreeMap::new();
        let mut load = |name: &'static str, src: &str| -> String {
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(src)
                .query(&mut con)
                .unwrap_or_else(|e| panic!("SCRIPT LOAD {name}: {e}"));
            names.insert(sha.clone(), name);
            sha
        };
        let scripts = Scripts {
            push: load("push.lua", ostq::scripts::PUSH),
            fetch: load("fetch.lua", ostq::scripts::FETCH),
            complete: load("complete.lua", ostq::scripts::COMPLETE),
            fail: load("fail.lua", ostq::scripts::FAIL),
            requeue: load("requeue.lua", ostq::scripts::REQUEUE),
            renew: load("renew.lua", ostq::scripts::RENEW),
            claim: load("claim.lua", ostq::scripts::CLAIM),
        };
        Redis {
            con,
            scripts,
            names,
            log: Vec::new(),
            logging: false,
        }
    }

    fn cmd(&mut self, args: &[&[u8]]) -> redis::RedisResult<Value> {
        if self.logging {
            let mut line = String::new();
            for (i, a) in args.iter().enumerate() {
                if i == 1 && args[0] == b"EVALSHA" {
                    let name = self
                        .names
                        .get(std::str::from_utf8(a).unwrap_or_default())
                        .copied()
                        .unwrap_or("?");
                    let _ = write!(
                        line,
                        " $SHA_{}",
                        name.trim_end_matches(".lua").to_uppercase()
                    );
                } else {
                    let _ = write!(line, " {}", cli_quote(a));
                }
            }
            self.log.push(line.trim_start().to_string());
        }
        let mut c = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.con)
    }

    fn q(&mut self, args: &[&str]) -> Value {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn evalsha(&mut self, sha: &str, keys: &[&str], argv: &[Vec<u8>]) -> redis::RedisResult<Value> {
        let n = keys.len().to_string();
        let mut args: Vec<&[u8]> = vec![b"EVALSHA", sha.as_bytes(), n.as_bytes()];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        args.extend(argv.iter().map(Vec::as_slice));
        self.cmd(&args)
    }

    fn now_ms(&mut self) -> i64 {
        let t = as_array(&self.q(&["TIME"]));
        let s: i64 = as_int(&t[0]).unwrap();
        let us: i64 = as_int(&t[1]).unwrap();
        s * 1000 + us / 1000
    }
}

// ---------------------------------------------------------------------------------------------
// A canonical read of the queue's keyspace.

/// Reads every key with its type, content and whether it expires, in one round trip.
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
    /// key → (type, content in a canonical order, has a ttl)
    keys: BTreeMap<String, (String, Vec<Vec<u8>>, bool)>,
}

fn snapshot(r: &mut Redis) -> Snapshot {
    let was = std::mem::replace(&mut r.logging, false);
    let reply = r
        .cmd(&[b"EVAL", SNAPSHOT_LUA.as_bytes(), b"0"])
        .expect("snapshot");
    r.logging = was;
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

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn snapshot_diff(a: &Snapshot, b: &Snapshot) -> String {
    let show = |v: &(String, Vec<Vec<u8>>, bool)| {
        let items: Vec<String> = v.1.iter().map(|x| cli_quote(x)).collect();
        format!(
            "{} [{}]{}",
            v.0,
            items.join(", "),
            if v.2 { " (ttl)" } else { "" }
        )
    };
    let mut out = String::new();
    for (k, v) in &a.keys {
        match b.keys.get(k) {
            None => {
                let _ = write!(out, "\n  deleted {k}: {}", show(v));
            }
            Some(w) if w != v => {
                let _ = write!(out, "\n  changed {k}: {} -> {}", show(v), show(w));
            }
            _ => {}
        }
    }
    for (k, w) in &b.keys {
        if !a.keys.contains_key(k) {
            let _ = write!(out, "\n  created {k}: {}", show(w));
        }
    }
    out
}

/// Everything the invariants look at, decoded.
#[derive(Debug, Default)]
struct Obs {
    pending: Vec<Vec<u8>>,
    prioritized: Vec<(Vec<u8>, f64)>,
    scheduled: BTreeMap<String, f64>,
    retry: BTreeMap<String, f64>,
    dead: BTreeMap<String, f64>,
    jobs: BTreeMap<String, Vec<u8>>,
    active: BTreeMap<String, f64>,
    leases: BTreeMap<String, Vec<Vec<u8>>>,
    /// The start marks: lease group → how many of its entries have started.
    started: BTreeMap<String, String>,
    completed: BTreeSet<String>,
    records: BTreeMap<String, (BTreeMap<String, String>, bool)>,
    dones: BTreeMap<String, bool>,
    uniques: BTreeMap<String, (String, bool)>,
    stats: BTreeMap<String, i64>,
    paused: bool,
    /// The staged lease groups (`ostq:{q}:staged`).
    staged: BTreeSet<String>,
    stray: Vec<String>,
    /// The history hashes summed field by field: (minute hashes, hour hashes); and any of them
    /// without an expiry.
    history: (BTreeMap<String, i64>, BTreeMap<String, i64>),
    /// The totals hash (`hist:all`), field by field, and whether it has an expiry (it must
    /// not).
    history_totals: BTreeMap<String, i64>,
    history_totals_ttl: bool,
    history_without_ttl: Vec<String>,
}

fn observe(r: &mut Redis, keys: &QueueKeys) -> Obs {
    observe_snapshot(&snapshot(r), keys)
}

fn observe_snapshot(snap: &Snapshot, keys: &QueueKeys) -> Obs {
    let p = keys.prefix.as_str();
    let mut o = Obs::default();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let get = |k: &str| snap.keys.get(k).map(|v| v.1.clone()).unwrap_or_default();
    let zset = |k: &str| -> Vec<(Vec<u8>, f64)> {
        get(k)
            .chunks(2)
            .map(|c| (c[0].clone(), text(&c[1]).parse().unwrap_or(f64::NAN)))
            .collect()
    };
    let ids = |v: Vec<(Vec<u8>, f64)>| -> BTreeMap<String, f64> {
        v.into_iter().map(|(m, s)| (text(&m), s)).collect()
    };
    o.pending = get(&keys.pending);
    o.prioritized = zset(&keys.prioritized);
    o.scheduled = ids(zset(&keys.scheduled));
    o.retry = ids(zset(&keys.retry));
    o.dead = ids(zset(&keys.dead));
    o.active = ids(zset(&keys.active));
    o.completed = ids(zset(&keys.completed)).into_keys().collect();
    for c in get(&keys.jobs).chunks(2) {
        o.jobs.insert(text(&c[0]), c[1].clone());
    }
    for c in get(&keys.stats).chunks(2) {
        o.stats
            .insert(text(&c[0]), text(&c[1]).parse().unwrap_or(i64::MIN));
    }
    o.paused = snap.keys.contains_key(&keys.paused);
    o.staged = get(&keys.staged).iter().map(|b| text(b)).collect();
    for c in get(&keys.started).chunks(2) {
        o.started.insert(text(&c[0]), text(&c[1]));
    }
    let fixed: BTreeSet<&str> = [
        &keys.pending,
        &keys.prioritized,
        &keys.scheduled,
        &keys.retry,
        &keys.dead,
        &keys.jobs,
        &keys.active,
        &keys.completed,
        &keys.seq,
        &keys.stats,
        &keys.paused,
        &keys.config,
        &keys.started,
        &keys.staged,
    ]
    .into_iter()
    .map(String::as_str)
    .collect();
    for (key, (_, content, ttl)) in &snap.keys {
        if fixed.contains(key.as_str()) {
            continue;
        }
        let Some(rest) = key.strip_prefix(p) else {
            if key != ostq::keys::QUEUES {
                o.stray.push(key.clone());
            }
            continue;
        };
        if let Some(id) = rest.strip_prefix("job:") {
            let fields = content
                .chunks(2)
                .map(|c| (text(&c[0]), text(&c[1])))
                .collect();
            o.records.insert(id.to_string(), (fields, *ttl));
        } else if let Some(id) = rest.strip_prefix("done:") {
            o.dones.insert(id.to_string(), *ttl);
        } else if let Some(k) = rest.strip_prefix("unique:") {
            o.uniques.insert(k.to_string(), (text(&content[0]), *ttl));
        } else if let Some(g) = rest.strip_prefix("lease:") {
            o.leases.insert(g.to_string(), content.clone());
        } else if rest == "resumed" && *ttl && !o.paused {
            // Queue::resume's signal to idle workers holding the paused queue: it expires by
            // itself, and a pause deletes it (a worker waiting on it would wake at once).
        } else if rest == "hist:all" {
            for pair in content.chunks(2) {
                let n: i64 = text(&pair[1]).parse().unwrap_or(i64::MIN);
                *o.history_totals.entry(text(&pair[0])).or_default() += n;
            }
            o.history_totals_ttl = *ttl;
        } else if rest.starts_with("hist:m:") || rest.starts_with("hist:h:") {
            let sums = if rest.starts_with("hist:m:") {
                &mut o.history.0
            } else {
                &mut o.history.1
            };
            for pair in content.chunks(2) {
                let n: i64 = text(&pair[1]).parse().unwrap_or(i64::MIN);
                *sums.entry(text(&pair[0])).or_default() += n;
            }
            if !*ttl {
                o.history_without_ttl.push(key.clone());
            }
        } else {
            o.stray.push(key.clone());
        }
    }
    o
}

// ---------------------------------------------------------------------------------------------
// The model.

const DEFAULT_MAX: u64 = 3;
const LEASE_MS: u64 = 600_000;
const HOUR_MS: u64 = 3_600_000;
/// Job ids given at push (`OSTQ_MODEL_IDS=a,b` to change them). "a~1" is what lib/file.lua
/// renames a second "a" to; "~1" is what push.lua generates first.
fn id_pool() -> &'static [String] {
    static POOL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        std::env::var("OSTQ_MODEL_IDS")
            .unwrap_or_else(|_| "a,b,c,a~1,~1,x".into())
            .split(',')
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect()
    })
}
const UNIQUE_POOL: [&str; 3] = ["u1", "u2", "u3"];

#[derive(Clone, Debug, PartialEq)]
enum St {
    Pending,
    Scheduled { due: bool },
    Retry { due: bool },
    Active { group: u64, index: usize },
    Dead,
    Completed,
    Gone(&'static str),
}

impl St {
    fn record_state(&self) -> &'static str {
        match self {
            St::Pending => "pending",
            St::Scheduled { .. } => "scheduled",
            St::Retry { .. } => "retry",
            St::Active { .. } => "active",
            St::Dead => "dead",
            St::Completed => "completed",
            St::Gone(_) => "gone",
        }
    }
    /// In a place where a job waits or runs (not finished, not removed).
    fn live(&self) -> bool {
        !matches!(self, St::Completed | St::Gone(_))
    }
    /// Has an entry in the jobs hash.
    fn hashed(&self) -> bool {
        matches!(self, St::Scheduled { .. } | St::Retry { .. } | St::Dead)
    }
}

#[derive(Clone, Debug)]
struct MJob {
    tag: Vec<u8>,
    /// "" for a bare entry not leased yet.
    id: String,
    bare: bool,
    tracked: bool,
    name: String,
    max_attempts: u64,
    priority: i64,
    /// The unique key in the envelope (10th field), "" for none.
    unique: String,
    /// Whether the job still holds that key (taken at push, not yet given up).
    holds: bool,
    attempt: u64,
    last_error: String,
    state: St,
}

impl MJob {
    fn env(&self) -> Env {
        Env {
            id: self.id.clone(),
            flags: u64::from(self.tracked),
            payload: self.tag.clone(),
            name: self.name.clone(),
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            priority: self.priority,
            last_error: self.last_error.clone(),
            unique: self.unique.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct MGroup {
    entries: Vec<Option<usize>>,
    /// Score written by an Expire step (the lease ran out), else None (deadline in the future).
    expired: Option<i64>,
    /// The start mark: entries from here on were parked and never started (None: all started).
    mark: Option<usize>,
    /// A staged group (design §7.2) not yet claimed nor settled: a member of `staged`, its job
    /// (if one was moved in) not counted in stats.active.
    staged: bool,
    /// The staged wait moved the wake marker into it (its one entry; `entries` is then empty).
    marker: bool,
}

/// The simulated worker's view of a group it leased (what the lease keeper knows).
#[derive(Clone, Debug)]
struct Held {
    envs: Vec<Vec<u8>>,
    settled: Vec<bool>,
}

#[derive(Clone, Debug, PartialEq)]
struct Rec {
    state: String,
    /// None when a script wrote the state alone into a record that did not exist.
    attempt: Option<u64>,
    ttl: bool,
}

#[derive(Clone, Debug, PartialEq)]
struct UKey {
    value: String,
    ttl: bool,
    owner: Option<usize>,
}

#[derive(Default, Clone, Debug, PartialEq)]
struct Stats {
    active: i64,
    processed: i64,
    failed: i64,
    recovered: i64,
}

#[derive(Default)]
struct Model {
    jobs: Vec<MJob>,
    groups: BTreeMap<u64, MGroup>,
    held: BTreeMap<u64, Held>,
    records: BTreeMap<String, Rec>,
    ukeys: BTreeMap<String, UKey>,
    completed_index: BTreeSet<String>,
    paused: bool,
    stats: Stats,
    /// Scores written by the test (expired leases, due jobs): small, increasing, deterministic.
    counter: i64,
    /// Last attempt count seen per tag (attempts never decrease).
    seen_attempt: BTreeMap<Vec<u8>, u64>,
    /// Violations found while applying a step (transitions, replies), before the state checks.
    problems: Vec<Problem>,
    next_tag: usize,
    /// The simulated idle workers' staged waits not yet claimed: group → whether the wait has
    /// ended (moved an entry in; a wait not ended may still move one, or time out).
    waits: BTreeMap<u64, bool>,
    /// Wake markers Queue::pause pushed (one per staged group) not yet seen consumed: the
    /// pending list may hold that many besides the scripts' one.
    pushed_markers: usize,
    /// How often each transition happened (reported at the end).
    cov: BTreeMap<&'static str, u64>,
}

macro_rules! cov {
    ($m:expr, $what:expr) => {
        cov!($m, $what, 1)
    };
    ($m:expr, $what:expr, $n:expr) => {
        *$m.cov.entry($what).or_default() += $n as u64
    };
}

#[derive(Clone, Debug)]
struct Problem {
    kind: &'static str,
    detail: String,
}

macro_rules! problem {
    ($m:expr, $kind:expr, $($arg:tt)*) => {
        $m.problems.push(Problem { kind: $kind, detail: format!($($arg)*) })
    };
}

impl Model {
    fn tick(&mut self) -> i64 {
        self.counter += 1;
        self.counter
    }

    /// The job whose envelope the jobs hash holds under `id` (scheduled, retry or dead).
    fn hash_owner(&self, id: &str) -> Option<usize> {
        let owners: Vec<usize> = (0..self.jobs.len())
            .filter(|&h| self.jobs[h].state.hashed() && self.jobs[h].id == id)
            .collect();
        owners.first().copied()
    }

    fn hrec_set(&mut self, id: &str, state: &str, attempt: Option<u64>) {
        match self.records.get_mut(id) {
            Some(r) => {
                r.state = state.to_string();
                if attempt.is_some() {
                    r.attempt = attempt;
                }
            }
            None => {
                self.records.insert(
                    id.to_string(),
                    Rec {
                        state: state.to_string(),
                        attempt,
                        ttl: false,
                    },
                );
            }
        }
    }

    /// `DEL unique:<k>` if it names `id` (what every script that ends a job does).
    fn release(&mut self, by: usize, key: &str, id: &str) {
        if key.is_empty() {
            return;
        }
        if let Some(k) = self.ukeys.get(key) {
            if k.value == id {
                let k = self.ukeys.remove(key).unwrap();
                if let Some(owner) = k.owner {
                    self.jobs[owner].holds = false;
                    if owner != by && !k.ttl {
                        problem!(
                            self,
                            "UNIQUE_STOLEN",
                            "job {} ({}) released unique key {key:?} held by another live job {} ({}, {:?})",
                            self.jobs[by].id,
                            String::from_utf8_lossy(&self.jobs[by].tag),
                            self.jobs[owner].id,
                            String::from_utf8_lossy(&self.jobs[owner].tag),
                            self.jobs[owner].state
                        );
                    }
                }
            }
        }
        if self.jobs[by].unique == key {
            self.jobs[by].holds = false;
        }
    }

    /// lib/file.lua: files job `h` under its id in retry or dead (superseding a dead job with the
    /// same id, or under a fresh id when the id names a waiting job). Returns the id used.
    fn file_job(&mut self, h: usize, state: St) -> String {
        let id = self.jobs[h].id.clone();
        if self.hash_owner(&id).is_some() {
            // The id names a job in scheduled, retry or dead: this one goes under "<id>~<n>",
            // with its record (if tracked) and its unique key (if it names the old id). A fresh
            // id is one with neither an envelope in the hash nor a status record (a tracked job
            // pending or running under it has only the record).
            let fresh = (1..=1000)
                .map(|n| format!("{id}~{n}"))
                .find(|c| self.hash_owner(c).is_none() && !self.records.contains_key(c))
                .unwrap();
            if self.jobs[h].tracked {
                if let Some(r) = self.records.remove(&id) {
                    self.records.insert(fresh.clone(), r);
                }
            }
            let key = self.jobs[h].unique.clone();
            if let Some(k) = self.ukeys.get_mut(&key) {
                if k.value == id {
                    k.value = fresh.clone();
                }
            }
            self.jobs[h].id = fresh;
            cov!(self, "job filed under a fresh id (its id was taken)");
        }
        self.jobs[h].state = state;
        self.jobs[h].id.clone()
    }

    fn ready(&self) -> Vec<usize> {
        (0..self.jobs.len())
            .filter(|&h| self.jobs[h].state == St::Pending)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Operations: generated from the seed alone; references (which group, which job) are selectors
// resolved against the state when the step runs, so a shrunk sequence still makes sense.

#[derive(Clone, Debug)]
enum Timing {
    Now,
    Delay,
    RunAtPast,
    RunAtFuture,
}

#[derive(Clone, Debug)]
struct PushSpec {
    id: Option<usize>,
    tracked: bool,
    named: bool,
    max_attempts: u64,
    priority: i64,
    timing: Timing,
    unique: Option<(usize, bool)>,
}

#[derive(Clone, Debug)]
enum Outc {
    Complete,
    Retry { delay: u64 },
    Dead,
    GiveBack,
}

#[derive(Clone, Debug)]
enum IdSel {
    Pool(usize),
    Existing(usize),
    Missing,
}

#[derive(Clone, Debug)]
enum PurgeWhat {
    All,
    Pending,
    Scheduled,
    Retry,
    Dead,
    Completed,
}

#[derive(Clone, Debug)]
enum Op {
    Push(Vec<PushSpec>),
    Bare,
    /// How many to lease, and how many of them the worker starts at once (None: all).
    Fetch(u64, Option<u64>),
    Round(Vec<(usize, Vec<(usize, Outc)>)>),
    Expire(usize),
    ExpireAll,
    /// The seed that picks each held group's start mark.
    Renew(u64),
    MakeDue(usize),
    RetryNow(Vec<IdSel>),
    RetryAllDead,
    Delete(IdSel),
    Purge(PurgeWhat),
    Pause,
    Resume,
    Counts,
    /// A fetch by an idle single-queue worker: it also stages a group for its wait (fetch.lua
    /// ARGV[10], ARGV[11]).
    FetchStage(u64, Option<u64>),
    /// A staged wait's BLMOVE served: the rightmost pending entry moves into a staged group still
    /// waiting (`LMOVE pending lease:<g> RIGHT LEFT`).
    Move(usize),
    /// claim.lua for a staged wait that ended (moved an entry, or timed out with nothing).
    Claim(usize),
    /// Queue::set_rate_limit then Queue::clear_rate_limit: one wake marker per staged group.
    RateLimitBlip,
}

/// One operation; given ids come from the first `ids` of the pool (a few ids per sequence make
/// clashes common, many make them rare).
fn gen_op(rng: &mut StdRng, ids: usize) -> Op {
    let w = rng.random_range(0..=120);
    let sel = |rng: &mut StdRng| rng.random_range(0..1000usize);
    let idsel = |rng: &mut StdRng| match rng.random_range(0..10) {
        0..=3 => IdSel::Pool(rng.random_range(0..ids)),
        4..=8 => IdSel::Existing(rng.random_range(0..1000)),
        _ => IdSel::Missing,
    };
    match w {
        0..=23 => {
            let n = if rng.random_bool(0.8) {
                1
            } else {
                rng.random_range(2..=3)
            };
            Op::Push(
                (0..n)
                    .map(|_| PushSpec {
                        id: rng.random_bool(0.6).then(|| rng.random_range(0..ids)),
                        tracked: rng.random_bool(0.5),
                        named: rng.random_bool(0.2),
                        max_attempts: [0, 0, 1, 2, 3, 5][rng.random_range(0..6)],
                        priority: if rng.random_bool(0.7) {
                            0
                        } else {
                            [-1000, -3, -1, 1, 2, 1000][rng.random_range(0..6)]
                        },
                        timing: match rng.random_range(0..10) {
                            0..=5 => Timing::Now,
                            6..=7 => Timing::Delay,
                            8 => Timing::RunAtPast,
                            _ => Timing::RunAtFuture,
                        },
                        unique: rng.random_bool(0.35).then(|| {
                            (
                                rng.random_range(0..UNIQUE_POOL.len()),
                                rng.random_bool(0.15),
                            )
                        }),
                    })
                    .collect(),
            )
        }
        24..=27 => Op::Bare,
        28..=47 => Op::Fetch(
            rng.random_range(0..=4),
            rng.random_bool(0.5).then(|| rng.random_range(0..=3)),
        ),
        48..=69 => {
            let groups = if rng.random_bool(0.8) { 1 } else { 2 };
            Op::Round(
                (0..groups)
                    .map(|_| {
                        let jobs = rng.random_range(1..=3);
                        let picks = (0..jobs)
                            .map(|_| {
                                let o = match rng.random_range(0..10) {
                                    0..=3 => Outc::Complete,
                                    4..=5 => Outc::Retry { delay: 0 },
                                    6 => Outc::Retry { delay: HOUR_MS },
                                    7..=8 => Outc::Dead,
                                    _ => Outc::GiveBack,
                                };
                                (sel(rng), o)
                            })
                            .collect();
                        (sel(rng), picks)
                    })
                    .collect(),
            )
        }
        70..=75 => Op::Expire(sel(rng)),
        76 => Op::ExpireAll,
        77..=80 => Op::Renew(rng.random()),
        81..=84 => Op::MakeDue(sel(rng)),
        85..=88 => Op::RetryNow((0..rng.random_range(1..=2)).map(|_| idsel(rng)).collect()),
        89 => Op::RetryAllDead,
        90..=93 => Op::Delete(idsel(rng)),
        94 => Op::Purge(match rng.random_range(0..6) {
            0 => PurgeWhat::All,
            1 => PurgeWhat::Pending,
            2 => PurgeWhat::Scheduled,
            3 => PurgeWhat::Retry,
            4 => PurgeWhat::Dead,
            _ => PurgeWhat::Completed,
        }),
        95 => Op::Pause,
        96..=97 => Op::Resume,
        98..=99 => Op::Counts,
        100..=106 => Op::FetchStage(
            rng.random_range(0..=3),
            rng.random_bool(0.3).then(|| rng.random_range(0..=1)),
        ),
        107..=113 => Op::Move(sel(rng)),
        114..=119 => Op::Claim(sel(rng)),
        _ => Op::RateLimitBlip,
    }
}

// ---------------------------------------------------------------------------------------------
// Running one sequence.

struct Ctx {
    r: Redis,
    rt: tokio::runtime::Runtime,
    queue: ostq::Queue,
    keys: QueueKeys,
    /// The keyspace before the last script call.
    before: Snapshot,
    /// Transitions counted over every sequence run.
    cov: BTreeMap<&'static str, u64>,
}

/// The outcome of a run: the first failing step and its problems, if any.
struct RunResult {
    failed_at: Option<(usize, Vec<Problem>)>,
    steps: usize,
}

fn run_sequence(ctx: &mut Ctx, ops: &[Op], rng_seed: u64) -> RunResult {
    let mut cov = BTreeMap::new();
    let result = run_sequence_counted(ctx, ops, rng_seed, &mut cov);
    for (k, v) in cov {
        *ctx.cov.entry(k).or_default() += v;
    }
    result
}

fn run_sequence_counted(
    ctx: &mut Ctx,
    ops: &[Op],
    rng_seed: u64,
    cov: &mut BTreeMap<&'static str, u64>,
) -> RunResult {
    ctx.r.q(&["FLUSHALL"]);
    ctx.r.log.clear();
    let mut m = Model::default();
    // Group ids: random odd numbers below 2^63, as the worker draws them.
    let mut grng = StdRng::seed_from_u64(rng_seed ^ 0x9e37_79b9_7f4a_7c15);
    let allowed = |p: &Problem| ctx_allowed().iter().any(|k| k == p.kind);
    for (step, op) in ops.iter().enumerate() {
        if ctx.r.logging {
            ctx.r.log.push(format!("# step {step}: {op:?}"));
        }
        apply(ctx, &mut m, op, &mut grng);
        m.problems.retain(|p| !allowed(p));
        if m.problems.is_empty() {
            let obs = observe(&mut ctx.r, &ctx.keys);
            check(&mut m, &obs);
            m.problems.retain(|p| !allowed(p));
        }
        if !m.problems.is_empty() {
            *cov = std::mem::take(&mut m.cov);
            return RunResult {
                failed_at: Some((step, std::mem::take(&mut m.problems))),
                steps: step + 1,
            };
        }
    }
    *cov = std::mem::take(&mut m.cov);
    RunResult {
        failed_at: None,
        steps: ops.len(),
    }
}

/// Kinds of problems to let pass (`OSTQ_MODEL_ALLOW=KIND,KIND`), to look past a known hole.
fn ctx_allowed() -> &'static [String] {
    static ALLOWED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ALLOWED.get_or_init(|| {
        std::env::var("OSTQ_MODEL_ALLOW")
            .unwrap_or_default()
            .split(',')
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect()
    })
}

fn push_keys(k: &QueueKeys) -> Vec<&str> {
    vec![
        &k.pending,
        &k.prioritized,
        &k.scheduled,
        &k.jobs,
        &k.seq,
        &k.config,
        &k.events,
    ]
}

fn fetch_keys(k: &QueueKeys) -> Vec<&str> {
    vec![
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
    ]
}

/// Runs a script; on an error reply, checks that nothing was written and records the problem.
fn script(
    ctx: &mut Ctx,
    m: &mut Model,
    name: &str,
    sha: &str,
    keys: &[&str],
    argv: &[Vec<u8>],
) -> Option<Value> {
    let before = snapshot(&mut ctx.r);
    ctx.before = before.clone();
    match ctx.r.evalsha(sha, keys, argv) {
        Ok(v) => Some(v),
        Err(e) => {
            let after = snapshot(&mut ctx.r);
            if before != after {
                problem!(
                    m,
                    "PARTIAL_WRITE",
                    "{name} failed ({e}) after writing:{}",
                    snapshot_diff(&before, &after)
                );
            }
            problem!(m, "SCRIPT_ERROR", "{name} failed with valid arguments: {e}");
            None
        }
    }
}

fn apply(ctx: &mut Ctx, m: &mut Model, op: &Op, grng: &mut StdRng) {
    match op {
        Op::Push(specs) => op_push(ctx, m, specs),
        Op::Bare => {
            let tag = format!("B{}", m.next_tag).into_bytes();
            m.next_tag += 1;
            let pending = ctx.keys.pending.clone();
            ctx.r.cmd(&[b"LPUSH", pending.as_bytes(), &tag]).unwrap();
            m.jobs.push(MJob {
                tag,
                id: String::new(),
                bare: true,
                tracked: false,
                name: String::new(),
                max_attempts: 0,
                priority: 0,
                unique: String::new(),
                holds: false,
                attempt: 0,
                last_error: String::new(),
                state: St::Pending,
            });
        }
        Op::Fetch(want, start_now) => {
            let group = grng.random::<u64>() >> 1 | 1;
            op_fetch(ctx, m, *want, *start_now, group, None);
        }
        Op::FetchStage(want, start_now) => {
            let group = grng.random::<u64>() >> 1 | 1;
            let stage = grng.random::<u64>() >> 1 | 1;
            op_fetch(ctx, m, *want, *start_now, group, Some(stage));
        }
        Op::Move(sel) => op_move(ctx, m, *sel),
        Op::Claim(sel) => op_claim(ctx, m, *sel),
        Op::RateLimitBlip => {
            if ctx.r.logging {
                ctx.r
                    .log
                    .push("# Queue::set_rate_limit(5, 1 s); Queue::clear_rate_limit()".into());
            }
            let before = count_markers(ctx);
            ctx.rt
                .block_on(ctx.queue.set_rate_limit(5, Duration::from_secs(1)))
                .unwrap();
            ctx.rt.block_on(ctx.queue.clear_rate_limit()).unwrap();
            staged_markers_pushed(ctx, m, "set_rate_limit", before);
        }
        Op::Round(picks) => op_round(ctx, m, picks),
        Op::Expire(sel) => {
            let live: Vec<u64> = m
                .groups
                .iter()
                .filter(|(_, g)| g.expired.is_none())
                .map(|(g, _)| *g)
                .collect();
            if !live.is_empty() {
                let g = live[sel % live.len()];
                expire(ctx, m, g);
            }
        }
        Op::ExpireAll => {
            let live: Vec<u64> = m
                .groups
                .iter()
                .filter(|(_, g)| g.expired.is_none())
                .map(|(g, _)| *g)
                .collect();
            for g in live {
                expire(ctx, m, g);
            }
        }
        Op::Renew(seed) => op_renew(ctx, m, *seed),
        Op::MakeDue(sel) => {
            let waiting: Vec<usize> = (0..m.jobs.len())
                .filter(|&h| {
                    matches!(
                        m.jobs[h].state,
                        St::Scheduled { due: false } | St::Retry { due: false }
                    )
                })
                .collect();
            if !waiting.is_empty() {
                let h = waiting[sel % waiting.len()];
                let score = m.tick().to_string();
                let zkey = if matches!(m.jobs[h].state, St::Scheduled { .. }) {
                    m.jobs[h].state = St::Scheduled { due: true };
                    ctx.keys.scheduled.clone()
                } else {
                    m.jobs[h].state = St::Retry { due: true };
                    ctx.keys.retry.clone()
                };
                let id = m.jobs[h].id.clone();
                ctx.r.q(&["ZADD", &zkey, "XX", &score, &id]);
            }
        }
        Op::RetryNow(sels) => {
            let ids: Vec<String> = sels.iter().map(|s| resolve_id(m, s)).collect();
            op_retry_now(ctx, m, &ids);
        }
        Op::RetryAllDead => {
            let mut ids: Vec<String> = (0..m.jobs.len())
                .filter(|&h| m.jobs[h].state == St::Dead)
                .map(|h| m.jobs[h].id.clone())
                .collect();
            ids.sort();
            if ctx.r.logging {
                ctx.r.log.push("# Queue::retry_all_dead()".into());
            }
            let moved = ctx.rt.block_on(ctx.queue.retry_all_dead());
            let expected = model_retry_now(m, &ids);
            match moved {
                Ok(n) if n == expected => {}
                other => problem!(
                    m,
                    "MODEL_MISMATCH",
                    "retry_all_dead moved {other:?}, the model {expected}"
                ),
            }
        }
        Op::Delete(sel) => {
            let id = resolve_id(m, sel);
            op_delete(ctx, m, &id);
        }
        Op::Purge(what) => op_purge(ctx, m, what),
        Op::Pause => {
            if ctx.r.logging {
                ctx.r.log.push("# Queue::pause()".into());
            }
            let before = count_markers(ctx);
            ctx.rt.block_on(ctx.queue.pause()).unwrap();
            m.paused = true;
            staged_markers_pushed(ctx, m, "pause", before);
        }
        Op::Resume => {
            if ctx.r.logging {
                ctx.r.log.push("# Queue::resume()".into());
            }
            ctx.rt.block_on(ctx.queue.resume()).unwrap();
            m.paused = false;
        }
        Op::Counts => {
            let c = ctx.rt.block_on(ctx.queue.counts()).unwrap();
            let count =
                |f: &dyn Fn(&St) -> bool| m.jobs.iter().filter(|j| f(&j.state)).count() as u64;
            let want = (
                count(&|s| *s == St::Pending),
                m.stats.active as u64,
                count(&|s| matches!(s, St::Scheduled { .. })),
                count(&|s| matches!(s, St::Retry { .. })),
                count(&|s| *s == St::Dead),
                m.completed_index.len() as u64,
                m.paused,
            );
            let got = (
                c.pending,
                c.active,
                c.scheduled,
                c.retry,
                c.dead,
                c.completed,
                c.paused,
            );
            if got != want {
                problem!(m, "COUNTS", "Queue::counts (pending, active, scheduled, retry, dead, completed, paused) = {got:?}, the model says {want:?}");
            }
        }
    }
}

/// Wake markers in the pending list.
fn count_markers(ctx: &mut Ctx) -> usize {
    let pending = ctx.keys.pending.clone();
    as_array(&ctx.r.q(&["LRANGE", &pending, "0", "-1"]))
        .iter()
        .filter(|e| as_bytes(e).is_some_and(|b| b == [0x90]))
        .count()
}

/// Queue::pause and Queue::set_rate_limit push one wake marker per staged group (design §7.2).
fn staged_markers_pushed(ctx: &mut Ctx, m: &mut Model, what: &str, before: usize) {
    let staged = m.groups.values().filter(|g| g.staged).count();
    let pushed = count_markers(ctx).saturating_sub(before);
    if pushed != staged {
        problem!(
            m,
            "MODEL_MISMATCH",
            "Queue::{what} pushed {pushed} wake markers, the model has {staged} staged groups"
        );
    }
    cov!(m, "wake markers pushed for staged groups", pushed);
    m.pushed_markers += pushed;
}

fn resolve_id(m: &Model, sel: &IdSel) -> String {
    match sel {
        IdSel::Pool(i) => id_pool()[*i].clone(),
        IdSel::Missing => "nope".to_string(),
        IdSel::Existing(i) => {
            let mut ids: Vec<String> = m
                .jobs
                .iter()
                .filter(|j| !j.id.is_empty() && !matches!(j.state, St::Gone(_)))
                .map(|j| j.id.clone())
                .collect();
            ids.sort();
            ids.dedup();
            if ids.is_empty() {
                "nope".to_string()
            } else {
                ids[i % ids.len()].clone()
            }
        }
    }
}

fn expire(ctx: &mut Ctx, m: &mut Model, g: u64) {
    let score = m.tick();
    m.groups.get_mut(&g).unwrap().expired = Some(score);
    let active = ctx.keys.active.clone();
    ctx.r
        .q(&["ZADD", &active, "XX", &score.to_string(), &g.to_string()]);
}

fn op_push(ctx: &mut Ctx, m: &mut Model, specs: &[PushSpec]) {
    let mut argv: Vec<Vec<u8>> = vec![ctx.keys.prefix.clone().into_bytes()];
    let mut tags = Vec::new();
    for s in specs {
        let tag = format!("P{}", m.next_tag).into_bytes();
        m.next_tag += 1;
        let (delay, run_at) = match s.timing {
            Timing::Now => (0, 0),
            Timing::Delay => (HOUR_MS, 0),
            Timing::RunAtPast => (0, 1),
            Timing::RunAtFuture => (0, 4_102_444_800_000u64),
        };
        let (ukey, ttl) = match s.unique {
            Some((k, ttl)) => (UNIQUE_POOL[k], if ttl { HOUR_MS } else { 0 }),
            None => ("", 0),
        };
        argv.push(s.id.map(|i| id_pool()[i].as_str()).unwrap_or("").into());
        argv.push(tag.clone());
        argv.push(if s.named { b"n".to_vec() } else { Vec::new() });
        argv.push(s.max_attempts.to_string().into());
        argv.push(s.priority.to_string().into());
        argv.push(delay.to_string().into());
        argv.push(run_at.to_string().into());
        argv.push(if s.tracked {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        });
        argv.push(ukey.into());
        argv.push(ttl.to_string().into());
        tags.push(tag);
    }
    // Given ids may not start with "~" (generated ids do): the whole call is refused.
    let reserved = specs
        .iter()
        .any(|s| s.id.is_some_and(|i| id_pool()[i].starts_with('~')));
    if reserved {
        let keys = push_keys(&ctx.keys)
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sha = ctx.r.scripts.push.clone();
        let before = snapshot(&mut ctx.r);
        let reply = ctx.r.evalsha(&sha, &keys, &argv);
        let after = snapshot(&mut ctx.r);
        match reply {
            Ok(v) => problem!(m, "ID_COLLISION", "push.lua accepted a given id starting with \"~\" (reserved for generated ids): {v:?}"),
            Err(e) if before != after => problem!(m, "PARTIAL_WRITE", "push.lua refused a reserved id ({e}) after writing:{}", snapshot_diff(&before, &after)),
            Err(_) => cov!(m, "pushes refused: reserved id"),
        }
        return;
    }
    let keys = push_keys(&ctx.keys)
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let sha = ctx.r.scripts.push.clone();
    let Some(reply) = script(ctx, m, "push.lua", &sha, &keys, &argv) else {
        return;
    };
    let replies = as_array(&reply);
    if replies.len() != specs.len() {
        problem!(
            m,
            "MODEL_MISMATCH",
            "push.lua answered {} jobs for {}",
            replies.len(),
            specs.len()
        );
        return;
    }
    for ((s, tag), rep) in specs.iter().zip(tags).zip(replies) {
        let rep = as_array(&rep);
        let got_id = rep
            .first()
            .and_then(as_bytes)
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        let got_created = rep.get(1).and_then(as_int);
        let got_why = rep
            .get(2)
            .and_then(as_bytes)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let mut id = s.id.map(|i| id_pool()[i].clone()).unwrap_or_default();
        // Which waiting job already has this id (scheduled, retry; tracked and pending/active).
        let mut taken = String::new();
        if !id.is_empty() {
            // A tracked job that is pending or running, then a scheduled or retry job.
            let st = m
                .records
                .get(&id)
                .map(|r| r.state.clone())
                .unwrap_or_default();
            if st == "pending" || st == "active" {
                taken = st;
            } else {
                match m.hash_owner(&id) {
                    Some(o) if matches!(m.jobs[o].state, St::Scheduled { .. }) => {
                        taken = "scheduled".into()
                    }
                    Some(o) if matches!(m.jobs[o].state, St::Retry { .. }) => {
                        taken = "retry".into()
                    }
                    _ => {}
                }
            }
        } else {
            let held = s
                .unique
                .is_some_and(|(k, _)| m.ukeys.contains_key(UNIQUE_POOL[k]));
            match &got_id {
                Some(g) if g.starts_with('~') || held => id = g.clone(),
                other => {
                    problem!(m, "MODEL_MISMATCH", "push.lua generated id {other:?}");
                    return;
                }
            }
        }
        let (ukey, ttl) = match s.unique {
            Some((k, ttl)) => (UNIQUE_POOL[k].to_string(), ttl),
            None => (String::new(), false),
        };
        let holder = if taken.is_empty() && !ukey.is_empty() {
            m.ukeys.get(&ukey).map(|k| k.value.clone())
        } else {
            None
        };
        let expect = if !taken.is_empty() {
            (id.clone(), 0, taken.clone())
        } else if let Some(holder) = &holder {
            (holder.clone(), 0, "unique".to_string())
        } else {
            (id.clone(), 1, String::new())
        };
        let got = (
            got_id.clone().unwrap_or_default(),
            got_created.unwrap_or(-1),
            got_why.clone(),
        );
        let reason_differs = got.1 == 0
            && expect.1 == 0
            && got.2 != expect.2
            && (got.2 == "unique" || expect.2 == "unique");
        if (got.1 == 1) != (expect.1 == 1) || reason_differs {
            let same: Vec<String> = m
                .jobs
                .iter()
                .filter(|j| j.id == id && !matches!(j.state, St::Gone(_)))
                .map(|j| {
                    format!(
                        "{} {:?}{}",
                        String::from_utf8_lossy(&j.tag),
                        j.state,
                        if j.tracked { " tracked" } else { "" }
                    )
                })
                .collect();
            problem!(m, "ID_REUSE", "push.lua of {} with id {id:?} answered {got:?}; the rule (refuse an id that names a scheduled, retry, or tracked pending/active job; reuse a dead job's id) expects {expect:?}; jobs with this id: {same:?}", String::from_utf8_lossy(&tag));
        } else if got.0 != expect.0
            || got.1 != expect.1
            || (expect.1 == 0 && !got.2.is_empty() && got.2 != expect.2)
        {
            problem!(
                m,
                "MODEL_MISMATCH",
                "push.lua of {} (id {:?}) answered {got:?}, the model expects {expect:?}",
                String::from_utf8_lossy(&tag),
                id
            );
            return;
        }
        // From here on the model follows what the script did.
        if got.1 != 1 {
            cov!(
                m,
                if got.2 == "unique" {
                    "pushes refused: unique key held"
                } else {
                    "pushes refused: id taken"
                }
            );
            continue;
        }
        cov!(m, "jobs pushed");
        if s.id.is_none() {
            let same: Vec<String> = m
                .jobs
                .iter()
                .filter(|j| j.id == id && !matches!(j.state, St::Gone(_)))
                .map(|j| format!("{} {:?}", String::from_utf8_lossy(&j.tag), j.state))
                .collect();
            if !same.is_empty() {
                problem!(
                    m,
                    "ID_COLLISION",
                    "push.lua generated the id {id:?} for {}, which jobs already have: {same:?}",
                    String::from_utf8_lossy(&tag)
                );
            }
        }
        if let Some(o) = m.hash_owner(&id).filter(|&o| m.jobs[o].state == St::Dead) {
            m.jobs[o].state = St::Gone("dead job replaced by a push of its id");
            m.records.remove(&id);
        }
        if s.id.is_some() {
            // The index entry of a completed job with this id would name the new job's record.
            m.completed_index.remove(&id);
        }
        let h = m.jobs.len();
        let scheduled = matches!(s.timing, Timing::Delay | Timing::RunAtFuture);
        if !ukey.is_empty() {
            m.ukeys.insert(
                ukey.clone(),
                UKey {
                    value: id.clone(),
                    ttl,
                    owner: (!ttl).then_some(h),
                },
            );
        }
        m.jobs.push(MJob {
            tag,
            id: id.clone(),
            bare: false,
            tracked: s.tracked,
            name: if s.named { "n".into() } else { String::new() },
            max_attempts: s.max_attempts,
            priority: s.priority,
            unique: if ttl { String::new() } else { ukey.clone() },
            holds: !ukey.is_empty() && !ttl,
            attempt: 0,
            last_error: String::new(),
            state: if scheduled {
                St::Scheduled { due: false }
            } else {
                St::Pending
            },
        });
        if s.tracked {
            m.records.insert(
                id.clone(),
                Rec {
                    state: if scheduled { "scheduled" } else { "pending" }.into(),
                    attempt: Some(0),
                    ttl: false,
                },
            );
        }
    }
}

/// The error of a job recovered before it started (fetch.lua).
const UNSTARTED: &str = "lease expired before the job started: its worker was lost";

/// fetch.lua's housekeeping in the model: recovery of expired groups, then promotion.
/// Returns whether it put a job with a priority into `prioritized` (which may wake workers with a
/// marker on the pending list).
fn model_housekeeping(m: &mut Model) -> bool {
    let mut routed_prioritized = false;
    let mut expired: Vec<(i64, u64)> = m
        .groups
        .iter()
        .filter_map(|(g, grp)| grp.expired.map(|s| (s, *g)))
        .collect();
    expired.sort();
    for (_, g) in expired {
        let grp = m.groups.remove(&g).unwrap();
        // A staged group recovered before its claim: its job was never counted as active.
        let counted = !grp.staged;
        if grp.staged {
            cov!(m, "staged groups recovered before their claim");
            // Its wait's entry, as claim.lua would have taken it: the wake marker is dropped (no
            // job), a bare entry is wrapped under the id ~<g>.<index> and recovered as a job.
            for (index, h) in grp.entries.iter().enumerate() {
                if let Some(h) = *h {
                    if m.jobs[h].bare {
                        m.jobs[h].id = format!("~{g}.{index}");
                        m.jobs[h].bare = false;
                        cov!(m, "bare entries of staged groups recovered as jobs");
                    }
                }
            }
            if grp.marker {
                cov!(m, "wake markers of staged groups dropped by recovery");
            }
        }
        let (mut lost, mut ran) = (0, 0);
        for index in (0..grp.entries.len()).rev() {
            let Some(h) = grp.entries[index] else {
                continue;
            };
            lost += 1;
            let parked = grp.mark.is_some_and(|mark| index >= mark);
            if parked && m.jobs[h].last_error == UNSTARTED {
                cov!(
                    m,
                    "parked entries recovered twice in a row: attempt counted"
                );
            }
            if parked && m.jobs[h].last_error != UNSTARTED {
                // Parked and never started: back at the head, attempt not counted.
                m.jobs[h].last_error = UNSTARTED.to_string();
                m.jobs[h].state = St::Pending;
                routed_prioritized |= m.jobs[h].priority != 0;
                if m.jobs[h].tracked {
                    let id = m.jobs[h].id.clone();
                    m.hrec_set(&id, "pending", None);
                }
                cov!(m, "parked entries recovered without an attempt");
                continue;
            }
            ran += 1;
            let attempt = m.jobs[h].attempt + 1;
            let max = if m.jobs[h].max_attempts == 0 {
                DEFAULT_MAX
            } else {
                m.jobs[h].max_attempts
            };
            let err = format!("lease expired: the worker running attempt {attempt} was lost");
            m.jobs[h].attempt = attempt;
            m.jobs[h].last_error = err;
            let tracked = m.jobs[h].tracked;
            if attempt >= max {
                let (key, id) = (m.jobs[h].unique.clone(), m.jobs[h].id.clone());
                m.release(h, &key, &id);
                let id = m.file_job(h, St::Dead);
                if tracked {
                    m.hrec_set(&id, "dead", Some(attempt));
                }
            } else {
                m.jobs[h].state = St::Pending;
                routed_prioritized |= m.jobs[h].priority != 0;
                if tracked {
                    let id = m.jobs[h].id.clone();
                    m.hrec_set(&id, "pending", Some(attempt));
                }
            }
        }
        if counted {
            m.stats.active -= lost;
        }
        m.stats.recovered += lost;
        cov!(m, "entries recovered from expired groups", lost);
        m.stats.processed += ran;
        m.stats.failed += ran;
    }
    for h in 0..m.jobs.len() {
        if matches!(
            m.jobs[h].state,
            St::Scheduled { due: true } | St::Retry { due: true }
        ) {
            m.jobs[h].state = St::Pending;
            routed_prioritized |= m.jobs[h].priority != 0;
            cov!(m, "scheduled or retry jobs promoted");
            if m.jobs[h].tracked {
                let id = m.jobs[h].id.clone();
                m.hrec_set(&id, "pending", None);
            }
        }
    }
    routed_prioritized
}

/// Where a job of this priority is taken: priority > 0 first (highest first), then 0, then < 0.
fn class(priority: i64) -> (u8, i64) {
    match priority {
        p if p > 0 => (0, -p),
        0 => (1, 0),
        p => (2, -p),
    }
}

/// The staged group's horizon, as the worker sets it (a minute's wait plus a lease).
const STAGE_HORIZON_MS: u64 = 60_000 + LEASE_MS;

fn op_fetch(
    ctx: &mut Ctx,
    m: &mut Model,
    want: u64,
    start_now: Option<u64>,
    group: u64,
    stage: Option<u64>,
) {
    let mut argv: Vec<Vec<u8>> = [
        ctx.keys.prefix.clone(),
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
    .collect();
    if let Some(n) = start_now {
        argv.push(n.to_string().into_bytes());
    } else if stage.is_some() {
        argv.push(Vec::new());
    }
    if let Some(g) = stage {
        argv.push(g.to_string().into_bytes());
        argv.push(STAGE_HORIZON_MS.to_string().into_bytes());
    }
    let keys = fetch_keys(&ctx.keys)
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let sha = ctx.r.scripts.fetch.clone();
    let Some(reply) = script(ctx, m, "fetch.lua", &sha, &keys, &argv) else {
        return;
    };
    let routed_prioritized = model_housekeeping(m);
    let reply = as_array(&reply);
    let got_group = reply.get(2).and_then(as_int).unwrap_or(-1);
    let envs: Vec<Vec<u8>> = reply.iter().skip(4).filter_map(as_bytes).collect();
    let ready = m.ready();
    // The wake marker, when RPOP reaches it, takes one of the slots asked for (and is dropped).
    let markers = |snap: &Snapshot| {
        snap.keys
            .get(&ctx.keys.pending)
            .map(|v| v.1.iter().filter(|e| e.as_slice() == [0x90]).count())
            .unwrap_or(0)
    };
    // (Recovery and promotion add one when they put a job into `prioritized` while the list is
    // empty; the same call can then pop it: a fetch of 1 then leases nothing.)
    let consumed = markers(&ctx.before).saturating_sub(markers(&snapshot(&mut ctx.r)));
    m.pushed_markers = m.pushed_markers.saturating_sub(consumed);
    let expect_n = if m.paused {
        0
    } else {
        ready.len().min(want as usize)
    };
    // (RPOP runs twice at most: markers in the second pop, several when pause pushed one per
    // staged group, each take a slot.)
    let marker_slot = (consumed > 0 || routed_prioritized)
        && envs.len() < expect_n
        && envs.len() + consumed + usize::from(routed_prioritized) >= expect_n;
    if marker_slot {
        cov!(m, "fetch slots taken by the wake marker");
    }
    if envs.len() != expect_n && !marker_slot {
        let show = |snap: &Snapshot, key: &str| -> Vec<String> {
            snap.keys
                .get(key)
                .map(|v| v.1.iter().map(|e| cli_quote(e)).collect())
                .unwrap_or_default()
        };
        problem!(
            m,
            "MODEL_MISMATCH",
            "fetch.lua of {want} leased {} jobs, the model expects {expect_n} (paused: {}, ready: {}; before the call pending was {:?} and prioritized {:?})",
            envs.len(),
            m.paused,
            ready.len(),
            show(&ctx.before, &ctx.keys.pending),
            show(&ctx.before, &ctx.keys.prioritized)
        );
        if std::env::var("OSTQ_MODEL_DEBUG").is_ok() {
            let after = snapshot(&mut ctx.r);
            eprintln!("fetch changed:{}", snapshot_diff(&ctx.before, &after));
        }
    }
    let hold = reply.get(3).and_then(as_int).unwrap_or(-1);
    if let Some(stage) = stage {
        // fetch.lua stages when it leased nothing, was asked for some, and the queue is neither
        // paused nor rate-limited (the model never leaves a rate limit set).
        let expect_hold = if m.paused {
            1
        } else if envs.is_empty() && want > 0 {
            3
        } else {
            0
        };
        if hold != expect_hold {
            problem!(
                m,
                "MODEL_MISMATCH",
                "fetch.lua with a stage answered hold {hold}, the model {expect_hold} (leased {}, want {want})",
                envs.len()
            );
        }
        if hold == 3 {
            cov!(m, "groups staged");
            m.groups.insert(
                stage,
                MGroup {
                    entries: Vec::new(),
                    expired: None,
                    mark: None,
                    staged: true,
                    marker: false,
                },
            );
            m.waits.insert(stage, false);
        }
    } else if hold == 3 {
        problem!(
            m,
            "MODEL_MISMATCH",
            "fetch.lua without a stage answered hold 3"
        );
    }
    if envs.is_empty() {
        if got_group != 0 {
            problem!(
                m,
                "MODEL_MISMATCH",
                "fetch.lua leased nothing but answered group {got_group}"
            );
        }
        return;
    }
    if got_group != group as i64 {
        problem!(
            m,
            "MODEL_MISMATCH",
            "fetch.lua answered group {got_group}, asked for {group}"
        );
    }
    let mut entries = Vec::new();
    for (index, bytes) in envs.iter().enumerate() {
        let decoded = Env::decode(bytes);
        let Ok((env, _)) = decoded else {
            problem!(
                m,
                "INVALID_LEASED",
                "fetch.lua leased an invalid envelope {}: {:?}",
                hex(bytes),
                decoded.err()
            );
            return;
        };
        let Some(h) = (0..m.jobs.len()).find(|&h| m.jobs[h].tag == env.payload) else {
            problem!(
                m,
                "UNKNOWN_ENTRY",
                "fetch.lua leased a job the model does not know: {env:?}"
            );
            return;
        };
        if m.jobs[h].state != St::Pending {
            problem!(
                m,
                "LEASED_TWICE",
                "fetch.lua leased {} ({:?}), which is {:?} in the model",
                String::from_utf8_lossy(&env.payload),
                env.id,
                m.jobs[h].state
            );
            return;
        }
        if m.jobs[h].bare {
            m.jobs[h].id = format!("~{group}.{index}");
            m.jobs[h].bare = false;
        }
        m.jobs[h].state = St::Active { group, index };
        if m.jobs[h].tracked {
            let id = m.jobs[h].id.clone();
            if let Some(r) = m.records.get_mut(&id) {
                r.state = "active".into();
            }
        }
        entries.push(Some(h));
    }
    // Priority order: nothing left waiting may come before a job taken.
    let best_left = m
        .ready()
        .into_iter()
        .map(|h| class(m.jobs[h].priority))
        .min();
    let worst_taken = entries
        .iter()
        .flatten()
        .map(|&h| class(m.jobs[h].priority))
        .max();
    if let (Some(left), Some(taken)) = (best_left, worst_taken) {
        if left < taken {
            let pending: Vec<String> = ctx
                .before
                .keys
                .get(&ctx.keys.pending)
                .map(|v| v.1.iter().map(|e| cli_quote(e)).collect())
                .unwrap_or_default();
            problem!(
                m,
                "ORDER",
                "fetch.lua took a job of class {taken:?} while one of class {left:?} waits (pending before the call: {pending:?})"
            );
        }
    }
    m.stats.active += entries.len() as i64;
    m.held.insert(
        group,
        Held {
            envs: envs.clone(),
            settled: vec![false; envs.len()],
        },
    );
    cov!(m, "jobs leased", entries.len());
    // (No mark when every leased job starts at once.)
    let mark = start_now.map(|n| n as usize).filter(|&n| n < entries.len());
    if mark.is_some() {
        cov!(m, "groups leased with parked jobs");
    }
    m.groups.insert(
        group,
        MGroup {
            entries,
            expired: None,
            mark,
            staged: false,
            marker: false,
        },
    );
}

/// A staged wait served (design §7.2): its BLMOVE moves the rightmost pending entry into the
/// group. Only a group still staged and waiting, once; nothing when the list is empty (the wait
/// would go on).
fn op_move(ctx: &mut Ctx, m: &mut Model, sel: usize) {
    let waiting: Vec<u64> = m
        .waits
        .iter()
        .filter(|(g, ended)| {
            !**ended
                && m.groups
                    .get(g)
                    .is_some_and(|grp| grp.staged && grp.entries.is_empty() && !grp.marker)
        })
        .map(|(g, _)| *g)
        .collect();
    if waiting.is_empty() {
        return;
    }
    let g = waiting[sel % waiting.len()];
    let pending = ctx.keys.pending.clone();
    let lease = format!("{}lease:{g}", ctx.keys.prefix);
    let reply = ctx
        .r
        .cmd(&[
            b"LMOVE",
            pending.as_bytes(),
            lease.as_bytes(),
            b"RIGHT",
            b"LEFT",
        ])
        .unwrap();
    let Some(bytes) = as_bytes(&reply) else {
        let waiting_jobs = m
            .jobs
            .iter()
            .filter(|j| j.state == St::Pending && j.priority == 0)
            .count();
        if waiting_jobs > 0 {
            problem!(
                m,
                "MODEL_MISMATCH",
                "the pending list is empty, the model has {waiting_jobs} jobs in it"
            );
        }
        return;
    };
    m.waits.insert(g, true);
    if bytes.as_slice() == [0x90] {
        m.groups.get_mut(&g).unwrap().marker = true;
        m.pushed_markers = m.pushed_markers.saturating_sub(1);
        cov!(m, "staged waits woken by the wake marker");
        return;
    }
    let decoded = (0x90..=0x9f)
        .contains(&bytes[0])
        .then(|| Env::decode(&bytes).ok())
        .flatten();
    let tag = decoded
        .as_ref()
        .map_or_else(|| bytes.clone(), |(env, _)| env.payload.clone());
    let Some(h) = (0..m.jobs.len()).find(|&h| m.jobs[h].tag == tag) else {
        problem!(
            m,
            "UNKNOWN_ENTRY",
            "a staged wait moved {} the model does not know",
            hex(&bytes)
        );
        return;
    };
    if m.jobs[h].state != St::Pending || m.jobs[h].priority != 0 {
        problem!(
            m,
            "MODEL_MISMATCH",
            "a staged wait moved {} from pending, which is {:?} (priority {}) in the model",
            String::from_utf8_lossy(&tag),
            m.jobs[h].state,
            m.jobs[h].priority
        );
        return;
    }
    m.jobs[h].state = St::Active { group: g, index: 0 };
    m.groups.get_mut(&g).unwrap().entries = vec![Some(h)];
    // The worker starts an entry it can run as it is at once, before its claim (fetcher.rs
    // `runs_as_is`); a bare entry waits for claim.lua to wrap it.
    let runs_as_is = !m.jobs[h].bare
        && decoded
            .as_ref()
            .is_some_and(|(env, enq)| env.encode(*enq) == bytes);
    if runs_as_is {
        m.held.insert(
            g,
            Held {
                envs: vec![bytes],
                settled: vec![false],
            },
        );
        cov!(
            m,
            "staged waits that moved a job (started before its claim)"
        );
    } else {
        cov!(m, "staged waits that moved a job to run after its claim");
    }
}

/// claim.lua for a staged wait that ended, or timed out (nothing moved): the group becomes an
/// ordinary one unless an outcome or recovery settled it first.
fn op_claim(ctx: &mut Ctx, m: &mut Model, sel: usize) {
    // Mostly a wait that moved an entry (the wait is served soon after a push); one in four
    // picks any wait, which ends it by timeout when it moved nothing.
    let any = sel % 4 == 0;
    let waits: Vec<u64> = m
        .waits
        .iter()
        .filter(|(_, ended)| any || **ended)
        .map(|(g, _)| *g)
        .collect();
    if waits.is_empty() {
        return;
    }
    let g = waits[sel / 4 % waits.len()];
    let ended = m.waits.remove(&g).unwrap();
    if !ended {
        cov!(m, "staged waits timed out");
    }
    let k = &ctx.keys;
    let keys = [
        k.active.clone(),
        k.stats.clone(),
        k.config.clone(),
        k.events.clone(),
    ];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let argv = vec![
        ctx.keys.prefix.clone().into_bytes(),
        g.to_string().into_bytes(),
        LEASE_MS.to_string().into_bytes(),
    ];
    let sha = ctx.r.scripts.claim.clone();
    let Some(reply) = script(ctx, m, "claim.lua", &sha, &keys, &argv) else {
        return;
    };
    let reply = as_array(&reply);
    let flag = reply.first().and_then(as_int);
    let staged = m.groups.get(&g).is_some_and(|grp| grp.staged);
    if !staged {
        cov!(m, "claims after an outcome or recovery settled the group");
        if flag != Some(0) || reply.len() != 1 {
            problem!(
                m,
                "MODEL_MISMATCH",
                "claim.lua of settled group {g} answered {reply:?}, the model {{0}}"
            );
        }
        return;
    }
    let grp = m.groups.get_mut(&g).unwrap();
    grp.staged = false;
    let Some(h) = grp.entries.first().copied().flatten() else {
        // Nothing moved (timed out), or the wake marker: the group is deleted.
        cov!(m, "claims of an empty or woken group");
        m.groups.remove(&g);
        m.held.remove(&g);
        if flag != Some(0) || reply.len() != 1 {
            problem!(
                m,
                "MODEL_MISMATCH",
                "claim.lua of empty group {g} answered {reply:?}, the model {{0}}"
            );
        }
        return;
    };
    grp.expired = None;
    cov!(m, "staged jobs claimed");
    if m.jobs[h].bare {
        m.jobs[h].id = format!("~{g}.0");
        m.jobs[h].bare = false;
    }
    if m.jobs[h].tracked {
        let id = m.jobs[h].id.clone();
        if let Some(r) = m.records.get_mut(&id) {
            r.state = "active".into();
        }
    }
    m.stats.active += 1;
    let entry = reply.get(1).and_then(as_bytes);
    let ok = flag == Some(1)
        && entry
            .as_ref()
            .and_then(|e| Env::decode(e).ok())
            .is_some_and(|(env, _)| env == m.jobs[h].env());
    if !ok {
        problem!(
            m,
            "MODEL_MISMATCH",
            "claim.lua of group {g} answered {reply:?}, the model {{1, {:?}}}",
            m.jobs[h].env()
        );
        return;
    }
    m.held.entry(g).or_insert_with(|| Held {
        envs: vec![entry.unwrap()],
        settled: vec![false],
    });
}

fn op_renew(ctx: &mut Ctx, m: &mut Model, seed: u64) {
    let held: Vec<u64> = m.held.keys().copied().collect();
    if held.is_empty() {
        return;
    }
    // Each group's start mark: no news, or how many of its entries started (any count: the
    // script records what it is told).
    let mut rng = StdRng::seed_from_u64(seed);
    let marks: Vec<Option<usize>> = held
        .iter()
        .map(|g| {
            let len = m.held[g].envs.len();
            rng.random_bool(0.6).then(|| rng.random_range(0..=len))
        })
        .collect();
    let mut argv: Vec<Vec<u8>> = vec![LEASE_MS.to_string().into_bytes()];
    for (g, mark) in held.iter().zip(&marks) {
        argv.push(g.to_string().into_bytes());
        argv.push(mark.map(|n| n.to_string()).unwrap_or_default().into_bytes());
    }
    let keys = [ctx.keys.active.clone(), ctx.keys.started.clone()];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let sha = ctx.r.scripts.renew.clone();
    let Some(reply) = script(ctx, m, "renew.lua", &sha, &keys, &argv) else {
        return;
    };
    for (g, mark) in held.iter().zip(&marks) {
        if let (Some(grp), Some(mark)) = (m.groups.get_mut(g), mark) {
            grp.mark = Some(*mark);
            cov!(m, "start marks renew.lua recorded");
        }
    }
    let mut lost: Vec<u64> = as_array(&reply)
        .iter()
        .filter_map(|v| as_bytes(v).and_then(|b| String::from_utf8_lossy(&b).parse().ok()))
        .collect();
    lost.sort_unstable();
    cov!(m, "groups renew.lua reported lost", lost.len());
    let expect: Vec<u64> = held
        .iter()
        .copied()
        .filter(|g| !m.groups.contains_key(g))
        .collect();
    if lost != expect {
        problem!(
            m,
            "MODEL_MISMATCH",
            "renew.lua reported lost {lost:?}, the model {expect:?}"
        );
    }
    for g in &held {
        if let Some(grp) = m.groups.get_mut(g) {
            grp.expired = None;
        } else {
            m.held.remove(g);
        }
    }
}

/// One round of the lease keeper (worker/keeper.rs `write_outcomes`): fail.lua, requeue.lua,
/// complete.lua, in that order.
fn op_round(ctx: &mut Ctx, m: &mut Model, picks: &[(usize, Vec<(usize, Outc)>)]) {
    let held: Vec<u64> = m.held.keys().copied().collect();
    if held.is_empty() {
        return;
    }
    // Resolve: (group, [(index, outcome)]) with distinct groups and unsettled indexes.
    let mut round: Vec<(u64, Vec<(usize, Outc)>)> = Vec::new();
    for (gsel, jobs) in picks {
        let g = held[gsel % held.len()];
        if round.iter().any(|(x, _)| *x == g) {
            continue;
        }
        let open: Vec<usize> = (0..m.held[&g].settled.len())
            .filter(|&i| !m.held[&g].settled[i])
            .collect();
        let mut chosen: Vec<(usize, Outc)> = Vec::new();
        for (isel, o) in jobs {
            if open.is_empty() {
                break;
            }
            let i = open[isel % open.len()];
            if !chosen.iter().any(|(x, _)| *x == i) {
                chosen.push((i, o.clone()));
            }
        }
        if !chosen.is_empty() {
            round.push((g, chosen));
        }
    }
    if round.is_empty() {
        return;
    }
    let now = ctx.r.now_ms();
    // The worker's side: decode the leased bytes, decide, rewrite the envelope.
    struct Out {
        group: u64,
        index: usize,
        env: Env,
        outc: Outc,
        dead: bool,
        new_env: Vec<u8>,
        attempt: u64,
        error: String,
    }
    let mut outs: Vec<Out> = Vec::new();
    for (g, chosen) in &round {
        for (i, o) in chosen {
            let bytes = &m.held[g].envs[*i];
            let (mut env, enq) = Env::decode(bytes).expect("leased envelopes were checked");
            let failures = env.attempt + 1;
            let max = if env.max_attempts == 0 {
                DEFAULT_MAX
            } else {
                env.max_attempts
            };
            let (dead, error) = match o {
                Outc::Dead => (true, format!("permanent failure {failures}")),
                Outc::Retry { .. } => (failures >= max, format!("failure {failures}")),
                _ => (false, String::new()),
            };
            let original = env.clone();
            env.attempt = failures;
            env.last_error = error.clone();
            outs.push(Out {
                group: *g,
                index: *i,
                env: original,
                outc: o.clone(),
                dead,
                new_env: env.encode(enq),
                attempt: failures,
                error,
            });
        }
    }
    let finishing: BTreeMap<u64, bool> = round
        .iter()
        .map(|(g, chosen)| {
            let h = &m.held[g];
            let settled = h.settled.iter().filter(|s| **s).count();
            (*g, settled + chosen.len() >= h.settled.len())
        })
        .collect();
    let prefix = ctx.keys.prefix.clone().into_bytes();

    // fail.lua
    let fails: Vec<&Out> = outs
        .iter()
        .filter(|o| matches!(o.outc, Outc::Retry { .. } | Outc::Dead))
        .collect();
    if !fails.is_empty() {
        let mut argv = vec![prefix.clone()];
        for o in &fails {
            let delay = match o.outc {
                Outc::Retry { delay } if !o.dead => delay,
                _ => 0,
            };
            argv.extend([
                o.group.to_string().into_bytes(),
                o.index.to_string().into_bytes(),
                o.env.id.clone().into_bytes(),
                o.new_env.clone(),
                if o.dead {
                    b"dead".to_vec()
                } else {
                    b"retry".to_vec()
                },
                delay.to_string().into_bytes(),
                if o.env.flags & 1 == 1 {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                },
                o.attempt.to_string().into_bytes(),
                o.error.clone().into_bytes(),
                o.env.unique.clone().into_bytes(),
            ]);
        }
        let k = &ctx.keys;
        let keys: Vec<String> = [
            &k.active,
            &k.retry,
            &k.dead,
            &k.jobs,
            &k.stats,
            &k.pending,
            &k.scheduled,
            &k.config,
            &k.events,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sha = ctx.r.scripts.fail.clone();
        let Some(reply) = script(ctx, m, "fail.lua", &sha, &keys, &argv) else {
            return;
        };
        let mut stale = 0;
        let mut to_normalize = Vec::new();
        for o in &fails {
            let live = m.groups.get(&o.group).and_then(|g| g.entries[o.index]);
            let Some(h) = live else {
                stale += 1;
                continue;
            };
            let grp = m.groups.get_mut(&o.group).unwrap();
            grp.entries[o.index] = None;
            // A staged group failed before its claim: its job was never counted.
            let counted = !std::mem::replace(&mut grp.staged, false);
            m.stats.processed += 1;
            m.stats.failed += 1;
            if counted {
                m.stats.active -= 1;
            } else {
                cov!(m, "staged jobs failed before their claim");
            }
            m.jobs[h].attempt = o.attempt;
            m.jobs[h].last_error = o.error.clone();
            let tracked = m.jobs[h].tracked;
            let id = if o.dead {
                let (key, id) = (o.env.unique.clone(), o.env.id.clone());
                m.release(h, &key, &id);
                m.file_job(h, St::Dead)
            } else {
                let delay = match o.outc {
                    Outc::Retry { delay } => delay,
                    _ => 0,
                };
                let id = m.file_job(h, St::Retry { due: delay == 0 });
                to_normalize.push((h, delay));
                id
            };
            if tracked {
                let st = if o.dead { "dead" } else { "retry" };
                m.hrec_set(&id, st, Some(o.attempt));
                m.records.get_mut(&id).unwrap().ttl = false;
            }
        }
        cov!(m, "stale failures (lease lost)", stale);
        cov!(m, "failures recorded", fails.len() as i64 - stale);
        if as_int(&reply) != Some(stale) {
            problem!(
                m,
                "MODEL_MISMATCH",
                "fail.lua answered {reply:?} stale, the model {stale}"
            );
        }
        // Retry scores: check the delay, then make them deterministic.
        for (h, delay) in to_normalize {
            let id = m.jobs[h].id.clone();
            let retry = ctx.keys.retry.clone();
            let score = as_int(&ctx.r.q(&["ZSCORE", &retry, &id])).or_else(|| {
                as_bytes(&ctx.r.q(&["ZSCORE", &retry, &id])).and_then(|b| {
                    String::from_utf8_lossy(&b)
                        .parse::<f64>()
                        .ok()
                        .map(|f| f as i64)
                })
            });
            match score {
                Some(s) if (s - (now + delay as i64)).abs() <= 5_000 => {
                    if delay == 0 {
                        let t = m.tick().to_string();
                        ctx.r.q(&["ZADD", &retry, "XX", &t, &id]);
                    }
                }
                other => problem!(
                    m,
                    "MODEL_MISMATCH",
                    "retry score of {id} is {other:?}, expected about now + {delay} = {}",
                    now + delay as i64
                ),
            }
        }
    }

    // requeue.lua
    let backs: Vec<(u64, Vec<usize>)> = round
        .iter()
        .map(|(g, chosen)| {
            let mut idx: Vec<usize> = chosen
                .iter()
                .filter(|(_, o)| matches!(o, Outc::GiveBack))
                .map(|(i, _)| *i)
                .collect();
            idx.sort_unstable();
            (*g, idx)
        })
        .filter(|(_, idx)| !idx.is_empty())
        .collect();
    if !backs.is_empty() {
        let mut argv = vec![prefix.clone()];
        for (g, idx) in &backs {
            argv.push(g.to_string().into_bytes());
            argv.push(b"0".to_vec());
            argv.push(idx.len().to_string().into_bytes());
            argv.extend(idx.iter().map(|i| i.to_string().into_bytes()));
        }
        let k = &ctx.keys;
        let keys: Vec<String> = k.requeue_keys().iter().map(|s| s.to_string()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sha = ctx.r.scripts.requeue.clone();
        let Some(reply) = script(ctx, m, "requeue.lua", &sha, &keys, &argv) else {
            return;
        };
        let mut returned = 0;
        for (g, idx) in &backs {
            // requeue.lua takes every held group it names out of `staged`.
            let counted = m
                .groups
                .get_mut(g)
                .is_none_or(|grp| !std::mem::replace(&mut grp.staged, false));
            for &i in idx.iter().rev() {
                let Some(h) = m.groups.get(g).and_then(|grp| grp.entries[i]) else {
                    continue;
                };
                m.groups.get_mut(g).unwrap().entries[i] = None;
                m.jobs[h].state = St::Pending;
                if m.jobs[h].tracked {
                    let id = m.jobs[h].id.clone();
                    m.hrec_set(&id, "pending", None);
                }
                returned += 1;
                cov!(m, "jobs given back");
                if counted {
                    m.stats.active -= 1;
                } else {
                    cov!(m, "staged jobs given back before their claim");
                }
            }
        }
        if as_int(&reply) != Some(returned) {
            problem!(
                m,
                "MODEL_MISMATCH",
                "requeue.lua answered {reply:?}, the model {returned}"
            );
        }
    }

    // complete.lua
    let mut argv = vec![prefix, b"86400".to_vec()];
    let mut any = false;
    for (g, _) in &round {
        let all = finishing[g];
        let done: Vec<&Out> = outs
            .iter()
            .filter(|o| o.group == *g && matches!(o.outc, Outc::Complete))
            .collect();
        if done.is_empty() && !all {
            continue;
        }
        any = true;
        let detailed: Vec<&&Out> = done
            .iter()
            .filter(|o| !all || o.env.flags & 1 == 1 || !o.env.unique.is_empty())
            .collect();
        argv.push(g.to_string().into_bytes());
        argv.push(if all { b"1".to_vec() } else { b"0".to_vec() });
        argv.push(done.len().to_string().into_bytes());
        argv.push(detailed.len().to_string().into_bytes());
        for o in detailed {
            argv.extend([
                o.index.to_string().into_bytes(),
                o.env.id.clone().into_bytes(),
                if o.env.flags & 1 == 1 {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                },
                if o.env.flags & 1 == 1 {
                    format!("result of {}", o.env.id).into_bytes()
                } else {
                    Vec::new()
                },
                o.env.unique.clone().into_bytes(),
            ]);
        }
    }
    if any {
        let k = &ctx.keys;
        let keys: Vec<String> = k.complete_keys().iter().map(|s| s.to_string()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let sha = ctx.r.scripts.complete.clone();
        let Some(reply) = script(ctx, m, "complete.lua", &sha, &keys, &argv) else {
            return;
        };
        let mut stale = 0i64;
        for (g, _) in &round {
            let all = finishing[g];
            let done: Vec<&Out> = outs
                .iter()
                .filter(|o| o.group == *g && matches!(o.outc, Outc::Complete))
                .collect();
            if done.is_empty() && !all {
                continue;
            }
            let Some(grp) = m.groups.get_mut(g) else {
                stale += done.len() as i64;
                continue;
            };
            // complete.lua takes every held group it names out of `staged`.
            let counted = !std::mem::replace(&mut grp.staged, false);
            for o in &done {
                let Some(h) = m.groups[g].entries[o.index] else {
                    continue;
                };
                m.groups.get_mut(g).unwrap().entries[o.index] = None;
                m.stats.processed += 1;
                if counted {
                    m.stats.active -= 1;
                } else {
                    cov!(m, "staged jobs completed before their claim");
                }
                let (key, id) = (o.env.unique.clone(), o.env.id.clone());
                m.release(h, &key, &id);
                m.jobs[h].state = St::Gone("completed");
                cov!(m, "jobs completed");
                if m.jobs[h].tracked {
                    if let Some(r) = m.records.get_mut(&id) {
                        r.state = "completed".into();
                        r.ttl = true;
                        m.completed_index.insert(id.clone());
                        m.jobs[h].state = St::Completed;
                    }
                }
            }
            if all {
                let left: Vec<usize> = m.groups[g].entries.iter().flatten().copied().collect();
                if !left.is_empty() {
                    problem!(
                        m,
                        "MODEL_MISMATCH",
                        "group {g} finishing with live entries {left:?}"
                    );
                }
                m.groups.remove(g);
            }
        }
        cov!(m, "stale completions (lease lost)", stale);
        if as_int(&reply) != Some(stale) {
            problem!(
                m,
                "MODEL_MISMATCH",
                "complete.lua answered {reply:?} stale, the model {stale}"
            );
        }
    }
    // The keeper's bookkeeping.
    for (g, chosen) in &round {
        if finishing[g] {
            m.held.remove(g);
        } else if let Some(h) = m.held.get_mut(g) {
            for (i, _) in chosen {
                h.settled[*i] = true;
            }
        }
    }
}

/// enqueue_now.lua in the model; returns how many jobs move.
fn model_retry_now(m: &mut Model, ids: &[String]) -> u64 {
    let mut moved = 0;
    for id in ids {
        let Some(h) = m.hash_owner(id) else { continue };
        if m.jobs[h].state == St::Dead {
            m.jobs[h].attempt = 0;
            // It gave its unique key up when it died, and runs again without one.
            m.jobs[h].unique.clear();
            if let Some(seen) = m.seen_attempt.get_mut(&m.jobs[h].tag) {
                *seen = 0;
            }
        }
        m.jobs[h].state = St::Pending;
        if m.jobs[h].tracked {
            let attempt = m.jobs[h].attempt;
            m.hrec_set(id, "pending", Some(attempt));
        }
        moved += 1;
        cov!(m, "jobs sent back by retry_now");
    }
    moved
}

fn op_retry_now(ctx: &mut Ctx, m: &mut Model, ids: &[String]) {
    if ctx.r.logging {
        ctx.r.log.push(format!("# Queue::retry_now({ids:?})"));
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = ctx.rt.block_on(ctx.queue.retry_now(&refs));
    let expected = model_retry_now(m, ids);
    match got {
        Ok(n) if n == expected => {}
        other => problem!(
            m,
            "MODEL_MISMATCH",
            "retry_now({ids:?}) answered {other:?}, the model {expected}"
        ),
    }
}

/// delete.lua for one id in the model; returns whether it found anything.
fn model_delete_hashed(m: &mut Model, id: &str) -> bool {
    let (mut found, mut tracked) = (false, false);
    if let Some(h) = m.hash_owner(id) {
        let key = m.jobs[h].unique.clone();
        m.release(h, &key, id);
        m.jobs[h].state = St::Gone("deleted");
        cov!(m, "scheduled/retry/dead jobs deleted");
        (found, tracked) = (true, m.jobs[h].tracked);
    }
    if m.completed_index.remove(id) {
        (found, tracked) = (true, true);
        for j in m.jobs.iter_mut() {
            if j.state == St::Completed && j.id == id {
                j.state = St::Gone("deleted");
            }
        }
    }
    if tracked {
        // Only a tracked job's record: a pending or running job with the same id may own it.
        m.records.remove(id);
    }
    found
}

fn op_delete(ctx: &mut Ctx, m: &mut Model, id: &str) {
    if ctx.r.logging {
        ctx.r.log.push(format!("# Queue::delete([{id:?}])"));
    }
    // Which pending job (if any) the scan would find: observed, then checked.
    let before = observe(&mut ctx.r, &ctx.keys);
    let got = ctx.rt.block_on(ctx.queue.delete(&[id]));
    let mut expected = 0;
    if model_delete_hashed(m, id) {
        expected = 1;
    } else {
        let candidates: Vec<usize> = (0..m.jobs.len())
            .filter(|&h| m.jobs[h].state == St::Pending && m.jobs[h].id == id && !m.jobs[h].bare)
            .collect();
        if !candidates.is_empty() {
            expected = 1;
            let after = observe(&mut ctx.r, &ctx.keys);
            let present = |o: &Obs, tag: &[u8]| {
                o.pending
                    .iter()
                    .chain(o.prioritized.iter().map(|(e, _)| e))
                    .any(|e| Env::decode(e).is_ok_and(|(env, _)| env.payload == tag))
            };
            let gone: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&h| present(&before, &m.jobs[h].tag) && !present(&after, &m.jobs[h].tag))
                .collect();
            let prioritized = candidates.iter().any(|&h| m.jobs[h].priority != 0);
            match gone.as_slice() {
                [h] => {
                    let h = *h;
                    if prioritized && m.jobs[h].priority == 0 {
                        problem!(m, "MODEL_MISMATCH", "delete({id:?}) removed a job from the list while one waits in prioritized");
                    }
                    let key = m.jobs[h].unique.clone();
                    m.release(h, &key, id);
                    m.jobs[h].state = St::Gone("deleted");
                    cov!(m, "pending jobs deleted");
                    if m.jobs[h].tracked {
                        m.records.remove(id);
                    }
                }
                other => problem!(
                    m,
                    "MODEL_MISMATCH",
                    "delete({id:?}) removed pending jobs {other:?} of {candidates:?}"
                ),
            }
        }
    }
    match got {
        Ok(n) if n == expected => {}
        other => problem!(
            m,
            "MODEL_MISMATCH",
            "delete({id:?}) answered {other:?}, the model {expected}"
        ),
    }
}

fn op_purge(ctx: &mut Ctx, m: &mut Model, what: &PurgeWhat) {
    use ostq::JobState;
    let state = match what {
        PurgeWhat::All => None,
        PurgeWhat::Pending => Some(JobState::Pending),
        PurgeWhat::Scheduled => Some(JobState::Scheduled),
        PurgeWhat::Retry => Some(JobState::Retry),
        PurgeWhat::Dead => Some(JobState::Dead),
        PurgeWhat::Completed => Some(JobState::Completed),
    };
    if ctx.r.logging {
        ctx.r.log.push(format!("# Queue::purge({state:?})"));
    }
    let got = ctx.rt.block_on(ctx.queue.purge(state));
    let mut expected = 0;
    let all = matches!(what, PurgeWhat::All);
    if all || matches!(what, PurgeWhat::Pending) {
        for h in 0..m.jobs.len() {
            if m.jobs[h].state == St::Pending {
                expected += 1;
                m.jobs[h].state = St::Gone("purged");
                cov!(m, "pending jobs purged");
                if m.jobs[h].bare {
                    continue;
                }
                let id = m.jobs[h].id.clone();
                if m.jobs[h].tracked {
                    m.records.remove(&id);
                }
                let key = m.jobs[h].unique.clone();
                m.release(h, &key, &id);
            }
        }
    }
    let zsets: Vec<fn(&St) -> bool> = match what {
        PurgeWhat::All => vec![
            |s| matches!(s, St::Scheduled { .. }),
            |s| matches!(s, St::Retry { .. }),
            |s| *s == St::Dead,
        ],
        PurgeWhat::Scheduled => vec![|s| matches!(s, St::Scheduled { .. })],
        PurgeWhat::Retry => vec![|s| matches!(s, St::Retry { .. })],
        PurgeWhat::Dead => vec![|s| *s == St::Dead],
        _ => vec![],
    };
    for f in zsets {
        let mut ids: Vec<String> = m
            .jobs
            .iter()
            .filter(|j| f(&j.state))
            .map(|j| j.id.clone())
            .collect();
        ids.sort();
        for id in ids {
            if model_delete_hashed(m, &id) {
                expected += 1;
            }
        }
    }
    if all || matches!(what, PurgeWhat::Completed) {
        let ids: Vec<String> = m.completed_index.iter().cloned().collect();
        for id in ids {
            if model_delete_hashed(m, &id) {
                expected += 1;
            }
        }
    }
    match got {
        Ok(n) if n == expected => {}
        other => problem!(
            m,
            "MODEL_MISMATCH",
            "purge({what:?}) answered {other:?}, the model {expected}"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

#[derive(Debug, Clone, PartialEq)]
enum Loc {
    Pending,
    Prioritized,
    Scheduled,
    Retry,
    Dead,
    Active(u64, usize),
}

fn check(m: &mut Model, o: &Obs) {
    // Where each job is, by its payload tag.
    let mut found: BTreeMap<Vec<u8>, Vec<(Loc, Option<Env>)>> = BTreeMap::new();
    let mut add = |m: &mut Model, loc: Loc, bytes: &[u8]| {
        let first = bytes.first().copied().unwrap_or(0);
        if !(0x90..=0x9f).contains(&first) {
            found.entry(bytes.to_vec()).or_default().push((loc, None));
            return;
        }
        match Env::decode(bytes) {
            Ok((env, _)) => found
                .entry(env.payload.clone())
                .or_default()
                .push((loc, Some(env))),
            Err(e) => problem!(
                m,
                "INVALID_ENTRY",
                "an invalid envelope in {loc:?}: {e} ({})",
                hex(bytes)
            ),
        }
    };
    let mut markers = 0;
    for e in &o.pending {
        if e.as_slice() == [0x90] {
            markers += 1;
        } else {
            add(m, Loc::Pending, e);
        }
    }
    if markers > 1 + m.pushed_markers {
        problem!(
            m,
            "WAKE_MARKERS",
            "{markers} wake markers in pending ({} pushed for staged groups)",
            m.pushed_markers
        );
    }
    for (e, _) in &o.prioritized {
        add(m, Loc::Prioritized, e);
    }
    // The jobs hash and the three zsets: every member has an envelope, every envelope one member.
    for (id, _) in o.jobs.iter() {
        let n = [&o.scheduled, &o.retry, &o.dead]
            .iter()
            .filter(|z| z.contains_key(id))
            .count();
        if n != 1 {
            problem!(
                m,
                "STRUCTURE",
                "jobs hash entry {id:?} is a member of {n} of scheduled/retry/dead"
            );
        }
    }
    for (name, z, loc) in [
        ("scheduled", &o.scheduled, Loc::Scheduled),
        ("retry", &o.retry, Loc::Retry),
        ("dead", &o.dead, Loc::Dead),
    ] {
        for id in z.keys() {
            match o.jobs.get(id) {
                None => problem!(
                    m,
                    "STRUCTURE",
                    "{name} member {id:?} has no envelope in the jobs hash"
                ),
                Some(bytes) => {
                    add(m, loc.clone(), bytes);
                    if let Ok((env, _)) = Env::decode(bytes) {
                        if env.id != *id {
                            problem!(
                                m,
                                "STRUCTURE",
                                "{name} member {id:?} holds an envelope with id {:?}",
                                env.id
                            );
                        }
                    }
                }
            }
        }
    }
    // Lease groups.
    let mut live_entries = 0i64;
    for (g, entries) in &o.leases {
        if !o.active.contains_key(g) {
            problem!(
                m,
                "ORPHAN_LEASE",
                "lease:{g} ({} entries) is not in active: its jobs can never be recovered",
                entries.len()
            );
        }
        let gid: u64 = g.parse().unwrap_or(0);
        let staged = o.staged.contains(g);
        for (i, e) in entries.iter().enumerate() {
            if staged && e.as_slice() == [0x90] {
                // A staged wait woken by the marker (claim.lua deletes the group).
                if !m.groups.get(&gid).is_some_and(|grp| grp.marker) {
                    problem!(
                        m,
                        "MODEL_MISMATCH",
                        "staged lease:{g} holds the wake marker"
                    );
                }
                continue;
            }
            if !e.is_empty() {
                // (A staged group's job counts as active once claimed.)
                if !staged {
                    live_entries += 1;
                }
                add(m, Loc::Active(gid, i), e);
            }
        }
    }
    let model_staged: BTreeSet<String> = m
        .groups
        .iter()
        .filter(|(_, grp)| grp.staged)
        .map(|(g, _)| g.to_string())
        .collect();
    if o.staged != model_staged {
        problem!(
            m,
            "MODEL_MISMATCH",
            "staged groups {:?}, the model {model_staged:?}",
            o.staged
        );
    }
    for g in &o.staged {
        if !o.active.contains_key(g) {
            problem!(
                m,
                "STRUCTURE",
                "staged group {g} is not in active: nothing recovers it"
            );
        }
    }
    for (g, score) in &o.active {
        // (A staged group is empty until its wait moves an entry in.)
        if *score > 0.0 && !o.leases.contains_key(g) && !o.staged.contains(g) {
            problem!(m, "STRUCTURE", "active group {g} has no lease list");
        }
    }
    if o.stats.get("active").copied().unwrap_or(0) != live_entries {
        problem!(
            m,
            "STATS",
            "stats.active is {:?} but {live_entries} entries are leased",
            o.stats.get("active")
        );
    }
    // Each model job against what was found.
    for h in 0..m.jobs.len() {
        let j = m.jobs[h].clone();
        let locs = found.remove(&j.tag).unwrap_or_default();
        let name = format!(
            "{} (id {:?}, {:?})",
            String::from_utf8_lossy(&j.tag),
            j.id,
            j.state
        );
        if !j.state.live() {
            if !locs.is_empty() {
                problem!(
                    m,
                    "RESURRECTED",
                    "{name} should be gone but is in {:?}",
                    locs.iter().map(|l| &l.0).collect::<Vec<_>>()
                );
            }
            continue;
        }
        match locs.len() {
            0 => {
                problem!(m, "LOST", "{name} is nowhere in Redis");
                continue;
            }
            1 => {}
            n => {
                problem!(
                    m,
                    "DUPLICATED",
                    "{name} is in {n} places: {:?}",
                    locs.iter().map(|l| &l.0).collect::<Vec<_>>()
                );
                continue;
            }
        }
        let (loc, env) = &locs[0];
        let expect_loc = match &j.state {
            St::Pending if j.priority != 0 => Loc::Prioritized,
            St::Pending => Loc::Pending,
            St::Scheduled { .. } => Loc::Scheduled,
            St::Retry { .. } => Loc::Retry,
            St::Dead => Loc::Dead,
            St::Active { group, index } => Loc::Active(*group, *index),
            _ => unreachable!(),
        };
        if *loc != expect_loc {
            problem!(
                m,
                "MODEL_MISMATCH",
                "{name} is in {loc:?}, the model says {expect_loc:?}"
            );
        }
        if let Some(env) = env {
            if let Some(&seen) = m.seen_attempt.get(&j.tag) {
                if env.attempt < seen {
                    problem!(
                        m,
                        "ATTEMPT_DECREASED",
                        "{name}: attempt went from {seen} to {}",
                        env.attempt
                    );
                }
            }
            m.seen_attempt.insert(j.tag.clone(), env.attempt);
            let want = j.env();
            if *env != want {
                problem!(
                    m,
                    "MODEL_MISMATCH",
                    "{name}: envelope {env:?}, the model {want:?}"
                );
            }
        } else if !j.bare {
            problem!(m, "MODEL_MISMATCH", "{name} is a bare entry in {loc:?}");
        }
    }
    for (tag, locs) in found {
        problem!(
            m,
            "UNKNOWN_ENTRY",
            "{} in {:?} is no job the model knows",
            String::from_utf8_lossy(&tag),
            locs
        );
    }
    // Groups.
    for (g, grp) in &m.groups {
        let key = g.to_string();
        match o.active.get(&key) {
            None => problem!(m, "MODEL_MISMATCH", "group {g} is not in active"),
            Some(score) => {
                if let Some(s) = grp.expired {
                    if *score != s as f64 {
                        problem!(
                            m,
                            "MODEL_MISMATCH",
                            "expired group {g} has score {score}, set to {s}"
                        );
                    }
                } else if *score < 1e12 {
                    problem!(
                        m,
                        "MODEL_MISMATCH",
                        "group {g} has score {score}, a deadline was expected"
                    );
                }
            }
        }
        let len = o.leases.get(&key).map(Vec::len).unwrap_or(0);
        if len != grp.entries.len() + usize::from(grp.marker) {
            problem!(
                m,
                "MODEL_MISMATCH",
                "lease:{g} has {len} entries, the model {} (wake marker: {})",
                grp.entries.len(),
                grp.marker
            );
        }
    }
    for g in o.active.keys() {
        if !m.groups.contains_key(&g.parse().unwrap_or(0)) {
            problem!(
                m,
                "MODEL_MISMATCH",
                "active has group {g} the model does not"
            );
        }
    }
    // Status records: compare with the model, then look for orphans. A job in a staged group is
    // active in place, but its record says so only once claim.lua ran.
    let unclaimed: BTreeSet<Vec<u8>> = m
        .groups
        .values()
        .filter(|grp| grp.staged)
        .flat_map(|grp| grp.entries.iter().flatten().map(|&h| m.jobs[h].tag.clone()))
        .collect();
    let rstate = |j: &MJob| {
        if unclaimed.contains(&j.tag) {
            "pending"
        } else {
            j.state.record_state()
        }
    };
    for (id, (fields, ttl)) in &o.records {
        let state = fields.get("state").cloned().unwrap_or_default();
        let owners: Vec<&MJob> = m
            .jobs
            .iter()
            .filter(|j| j.tracked && j.id == *id && !matches!(j.state, St::Gone(_)))
            .collect();
        if owners.is_empty() {
            problem!(m, "ORPHAN_RECORD", "status record job:{id} (state {state:?}) outlives its job: no tracked job has id {id:?}");
        } else if !owners.iter().any(|j| rstate(j) == state) {
            problem!(
                m,
                "RECORD_STATE",
                "status record job:{id} says {state:?} but the job is {:?}",
                owners.iter().map(|j| &j.state).collect::<Vec<_>>()
            );
        }
        match m.records.get(id) {
            None => problem!(
                m,
                "MODEL_MISMATCH",
                "record job:{id} exists, the model has none"
            ),
            Some(r) => {
                let attempt = fields.get("attempt").and_then(|a| a.parse::<u64>().ok());
                if r.state != state
                    || r.ttl != *ttl
                    || (r.attempt.is_some() && r.attempt != attempt)
                {
                    problem!(m, "MODEL_MISMATCH", "record job:{id} = state {state:?} attempt {attempt:?} ttl {ttl}, the model {r:?}");
                }
            }
        }
    }
    for id in m.records.keys() {
        if !o.records.contains_key(id) {
            problem!(m, "MODEL_MISMATCH", "record job:{id} is missing");
        }
    }
    for j in &m.jobs {
        if !j.tracked || !j.state.live() || j.id.is_empty() {
            continue;
        }
        let sharing = m
            .jobs
            .iter()
            .filter(|k| k.id == j.id && !matches!(k.state, St::Gone(_)))
            .count();
        if sharing > 1 {
            continue;
        }
        match o.records.get(&j.id) {
            None => problem!(
                m,
                "MISSING_RECORD",
                "tracked job {} ({:?}) has no status record",
                j.id,
                j.state
            ),
            Some((fields, _)) => {
                let state = fields.get("state").map(String::as_str).unwrap_or("");
                let attempt = fields.get("attempt").and_then(|a| a.parse::<u64>().ok());
                if state != rstate(j) || attempt != Some(j.attempt) {
                    problem!(m, "RECORD_STATE", "tracked job {} is {:?} attempt {}, its record says {state:?} attempt {attempt:?}", j.id, j.state, j.attempt);
                }
            }
        }
    }
    for (id, ttl) in &o.dones {
        if !ttl {
            problem!(m, "IMMORTAL_DONE", "done:{id} has no expiry");
        }
    }
    // Unique keys.
    for (k, (v, ttl)) in &o.uniques {
        match m.ukeys.get(k) {
            Some(u) if u.value == *v && u.ttl == *ttl => {}
            other => problem!(
                m,
                "MODEL_MISMATCH",
                "unique:{k} = {v:?} (ttl {ttl}), the model {other:?}"
            ),
        }
        if !ttl {
            let holder = m
                .jobs
                .iter()
                .any(|j| j.state.live() && j.id == *v && j.unique == *k);
            if !holder {
                problem!(m, "UNIQUE_LEAK", "unique:{k} names {v:?}, but no waiting or running job {v:?} holds {k:?}: the key outlives its job");
            }
        }
    }
    for k in m.ukeys.keys() {
        if !o.uniques.contains_key(k) {
            problem!(m, "MODEL_MISMATCH", "unique:{k} is missing");
        }
    }
    for j in &m.jobs {
        if j.holds && j.state.live() {
            match o.uniques.get(&j.unique) {
                Some((v, _)) if *v == j.id => {}
                other => problem!(
                    m,
                    "UNIQUE_LOST",
                    "job {} ({}, {:?}) holds unique key {:?}, which is {other:?}",
                    j.id,
                    String::from_utf8_lossy(&j.tag),
                    j.state,
                    j.unique
                ),
            }
        }
    }
    // Counters and the rest.
    let stat = |k: &str| o.stats.get(k).copied().unwrap_or(0);
    let got = Stats {
        active: stat("active"),
        processed: stat("processed"),
        failed: stat("failed"),
        recovered: stat("recovered"),
    };
    if got != m.stats {
        problem!(m, "STATS", "stats {got:?}, the model {:?}", m.stats);
    }
    if o.completed != m.completed_index {
        problem!(
            m,
            "MODEL_MISMATCH",
            "completed index {:?}, the model {:?}",
            o.completed,
            m.completed_index
        );
    }
    if o.paused != m.paused {
        problem!(
            m,
            "MODEL_MISMATCH",
            "paused is {}, the model {}",
            o.paused,
            m.paused
        );
    }
    if !o.stray.is_empty() {
        problem!(m, "STRAY_KEY", "keys nobody owns: {:?}", o.stray);
    }
    let marks: BTreeMap<String, String> = m
        .groups
        .iter()
        .filter_map(|(g, grp)| grp.mark.map(|n| (g.to_string(), n.to_string())))
        .collect();
    if o.started != marks {
        problem!(
            m,
            "MODEL_MISMATCH",
            "start marks {:?}, the model {marks:?} (a mark must go with its group)",
            o.started
        );
    }
    check_history(m, o);
}

/// Only recovery writes history here (no worker runs): per task, every recovered job is one
/// processed and failed attempt, retried or dead; minute and hour hashes and the totals agree
/// (the run is far shorter than a day); minute and hour hashes expire, the totals do not; and
/// no more jobs are in the history as recovered than the stats counted (entries too broken to
/// name their task are counted there only).
fn check_history(m: &mut Model, o: &Obs) {
    let (minutes, hours) = &o.history;
    if minutes != hours {
        problem!(
            m,
            "HISTORY",
            "minute sums {minutes:?} differ from hour sums {hours:?}"
        );
    }
    if &o.history_totals != minutes {
        problem!(
            m,
            "HISTORY",
            "totals {:?} differ from minute sums {minutes:?}",
            o.history_totals
        );
    }
    if o.history_totals_ttl {
        problem!(m, "HISTORY", "the history totals have an expiry");
    }
    if !o.history_without_ttl.is_empty() {
        problem!(
            m,
            "HISTORY",
            "history keys without expiry: {:?}",
            o.history_without_ttl
        );
    }
    let mut tasks: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for (field, n) in minutes {
        let (task, figure) = field.rsplit_once('|').unwrap_or(("", field));
        tasks.entry(task).or_default().insert(figure, *n);
    }
    let mut recovered = 0;
    for (task, figures) in &tasks {
        let get = |f: &str| figures.get(f).copied().unwrap_or(0);
        let r = get("recovered");
        recovered += r;
        // (A job recovered before it started is recovered only: no attempt ended.)
        let p = get("processed");
        let balanced = p <= r && get("failed") == p && get("retried") + get("dead") == p;
        if !balanced || figures.len() > 5 {
            problem!(
                m,
                "HISTORY",
                "task {task:?}: recovery figures do not add up: {figures:?}"
            );
        }
    }
    let counted = o.stats.get("recovered").copied().unwrap_or(0);
    if recovered > counted {
        problem!(
            m,
            "HISTORY",
            "{recovered} recovered in the history, {counted} in the stats"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The driver: time budget, seeds, shrinking, report.

fn gen_ops(seed: u64, steps: Option<usize>) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = steps.unwrap_or_else(|| rng.random_range(30..=150));
    let all = id_pool().len();
    let ids = [1, 2, 3, all][rng.random_range(0..4)].min(all);
    (0..n).map(|_| gen_op(&mut rng, ids)).collect()
}

/// Deletes operations while the run still fails the same way.
fn shrink(ctx: &mut Ctx, ops: Vec<Op>, seed: u64, kind: &str, deadline: Instant) -> Vec<Op> {
    let fails = |ctx: &mut Ctx, ops: &[Op]| -> Option<usize> {
        let r = run_sequence(ctx, ops, seed);
        match r.failed_at {
            Some((step, p)) if p.first().is_some_and(|p| p.kind == kind) => Some(step),
            _ => None,
        }
    };
    let mut ops = ops;
    let mut chunk = ops.len().div_ceil(2).max(1);
    while chunk >= 1 && Instant::now() < deadline {
        let mut i = 0;
        let mut progress = false;
        while i < ops.len() && Instant::now() < deadline {
            let mut candidate = ops.clone();
            let end = (i + chunk).min(candidate.len());
            candidate.drain(i..end);
            if let Some(step) = fails(ctx, &candidate) {
                candidate.truncate(step + 1);
                ops = candidate;
                progress = true;
            } else {
                i += chunk;
            }
        }
        if !progress {
            if chunk == 1 {
                break;
            }
            chunk /= 2;
        }
    }
    ops
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn queue_scripts_follow_the_model() {
    let server = RedisServer::start().expect("start redis-server");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = rt
        .block_on(ostq::Client::connect(&server.url()))
        .expect("connect");
    let queue = client.queue("m");
    let mut ctx = Ctx {
        r: Redis::connect(&server.url()),
        rt,
        queue,
        keys: QueueKeys::new("m").unwrap(),
        before: Snapshot::default(),
        cov: BTreeMap::new(),
    };
    let secs = env_u64("OSTQ_MODEL_SECS").unwrap_or(25);
    let steps = env_u64("OSTQ_MODEL_STEPS").map(|n| n as usize);
    let replay = env_u64("OSTQ_MODEL_SEED");
    let start = Instant::now();
    let budget = Duration::from_secs(secs);
    let mut master = StdRng::seed_from_u64(
        env_u64("OSTQ_MODEL_MASTER_SEED").unwrap_or_else(rand::random::<u64>),
    );
    let (mut sequences, mut total_steps) = (0u64, 0u64);
    // The first failure of each kind: (seed, operations up to the failing step, problems).
    let mut failures: BTreeMap<&'static str, (u64, Vec<Op>, Vec<Problem>)> = BTreeMap::new();
    loop {
        let seed = match replay {
            Some(s) => s,
            None => master.random::<u64>(),
        };
        let ops = gen_ops(seed, steps);
        let result = run_sequence(&mut ctx, &ops, seed);
        sequences += 1;
        total_steps += result.steps as u64;
        if let Some((step, problems)) = result.failed_at {
            failures
                .entry(problems[0].kind)
                .or_insert_with(|| (seed, ops[..=step].to_vec(), problems));
        }
        if replay.is_some() || start.elapsed() >= budget {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "model: {sequences} sequences, {total_steps} steps in {secs:.1} s ({:.0} steps/s, {:.0} sequences/s)",
        total_steps as f64 / secs,
        sequences as f64 / secs
    );
    eprintln!("model coverage: {:?}", ctx.cov);
    if failures.is_empty() {
        return;
    }
    let mut report = format!(
        "\nthe model test found {} kind(s) of failure: {:?}\n",
        failures.len(),
        failures.keys().collect::<Vec<_>>()
    );
    // Shrinking gets 20 s at most in all, shared by the kinds found.
    let shrink_budget = Duration::from_secs(20) / failures.len() as u32;
    for (kind, (seed, ops, problems)) in failures {
        let _ = writeln!(
            report,
            "\n=== [{kind}] OSTQ_MODEL_SEED={seed}{} (fails at step {} of the sequence)",
            steps
                .map(|n| format!(" OSTQ_MODEL_STEPS={n}"))
                .unwrap_or_default(),
            ops.len() - 1
        );
        for p in &problems {
            let _ = writeln!(report, "  [{}] {}", p.kind, p.detail);
        }
        let failing = shrink(&mut ctx, ops, seed, kind, Instant::now() + shrink_budget);
        ctx.r.logging = true;
        let last = run_sequence(&mut ctx, &failing, seed);
        ctx.r.logging = false;
        let _ = writeln!(report, "shrunk to {} operations:", failing.len());
        for (i, op) in failing.iter().enumerate() {
            let _ = writeln!(report, "  {i}: {op:?}");
        }
        if let Some((_, problems)) = &last.failed_at {
            let _ = writeln!(report, "which fail with:");
            for p in problems {
                let _ = writeln!(report, "  [{}] {}", p.kind, p.detail);
            }
        }
        let _ = writeln!(
            report,
            "redis-cli commands of the shrunk run (queue \"m\"; $SHA_X is the SHA1 of the assembled script X; feed the lines to redis-cli's stdin):"
        );
        for line in &ctx.r.log {
            let _ = writeln!(report, "  {line}");
        }
    }
    panic!("{report}");
}
