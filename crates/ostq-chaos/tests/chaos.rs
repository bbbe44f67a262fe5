//! The chaos suite with a small N, as CI runs it. Needs `redis-server` on PATH.
//!
//! Two runs, one after the other (each keeps both cores busy, and a machine held up would excuse
//! lost leases):
//! - the default mode: 2,000 jobs, 3 workers each behind a fault proxy (2 ms latency), every
//!   fault once, worker SIGKILLs every 2 s, proxy drops and stalls: nothing lost, every malformed
//!   entry dead, every duplicate explained;
//! - `--stream`: 100,000 jobs keeping 3 workers (concurrency 128, lease 1 s) saturated, 30 long
//!   jobs of 4 s among them: a lease lost on a worker that nothing excuses fails the run. This is
//!   the run that finds a lease keeper that starves renewal under a steady stream of outcomes.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Mutex;

/// One chaos run at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `ostq-chaos run ARGS` and returns its JSON summary and stderr; panics when it fails.
fn chaos(args: &[&str]) -> (serde_json::Value, String) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_ostq-chaos"))
        .arg("run")
        .args(args)
        .output()
        .expect("run ostq-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "ostq-chaos {args:?} failed ({}): {last}\n{stderr}",
        out.status
    );
    let summary: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    (summary, stderr)
}

fn check_common(summary: &serde_json::Value, stderr: &str) {
    assert_eq!(summary["ok"], true, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}\n{stderr}");
    assert_eq!(summary["duplicates_unexplained"], 0, "{summary}\n{stderr}");
    assert_eq!(summary["duplicates_beyond_recoveries"], 0, "{summary}");
    assert_eq!(
        summary["bad_inputs_dead"], summary["bad_inputs"],
        "{summary}\n{stderr}"
    );
    // Every duplicate has its reason.
    let explained = ["duplicates_after_kills", "duplicates_after_other_faults"]
        .iter()
        .map(|k| summary[k].as_u64().unwrap())
        .sum::<u64>()
        + summary["duplicates_after_push_retries"].as_u64().unwrap();
    assert_eq!(Some(explained), summary["duplicates"].as_u64(), "{summary}");
    assert_eq!(summary["redis_restarts"], 1, "{summary}");
    assert!(
        summary["healthy_worker"]["pid"].as_u64().is_some(),
        "{summary}"
    );
}

#[test]
fn a_small_chaos_run_loses_nothing() {
    let (summary, stderr) = chaos(&["--jobs", "2000", "--workers", "3", "--timeout", "120"]);
    check_common(&summary, &stderr);
    assert_eq!(summary["jobs"], 2000, "{summary}");
    assert!(summary["kills"].as_u64().unwrap() >= 1, "{summary}");
    assert!(
        summary["proxy"]["drops"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert!(
        summary["proxy"]["stalls"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    assert_eq!(summary["proxy"]["latency_ms"], 2.0, "{summary}");
}

#[test]
fn a_high_rate_stream_beside_long_jobs_keeps_its_leases() {
    let (summary, stderr) = chaos(&[
        "--stream",
        "--jobs",
        "100000",
        "--workers",
        "3",
        "--timeout",
        "120",
    ]);
    check_common(&summary, &stderr);
    assert_eq!(summary["long_jobs"], 30, "{summary}");
    assert_eq!(summary["lease_ms"], 1000, "{summary}");
    // The healthy worker did run long jobs beside the stream.
    assert!(
        summary["healthy_worker"]["long_executions"]
            .as_u64()
            .unwrap()
            >= 1,
        "{summary}"
    );
}
