//! Cron ticks follow the Redis server's clock from the very start of a run, whatever the local
//! clock says. The local clock is skewed through the scheduler's test seam
//! (`SchedulerBuilder::local_clock_skew_ms`), since a test cannot set the machine's clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::setup;
use ostq::scheduler::{Tick, TickOutcome};
use ostq::{Client, Schedule, Scheduler};
use tokio_util::sync::CancellationToken;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Runs a scheduler with `schedule` (default `MissedTicks::Skip`) and its local clock off by
/// `skew_ms`, for `run_for`; returns every tick its hook saw.
async fn run_skewed(
    client: &Client,
    schedule: Schedule,
    skew_ms: i64,
    run_for: Duration,
) -> Vec<Tick> {
    let ticks = Arc::new(Mutex::new(Vec::new()));
    let seen = ticks.clone();
    let scheduler = Scheduler::builder(client.clone())
        .schedule(schedule)
        .local_clock_skew_ms(skew_ms)
        .on_tick(move |tick| seen.lock().unwrap().push(tick.clone()))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(scheduler.run_until(stop.clone().cancelled_owned()));
    tokio::time::sleep(run_for).await;
    stop.cancel();
    handle.await.unwrap().unwrap();
    let ticks = ticks.lock().unwrap().clone();
    ticks
}

fn fired(ticks: &[Tick]) -> Vec<u64> {
    ticks
        .iter()
        .filter(|t| matches!(t.outcome, TickOutcome::Fired { .. }))
        .map(|t| t.tick_ms)
        .collect()
}

/// With the local clock 30 s ahead, the start of the run was read 30 s in the future, and
/// `Skip` treated every tick of the first 30 s as missed: nothing fired.
#[tokio::test]
async fn a_local_clock_ahead_does_not_skip_the_first_ticks() {
    let (_server, client) = setup().await;
    let start = now_ms();
    let ticks = run_skewed(
        &client,
        Schedule::cron("each-second", "clock-ahead", "* * * * * *").payload("tick"),
        30_000,
        Duration::from_millis(3500),
    )
    .await;
    let fired = fired(&ticks);
    assert!(
        fired.len() >= 2,
        "expected a tick every second from the start, fired {fired:?} (all calls: {ticks:?})"
    );
    assert!(
        fired.iter().all(|&t| t > start && t < start + 5000),
        "ticks on the server's clock: {fired:?} (start {start})"
    );
    assert_eq!(
        client.queue("clock-ahead").counts().await.unwrap().pending,
        fired.len() as u64
    );
}

/// With the local clock 30 s behind, the start of the run was read 30 s in the past, and the
/// run began by firing the tick just before it started although `Skip` says ticks missed while
/// no process ran are skipped. The schedule is registered well before, so the tick is not
/// refused as `early` by the script.
#[tokio::test]
async fn a_local_clock_behind_does_not_fire_ticks_from_before_the_start() {
    let (_server, client) = setup().await;
    let schedule = || Schedule::every("each-second", "clock-behind", Duration::from_secs(1));
    Scheduler::builder(client.clone())
        .schedule(schedule())
        .build()
        .unwrap()
        .register()
        .await
        .unwrap();
    // Start 300 ms into a second at least one second later: the tick at the top of that second
    // is after the registration and before the start.
    let at = (now_ms() / 1000 + 2) * 1000 + 300;
    tokio::time::sleep(Duration::from_millis(at - now_ms())).await;
    let start = now_ms();
    let ticks = run_skewed(&client, schedule(), -30_000, Duration::from_millis(1500)).await;
    let early: Vec<&Tick> = ticks.iter().filter(|t| t.tick_ms < start).collect();
    assert!(
        early.is_empty(),
        "ticks from before the start (at {start}) were fired: {early:?}"
    );
    assert!(!fired(&ticks).is_empty(), "{ticks:?}");
}
