//! Security: a Redis user limited by ACL to `ostq:*` keys and the commands ostq sends works end to
//! end; a wrong password fails fast without echoing it; `rediss://` with a private CA works.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{spawn, wait_counts, RedisServer};
use ostq::{BoxError, Job, JobState, Permanent, PushOptions, Worker};
use ostq_testkit::{free_port, TestCerts};

/// The ACL rule for an ostq user: its keys and event channels, and exactly the commands ostq
/// sends (`docs` quote it). Commands called from the Lua scripts need permission too; `AUTH` is
/// always allowed. On Redis 7.2 and later add [`SETINFO_RULE`].
const ACL_RULE: &str = "~ostq:* resetchannels &ostq:* -@all \
     +evalsha +script|load +multi +exec \
     +time +exists +del +unlink +rename +expire +persist +get +set +incr \
     +lpush +rpush +rpop +llen +lindex +lset +lrange +lrem +lpos +blmove \
     +hset +hsetnx +hmset +hget +hmget +hgetall +hdel +hexists +hincrby +hlen +hstrlen \
     +sadd +smembers +srem +pexpire +publish +xadd +xread +xrevrange \
     +zadd +zrem +zcard +zscore +zmscore +zrange +zrevrange +zrangebyscore +zremrangebyscore";

/// redis-rs names itself with `CLIENT SETINFO` on every new connection (Redis 7.2+; older
/// servers do not know the command, and ACL rejects rules naming it). It ignores a refusal, but
/// each refusal is an entry in `ACL LOG`.
const SETINFO_RULE: &str = "+client|setinfo";

fn acl_setuser(server: &RedisServer, user: &str, password: &str) {
    let mut args = vec!["ACL", "SETUSER", user, "reset", "on"];
    let secret = format!(">{password}");
    args.push(&secret);
    args.extend(ACL_RULE.split_whitespace());
    let known = server.cli(&["COMMAND", "INFO", "client|setinfo"]).unwrap();
    if !known.is_empty() {
        args.push(SETINFO_RULE);
    }
    assert_eq!(server.cli(&args).unwrap(), "OK");
}

/// What the ACL refused, if anything (empty when every command was allowed).
fn acl_denials(server: &RedisServer) -> String {
    server.cli(&["ACL", "LOG"]).unwrap()
}

#[tokio::test]
async fn an_acl_user_limited_to_ostq_keys_and_commands_works_end_to_end() {
    let server = RedisServer::start().unwrap();
    acl_setuser(&server, "ostq", "s3cret");
    let url = format!("redis://ostq:s3cret@127.0.0.1:{}", server.port());
    let client = ostq::Client::connect(&url).await.unwrap();

    // The user really is limited: another key and an admin command are refused.
    let outsider = format!(
        "{}",
        redis::cmd("SET")
            .arg("elsewhere")
            .arg(1)
            .query::<()>(
                &mut redis::Client::open(url.as_str())
                    .unwrap()
                    .get_connection()
                    .unwrap()
            )
            .unwrap_err()
    );
    assert!(
        outsider.contains("NoPerm") || outsider.contains("NOPERM"),
        "{outsider}"
    );
    server.cli(&["ACL", "LOG", "RESET"]).unwrap();

    // Every kind of push: plain (LPUSH), bulk, tracked / delayed / prioritized (push.lua).
    let queue = client.queue("acl");
    let mut ids: HashSet<String> = queue
        .push_bulk((0..20).map(|i| format!("plain-{i}")))
        .await
        .unwrap()
        .into_iter()
        .collect();
    ids.insert(queue.push("single").await.unwrap());
    ids.insert(
        queue
            .push_with("tracked", &PushOptions::new().track())
            .await
            .unwrap(),
    );
    ids.insert(
        queue
            .push_with("urgent", &PushOptions::new().priority(5))
            .await
            .unwrap(),
    );
    ids.insert(
        queue
            .push_with(
                "later",
                &PushOptions::new().delay(Duration::from_millis(300)),
            )
            .await
            .unwrap(),
    );
    let doomed = queue
        .push_with("doomed", &PushOptions::new().max_attempts(1).track())
        .await
        .unwrap();
    let flaky = queue
        .push_with("flaky", &PushOptions::new().max_attempts(2))
        .await
        .unwrap();
    ids.insert(flaky.clone());
    let cancelled = queue.push("cancel-me").await.unwrap();
    // Inspection before the worker runs.
    assert!(client.queues().await.unwrap().contains(&"acl".to_string()));
    let before = queue.counts().await.unwrap();
    assert_eq!((before.pending, before.scheduled), (26, 1), "{before:?}");
    assert_eq!(
        queue.jobs(JobState::Pending, 0, 100).await.unwrap().len(),
        26
    );
    assert_eq!(
        queue.jobs(JobState::Scheduled, 0, 10).await.unwrap().len(),
        1
    );
    assert!(queue.job(&doomed).await.unwrap().is_some());
    queue.pause().await.unwrap();
    queue.resume().await.unwrap();
    queue
        .set_rate_limit(1000, Duration::from_secs(1))
        .await
        .unwrap();

    // A worker: fetch (fetch.lua, BLMOVE), complete, retry (fail.lua), dead, lease renewal.
    let ran = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let (ran2, seen2) = (ran.clone(), seen.clone());
    let reports = Arc::new(Mutex::new(Vec::new()));
    let reports2 = reports.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("acl")
            .concurrency(4)
            .lease(Duration::from_secs(1))
            .retry(ostq::RetryPolicy::fixed(Duration::from_millis(50)))
            .on_monitor(Duration::from_millis(200), move |report| {
                reports2.lock().unwrap().push(report.clone())
            })
            .handler(move |job: Job| {
                let (ran, seen) = (ran2.clone(), seen2.clone());
                async move {
                    let payload = job.payload_str()?.to_owned();
                    if payload == "doomed" {
                        return Err(Box::new(Permanent::new("never works")) as BoxError);
                    }
                    if payload == "cancel-me" {
                        tokio::select! {
                            _ = job.cancelled() => return Err("stopped on request".into()),
                            _ = tokio::time::sleep(Duration::from_secs(20)) => {}
                        }
                    }
                    if payload == "flaky" && seen.lock().unwrap().insert(job.id.clone()) {
                        return Err("first attempt fails".into());
                    }
                    // Long enough for a lease renewal (every lease / 3).
                    if payload == "single" {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    ran.lock().unwrap().insert(job.id.clone());
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    // Cancel a running job (SADD + PEXPIRE on the cancel set, read back by the worker).
    assert!(
        common::wait_until(Duration::from_secs(10), || async {
            queue
                .jobs(JobState::Active, 0, 10)
                .await
                .unwrap()
                .iter()
                .any(|j| j.id == cancelled)
        })
        .await
    );
    assert_eq!(
        queue.cancel(&cancelled).await.unwrap(),
        ostq::admin::Cancel::Signalled
    );
    let counts = wait_counts(&queue, Duration::from_secs(10), |c| {
        c.pending + c.scheduled + c.retry + c.active == 0 && c.dead == 2
    })
    .await;
    assert_eq!(*ran.lock().unwrap(), ids, "{counts:?}");

    // Inspection and operator actions on dead, completed and tracked jobs.
    let tracked = queue.jobs(JobState::Completed, 0, 10).await.unwrap();
    assert_eq!(tracked.len(), 1, "{tracked:?}");
    let dead = queue.jobs(JobState::Dead, 0, 10).await.unwrap();
    let mut dead_ids: Vec<&str> = dead.iter().map(|j| j.id.as_str()).collect();
    dead_ids.sort_unstable();
    let mut expected = vec![doomed.as_str(), cancelled.as_str()];
    expected.sort_unstable();
    assert_eq!(dead_ids, expected);
    assert_eq!(
        queue.job(&doomed).await.unwrap().map(|j| j.state),
        Some(JobState::Dead)
    );
    running.shutdown().await;
    queue.clear_rate_limit().await.unwrap();
    assert_eq!(queue.retry_all_dead().await.unwrap(), 2);
    assert_eq!(queue.counts().await.unwrap().pending, 2);
    queue
        .push_with("again", &PushOptions::new().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(queue.purge(None).await.unwrap(), 4);
    let id = queue
        .push_with("gone", &PushOptions::new().delay(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(queue.delete(&[id.as_str()]).await.unwrap(), 1);

    // The monitor reported the queue; the user may not run INFO, so after one refused try its
    // reports carry no Redis figures. That refusal is the only one.
    let reports = reports.lock().unwrap();
    let last = reports
        .last()
        .unwrap_or_else(|| panic!("no monitor report; ACL LOG:\n{}", acl_denials(&server)));
    assert_eq!(last.snapshot.queues[0].counts.queue, "acl");
    assert!(last.worker.completed > 0, "{:?}", last.worker);
    assert!(last.snapshot.redis.version.is_empty());
    let denials = acl_denials(&server);
    let lines: Vec<&str> = denials.lines().collect();
    let refused: Vec<&str> = lines
        .windows(2)
        .filter(|w| w[0] == "object")
        .map(|w| w[1])
        .collect();
    assert_eq!(refused, ["info"], "the ACL refused:\n{denials}");
}

/// The rule keeps up with the scripts: every command a Lua script calls is granted (the scripts
/// run under the caller's ACL user).
#[test]
fn the_acl_rule_grants_every_command_the_scripts_call() {
    let granted: HashSet<String> = ACL_RULE
        .split_whitespace()
        .filter_map(|rule| rule.strip_prefix('+'))
        .map(str::to_string)
        .collect();
    let mut missing = Vec::new();
    // The scripts as Redis receives them, shared helpers (lua/lib) included.
    for (path, source) in ostq::scripts::ALL {
        let calls = source.split("redis.call(").skip(1);
        for call in calls.chain(source.split("redis.pcall(").skip(1)) {
            let call = call.trim_start().trim_start_matches(['\'', '"']);
            let name: String = call
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect::<String>()
                .to_lowercase();
            if !name.is_empty() && !granted.contains(&name) {
                missing.push(format!("{name} ({path}.lua)"));
            }
        }
    }
    assert!(missing.is_empty(), "add to ACL_RULE: {missing:?}");
}

#[tokio::test]
async fn a_wrong_password_fails_fast_without_echoing_it() {
    let server = RedisServer::start().unwrap();
    acl_setuser(&server, "ostq", "right-password");
    for url in [
        format!("redis://ostq:wrong-password@127.0.0.1:{}", server.port()),
        format!("redis://nobody:wrong-password@127.0.0.1:{}", server.port()),
        format!("redis://:wrong-password@127.0.0.1:{}", server.port()),
    ] {
        let started = Instant::now();
        let err = ostq::Client::connect(&url).await.unwrap_err();
        let took = started.elapsed();
        let text = err.to_string();
        assert!(took < Duration::from_secs(1), "took {took:?}: {text}");
        assert!(!text.contains("wrong-password"), "{text}");
        assert!(
            text.contains("authentication failed") && text.contains("127.0.0.1"),
            "{text}"
        );
        eprintln!("{took:?}: {text}");
    }
}

/// Starts a server with a TLS port (plus its usual plain port for redis-cli); `None` when this
/// redis-server was built without TLS.
fn start_tls(certs: &TestCerts, auth_clients: bool) -> Option<(RedisServer, u16)> {
    let tls_port = free_port();
    let port = tls_port.to_string();
    let mut args = vec!["--tls-port", port.as_str()];
    args.extend(certs.server_args());
    args.extend([
        "--tls-auth-clients",
        if auth_clients { "yes" } else { "no" },
    ]);
    match RedisServer::start_with(&args) {
        Ok(server) => Some((server, tls_port)),
        Err(e) if format!("{e:#}").contains("TLS") && !format!("{e:#}").contains("Address") => {
            eprintln!("SKIPPED: this redis-server does not support TLS: {e:#}");
            None
        }
        Err(e) => panic!("{e:#}"),
    }
}

#[tokio::test]
async fn rediss_with_a_ca_file_pushes_and_works_jobs() {
    let certs = TestCerts::generate().unwrap();
    let Some((server, tls_port)) = start_tls(&certs, false) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{tls_port}");

    // Without the CA the server's certificate is not trusted.
    let err = ostq::Client::connect(&url).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // Plain text on the TLS port does not work either: the test really uses TLS.
    assert!(
        ostq::Client::connect(&format!("redis://127.0.0.1:{tls_port}"))
            .await
            .is_err()
    );

    let client = ostq::Client::builder(&url)
        .ca_file(certs.ca())
        .connect()
        .await
        .unwrap();
    let queue = client.queue("tls");
    let ids: HashSet<String> = queue
        .push_bulk((0..50).map(|i| i.to_string()))
        .await
        .unwrap()
        .into_iter()
        .collect();
    let ran = Arc::new(Mutex::new(HashSet::new()));
    let ran2 = ran.clone();
    let running = spawn(
        Worker::builder(client.clone())
            .queue("tls")
            .handler(move |job: Job| {
                let ran = ran2.clone();
                async move {
                    ran.lock().unwrap().insert(job.id.clone());
                    Ok::<_, BoxError>(())
                }
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| {
        c.pending == 0 && c.active == 0 && c.processed_total == 50
    })
    .await;
    running.shutdown().await;
    assert_eq!(*ran.lock().unwrap(), ids);
    drop(server);
}

#[tokio::test]
async fn rediss_with_a_client_certificate_when_the_server_demands_one() {
    let certs = TestCerts::generate().unwrap();
    let Some((_server, tls_port)) = start_tls(&certs, true) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{tls_port}");
    // Without a client certificate the server hangs up during the handshake.
    assert!(ostq::Client::builder(&url)
        .ca_file(certs.ca())
        .connect()
        .await
        .is_err());
    let client = ostq::Client::builder(&url)
        .ca_file(certs.ca())
        .client_cert(certs.client_cert(), certs.client_key())
        .connect()
        .await
        .unwrap();
    let id = client.queue("mtls").push("hello").await.unwrap();
    let info = client
        .queue("mtls")
        .jobs(JobState::Pending, 0, 10)
        .await
        .unwrap();
    assert_eq!(info[0].id, id);
}
