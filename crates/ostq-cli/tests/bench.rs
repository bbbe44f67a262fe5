//! `ostq bench`: the shape of its output (every figure present, positive, counts that add up) on a
//! given Redis and on a private one. Never a timed assertion: speed is judged by
//! `scripts/bench-vs-peers`, beside the peers, not here.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

use common::*;

const JOBS: u64 = 2000;

const POSITIVE: &[&str] = &[
    "enqueue_jobs_per_s",
    "process_jobs_per_s",
    "process_steady_jobs_per_s",
    "latency_p50_us",
    "latency_p90_us",
    "latency_p99_us",
    "latency_max_us",
    "push_call_p50_us",
    "bytes_per_pending_job",
    "enqueue_tracked_jobs_per_s",
    "process_tracked_jobs_per_s",
    "process_tracked_steady_jobs_per_s",
    "bytes_per_pending_tracked_job",
    "pending_list_bytes_per_job",
    "process_redis_cpu_us_per_job",
    "process_bench_cpu_us_per_job",
    "process_tracked_redis_cpu_us_per_job",
    "process_tracked_bench_cpu_us_per_job",
    "ceiling_ops_per_s",
    "ceiling_lpush_ops_per_s",
    "ceiling_rpop_ops_per_s",
    "ping_rtt_p50_us",
    "idle_ping_rtt_p50_us",
    "envelope_bytes",
    "payload_bytes",
];

/// Parses the last stdout line as the report and checks it.
fn check_report(stdout: &str, private: bool) -> serde_json::Value {
    let last = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}):\n{stdout}"));
    for key in POSITIVE {
        let value = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing or not a number in {report}"));
        assert!(
            value > 0.0 && value.is_finite(),
            "{key} = {value} in {report}"
        );
    }
    assert_eq!(report["jobs"], JOBS, "{report}");
    assert_eq!(report["concurrency"], 500, "{report}");
    // Job numbers 0..2000 as ids: 3.4 bytes on average.
    let mean = report["payload_bytes"].as_f64().unwrap();
    assert!((3.0..4.0).contains(&mean), "{report}");
    assert_eq!(report["processed_jobs"], JOBS, "{report}");
    assert_eq!(report["processed_tracked_jobs"], JOBS, "{report}");
    assert_eq!(report["failed_jobs"], 0, "{report}");
    assert_eq!(report["failed_tracked_jobs"], 0, "{report}");
    assert_eq!(report["latency_samples"], 200, "{report}");
    assert_eq!(report["private_redis"], private, "{report}");
    assert!(
        report["redis_version"]
            .as_str()
            .is_some_and(|v| v.chars().next().is_some_and(|c| c.is_ascii_digit())),
        "{report}"
    );
    // Orderings that hold whatever the speed: a status record costs memory; percentiles rise.
    let f = |k: &str| report[k].as_f64().unwrap();
    assert!(f("bytes_per_pending_tracked_job") > f("bytes_per_pending_job"));
    assert!(f("latency_p50_us") <= f("latency_p90_us"));
    assert!(f("latency_p90_us") <= f("latency_p99_us"));
    assert!(f("latency_p99_us") <= f("latency_max_us"));
    assert!(f("envelope_bytes") > f("payload_bytes"));
    report
}

#[test]
fn bench_on_a_given_redis_reports_every_figure_and_leaves_nothing_behind() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    let jobs = JOBS.to_string();
    let out = run(
        &url,
        &["bench", "--jobs", &jobs, "--json", "--queue", "smoke"],
    );
    assert_success(&out, &["bench"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line on stdout:\n{stdout}"
    );
    check_report(&stdout, false);

    // Its queues are gone: no key, no queue name.
    let keys = server.cli(&["KEYS", "*smoke*"]).unwrap();
    assert!(keys.trim().is_empty(), "left behind: {keys}");
    let queues = server.cli(&["SMEMBERS", "ostq:queues"]).unwrap();
    assert!(!queues.contains("smoke"), "queue names left: {queues}");
}

#[test]
fn a_concurrency_list_sweeps_processing_and_reports_cpu_per_job_for_each() {
    let server = RedisServer::start().unwrap();
    let out = run(
        &server.url(),
        &[
            "bench",
            "--jobs",
            "500",
            "--concurrency",
            "1,10,50",
            "--json",
            "--queue",
            "sweep",
        ],
    );
    assert_success(&out, &["bench"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let points = report["sweep"].as_array().unwrap();
    let concurrencies: Vec<u64> = points
        .iter()
        .map(|p| p["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(concurrencies, [1, 10, 50], "{report}");
    for point in points {
        for key in [
            "process_jobs_per_s",
            "process_redis_cpu_us_per_job",
            "process_bench_cpu_us_per_job",
            "process_tracked_jobs_per_s",
            "process_tracked_redis_cpu_us_per_job",
            "process_tracked_bench_cpu_us_per_job",
        ] {
            let value = point[key].as_f64().unwrap_or_default();
            assert!(value > 0.0 && value.is_finite(), "{key} in {point}");
        }
    }
    let keys = server.cli(&["KEYS", "*sweep*"]).unwrap();
    assert!(keys.trim().is_empty(), "left behind: {keys}");

    // The text form: one row per concurrency.
    let out = run(
        &server.url(),
        &["bench", "--jobs", "200", "-c", "1,10", "--queue", "sweep"],
    );
    assert_success(&out, &["bench"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("Redis µs/job"), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim_start().starts_with("10 "))
            .count(),
        1,
        "{stdout}"
    );
}

#[test]
fn bench_without_url_starts_and_stops_a_private_redis() {
    let out = Command::new(bin())
        .args(["bench", "--jobs", &JOBS.to_string(), "--json"])
        .env_remove("OSTQ_URL")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out, &["bench"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let report = check_report(&stdout, true);

    // The private server is stopped at the end.
    let url = report["redis_url"].as_str().unwrap();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the private redis-server at {url} still answers"
    );
}

#[test]
fn bench_text_output_is_a_table() {
    let server = RedisServer::start().unwrap();
    let out = run(
        &server.url(),
        &["bench", "--jobs", "300", "--payload-bytes", "40"],
    );
    assert_success(&out, &["bench"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "payload 40.0 B (mean)",
        "bulk enqueue",
        "jobs/s",
        "idle latency push → start, p99",
        "Redis memory per waiting job",
        "with status kept",
        "Redis ceiling",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn bench_rejects_bad_arguments() {
    let server = RedisServer::start().unwrap();
    let out = run(&server.url(), &["bench", "--jobs", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&server.url(), &["bench", "--queue", "has space"]);
    assert_one_line_error(&out, "queue");
}
