//! `ostq doctor` on private redis-servers: the exit code by the worst check, `--strict`,
//! `--json`, and the fix printed under a failing check.
#![allow(clippy::unwrap_used)]

mod common;

use common::{run, RedisServer};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_healthy_server_exits_0_and_an_evicting_one_exits_3_with_the_fix() {
    let good = RedisServer::start_with(&["--appendonly", "yes", "--maxmemory", "1gb"]).unwrap();
    let out = run(&good.url(), &["doctor", "--strict"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("PASS eviction"), "{stdout}");
    assert!(stdout.contains("PASS persistence"), "{stdout}");
    assert!(stdout.contains("0 warned, 0 failed"), "{stdout}");

    let lru = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]).unwrap();
    let out = run(&lru.url(), &["doctor"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL eviction"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(lines[at].contains("allkeys-lru"), "{stdout}");
    assert!(
        lines[at + 1]
            .trim_start()
            .starts_with("fix: CONFIG SET maxmemory-policy noeviction"),
        "{stdout}"
    );
}

#[test]
fn warnings_exit_0_unless_strict_and_json_has_every_check() {
    // The testkit's default: no persistence, no maxmemory.
    let server = RedisServer::start().unwrap();
    let out = run(&server.url(), &["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = run(&server.url(), &["doctor", "--strict"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));

    let out = run(&server.url(), &["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["worst"], "warn");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "server",
            "eviction",
            "persistence",
            "memory",
            "acl",
            "scripts",
            "clock",
            "workers",
            "leases",
            "dead"
        ]
    );
    assert_eq!(report["checks"][3]["status"], "warn");
}

#[test]
fn no_redis_exits_1() {
    let server = RedisServer::start().unwrap();
    let url = server.url();
    drop(server);
    let out = run(&url, &["doctor"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}
