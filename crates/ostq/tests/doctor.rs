//! `Client::doctor` against private redis-servers configured to trip each check: an eviction
//! policy, persistence settings, memory limits, an ACL user missing a command, a Cluster with a
//! slot unassigned, queues with jobs and no worker.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::{RedisCluster, RedisServer};
use ostq::admin::doctor::{NeededBy, Report, Status, REQUIRED_COMMANDS};

async fn doctor(url: &str) -> Report {
    let client = ostq::Client::connect(url).await.unwrap();
    client.doctor().await.unwrap()
}

fn status(report: &Report, name: &str) -> Status {
    report
        .check(name)
        .unwrap_or_else(|| panic!("no {name} check in {report:#?}"))
        .status
}

#[tokio::test]
async fn an_evicting_policy_fails_and_noeviction_passes() {
    let lru = RedisServer::start_with(&["--maxmemory-policy", "allkeys-lru"]).unwrap();
    let report = doctor(&lru.url()).await;
    let eviction = report.check("eviction").unwrap();
    assert_eq!(eviction.status, Status::Fail, "{report:#?}");
    assert!(eviction.summary.contains("allkeys-lru"), "{eviction:?}");
    assert!(eviction.fix.as_deref().unwrap().contains("noeviction"));
    assert_eq!(report.worst, Status::Fail);

    let plain = RedisServer::start().unwrap();
    assert_eq!(
        status(&doctor(&plain.url()).await, "eviction"),
        Status::Pass
    );
}

#[tokio::test]
async fn persistence_passes_with_aof_and_warns_without() {
    // The testkit's default: no AOF, no RDB save points.
    let none = RedisServer::start().unwrap();
    let report = doctor(&none.url()).await;
    let check = report.check("persistence").unwrap();
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(check.summary.contains("no persistence at all"), "{check:?}");

    let rdb = RedisServer::start_with(&["--save", "3600 1"]).unwrap();
    let check = doctor(&rdb.url())
        .await
        .check("persistence")
        .cloned()
        .unwrap();
    assert_eq!(check.status, Status::Warn);
    assert!(check.summary.contains("RDB only"), "{check:?}");

    let aof = RedisServer::start_with(&["--appendonly", "yes"]).unwrap();
    let check = doctor(&aof.url())
        .await
        .check("persistence")
        .cloned()
        .unwrap();
    assert_eq!(check.status, Status::Pass, "{check:?}");
    assert!(check.summary.contains("everysec"), "{check:?}");

    let lazy = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "no"]).unwrap();
    let check = doctor(&lazy.url())
        .await
        .check("persistence")
        .cloned()
        .unwrap();
    assert_eq!(check.status, Status::Warn, "{check:?}");
}

#[tokio::test]
async fn memory_warns_without_a_limit_and_fails_near_it() {
    let unlimited = RedisServer::start().unwrap();
    let check = doctor(&unlimited.url())
        .await
        .check("memory")
        .cloned()
        .unwrap();
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(check.summary.contains("no maxmemory"), "{check:?}");

    let roomy = RedisServer::start_with(&["--maxmemory", "1gb"]).unwrap();
    assert_eq!(status(&doctor(&roomy.url()).await, "memory"), Status::Pass);

    // A limit just above what an empty server uses: over 90 % of it is in use.
    let tight = RedisServer::start().unwrap();
    let used: u64 = tight
        .cli(&["INFO", "memory"])
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let limit = (used as f64 * 1.05) as u64;
    tight
        .cli(&["CONFIG", "SET", "maxmemory", &limit.to_string()])
        .unwrap();
    let check = doctor(&tight.url()).await.check("memory").cloned().unwrap();
    assert_eq!(check.status, Status::Fail, "{check:?}");
}

#[tokio::test]
async fn the_server_check_names_redis_and_its_version() {
    let server = RedisServer::start().unwrap();
    let check = doctor(&server.url())
        .await
        .check("server")
        .cloned()
        .unwrap();
    assert_eq!(check.status, Status::Pass, "{check:?}");
    let version = server.cli(&["INFO", "server"]).unwrap();
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        check.summary.contains(&format!("Redis {version}")),
        "{check:?}"
    );
}

/// The ACL rule of docs/design.md §15 for producers and workers, as a user would paste it.
fn design_rule() -> Vec<String> {
    let design =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/design.md"))
            .unwrap();
    let start = design.find("ACL SETUSER ostq reset on").unwrap();
    let block = &design[start..];
    let block = &block[..block.find("```").unwrap()];
    block
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('+'))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_commands_checked_are_the_design_rule() {
    let checked: HashSet<String> = REQUIRED_COMMANDS
        .iter()
        .filter(|(_, by, _)| *by == NeededBy::Workers)
        .map(|(name, _, _)| name.to_string())
        .collect();
    let rule: HashSet<String> = design_rule().into_iter().collect();
    assert_eq!(checked, rule);
}

fn set_user(server: &RedisServer, user: &str, extra: &[&str], without: &str) {
    let mut args = vec![
        "ACL",
        "SETUSER",
        user,
        "reset",
        "on",
        ">pw",
        "~ostq:*",
        "resetchannels",
        "&ostq:*",
        "-@all",
    ];
    let granted: Vec<String> = design_rule()
        .into_iter()
        .filter(|c| c != without)
        .map(|c| format!("+{c}"))
        .collect();
    args.extend(granted.iter().map(String::as_str));
    args.extend(extra);
    assert_eq!(server.cli(&args).unwrap(), "OK");
}

#[tokio::test]
async fn an_acl_user_missing_a_command_fails_naming_it() {
    let server = RedisServer::start().unwrap();
    let url = |user: &str| format!("redis://{user}:pw@127.0.0.1:{}", server.port());
    let doctor_rights = [
        "+acl|whoami",
        "+acl|dryrun",
        "+info",
        "+config|get",
        "+script|exists",
    ];

    set_user(&server, "complete", &doctor_rights, "");
    let report = doctor(&url("complete")).await;
    let acl = report.check("acl").unwrap();
    // Workers can run; the operator's extra commands (zcount, scan, …) are missing.
    assert_eq!(acl.status, Status::Warn, "{report:#?}");
    assert!(acl.summary.contains("zcount"), "{acl:?}");

    set_user(&server, "noblmove", &doctor_rights, "blmove");
    let acl = doctor(&url("noblmove"))
        .await
        .check("acl")
        .cloned()
        .unwrap();
    assert_eq!(acl.status, Status::Fail, "{acl:?}");
    assert!(acl.summary.contains("blmove"), "{acl:?}");
    assert!(acl.fix.as_deref().unwrap().contains("+blmove"), "{acl:?}");

    let operator = [
        "+zcount",
        "+scan",
        "+memory|usage",
        "+ping",
        "+cluster|slots",
    ];
    let all: Vec<&str> = doctor_rights
        .iter()
        .chain(operator.iter())
        .copied()
        .collect();
    set_user(&server, "operator", &all, "");
    let acl = doctor(&url("operator"))
        .await
        .check("acl")
        .cloned()
        .unwrap();
    assert_eq!(acl.status, Status::Pass, "{acl:?}");

    // A user who may not ask: "cannot check", a warning, and the other checks still run.
    set_user(&server, "blind", &["+info"], "");
    let report = doctor(&url("blind")).await;
    let acl = report.check("acl").unwrap();
    assert_eq!(acl.status, Status::Warn, "{acl:?}");
    assert!(acl.summary.contains("cannot check"), "{acl:?}");
    assert_eq!(status(&report, "eviction"), Status::Pass);
}

#[tokio::test]
async fn queues_with_jobs_and_no_worker_warn() {
    let server = RedisServer::start().unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    client.queue("videos").push("42").await.unwrap();
    client.queue("paused").push("1").await.unwrap();
    client.queue("paused").pause().await.unwrap();
    let check = client
        .doctor()
        .await
        .unwrap()
        .check("workers")
        .cloned()
        .unwrap();
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(check.summary.contains("videos (1 pending)"), "{check:?}");
    assert!(!check.summary.contains("paused"), "{check:?}");

    client.queue("videos").purge(None).await.unwrap();
    let check = client
        .doctor()
        .await
        .unwrap()
        .check("workers")
        .cloned()
        .unwrap();
    assert_eq!(check.status, Status::Pass, "{check:?}");
}

#[tokio::test]
async fn clock_and_scripts_pass_on_a_fresh_server() {
    let server = RedisServer::start().unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    client
        .queue("q")
        .push_with("x", &ostq::PushOptions::new().track())
        .await
        .unwrap();
    let report = client.doctor().await.unwrap();
    assert_eq!(status(&report, "clock"), Status::Pass);
    let scripts = report.check("scripts").unwrap();
    assert_eq!(scripts.status, Status::Pass);
    // The tracked push loaded push.lua.
    assert!(
        scripts.summary.starts_with("1 of this version's"),
        "{scripts:?}"
    );
    assert!(report.check("cluster").is_none(), "only for a Cluster");
}

#[tokio::test]
async fn a_cluster_with_an_unassigned_slot_fails() {
    let cluster = RedisCluster::start(3).unwrap();
    let client = ostq::Client::connect_cluster(cluster.urls()).await.unwrap();
    let report = client.doctor().await.unwrap();
    assert_eq!(status(&report, "cluster"), Status::Pass, "{report:#?}");
    let scripts = report.check("scripts").unwrap();
    let of_all = format!("/{}", ostq::scripts::ALL.len());
    assert_eq!(scripts.summary.matches(&of_all).count(), 3, "{scripts:?}");
    assert_eq!(status(&report, "eviction"), Status::Pass);

    // Take one slot away from whichever node holds it: the cluster is no longer whole.
    for node in cluster.nodes() {
        let _ = node.cli(&["CLUSTER", "DELSLOTS", "0"]);
    }
    let report = client.doctor().await.unwrap();
    let check = report.check("cluster").unwrap();
    assert_eq!(check.status, Status::Fail, "{report:#?}");
    assert!(check.summary.contains("16383 of 16384"), "{check:?}");
    // redis-rs times out commands on keys while a slot is unassigned: those checks say so.
    let workers = report.check("workers").unwrap();
    assert_eq!(workers.status, Status::Warn, "{workers:?}");
    assert!(workers.summary.starts_with("cannot check"), "{workers:?}");
}

#[tokio::test]
async fn stale_leases_and_a_crowded_dead_set_warn() {
    let server = RedisServer::start().unwrap();
    let client = ostq::Client::connect(&server.url()).await.unwrap();
    client.queue("videos").push("42").await.unwrap();
    client.queue("thumbs").push("1").await.unwrap();
    let report = client.doctor().await.unwrap();
    assert_eq!(status(&report, "leases"), Status::Pass, "{report:#?}");
    assert_eq!(status(&report, "dead"), Status::Pass, "{report:#?}");

    // A lease group whose deadline passed two minutes ago, as a dead worker leaves it when no
    // other worker fetches from the queue.
    let now: u64 = server
        .cli(&["TIME"])
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let deadline = (now * 1000 - 120_000).to_string();
    server
        .cli(&["ZADD", "ostq:{videos}:active", &deadline, "12345"])
        .unwrap();
    // 8,000 dead jobs: 80 % of the default cap.
    server
        .cli(&[
            "EVAL",
            "for i = 1, 8000 do redis.call('ZADD', KEYS[1], i, 'id' .. i) end",
            "1",
            "ostq:{thumbs}:dead",
        ])
        .unwrap();
    let report = client.doctor().await.unwrap();
    let leases = report.check("leases").unwrap();
    assert_eq!(leases.status, Status::Warn, "{leases:?}");
    assert!(leases.summary.contains("videos (1)"), "{leases:?}");
    let dead = report.check("dead").unwrap();
    assert_eq!(dead.status, Status::Warn, "{dead:?}");
    assert!(dead.summary.contains("thumbs (8000)"), "{dead:?}");
}

/// Replication: a lone server has no replication check; a primary with a replica and
/// `min-replicas-to-write 0` warns that acknowledged pushes can be lost in a failover (pointing
/// at durable pushes); with 1 it passes; with more than its replicas it fails (writes are
/// refused); a URL naming the replica fails. The quick checks (what a worker runs at start) are
/// the ones that need no scan.
#[tokio::test]
async fn replicas_and_min_replicas_to_write_are_checked() {
    let lone = RedisServer::start().unwrap();
    assert!(doctor(&lone.url()).await.check("replication").is_none());
    let client = ostq::Client::connect(&lone.url()).await.unwrap();
    let quick: Vec<String> = client
        .quick_doctor()
        .await
        .unwrap()
        .checks
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(quick, ["server", "eviction", "persistence", "memory"]);

    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]).unwrap();
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let start = std::time::Instant::now();
    while !primary
        .cli(&["INFO", "replication"])
        .unwrap()
        .contains("state=online")
    {
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let report = doctor(&primary.url()).await;
    let check = report.check("replication").unwrap();
    assert_eq!(check.status, Status::Warn, "{check:?}");
    assert!(
        check.summary.contains("min-replicas-to-write 0"),
        "{check:?}"
    );
    assert!(
        check.fix.as_deref().unwrap().contains("--durable"),
        "{check:?}"
    );
    // The quick checks include it too.
    let client = ostq::Client::connect(&primary.url()).await.unwrap();
    assert!(client
        .quick_doctor()
        .await
        .unwrap()
        .check("replication")
        .is_some());

    primary
        .cli(&["CONFIG", "SET", "min-replicas-to-write", "1"])
        .unwrap();
    let report = doctor(&primary.url()).await;
    assert_eq!(status(&report, "replication"), Status::Pass, "{report:#?}");

    primary
        .cli(&["CONFIG", "SET", "min-replicas-to-write", "2"])
        .unwrap();
    let report = doctor(&primary.url()).await;
    let check = report.check("replication").unwrap();
    assert_eq!(check.status, Status::Fail, "{check:?}");
    assert!(check.summary.contains("NOREPLICAS"), "{check:?}");

    let report = doctor(&replica.url()).await;
    let check = report.check("replication").unwrap();
    assert_eq!(check.status, Status::Fail, "{check:?}");
    assert!(check.summary.contains("replica"), "{check:?}");
}
