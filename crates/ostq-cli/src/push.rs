//! `ostq push`: jobs from arguments, a file or stdin, pipelined in batches.

use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Global, PushArgs};
use crate::util::{check_queue, connect, lib_err, Exit};

/// Lines read and pushed per batch.
const BATCH: usize = 10_000;

/// Jobs per `push_bulk` call when they go through `push.lua` (a delay, a time, a priority or a
/// status record). A bulk push is one `MULTI`/`EXEC`, during which Redis serves no one else, and
/// such a job costs it about 15-22 µs (measured with `INFO commandstats`: most of it is the
/// script's `redis.call`s), so 10,000 of them held Redis for about 200 ms. 2,000 keep each
/// transaction near 40 ms. Plain jobs (one `LPUSH` per 1,000) cost about 1 µs each.
const SCRIPTED_PER_CALL: usize = 2_000;

/// A batch of payloads read from the input, and how many bytes it took.
struct Batch {
    payloads: Vec<Vec<u8>>,
    bytes: u64,
}

pub async fn run(global: &Global, args: PushArgs) -> anyhow::Result<()> {
    check_queue(&args.queue)?;
    if args.file.is_some() && !args.payloads.is_empty() {
        bail!("give payloads as arguments or with --file, not both");
    }
    if args.file.is_none() && args.payloads.is_empty() {
        bail!("nothing to push: give payloads as arguments, or --file FILE (--file - reads stdin)");
    }
    let single = args.file.is_none() && args.payloads.len() == 1;
    if args.id.is_some() && !single {
        bail!("--id names one job: push a single payload with it");
    }
    if args.unique.is_some() && !single {
        bail!("--unique keys one job: push a single payload with it");
    }
    let mut opts = ostq::PushOptions::new();
    if let Some(d) = args.delay {
        opts = opts.delay(d);
    }
    if let Some(at) = args.at {
        opts = opts.run_at(at);
    }
    if let Some(p) = args.priority {
        opts = opts.priority(p);
    }
    if let Some(n) = args.max_attempts {
        opts = opts.max_attempts(n);
    }
    if args.track {
        opts = opts.track();
    }
    if let Some(id) = &args.id {
        opts = opts.id(id.clone());
    }
    if let Some(name) = &args.name {
        opts = opts.name(name.clone());
    }
    match (&args.unique, args.unique_for) {
        (Some(key), Some(ttl)) => opts = opts.unique_for(key.clone(), ttl),
        (Some(key), None) => opts = opts.unique(key.clone()),
        _ => {}
    }
    if let Some(durability) = args.durable {
        opts = opts.durable(durability);
    }
    #[cfg(feature = "opentelemetry")]
    if let Some(trace) = trace_from_env() {
        opts = opts.trace(trace);
    }

    let url = global.redis_url();
    let client = connect(&url).await?;
    let queue = client.queue(&args.queue);
    let started = Instant::now();

    let (count, ids) = match &args.file {
        None => {
            let payloads: Vec<Vec<u8>> = args.payloads.into_iter().map(os_bytes).collect();
            let ids = if args.id.is_some() || args.unique.is_some() {
                let payload = payloads.first().cloned().unwrap_or_default();
                match queue.push_with(payload, &opts).await {
                    Ok(id) => vec![id],
                    // Deduplicated, as asked: the job that holds the key stands for this one.
                    Err(ostq::Error::Duplicate { existing_id, key }) => {
                        eprintln!(
                            "not pushed: job {existing_id} holds the unique key {key:?} on '{}'",
                            args.queue
                        );
                        if global.json {
                            println!("{}", serde_json::to_string(&[&existing_id])?);
                        } else {
                            println!("{existing_id}");
                        }
                        return Ok(());
                    }
                    Err(e) => return Err(push_failed(e, global.json)),
                }
            } else {
                queue
                    .push_bulk_with(&payloads, &opts)
                    .await
                    .map_err(|e| push_failed(e, global.json))?
            };
            (ids.len(), ids)
        }
        Some(path) => {
            let per_call = if opts.is_plain() {
                BATCH
            } else {
                SCRIPTED_PER_CALL
            };
            push_file(&queue, path, &opts, per_call, global.json).await?
        }
    };

    let elapsed = started.elapsed();
    if global.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else if args.file.is_none() {
        for id in &ids {
            println!("{id}");
        }
    }
    eprintln!("{}", summary(count, &args.queue, elapsed));
    Ok(())
}

/// Exit code of a durable push whose copies were not all confirmed in time.
pub const EXIT_NOT_DURABLE: u8 = 5;

/// The error of a failed push. A durable push that fell short prints the ids it wrote (they are
/// on the primary) and exits [`EXIT_NOT_DURABLE`], so a script can tell it from a push that wrote
/// nothing.
fn push_failed(e: ostq::Error, json: bool) -> anyhow::Error {
    match e {
        ostq::Error::NotDurable { ref ids, .. } => {
            if json {
                println!("{}", serde_json::to_string(ids).unwrap_or_default());
            } else {
                for id in ids {
                    println!("{id}");
                }
            }
            anyhow::Error::new(Exit {
                code: EXIT_NOT_DURABLE,
                message: format!("push not durable: {e}"),
            })
        }
        e => lib_err("push failed")(e),
    }
}

/// The trace context of the `TRACEPARENT` and `TRACESTATE` environment variables (the usual way
/// to hand one to a process): the jobs pushed continue that trace. A malformed value is left out
/// with a warning rather than failing the push (a bad tracestate alone drops only the tracestate).
#[cfg(feature = "opentelemetry")]
fn trace_from_env() -> Option<ostq::otel::TraceContext> {
    use ostq::otel::TraceContext;
    let parent = std::env::var("TRACEPARENT").unwrap_or_default();
    let parent = parent.trim();
    if parent.is_empty() {
        return None;
    }
    let state = std::env::var("TRACESTATE").unwrap_or_default();
    match TraceContext::parse(parent, state.trim()) {
        Ok(trace) => Some(trace),
        Err(e) => match TraceContext::parse(parent, "") {
            Ok(trace) => {
                eprintln!("warning: TRACESTATE left out: {e}");
                Some(trace)
            }
            Err(e) => {
                eprintln!("warning: TRACEPARENT left out: {e}");
                None
            }
        },
    }
}

fn summary(n: usize, queue: &str, elapsed: Duration) -> String {
    let jobs = if n == 1 { "job" } else { "jobs" };
    let secs = elapsed.as_secs_f64();
    if n >= 1000 && secs > 0.0 {
        format!(
            "pushed {n} {jobs} to '{queue}' in {secs:.2}s ({:.0} jobs/s)",
            n as f64 / secs
        )
    } else {
        format!("pushed {n} {jobs} to '{queue}'")
    }
}

#[cfg(unix)]
fn os_bytes(s: std::ffi::OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    s.into_vec()
}

#[cfg(not(unix))]
fn os_bytes(s: std::ffi::OsString) -> Vec<u8> {
    s.to_string_lossy().into_owned().into_bytes()
}

/// Reads `path` (or stdin for `-`) on a thread, one payload per line, and pushes batch by batch
/// while the next batch is read. Returns how many were pushed, and their ids when `keep_ids`.
async fn push_file(
    queue: &ostq::Queue,
    path: &std::path::Path,
    opts: &ostq::PushOptions,
    per_call: usize,
    keep_ids: bool,
) -> anyhow::Result<(usize, Vec<String>)> {
    let (reader, total): (Box<dyn Read + Send>, Option<u64>) = if path.as_os_str() == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata().ok().map(|m| m.len());
        (Box::new(file), len)
    };
    let shown = path.display().to_string();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Batch>>(2);
    std::thread::spawn(move || read_batches(reader, &shown, &tx));

    let bar = progress_bar(total);
    let mut ids = Vec::new();
    let mut pushed = 0usize;
    let started = Instant::now();
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        for part in batch.payloads.chunks(per_call) {
            let chunk = queue
                .push_bulk_with(part, opts)
                .await
                .map_err(|e| push_failed(e, keep_ids))
                .map_err(|e| anyhow!("{e:#} (after {pushed} jobs were pushed)"))?;
            pushed += chunk.len();
            if keep_ids {
                ids.extend(chunk);
            }
        }
        if let Some(bar) = &bar {
            bar.inc(batch.bytes);
            let rate = pushed as f64 / started.elapsed().as_secs_f64().max(1e-3);
            bar.set_message(format!("{pushed} jobs, {rate:.0} jobs/s"));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok((pushed, ids))
}

fn progress_bar(total: Option<u64>) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(len) => {
            let bar = ProgressBar::new(len);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:30.cyan/blue} {percent:>3}%  {msg}  ({eta})")
            {
                bar.set_style(style);
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar
        }
    };
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

fn read_batches(
    reader: Box<dyn Read + Send>,
    shown: &str,
    tx: &tokio::sync::mpsc::Sender<anyhow::Result<Batch>>,
) {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut batch = Batch {
        payloads: Vec::with_capacity(BATCH),
        bytes: 0,
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(n) => {
                batch.bytes += n as u64;
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if !line.is_empty() {
                    batch.payloads.push(line.clone());
                }
                if batch.payloads.len() >= BATCH {
                    let full = std::mem::replace(
                        &mut batch,
                        Batch {
                            payloads: Vec::with_capacity(BATCH),
                            bytes: 0,
                        },
                    );
                    if tx.blocking_send(Ok(full)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(anyhow!("cannot read {shown}: {e}")));
                return;
            }
        }
    }
    if !batch.payloads.is_empty() || batch.bytes > 0 {
        let _ = tx.blocking_send(Ok(batch));
    }
}
