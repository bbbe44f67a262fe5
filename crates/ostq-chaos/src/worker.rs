//! `ostq-chaos worker`: a worker process whose handler records every completed execution in a log
//! file of its own, outside Redis: one line `<n> <attempt> <pid> <end unix ms> <start unix ms>
//! <job id>` per execution.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ostq::{BoxError, Job, Permanent, RetryPolicy, Worker};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

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
    /// How long the job runs, in milliseconds (the long jobs); absent: the worker's random
    /// `--min-sleep-ms..=--max-sleep-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ms: Option<u64>,
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
    // Each line starts with the unix time in milliseconds: the run lines the library's warnings
    // (writes failing, leases lost) up with its faults.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_timer(UnixMs)
        .init();

    let pid = std::process::id();
    let path = args.log.join(format!("exec-{pid}.log"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let log = Arc::new(ExecLog::start(file)?);
    tokio::spawn(watch_runtime());
    let sleep_ms = args.min_sleep_ms..=args.max_sleep_ms.max(args.min_sleep_ms);
    let client = connect(&args.url).await?;
    let worker = Worker::builder(client)
        .queue(&args.queue)
        .concurrency(args.concurrency)
        .lease(Duration::from_millis(args.lease_ms))
        .retry(RetryPolicy::fixed(Duration::from_millis(200)))
        .shutdown_timeout(Duration::from_secs(2))
        .task_with_job(move |task: Chaos, job: Job| {
            let (log, sleep_ms) = (log.clone(), sleep_ms.clone());
            async move { execute(task, &job, &log, pid, sleep_ms).await }
        })
        .build()?;
    worker.run_until(stop_signal()).await?;
    Ok(())
}

/// The handler: reject oversize payloads, sleep (0–20 ms by default, or the task's `ms`), then
/// record the completion.
async fn execute(
    task: Chaos,
    job: &Job,
    log: &ExecLog,
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
    let start_ms = unix_ms();
    let pause = task.ms.unwrap_or_else(|| rand::random_range(sleep_ms));
    tokio::time::sleep(Duration::from_millis(pause)).await;
    let line = format!(
        "{} {} {pid} {} {start_ms} {}\n",
        task.n,
        job.attempt,
        unix_ms(),
        job.id
    );
    // Done only once the line is in the file: a job whose completion reached Redis is always in
    // the log (or its worker was killed before the handler returned, and it runs again).
    log.append(line.into_bytes()).await?;
    Ok(())
}

/// The execution log, written by a thread of its own: a write that blocks (a busy disk can hold
/// writes up for seconds) must not hold up the worker's runtime, whose lease renewals would then
/// be late too and its leases lost for a reason that is not ostq's.
struct ExecLog {
    lines: std::sync::mpsc::Sender<(Vec<u8>, oneshot::Sender<std::io::Result<()>>)>,
}

impl ExecLog {
    fn start(mut file: File) -> anyhow::Result<ExecLog> {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, oneshot::Sender<_>)>();
        std::thread::Builder::new()
            .name("exec-log".to_string())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    // One write(2) of whole lines on an O_APPEND file: a SIGKILL cannot leave
                    // half a line.
                    let bytes: Vec<u8> = batch.iter().flat_map(|(line, _)| line.clone()).collect();
                    let result = file.write_all(&bytes);
                    for (_, done) in batch {
                        let _ = done.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                }
            })
            .context("cannot start the execution log's thread")?;
        Ok(ExecLog { lines: tx })
    }

    /// Appends `line` and waits until it is written.
    async fn append(&self, line: Vec<u8>) -> std::io::Result<()> {
        let (done, written) = oneshot::channel();
        self.lines
            .send((line, done))
            .map_err(|_| std::io::Error::other("the execution log's thread is gone"))?;
        written
            .await
            .map_err(|_| std::io::Error::other("the execution log's thread is gone"))?
    }
}

/// Logs `runtime stalled` whenever this process's async runtime could not run a task for 250 ms
/// or more (an overloaded machine, a blocked thread): leases may expire for that alone, and the
/// run counts such a stretch as a fault of this worker.
async fn watch_runtime() {
    const EVERY: Duration = Duration::from_millis(50);
    const STALL: Duration = Duration::from_millis(250);
    loop {
        let (before, from_ms) = (std::time::Instant::now(), unix_ms());
        tokio::time::sleep(EVERY).await;
        let late = before.elapsed().saturating_sub(EVERY);
        if late >= STALL {
            tracing::warn!(
                from_ms = from_ms as u64,
                late_ms = late.as_millis() as u64,
                "runtime stalled"
            );
        }
    }
}

/// Log timestamps as unix milliseconds.
struct UnixMs;

impl tracing_subscriber::fmt::time::FormatTime for UnixMs {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", unix_ms())
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
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
