//! `ostq push` (arguments, files, stdin, options) and `ostq stats` (JSON, thresholds, watch).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[test]
fn push_arguments_prints_ids_and_stats_counts_them() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let text = ok(&url, &["push", "videos", "42", "43"]);
    let ids: Vec<&str> = text.lines().collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.len() == 26), "{ids:?}");
    let ids = json(&url, &["push", "videos", "44"]);
    assert_eq!(ids.as_array().unwrap().len(), 1);
    ok(&url, &["push", "videos", "later", "--delay", "1h"]);
    ok(
        &url,
        &[
            "push",
            "videos",
            "new-year",
            "--at",
            "2999-01-01T00:00:00+01:00",
        ],
    );
    ok(&url, &["push", "videos", "vip", "--priority", "5"]);
    ok(&url, &["push", "videos", "low", "--priority", "-5"]);

    let stats = json(&url, &["stats", "--sample", "200ms"]);
    let q = &stats["queues"]["videos"];
    assert_eq!(q["pending"], 5);
    assert_eq!(q["scheduled"], 2);
    for key in [
        "active",
        "retry",
        "dead",
        "completed",
        "processed_total",
        "failed_total",
    ] {
        assert_eq!(q[key], 0, "{key}");
    }
    assert_eq!(q["jobs_per_sec"], 0.0);
    assert!(q["oldest_pending_age_ms"].as_u64().is_some());
    assert!(stats["redis"]["used_memory"].as_u64().unwrap() > 0);
    assert!(stats["redis"]["connected_clients"].as_u64().unwrap() >= 1);

    // Priority first, then first in, first out.
    let pending = json(&url, &["jobs", "videos"]);
    let payloads: Vec<&str> = pending
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["payload"].as_str().unwrap())
        .collect();
    assert_eq!(payloads.first(), Some(&"vip"));
    assert!(payloads.contains(&"low"));
    let text = ok(&url, &["stats", "--sample", "0"]);
    assert!(text.contains("videos"), "{text}");
    assert!(text.contains("redis:"), "{text}");
}

#[test]
fn push_file_in_batches_and_from_stdin() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ids.txt");
    let mut f = std::fs::File::create(&file).unwrap();
    for i in 0..25_000 {
        writeln!(f, "{i}").unwrap();
    }
    write!(f, "\r\n\nlast-without-newline").unwrap();
    drop(f);
    let out = run(&url, &["push", "bulk", "--file", file.to_str().unwrap()]);
    assert_success(&out, &["push --file"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pushed 25001 jobs to 'bulk'"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(counts(&url, "bulk")["pending"], 25_001);
    let first = json(&url, &["jobs", "bulk", "--limit", "1"]);
    assert_eq!(first[0]["payload"], "0");
    let last = json(&url, &["jobs", "bulk", "--offset", "25000", "--limit", "5"]);
    assert_eq!(last[0]["payload"], "last-without-newline");

    let out = run_stdin(
        &url,
        &["--json", "push", "piped", "--file", "-", "--delay", "1h"],
        b"a\nb\nc\n",
    );
    assert_success(&out, &["push stdin"]);
    let ids: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(counts(&url, "piped")["scheduled"], 3);
}

/// Jobs that go through `push.lua` are pushed from a file in transactions of 2,000, not 10,000:
/// Redis serves no one else during a `MULTI`/`EXEC`, and 10,000 tracked jobs held it for about
/// 200 ms. Counted, not timed: the transactions Redis ran.
#[test]
fn a_scripted_push_from_a_file_is_cut_into_short_transactions() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let transactions = || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "info", "commandstats"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_exec:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let lines: String = (0..5_000).map(|i| format!("{i}\n")).collect();
    let before = transactions();
    let out = run_stdin(
        &url,
        &["push", "tracked", "--file", "-", "--track"],
        lines.as_bytes(),
    );
    assert_success(&out, &["push --track"]);
    assert_eq!(counts(&url, "tracked")["pending"], 5_000);
    // 2,000 + 2,000 in a transaction each; the last 1,000 are one script call, no transaction.
    assert_eq!(transactions() - before, 2);
    // Plain jobs keep the batches of 10,000 (one transaction here).
    let before = transactions();
    let out = run_stdin(&url, &["push", "plain", "--file", "-"], lines.as_bytes());
    assert_success(&out, &["push plain"]);
    assert_eq!(counts(&url, "plain")["pending"], 5_000);
    assert_eq!(transactions() - before, 1);
}

#[test]
fn push_with_an_id_and_max_attempts() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let out = ok(
        &url,
        &[
            "push",
            "q",
            "payload",
            "--id",
            "order-7",
            "--max-attempts",
            "3",
        ],
    );
    assert_eq!(out.trim(), "order-7");
    let job = json(&url, &["job", "order-7"]);
    assert_eq!(job["queue"], "q");
    assert_eq!(job["max_attempts"], 3);
    assert_eq!(job["state"], "pending");
}

#[test]
fn stats_thresholds_exit_3_with_one_line() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    for i in 0..11 {
        ok(&url, &["push", "busy", &i.to_string()]);
    }
    let out = run(&url, &["stats", "--sample", "0", "--max-pending", "10"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "alert: queue 'busy' has 11 pending jobs (max 10)"
    );
    let out = run(&url, &["stats", "--sample", "0", "--max-pending", "11"]);
    assert_eq!(out.status.code(), Some(0));

    std::thread::sleep(Duration::from_millis(50));
    let out = run(
        &url,
        &["--json", "stats", "--sample", "0", "--max-latency", "10ms"],
    );
    assert_eq!(out.status.code(), Some(3));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["alerts"][0].as_str().unwrap().contains("latency"));

    // A failure rate: one job that fails for good.
    ok(&url, &["push", "bad", "x", "--max-attempts", "1"]);
    ok(&url, &["worker", "-q", "bad", "--burst", "--", "false"]);
    let out = run(
        &url,
        &["stats", "bad", "--sample", "0", "--max-failure-rate", "50%"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failure rate is 100.0%"));
    let out = run(
        &url,
        &[
            "stats",
            "busy",
            "--sample",
            "0",
            "--max-failure-rate",
            "0.5",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn stats_watch_refreshes_and_measures_throughput() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "w", "1"]);
    let mut child = cmd(&url, &["--json", "stats", "--watch", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["queues"]["w"]["pending"], 1);
    ok(&url, &["worker", "-q", "w", "--burst", "--", "true"]);
    let mut measured = false;
    for _ in 0..20 {
        let doc: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        if doc["queues"]["w"]["processed_total"] == 1 {
            assert!(doc["queues"]["w"]["jobs_per_sec"].as_f64().unwrap() > 0.0);
            measured = true;
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(measured);
}

/// `ostq script push` prints the script as Redis runs it (shared Lua helpers pasted in), so one
/// `redis-cli EVAL` of it enqueues a job any worker runs; an unknown name is a clear error.
#[test]
fn script_prints_an_evalable_push() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let source = ok(&url, &["script", "push"]);
    assert!(!source.contains("-- @include"), "includes are resolved");
    let reply = redis
        .cli(&[
            "EVAL",
            &source,
            "5",
            "ostq:{cli}:pending",
            "ostq:{cli}:prioritized",
            "ostq:{cli}:scheduled",
            "ostq:{cli}:jobs",
            "ostq:{cli}:seq",
            "ostq:{cli}:",
            "order-1",
            "43",
            "",
            "0",
            "0",
            "0",
            "0",
            "1",
            "",
            "0",
        ])
        .unwrap();
    assert_eq!(reply.lines().next(), Some("order-1"), "{reply}");
    let job = json(&url, &["job", "cli", "order-1"]);
    assert_eq!(job["state"], "pending", "{job}");
    let names = ok(&url, &["script", "--list"]);
    assert!(names.lines().any(|n| n == "fetch"), "{names}");
    let out = run(&url, &["script", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("push, fetch"));
}

/// `ostq stats` (and `push`, `jobs`, `job`, `worker`) reach Redis through the library's client, so
/// every URL the library takes works:
/// through Sentinel it failed with "bad Redis URL … InvalidClientConfig" while `push` worked.
/// It shows the version and warns when the eviction policy may delete queue keys.
#[test]
fn stats_works_through_sentinel_and_warns_about_eviction() {
    let primary = RedisServer::start().unwrap();
    let sentinel = ostq_testkit::RedisSentinel::start(&primary, "mymaster").unwrap();
    let url = format!("redis+sentinel://{}/mymaster", sentinel.addr());
    ok(&url, &["push", "videos", "42"]);
    let stats = json(&url, &["stats", "--sample", "0"]);
    assert_eq!(stats["queues"]["videos"]["pending"], 1, "{stats}");
    assert!(
        stats["redis"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{stats}"
    );
    assert_eq!(stats["redis"]["maxmemory_policy"], "noeviction");
    // jobs, job and worker go through the sentinels too.
    ok(&url, &["push", "videos", "43", "--id", "v-43", "--track"]);
    assert_eq!(json(&url, &["jobs", "videos"]).as_array().unwrap().len(), 2);
    assert_eq!(json(&url, &["job", "videos", "v-43"])["state"], "pending");
    let out = run(
        &url,
        &["worker", "--queue", "videos", "--burst", "--", "true"],
    );
    assert_success(&out, &["worker --burst through sentinel"]);
    assert_eq!(json(&url, &["job", "videos", "v-43"])["state"], "completed");
    assert_eq!(counts(&url, "videos")["pending"], 0);

    primary
        .cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .unwrap();
    let text = ok(&url, &["stats", "--sample", "0"]);
    assert!(text.contains("maxmemory-policy is allkeys-lru"), "{text}");
}

/// Every command reaches a Redis Cluster with a `redis+cluster://` URL (no CLI command could).
#[test]
fn the_cli_works_against_a_cluster() {
    let cluster = ostq_testkit::RedisCluster::start(3).unwrap();
    let hosts: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_string())
        .collect();
    let url = format!("redis+cluster://{}", hosts.join(","));
    ok(&url, &["push", "videos", "42", "43"]);
    ok(&url, &["push", "videos", "44", "--id", "v-44", "--track"]);
    let stats = json(&url, &["stats", "--sample", "0"]);
    assert_eq!(stats["queues"]["videos"]["pending"], 3, "{stats}");
    assert!(stats["redis"]["used_memory"].as_u64().unwrap() > 0);
    assert_eq!(json(&url, &["jobs", "videos"]).as_array().unwrap().len(), 3);
    assert_eq!(json(&url, &["job", "videos", "v-44"])["state"], "pending");
    let out = run(
        &url,
        &["worker", "--queue", "videos", "--burst", "--", "true"],
    );
    assert_success(&out, &["worker --burst on a cluster"]);
    assert_eq!(json(&url, &["job", "videos", "v-44"])["state"], "completed");
    assert_eq!(counts(&url, "videos")["pending"], 0);
}

/// A bare entry (`redis-cli LPUSH`) has no enqueue time: its age is unknown, shown as "-" and
/// never a latency alert. It used to be read as enqueued at 0 (LATENCY "20783d 6h", and
/// `--max-latency 5m` exited 3 for ever).
#[test]
fn bare_entries_have_an_unknown_latency_not_an_alarm() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    redis
        .cli(&["LPUSH", "ostq:{bare}:pending", "1", "2", "3"])
        .unwrap();
    redis.cli(&["SADD", "ostq:queues", "bare"]).unwrap();
    let out = run(&url, &["stats", "--sample", "0", "--max-latency", "1ms"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stats = json(&url, &["stats", "--sample", "0"]);
    assert_eq!(stats["queues"]["bare"]["pending"], 3, "{stats}");
    assert!(
        stats["queues"]["bare"]["oldest_pending_age_ms"].is_null(),
        "{stats}"
    );
}

/// The `alert: …` lines of a run, sorted (one line per crossed threshold).
fn alert_lines(out: &std::process::Output) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// `--max-memory`: without maxmemory the share cannot be checked (one line, however many
/// queues); with one, it fires above the share and stays quiet below it.
#[test]
fn stats_max_memory_alerts_on_the_share_of_maxmemory() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "a", "1"]);
    ok(&url, &["push", "b", "1"]);
    let out = run(&url, &["stats", "--sample", "0", "--max-memory", "80%"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        alert_lines(&out),
        ["alert: Redis has no maxmemory: its memory use cannot be checked against a limit"]
    );
    let out = run(&url, &["stats", "--sample", "0"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // maxmemory at twice what Redis uses now: about 50%, well clear of 10% and 90%.
    let used = json(&url, &["stats", "--sample", "0"])["redis"]["used_memory"]
        .as_u64()
        .unwrap();
    let max = used * 2;
    redis
        .cli(&["CONFIG", "SET", "maxmemory", &max.to_string()])
        .unwrap();
    let out = run(&url, &["stats", "--sample", "0", "--max-memory", "0.1"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let lines = alert_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let rest = lines[0]
        .strip_prefix("alert: Redis memory is ")
        .unwrap_or_else(|| panic!("{lines:?}"));
    let (pct, rest) = rest.split_once("% of maxmemory (").unwrap();
    let (now, rest) = rest.split_once(" of ").unwrap();
    assert_eq!(rest, format!("{max} bytes; max 10.0%)"));
    let now: u64 = now.parse().unwrap();
    assert_eq!(pct, format!("{:.1}", now as f64 / max as f64 * 100.0));
    let share: f64 = pct.parse().unwrap();
    assert!((30.0..70.0).contains(&share), "{share}");

    let out = run(
        &url,
        &["--json", "stats", "--sample", "0", "--max-memory", "10%"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["alerts"].as_array().unwrap().len(), 1, "{doc}");
    assert!(doc["alerts"][0]
        .as_str()
        .unwrap()
        .starts_with("Redis memory is "));
    let out = run(&url, &["stats", "--sample", "0", "--max-memory", "90%"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(alert_lines(&out).is_empty(), "{out:?}");
}

/// `--max-connections`: extra clients held open push `connected_clients` over the threshold.
#[test]
fn stats_max_connections_counts_the_clients() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let held: Vec<std::net::TcpStream> = (0..5)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
            s.write_all(b"PING\r\n").unwrap();
            let mut reply = [0u8; 7];
            std::io::Read::read_exact(&mut s, &mut reply).unwrap();
            assert_eq!(&reply, b"+PONG\r\n");
            s
        })
        .collect();
    let out = run(
        &url,
        &["--json", "stats", "--sample", "0", "--max-connections", "4"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let clients = doc["redis"]["connected_clients"].as_u64().unwrap();
    assert!(clients >= 6, "5 held and ostq's own: {doc}");
    let line = format!("Redis has {clients} connected clients (max 4)");
    assert_eq!(doc["alerts"], serde_json::json!([line]), "{doc}");
    assert_eq!(alert_lines(&out), [format!("alert: {line}")]);

    let out = run(
        &url,
        &["stats", "--sample", "0", "--max-connections", "1000"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(alert_lines(&out).is_empty(), "{out:?}");
    drop(held);
}

/// `--max-dead` fires per queue over the threshold, quiet at it; several crossed thresholds
/// give one line each; `--watch` shows the same alerts.
#[test]
fn stats_max_dead_alerts_per_queue_and_in_watch() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "bad", "x", "y", "--max-attempts", "1"]);
    ok(
        &url,
        &["worker", "-q", "bad", "--burst", "--", "sh", "-c", "exit 1"],
    );
    ok(&url, &["push", "fine", "1", "2"]);
    assert_eq!(counts(&url, "bad")["dead"], 2);

    let out = run(&url, &["stats", "--sample", "0", "--max-dead", "1"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        alert_lines(&out),
        ["alert: queue 'bad' has 2 dead jobs (max 1)"]
    );
    let out = run(&url, &["stats", "--sample", "0", "--max-dead", "2"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(alert_lines(&out).is_empty(), "{out:?}");

    let args = [
        "stats",
        "--sample",
        "0",
        "--max-dead",
        "0",
        "--max-pending",
        "0",
    ];
    let out = run(&url, &args);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        alert_lines(&out),
        [
            "alert: queue 'bad' has 2 dead jobs (max 0)",
            "alert: queue 'fine' has 2 pending jobs (max 0)",
        ]
    );
    let doc = run(&url, &[&["--json"][..], &args].concat());
    let doc: serde_json::Value = serde_json::from_slice(&doc.stdout).unwrap();
    assert_eq!(doc["alerts"].as_array().unwrap().len(), 2, "{doc}");

    let mut child = cmd(
        &url,
        &["stats", "--watch", "--interval", "200ms", "--max-dead", "1"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = lines
        .take(50)
        .map(Result::unwrap)
        .any(|l| l == "ALERT: queue 'bad' has 2 dead jobs (max 1)");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen);
}

/// `--max-recent-failure-rate` reads the last 5 minutes of the per-minute history (flushed by
/// the burst worker as it exits): 2 of 4 attempts failed is 50%, over 40% and under 60%.
#[test]
fn stats_max_recent_failure_rate_reads_the_history() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "mixed", "ok", "ok", "--max-attempts", "1"]);
    ok(
        &url,
        &["push", "mixed", "bad", "bad", "--max-attempts", "1"],
    );
    ok(&url, &["push", "idle", "1"]);
    // A threshold with nothing processed in the window is quiet.
    let out = run(
        &url,
        &["stats", "--sample", "0", "--max-recent-failure-rate", "0"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    ok(
        &url,
        &[
            "worker",
            "-q",
            "mixed",
            "--burst",
            "--",
            "sh",
            "-c",
            r#"read p; [ "$p" != bad ]"#,
        ],
    );
    assert_eq!(counts(&url, "mixed")["dead"], 2);

    let out = run(
        &url,
        &["stats", "--sample", "0", "--max-recent-failure-rate", "40%"],
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        alert_lines(&out),
        ["alert: queue 'mixed' failure rate over the last 5m is 50.0% (max 40.0%)"]
    );
    let out = run(
        &url,
        &["stats", "--sample", "0", "--max-recent-failure-rate", "60%"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(alert_lines(&out).is_empty(), "{out:?}");

    let stats = json(&url, &["stats", "--sample", "0"]);
    assert_eq!(
        stats["queues"]["mixed"]["recent_failure_rate"], 0.5,
        "{stats}"
    );
    assert_eq!(
        stats["queues"]["idle"]["recent_failure_rate"],
        serde_json::Value::Null
    );
}

/// `ostq push --unique KEY`: a second push while the first job holds the key pushes nothing and
/// prints the holder's id; `--unique-for` needs `--unique`; a key names one job.
#[test]
fn push_unique_prints_the_holder_instead_of_pushing_twice() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let first = ok(
        &url,
        &[
            "push",
            "uq",
            "a",
            "--unique",
            "report:42",
            "--name",
            "report",
        ],
    );
    let first = first.trim();
    let again = run(&url, &["push", "uq", "b", "--unique", "report:42"]);
    assert_success(&again, &["push again"]);
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), first);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!(
            "not pushed: job {first} holds the unique key \"report:42\""
        )),
        "{again:?}"
    );
    let stats = json(&url, &["stats", "--sample", "0"]);
    assert_eq!(stats["queues"]["uq"]["pending"], 1);
    let job = json(&url, &["job", first]);
    assert_eq!(job["name"], "report", "{job}");

    let held = ok(
        &url,
        &[
            "push",
            "uq",
            "c",
            "--unique",
            "hourly",
            "--unique-for",
            "1h",
        ],
    );
    let out = run(&url, &["push", "uq", "d", "--unique", "hourly"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), held.trim());

    let out = run(&url, &["push", "uq", "x", "y", "--unique", "k"]);
    assert_one_line_error(&out, "--unique keys one job");
    let out = run(&url, &["push", "uq", "x", "--unique-for", "1h"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Latency over jobs from every source at once: a `push.lua` job from redis-cli (oldest, so it
/// runs next), an `ostq push` job and a bare `LPUSH` (newest). The age is the next job's: real,
/// and an alert exactly when it crosses the threshold; once only bare entries are left, unknown
/// and never an alert.
#[test]
fn latency_over_pushes_from_every_source_is_the_next_jobs_age() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let script = ok(&url, &["script", "push"]);
    let p = |k: &str| format!("ostq:{{mixed}}:{k}");
    let keys = [
        p("pending"),
        p("prioritized"),
        p("scheduled"),
        p("jobs"),
        p("seq"),
    ];
    let mut eval = vec!["EVAL", script.as_str(), "5"];
    eval.extend(keys.iter().map(String::as_str));
    let prefix = p("");
    eval.extend([
        prefix.as_str(),
        "",
        "from-lua",
        "",
        "0",
        "0",
        "0",
        "0",
        "0",
        "",
        "0",
    ]);
    redis.cli(&eval).unwrap();
    redis.cli(&["SADD", "ostq:queues", "mixed"]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ok(&url, &["push", "mixed", "from-cli"]);
    redis.cli(&["LPUSH", &p("pending"), "bare"]).unwrap();

    let stats = json(&url, &["stats", "--sample", "0"]);
    let age = stats["queues"]["mixed"]["oldest_pending_age_ms"]
        .as_u64()
        .unwrap();
    assert!(
        (300..60_000).contains(&age),
        "the push.lua job's age: {age} ms"
    );
    let out = run(&url, &["stats", "--sample", "0", "--max-latency", "250ms"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue 'mixed' latency is"));
    let out = run(&url, &["stats", "--sample", "0", "--max-latency", "1m"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // The test's shortcut (never do this to a live queue: design §14): take the two jobs with
    // an enqueue time off the list, so the bare entry is next.
    redis.cli(&["RPOP", &p("pending"), "2"]).unwrap();
    let stats = json(&url, &["stats", "--sample", "0"]);
    assert_eq!(stats["queues"]["mixed"]["pending"], 1, "{stats}");
    assert!(
        stats["queues"]["mixed"]["oldest_pending_age_ms"].is_null(),
        "{stats}"
    );
    let out = run(&url, &["stats", "--sample", "0", "--max-latency", "1ms"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_durable_push_that_no_replica_confirms_exits_5_and_prints_the_id() {
    // No replica at all: WAIT 1 times out with 0.
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let out = run(&url, &["push", "orders", "7", "--durable", "1:100ms"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stdout}{stderr}");
    assert!(stderr.contains("0 of 1 replicas"), "{stderr}");
    let id = stdout.trim();
    assert_eq!(id.len(), 26, "{stdout}");
    // The job is on the primary all the same.
    assert_eq!(counts(&url, "orders")["pending"], 1);
    assert!(stderr.contains(id), "{stderr}");
    // Off: done at once. A malformed setting is refused before anything is written.
    ok(&url, &["push", "orders", "8", "--durable", "none"]);
    let out = run(&url, &["push", "orders", "9", "--durable", "1:forever"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(counts(&url, "orders")["pending"], 2);
}
