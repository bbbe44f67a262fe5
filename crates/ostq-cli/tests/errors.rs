//! Every user error is one clear line on stderr and a non-zero exit code, never a panic.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

#[test]
fn unknown_flag_is_one_line_with_exit_code_2() {
    let out = run("redis://127.0.0.1:1", &["stats", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, "--bogus");
}

#[test]
fn bad_durations_and_times_are_named() {
    let out = run(
        "redis://127.0.0.1:1",
        &["worker", "-q", "a", "--lease", "5x", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, "bad duration \"5x\"");
    let out = run(
        "redis://127.0.0.1:1",
        &["push", "a", "1", "--delay", "soon"],
    );
    assert_one_line_error(&out, "--delay");
    let out = run(
        "redis://127.0.0.1:1",
        &["push", "a", "1", "--at", "tomorrow"],
    );
    assert_one_line_error(&out, "RFC 3339");
    let out = run(
        "redis://127.0.0.1:1",
        &["stats", "--max-failure-rate", "150%"],
    );
    assert_one_line_error(&out, "outside 0..1");
    let out = run("redis://127.0.0.1:1", &["jobs", "q", "--state", "sleeping"]);
    assert_one_line_error(&out, "unknown state");
}

#[test]
fn bad_url_is_named() {
    let out = run("http://example", &["stats"]);
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(&out, "bad Redis URL");
    let out = run("redis://u:secret@[::zz]:1", &["queues"]);
    assert_one_line_error(&out, "Redis URL");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));
}

#[test]
fn unreachable_redis_is_named() {
    // A port nothing listens on.
    let port = ostq_testkit::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    for args in [
        &["stats"][..],
        &["push", "q", "1"],
        &["jobs", "q"],
        &["worker", "-q", "q", "--", "true"],
    ] {
        let out = run(&url, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_one_line_error(&out, "cannot connect to Redis");
    }
}

#[test]
fn wrong_and_missing_passwords_are_named() {
    let redis = RedisServer::start().unwrap();
    redis
        .cli(&["CONFIG", "SET", "requirepass", "sekrit"])
        .unwrap();
    let port = redis.port();
    let wrong = run(&format!("redis://:wrong@127.0.0.1:{port}"), &["stats"]);
    let missing = run(&format!("redis://127.0.0.1:{port}"), &["push", "q", "1"]);
    let right = run(
        &format!("redis://:sekrit@127.0.0.1:{port}"),
        &["push", "q", "1"],
    );
    // Let the test kit stop the server as usual.
    let reset = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["CONFIG", "SET", "requirepass", ""])
        .env("REDISCLI_AUTH", "sekrit")
        .output()
        .unwrap();
    assert!(reset.status.success());
    assert_one_line_error(&wrong, "refused the password");
    assert!(!String::from_utf8_lossy(&wrong.stderr).contains("wrong@"));
    assert_one_line_error(&missing, "requires a password");
    assert_success(&right, &["push with the right password"]);
}

#[test]
fn url_comes_from_the_environment() {
    let redis = RedisServer::start().unwrap();
    let mut c = std::process::Command::new(bin());
    c.args(["push", "envq", "x"])
        .env_remove("OSTQ_URL")
        .env("REDIS_URL", redis.url());
    assert!(c.output().unwrap().status.success());
    let mut c = std::process::Command::new(bin());
    c.args(["push", "envq", "y"])
        .env("OSTQ_URL", redis.url())
        .env("REDIS_URL", "redis://127.0.0.1:1");
    assert!(c.output().unwrap().status.success());
    assert_eq!(counts(&redis.url(), "envq")["pending"], 2);
}

#[test]
fn bad_arguments_to_commands_are_named() {
    let redis = RedisServer::start().unwrap();
    let url = redis.url();
    assert_one_line_error(&run(&url, &["push", "bad queue", "1"]), "queue name");
    assert_one_line_error(&run(&url, &["push", "q"]), "nothing to push");
    assert_one_line_error(
        &run(&url, &["push", "q", "1", "--file", "/no/such/file"]),
        "give payloads",
    );
    assert_one_line_error(
        &run(&url, &["push", "q", "--file", "/no/such/file"]),
        "cannot open",
    );
    assert_one_line_error(
        &run(&url, &["worker", "-q", "q", "--", "no-such-program-ostq"]),
        "not found",
    );
    assert_one_line_error(&run(&url, &["job", "nope"]), "no job");
    assert_one_line_error(
        &run(&url, &["purge", "q", "--state", "active", "--yes"]),
        "active",
    );
    let out = run(&url, &["worker", "-q", "q"]);
    assert_eq!(out.status.code(), Some(2));
    assert_one_line_error(&out, "CMD");
}
