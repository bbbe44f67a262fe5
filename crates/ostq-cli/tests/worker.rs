//! `ostq worker`: any program as a worker, payloads byte for byte, failures, timeouts, burst
//! mode after a SIGKILLed worker, graceful shutdown.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Payloads a shell would act on, plus bytes that are not UTF-8.
fn nasty_payloads(canary: &Path) -> Vec<Vec<u8>> {
    vec![
        format!("$(touch {})", canary.display()).into_bytes(),
        format!("`touch {}`", canary.display()).into_bytes(),
        b"it's \"quoted\" and 'single'".to_vec(),
        b"a; echo injected; b".to_vec(),
        b"line one\nline two\n\nline four".to_vec(),
        b"pipes | and && ands || ors > redirect < in * glob ? ~ $HOME \\ backslash".to_vec(),
        vec![0xff, 0xfe, b'x', 0x80, 0xc3, 0x28, b'\n', 0x01],
        "ünïcødé — ✓".as_bytes().to_vec(),
        b"{}".to_vec(),
        b"-n".to_vec(),
    ]
}

/// Pushes each payload as one job (as a raw argument); returns id → payload.
fn push_each(
    url: &str,
    queue: &str,
    payloads: &[Vec<u8>],
    extra: &[&str],
) -> HashMap<String, Vec<u8>> {
    let mut args: Vec<OsString> = vec!["--json".into(), "push".into(), queue.into()];
    args.extend(extra.iter().map(OsString::from));
    args.push("--".into());
    args.extend(payloads.iter().map(|p| OsString::from_vec(p.clone())));
    let out = run_os(url, &args);
    assert_success(&out, &["push"]);
    let ids: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids.len(), payloads.len());
    ids.into_iter().zip(payloads.iter().cloned()).collect()
}

fn worker_burst(url: &str, queue: &str, opts: &[&str], command: &[&str]) -> std::process::Output {
    let mut args = vec!["worker", "--queue", queue, "--burst"];
    args.extend_from_slice(opts);
    args.push("--");
    args.extend_from_slice(command);
    let start = Instant::now();
    let out = run(url, &args);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "burst took {:?}",
        start.elapsed()
    );
    out
}

fn assert_files_match(dir: &Path, jobs: &HashMap<String, Vec<u8>>) {
    for (id, payload) in jobs {
        let got = std::fs::read(dir.join(id)).unwrap_or_else(|e| panic!("job {id}: {e}"));
        assert_eq!(
            got,
            *payload,
            "job {id}: got {:?}, pushed {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(payload)
        );
    }
}

#[test]
fn stdin_mode_delivers_payloads_byte_for_byte() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("pwned");
    let jobs = push_each(&url, "bytes", &nasty_payloads(&canary), &[]);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = worker_burst(
        &url,
        "bytes",
        &[],
        // This sh gets the payload only on stdin: the script is ours, the payload is data.
        &[
            "sh",
            "-c",
            r#"cat > "$0/$OSTQ_JOB_ID""#,
            out_dir.to_str().unwrap(),
        ],
    );
    assert_success(&out, &["worker stdin mode"]);
    assert_files_match(&out_dir, &jobs);
    assert!(!canary.exists(), "a payload was run by a shell");
    let c = counts(&url, "bytes");
    assert_eq!(c["pending"], 0);
    assert_eq!(c["processed_total"], jobs.len() as u64);
    assert_eq!(c["failed_total"], 0);
}

#[test]
fn placeholder_mode_passes_payloads_as_one_argument() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("pwned");
    let mut payloads = nasty_payloads(&canary);
    payloads.push(b" leading and trailing spaces ".to_vec());
    let mut jobs = push_each(&url, "args", &payloads, &["--max-attempts", "1"]);
    // An argument cannot hold a NUL byte: push that one from stdin.
    let out = run_stdin(
        &url,
        &[
            "--json",
            "push",
            "args",
            "--max-attempts",
            "1",
            "--file",
            "-",
        ],
        b"nul\0byte\n",
    );
    assert_success(&out, &["push NUL"]);
    let ids: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    jobs.insert(ids[0].clone(), b"nul\0byte".to_vec());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = worker_burst(
        &url,
        "args",
        &[],
        &[
            "sh",
            "-c",
            r#"printf %s "$1" > "$0/$OSTQ_JOB_ID""#,
            out_dir.to_str().unwrap(),
            "{}",
        ],
    );
    assert_success(&out, &["worker {} mode"]);
    assert!(!canary.exists(), "a payload was run by a shell");
    let (nul, rest): (HashMap<_, _>, HashMap<_, _>) =
        jobs.into_iter().partition(|(_, p)| p.contains(&0));
    assert_files_match(&out_dir, &rest);
    // A NUL byte cannot be an argument: that job goes to the dead set with a reason.
    let dead = json(&url, &["jobs", "args", "--state", "dead"]);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"].as_str().unwrap(), nul.keys().next().unwrap());
    assert!(dead[0]["last_error"].as_str().unwrap().contains("NUL"));
}

#[test]
fn environment_and_placeholder_inside_an_argument() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let jobs = push_each(&url, "envq", &[b"42".to_vec()], &[]);
    let out = worker_burst(
        &url,
        "envq",
        &[],
        &[
            "sh",
            "-c",
            r#"printf '%s|%s|%s' "$1" "$OSTQ_QUEUE" "$OSTQ_ATTEMPT" > "$0/$OSTQ_JOB_ID""#,
            dir.path().to_str().unwrap(),
            "--video={}.mp4",
        ],
    );
    assert_success(&out, &["worker env"]);
    let id = jobs.keys().next().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(id)).unwrap(),
        "--video=42.mp4|envq|1"
    );
}

/// A job pushed with a task name (here by `push.lua` from redis-cli, as another language would)
/// runs like any other, and the program reads the name in OSTQ_TASK. (Named jobs used to go
/// dead: "no handler for task".)
#[test]
fn named_jobs_run_and_the_program_sees_their_task_name() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let script = ok(&url, &["script", "push"]);
    let pushed = redis
        .cli(&[
            "EVAL",
            &script,
            "5",
            "ostq:{named}:pending",
            "ostq:{named}:prioritized",
            "ostq:{named}:scheduled",
            "ostq:{named}:jobs",
            "ostq:{named}:seq",
            "ostq:{named}:",
            "job-1",
            "7",
            "resize",
            "0",
            "0",
            "0",
            "0",
            "0",
            "",
            "0",
        ])
        .unwrap();
    assert!(pushed.contains("job-1"), "{pushed}");
    let out = worker_burst(
        &url,
        "named",
        &[],
        &[
            "sh",
            "-c",
            r#"printf '%s|%s' "$OSTQ_TASK" "$1" > "$0/$OSTQ_JOB_ID""#,
            dir.path().to_str().unwrap(),
            "{}",
        ],
    );
    assert_success(&out, &["worker named"]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("job-1")).unwrap(),
        "resize|7"
    );
}

#[test]
fn a_failing_program_fails_the_job_with_exit_code_and_stderr() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let jobs = push_each(
        &url,
        "fails",
        &[b"x".to_vec(), b"y".to_vec()],
        &["--max-attempts", "1"],
    );
    let out = worker_burst(
        &url,
        "fails",
        &[],
        &[
            "sh",
            "-c",
            "echo some output; echo first line >&2; echo boom >&2; exit 3",
        ],
    );
    assert_success(&out, &["worker failing"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("exit code 3"), "{stderr}");
    let dead = json(&url, &["jobs", "fails", "--state", "dead"]);
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 2);
    for job in dead {
        assert!(jobs.contains_key(job["id"].as_str().unwrap()));
        let err = job["last_error"].as_str().unwrap();
        assert!(err.starts_with("exit code 3: "), "{err}");
        assert!(err.contains("boom"), "{err}");
    }
    let c = counts(&url, "fails");
    assert_eq!(c["failed_total"], 2);
    assert_eq!(c["dead"], 2);
}

#[test]
fn a_failed_attempt_is_retried_and_then_completes() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    push_each(&url, "flaky", &[b"x".to_vec()], &["--max-attempts", "3"]);
    let out = worker_burst(
        &url,
        "flaky",
        &[],
        &["sh", "-c", r#"[ "$OSTQ_ATTEMPT" -ge 2 ]"#],
    );
    assert_success(&out, &["worker flaky"]);
    let c = counts(&url, "flaky");
    assert_eq!(c["processed_total"], 2);
    assert_eq!(c["failed_total"], 1);
    assert_eq!(c["dead"], 0);
    assert_eq!(c["retry"], 0);
}

fn process_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for its parent to reap it is dead too.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_program_past_the_timeout_is_killed_with_its_children() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    push_each(&url, "slow", &[b"x".to_vec()], &["--max-attempts", "1"]);
    let start = Instant::now();
    let out = worker_burst(
        &url,
        "slow",
        &["--timeout", "1s"],
        &[
            "sh",
            "-c",
            r#"sleep 30 & echo $! > "$0/child"; echo $$ > "$0/parent"; wait"#,
            dir.path().to_str().unwrap(),
        ],
    );
    assert_success(&out, &["worker timeout"]);
    assert!(start.elapsed() < Duration::from_secs(10));
    let dead = json(&url, &["jobs", "slow", "--state", "dead"]);
    let err = dead[0]["last_error"].as_str().unwrap();
    assert!(err.contains("timed out after 1.0s"), "{err}");
    for who in ["parent", "child"] {
        let pid = std::fs::read_to_string(dir.path().join(who)).unwrap();
        let pid = pid.trim().to_string();
        wait_until(
            Duration::from_secs(5),
            &format!("{who} {pid} to die"),
            || process_gone(&pid),
        );
    }
}

#[test]
fn stdout_becomes_the_result_of_a_tracked_job_bounded() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let jobs = push_each(&url, "results", &[b"hello".to_vec()], &["--track"]);
    let big = push_each(&url, "results", &[b"big".to_vec()], &["--track"]);
    let out = worker_burst(
        &url,
        "results",
        &[],
        &[
            "sh",
            "-c",
            r#"p=$(cat); if [ "$p" = big ]; then yes | head -c 100000; else printf 'out:%s' "$p"; fi"#,
        ],
    );
    assert_success(&out, &["worker results"]);
    let id = jobs.keys().next().unwrap();
    let job = json(&url, &["job", "results", id]);
    assert_eq!(job["state"], "completed");
    assert_eq!(job["result"], "out:hello");
    let id = big.keys().next().unwrap();
    let job = json(&url, &["job", id]);
    assert_eq!(job["result"].as_str().unwrap().len(), 64 * 1024);
}

#[test]
fn burst_recovers_the_jobs_of_a_sigkilled_worker() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let jobs = push_each(
        &url,
        "crash",
        &[b"1".to_vec(), b"2".to_vec(), b"3".to_vec()],
        &[],
    );
    let pids = dir.path().join("pids");
    let mut first = cmd(
        &url,
        &[
            "worker",
            "-q",
            "crash",
            "--lease",
            "1s",
            "--concurrency",
            "5",
            "--",
            "sh",
            "-c",
            r#"echo $$ >> "$0"; exec sleep 30"#,
            pids.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_until(Duration::from_secs(10), "three active jobs", || {
        counts(&url, "crash")["active"] == 3
    });
    first.kill().unwrap(); // SIGKILL: no chance to give the jobs back
    first.wait().unwrap();
    assert_eq!(counts(&url, "crash")["active"], 3);

    let done = dir.path().join("done");
    std::fs::create_dir(&done).unwrap();
    let start = Instant::now();
    let out = worker_burst(
        &url,
        "crash",
        &["--lease", "1s"],
        &[
            "sh",
            "-c",
            r#"touch "$0/$OSTQ_JOB_ID""#,
            done.to_str().unwrap(),
        ],
    );
    // Clean up the orphaned programs of the killed worker.
    for pid in std::fs::read_to_string(&pids).unwrap_or_default().lines() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status();
    }
    assert_success(&out, &["burst worker"]);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    for id in jobs.keys() {
        assert!(done.join(id).exists(), "job {id} was not recovered");
    }
    let c = counts(&url, "crash");
    assert_eq!(c["active"], 0);
    assert_eq!(c["pending"], 0);
    assert_eq!(c["recovered_total"], 3);
}

#[test]
fn sigterm_lets_the_running_program_finish() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let jobs = push_each(&url, "graceful", &[b"1".to_vec()], &[]);
    let worker = cmd(
        &url,
        &[
            "worker",
            "-q",
            "graceful",
            "--",
            "sh",
            "-c",
            r#"sleep 1; touch "$0/$OSTQ_JOB_ID""#,
            dir.path().to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_until(Duration::from_secs(10), "the job to start", || {
        counts(&url, "graceful")["active"] == 1
    });
    let status = std::process::Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = worker.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = jobs.keys().next().unwrap();
    assert!(dir.path().join(id).exists());
    let c = counts(&url, "graceful");
    assert_eq!(c["processed_total"], 1);
    assert_eq!(c["active"], 0);
}

#[test]
fn burst_on_empty_queues_exits_at_once_and_waits_for_due_retries_only() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let out = worker_burst(&url, "empty", &[], &["true"]);
    assert_success(&out, &["burst on empty"]);
    // A job scheduled beyond --burst-wait is left for later.
    ok(&url, &["push", "later", "x", "--delay", "1h"]);
    let start = Instant::now();
    let out = worker_burst(&url, "later", &["--burst-wait", "5s"], &["true"]);
    assert_success(&out, &["burst with a job far ahead"]);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(counts(&url, "later")["scheduled"], 1);
    // One due within --burst-wait is waited for.
    ok(&url, &["push", "soon", "x", "--delay", "1s"]);
    let out = worker_burst(&url, "soon", &[], &["true"]);
    assert_success(&out, &["burst with a job due soon"]);
    let c = counts(&url, "soon");
    assert_eq!(c["scheduled"], 0);
    assert_eq!(c["processed_total"], 1);
}

/// The programs' output goes through, line by line: plain with one program at a time, prefixed
/// with the job id when several run at once; stdout is still the result of a tracked job;
/// `--no-output` keeps it all in.
#[test]
fn program_output_goes_through_prefixed_when_several_run() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let program = [
        "sh",
        "-c",
        r#"printf 'out %s\nsecond line' "$1"; printf 'err %s\n' "$1" >&2"#,
        "sh",
        "{}",
    ];
    let jobs = push_each(&url, "loud", &[b"a".to_vec(), b"b".to_vec()], &["--track"]);
    let out = worker_burst(&url, "loud", &["-c", "2"], &program);
    assert_success(&out, &["worker loud"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (id, payload) in &jobs {
        let p = String::from_utf8_lossy(payload);
        // The last line had no line feed: it gets one, and its prefix.
        for line in [format!("[{id}] out {p}"), format!("[{id}] second line")] {
            assert!(stdout.lines().any(|l| l == line), "{line:?} in {stdout}");
        }
        let line = format!("[{id}] err {p}");
        assert!(stderr.lines().any(|l| l == line), "{line:?} in {stderr}");
        let job = json(&url, &["job", id]);
        assert_eq!(job["result"], format!("out {p}\nsecond line"), "{job}");
    }

    push_each(&url, "plain", &[b"c".to_vec()], &[]);
    let out = worker_burst(&url, "plain", &["-c", "1"], &program);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "out c\nsecond line\n");

    push_each(&url, "quiet", &[b"d".to_vec()], &[]);
    let out = worker_burst(&url, "quiet", &["-c", "2", "--no-output"], &program);
    assert_success(&out, &["worker quiet"]);
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("err d"));
}

/// `--task` serves only the names given (`-` for jobs without one); other jobs fail their
/// attempt with a reason and are retried, for a worker that serves them.
#[test]
fn task_filter_serves_only_its_names_and_leaves_the_rest_to_retry() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "mixed", "r1", "--name", "resize"]);
    ok(&url, &["push", "mixed", "e1", "--name", "email"]);
    ok(&url, &["push", "mixed", "plain"]);
    let out = worker_burst(
        &url,
        "mixed",
        &["--task", "resize", "--task", "-", "--burst-wait", "0s"],
        &["true"],
    );
    assert_success(&out, &["worker --task"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("serves only the tasks resize, - (--task), not 'email'"),
        "{stderr}"
    );
    let stats = json(&url, &["stats", "--sample", "0"]);
    let q = &stats["queues"]["mixed"];
    // Waiting to retry, or already due again and pending; never dead.
    let waiting = q["retry"].as_u64().unwrap() + q["pending"].as_u64().unwrap();
    assert_eq!((waiting, q["dead"].as_u64()), (1, Some(0)), "{q}");
    assert_eq!(q["processed_total"], 3, "{q}");

    // A worker serving "email" runs it once it is due (--burst waits for it).
    let out = worker_burst(&url, "mixed", &["--task", "email"], &["true"]);
    assert_success(&out, &["worker email"]);
    let q = &json(&url, &["stats", "--sample", "0"])["queues"]["mixed"];
    assert_eq!(
        (q["retry"].as_u64(), q["failed_total"].as_u64()),
        (Some(0), Some(1)),
        "{q}"
    );
}

/// `--idle-exit`: the worker runs what comes, and exits 0 once nothing has been pending or
/// running for that long.
#[test]
fn idle_exit_stops_a_worker_once_the_queue_stays_empty() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "tide", "1", "2"]);
    let started = Instant::now();
    let out = run(
        &url,
        &["worker", "-q", "tide", "--idle-exit", "1s", "--", "true"],
    );
    let took = started.elapsed();
    assert_success(&out, &["worker --idle-exit"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to do for 1.0s"),
        "{out:?}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(
        json(&url, &["stats", "--sample", "0"])["queues"]["tide"]["processed_total"],
        2
    );
}

#[test]
fn the_worker_prints_the_doctors_warnings_at_start_unless_told_not_to() {
    // The testkit's default server has no persistence: the persistence check warns.
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    let out = worker_burst(&url, "checked", &[], &["true"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: doctor: WARN persistence"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fix: CONFIG SET appendonly yes"),
        "{stderr}"
    );
    let out = worker_burst(&url, "checked", &["--no-doctor"], &["true"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("doctor"), "{stderr}");
}

/// `--prefetch 0` leases only what the free slots take: when the worker is killed, only the
/// job that was running counts an attempt (here its last: dead), and the jobs behind it were
/// never leased, so they run later with their single attempt intact.
#[test]
fn prefetch_zero_leases_only_the_running_job() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    ok(&url, &["push", "pf", "a", "b", "c", "--max-attempts", "1"]);
    let mut worker = cmd(
        &url,
        &[
            "worker",
            "-q",
            "pf",
            "-c",
            "1",
            "--prefetch",
            "0",
            "--lease",
            "2s",
            "--",
            "sleep",
            "30",
        ],
    )
    .spawn()
    .unwrap();
    wait_until(Duration::from_secs(10), "a job to start", || {
        counts(&url, "pf")["active"] == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let held = counts(&url, "pf");
    assert_eq!(
        (held["active"].clone(), held["pending"].clone()),
        (1.into(), 2.into()),
        "{held}"
    );
    worker.kill().unwrap(); // SIGKILL: nothing given back
    worker.wait().unwrap();
    std::thread::sleep(Duration::from_millis(2500)); // the lease expires
    ok(&url, &["worker", "-q", "pf", "--burst", "--", "true"]);
    let after = counts(&url, "pf");
    assert_eq!(
        (after["dead"].clone(), after["pending"].clone()),
        (1.into(), 0.into()),
        "{after}"
    );
    assert_eq!(after["processed_total"], 3, "{after}");
}
