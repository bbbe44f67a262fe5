//! Helpers shared by the CLI tests: run the `ostq` binary against a private redis-server.
#![allow(dead_code, clippy::unwrap_used)]

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use ostq_testkit::RedisServer;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ostq")
}

/// `ostq --url URL ARGS...` with no stdin, environment cleared of ostq/redis variables.
pub fn cmd(url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("--url").arg(url).args(args);
    c.env_remove("OSTQ_URL").env_remove("REDIS_URL");
    c.env("RUST_BACKTRACE", "1");
    c.stdin(Stdio::null());
    c
}

/// Runs `ostq` and returns its output.
pub fn run(url: &str, args: &[&str]) -> Output {
    cmd(url, args).output().unwrap()
}

/// Runs `ostq` with `args` given as OS strings (for byte payloads).
pub fn run_os<S: AsRef<OsStr>>(url: &str, args: &[S]) -> Output {
    let mut c = Command::new(bin());
    c.arg("--url").arg(url).args(args);
    c.env_remove("OSTQ_URL").env_remove("REDIS_URL");
    c.stdin(Stdio::null());
    c.output().unwrap()
}

/// Runs `ostq` feeding `input` on stdin (a program may stop reading early: the write's error is
/// not checked).
pub fn run_stdin(url: &str, args: &[&str], input: &[u8]) -> Output {
    output_with_stdin(cmd(url, args), input).0
}

/// Runs any program feeding `input` on stdin from a thread (so a large input cannot deadlock
/// against a full stdout pipe); its output, and how writing stdin went.
pub fn output_with_stdin(mut command: Command, input: &[u8]) -> (Output, std::io::Result<()>) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    (out, writer.join().unwrap())
}

/// Runs `ostq` and asserts success; returns stdout as text.
pub fn ok(url: &str, args: &[&str]) -> String {
    let out = run(url, args);
    assert_success(&out, args);
    String::from_utf8(out.stdout).unwrap()
}

pub fn assert_success(out: &Output, what: &[&str]) {
    assert!(
        out.status.success(),
        "ostq {what:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ostq` with `--json` and parses stdout.
pub fn json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(url, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{text}"))
}

/// The counts of one queue, from `ostq stats --json`.
pub fn counts(url: &str, queue: &str) -> serde_json::Value {
    let stats = json(url, &["stats", "--sample", "0", queue]);
    stats["queues"][queue].clone()
}

/// Waits until `f` holds, at most `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts a failed run printed exactly one `error: ...` line mentioning `needle`, no panic.
pub fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert!(!stderr.contains("backtrace"), "backtrace: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "expected {needle:?} in: {stderr}"
    );
}
