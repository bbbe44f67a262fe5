//! What durable pushes and outcomes cost: the same pushes and the same drain with durability off
//! and with `WAIT 1` (one replica on loopback), on a private primary and replica. Prints figures,
//! asserts nothing (docs/operations.md quotes them).
//!
//! ```sh
//! cargo run --release -p ostq --example durable_cost            # 5,000 jobs per phase
//! cargo run --release -p ostq --example durable_cost -- 20000
//! ```

use std::time::{Duration, Instant};

use ostq::{BoxError, Durability, Job, PushOptions, Worker};
use ostq_testkit::RedisServer;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5000);
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"])?;
    let port = primary.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port])?;
    while !replica
        .cli(&["INFO", "replication"])?
        .contains("master_link_status:up")
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = ostq::Client::connect(&primary.url()).await?;
    let durable = Durability::replicas(1, Duration::from_secs(1));
    println!(
        "{jobs} jobs per phase; Redis {} with one replica on loopback\n",
        client.redis_info().await?.version
    );
    println!(
        "{:<40} {:>14} {:>14} {:>8}",
        "phase", "off", "WAIT 1", "ratio"
    );
    for (phase, unit) in [
        ("one push at a time (pushes/s)", "rate"),
        ("one push at a time: p50 latency (µs)", "p50"),
        ("one push at a time: p99 latency (µs)", "p99"),
        ("32 producers at once (pushes/s)", "concurrent"),
        ("bulk pushes of 1000 (jobs/s)", "bulk"),
        ("tracked pushes, 32 at once (pushes/s)", "tracked"),
        ("worker drain, concurrency 100 (jobs/s)", "drain"),
    ] {
        let mut figures = Vec::new();
        for durability in [Durability::Async, durable] {
            let queue = client.queue(&format!("cost-{unit}-{}", figures.len()));
            figures.push(measure(&client, &queue, unit, jobs, durability).await?);
        }
        let (off, on) = (figures[0], figures[1]);
        println!("{phase:<40} {off:>14.0} {on:>14.0} {:>8.2}", on / off);
    }
    Ok(())
}

/// One figure of one phase.
async fn measure(
    client: &ostq::Client,
    queue: &ostq::Queue,
    unit: &str,
    jobs: usize,
    durability: Durability,
) -> anyhow::Result<f64> {
    let opts = PushOptions::new().durable(durability);
    match unit {
        "rate" | "p50" | "p99" => {
            let mut latencies = Vec::with_capacity(jobs);
            let started = Instant::now();
            for i in 0..jobs {
                let t = Instant::now();
                queue.push_with(i.to_string(), &opts).await?;
                latencies.push(t.elapsed().as_secs_f64() * 1e6);
            }
            let rate = jobs as f64 / started.elapsed().as_secs_f64();
            latencies.sort_by(f64::total_cmp);
            let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
            Ok(match unit {
                "rate" => rate,
                "p50" => at(0.5),
                _ => at(0.99),
            })
        }
        "concurrent" | "tracked" => {
            let opts = if unit == "tracked" {
                opts.track()
            } else {
                opts
            };
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..32 {
                let (queue, opts) = (queue.clone(), opts.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..jobs / 32 {
                        queue.push_with(i.to_string(), &opts).await?;
                    }
                    Ok::<_, ostq::Error>(())
                }));
            }
            for task in tasks {
                task.await??;
            }
            Ok((jobs / 32 * 32) as f64 / started.elapsed().as_secs_f64())
        }
        "bulk" => {
            let started = Instant::now();
            for _ in 0..jobs.div_ceil(1000) {
                queue
                    .push_bulk_with((0..1000).map(|i| i.to_string()), &opts)
                    .await?;
            }
            Ok((jobs.div_ceil(1000) * 1000) as f64 / started.elapsed().as_secs_f64())
        }
        _ => {
            queue.push_bulk((0..jobs).map(|i| i.to_string())).await?;
            let worker = Worker::builder(client.clone())
                .queue(queue.name())
                .concurrency(100)
                .durable_outcomes(durability)
                .history(false)
                .handler(|_job: Job| async { Ok::<_, BoxError>(()) })
                .build()?;
            let stop = CancellationToken::new();
            let started = Instant::now();
            let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
            loop {
                let counts = queue.counts().await?;
                if counts.processed_total >= jobs as u64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let elapsed = started.elapsed();
            stop.cancel();
            running.await??;
            Ok(jobs as f64 / elapsed.as_secs_f64())
        }
    }
}
