//! `ostq demo`: the seed's story, played in-process against a real Redis. A producer pushes video
//! ids, three workers "transcode" them, one job fails once and is retried, one dies and lands in
//! the dead set, a delayed job fires; then the final stats.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use ostq_testkit::RedisServer;
use rand::Rng;

use crate::cli::{DemoArgs, Global};
use crate::output::job_table;
use crate::stats::{snapshot_json, snapshot_text, Collector};
use crate::util::{connect, lib_err, redact, short_duration, Exit};

const VIDEOS: std::ops::RangeInclusive<u32> = 101..=120;
/// Fails on its first attempt only.
const FLAKY: &str = "video-113";
/// Always fails: lands in the dead set after its two attempts.
const CORRUPT: &str = "video-666";
/// Pushed with a delay.
const PREMIERE: &str = "video-777";
const PREMIERE_DELAY: Duration = Duration::from_secs(2);
const WORKERS: usize = 3;
/// The story must be over by then.
const DEADLINE: Duration = Duration::from_secs(50);

/// Prints above the progress bar when there is one.
struct Printer {
    bar: Option<ProgressBar>,
    start: Instant,
}

impl Printer {
    fn say(&self, line: impl AsRef<str>) {
        let line = format!(
            "{:>6.2}s  {}",
            self.start.elapsed().as_secs_f64(),
            line.as_ref()
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }
}

pub async fn run(global: &Global, args: DemoArgs) -> anyhow::Result<()> {
    let mut private = None;
    let url = global.redis_url();
    let shared_ok = !args.private && reachable(&url).await;
    let (url, queue) = if shared_ok {
        let queue = format!(
            "videos-demo-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        println!(
            "ostq demo: using the Redis at {} on a queue of its own, '{queue}' (purged at the end)",
            redact(&url)
        );
        (url, queue)
    } else {
        if !args.private {
            let why = if global.url_given() {
                "does not answer"
            } else {
                "is not running"
            };
            println!(
                "ostq demo: the Redis at {} {why}; starting a private redis-server",
                redact(&url)
            );
        }
        let server = tokio::task::spawn_blocking(|| {
            RedisServer::builder()
                .install_hint("apt-get install redis-server (or run scripts/demo, which does it)")
                .start()
        })
        .await
        .map_err(|e| anyhow!("cannot start redis-server: {e}"))??;
        let url = server.url();
        println!("ostq demo: private redis-server at {url} (stopped at the end)");
        private = Some(server);
        (url, "videos".to_string())
    };

    let outcome = tokio::select! {
        r = story(&url, &queue, global.json, shared_ok) => r,
        _ = crate::exec::shutdown_signal() => Err(Exit { code: 130, message: "ostq demo: interrupted".into() }.into()),
    };
    if shared_ok {
        if let Ok(client) = connect(&url).await {
            let _ = client.queue(&queue).purge(None).await;
        }
    }
    if let Some(server) = private.take() {
        let _ = tokio::task::spawn_blocking(move || drop(server)).await;
    }
    outcome
}

/// Whether a Redis answers at `url` (quickly: the demo should not hang on a wrong guess).
async fn reachable(url: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), ostq::Client::connect(url)).await,
        Ok(Ok(_))
    )
}

async fn story(url: &str, queue_name: &str, json: bool, shared: bool) -> anyhow::Result<()> {
    let client = connect(url).await?;
    let queue = client.queue(queue_name);
    let mut collector = Collector::new(url, vec![queue_name.to_string()]).await?;
    let total = VIDEOS.count() as u64 + 2;

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{bar:30.green/blue} {pos}/{len} finished  {msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let printer = Arc::new(Printer {
        bar,
        start: Instant::now(),
    });

    produce(&queue, &printer).await?;
    collector.sample().await?;

    let completed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut running = Vec::new();
    for n in 1..=WORKERS {
        let worker = demo_worker(&client, queue_name, n, &printer, &completed)?;
        let mut rx = stop_rx.clone();
        running.push(tokio::spawn(worker.run_until(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })));
        printer.say(format!("worker-{n}: started (one video at a time)"));
    }

    let finished = watch_until_finished(&queue, &printer, &completed, total).await?;
    let _ = stop_tx.send(true);
    for handle in running {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => printer.say(format!("a worker stopped with an error: {e}")),
            Err(e) => printer.say(format!("a worker task failed: {e}")),
        }
    }
    if let Some(bar) = &printer.bar {
        bar.finish_and_clear();
    }
    if !finished {
        bail!(
            "the demo did not finish within {}s: is the Redis overloaded?",
            DEADLINE.as_secs()
        );
    }
    printer.say(format!(
        "all {total} jobs finished: {} transcoded, 1 in the dead set",
        completed.load(Ordering::Relaxed)
    ));
    let snap = collector.snapshot().await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&snapshot_json(&snap, &[]))?
        );
        return Ok(());
    }
    println!("\nFinal stats (`ostq stats`):\n{}", snapshot_text(&snap));
    epilogue(&queue, queue_name, shared).await
}

/// The producer: the videos in one batch, a corrupt one, a scheduled premiere.
async fn produce(queue: &ostq::Queue, printer: &Printer) -> anyhow::Result<()> {
    let videos: Vec<String> = VIDEOS.map(|n| format!("video-{n}")).collect();
    queue
        .push_bulk(&videos)
        .await
        .map_err(lib_err("push failed"))?;
    printer.say(format!(
        "producer: pushed {} video ids (video-{}..video-{}) to '{}' in one pipelined batch",
        videos.len(),
        VIDEOS.start(),
        VIDEOS.end(),
        queue.name()
    ));
    queue
        .push_with(CORRUPT, &ostq::PushOptions::new().max_attempts(2))
        .await
        .map_err(lib_err("push failed"))?;
    printer.say(format!(
        "producer: pushed {CORRUPT} (a corrupt file: it will fail both of its 2 attempts)"
    ));
    queue
        .push_with(PREMIERE, &ostq::PushOptions::new().delay(PREMIERE_DELAY))
        .await
        .map_err(lib_err("push failed"))?;
    printer.say(format!(
        "producer: pushed {PREMIERE} to run in {} (a scheduled premiere)",
        short_duration(PREMIERE_DELAY)
    ));
    Ok(())
}

/// Worker `n` of the story: one video at a time, each failure told.
fn demo_worker(
    client: &ostq::Client,
    queue_name: &str,
    n: usize,
    printer: &Arc<Printer>,
    completed: &Arc<AtomicU64>,
) -> anyhow::Result<ostq::Worker> {
    let name = format!("worker-{n}");
    let (handler_printer, error_printer) = (printer.clone(), printer.clone());
    let (handler_name, error_name) = (name.clone(), name);
    let done = completed.clone();
    ostq::Worker::builder(client.clone())
        .queue(queue_name)
        .concurrency(1)
        .lease(Duration::from_secs(5))
        .retry(ostq::RetryPolicy::fixed(Duration::from_millis(300)))
        .shutdown_timeout(Duration::from_secs(2))
        .handler(move |job: ostq::Job| {
            let printer = handler_printer.clone();
            let name = handler_name.clone();
            let done = done.clone();
            async move { transcode(&job, &name, &printer, &done).await }
        })
        .on_error(move |job, failure| {
            let video = String::from_utf8_lossy(&job.payload);
            let next = if failure.dead {
                "out of attempts: moved to the dead set".to_string()
            } else {
                match failure.retry_in {
                    Some(d) => format!("retrying in {}", short_duration(d)),
                    None => "will be retried".to_string(),
                }
            };
            error_printer.say(format!(
                "{error_name}: {video} FAILED (attempt {}/{}): {}; {next}",
                job.attempt, job.max_attempts, failure.error
            ));
        })
        .build()
        .map_err(lib_err("cannot build the worker"))
}

/// Watches the counts until every job has finished (completed or dead); false past the deadline.
async fn watch_until_finished(
    queue: &ostq::Queue,
    printer: &Printer,
    completed: &AtomicU64,
    total: u64,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    loop {
        let c = queue
            .counts()
            .await
            .map_err(lib_err("cannot read the counts"))?;
        let ok = completed.load(Ordering::Relaxed);
        if let Some(bar) = &printer.bar {
            bar.set_position(ok + c.dead);
            bar.set_message(format!(
                "pending {}  active {}  scheduled {}  retry {}  dead {}",
                c.pending, c.active, c.scheduled, c.retry, c.dead
            ));
        }
        let idle = c.pending == 0 && c.active == 0 && c.scheduled == 0 && c.retry == 0;
        if idle && ok + c.dead >= total {
            return Ok(true);
        }
        if started.elapsed() > DEADLINE {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dead set, and what to try next.
async fn epilogue(queue: &ostq::Queue, queue_name: &str, shared: bool) -> anyhow::Result<()> {
    let dead = queue
        .jobs(ostq::JobState::Dead, 0, 10)
        .await
        .map_err(lib_err("cannot list dead jobs"))?;
    println!(
        "The dead set (`ostq jobs {queue_name} --state dead`):\n{}",
        job_table(&dead)
    );
    let first = if shared {
        "Next, on this Redis:"
    } else {
        "Next, with a redis-server running (this one stops now):"
    };
    println!(
        "{first}
  ostq push videos 42 43 44
  ostq worker --queue videos --burst -- echo transcoding {{}}
  ostq stats
  ostq jobs videos --state dead
  ostq retry videos --all-dead"
    );
    Ok(())
}

async fn transcode(
    job: &ostq::Job,
    worker: &str,
    printer: &Printer,
    done: &AtomicU64,
) -> Result<String, ostq::BoxError> {
    let video = String::from_utf8_lossy(&job.payload).into_owned();
    let work = Duration::from_millis(rand::rng().random_range(100..=400));
    tokio::time::sleep(work).await;
    if video == CORRUPT {
        return Err("corrupt source file: cannot decode frame 0".into());
    }
    if video == FLAKY && job.attempt == 1 {
        return Err("network blip while uploading the result".into());
    }
    let note = if video == PREMIERE {
        " (the scheduled premiere fired)"
    } else if job.attempt > 1 {
        " (on its retry)"
    } else {
        ""
    };
    printer.say(format!(
        "{worker}: transcoded {video} in {}{note}",
        short_duration(work)
    ));
    done.fetch_add(1, Ordering::Relaxed);
    Ok(format!("{video}.mp4"))
}
