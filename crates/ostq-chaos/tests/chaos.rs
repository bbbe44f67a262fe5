//! The chaos suite with a small N, as CI runs it: 2,000 jobs, 3 workers, every fault once, worker
//! SIGKILLs every 2 s. Needs `redis-server` on PATH.
#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn a_small_chaos_run_loses_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_ostq-chaos"))
        .args([
            "run",
            "--jobs",
            "2000",
            "--workers",
            "3",
            "--timeout",
            "120",
        ])
        .output()
        .expect("run ostq-chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "ostq-chaos failed ({}): {last}\n{stderr}",
        out.status
    );
    let summary: serde_json::Value = serde_json::from_str(last).expect("last line is JSON");
    assert_eq!(summary["jobs"], 2000, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}\n{stderr}");
    assert!(summary["kills"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(summary["redis_restarts"], 1, "{summary}");
    assert_eq!(
        summary["bad_inputs_dead"], summary["bad_inputs"],
        "{summary}\n{stderr}"
    );
}
