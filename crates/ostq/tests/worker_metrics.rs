//! The worker's own figures through the `metrics` facade, rendered by a real
//! `metrics-exporter-prometheus` recorder installed as the global recorder (one per process: this
//! file holds one test).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{setup, spawn, wait_counts, wait_until};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use ostq::{BoxError, Job, PushOptions, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Resize {
    width: u32,
}

impl ostq::Task for Resize {
    const NAME: &'static str = "resize";
}

/// Samples of a rendering: (name, labels) → value.
fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest
                    .trim_end_matches('}')
                    .split(',')
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap();
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        out.insert((name, labels), value.parse().unwrap());
    }
    out
}

fn get(
    samples: &BTreeMap<(String, BTreeMap<String, String>), f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_string(), labels)).copied()
}

#[tokio::test]
async fn a_worker_reports_its_jobs_through_the_metrics_facade() {
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Prefix("ostq_".into()),
            &ostq::metrics::DURATION_BUCKETS,
        )
        .unwrap()
        .install_recorder()
        .unwrap();

    let (_server, client) = setup().await;
    let queue = client.queue("measured");
    for width in [1, 2, 3] {
        queue.enqueue(&Resize { width }).await.unwrap();
    }
    queue.push("plain-1").await.unwrap();
    queue.push("plain-2").await.unwrap();
    queue
        .push_with("fails", &PushOptions::new().max_attempts(1))
        .await
        .unwrap();
    // A name no typed handler has: the default handler runs it, under the label "~other".
    queue
        .push_with("x", &PushOptions::new().name("made-up-by-a-producer"))
        .await
        .unwrap();

    let running = spawn(
        Worker::builder(client.clone())
            .queue("measured")
            .concurrency(4)
            .task(|_: Resize| async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, BoxError>(())
            })
            .handler(|job: Job| async move {
                if job.payload_str()? == "fails" {
                    return Err::<(), BoxError>("no".into());
                }
                Ok(())
            })
            .build()
            .unwrap(),
    );
    wait_counts(&queue, Duration::from_secs(10), |c| c.processed_total == 7).await;
    // Outcomes are recorded once written; give the last batch a moment.
    wait_until(Duration::from_secs(5), || async {
        let s = samples(&prometheus.render());
        get(
            &s,
            "ostq_worker_jobs_total",
            &[
                ("queue", "measured"),
                ("task", "~other"),
                ("outcome", "completed"),
            ],
        ) == Some(1.0)
            && get(
                &s,
                "ostq_worker_jobs_total",
                &[("queue", "measured"), ("task", "-"), ("outcome", "dead")],
            ) == Some(1.0)
    })
    .await;
    running.shutdown().await;

    let text = prometheus.render();
    let s = samples(&text);
    let jobs = |task: &str, outcome: &str| {
        get(
            &s,
            "ostq_worker_jobs_total",
            &[("queue", "measured"), ("task", task), ("outcome", outcome)],
        )
    };
    assert_eq!(jobs("resize", "completed"), Some(3.0), "{text}");
    assert_eq!(jobs("-", "completed"), Some(2.0), "{text}");
    assert_eq!(jobs("-", "dead"), Some(1.0), "{text}");
    assert_eq!(jobs("~other", "completed"), Some(1.0), "{text}");
    assert_eq!(jobs("made-up-by-a-producer", "completed"), None);
    assert!(
        text.contains("# TYPE ostq_worker_job_run_duration_seconds histogram"),
        "{text}"
    );

    let resize = [("queue", "measured"), ("task", "resize")];
    let run = "ostq_worker_job_run_duration_seconds";
    assert_eq!(get(&s, &format!("{run}_count"), &resize), Some(3.0));
    let sum = get(&s, &format!("{run}_sum"), &resize).unwrap();
    assert!((0.09..10.0).contains(&sum), "3 runs of 30 ms: {sum}");
    // 30 ms runs: none within 20 ms, all within 5.8 h.
    let bucket = |le: &str| {
        let mut labels = resize.to_vec();
        labels.push(("le", le));
        get(&s, &format!("{run}_bucket"), &labels)
    };
    assert_eq!(bucket("0.02"), Some(0.0), "{text}");
    assert_eq!(bucket("20971.52"), Some(3.0), "{text}");
    let wait = "ostq_worker_job_wait_duration_seconds_count";
    assert_eq!(get(&s, wait, &resize), Some(3.0));

    assert_eq!(get(&s, "ostq_worker_slots", &[]), Some(4.0), "{text}");
    assert_eq!(get(&s, "ostq_worker_slots_busy", &[]), Some(0.0), "{text}");
}
