//! `ostq metrics`: the Prometheus endpoint, scraped over HTTP and parsed by a real parser
//! (Python's `prometheus_client`), against a private redis-server and a live worker.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Parses an exposition text with `prometheus_client.parser.text_string_to_metric_families`
/// and prints its families as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;

const PARSER_MISSING: &str =
    "the /metrics tests parse the output with Python's prometheus_client: \
     install the Debian package python3-prometheus-client (apt-get install python3 \
     python3-prometheus-client; scripts/test does it)";

/// A Python that has the parser: `python3` on PATH, else Debian's own `/usr/bin/python3` (where
/// the package installs it, even when a pyenv or venv `python3` comes first on PATH). Fails
/// (never skips) when none has it.
fn python() -> &'static str {
    static FOUND: std::sync::OnceLock<Result<&'static str, String>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let mut tried = Vec::new();
        for python in ["python3", "/usr/bin/python3"] {
            let out = Command::new(python)
                .args(["-c", "import prometheus_client.parser"])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(out) if out.status.success() => return Ok(python),
                Ok(out) => tried.push(format!(
                    "{python}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => tried.push(format!("{python}: {e}")),
            }
        }
        Err(tried.join("\n"))
    });
    match found {
        Ok(python) => python,
        Err(tried) => panic!("{PARSER_MISSING}\n{tried}"),
    }
}

fn require_parser() {
    python();
}

/// One metric family as the parser read it.
#[derive(Debug)]
struct Family {
    kind: String,
    help: String,
}

/// The parsed exposition: families by name, samples by (sample name, labels).
#[derive(Debug, Default)]
struct Parsed {
    families: BTreeMap<String, Family>,
    samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Parsed {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_string(), labels)).copied()
    }

    /// The value of a sample that must be there.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.samples.keys()))
    }

    fn names(&self) -> BTreeSet<&str> {
        self.samples.keys().map(|(n, _)| n.as_str()).collect()
    }
}

fn parse(text: &str) -> Parsed {
    let mut python = Command::new(python());
    python.args(["-c", PARSE]);
    let (out, written) = output_with_stdin(python, text.as_bytes());
    written.unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n--- body ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut parsed = Parsed::default();
    for f in families {
        let name = f["name"].as_str().unwrap().to_string();
        for s in f["samples"].as_array().unwrap() {
            let labels = s["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect();
            let key = (s["name"].as_str().unwrap().to_string(), labels);
            let value = s["value"].as_f64().unwrap();
            assert!(
                parsed.samples.insert(key.clone(), value).is_none(),
                "sample twice: {key:?}"
            );
        }
        let family = Family {
            kind: f["type"].as_str().unwrap().to_string(),
            help: f["help"].as_str().unwrap().to_string(),
        };
        parsed.families.insert(name, family);
    }
    parsed
}

/// A child process killed when the test ends, however it ends.
struct Running {
    child: Child,
    stderr: tempfile::NamedTempFile,
}

impl Running {
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(url: &str, args: &[&str]) -> Running {
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let child = cmd(url, args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.reopen().unwrap()))
        .spawn()
        .unwrap();
    Running { child, stderr }
}

/// `ostq metrics --listen 127.0.0.1:PORT ARGS…`, once it accepts connections.
fn start_exporter(url: &str, extra: &[&str]) -> (Running, u16) {
    let port = ostq_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["metrics", "--listen", listen.as_str()];
    args.extend_from_slice(extra);
    let mut exporter = spawn(url, &args);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = exporter.child.try_wait() {
            panic!("ostq metrics exited ({status}): {}", exporter.stderr());
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "ostq metrics did not listen on {listen}: {}",
            exporter.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (exporter, port)
}

/// A plain HTTP/1.0 GET: the status line, the headers (lowercase names) and the body.
fn http_get(port: u16, path: &str) -> (String, BTreeMap<String, String>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// GET /metrics, checked for a 200 and the 0.0.4 content type, parsed.
fn scrape(port: u16) -> (String, Parsed) {
    let (status, headers, body) = http_get(port, "/metrics");
    assert!(status.contains(" 200 "), "{status}\n{body}");
    let kind = headers.get("content-type").cloned().unwrap_or_default();
    assert!(
        kind.starts_with("text/plain") && kind.contains("version=0.0.4"),
        "content-type {kind:?}"
    );
    let parsed = parse(&body);
    (body, parsed)
}

/// Every family's TYPE and a non-empty HELP; the ostq_ prefix; `_total` only on counters.
fn check_families(parsed: &Parsed, expected: &[(&str, &str)]) {
    for (name, kind) in expected {
        let family = parsed
            .families
            .get(*name)
            .unwrap_or_else(|| panic!("no family {name}: {:?}", parsed.families.keys()));
        assert_eq!(&family.kind, kind, "TYPE of {name}");
        assert!(!family.help.is_empty(), "no HELP for {name}");
    }
    for (name, family) in &parsed.families {
        assert!(name.starts_with("ostq_"), "{name}");
        assert_ne!(family.kind, "untyped", "{name} has no TYPE");
    }
    for (sample, labels) in parsed.samples.keys() {
        assert_eq!(
            sample.ends_with("_total"),
            parsed
                .families
                .get(sample.trim_end_matches("_total"))
                .map(|f| f.kind.as_str())
                == Some("counter"),
            "_total only on counters: {sample}"
        );
        for label in labels.keys() {
            assert!(
                ["queue", "state", "task", "le"].contains(&label.as_str()),
                "unexpected label {label} on {sample}"
            );
        }
    }
}

/// The families a scrape shows while Redis answers (the latency needs a pending job).
const FAMILIES: &[(&str, &str)] = &[
    ("ostq_queue_jobs", "gauge"),
    ("ostq_queue_latency_seconds", "gauge"),
    ("ostq_queue_paused", "gauge"),
    ("ostq_jobs_processed", "counter"),
    ("ostq_jobs_completed", "counter"),
    ("ostq_jobs_failed", "counter"),
    ("ostq_jobs_retried", "counter"),
    ("ostq_jobs_dead", "counter"),
    ("ostq_jobs_recovered", "counter"),
    ("ostq_job_run_duration_seconds", "histogram"),
    ("ostq_job_wait_duration_seconds", "histogram"),
    ("ostq_job_total_duration_seconds", "histogram"),
    ("ostq_workers", "gauge"),
    ("ostq_worker_slots", "gauge"),
    ("ostq_worker_slots_busy", "gauge"),
    ("ostq_redis_up", "gauge"),
    ("ostq_redis_used_memory_bytes", "gauge"),
    ("ostq_redis_maxmemory_bytes", "gauge"),
    ("ostq_redis_connected_clients", "gauge"),
    ("ostq_scrape_duration_seconds", "gauge"),
];

const STATES: [&str; 6] = [
    "pending",
    "active",
    "scheduled",
    "retry",
    "dead",
    "completed",
];

#[test]
fn metrics_match_what_was_done_and_redis_down_says_up_0() {
    require_parser();
    let mut redis = RedisServer::start_with(&["--maxmemory", "104857600"]).unwrap();
    let url = redis.url();

    // Queue "work": 4 jobs succeed, 2 tracked ones too (completed), 3 fail for good (dead), and
    // one named "resize" succeeds: 10 attempts.
    ok(&url, &["push", "work", "ok1", "ok2", "ok3", "ok4"]);
    push_named(&url, "work", "resize", "r1");
    ok(&url, &["push", "work", "t1", "t2", "--track"]);
    ok(
        &url,
        &[
            "push",
            "work",
            "bad1",
            "bad2",
            "bad3",
            "--max-attempts",
            "1",
        ],
    );
    ok(
        &url,
        &[
            "worker",
            "-q",
            "work",
            "--burst",
            "--",
            "sh",
            "-c",
            "case \"$0\" in bad*) exit 1;; esac",
            "{}",
        ],
    );
    // Then 5 pending, 2 scheduled, paused, and a live worker that serves it (and takes nothing).
    ok(&url, &["push", "work", "p1", "p2", "p3", "p4", "p5"]);
    ok(&url, &["push", "work", "later1", "later2", "--delay", "1h"]);
    ok(&url, &["pause", "work"]);
    let _worker = spawn(&url, &["worker", "-q", "work", "-c", "3", "--", "true"]);
    wait_until(Duration::from_secs(20), "the worker to register", || {
        json(&url, &["workers"])
            .as_array()
            .is_some_and(|w| w.len() == 1)
    });
    // Queue "bare": Ost's bare pushes, with no enqueue time: no latency, never a false age.
    redis
        .cli(&["LPUSH", "ostq:{bare}:pending", "1", "2", "3"])
        .unwrap();
    redis.cli(&["SADD", "ostq:queues", "bare"]).unwrap();
    // A name with a quote and a backslash comes back exactly through the label escaping.
    let odd = "we\"ird\\q";
    ok(&url, &["push", odd, "x"]);

    let (exporter, port) = start_exporter(&url, &[]);
    let (body, m) = scrape(port);
    check_families(&m, FAMILIES);
    promtool_check_metrics(&body);

    let jobs =
        |queue: &str, state: &str| m.get("ostq_queue_jobs", &[("queue", queue), ("state", state)]);
    let work = [("queue", "work")];
    assert_eq!(jobs("work", "pending"), 5.0, "{body}");
    assert_eq!(jobs("work", "scheduled"), 2.0);
    assert_eq!(jobs("work", "dead"), 3.0);
    assert_eq!(jobs("work", "completed"), 2.0);
    assert_eq!(jobs("work", "active"), 0.0);
    assert_eq!(jobs("work", "retry"), 0.0);
    let unnamed = [("queue", "work"), ("task", "-")];
    let resize = [("queue", "work"), ("task", "resize")];
    for (counter, want_unnamed, want_resize) in [
        ("ostq_jobs_processed_total", 9.0, 1.0),
        ("ostq_jobs_completed_total", 6.0, 1.0),
        ("ostq_jobs_failed_total", 3.0, 0.0),
        ("ostq_jobs_retried_total", 0.0, 0.0),
        ("ostq_jobs_dead_total", 3.0, 0.0),
        ("ostq_jobs_recovered_total", 0.0, 0.0),
    ] {
        assert_eq!(m.get(counter, &unnamed), want_unnamed, "{counter}\n{body}");
        assert_eq!(m.get(counter, &resize), want_resize, "{counter}");
    }
    // Histograms: every attempt ran, every job waited once, completed jobs have a total.
    for (family, want_unnamed, want_resize) in [
        ("ostq_job_run_duration_seconds", 9.0, 1.0),
        ("ostq_job_wait_duration_seconds", 9.0, 1.0),
        ("ostq_job_total_duration_seconds", 6.0, 1.0),
    ] {
        check_histogram(&m, family, &unnamed, want_unnamed);
        check_histogram(&m, family, &resize, want_resize);
    }
    // The worker started after the pushes, so every job waited (the sum is in seconds).
    let waited = m.get("ostq_job_wait_duration_seconds_sum", &unnamed);
    assert!(
        (0.0..600.0 * 9.0).contains(&waited) && waited > 0.0,
        "{waited}"
    );
    assert_eq!(m.get("ostq_queue_paused", &work), 1.0);
    assert_eq!(m.get("ostq_workers", &work), 1.0);
    let latency = m.get("ostq_queue_latency_seconds", &work);
    assert!((0.0..600.0).contains(&latency), "latency {latency}");

    assert_eq!(jobs("bare", "pending"), 3.0);
    assert_eq!(m.get("ostq_queue_paused", &[("queue", "bare")]), 0.0);
    assert_eq!(m.get("ostq_workers", &[("queue", "bare")]), 0.0);
    assert_eq!(
        m.value("ostq_queue_latency_seconds", &[("queue", "bare")]),
        None,
        "a bare entry's age is unknown, not 56 years"
    );

    assert_eq!(jobs(odd, "pending"), 1.0, "{body}");
    assert!(m
        .value("ostq_queue_latency_seconds", &[("queue", odd)])
        .is_some());

    assert_eq!(m.get("ostq_worker_slots", &[]), 3.0);
    assert_eq!(m.get("ostq_worker_slots_busy", &[]), 0.0);
    assert_eq!(m.get("ostq_redis_up", &[]), 1.0);
    assert_eq!(m.get("ostq_redis_maxmemory_bytes", &[]), 104857600.0);
    assert!(m.get("ostq_redis_used_memory_bytes", &[]) > 100_000.0);
    assert!(m.get("ostq_redis_connected_clients", &[]) >= 2.0);
    assert!(m.get("ostq_scrape_duration_seconds", &[]) > 0.0);

    // The same figures as `ostq stats`, state by state.
    let stats = json(&url, &["stats", "--sample", "0"]);
    for queue in ["work", "bare", odd] {
        for state in STATES {
            let want = stats["queues"][queue][state].as_f64().unwrap();
            assert_eq!(jobs(queue, state), want, "{queue} {state}");
        }
    }

    // Only the queues asked for, and only the workers serving them.
    let (only, only_port) = start_exporter(&url, &["bare"]);
    let (_, o) = scrape(only_port);
    assert_eq!(
        o.get(
            "ostq_queue_jobs",
            &[("queue", "bare"), ("state", "pending")]
        ),
        3.0
    );
    assert_eq!(
        o.value(
            "ostq_queue_jobs",
            &[("queue", "work"), ("state", "pending")]
        ),
        None
    );
    assert_eq!(o.get("ostq_worker_slots", &[]), 0.0);
    drop(only);

    // Redis stops: the endpoint still answers 200, with ostq_redis_up 0 and no stale figures.
    redis.kill();
    let (body, down) = scrape(port);
    assert_eq!(down.get("ostq_redis_up", &[]), 0.0, "{body}");
    assert!(down.value("ostq_scrape_duration_seconds", &[]).is_some());
    assert!(
        !down.names().contains("ostq_queue_jobs"),
        "stale queue figures while Redis is down: {body}"
    );
    check_families(&down, &[("ostq_redis_up", "gauge")]);
    let log = exporter.stderr();
    assert!(
        log.contains("ostq_redis_up 0"),
        "a line says Redis is down: {log}"
    );

    // And it comes back.
    redis.restart().unwrap();
    wait_until(Duration::from_secs(20), "ostq_redis_up 1 again", || {
        scrape(port).1.value("ostq_redis_up", &[]) == Some(1.0)
    });
}

/// Prometheus's own linter (`promtool check metrics`, Debian's `prometheus` package, installed
/// by scripts/test) finds nothing to say about a scrape: names, units, HELP, TYPE, histograms.
fn promtool_check_metrics(body: &str) {
    require_promtool();
    let mut promtool = Command::new("promtool");
    promtool.args(["check", "metrics"]);
    let (out, written) = output_with_stdin(promtool, body.as_bytes());
    written.unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n--- body ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const PROMTOOL_MISSING: &str = "promtool not found: install Debian's prometheus package \
     (apt-get install --no-install-recommends prometheus; scripts/test does it)";

/// Fails (never skips) without promtool.
fn require_promtool() {
    if let Err(e) = Command::new("promtool").arg("--version").output() {
        panic!("{PROMTOOL_MISSING}: {e}");
    }
}

/// The example alerting rules of docs/prometheus/ load (`promtool check rules`) and their unit
/// tests pass (`promtool test rules`): each alert fires when its threshold is crossed for its
/// `for:` time, and not below it.
#[test]
fn the_example_alert_rules_pass_promtool() {
    require_promtool();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/prometheus");
    for args in [
        ["check", "rules", "ostq-alerts.yml"],
        ["test", "rules", "ostq-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{PROMTOOL_MISSING}: {e}"));
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Pushes one job named `task` through the library (the CLI pushes unnamed jobs).
fn push_named(url: &str, queue: &str, task: &str, payload: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = ostq::Client::connect(url).await.unwrap();
        let opts = ostq::PushOptions::new().name(task);
        client.queue(queue).push_with(payload, &opts).await.unwrap();
    });
}

/// One histogram series: `count` observations, cumulative buckets at the history's bounds
/// (0.005 s doubling, then +Inf) that never decrease and end at the count.
fn check_histogram(m: &Parsed, family: &str, labels: &[(&str, &str)], count: f64) {
    assert_eq!(m.get(&format!("{family}_count"), labels), count, "{family}");
    assert!(m.get(&format!("{family}_sum"), labels) >= 0.0);
    let bucket = format!("{family}_bucket");
    let mut previous = 0.0;
    for b in 0..24u32 {
        let le = if b == 23 {
            "+Inf".to_string()
        } else {
            format!("{}", (5u64 << b) as f64 / 1000.0)
        };
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        let n = m.get(&bucket, &with_le);
        assert!(n >= previous, "{family} bucket le={le} decreases");
        previous = n;
    }
    assert_eq!(previous, count, "{family}: +Inf bucket is the count");
}

#[test]
fn a_bad_listen_address_or_a_port_in_use_is_one_line() {
    let out = run("redis://127.0.0.1:1", &["metrics", "--listen", "nonsense"]);
    assert_one_line_error(&out, "--listen");
    assert_eq!(out.status.code(), Some(2), "a bad command line exits 2");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run("redis://127.0.0.1:1", &["metrics", "--listen", &addr]);
    assert_one_line_error(&out, &format!("cannot listen on {addr}"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_scrape_of_1000_queues_is_quick() {
    require_parser();
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    const QUEUES: usize = 1000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = ostq::Client::connect(&url).await.unwrap();
        let pushes = (0..QUEUES).map(|i| {
            let queue = client.queue(&format!("q{i:04}"));
            async move { queue.push(format!("job-{i}")).await }
        });
        for id in futures::future::join_all(pushes).await {
            id.unwrap();
        }
    });

    let (_exporter, port) = start_exporter(&url, &[]);
    let mut times = Vec::new();
    let mut reported = Vec::new();
    let mut last = Parsed::default();
    for _ in 0..5 {
        let start = Instant::now();
        let (status, _, body) = http_get(port, "/metrics");
        times.push(start.elapsed());
        assert!(status.contains(" 200 "), "{status}");
        last = parse(&body);
        reported.push(last.get("ostq_scrape_duration_seconds", &[]));
    }
    let queues: BTreeSet<&String> = last
        .samples
        .keys()
        .filter(|(name, _)| name == "ostq_queue_jobs")
        .filter_map(|(_, labels)| labels.get("queue"))
        .collect();
    assert_eq!(queues.len(), QUEUES);
    assert_eq!(last.get("ostq_redis_up", &[]), 1.0);
    for i in [0, 499, 999] {
        let q = format!("q{i:04}");
        assert_eq!(
            last.get("ostq_queue_jobs", &[("queue", &q), ("state", "pending")]),
            1.0
        );
        assert!(last
            .value("ostq_queue_latency_seconds", &[("queue", &q)])
            .is_some());
    }
    times.sort();
    eprintln!(
        "scrape of {QUEUES} queues: GET /metrics min {:?}, median {:?}, max {:?}; \
         ostq_scrape_duration_seconds {reported:?}",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    // The goal is < 1 s in a release build; a debug build gets room.
    let limit = if cfg!(debug_assertions) { 5.0 } else { 1.0 };
    assert!(
        times[times.len() / 2].as_secs_f64() < limit,
        "a scrape of {QUEUES} queues took {:?} (limit {limit} s)",
        times[times.len() / 2]
    );
}
