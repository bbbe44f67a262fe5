//! # ostq: a Redis-backed task queue for Rust
//!
//! Producers push work (a bare id, bytes, or a typed task) onto named queues; workers pull it
//! with bounded concurrency and run a handler. Delivery is at-least-once: a job a worker took is
//! leased, and if the worker dies (SIGKILL, network cut) any live worker recovers the job when
//! the lease expires.
//!
//! ```no_run
//! # async fn demo() -> ostq::Result<()> {
//! let client = ostq::Client::connect("redis://127.0.0.1:6379").await?;
//! client.queue("videos").push("42").await?;
//!
//! ostq::Worker::builder(client)
//!     .queue("videos")
//!     .handler(|job: ostq::Job| async move {
//!         println!("transcoding video {}", job.payload_str()?);
//!         Ok::<_, ostq::BoxError>(())
//!     })
//!     .build()?
//!     .run()
//!     .await
//! # }
//! ```
//!
//! The modules follow the design (`docs/design.md`): [`connection`] (Redis: single, Sentinel,
//! Cluster, TLS), [`keys`] (the key layout), [`envelope`] and [`job`] (the job model), [`scripts`]
//! (one Lua script per state transition), [`producer`], [`worker`], [`retry`], [`task`] (typed
//! tasks), [`scheduler`], [`events`], [`durability`] (pushes and outcomes that wait for replicas:
//! `WAIT`, `WAITAOF`) and [`admin`] (the data API under the CLI and dashboard).
//! Every Redis command is issued by one private storage layer beneath them.

pub mod admin;
pub mod durability;
pub mod envelope;
mod error;
pub mod events;
pub mod job;
pub mod keys;
pub mod metrics;
#[cfg(feature = "opentelemetry")]
pub mod otel;
pub mod producer;
pub mod results;
pub mod retry;
pub mod scheduler;
pub mod scripts;
mod store;
pub mod task;
pub mod worker;

pub use admin::{Cancel, Cursor, Page, QueueCounts, QueueStats, RedisInfo};
pub use durability::Durability;
pub use error::{Error, Result};
pub use job::{Job, JobInfo, JobState};
pub use producer::{PushOptions, Queue};
pub use retry::RetryPolicy;
pub use scheduler::{MissedTicks, Schedule, ScheduleInfo, Scheduler, SchedulerBuilder};
pub use store::connection::{self, Client};
pub use task::Task;
pub use worker::{BoxError, Failure, IntoOutput, Permanent, Worker, WorkerBuilder};
