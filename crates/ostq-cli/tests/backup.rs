//! `ostq export` and `ostq import` between private redis-servers: a round trip of every state
//! (byte-identical payloads, attempts, due times, errors, records, settings), importing twice,
//! a corrupt file (nothing written, the line number reported), `--skip-bad` and `--rename`.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{run, RedisServer};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(url: &str, args: &[&str]) -> String {
    let out = run(url, args);
    assert!(
        out.status.success(),
        "ostq {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// The lines of an export without its header (which carries the time of the export).
fn body(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// A queue with a job in every state: pending (two, in order; one binary, one prioritized and
/// tracked), scheduled, retry, dead, completed; paused, with a rate limit.
async fn fill(url: &str) {
    let client = ostq::Client::connect(url).await.unwrap();
    let videos = client.queue("videos");
    ok(url, &["push", "videos", "done", "--track"]);
    ok(url, &["push", "videos", "bad", "--max-attempts", "1"]);
    ok(
        url,
        &[
            "worker", "--queue", "videos", "--burst", "--", "test", "{}", "=", "done",
        ],
    );
    // A job waiting for its second attempt an hour from now.
    videos.push("flaky").await.unwrap();
    let worker = ostq::Worker::builder(client.clone())
        .queue("videos")
        .retry(ostq::RetryPolicy::fixed(std::time::Duration::from_secs(
            3600,
        )))
        .handler(|_job: ostq::Job| async { Err::<(), ostq::BoxError>("flaky failed".into()) })
        .build()
        .unwrap();
    let probe = videos.clone();
    worker
        .run_until(async move {
            while probe.counts().await.map(|c| c.retry).ok() != Some(1) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
    videos.push(vec![0xff_u8, 0xfe, 0x00, 0x61]).await.unwrap();
    ok(url, &["push", "videos", "first", "second"]);
    ok(
        url,
        &["push", "videos", "urgent", "--priority", "5", "--track"],
    );
    ok(url, &["push", "videos", "later", "--delay", "1h"]);
    ok(
        url,
        &[
            "cron",
            "add",
            "videos",
            "nightly",
            "--cron",
            "0 2 * * *",
            "--payload",
            "report",
            "--tz",
            "Europe/Paris",
        ],
    );
    videos
        .set_rate_limit(10, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    videos.pause().await.unwrap();
    let counts = videos.counts().await.unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.scheduled,
            counts.retry,
            counts.dead,
            counts.completed
        ),
        (4, 1, 1, 1, 1),
        "{counts:?}"
    );
}

#[tokio::test]
async fn a_round_trip_keeps_every_state_and_importing_twice_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a_file, b_file) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    fill(&a.url()).await;

    let said = ok(&a.url(), &["export", "-o", a_file.to_str().unwrap()]);
    assert!(said.contains("exported 8 job(s) of 1 queue(s)"), "{said}");
    let exported = body(&a_file);
    for state in ["pending", "scheduled", "retry", "dead", "completed"] {
        let needle = format!("\"state\":\"{state}\"");
        assert!(
            exported.iter().any(|l| l.contains(&needle)),
            "no {state} in {exported:#?}"
        );
    }
    assert!(
        exported
            .iter()
            .any(|l| l.contains("\"payload_base64\":\"//4AYQ==\"")),
        "{exported:#?}"
    );
    assert!(exported[0].contains("\"paused\":true") && exported[0].contains("\"max\":10"));

    let said = ok(&b.url(), &["import", a_file.to_str().unwrap()]);
    assert!(
        said.contains("imported 8 job(s), 0 already present"),
        "{said}"
    );
    ok(&b.url(), &["export", "-o", b_file.to_str().unwrap()]);
    assert_eq!(body(&b_file), exported);

    let schedule = exported
        .iter()
        .find(|l| l.starts_with("{\"type\":\"schedule\""));
    assert!(
        schedule.is_some_and(|l| l.contains("Europe/Paris")),
        "{exported:#?}"
    );
    let schedules = ostq::Client::connect(&b.url())
        .await
        .unwrap()
        .schedules("videos")
        .await
        .unwrap();
    assert_eq!(schedules.len(), 1);
    assert_eq!(schedules[0].spec.cron.as_deref(), Some("0 2 * * *"));

    // Twice: nothing new, every job counted as present.
    let said = ok(&b.url(), &["import", a_file.to_str().unwrap()]);
    assert!(
        said.contains("imported 0 job(s), 8 already present"),
        "{said}"
    );
    assert!(
        said.contains("0 schedule(s) added, 1 already there"),
        "{said}"
    );
    ok(&b.url(), &["export", "-o", b_file.to_str().unwrap()]);
    assert_eq!(body(&b_file), exported);

    // The restored jobs run: resume, and the pending ones complete (the binary one too).
    let client = ostq::Client::connect(&b.url()).await.unwrap();
    client.queue("videos").resume().await.unwrap();
    ok(
        &b.url(),
        &["worker", "--queue", "videos", "--burst", "--", "true"],
    );
    let counts = client.queue("videos").counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.dead, counts.scheduled),
        (0, 1, 1),
        "{counts:?}"
    );
}

#[tokio::test]
async fn a_malformed_line_stops_the_import_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    fill(&a.url()).await;
    ok(&a.url(), &["export", "-o", file.to_str().unwrap()]);
    let mut lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let last = lines.len();
    lines[last - 1] = lines[last - 1].replace("\"priority\":0", "\"priority\":5000");
    lines.insert(3, "{\"type\":\"job\",".to_string());
    std::fs::write(&file, lines.join("\n")).unwrap();

    let out = run(&b.url(), &["import", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("line 4:") && stderr.contains("nothing was written"),
        "{stderr}"
    );
    assert_eq!(b.cli(&["DBSIZE"]).unwrap(), "0", "nothing written");

    let out = run(
        &b.url(),
        &["--json", "import", file.to_str().unwrap(), "--skip-bad"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(counts["imported"], 7, "{counts}");
    assert_eq!(
        counts["bad_lines"],
        serde_json::json!([4, last + 1]),
        "{counts}"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("skipping line {}: priority 5000", last + 1)),
        "{stderr}"
    );
}

#[tokio::test]
async fn rename_imports_under_another_queue() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    let a = RedisServer::start().unwrap();
    fill(&a.url()).await;
    ok(
        &a.url(),
        &["export", "videos", "-o", file.to_str().unwrap()],
    );
    let said = ok(
        &a.url(),
        &["import", file.to_str().unwrap(), "--rename", "videos=copy"],
    );
    assert!(said.contains("imported 8 job(s)"), "{said}");
    let client = ostq::Client::connect(&a.url()).await.unwrap();
    let counts = client.queue("copy").counts().await.unwrap();
    assert_eq!(
        (counts.pending, counts.retry, counts.completed),
        (4, 1, 1),
        "{counts:?}"
    );
    assert!(client.queues().await.unwrap().contains(&"copy".to_string()));
}

#[test]
fn export_pause_leaves_a_running_queue_running() {
    let a = RedisServer::start().unwrap();
    ok(&a.url(), &["push", "jobs", "1"]);
    let out = run(&a.url(), &["export", "--pause"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().nth(1).unwrap().contains("\"paused\":false"),
        "{stdout}"
    );
    assert_eq!(a.cli(&["EXISTS", "ostq:{jobs}:paused"]).unwrap(), "0");
}

/// From a single server into a 3-node Cluster and back out: the same jobs, queues on different
/// nodes (slots 3973, 7290, 12682), importing twice adds nothing.
#[tokio::test]
async fn a_round_trip_into_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (a_file, c_file) = (dir.path().join("a.jsonl"), dir.path().join("c.jsonl"));
    let a = RedisServer::start().unwrap();
    fill(&a.url()).await;
    for queue in ["thumbs", "billing"] {
        ok(&a.url(), &["push", queue, "1", "2"]);
        ok(&a.url(), &["push", queue, "3", "--delay", "1h", "--track"]);
    }
    ok(&a.url(), &["export", "-o", a_file.to_str().unwrap()]);

    let cluster = ostq_testkit::RedisCluster::start(3).unwrap();
    let hosts: Vec<String> = cluster
        .urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_string())
        .collect();
    let url = format!("redis+cluster://{}", hosts.join(","));
    let said = ok(&url, &["import", a_file.to_str().unwrap()]);
    assert!(
        said.contains("imported 14 job(s), 0 already present"),
        "{said}"
    );
    let said = ok(&url, &["import", a_file.to_str().unwrap()]);
    assert!(
        said.contains("imported 0 job(s), 14 already present"),
        "{said}"
    );
    ok(&url, &["export", "-o", c_file.to_str().unwrap()]);
    assert_eq!(body(&c_file), body(&a_file));
}

/// A running job is exported as `active` and imported as pending, ready to run again.
#[tokio::test]
async fn an_active_job_is_imported_as_pending() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.jsonl");
    let a = RedisServer::start().unwrap();
    let b = RedisServer::start().unwrap();
    let client = ostq::Client::connect(&a.url()).await.unwrap();
    let queue = client.queue("long");
    queue.push("forever").await.unwrap();
    let worker = ostq::Worker::builder(client.clone())
        .queue("long")
        .shutdown_timeout(std::time::Duration::from_millis(100))
        .handler(|_job: ostq::Job| async {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            Ok::<(), ostq::BoxError>(())
        })
        .build()
        .unwrap();
    let path = file.clone();
    let url = a.url();
    let probe = queue.clone();
    worker
        .run_until(async move {
            while probe.counts().await.map(|c| c.active).ok() != Some(1) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            let out = run(&url, &["export", "-o", path.to_str().unwrap()]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        })
        .await
        .unwrap();
    let lines = body(&file);
    assert!(
        lines[1].contains("\"state\":\"active\"") && lines[1].contains("\"payload\":\"forever\""),
        "{lines:#?}"
    );
    ok(&b.url(), &["import", file.to_str().unwrap()]);
    let target = ostq::Client::connect(&b.url()).await.unwrap();
    let counts = target.queue("long").counts().await.unwrap();
    assert_eq!((counts.pending, counts.active), (1, 0), "{counts:?}");
    let pending = target
        .queue("long")
        .page(ostq::JobState::Pending, None, 10)
        .await
        .unwrap();
    assert_eq!(pending.jobs[0].payload.as_deref(), Some(&b"forever"[..]));
}

/// On a terminal the export shows a progress bar on stderr (sized by the counts read at the
/// start); piped, stderr has only the summary line. `script` (util-linux) gives the command a
/// terminal.
#[tokio::test]
async fn the_export_shows_progress_on_a_terminal_only() {
    let server = RedisServer::start().unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    client
        .queue("big")
        .push_bulk((0..20_000).map(|i| i.to_string()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.jsonl");
    let file = file.to_str().unwrap();

    let piped = ok(&server.url(), &["export", "-o", file]);
    assert_eq!(piped.trim(), "exported 20000 job(s) of 1 queue(s)");

    let command = format!("{} --url {} export -o {file}", common::bin(), server.url());
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("OSTQ_URL")
        .output()
        .unwrap();
    let terminal = text(&out.stdout);
    assert!(out.status.success(), "{terminal}{}", text(&out.stderr));
    assert!(terminal.contains("/20000 jobs"), "{terminal:?}");
    assert!(terminal.contains("exported 20000 job(s)"), "{terminal:?}");
}
