//! How far ostq's idle push → start is from what this machine allows (issue 16's latency target).
//! On a private redis-server, interleaved sample by sample so that all three see the same machine:
//!
//! - **floor**: a client blocked in `BLPOP`, another `LPUSH`es one value; the time from the push
//!   to the blocked client's reply. No queue can hand a job over faster on this machine: it is one
//!   command that wakes Redis and one reply that wakes the receiver.
//! - **floor + one round trip**: the same, and the receiver sends a `PING` the moment the value
//!   lands: what a design that asks Redis something after the wake-up (before it starts the job)
//!   pays at least.
//! - **wait + fetch.lua, raw**: the idle single-queue protocol ostq used before its staged waits,
//!   without a worker around it: `BLMOVE pending pending` with `fetch.lua` pipelined behind it,
//!   timed to the fetch's reply. Its distance from the floor is `fetch.lua`'s run on a cold Redis.
//! - **ostq**: one idle worker (concurrency 1, one queue), `Queue::push`, the time to the
//!   handler's start, as `ostq bench` measures it. The worker waits with a staged lease group
//!   (design §7.2): `BLMOVE pending lease:<g>` brings the job, and `claim.lua` follows.
//! - **idle PING**: one round trip after the same pause.
//!
//! Each sample follows a 2 ms pause, as in `ostq bench`, so the CPUs are idle when it starts.
//! Prints figures, asserts nothing (docs/performance.md, "Latency: what bounds it").
//!
//! ```sh
//! cargo run --release -p ostq --example idle_floor            # 2,000 samples of each
//! cargo run --release -p ostq --example idle_floor -- 5000
//! ```

use std::time::{Duration, Instant};

use ostq::{BoxError, Job, Worker};
use ostq_testkit::RedisServer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const GAP: Duration = Duration::from_millis(2);
const WARMUP: usize = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let samples: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2000);
    let server = RedisServer::start()?;
    let url = server.url();
    let client = ostq::Client::connect(&url).await?;
    let raw = redis::Client::open(url.as_str())?;
    let blocking = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut pusher = raw.get_multiplexed_async_connection().await?;
    let mut waiter = raw
        .get_multiplexed_async_connection_with_config(&blocking)
        .await?;

    // The floor's receiver: BLPOP in a loop, each reply timed where it lands.
    let (floor_tx, mut floor_rx) = mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        loop {
            let popped: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
                .arg("floor")
                .arg(0)
                .query_async(&mut waiter)
                .await;
            match popped {
                Ok(Some(_)) if floor_tx.send(Instant::now()).is_ok() => {}
                _ => return,
            }
        }
    });

    // The floor plus one round trip: a PING sent the moment the value lands.
    let mut waiter2 = raw
        .get_multiplexed_async_connection_with_config(&blocking)
        .await?;
    let mut pinger = raw.get_multiplexed_async_connection().await?;
    let (hop_tx, mut hop_rx) = mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        loop {
            let popped: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
                .arg("floor2")
                .arg(0)
                .query_async(&mut waiter2)
                .await;
            let pong: redis::RedisResult<String> =
                redis::cmd("PING").query_async(&mut pinger).await;
            match (popped, pong) {
                (Ok(Some(_)), Ok(_)) if hop_tx.send(Instant::now()).is_ok() => {}
                _ => return,
            }
        }
    });

    // ostq's protocol, raw: the wait and fetch.lua pipelined, on a queue of its own.
    let mut waiter3 = raw
        .get_multiplexed_async_connection_with_config(&blocking)
        .await?;
    let fetch = redis::Script::new(ostq::scripts::FETCH);
    let _: String = fetch.prepare_invoke().load_async(&mut pusher).await?;
    let raw_prefix = "ostq:{raw}:";
    let raw_keys: Vec<String> = [
        "pending",
        "prioritized",
        "scheduled",
        "retry",
        "jobs",
        "active",
        "dead",
        "seq",
        "stats",
        "completed",
        "paused",
        "ratelimit",
        "config",
        "events",
        "started",
    ]
    .iter()
    .map(|k| format!("{raw_prefix}{k}"))
    .collect();
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Instant>();
    let raw_pending = raw_keys[0].clone();
    let fetch_hash = fetch.get_hash().to_string();
    tokio::spawn(async move {
        for group in 1u64.. {
            let mut pipe = redis::pipe();
            pipe.cmd("BLMOVE")
                .arg(&raw_pending)
                .arg(&raw_pending)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(0)
                .ignore()
                .cmd("EVALSHA")
                .arg(&fetch_hash)
                .arg(raw_keys.len())
                .arg(&raw_keys)
                // prefix, want, lease ms, max attempts, dead cap, dead and completed retention,
                // group: what a worker of concurrency 1 sends with the default settings.
                .arg(raw_prefix)
                .arg(1)
                .arg(30_000)
                .arg(25)
                .arg(10_000)
                .arg(604_800_000u64)
                .arg(3_600_000)
                .arg(group);
            let fetched: redis::RedisResult<(Vec<redis::Value>,)> =
                pipe.query_async(&mut waiter3).await;
            let Ok((reply,)) = fetched else { return };
            // {now, wake at, group, hold, envelope...}: a wait ended by the wake marker (the
            // first lease group of a queue pushes one) leased nothing and is not a sample.
            if reply.len() < 5 {
                continue;
            }
            if raw_tx.send(Instant::now()).is_err() {
                return;
            }
            // Not timed: the leased group is dropped, so each fetch finds the same queue.
            let group_key = format!("{raw_prefix}lease:{group}");
            let dropped: redis::RedisResult<()> = redis::pipe()
                .cmd("DEL")
                .arg(&group_key)
                .cmd("ZREM")
                .arg(format!("{raw_prefix}active"))
                .arg(group)
                .cmd("HSET")
                .arg(format!("{raw_prefix}stats"))
                .arg("active")
                .arg(0)
                .query_async(&mut waiter3)
                .await;
            if dropped.is_err() {
                return;
            }
        }
    });

    // ostq's receiver: an idle worker whose handler reports when it starts.
    let (job_tx, mut job_rx) = mpsc::unbounded_channel::<Instant>();
    let stop = CancellationToken::new();
    let worker = Worker::builder(ostq::Client::connect(&url).await?)
        .queue("idle")
        .concurrency(1)
        .handler(move |_job: Job| {
            let _ = job_tx.send(Instant::now());
            async { Ok::<_, BoxError>(()) }
        })
        .build()?;
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    let queue = client.queue("idle");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Every command's own Redis time, to split ostq's figure into Redis work and the rest.
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "1000000"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut pusher)
            .await?;
    }
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query_async(&mut pusher)
        .await?;

    let (mut floor, mut hop, mut raw_fetch, mut ostq, mut ping) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..WARMUP + samples {
        tokio::time::sleep(GAP).await;
        let t0 = Instant::now();
        let _: () = redis::cmd("LPUSH")
            .arg("floor")
            .arg(i)
            .query_async(&mut pusher)
            .await?;
        let landed = floor_rx
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the BLPOP loop ended"))?;
        let floor_us = landed.saturating_duration_since(t0).as_secs_f64() * 1e6;

        tokio::time::sleep(GAP).await;
        let t0 = Instant::now();
        let _: () = redis::cmd("LPUSH")
            .arg("floor2")
            .arg(i)
            .query_async(&mut pusher)
            .await?;
        let landed = hop_rx
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the BLPOP + PING loop ended"))?;
        let hop_us = landed.saturating_duration_since(t0).as_secs_f64() * 1e6;

        tokio::time::sleep(GAP).await;
        let t0 = Instant::now();
        let _: () = redis::cmd("LPUSH")
            .arg(format!("{raw_prefix}pending"))
            .arg(i)
            .query_async(&mut pusher)
            .await?;
        let landed = raw_rx
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the raw fetch loop ended"))?;
        let raw_us = landed.saturating_duration_since(t0).as_secs_f64() * 1e6;

        tokio::time::sleep(GAP).await;
        let t0 = Instant::now();
        queue.push(i.to_string()).await?;
        let started = tokio::time::timeout(Duration::from_secs(10), job_rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the worker stopped"))?;
        let ostq_us = started.saturating_duration_since(t0).as_secs_f64() * 1e6;

        tokio::time::sleep(GAP).await;
        let ping_us = client.ping().await?.as_secs_f64() * 1e6;
        if i >= WARMUP {
            floor.push(floor_us);
            hop.push(hop_us);
            raw_fetch.push(raw_us);
            ostq.push(ostq_us);
            ping.push(ping_us);
        }
    }
    let slowlog: Vec<(i64, i64, i64, Vec<Vec<u8>>)> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(&mut pusher)
        .await
        .map(|entries: Vec<redis::Value>| {
            entries
                .into_iter()
                .filter_map(|e| match e {
                    redis::Value::Array(f) if f.len() >= 4 => {
                        let mut f = f.into_iter();
                        let id = redis::from_redis_value(f.next()?).ok()?;
                        let ts = redis::from_redis_value(f.next()?).ok()?;
                        let us = redis::from_redis_value(f.next()?).ok()?;
                        let args = redis::from_redis_value(f.next()?).ok()?;
                        Some((id, ts, us, args))
                    }
                    _ => None,
                })
                .collect()
        })?;
    stop.cancel();
    running.await??;

    println!(
        "{samples} samples each, interleaved, {} ms idle before each; Redis {}",
        GAP.as_millis(),
        client.redis_info().await?.version
    );
    println!("{:<34} {:>9} {:>9} {:>9}", "", "p50 µs", "p90 µs", "p99 µs");
    let rows = [
        ("idle PING round trip", &mut ping),
        ("floor: LPUSH → blocked BLPOP", &mut floor),
        ("floor + one round trip", &mut hop),
        ("wait + fetch.lua, raw", &mut raw_fetch),
        ("ostq: push → handler start", &mut ostq),
    ];
    let mut p50s = Vec::new();
    for (name, values) in rows {
        values.sort_by(f64::total_cmp);
        let at =
            |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        println!(
            "{name:<34} {:>9.0} {:>9.0} {:>9.0}",
            at(0.5),
            at(0.9),
            at(0.99)
        );
        p50s.push(at(0.5));
    }
    println!(
        "ostq / floor at p50: {:.2}×; floor / idle PING at p50: {:.2}×",
        p50s[4] / p50s[1],
        p50s[1] / p50s[0]
    );
    // Redis's own time per top-level command over the run (SLOWLOG at 0 µs; the commands a
    // script runs are logged too, and left out here), scripts by name.
    let names: Vec<(String, &str)> = [
        (ostq::scripts::FETCH, "fetch.lua"),
        (ostq::scripts::CLAIM, "claim.lua"),
        (ostq::scripts::COMPLETE, "complete.lua"),
    ]
    .iter()
    .map(|(text, name)| (redis::Script::new(text).get_hash().to_string(), *name))
    .collect();
    let mut by: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (_, _, us, args) in &slowlog {
        let text = |i: usize| args.get(i).map(|a| String::from_utf8_lossy(a).to_string());
        let command = text(0).unwrap_or_default().to_uppercase();
        let what = match command.as_str() {
            "EVALSHA" => {
                let sha = text(1).unwrap_or_default();
                let name = names.iter().find(|(hash, _)| *hash == sha);
                name.map_or("EVALSHA (other)".to_string(), |(_, n)| n.to_string())
            }
            "BLMOVE" | "BLPOP" | "LPUSH" | "PING" => {
                format!("{command} {}", text(1).unwrap_or_default())
            }
            _ => continue,
        };
        by.entry(what).or_default().push(*us);
    }
    println!("\nRedis's own time per command (SLOWLOG):   calls   p50 µs  mean µs");
    for (what, mut us) in by {
        us.sort();
        let mean = us.iter().sum::<i64>() as f64 / us.len() as f64;
        println!(
            "  {what:<38} {:>7} {:>8} {:>8.1}",
            us.len(),
            us[us.len() / 2],
            mean
        );
    }
    Ok(())
}
