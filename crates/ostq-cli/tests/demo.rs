//! `ostq demo`: the story on a private or a shared Redis, and its failure modes.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn private_port(stdout: &str) -> u16 {
    let at = stdout
        .find("private redis-server at redis://127.0.0.1:")
        .unwrap();
    let rest = &stdout[at + "private redis-server at redis://127.0.0.1:".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn assert_story(stdout: &str) {
    for needle in [
        "producer: pushed 20 video ids",
        "transcoded video-101",
        "video-113 FAILED (attempt 1/25)",
        "transcoded video-113",
        "(on its retry)",
        "video-666 FAILED (attempt 2/2)",
        "moved to the dead set",
        "the scheduled premiere fired",
        "all 22 jobs finished: 21 transcoded, 1 in the dead set",
        "Final stats",
        "corrupt source file",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn demo_on_a_private_server_plays_the_story_and_stops_the_server() {
    let start = Instant::now();
    let out = Command::new(bin())
        .args(["demo", "--private"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out, &["demo --private"]);
    assert!(start.elapsed() < Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_story(&stdout);
    let port = private_port(&stdout);
    assert_ne!(port, 6379);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "redis-server still running"
    );
}

#[test]
fn demo_without_a_reachable_redis_starts_its_own() {
    let port = ostq_testkit::free_port();
    let out = run(&format!("redis://127.0.0.1:{port}"), &["demo"]);
    assert_success(&out, &["demo with nothing at the URL"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("does not answer; starting a private redis-server"),
        "{stdout}"
    );
    assert_story(&stdout);
}

#[test]
fn demo_on_a_shared_redis_uses_its_own_queue_and_cleans_up() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "videos", "keep-me"]);
    let out = run(&url, &["demo"]);
    assert_success(&out, &["demo on a shared Redis"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_story(&stdout);
    assert!(stdout.contains("videos-demo-"), "{stdout}");
    // The user's own queue is untouched, the demo's queue is empty again.
    let stats = json(&url, &["stats", "--sample", "0"]);
    assert_eq!(stats["queues"]["videos"]["pending"], 1);
    for (name, q) in stats["queues"].as_object().unwrap() {
        if name.starts_with("videos-demo-") {
            for key in ["pending", "scheduled", "retry", "dead", "active"] {
                assert_eq!(q[key], 0, "{name} {key}");
            }
        }
    }
}

#[test]
fn demo_without_redis_server_installed_says_how_to_install_it() {
    let out = Command::new(bin())
        .args(["demo", "--private"])
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, "apt-get install redis-server");
}

#[test]
fn demo_interrupted_stops_its_server() {
    let mut child = Command::new(bin())
        .args(["demo", "--private"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut port = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("private redis-server at") {
            port = Some(private_port(&line));
        }
        if line.contains("worker-3: started") {
            break;
        }
    }
    let port = port.unwrap();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "redis-server still running"
    );
}
