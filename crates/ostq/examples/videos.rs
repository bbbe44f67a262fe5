//! The Ost use case: a web app pushes video ids; workers pop them and transcode. A worker that
//! dies mid-job loses nothing: its leases expire and another worker runs the job again.
//!
//! ```sh
//! cargo run --example videos -- redis://127.0.0.1:6379
//! ```

use std::time::Duration;

use ostq::{BoxError, Job, Worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let client = ostq::Client::connect(&url).await?;

    // The producer side: one line per video, as `Ost[:videos] << id` was.
    let videos = client.queue("videos");
    for id in 1..=10 {
        videos.push(id.to_string()).await?;
    }

    // The worker side: bounded concurrency, an error hook and a monitor hook.
    let stop = tokio_util::sync::CancellationToken::new();
    let done = stop.clone();
    let worker = Worker::builder(client.clone())
        .queue("videos")
        .concurrency(4)
        .handler(|job: Job| async move {
            let video_id: u64 = job.payload_str()?.parse()?;
            tracing::info!(video_id, attempt = job.attempt, "transcoding");
            tokio::time::sleep(Duration::from_millis(200)).await; // ffmpeg would run here
            Ok::<_, BoxError>(())
        })
        .on_error(
            |job, failure| tracing::warn!(id = %job.id, error = %failure.error, "transcode failed"),
        )
        .on_monitor(Duration::from_millis(500), move |report| {
            let c = &report.snapshot.queues[0].counts;
            tracing::info!(
                pending = c.pending,
                active = c.active,
                processed = c.processed_total,
                "videos"
            );
            if c.pending == 0 && c.active == 0 {
                done.cancel();
            }
        })
        .build()?;
    worker.run_until(stop.cancelled_owned()).await?;
    Ok(())
}
