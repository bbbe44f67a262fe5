//! What sharding one queue over a 3-primary Redis Cluster does (issue 15, design §19): the same
//! jobs pushed and drained on an unsharded queue and on a 3-shard queue, each primary's share of
//! the jobs and of Redis CPU time (`used_cpu_sys + used_cpu_user` from `INFO cpu`, per node), and
//! the projected ceiling of the logical queue, Σ over primaries of 1 / (CPU s per job there). On
//! this 2-core machine the worker shares the cores with three Redis servers, so the wall-clock
//! rate shows little; the CPU projection is the figure. Then the idle latency: 50 pushes 100 ms
//! apart, each timed from the push to its handler's start. Prints, asserts nothing.
//!
//! The earlier figures of design §19 came from here; `ostq bench --shards N` (and
//! `scripts/bench-cluster`, 3 and 6 primaries) now measures the same and more, on any cluster.
//!
//! ```sh
//! cargo run --release -p ostq --example shard_cost            # 20,000 jobs per phase
//! cargo run --release -p ostq --example shard_cost -- 50000
//! ```

use std::time::{Duration, Instant};

use ostq::{BoxError, Job, Worker};
use ostq_testkit::{RedisCluster, RedisServer};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let jobs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20_000);
    let cluster = RedisCluster::start(3)?;
    let client = ostq::Client::connect_cluster(cluster.urls()).await?;
    println!("{jobs} jobs per phase, 3 primaries, worker concurrency 50, batches of 1000 pushes");
    for (name, shards) in [("flat", 1), ("hot", 3)] {
        phase(&cluster, &client, name, shards, jobs).await?;
    }
    Ok(())
}

async fn phase(
    cluster: &RedisCluster,
    client: &ostq::Client,
    name: &str,
    shards: usize,
    jobs: usize,
) -> anyhow::Result<()> {
    let queue = client.queue(name);
    let layout = queue.set_shards(shards).await?;
    let before = cpu(cluster)?;
    let start = Instant::now();
    let payloads: Vec<String> = (0..jobs).map(|i| i.to_string()).collect();
    for chunk in payloads.chunks(1000) {
        queue.push_bulk(chunk).await?;
    }
    let pushed = start.elapsed();
    let stop = CancellationToken::new();
    let (tx, mut started) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let worker = Worker::builder(client.clone())
        .queue(name)
        .concurrency(50)
        .doctor(false)
        .handler(move |job: Job| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(job.payload.to_vec());
                Ok::<_, BoxError>(())
            }
        })
        .build()?;
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    while queue.counts().await?.processed_total < jobs as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = start.elapsed();
    let after = cpu(cluster)?;
    // Jobs per primary: each shard's processed counter, read on the node that holds it.
    let mut per_node = [0u64; 3];
    for shard in &layout.shards {
        let (node, processed) = processed_on(cluster, shard)?;
        per_node[node] += processed;
    }
    // Idle latency: the worker waits in Redis; one push every 100 ms, to its handler's start.
    while started.try_recv().is_ok() {}
    let mut latencies = Vec::new();
    for i in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let payload = format!("latency-{i}");
        let sent = Instant::now();
        queue.push(&payload).await?;
        while started.recv().await.as_deref() != Some(payload.as_bytes()) {}
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    latencies.sort_by(f64::total_cmp);
    stop.cancel();
    running.await??;

    println!(
        "\n{name}: {shards} shard(s), pushed in {:.2} s, pushed and drained in {:.2} s ({:.0} jobs/s)",
        pushed.as_secs_f64(),
        total.as_secs_f64(),
        jobs as f64 / total.as_secs_f64()
    );
    println!("  primary  jobs    share   Redis CPU s  share   CPU µs/job");
    let cpu_total: f64 = before.iter().zip(&after).map(|(b, a)| a - b).sum();
    let mut ceiling = 0.0;
    let mut slowest = f64::INFINITY;
    for i in 0..3 {
        let used = after[i] - before[i];
        let per_job = if per_node[i] > 0 {
            used / per_node[i] as f64
        } else {
            f64::NAN
        };
        if per_node[i] > 0 {
            ceiling += 1.0 / per_job;
            // The logical queue saturates when its busiest primary does.
            slowest = slowest.min(jobs as f64 / used);
        }
        println!(
            "  {i}        {:<7} {:>5.1} %  {:>9.3}  {:>5.1} %  {:>8.1}",
            per_node[i],
            100.0 * per_node[i] as f64 / jobs as f64,
            used,
            100.0 * used / cpu_total,
            per_job * 1e6
        );
    }
    println!(
        "  projected ceiling Σ 1/(CPU s per job): {ceiling:.0} jobs/s; limited by the busiest primary: {slowest:.0} jobs/s"
    );
    println!(
        "  idle latency, push to handler start (50 pushes): p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 9 / 10],
        latencies[latencies.len() - 1]
    );
    Ok(())
}

/// `used_cpu_sys + used_cpu_user` of each node, in seconds.
fn cpu(cluster: &RedisCluster) -> anyhow::Result<Vec<f64>> {
    cluster.nodes().iter().map(node_cpu).collect()
}

fn node_cpu(node: &RedisServer) -> anyhow::Result<f64> {
    let info = node.cli(&["INFO", "cpu"])?;
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    Ok(field("used_cpu_sys") + field("used_cpu_user"))
}

/// The node (index) serving physical queue `name`, and the jobs it processed there.
fn processed_on(cluster: &RedisCluster, name: &str) -> anyhow::Result<(usize, u64)> {
    let slot = ostq::keys::slot_of_queue(name).to_string();
    for (i, node) in cluster.nodes().iter().enumerate() {
        if node.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot])?.trim() != "0" {
            let key = format!("ostq:{{{name}}}:stats");
            let processed = node.cli(&["HGET", &key, "processed"])?;
            return Ok((i, processed.trim().parse().unwrap_or(0)));
        }
    }
    anyhow::bail!("no node holds {name}")
}
