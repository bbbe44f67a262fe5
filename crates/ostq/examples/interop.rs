//! A Rust producer and worker for the other languages' interop tests (the Python package's in
//! `crates/ostq-py/tests/`): Rust enqueues typed tasks that a Python worker serves, and serves
//! the typed tasks and plain jobs that Python pushes.
//!
//! ```sh
//! cargo run --example interop -- enqueue redis://127.0.0.1:6379 media 3   # prints the ids, JSON
//! cargo run --example interop -- work redis://127.0.0.1:6379 media 3      # one JSON line per job
//! ```
//!
//! `work` serves the typed task `transcode` (`{"video_id": u64, "preset": str}`, answering
//! `"video <id> ready"`) and plain jobs (answering their payload upper-cased), prints each job it
//! ran as a JSON line, and exits once it has run the given number of jobs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ostq::{BoxError, Job, PushOptions, Task, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Transcode {
    video_id: u64,
    preset: String,
}

impl Task for Transcode {
    const NAME: &'static str = "transcode";
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [command, url, queue, count] = args.as_slice() else {
        anyhow::bail!("usage: interop enqueue|work URL QUEUE COUNT");
    };
    let count: usize = count.parse()?;
    let client = ostq::Client::connect(url).await?;
    match command.as_str() {
        "enqueue" => {
            let queue = client.queue(queue);
            let mut ids = Vec::new();
            for video_id in 0..count as u64 {
                let task = Transcode {
                    video_id,
                    preset: "720p".into(),
                };
                ids.push(
                    queue
                        .enqueue_with(&task, PushOptions::new().track())
                        .await?,
                );
            }
            println!("{}", serde_json::to_string(&ids)?);
        }
        "work" => work(client, queue, count).await?,
        other => anyhow::bail!("unknown command {other:?}: enqueue or work"),
    }
    Ok(())
}

/// Runs jobs until `count` have run, printing each as a JSON line.
async fn work(client: ostq::Client, queue: &str, count: usize) -> anyhow::Result<()> {
    let done = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let report = {
        let (done, stop) = (done.clone(), stop.clone());
        move |line: serde_json::Value| {
            println!("{line}");
            if done.fetch_add(1, Ordering::SeqCst) + 1 >= count {
                stop.cancel();
            }
        }
    };
    let report_task = report.clone();
    let worker = Worker::builder(client)
        .queue(queue)
        .task_with_job(move |task: Transcode, job: Job| {
            let report = report_task.clone();
            async move {
                report(serde_json::json!({
                    "id": job.id, "name": job.name, "video_id": task.video_id, "preset": task.preset,
                }));
                Ok::<_, BoxError>(format!("video {} ready", task.video_id))
            }
        })
        .handler(move |job: Job| {
            let report = report.clone();
            async move {
                let text = job.payload_str()?.to_string();
                report(serde_json::json!({"id": job.id, "name": job.name, "payload": text}));
                Ok::<_, BoxError>(text.to_uppercase())
            }
        })
        .build()?;
    worker.run_until(stop.cancelled_owned()).await?;
    Ok(())
}
