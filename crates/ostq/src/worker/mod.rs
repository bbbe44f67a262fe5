//! Workers: serve queues with bounded concurrency, run handlers, retry failures, renew leases,
//! recover jobs of lost workers, and shut down without losing anything.
//!
//! ```no_run
//! # async fn demo(client: ostq::Client) -> ostq::Result<()> {
//! use std::time::Duration;
//! ostq::Worker::builder(client)
//!     .queue("videos")
//!     .concurrency(8)
//!     .handler(|job: ostq::Job| async move {
//!         let video_id = job.payload_str()?.to_owned();
//!         // transcode(video_id).await?;
//!         Ok::<_, ostq::BoxError>(())
//!     })
//!     .on_error(|job, failure| eprintln!("job {} failed: {}", job.id, failure.error))
//!     .on_monitor(Duration::from_secs(10), |report| eprintln!("{:?}", report.snapshot.queues))
//!     .build()?
//!     .run() // until ctrl-c or SIGTERM
//!     .await
//! # }
//! ```

mod cancellation;
mod executor;
mod fetcher;
mod handler;
mod heartbeat;
mod history;
mod keeper;
mod layouts;
mod metrics;
mod monitor;
mod prefetch;
mod renewer;
mod runtime;
mod slots;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use handler::{BoxError, IntoOutput, Permanent};
pub use monitor::{MonitorReport, WorkerFigures};

use crate::job::Job;
use crate::keys::QueueKeys;
use crate::retry::{RetryPolicy, DEFAULT_MAX_ATTEMPTS};
use crate::task::Task;
use crate::Client;

use crate::{Error, Result};
pub(crate) use handler::panic_message;
use handler::Handlers;

/// Jobs a worker may lease ahead of its free slots by default ([`WorkerBuilder::prefetch`]).
const DEFAULT_PREFETCH: usize = 256;

/// Why an attempt failed and what happens next; given to the error hook.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Failure {
    /// The error text (handler error, panic message, timeout, decoding problem).
    pub error: String,
    /// Whether the job went to the dead set (no attempts left, or a permanent error).
    pub dead: bool,
    /// When it will be tried again, if it will.
    pub retry_in: Option<Duration>,
}

type ErrorHook = Arc<dyn Fn(&Job, &Failure) + Send + Sync>;
type MonitorHook = Arc<dyn Fn(&MonitorReport) + Send + Sync>;

/// Settings of a worker.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) concurrency: usize,
    pub(crate) lease: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) default_max_attempts: u32,
    pub(crate) completed_retention: Duration,
    pub(crate) dead_max: usize,
    pub(crate) dead_retention: Duration,
    pub(crate) max_batch: usize,
    pub(crate) prefetch: usize,
    pub(crate) idle_wait: Duration,
    pub(crate) idle_recheck: Duration,
    pub(crate) strict: bool,
    pub(crate) max_payload: usize,
    pub(crate) heartbeat: Duration,
    pub(crate) history: bool,
    pub(crate) metrics: bool,
    pub(crate) durable_outcomes: crate::Durability,
    pub(crate) doctor: bool,
}

/// Builds a [`Worker`]. Only the queue and a handler are required.
pub struct WorkerBuilder {
    client: Client,
    queues: Vec<(String, u32)>,
    config: Config,
    handlers: Handlers,
    on_error: Option<ErrorHook>,
    on_monitor: Option<(Duration, MonitorHook)>,
}

impl Worker {
    /// Starts building a worker on `client`.
    pub fn builder(client: Client) -> WorkerBuilder {
        WorkerBuilder {
            client,
            queues: Vec::new(),
            config: Config {
                concurrency: 10,
                lease: Duration::from_secs(30),
                timeout: Some(Duration::from_secs(30 * 60)),
                shutdown_timeout: Duration::from_secs(25),
                retry: RetryPolicy::default(),
                default_max_attempts: DEFAULT_MAX_ATTEMPTS,
                completed_retention: Duration::from_secs(24 * 3600),
                dead_max: 10_000,
                dead_retention: Duration::from_secs(30 * 24 * 3600),
                max_batch: 1000,
                prefetch: DEFAULT_PREFETCH,
                idle_wait: Duration::from_secs(1),
                idle_recheck: Duration::from_secs(60),
                strict: false,
                max_payload: crate::producer::DEFAULT_MAX_PAYLOAD,
                heartbeat: Duration::from_secs(5),
                history: true,
                metrics: true,
                durable_outcomes: crate::Durability::Async,
                doctor: true,
            },
            handlers: Handlers::default(),
            on_error: None,
            on_monitor: None,
        }
    }
}

impl WorkerBuilder {
    /// Serve this queue too, with weight 1 (call once per queue; at least one).
    pub fn queue(self, name: &str) -> Self {
        self.weighted_queue(name, 1)
    }

    /// Serve this queue with a weight. By default each fetch picks the queue to take from first at
    /// random in proportion to the weights (a 3:1 weight gives the first queue about three
    /// quarters of the fetches when both are full), then the others in turn if it has fewer jobs
    /// than free slots, so no queue starves. See [`WorkerBuilder::strict_order`].
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) -> ostq::Result<ostq::Worker> {
    /// ostq::Worker::builder(client)
    ///     .weighted_queue("critical", 6)
    ///     .weighted_queue("default", 3)
    ///     .weighted_queue("low", 1)
    ///     .handler(|_job: ostq::Job| async { Ok::<_, ostq::BoxError>(()) })
    ///     .build()
    /// # }
    /// ```
    pub fn weighted_queue(mut self, name: &str, weight: u32) -> Self {
        self.queues.push((name.to_string(), weight.max(1)));
        self
    }

    /// Take from the queues in the order they were added: a later queue is served only while
    /// every earlier one is empty (Sidekiq's strict ordering). Weights are then ignored.
    pub fn strict_order(mut self) -> Self {
        self.config.strict = true;
        self
    }

    /// Handlers running at once, across all queues (default 10).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }

    /// How long a fetched job stays leased without renewal (default 30 s). The worker renews
    /// every third of it; if the worker dies, another one recovers the job when the lease expires.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Longest a handler may run before its attempt fails (default 30 min; `None` for no limit).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// At shutdown, how long running jobs get to finish before they are given back (default 25 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Retry policy for jobs whose task type has none (default: exponential with jitter).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        if let Some(n) = policy.attempt_limit() {
            self.config.default_max_attempts = n;
        }
        self.config.retry = policy;
        self
    }

    /// How long status records of completed tracked jobs are kept (default 24 h).
    pub fn completed_retention(mut self, retention: Duration) -> Self {
        self.config.completed_retention = retention;
        self
    }

    /// Cap and retention of the dead set (default 10,000 jobs, 30 days); the oldest go first.
    pub fn dead_set(mut self, max_jobs: usize, retention: Duration) -> Self {
        self.config.dead_max = max_jobs;
        self.config.dead_retention = retention;
        self
    }

    /// Largest payload a handler is given (default 8 MiB, as on push); a larger one, pushed by
    /// some other producer, goes to the dead set with the reason instead.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.config.max_payload = bytes;
        self
    }

    /// Whether the worker records its jobs in the queue's history (per task, per minute and per
    /// hour: counts and run, wait and total time histograms; `Queue::history` reads it). On by
    /// default; it costs one script call per outcome batch.
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// let builder = ostq::Worker::builder(client).history(false);
    /// # }
    /// ```
    pub fn history(mut self, on: bool) -> Self {
        self.config.history = on;
        self
    }

    /// Whether the worker reports its jobs through the `metrics` facade ([`crate::metrics`]
    /// lists the names): counts and run and wait time histograms per queue and task, and its
    /// slots. On by default; it records nothing until the application installs a recorder, and
    /// costs a few lookups per outcome batch when it has.
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// let builder = ostq::Worker::builder(client).metrics(false);
    /// # }
    /// ```
    pub fn metrics(mut self, on: bool) -> Self {
        self.config.metrics = on;
        self
    }

    /// Wait for copies of each outcome batch (completions, failures, give-backs) before the
    /// worker treats it as written: the batch's scripts and then `WAIT` (or `WAITAOF`) go over one
    /// connection of the client's durable pool. Off by default ([`crate::Durability::Async`]).
    ///
    /// Why: an outcome the primary acknowledged but had not replicated is undone by a failover,
    /// and the job then runs again (a duplicate, never a loss) and a result a caller already read
    /// disappears until it does. With this on, that window is closed for every batch whose wait
    /// was confirmed. When fewer copies are confirmed in time the worker logs a warning and goes on
    /// (the outcome is on the primary and cannot be taken back; at worst the job runs again). The
    /// wait holds up only the lease keeper (up to the timeout per batch while a replica is down),
    /// never fetches or renewals. Not available on Redis Cluster.
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// use std::time::Duration;
    /// let builder = ostq::Worker::builder(client)
    ///     .durable_outcomes(ostq::Durability::replicas(1, Duration::from_secs(1)));
    /// # }
    /// ```
    pub fn durable_outcomes(mut self, durability: crate::Durability) -> Self {
        self.config.durable_outcomes = durability;
        self
    }

    /// Whether the worker checks the Redis deployment when it starts ([`Client::quick_doctor`]:
    /// eviction policy, persistence, memory headroom, server version, replicas) and logs each
    /// warning or failure with its fix as a `tracing` warning, as BullMQ and Sidekiq warn about
    /// the eviction policy. It never refuses to start; it runs in the background (two round trips
    /// to a single server), so a worker whose Redis is not up yet starts all the same. On by
    /// default.
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// let builder = ostq::Worker::builder(client).doctor(false); // checked elsewhere
    /// # }
    /// ```
    pub fn doctor(mut self, on: bool) -> Self {
        self.config.doctor = on;
        self
    }

    /// How often the worker renews its registry entry ([`crate::Client::workers`]); default 5 s.
    /// The entry expires three heartbeats after the last, so a killed worker disappears from the
    /// registry within that time.
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// use std::time::Duration;
    /// let builder = ostq::Worker::builder(client).heartbeat(Duration::from_secs(2));
    /// # }
    /// ```
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.config.heartbeat = every.max(Duration::from_millis(100));
        self
    }

    /// How often an idle worker re-checks a queue nothing has woken (default 60 s; at least
    /// 1 s). Every path that makes a job ready (a push, a prioritized or delayed job, a retry,
    /// recovery, a give-back, `retry_now`) wakes the idle workers, and a queue's own deadlines
    /// (its earliest scheduled, retry or lease-expiry time) end its wait, so this check is only
    /// a safety net. It costs one `fetch.lua` call per `idle_recheck` for the whole worker, not
    /// per queue: each of its `n` queues is re-checked every `n × idle_recheck` in turn, so an
    /// idle worker's commands do not grow with the number of queues.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn demo(client: ostq::Client) {
    /// let builder = ostq::Worker::builder(client).idle_recheck(Duration::from_secs(30));
    /// # }
    /// ```
    pub fn idle_recheck(mut self, every: Duration) -> Self {
        self.config.idle_recheck = every.max(Duration::from_secs(1));
        self
    }

    /// Most jobs leased per fetch (default 1000, at most 1000).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.config.max_batch = n;
        self
    }

    /// Most jobs leased ahead of free slots (default 256; 0 turns prefetching off). A slot whose
    /// job ended starts a prefetched one at once instead of waiting for a fetch, which is what
    /// makes short jobs fast at low concurrency. The worker holds no more prefetched jobs than
    /// started in the last 100 ms, so slow jobs are not hoarded, and gives back any that waited
    /// a second. Their leases are renewed like running ones and given back at shutdown; after a
    /// crash the ones that had not started go back without an attempt counted. With prefetch on,
    /// the completions of plain jobs also wait (at most 100 ms) for the rest of their lease group,
    /// so a group is acked with one `DEL`; 0 writes each as it comes, as before. See
    /// docs/design.md §7.1 and §8.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.config.prefetch = n;
        self
    }

    /// The handler for jobs without a task name (plain pushes: ids, bytes), and for named jobs
    /// that no typed handler ([`WorkerBuilder::task`]) claims: it reads the name in
    /// [`Job::name`], as one BullMQ processor serves every job name. Without it, such a job
    /// fails an attempt with "no handler for task …" and retries (a worker that knows the name
    /// may take it, as in a rolling deploy) until its attempts run out.
    pub fn handler<F, Fut, O, E>(mut self, f: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        O: IntoOutput,
        E: Into<BoxError>,
    {
        self.handlers.default = Some(handler::boxed(f));
        self
    }

    /// The handler for typed tasks of type `T`, dispatched on `T::NAME`. A payload that does not
    /// decode as `T` sends the job to the dead set with the decoding error.
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Transcode { video_id: u64 }
    /// # impl ostq::Task for Transcode { const NAME: &'static str = "transcode"; }
    /// # fn demo(client: ostq::Client) -> ostq::Result<ostq::Worker> {
    /// ostq::Worker::builder(client)
    ///     .queue("videos")
    ///     .task(|t: Transcode| async move { println!("video {}", t.video_id); Ok::<_, ostq::BoxError>(()) })
    ///     .build()
    /// # }
    /// ```
    pub fn task<T, F, Fut, O, E>(self, f: F) -> Self
    where
        T: Task,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        O: IntoOutput,
        E: Into<BoxError>,
    {
        self.task_with_job(move |task: T, _job: Job| f(task))
    }

    /// Like [`WorkerBuilder::task`], with the job too (its id, attempt, progress, cancellation).
    ///
    /// ```no_run
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Transcode { video_id: u64 }
    /// # impl ostq::Task for Transcode { const NAME: &'static str = "transcode"; }
    /// # fn demo(client: ostq::Client) -> ostq::Result<ostq::Worker> {
    /// ostq::Worker::builder(client)
    ///     .queue("videos")
    ///     .task_with_job(|t: Transcode, job: ostq::Job| async move {
    ///         println!("video {} (attempt {})", t.video_id, job.attempt);
    ///         job.progress(50).await?;
    ///         Ok::<_, ostq::BoxError>(())
    ///     })
    ///     .build()
    /// # }
    /// ```
    pub fn task_with_job<T, F, Fut, O, E>(mut self, f: F) -> Self
    where
        T: Task,
        F: Fn(T, Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, E>> + Send + 'static,
        O: IntoOutput,
        E: Into<BoxError>,
    {
        self.handlers.by_name.insert(
            T::NAME.to_string(),
            (handler::boxed_task::<T, _, _, _, _>(f), T::retry_policy()),
        );
        self
    }

    /// Called after every failed attempt, with the job and what happens next.
    pub fn on_error(mut self, hook: impl Fn(&Job, &Failure) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(hook));
        self
    }

    /// Called every `interval` with a [`MonitorReport`]: the served queues as `ostq stats` sees
    /// them (counts, jobs per second, failure rates all-time and over 5 minutes, the age of the
    /// next job, live workers), Redis's figures (memory, clients, version), the alerts of
    /// [`AlertRules::recommended`](crate::admin::alerts::AlertRules::recommended), and this
    /// worker's own figures (busy slots, attempts it ended). The hook runs on the monitor's
    /// task: keep it short. A few round trips per report, whatever the number of queues.
    pub fn on_monitor(
        mut self,
        interval: Duration,
        hook: impl Fn(&MonitorReport) + Send + Sync + 'static,
    ) -> Self {
        self.on_monitor = Some((interval, Arc::new(hook)));
        self
    }

    /// Checks the settings and builds the worker.
    pub fn build(self) -> Result<Worker> {
        if self.queues.is_empty() {
            return Err(Error::Config("a worker needs at least one queue".into()));
        }
        if self.handlers.default.is_none() && self.handlers.by_name.is_empty() {
            return Err(Error::Config(
                "a worker needs a handler or at least one task handler".into(),
            ));
        }
        if self.config.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if self.config.lease < Duration::from_millis(300) {
            return Err(Error::Config("lease must be at least 300 ms".into()));
        }
        self.config.durable_outcomes.check()?;
        if self.config.durable_outcomes.is_durable() && self.client.is_cluster() {
            return Err(Error::Config(
                "durable outcomes (WAIT) are not supported on Redis Cluster".into(),
            ));
        }
        if self.config.max_batch == 0 || self.config.max_batch > 1000 {
            return Err(Error::Config("max_batch must be 1..=1000".into()));
        }
        let mut queues: Vec<Arc<QueueKeys>> = Vec::new();
        let mut weights = Vec::new();
        for (name, weight) in &self.queues {
            let keys = QueueKeys::new(name)?;
            if !queues.iter().any(|k| k.queue == keys.queue) {
                queues.push(Arc::new(keys));
                weights.push(*weight);
            }
        }
        Ok(Worker {
            client: self.client,
            queues,
            weights,
            config: self.config,
            handlers: self.handlers,
            on_error: self.on_error,
            on_monitor: self.on_monitor,
        })
    }
}

/// A configured worker; run it with [`Worker::run`] or [`Worker::run_until`].
pub struct Worker {
    client: Client,
    queues: Vec<Arc<QueueKeys>>,
    weights: Vec<u32>,
    config: Config,
    handlers: Handlers,
    on_error: Option<ErrorHook>,
    on_monitor: Option<(Duration, MonitorHook)>,
}

impl Worker {
    /// Runs until ctrl-c or SIGTERM, then shuts down gracefully.
    pub async fn run(self) -> Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Runs until `shutdown` completes (for example a `CancellationToken`'s `cancelled()`), then
    /// stops fetching, lets running jobs finish within the shutdown timeout, and gives the rest
    /// back to their queues at once.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        if self.config.doctor {
            tokio::spawn(startup_checks(self.client.clone()));
        }
        // Each sharded queue is served through its physical queues (shards and draining former
        // shards, each with the queue's weight), following its layout while the worker runs
        // (design §19, `layouts.rs`).
        runtime::run(self, shutdown).await
    }
}

/// The deployment checks a worker runs at start: each warning or failure becomes a log line.
async fn startup_checks(client: Client) {
    use crate::admin::doctor::Status;
    match client.quick_doctor().await {
        Ok(report) => {
            for check in report.checks.iter().filter(|c| c.status != Status::Pass) {
                tracing::warn!(
                    check = %check.name,
                    status = check.status.label(),
                    fix = check.fix.as_deref().unwrap_or_default(),
                    "doctor: {}",
                    check.summary
                );
            }
        }
        Err(e) => tracing::debug!(error = %e, "doctor: the start-up checks could not run"),
    }
}

/// Completes when ctrl-c or SIGTERM arrives: what [`Worker::run`] and `Scheduler::run` wait for.
///
/// ```no_run
/// # async fn demo() {
/// ostq::worker::shutdown_signal().await;
/// println!("shutting down");
/// # }
/// ```
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
