//! Typed tasks: serde types with a name; the worker registers one handler per task type and
//! dispatches on the name. Unknown names and undecodable payloads go to the dead set with a reason.
//!
//! ```sh
//! cargo run --example typed -- redis://127.0.0.1:6379
//! ```

use std::time::Duration;

use ostq::{BoxError, JobState, PushOptions, RetryPolicy, Task, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Transcode {
    video_id: u64,
    preset: String,
}

impl Task for Transcode {
    const NAME: &'static str = "transcode";
}

#[derive(Serialize, Deserialize)]
struct Notify {
    email: String,
}

impl Task for Notify {
    const NAME: &'static str = "notify";
    // Mail servers hiccup: retry quickly, a few times.
    fn retry_policy() -> Option<RetryPolicy> {
        Some(RetryPolicy::fixed(Duration::from_millis(100)).max_attempts(3))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let client = ostq::Client::connect(&url).await?;
    let queue = client.queue("media");
    let id = queue
        .enqueue_with(
            &Transcode {
                video_id: 42,
                preset: "1080p".into(),
            },
            PushOptions::new().track(),
        )
        .await?;
    queue
        .enqueue(&Notify {
            email: "ops@example.com".into(),
        })
        .await?;

    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::builder(client.clone())
        .queue("media")
        .task(|t: Transcode| async move {
            println!("transcoding video {} to {}", t.video_id, t.preset);
            Ok::<_, BoxError>(format!("video {} ready", t.video_id))
        })
        .task(|n: Notify| async move {
            println!("mailing {}", n.email);
            Ok::<_, BoxError>(())
        })
        .build()?;
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    while queue.job(&id).await?.map(|j| j.state) != Some(JobState::Completed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = queue.job(&id).await?.expect("tracked job");
    println!(
        "result: {}",
        String::from_utf8_lossy(info.result.as_deref().unwrap_or_default())
    );
    stop.cancel();
    running.await??;
    Ok(())
}
