//! An idle worker serving many queues: it keeps one blocking connection per queue and opens no
//! new one while idle (waits that did not end first stay in flight instead of being abandoned
//! with their connections), and still starts a job pushed onto any of its queues.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{setup, spawn, RedisServer};
use ostq::{BoxError, Job, Worker};

const QUEUES: usize = 20;

/// Connections received and commands processed so far, from one `INFO stats` (whose own
/// connection and command are counted in it).
fn stats(server: &RedisServer) -> (u64, u64) {
    let info = server.cli(&["INFO", "stats"]).unwrap();
    let stat = |name: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    (
        stat("total_connections_received"),
        stat("total_commands_processed"),
    )
}

#[tokio::test]
async fn an_idle_worker_on_many_queues_opens_no_new_connections() {
    let (server, client) = setup().await;
    let names: Vec<String> = (0..QUEUES).map(|i| format!("q{i}")).collect();
    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = ran.clone();
    let mut builder = Worker::builder(client.clone());
    for name in &names {
        builder = builder.queue(name);
    }
    let running = spawn(
        builder
            .handler(move |job: Job| {
                seen.lock().unwrap().push(job.queue.clone());
                async { Ok::<_, BoxError>(()) }
            })
            .build()
            .unwrap(),
    );
    // Every queue has waited once (its connection is open) after the first idle spells.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (connections, commands) = stats(&server);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (connections_after, commands_after) = stats(&server);
    // (Less the connection and the command of the second INFO itself.)
    let opened = connections_after - connections - 1;
    let commands = commands_after - commands - 1;
    eprintln!("idle on {QUEUES} queues for 3 s: {opened} connections opened, {commands} commands");
    assert_eq!(
        opened, 0,
        "an idle worker opened {opened} connections in 3 s"
    );

    // Still watching every queue: a push onto any of them is run.
    for name in ["q3", "q17", "q0"] {
        client.queue(name).push(name.as_bytes()).await.unwrap();
        let ok = common::wait_until(Duration::from_secs(5), || async {
            ran.lock().unwrap().iter().any(|q| q == name)
        })
        .await;
        assert!(ok, "the job pushed onto {name} did not run");
    }
    running.shutdown().await;
}
