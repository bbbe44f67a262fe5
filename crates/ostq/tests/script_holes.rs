//! Regression tests for the holes the reliability review found in the Lua scripts: each drives the
//! scripts the way a worker (or a producer in another language) does, against a private
//! redis-server, and failed before its fix. The envelope vectors shared with `envelope.rs` are
//! fed to the scripts here too, so Rust and Lua agree on what a valid job is.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::setup;
use ostq::envelope::Envelope;
use ostq::keys::QueueKeys;
use ostq::{Error, PushOptions};
use redis::aio::MultiplexedConnection;
use redis::Value;

const LEASE_MS: u64 = 30_000;

async fn raw(server: &common::RedisServer) -> MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// One `fetch.lua` call as a worker makes it; returns the reply or the script's error.
async fn fetch_with(
    conn: &mut MultiplexedConnection,
    keys: &QueueKeys,
    want: u64,
    dead_max: u64,
    default_max: u64,
) -> redis::RedisResult<Vec<Value>> {
    let mut cmd = redis::cmd("EVAL");
    let fetch_keys = keys.fetch_keys();
    cmd.arg(ostq::scripts::FETCH)
        .arg(fetch_keys.len())
        .arg(&fetch_keys[..]);
    cmd.arg(&keys.prefix)
        .arg(want)
        .arg(LEASE_MS)
        .arg(default_max)
        .arg(dead_max)
        .arg(7 * 24 * 3_600_000u64)
        .arg(3_600_000u64)
        .arg(rand::random::<u64>() >> 1 | 1);
    cmd.query_async(conn).await
}

async fn fetch(conn: &mut MultiplexedConnection, keys: &QueueKeys, want: u64) -> Vec<Value> {
    fetch_with(conn, keys, want, 10_000, 25).await.unwrap()
}

/// The lease group a fetch reply names (0 when nothing was leased) and its envelopes.
fn leased(reply: &[Value]) -> (String, Vec<Vec<u8>>) {
    let group = match &reply[2] {
        Value::Int(n) => n.to_string(),
        Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("group {other:?}"),
    };
    let envs = reply[4..]
        .iter()
        .map(|v| match v {
            Value::BulkString(b) => b.clone(),
            other => panic!("envelope {other:?}"),
        })
        .collect();
    (group, envs)
}

/// Makes every lease group of the queue expired, as if its worker died a lease ago.
async fn expire_leases(conn: &mut MultiplexedConnection, keys: &QueueKeys) {
    let groups: Vec<String> = redis::cmd("ZRANGE")
        .arg(&keys.active)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    for group in groups {
        let _: () = redis::cmd("ZADD")
            .arg(&keys.active)
            .arg("XX")
            .arg(1)
            .arg(group)
            .query_async(conn)
            .await
            .unwrap();
    }
}

/// `push.lua` called as another language would: the prefix, then 10 fields per job.
async fn push_lua(
    conn: &mut MultiplexedConnection,
    keys: &QueueKeys,
    jobs: &[[&str; 10]],
) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(ostq::scripts::PUSH)
        .arg(5)
        .arg(&keys.pending)
        .arg(&keys.prioritized)
        .arg(&keys.scheduled)
        .arg(&keys.jobs)
        .arg(&keys.seq)
        .arg(&keys.prefix);
    for job in jobs {
        for field in job {
            cmd.arg(*field);
        }
    }
    cmd.query_async(conn).await
}

/// Every key and its contents, to prove that a refused call wrote nothing.
async fn snapshot(conn: &mut MultiplexedConnection) -> Vec<(String, Vec<u8>)> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(conn).await.unwrap();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(conn)
            .await
            .unwrap();
        out.push((key, dump));
    }
    out
}

async fn zcard(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

async fn llen(conn: &mut MultiplexedConnection, key: &str) -> u64 {
    redis::cmd("LLEN").arg(key).query_async(conn).await.unwrap()
}

/// Entries of the pending list less wake markers (the fetch that creates the first lease group
/// adds one, to wake idle workers: they must see the group's deadline to recover it in time).
async fn pending_jobs(conn: &mut MultiplexedConnection, keys: &QueueKeys) -> usize {
    let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg(&keys.pending)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    entries.iter().filter(|e| e.as_slice() != [0x90u8]).count()
}

/// Jobs ready to be fetched: the pending list (less the wake marker) and the prioritized zset.
async fn ready(conn: &mut MultiplexedConnection, keys: &QueueKeys) -> u64 {
    let _: u64 = redis::cmd("LREM")
        .arg(&keys.pending)
        .arg(0)
        .arg(&[0x90u8][..])
        .query_async(conn)
        .await
        .unwrap();
    llen(conn, &keys.pending).await + zcard(conn, &keys.prioritized).await
}

async fn hget(conn: &mut MultiplexedConnection, key: &str, field: &str) -> Option<Vec<u8>> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query_async(conn)
        .await
        .unwrap()
}

/// Puts raw bytes in `scheduled` (due now) with their envelope in the jobs hash, as a producer
/// in another language, an older version or a hand with redis-cli could.
async fn schedule_raw(conn: &mut MultiplexedConnection, keys: &QueueKeys, id: &str, env: &[u8]) {
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(&keys.scheduled)
        .arg(1)
        .arg(id)
        .ignore()
        .cmd("HSET")
        .arg(&keys.jobs)
        .arg(id)
        .arg(env)
        .ignore()
        .query_async(conn)
        .await
        .unwrap();
}

fn job(id: &str, priority: i32) -> Vec<u8> {
    Envelope {
        id: id.into(),
        payload: b"p".to_vec(),
        priority,
        ..Envelope::default()
    }
    .encode()
}

/// A msgpack envelope with a NaN priority, as `push.lua` wrote it before it checked numbers.
fn nan_priority_job(id: &str) -> Vec<u8> {
    let mut out = vec![0x99];
    out.push(0xa0 + id.len() as u8);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&[0x00, 0xa1, b'p', 0xa0, 0x00, 0x00]);
    out.push(0xcb);
    out.extend_from_slice(&f64::NAN.to_be_bytes());
    out.extend_from_slice(&[0x00, 0xa0]);
    out
}

fn dead_error(bytes: &[u8]) -> String {
    Envelope::decode(bytes).unwrap().last_error
}

/// Hole 2a: a NaN priority made `fetch.lua` fail half-way through promotion, after it had
/// already re-pushed the earlier-due jobs: every later fetch failed and pushed them again.
#[tokio::test]
async fn a_nan_priority_neither_stops_the_queue_nor_copies_jobs() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("nan").unwrap();
    // push.lua itself refuses it now, and writes nothing of the batch.
    let before = snapshot(&mut conn).await;
    let err = push_lua(
        &mut conn,
        &keys,
        &[
            ["ok", "p", "", "0", "0", "0", "0", "0", "", "0"],
            ["", "p", "", "0", "nan", "1000", "0", "0", "", "0"],
        ],
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("priority"), "{err}");
    assert_eq!(
        snapshot(&mut conn).await,
        before,
        "a refused batch wrote something"
    );

    // One already in Redis (an older version wrote it), due after two good jobs.
    schedule_raw(&mut conn, &keys, "a", &job("a", 0)).await;
    schedule_raw(&mut conn, &keys, "b", &job("b", 0)).await;
    let _: () = redis::cmd("ZADD")
        .arg(&keys.scheduled)
        .arg(2)
        .arg("bad")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&keys.jobs)
        .arg("bad")
        .arg(nan_priority_job("bad"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..3 {
        fetch(&mut conn, &keys, 0).await;
    }
    assert_eq!(
        llen(&mut conn, &keys.pending).await,
        2,
        "each good job once"
    );
    assert_eq!(zcard(&mut conn, &keys.scheduled).await, 0);
    assert_eq!(zcard(&mut conn, &keys.dead).await, 1);
    let dead = hget(&mut conn, &keys.jobs, "bad").await.unwrap();
    assert!(
        dead_error(&dead).contains("priority"),
        "{}",
        dead_error(&dead)
    );
}

/// Hole 2b: a leased envelope with a wrong-typed field failed recovery half-way.
#[tokio::test]
async fn a_wrong_typed_leased_entry_goes_dead_and_the_rest_is_recovered_once() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("typed").unwrap();
    // [true,0,"p","",0,0,0,0,""] between two good jobs.
    let garbage: &[u8] = &[0x99, 0xc3, 0, 0xa1, b'p', 0xa0, 0, 0, 0, 0, 0xa0];
    let _: () = redis::cmd("LPUSH")
        .arg(&keys.pending)
        .arg(job("first", 0))
        .arg(garbage)
        .arg(job("last", 0))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (group, envs) = leased(&fetch(&mut conn, &keys, 10).await);
    assert_eq!(envs.len(), 3);
    expire_leases(&mut conn, &keys).await;
    for _ in 0..3 {
        fetch(&mut conn, &keys, 0).await;
    }
    assert_eq!(
        pending_jobs(&mut conn, &keys).await,
        2,
        "good jobs recovered once"
    );
    assert_eq!(zcard(&mut conn, &keys.dead).await, 1);
    assert_eq!(
        zcard(&mut conn, &keys.active).await,
        0,
        "group {group} is gone"
    );
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(&keys.dead)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let dead = hget(&mut conn, &keys.jobs, &ids[0]).await.unwrap();
    let dead = Envelope::decode(&dead).unwrap();
    assert!(
        dead.last_error.contains("id must be"),
        "{}",
        dead.last_error
    );
    assert_eq!(dead.payload, garbage, "the bytes are kept for the operator");
}

/// Hole 3: pushing an id again after its job died overwrote the envelope the dead entry still
/// pointed to; trimming the dead entry then deleted the new job's envelope and the new job
/// vanished when due.
#[tokio::test]
async fn reusing_the_id_of_a_dead_job_loses_neither() {
    let (server, client) = setup().await;
    let mut conn = raw(&server).await;
    let queue = client.queue("reuse");
    let keys = QueueKeys::new("reuse").unwrap();
    queue
        .push_with("old", &PushOptions::new().id("order-7").max_attempts(1))
        .await
        .unwrap();
    // A worker leases it and it dies.
    let (group, envs) = leased(&fetch(&mut conn, &keys, 10).await);
    assert_eq!(envs.len(), 1);
    let mut env = Envelope::decode(&envs[0]).unwrap();
    env.attempt = 1;
    env.last_error = "boom".into();
    fail_one(&mut conn, &keys, &group, 0, &env, "dead", 0).await;
    complete_group(&mut conn, &keys, &group).await;
    assert_eq!(zcard(&mut conn, &keys.dead).await, 1);

    // The same business id again, delayed: it takes the dead entry's place.
    queue
        .push_with(
            "new",
            &PushOptions::new()
                .id("order-7")
                .delay(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert_eq!(zcard(&mut conn, &keys.dead).await, 0, "superseded");
    // A push of an id that names a waiting job is refused, naming its state.
    match queue
        .push_with("third", &PushOptions::new().id("order-7"))
        .await
    {
        Err(Error::IdTaken { id, state }) => {
            assert_eq!((id.as_str(), state.as_str()), ("order-7", "scheduled"))
        }
        other => panic!("expected IdTaken, got {other:?}"),
    }
    // Trimming the dead set to nothing (cap 0) must not touch the new job.
    fetch_with(&mut conn, &keys, 0, 0, 25).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, envs) = leased(&fetch(&mut conn, &keys, 10).await);
    assert_eq!(envs.len(), 1, "the new job runs when due");
    assert_eq!(Envelope::decode(&envs[0]).unwrap().payload, b"new");
}

/// Two untracked jobs pushed with one id while the first was running share nothing when both
/// fail: the second is filed under a fresh id instead of overwriting the first's envelope.
#[tokio::test]
async fn two_jobs_with_one_id_failing_together_are_both_kept() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("twins").unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&keys.pending)
        .arg(job("twin", 0))
        .arg(job("twin", 0))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (group, envs) = leased(&fetch(&mut conn, &keys, 10).await);
    assert_eq!(envs.len(), 2);
    for (index, bytes) in envs.iter().enumerate() {
        let mut env = Envelope::decode(bytes).unwrap();
        env.attempt = 1;
        env.payload = format!("copy {index}").into_bytes();
        fail_one(
            &mut conn,
            &keys,
            &group,
            index as u32,
            &env,
            "retry",
            60_000,
        )
        .await;
    }
    assert_eq!(zcard(&mut conn, &keys.retry).await, 2);
    let n: u64 = redis::cmd("HLEN")
        .arg(&keys.jobs)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2, "two envelopes for two jobs");
    let copy: Vec<u8> = hget(&mut conn, &keys.jobs, "twin~1").await.unwrap();
    let copy = Envelope::decode(&copy).unwrap();
    assert_eq!(
        (copy.id.as_str(), copy.payload.as_slice()),
        ("twin~1", &b"copy 1"[..])
    );
}

/// A job filed under a fresh id (`<id>~<n>`) must not take the id of a tracked job that is
/// pending or running: such a job is not in the jobs hash, only its status record shows it, and
/// renaming the filed job's record onto it overwrote that record (found by the model test,
/// OSTQ_MODEL_SEED=16798725768088297675).
#[tokio::test]
async fn a_fresh_id_skips_the_id_of_a_tracked_job_that_is_running() {
    let (server, client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("tw").unwrap();
    let tracked = PushOptions::new().id("twin~1").track();
    client
        .queue("tw")
        .push_with("running", &tracked)
        .await
        .unwrap();
    // Two jobs with the id "twin" (pushed by hand, as two untracked pushes of one id can be),
    // the second tracked with its record.
    let mut second = Envelope::decode(&job("twin", 0)).unwrap();
    second.flags = 1;
    let _: () = redis::cmd("LPUSH")
        .arg(&keys.pending)
        .arg(job("twin", 0))
        .arg(second.encode())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(keys.record("twin"))
        .arg("state")
        .arg("pending")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (group, envs) = leased(&fetch(&mut conn, &keys, 10).await);
    assert_eq!(envs.len(), 3, "twin~1 runs while both twins fail");
    let running_record: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.record("twin~1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for (index, bytes) in envs.iter().enumerate() {
        let mut env = Envelope::decode(bytes).unwrap();
        if env.id != "twin" {
            continue;
        }
        env.attempt = 1;
        env.last_error = "boom".into();
        let tracked = env.tracked();
        fail_with(
            &mut conn,
            &keys,
            &group,
            index as u32,
            &env,
            "retry",
            60_000,
            tracked,
        )
        .await;
    }
    let after: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(keys.record("twin~1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(after, running_record, "the running job's record is its own");
    let filed: Vec<String> = redis::cmd("ZRANGE")
        .arg(&keys.retry)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(filed, ["twin", "twin~2"]);
    let state: Option<Vec<u8>> = hget(&mut conn, &keys.record("twin~2"), "state").await;
    assert_eq!(state.as_deref(), Some(&b"retry"[..]));
}

async fn fail_one(
    conn: &mut MultiplexedConnection,
    keys: &QueueKeys,
    group: &str,
    index: u32,
    env: &Envelope,
    target: &str,
    delay_ms: u64,
) {
    fail_with(conn, keys, group, index, env, target, delay_ms, false).await;
}

/// One `fail.lua` call for one leased job, as the lease keeper makes it.
#[allow(clippy::too_many_arguments)]
async fn fail_with(
    conn: &mut MultiplexedConnection,
    keys: &QueueKeys,
    group: &str,
    index: u32,
    env: &Envelope,
    target: &str,
    delay_ms: u64,
    tracked: bool,
) {
    let _: u64 = redis::cmd("EVAL")
        .arg(ostq::scripts::FAIL)
        .arg(9)
        .arg(&keys.active)
        .arg(&keys.retry)
        .arg(&keys.dead)
        .arg(&keys.jobs)
        .arg(&keys.stats)
        .arg(&keys.pending)
        .arg(&keys.scheduled)
        .arg(&keys.config)
        .arg(&keys.events)
        .arg(&keys.prefix)
        .arg(group)
        .arg(index)
        .arg(&env.id)
        .arg(env.encode())
        .arg(target)
        .arg(delay_ms)
        .arg(if tracked { "1" } else { "0" })
        .arg(env.attempt)
        .arg(&env.last_error)
        .arg("")
        .query_async(conn)
        .await
        .unwrap();
}

async fn complete_group(conn: &mut MultiplexedConnection, keys: &QueueKeys, group: &str) {
    let _: u64 = redis::cmd("EVAL")
        .arg(ostq::scripts::COMPLETE)
        .arg(6)
        .arg(&keys.complete_keys()[..])
        .arg(&keys.prefix)
        .arg(3600)
        .arg(group)
        .arg("1")
        .arg(0)
        .arg(0)
        .query_async(conn)
        .await
        .unwrap();
}

/// Hole 5 (and 9b): `push.lua` accepted numbers the worker rejects, and then held the unique key
/// and the status record for ever; a delay of inf or 1e400 scheduled a job that never runs.
#[tokio::test]
async fn push_lua_refuses_what_a_worker_would_reject_and_writes_nothing() {
    let (server, client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("strict").unwrap();
    let good = ["", "p", "", "0", "0", "0", "0", "1", "key-1", "0"];
    let cases: &[(usize, &str)] = &[
        (3, "5000000000"),
        (3, "-1"),
        (3, "1e3"),
        (4, "1.5"),
        (4, "1001"),
        (4, "nan"),
        (4, "0x10"),
        (4, " 5"),
        (5, "inf"),
        (5, "1e400"),
        (5, "-5"),
        (5, "99999999999999999999"),
        (6, "-inf"),
        (7, "128"),
        (7, "1.0"),
        (9, "nan"),
    ];
    for (field, value) in cases {
        let mut bad = good;
        bad[*field] = value;
        let before = snapshot(&mut conn).await;
        let result = push_lua(&mut conn, &keys, &[good, bad]).await;
        assert!(result.is_err(), "field {field} = {value:?} was accepted");
        assert_eq!(
            snapshot(&mut conn).await,
            before,
            "field {field} = {value:?} wrote"
        );
    }
    // A field short, and an id that is not UTF-8 (the worker could not read it).
    let before = snapshot(&mut conn).await;
    let short: redis::RedisResult<Value> = redis::cmd("EVAL")
        .arg(ostq::scripts::PUSH)
        .arg(5)
        .arg(&keys.pending)
        .arg(&keys.prioritized)
        .arg(&keys.scheduled)
        .arg(&keys.jobs)
        .arg(&keys.seq)
        .arg(&keys.prefix)
        .arg(&good[..9])
        .query_async(&mut conn)
        .await;
    assert!(short.is_err());
    let latin1: redis::RedisResult<Value> = redis::cmd("EVAL")
        .arg(ostq::scripts::PUSH)
        .arg(5)
        .arg(&keys.pending)
        .arg(&keys.prioritized)
        .arg(&keys.scheduled)
        .arg(&keys.jobs)
        .arg(&keys.seq)
        .arg(&keys.prefix)
        .arg(&b"caf\xe9"[..])
        .arg(&good[1..])
        .query_async(&mut conn)
        .await;
    assert!(latin1.is_err());
    assert_eq!(snapshot(&mut conn).await, before);
    assert!(
        push_lua(&mut conn, &keys, &[good]).await.is_ok(),
        "the good job alone is fine"
    );
    // The same limits in Rust, before anything is sent.
    let queue = client.queue("strict");
    for opts in [
        PushOptions::new().delay(Duration::MAX),
        PushOptions::new().priority(1001),
        PushOptions::new().unique_for("k", Duration::MAX),
    ] {
        assert!(matches!(
            queue.push_with("x", &opts).await,
            Err(Error::Config(_))
        ));
    }
}

/// Hole 6: a payload written as msgpack bin (Python's msgpack does that for bytes) could not be
/// decoded by recovery, which then put it back without counting the attempt: a job that crashed
/// its worker did so for ever.
#[tokio::test]
async fn a_bin_payload_job_that_crashes_its_workers_ends_dead() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("bin").unwrap();
    // [id, 0, bin8 payload, "", 0, 2, 0, 0, ""]: two attempts allowed.
    let mut env = vec![0x99, 0xa4];
    env.extend_from_slice(b"py-1");
    env.extend_from_slice(&[
        0x00, 0xc4, 0x03, 0xff, 0x00, 0x01, 0xa0, 0x00, 0x02, 0x00, 0x00, 0xa0,
    ]);
    let decoded = Envelope::decode(&env).unwrap();
    assert_eq!(decoded.payload, [0xff, 0x00, 0x01]);
    let _: () = redis::cmd("LPUSH")
        .arg(&keys.pending)
        .arg(&env)
        .query_async(&mut conn)
        .await
        .unwrap();
    for crash in 1..=3 {
        let (_, envs) = leased(&fetch(&mut conn, &keys, 10).await);
        if envs.is_empty() {
            assert_eq!(crash, 3, "two crashes spend both attempts");
            break;
        }
        // The worker sees the same job, payload intact; then it dies with it.
        assert_eq!(Envelope::decode(&envs[0]).unwrap().payload, decoded.payload);
        expire_leases(&mut conn, &keys).await;
    }
    fetch(&mut conn, &keys, 0).await;
    assert_eq!(
        zcard(&mut conn, &keys.dead).await,
        1,
        "dead after its attempts"
    );
    let dead = Envelope::decode(&hget(&mut conn, &keys.jobs, "py-1").await.unwrap()).unwrap();
    assert_eq!(
        (dead.attempt, dead.payload.as_slice()),
        (2, &[0xff, 0x00, 0x01][..])
    );
}

/// Hole 8: recovery's work per call was bounded only by the number of groups (100), so a fleet
/// crash with big groups made one `fetch.lua` call run for seconds (past Redis's script limit:
/// every other client got BUSY). Now one call moves at most 1,000 entries (and about 4 MiB).
#[tokio::test]
async fn recovery_work_per_call_is_bounded() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("crash").unwrap();
    let payload = vec![b'x'; 2048];
    let groups = 6;
    for g in 0..groups {
        let envs: Vec<Vec<u8>> = (0..1000)
            .map(|i| {
                Envelope {
                    id: format!("j{g}-{i}"),
                    payload: payload.clone(),
                    ..Envelope::default()
                }
                .encode()
            })
            .collect();
        let _: () = redis::cmd("LPUSH")
            .arg(&keys.pending)
            .arg(envs)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (_, leased_now) = leased(&fetch(&mut conn, &keys, 1000).await);
        assert_eq!(leased_now.len(), 1000);
    }
    expire_leases(&mut conn, &keys).await;
    let mut calls = 0;
    let mut slowest = Duration::ZERO;
    loop {
        let before = llen(&mut conn, &keys.pending).await;
        let started = Instant::now();
        fetch(&mut conn, &keys, 0).await;
        slowest = slowest.max(started.elapsed());
        let moved = llen(&mut conn, &keys.pending).await - before;
        calls += 1;
        assert!(moved <= 1000, "call {calls} moved {moved} entries");
        if zcard(&mut conn, &keys.active).await == 0 {
            break;
        }
        assert!(calls < 100, "recovery does not end");
    }
    assert_eq!(llen(&mut conn, &keys.pending).await, groups * 1000);
    assert!(
        calls >= groups as usize,
        "{calls} calls for {groups} groups of 1000"
    );
    eprintln!(
        "recovered {} jobs of 2 KiB in {calls} calls, slowest {slowest:?}",
        groups * 1000
    );
}

/// A renewal of a group that recovery has started on reports it lost, so its worker stops
/// renewing it; any outcome for it is stale from then on (recovery owns what is left), even one
/// that would delete the whole group.
#[tokio::test]
async fn a_group_being_recovered_is_lost_to_its_worker_and_late_acks_are_harmless() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("half").unwrap();
    // 1000 jobs of 8 KiB: more than one call's 4 MiB of recovery.
    let envs: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            Envelope {
                id: format!("h{i}"),
                payload: vec![b'x'; 8192],
                ..Envelope::default()
            }
            .encode()
        })
        .collect();
    let _: () = redis::cmd("LPUSH")
        .arg(&keys.pending)
        .arg(envs)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (group, _) = leased(&fetch(&mut conn, &keys, 1000).await);
    expire_leases(&mut conn, &keys).await;
    fetch(&mut conn, &keys, 0).await;
    let recovered = llen(&mut conn, &keys.pending).await;
    assert!(
        recovered > 0 && recovered < 1000,
        "{recovered} of 1000 in the first call"
    );
    let lost: Vec<String> = redis::cmd("EVAL")
        .arg(ostq::scripts::RENEW)
        .arg(2)
        .arg(&keys.renew_keys()[..])
        .arg(LEASE_MS)
        .arg(&group)
        .arg("")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lost, vec![group.clone()]);
    // The worker acks job 999, which recovery already took, then fails job 998.
    let _: u64 = redis::cmd("EVAL")
        .arg(ostq::scripts::COMPLETE)
        .arg(6)
        .arg(&keys.complete_keys()[..])
        .arg(&keys.prefix)
        .arg(3600)
        .arg(&group)
        .arg("0")
        .arg(1)
        .arg(1)
        .arg(999)
        .arg("h999")
        .arg("0")
        .arg("")
        .arg("")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut env = Envelope::decode(&job("h998", 0)).unwrap();
    env.attempt = 1;
    fail_one(&mut conn, &keys, &group, 998, &env, "retry", 1000).await;
    assert_eq!(
        zcard(&mut conn, &keys.retry).await,
        0,
        "stale failure ignored"
    );
    // The worker believes the group finished: deleting it now would drop the 500 entries that
    // recovery has not reached (found by tests/worker_holes.rs under a stream of outcomes).
    complete_group(&mut conn, &keys, &group).await;
    while zcard(&mut conn, &keys.active).await > 0 {
        fetch(&mut conn, &keys, 0).await;
    }
    assert_eq!(
        pending_jobs(&mut conn, &keys).await,
        1000,
        "every job recovered"
    );
}

/// Hole 9a: `retry_now` of a job with a NaN priority removed it before the write that failed:
/// the job was erased.
#[tokio::test]
async fn retry_now_of_a_bad_job_files_it_dead_instead_of_erasing_it() {
    let (server, client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("erase").unwrap();
    let _: () = redis::pipe()
        .cmd("ZADD")
        .arg(&keys.scheduled)
        .arg(u64::MAX / 4)
        .arg("bad")
        .ignore()
        .cmd("HSET")
        .arg(&keys.jobs)
        .arg("bad")
        .arg(nan_priority_job("bad"))
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    let queue = client.queue("erase");
    assert_eq!(queue.retry_now(&["bad"]).await.unwrap(), 0);
    assert_eq!(zcard(&mut conn, &keys.dead).await, 1);
    let dead = hget(&mut conn, &keys.jobs, "bad").await.unwrap();
    assert!(dead_error(&dead).contains("priority"));
}

/// The shared vectors (tests/vectors/envelopes.txt, also checked against `Envelope::decode`):
/// from `scheduled`, a valid envelope is promoted and an invalid one is filed dead; in an expired
/// lease, a valid one is recovered with its attempt counted and an invalid one is filed dead.
#[tokio::test]
async fn scripts_and_rust_agree_on_the_shared_envelope_vectors() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let text = std::fs::read_to_string(format!(
        "{}/tests/vectors/envelopes.txt",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut n = 0;
    for (line_no, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ' ');
        let valid = parts.next() == Some("valid");
        let hex = parts.next().unwrap();
        let why = parts.next().unwrap_or_default();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            Envelope::decode(&bytes).is_ok(),
            valid,
            "line {}: {why}",
            line_no + 1
        );

        let keys = QueueKeys::new(&format!("v{line_no}")).unwrap();
        schedule_raw(&mut conn, &keys, "v", &bytes).await;
        fetch(&mut conn, &keys, 0).await;
        let pending = ready(&mut conn, &keys).await;
        let dead = zcard(&mut conn, &keys.dead).await;
        assert_eq!(
            (pending, dead),
            if valid { (1, 0) } else { (0, 1) },
            "line {}: {why}",
            line_no + 1
        );

        // On the pending list, bytes that do not start with a fixarray are a bare payload, and
        // the empty array is the wake marker: neither is an envelope there.
        if !(0x91..=0x9f).contains(&bytes[0]) {
            n += 1;
            continue;
        }
        let keys = QueueKeys::new(&format!("w{line_no}")).unwrap();
        let _: () = redis::cmd("LPUSH")
            .arg(&keys.pending)
            .arg(&bytes)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (_, envs) = leased(&fetch(&mut conn, &keys, 1).await);
        assert_eq!(envs.len(), 1, "line {}: leased", line_no + 1);
        expire_leases(&mut conn, &keys).await;
        fetch(&mut conn, &keys, 0).await;
        let pending = ready(&mut conn, &keys).await;
        let dead = zcard(&mut conn, &keys.dead).await;
        assert_eq!(pending + dead, 1, "line {}: {why} (recovery)", line_no + 1);
        assert!(valid || dead == 1, "line {}: {why} (recovery)", line_no + 1);
        if valid {
            let env = Envelope::decode(&bytes).unwrap();
            let max = if env.max_attempts == 0 {
                25
            } else {
                env.max_attempts
            };
            let (key, field) = if env.attempt.saturating_add(1) >= max {
                (&keys.dead, "dead")
            } else {
                (&keys.pending, "pending")
            };
            let back: Vec<u8> = if field == "dead" {
                hget(&mut conn, &keys.jobs, &env.id).await.unwrap()
            } else if env.priority != 0 {
                let r: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                    .arg(&keys.prioritized)
                    .arg(0)
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                r.into_iter().next().unwrap()
            } else {
                redis::cmd("LINDEX")
                    .arg(key)
                    .arg(0)
                    .query_async(&mut conn)
                    .await
                    .unwrap()
            };
            let back = Envelope::decode(&back).unwrap();
            assert_eq!(
                back.attempt,
                env.attempt.saturating_add(1),
                "line {}: {why}",
                line_no + 1
            );
        }
        n += 1;
    }
    assert!(n > 40, "{n} vectors");
}

/// Found by the model-based test (tests/model.rs): a dead job's entry was given up before the
/// unique check refused the new job, so the dead job was lost; and a job filed under a fresh id
/// left its unique key and status record under the old one.
#[tokio::test]
async fn id_takeovers_and_renames_keep_every_job_key_and_record() {
    let (server, client) = setup().await;
    let mut conn = raw(&server).await;
    let queue = client.queue("model");
    let keys = QueueKeys::new("model").unwrap();
    // "b" dies.
    queue
        .push_with("old", &PushOptions::new().id("b").max_attempts(1))
        .await
        .unwrap();
    let (group, envs) = leased(&fetch(&mut conn, &keys, 10).await);
    let mut env = Envelope::decode(&envs[0]).unwrap();
    env.attempt = 1;
    fail_one(&mut conn, &keys, &group, 0, &env, "dead", 0).await;
    complete_group(&mut conn, &keys, &group).await;
    // A new "b" whose unique key is held by another job is refused: the dead "b" stays.
    queue
        .push_with("holder", &PushOptions::new().unique("u1"))
        .await
        .unwrap();
    let refused = queue
        .push_with("new", &PushOptions::new().id("b").unique("u1"))
        .await;
    assert!(
        matches!(refused, Err(Error::Duplicate { .. })),
        "{refused:?}"
    );
    assert_eq!(
        zcard(&mut conn, &keys.dead).await,
        1,
        "the dead job is kept"
    );
    // Given ids may not look generated.
    let reserved = queue.push_with("x", &PushOptions::new().id("~1")).await;
    assert!(matches!(reserved, Err(Error::Config(_))), "{reserved:?}");
    let lua = push_lua(
        &mut conn,
        &keys,
        &[["~7", "p", "", "0", "0", "0", "0", "0", "", "0"]],
    )
    .await;
    assert!(lua.is_err());

    // An untracked "x" holding unique key "u2" runs while a tracked "x" waits in `scheduled`;
    // when the first is filed for retry it becomes "x~1", and its key follows it.
    let keys = QueueKeys::new("rename").unwrap();
    let queue = client.queue("rename");
    queue
        .push_with(
            "first",
            &PushOptions::new().id("x").priority(5).unique("u2"),
        )
        .await
        .unwrap();
    let (group, envs) = leased(&fetch(&mut conn, &keys, 10).await);
    queue
        .push_with(
            "second",
            &PushOptions::new()
                .id("x")
                .track()
                .delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let mut env = Envelope::decode(&envs[0]).unwrap();
    env.attempt = 1;
    fail_one(&mut conn, &keys, &group, 0, &env, "retry", 3_600_000).await;
    let holder: Option<String> = redis::cmd("GET")
        .arg(format!("{}unique:u2", keys.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(holder.as_deref(), Some("x~1"));
    let scheduled = queue.job("x").await.unwrap().unwrap();
    assert_eq!(
        scheduled.payload.as_deref(),
        Some(&b"second"[..]),
        "the waiting job keeps its id"
    );
    assert!(queue.job("x~1").await.unwrap().is_some());

    // Deleting an untracked pending "y" leaves the record of the tracked "y" beside it.
    let queue = client.queue("records");
    queue
        .push_with("a", &PushOptions::new().id("y"))
        .await
        .unwrap();
    queue
        .push_with("b", &PushOptions::new().id("y").track())
        .await
        .unwrap();
    let pending = queue.jobs(ostq::JobState::Pending, 0, 10).await.unwrap();
    assert_eq!(pending.len(), 2);
    assert_eq!(queue.delete(&["y"]).await.unwrap(), 1);
    let left = queue.job("y").await.unwrap();
    assert!(left.is_some(), "one y is left, and findable");
}

/// Found by the model test: the wake marker took one of a fetch's slots, so a worker with one free
/// slot leased nothing while a low-priority job was ready, and idled up to a second.
#[tokio::test]
async fn the_wake_marker_takes_no_slot() {
    let (server, client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("marker").unwrap();
    // A negative priority job goes to `prioritized` and leaves a marker on the empty list.
    client
        .queue("marker")
        .push_with("low", &PushOptions::new().priority(-5))
        .await
        .unwrap();
    assert_eq!(llen(&mut conn, &keys.pending).await, 1, "the marker");
    let (_, envs) = leased(&fetch(&mut conn, &keys, 1).await);
    assert_eq!(envs.len(), 1, "the job, not the marker");
    assert_eq!(Envelope::decode(&envs[0]).unwrap().payload, b"low");
}

/// Found by the fuzz test: a failure with an empty error (a handler may return `Err("")`) left a
/// dead job with no reason.
#[tokio::test]
async fn a_failure_without_a_message_still_says_why() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("silent").unwrap();
    let _: () = redis::cmd("LPUSH")
        .arg(&keys.pending)
        .arg(job("quiet", 0))
        .query_async(&mut conn)
        .await
        .unwrap();
    let (group, envs) = leased(&fetch(&mut conn, &keys, 1).await);
    let mut env = Envelope::decode(&envs[0]).unwrap();
    env.attempt = 1;
    env.last_error = String::new();
    fail_one(&mut conn, &keys, &group, 0, &env, "dead", 0).await;
    let dead = hget(&mut conn, &keys.jobs, "quiet").await.unwrap();
    assert_eq!(dead_error(&dead), "failed without an error message");
}

/// `history.lua` checks every field/increment pair and the prefix before its first write: a bad
/// one anywhere in the call is an error reply and nothing is written, good pairs included.
#[tokio::test]
async fn history_lua_refuses_bad_pairs_and_writes_nothing() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("hist").unwrap();
    let call = |prefix: &str, pairs: &[&str]| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ostq::scripts::HISTORY).arg(0).arg(prefix);
        for p in pairs {
            cmd.arg(*p);
        }
        cmd
    };
    let long = "x".repeat(400) + "|processed";
    let bad: Vec<(&str, Vec<&str>)> = vec![
        ("ostq:{hist}", vec!["a|processed", "1"]),
        ("elsewhere:", vec!["a|processed", "1"]),
        (&keys.prefix, vec!["a|processed"]),
        (&keys.prefix, vec!["a|processed", "1", "b|failed"]),
        (&keys.prefix, vec!["a|processed", "0"]),
        (&keys.prefix, vec!["a|processed", "-1"]),
        (&keys.prefix, vec!["a|processed", "1e3"]),
        (&keys.prefix, vec!["a|processed", "1.5"]),
        (&keys.prefix, vec!["a|processed", "100000000000000"]),
        (&keys.prefix, vec!["a|processed", "1", "", "1"]),
        (&keys.prefix, vec!["a|processed", "1", "no-bar", "1"]),
        (&keys.prefix, vec!["a|processed", "1", &long, "1"]),
    ];
    let before = snapshot(&mut conn).await;
    for (prefix, pairs) in &bad {
        let reply: redis::RedisResult<Value> = call(prefix, pairs).query_async(&mut conn).await;
        assert!(reply.is_err(), "{prefix} {pairs:?} accepted: {reply:?}");
        assert_eq!(
            snapshot(&mut conn).await,
            before,
            "{prefix} {pairs:?} wrote"
        );
    }
    let written: u64 = call(&keys.prefix, &["a|processed", "2", "a|run:3", "1"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(written, 2);
    let hist: Vec<String> = redis::cmd("KEYS")
        .arg("ostq:{hist}:hist:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(hist.len(), 3, "minute, hour and totals: {hist:?}");
    for key in hist {
        let n: Option<u64> = redis::cmd("HGET")
            .arg(&key)
            .arg("a|processed")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, Some(2), "{key}");
    }
}

/// The totals hash is bounded: once it holds 20,000 fields, a field it does not have is counted
/// under `~other` in the totals, minute and hour hashes alike, while known fields still count
/// where they are.
#[tokio::test]
async fn history_totals_fold_new_task_names_into_other_once_full() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("capped").unwrap();
    let all = keys.history_totals();
    let mut fill = redis::cmd("HSET");
    fill.arg(&all);
    for i in 0..19_999 {
        fill.arg(format!("t{i}|processed")).arg(1);
    }
    let _: u64 = fill.query_async(&mut conn).await.unwrap();
    let call = |pairs: &[&str]| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ostq::scripts::HISTORY).arg(0).arg(&keys.prefix);
        for p in pairs {
            cmd.arg(*p);
        }
        cmd
    };
    // One field short of full: a new name still gets its own field, and fills the hash.
    let _: u64 = call(&["fresh|processed", "2"])
        .query_async(&mut conn)
        .await
        .unwrap();
    // Full: a known field counts in place, new ones go to ~other.
    let _: u64 = call(&[
        "fresh|processed",
        "1",
        "t7|processed",
        "1",
        "new|processed",
        "5",
        "new|run:3",
        "1",
    ])
    .query_async(&mut conn)
    .await
    .unwrap();
    let hget = |key: String, field: &'static str| {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(key).arg(field);
        cmd
    };
    let get = |field: &'static str| hget(all.clone(), field);
    let n: Option<u64> = get("fresh|processed").query_async(&mut conn).await.unwrap();
    assert_eq!(n, Some(3));
    let n: Option<u64> = get("t7|processed").query_async(&mut conn).await.unwrap();
    assert_eq!(n, Some(2));
    let n: Option<u64> = get("new|processed").query_async(&mut conn).await.unwrap();
    assert_eq!(n, None, "a new name past the bound gets no field");
    let n: Option<u64> = get("~other|processed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, Some(5));
    let n: Option<u64> = get("~other|run:3").query_async(&mut conn).await.unwrap();
    assert_eq!(n, Some(1));
    let len: u64 = redis::cmd("HLEN")
        .arg(&all)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 20_002);
    let minutes: Vec<String> = redis::cmd("KEYS")
        .arg("ostq:{capped}:hist:m:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in minutes {
        let n: Option<u64> = hget(key.clone(), "~other|processed")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, Some(5), "{key}");
    }
}

/// Bytes that are not text, where `push.lua` expects a number or a traceparent, are refused with
/// an error a client can read: the message quotes printable arguments only. It used to quote
/// them raw, and an error line that is not UTF-8 made redis-rs fail to read the reply (the
/// script fuzzer's next command on that connection failed too).
#[tokio::test]
async fn push_lua_errors_about_binary_arguments_are_readable() {
    let (server, _client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("binary-args").unwrap();
    let binary: &[u8] = b"\xff\xfe\x80 not text";
    let job = |priority: &[u8]| -> Vec<Vec<u8>> {
        let fields: [&[u8]; 10] = [b"", b"x", b"", b"0", priority, b"0", b"0", b"0", b"", b"0"];
        fields.iter().map(|f| f.to_vec()).collect()
    };
    let call = |fields: Vec<Vec<u8>>| {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ostq::scripts::PUSH)
            .arg(5)
            .arg(&keys.pending)
            .arg(&keys.prioritized)
            .arg(&keys.scheduled)
            .arg(&keys.jobs)
            .arg(&keys.seq)
            .arg(&keys.prefix);
        for f in fields {
            cmd.arg(f);
        }
        cmd
    };
    let mut as_traceparent = job(b"0");
    as_traceparent.push(binary.to_vec());
    for (fields, what) in [
        (
            job(binary),
            "priority of 12 bytes (not printable) is not an integer",
        ),
        (
            as_traceparent,
            "after the jobs of 12 bytes (not printable) is not a W3C",
        ),
    ] {
        let reply: redis::RedisResult<Value> = call(fields).query_async(&mut conn).await;
        let err = reply.expect_err("refused");
        assert!(err.to_string().contains(what), "{err}");
        // The connection reads the next reply as usual.
        let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        assert_eq!(pong, "PONG");
    }
    let pending: u64 = redis::cmd("LLEN")
        .arg(&keys.pending)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending, 0, "nothing written");
}

/// `fetch.lua` marks a tracked job's record active in one write and undoes the write when there
/// was no record: bytes that merely carry the tracked flag (pushed by hand) leave none behind,
/// while a real record gets `active` and its first start time, kept on the next attempt.
#[tokio::test]
async fn fetching_marks_existing_records_active_and_creates_none() {
    let (server, client) = setup().await;
    let mut conn = raw(&server).await;
    let keys = QueueKeys::new("marks").unwrap();
    let real = client
        .queue("marks")
        .push_with("x", &PushOptions::new().track())
        .await
        .unwrap();
    let forged = Envelope {
        id: "forged".into(),
        flags: 1,
        payload: b"p".to_vec(),
        ..Envelope::default()
    };
    assert!(forged.tracked());
    let _: u64 = redis::cmd("LPUSH")
        .arg(&keys.pending)
        .arg(forged.encode())
        .query_async(&mut conn)
        .await
        .unwrap();
    let reply = fetch(&mut conn, &keys, 10).await;
    assert_eq!(leased(&reply).1.len(), 2);
    let exists: u64 = redis::cmd("EXISTS")
        .arg(keys.record("forged"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a record was created for a job that had none");
    let record = keys.record(&real);
    assert_eq!(
        hget(&mut conn, &record, "state").await.as_deref(),
        Some(&b"active"[..])
    );
    assert!(hget(&mut conn, &record, "started_at").await.is_some());
    assert!(
        hget(&mut conn, &record, "enqueued_at").await.is_some(),
        "the record was replaced"
    );
}
