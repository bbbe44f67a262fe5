//! Any language can produce: plain redis-cli pushes (a bare LPUSH as the Ost gem did, and one EVAL
//! of push.lua as `ostq script push` prints it) are run by a Rust worker exactly like jobs pushed
//! from Rust.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, spawn, wait_counts};
use ostq::envelope::Envelope;
use ostq::{BoxError, Job, JobState, Worker};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn redis_cli_pushes_run_like_rust_pushes() {
    let (server, client) = setup().await;
    let queue = client.queue("videos");
    // 1. The Ost way: a bare id on the list.
    server
        .cli(&["LPUSH", "ostq:{videos}:pending", "42"])
        .unwrap();
    // 2. One EVAL of push.lua with options: a tracked, named, delayed job with a given id.
    let script = ostq::scripts::PUSH.to_string();
    let keys = [
        "ostq:{videos}:pending",
        "ostq:{videos}:prioritized",
        "ostq:{videos}:scheduled",
        "ostq:{videos}:jobs",
        "ostq:{videos}:seq",
    ];
    let mut args: Vec<&str> = vec!["EVAL", &script, "5"];
    args.extend(keys);
    // prefix, then 10 fields per job: id, payload, name, max attempts, priority, delay ms,
    // run-at ms, flags, unique key, unique ttl ms.
    args.extend([
        "ostq:{videos}:",
        "cli-1",
        "43",
        "",
        "3",
        "0",
        "200",
        "0",
        "1",
        "",
        "0",
    ]);
    args.extend(["", "44", "transcode", "0", "5", "0", "0", "0", "", "0"]);
    // redis-cli prints the {id, created, why} triples flat: id, 1, "", id, 1, "".
    let out = server.cli(&args).unwrap();
    let out: Vec<&str> = out.lines().collect();
    assert_eq!((out[0], out[1], out[2]), ("cli-1", "1", ""));
    assert!(out[3].starts_with('~'), "a generated id: {}", out[3]);
    assert_eq!(
        queue.job("cli-1").await.unwrap().unwrap().state,
        JobState::Scheduled
    );

    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let running = spawn(
        Worker::builder(client.clone())
            .queue("videos")
            .handler(move |job: Job| {
                let seen = s1.clone();
                async move {
                    seen.lock().unwrap().push((
                        job.payload_str()?.to_string(),
                        job.name.clone(),
                        job.max_attempts,
                    ));
                    Ok::<_, BoxError>("ok")
                }
            })
            .task(move |t: AnyTranscode| {
                let seen = s2.clone();
                async move {
                    seen.lock()
                        .unwrap()
                        .push((t.0.to_string(), Some("transcode".into()), 0));
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, WAIT, |c| c.processed_total == 3).await;
    running.shutdown().await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&("42".into(), None, 25)), "{seen:?}");
    assert!(seen.contains(&("43".into(), None, 3)), "{seen:?}");
    assert!(
        seen.contains(&("44".into(), Some("transcode".into()), 0)),
        "{seen:?}"
    );
    let info = queue.job("cli-1").await.unwrap().unwrap();
    assert_eq!(
        (info.state, info.result.as_deref()),
        (JobState::Completed, Some(&b"ok"[..]))
    );
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AnyTranscode(serde_json::Value);

impl ostq::Task for AnyTranscode {
    const NAME: &'static str = "transcode";
}

#[tokio::test]
async fn lua_and_rust_build_the_same_envelope() {
    let (server, client) = setup().await;
    let script = ostq::scripts::PUSH.to_string();
    let payload: &[u8] = b"\x00\xff$(rm -rf /)`x`'\"\n;";
    // A raw EVAL from a plain client, as redis-py would send it (redis-cli cannot pass NUL bytes).
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("EVAL")
        .arg(&script)
        .arg(5)
        .arg(
            &[
                "ostq:{q}:pending",
                "ostq:{q}:prioritized",
                "ostq:{q}:scheduled",
                "ostq:{q}:jobs",
                "ostq:{q}:seq",
            ][..],
        )
        .arg("ostq:{q}:")
        .arg("the-id")
        .arg(payload)
        .arg(&["name", "7", "0", "0", "0", "0", "", "0"][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    let bytes: Vec<u8> = redis::cmd("RPOP")
        .arg("ostq:{q}:pending")
        .query_async(&mut conn)
        .await
        .unwrap();
    let from_lua = Envelope::decode(&bytes).unwrap();
    let expected = Envelope {
        id: "the-id".into(),
        payload: payload.to_vec(),
        name: "name".into(),
        max_attempts: 7,
        enqueued_at_ms: from_lua.enqueued_at_ms,
        ..Envelope::default()
    };
    assert_eq!(from_lua, expected);
    assert_eq!(bytes, expected.encode(), "byte for byte");
    drop(client);
}
