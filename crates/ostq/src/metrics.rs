//! What a worker reports through the [`metrics`](https://docs.rs/metrics) facade, for an
//! application that exports its own metrics (Prometheus through `metrics-exporter-prometheus`,
//! StatsD, …). Without a recorder installed nothing is recorded and it costs next to nothing;
//! [`WorkerBuilder::metrics(false)`](crate::WorkerBuilder::metrics) turns it off.
//!
//! These are this process's figures, beside what `ostq metrics` exports for every worker from
//! Redis (`ostq_jobs_processed_total`, …), hence their own `ostq_worker_` names:
//!
//! | name | type | labels |
//! |---|---|---|
//! | [`JOBS`] `ostq_worker_jobs_total` | counter | `queue`, `task`, `outcome` (`completed`, `retried`, `dead`) |
//! | [`RUN_DURATION`] `ostq_worker_job_run_duration_seconds` | histogram | `queue`, `task` |
//! | [`WAIT_DURATION`] `ostq_worker_job_wait_duration_seconds` | histogram | `queue`, `task` |
//! | [`SLOTS`] `ostq_worker_slots` | gauge | |
//! | [`BUSY`] `ostq_worker_slots_busy` | gauge | |
//!
//! `task` is the job's task name when the worker has a typed handler for it
//! ([`WorkerBuilder::task`](crate::WorkerBuilder::task)), `-` for jobs without a name and
//! `~other` for any other name, so producers cannot grow the label sets. Histograms should use
//! [`DURATION_BUCKETS`] (the buckets of the queue's history), or the Prometheus exporter renders
//! them as summaries:
//!
//! ```no_run
//! # async fn demo(client: ostq::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//! let prometheus = PrometheusBuilder::new()
//!     .set_buckets_for_metric(Matcher::Prefix("ostq_".into()), &ostq::metrics::DURATION_BUCKETS)?
//!     .install_recorder()?;
//! // Serve `prometheus.render()` on the application's own `/metrics` route.
//! ostq::Worker::builder(client)
//!     .queue("videos")
//!     .handler(|_job: ostq::Job| async { Ok::<_, ostq::BoxError>(()) })
//!     .build()?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```

/// Attempts that ended, by `queue`, `task` and `outcome`.
///
/// ```
/// assert_eq!(ostq::metrics::JOBS, "ostq_worker_jobs_total");
/// ```
pub const JOBS: &str = "ostq_worker_jobs_total";

/// How long attempts ran, start to end, in seconds, by `queue` and `task`.
///
/// ```
/// assert!(ostq::metrics::RUN_DURATION.ends_with("_seconds"));
/// ```
pub const RUN_DURATION: &str = "ostq_worker_job_run_duration_seconds";

/// How long jobs waited from enqueue to the start of their first attempt, in seconds, by
/// `queue` and `task` (jobs with an enqueue time only: bare `LPUSH`es have none).
///
/// ```
/// assert!(ostq::metrics::WAIT_DURATION.ends_with("_seconds"));
/// ```
pub const WAIT_DURATION: &str = "ostq_worker_job_wait_duration_seconds";

/// Jobs this worker may run at once (its concurrency).
///
/// ```
/// assert_eq!(ostq::metrics::SLOTS, "ostq_worker_slots");
/// ```
pub const SLOTS: &str = "ostq_worker_slots";

/// Jobs this worker is running (set as outcomes are written and at each heartbeat).
///
/// ```
/// assert_eq!(ostq::metrics::BUSY, "ostq_worker_slots_busy");
/// ```
pub const BUSY: &str = "ostq_worker_slots_busy";

/// The upper bounds, in seconds, of the history's duration buckets: 5 ms doubling up to
/// `5·2^22` ms (about 5.8 h); the exporter adds `+Inf`.
///
/// ```
/// let b = ostq::metrics::DURATION_BUCKETS;
/// assert_eq!(b.len(), 23);
/// assert_eq!(b[0], 0.005);
/// assert_eq!(b[1], 0.01);
/// assert_eq!(b[22], 20_971.52);
/// ```
pub const DURATION_BUCKETS: [f64; 23] = {
    let mut bounds = [0.0; 23];
    let mut b = 0;
    while b < 23 {
        bounds[b] = (5u64 << b) as f64 / 1000.0;
        b += 1;
    }
    bounds
};
