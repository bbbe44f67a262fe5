//! `ostq cron`, `ostq scheduler`, `ostq worker --cron` and `ostq events`: timed jobs and a
//! queue's events from the shell, against a private redis-server.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

/// Stops a child process with SIGTERM (as ctrl-c would) and waits for it.
fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    child.wait().unwrap()
}

/// A schedule added from the shell is listed, fired by two schedulers at once exactly once per
/// tick (job ids `cron:<name>:<tick>`), and gone once removed.
#[test]
fn schedules_from_the_shell_fire_once_per_tick_across_schedulers() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(
        &url,
        &[
            "cron",
            "add",
            "beats",
            "pulse",
            "--every",
            "1s",
            "--payload",
            "hi",
            "--task",
            "beat",
        ],
    );
    let listed = json(&url, &["cron", "list"]);
    assert_eq!(listed[0]["name"], "pulse", "{listed}");
    assert_eq!(listed[0]["spec"]["every_ms"], 1000, "{listed}");
    assert_eq!(listed[0]["spec"]["task_name"], "beat", "{listed}");
    let table = ok(&url, &["cron", "list", "beats"]);
    assert!(table.contains("every 1.0s"), "{table}");

    let mut a = cmd(&url, &["scheduler"]).spawn().unwrap();
    let mut b = cmd(&url, &["scheduler", "beats"]).spawn().unwrap();
    wait_until(Duration::from_secs(15), "three ticks fired", || {
        json(&url, &["cron", "list"])[0]["fired"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    });
    assert!(terminate(&mut a).success());
    assert!(terminate(&mut b).success());

    let fired = json(&url, &["cron", "list"])[0]["fired"].as_u64().unwrap();
    let jobs = json(&url, &["jobs", "beats", "--limit", "100"]);
    let jobs = jobs.as_array().unwrap();
    assert_eq!(
        jobs.len() as u64,
        fired,
        "one job per tick, not one per scheduler: {jobs:?}"
    );
    for job in jobs {
        assert!(
            job["id"].as_str().unwrap().starts_with("cron:pulse:"),
            "{job}"
        );
        assert_eq!(job["payload"], "hi");
        assert_eq!(job["name"], "beat");
    }

    ok(&url, &["cron", "remove", "beats", "pulse"]);
    assert_eq!(json(&url, &["cron", "list"]), serde_json::json!([]));
    let out = run(&url, &["cron", "remove", "beats", "pulse"]);
    assert_one_line_error(&out, "no schedule 'pulse'");
    let out = run(
        &url,
        &["cron", "add", "beats", "bad", "--cron", "not a cron"],
    );
    assert_one_line_error(&out, "bad cron expression");
}

/// `ostq worker --cron` fires the registered schedules and runs their jobs.
#[test]
fn a_worker_with_cron_fires_and_runs_the_schedules() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["cron", "add", "ticks", "t", "--every", "1s"]);
    let mut worker = cmd(&url, &["worker", "-q", "ticks", "--cron", "--", "true"])
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(15), "two ticks run", || {
        json(&url, &["stats", "--sample", "0"])["queues"]["ticks"]["processed_total"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    assert!(terminate(&mut worker).success());
}

/// `ostq events`: --enable turns the events on, and the stream tells what happened to each job.
#[test]
fn events_tell_what_happened_to_each_job() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let out = run(&url, &["events", "ev", "--enable", "-n", "0"]);
    assert_success(&out, &["events --enable"]);
    let id = ok(&url, &["push", "ev", "one"]).trim().to_string();
    let out = run(&url, &["worker", "-q", "ev", "--burst", "--", "true"]);
    assert_success(&out, &["worker"]);
    let text = ok(&url, &["--json", "events", "ev", "--from-start", "-n", "3"]);
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .inspect(|e| assert_eq!(e["id"], id.as_str(), "{e}"))
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["pushed", "started", "completed"]);
    let text = ok(&url, &["events", "ev", "--from-start", "-n", "1"]);
    assert!(text.contains("pushed") && text.contains(&id), "{text}");

    let out = run(&url, &["events", "ev", "--disable"]);
    assert_success(&out, &["events --disable"]);
    let out = run(&url, &["events", "ev", "--from-start", "-n", "3"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing will show"),
        "{out:?}"
    );
}
