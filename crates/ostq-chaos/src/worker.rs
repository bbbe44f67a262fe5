//! `ostq-chaos worker`: a worker process whose handler records every completed execution in a log
//! file of its own, outside Redis: one line `<n> <attempt> <pid> <unix ms>` per execution.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ostq::{BoxError, Permanent, RetryPolicy, Worker};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

/// Largest payload the chaos handler accepts. ostq has no payload size limit of its own yet, so
/// the handler enforces this one and fails bigger jobs with a `Permanent` error (straight to dead).
pub(crate) const SIZE_LIMIT: usize = 16 * 1024;

/// The typed task of the suite: good jobs carry `n` (0..jobs) and no padding.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Chaos {
    /// The job's number; the execution logs record it.
    pub(crate) n: u64,
    /// Filler used by the oversize malformed entries.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) pad: String,
}

impl ostq::Task for Chaos {
    const NAME: &'static str = "chaos";
}

/// Options of `ostq-chaos worker`.
#[derive(clap::Args, Debug)]
pub(crate) struct WorkerArgs {
    /// Redis URL.
    #[arg(long)]
    url: String,
    /// Queue to serve.
    #[arg(long, default_value = crate::QUEUE)]
    queue: String,
    /// Directory for the execution log (`exec-<pid>.log`).
    #[arg(long)]
    log: PathBuf,
    /// Handlers running at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Lease length in milliseconds.
    #[arg(long, default_value_t = 2000)]
    lease_ms: u64,
    /// Shortest time a job takes, in milliseconds.
    #[arg(long, default_value_t = 0)]
    min_sleep_ms: u64,
    /// Longest time a job takes, in milliseconds (each job sleeps a random time in between).
    #[arg(long, default_value_t = 20)]
    max_sleep_ms: u64,
}

pub(crate) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let pid = std::process::id();
    let path = args.log.join(format!("exec-{pid}.log"));
    let log = Arc::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?,
    );
    let sleep_ms = args.min_sleep_ms..=args.max_sleep_ms.max(args.min_sleep_ms);
    let client = connect(&args.url).await?;
    let worker = Worker::builder(client)
        .queue(&args.queue)
        .concurrency(args.concurrency)
        .lease(Duration::from_millis(args.lease_ms))
        .retry(RetryPolicy::fixed(Duration::from_millis(200)))
        .shutdown_timeout(Duration::from_secs(2))
        .task(move |task: Chaos| {
            let (log, sleep_ms) = (log.clone(), sleep_ms.clone());
            async move { execute(task, &log, pid, sleep_ms).await }
        })
        .build()?;
    worker.run_until(stop_signal()).await?;
    Ok(())
}

/// The handler: reject oversize payloads, sleep (0–20 ms by default), then record the completion.
async fn execute(
    task: Chaos,
    log: &File,
    pid: u32,
    sleep_ms: std::ops::RangeInclusive<u64>,
) -> Result<(), BoxError> {
    let size = serde_json::to_vec(&task).map_or(usize::MAX, |bytes| bytes.len());
    if size > SIZE_LIMIT {
        return Err(Permanent::new(format!(
            "payload over the size limit ({size} > {SIZE_LIMIT} bytes)"
        ))
        .into());
    }
    let pause = rand::random_range(sleep_ms);
    tokio::time::sleep(Duration::from_millis(pause)).await;
    // One write(2) of a whole line on an O_APPEND file: lines from concurrent handlers never
    // interleave, and a SIGKILL cannot leave half a line. The attempt number is not known to a
    // typed handler (it only receives the task), hence "-".
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let line = format!("{} - {pid} {now_ms}\n", task.n);
    let mut out = log;
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Connects, retrying for up to a minute (a replacement worker may start while Redis restarts).
async fn connect(url: &str) -> anyhow::Result<ostq::Client> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match ostq::Client::connect(url).await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() < give_up => {
                eprintln!("cannot connect yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("cannot connect to Redis"),
        }
    }
}

/// Completes on SIGTERM, ctrl-c, or when stdin closes (the parent died or wants us gone).
async fn stop_signal() {
    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
