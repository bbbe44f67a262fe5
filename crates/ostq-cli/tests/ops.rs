//! Inspecting and operating: jobs, job, retry, delete, purge, pause, resume, queues.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// Pushes `n` jobs that fail for good and runs a worker over them: `n` dead jobs.
fn make_dead(url: &str, queue: &str, n: usize) -> Vec<String> {
    let mut args = vec!["--json", "push", queue, "--max-attempts", "1"];
    let payloads: Vec<String> = (0..n).map(|i| format!("bad-{i}")).collect();
    args.extend(payloads.iter().map(String::as_str));
    let out = run(url, &args);
    assert_success(&out, &["push"]);
    let ids: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    ok(
        url,
        &[
            "worker",
            "-q",
            queue,
            "--burst",
            "--",
            "sh",
            "-c",
            "echo corrupt >&2; exit 1",
        ],
    );
    ids
}

#[test]
fn jobs_and_job_show_every_state() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dead = make_dead(&url, "q", 2);
    // One in retry: it fails with attempts left, and the worker leaves before it is due.
    ok(&url, &["push", "q", "again", "--max-attempts", "5"]);
    ok(
        &url,
        &[
            "worker",
            "-q",
            "q",
            "--burst",
            "--burst-wait",
            "0s",
            "--",
            "false",
        ],
    );
    ok(&url, &["push", "q", "plain"]);
    ok(&url, &["push", "q", "ready", "--priority", "3"]);
    ok(&url, &["push", "q", "later", "--delay", "1h"]);
    ok(&url, &["push", "q2", "other"]);

    let list = json(&url, &["jobs", "q", "--state", "dead"]);
    let got: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), 2);
    assert!(dead.iter().all(|id| got.contains(&id.as_str())));
    assert_eq!(list[0]["last_error"], "exit code 1: corrupt");
    assert_eq!(list[0]["state"], "dead");

    let text = ok(&url, &["jobs", "q", "--state", "dead"]);
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("exit code 1: corrupt"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");

    let scheduled = json(&url, &["jobs", "q", "--state", "scheduled"]);
    assert_eq!(scheduled[0]["payload"], "later");
    assert!(scheduled[0]["due_at_ms"].as_u64().is_some());
    // It waits in retry; if its backoff (0.5-1 s) ran out while the burst worker was finishing,
    // that worker's last fetch moved it back to pending (given back, no attempt counted).
    let retry = json(&url, &["jobs", "q", "--state", "retry"]);
    let again = if retry[0]["payload"] == "again" {
        retry[0].clone()
    } else {
        let pending = json(&url, &["jobs", "q", "--state", "pending"]);
        let found = pending
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["payload"] == "again")
            .cloned();
        found
            .unwrap_or_else(|| panic!("'again' is neither in retry nor pending: {retry} {pending}"))
    };
    assert_eq!(again["attempts"], 1);
    assert_eq!(again["last_error"], "exit code 1");
    let pending = json(&url, &["jobs", "q", "-s", "pending", "--limit", "1"]);
    assert_eq!(pending.as_array().unwrap().len(), 1);
    assert_eq!(pending[0]["payload"], "ready");
    let empty = ok(&url, &["jobs", "q", "--state", "completed"]);
    assert!(empty.is_empty());

    // `ostq job`: with the queue as an argument, with --queue, and searching every queue.
    let id = &dead[0];
    let text = ok(&url, &["job", "q", id]);
    assert!(text.contains("state:        dead"), "{text}");
    assert!(
        text.contains("last error:   exit code 1: corrupt"),
        "{text}"
    );
    assert!(text.contains("payload:      bad-"), "{text}");
    assert_eq!(json(&url, &["job", id, "--queue", "q"])["id"], id.as_str());
    assert_eq!(json(&url, &["job", id])["queue"], "q");
    let missing = run(&url, &["job", "q2", id]);
    assert_one_line_error(&missing, "no job");

    let queues = json(&url, &["queues"]);
    assert_eq!(queues, serde_json::json!(["q", "q2"]));
}

#[test]
fn binary_payloads_are_shown_escaped_and_as_base64() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let out = run_stdin(&url, &["push", "bin", "--file", "-"], b"\xff\xfeok\n");
    assert_success(&out, &["push binary"]);
    let text = ok(&url, &["jobs", "bin"]);
    assert!(text.contains("\\xff\\xfeok"), "{text}");
    let list = json(&url, &["jobs", "bin"]);
    assert_eq!(list[0]["payload"], serde_json::Value::Null);
    assert_eq!(list[0]["payload_base64"], "//5vaw==");
}

#[test]
fn retry_by_id_and_all_dead() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dead = make_dead(&url, "r", 3);
    let out = json(&url, &["retry", "r", &dead[0]]);
    assert_eq!(out["moved"], 1);
    let c = counts(&url, "r");
    assert_eq!(
        (c["dead"].as_u64(), c["pending"].as_u64()),
        (Some(2), Some(1))
    );
    let text = ok(&url, &["retry", "r", "--all-dead"]);
    assert_eq!(text.trim(), "moved 2 jobs of 'r' to pending");
    let c = counts(&url, "r");
    assert_eq!(
        (c["dead"].as_u64(), c["pending"].as_u64()),
        (Some(0), Some(3))
    );
    // A scheduled job can be run now too.
    let id = ok(&url, &["push", "r", "later", "--delay", "1h"]);
    assert_eq!(json(&url, &["retry", "r", id.trim()])["moved"], 1);
    assert_eq!(counts(&url, "r")["pending"], 4);
    let none = run(&url, &["retry", "r"]);
    assert_eq!(none.status.code(), Some(2));
}

#[test]
fn delete_and_purge() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dead = make_dead(&url, "p", 2);
    let ids = ok(&url, &["push", "p", "a", "b", "c"]);
    let ids: Vec<&str> = ids.lines().collect();
    ok(&url, &["push", "p", "later", "--delay", "1h"]);

    let text = ok(&url, &["delete", "p", ids[0], &dead[0], "no-such-id"]);
    assert_eq!(text.trim(), "deleted 2 of 3 jobs from 'p'");
    let c = counts(&url, "p");
    assert_eq!(
        (c["pending"].as_u64(), c["dead"].as_u64()),
        (Some(2), Some(1))
    );

    assert_eq!(
        json(&url, &["purge", "p", "--state", "dead", "--yes"])["purged"],
        1
    );
    let c = counts(&url, "p");
    assert_eq!(
        (
            c["pending"].as_u64(),
            c["scheduled"].as_u64(),
            c["dead"].as_u64()
        ),
        (Some(2), Some(1), Some(0))
    );
    // Not on a terminal: no question asked.
    let text = ok(&url, &["purge", "p"]);
    assert_eq!(text.trim(), "purged 3 jobs from 'p'");
    let c = counts(&url, "p");
    assert_eq!(
        (c["pending"].as_u64(), c["scheduled"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn purge_asks_on_a_terminal() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: `script` (util-linux) is not installed");
        return;
    }
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "t", "a", "b"]);
    let line = format!("{} --url {url} purge t", bin());
    // `script` gives the command a terminal; the answer comes from our stdin.
    let no = run_script(&line, b"n\n");
    assert!(no.contains("2 jobs? [y/N]"), "{no}");
    assert!(no.contains("purge cancelled"), "{no}");
    assert_eq!(counts(&url, "t")["pending"], 2);
    let yes = run_script(&line, b"y\n");
    assert!(yes.contains("purged 2 jobs"), "{yes}");
    assert_eq!(counts(&url, "t")["pending"], 0);
}

fn run_script(line: &str, input: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn pause_and_resume() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "pq", "1"]);
    let text = ok(&url, &["pause", "pq"]);
    assert!(text.starts_with("paused 'pq'"), "{text}");
    assert_eq!(counts(&url, "pq")["paused"], true);
    let stats = ok(&url, &["stats", "--sample", "0"]);
    assert!(stats.contains("pq (paused)"), "{stats}");
    // A paused queue is not served.
    let mut worker = cmd(&url, &["worker", "-q", "pq", "--", "true"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(counts(&url, "pq")["pending"], 1);
    assert_eq!(json(&url, &["resume", "pq"])["paused"], false);
    wait_until(
        std::time::Duration::from_secs(10),
        "the job to run after resume",
        || counts(&url, "pq")["processed_total"] == 1,
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
}

/// `ostq jobs --cursor`: pages that follow each other by cursor, as JSON ({jobs, next}) and as a
/// table with the next command on stderr; a bad cursor is one clear line.
#[test]
fn jobs_pages_with_a_cursor() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let payloads: Vec<String> = (0..25).map(|i| format!("v{i}")).collect();
    let mut args = vec!["push", "c"];
    args.extend(payloads.iter().map(String::as_str));
    ok(&url, &args);
    let mut seen = Vec::new();
    let mut cursor = "start".to_string();
    loop {
        let page = json(&url, &["jobs", "c", "--limit", "10", "--cursor", &cursor]);
        let jobs = page["jobs"].as_array().unwrap();
        seen.extend(
            jobs.iter()
                .map(|j| j["payload"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, payloads);

    let out = run(&url, &["jobs", "c", "--limit", "3", "--cursor", "start"]);
    assert_success(&out, &["jobs --cursor start"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("next page: ostq jobs c --state pending --limit 3 --cursor "),
        "{stderr}"
    );
    assert_one_line_error(&run(&url, &["jobs", "c", "--cursor", "nope"]), "cursor");
}

/// `ostq workers` lists an `ostq worker` process (its pid, queues and slots) while it runs, and
/// not after it stops on SIGTERM (a clean stop removes its registry entry at once).
#[test]
fn workers_lists_a_running_worker() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let text = run(&url, &["workers"]);
    assert_success(&text, &["workers with none"]);
    assert!(String::from_utf8_lossy(&text.stderr).contains("no live workers"));
    let mut worker = cmd(
        &url,
        &["worker", "-q", "wq", "--concurrency", "4", "--", "true"],
    )
    .spawn()
    .unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        "the worker to register",
        || {
            json(&url, &["workers"])
                .as_array()
                .is_some_and(|w| w.len() == 1)
        },
    );
    let listed = json(&url, &["workers"]);
    let entry = &listed[0];
    assert_eq!(entry["pid"], worker.id(), "{listed}");
    assert_eq!(entry["queues"], serde_json::json!(["wq"]), "{listed}");
    assert_eq!(entry["concurrency"], 4, "{listed}");
    let table = ok(&url, &["workers"]);
    assert!(table.contains("0/4") && table.contains("wq"), "{table}");

    let pid = worker.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(worker.wait().unwrap().success());
    assert_eq!(json(&url, &["workers"]), serde_json::json!([]));
}

/// `ostq stats --require-workers` alerts (exit 3, one line) for a queue with pending jobs and no
/// live worker, not for a paused one (it is meant not to be served), and stops once a worker
/// serves it (busy with one job, so the other stays pending).
#[test]
fn stats_alerts_when_pending_jobs_have_no_worker() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "lonely", "1", "2"]);
    let out = run(&url, &["stats", "--sample", "0", "--require-workers"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("queue 'lonely' has 2 pending jobs and no live worker"),
        "{stderr}"
    );
    // Without the flag, no alert: the check is asked for.
    assert_eq!(
        run(&url, &["stats", "--sample", "0"]).status.code(),
        Some(0)
    );
    // Paused: no alert.
    ok(&url, &["pause", "lonely"]);
    let out = run(&url, &["stats", "--sample", "0", "--require-workers"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    ok(&url, &["resume", "lonely"]);

    let mut worker = cmd(
        &url,
        &["worker", "-q", "lonely", "-c", "1", "--", "sleep", "30"],
    )
    .spawn()
    .unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        "the worker to register and take a job",
        || {
            let stats = json(&url, &["stats", "--sample", "0"]);
            stats["queues"]["lonely"]["workers"] == 1 && stats["queues"]["lonely"]["active"] == 1
        },
    );
    let out = run(&url, &["stats", "--sample", "0", "--require-workers"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    worker.kill().unwrap();
    worker.wait().unwrap();
}

/// `ostq jobs … | head`: the command ends quietly when its reader goes, as Unix tools do (it
/// panicked with "failed printing to stdout: Broken pipe").
#[test]
fn listing_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let payloads: Vec<String> = (0..3000).map(|i| i.to_string()).collect();
    let mut args = vec!["push", "long"];
    args.extend(payloads.iter().map(String::as_str));
    ok(&url, &args);
    let mut child = cmd(&url, &["--json", "jobs", "long", "--limit", "3000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    // The reader is gone (dropped above).
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{out:?}");
}

/// `ostq remove` deletes a queue's jobs and its name; it refuses while a worker holds a job of
/// it (nothing deleted) unless --force.
#[test]
fn remove_deletes_a_queue_and_refuses_while_workers_hold_its_jobs() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "gone", "a", "b"]);
    ok(&url, &["push", "kept", "c"]);
    let text = ok(&url, &["remove", "gone", "--yes"]);
    assert!(text.starts_with("removed 'gone' ("), "{text}");
    let queues = json(&url, &["queues"]);
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().or(q.as_str()).unwrap())
        .collect();
    assert_eq!(names, ["kept"], "{queues}");

    // A worker holds a job of 'busy' (its program sleeps): refused, then forced.
    ok(&url, &["push", "busy", "x"]);
    ok(&url, &["push", "busy", "later", "--delay", "1h"]);
    let mut worker = cmd(
        &url,
        &["worker", "-q", "busy", "-c", "1", "--", "sleep", "30"],
    )
    .spawn()
    .unwrap();
    wait_until(
        std::time::Duration::from_secs(10),
        "the worker to hold a job",
        || counts(&url, "busy")["active"] == 1,
    );
    let out = run(&url, &["remove", "busy", "--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("workers hold 1 jobs of 'busy': nothing was deleted"),
        "{err}"
    );
    assert_eq!(counts(&url, "busy")["scheduled"], 1);
    worker.kill().unwrap();
    worker.wait().unwrap();
    let forced = json(&url, &["remove", "busy", "--force", "--yes"]);
    assert_eq!(
        (forced["removed"].clone(), forced["active"].clone()),
        (true.into(), 1.into())
    );
    assert_eq!(counts(&url, "busy")["scheduled"], 0);
}

/// `ostq shards`: sets and shows a queue's shards; pushes spread over them, `stats` and `queues`
/// show one logical queue, and a worker serves every shard.
#[test]
fn shards_make_one_logical_queue() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let set = json(&url, &["shards", "sq", "3"]);
    assert_eq!(set["shards"].as_array().unwrap().len(), 3);
    assert_eq!(set["shards"][0], "sq");
    let text = ok(&url, &["shards", "sq"]);
    assert!(text.starts_with("'sq' has 3 shard(s):"), "{text}");
    let err = run(&url, &["shards", "sq", "0"]);
    assert!(!err.status.success());
    let payloads: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    let mut args = vec!["push", "sq"];
    args.extend(payloads.iter().map(String::as_str));
    ok(&url, &args);
    assert_eq!(counts(&url, "sq")["pending"], 9);
    assert_eq!(json(&url, &["queues"]), serde_json::json!(["sq"]));
    let stats = ok(&url, &["stats", "--sample", "0"]);
    assert!(stats.contains("sq"), "{stats}");
    ok(&url, &["worker", "-q", "sq", "--burst", "--", "true"]);
    let after = counts(&url, "sq");
    assert_eq!(
        (after["pending"].clone(), after["processed_total"].clone()),
        (0.into(), 9.into())
    );
}
