//! Cron and periodic jobs: a [`Scheduler`] enqueues a job on each tick of its schedules.
//!
//! A schedule is a cron expression (5 fields, or 6 with seconds first, optionally a 7th for the
//! year; evaluated in a time zone, UTC by default) or a fixed interval. Any number of processes
//! may run the same registration, typically every worker process: each tick is still enqueued
//! **exactly once**, without a leader.
//!
//! ```no_run
//! use std::time::Duration;
//! use ostq::{MissedTicks, Schedule, Scheduler};
//!
//! # async fn demo(client: ostq::Client) -> ostq::Result<()> {
//! let scheduler = Scheduler::builder(client)
//!     // every 5 minutes, at second 0 (the seconds field is optional)
//!     .cron("cleanup", "maintenance", "0 */5 * * * *", "sweep")
//!     // 03:00 in Paris, and once at start if 03:00 passed while no process ran
//!     .schedule(
//!         Schedule::cron("daily-report", "mail", "0 3 * * *")
//!             .payload("report")
//!             .time_zone("Europe/Paris")
//!             .missed(MissedTicks::RunOnce),
//!     )
//!     .every("heartbeat", "health", Duration::from_secs(30), "ping")
//!     .build()?;
//! scheduler.run().await // until ctrl-c or SIGTERM
//! # }
//! ```
//!
//! # How exactly once works
//! Each process computes the tick times itself, on the Redis server's clock (it measures its
//! offset from the replies), and at each tick time T calls `cron_fire.lua`. The script compares
//! T with the schedule's `last_tick` and, only if T is later, records T and pushes the job, in
//! one atomic step; every other call for T finds `last_tick >= T` and does nothing. The job id is
//! `cron:<name>:<T>`, so a tick's job is recognisable. `last_tick` lives in Redis, so it survives
//! restarts, and no per-tick key is needed. Intervals are aligned to the Unix epoch (an hourly
//! `every` fires on the hour, UTC), so all processes agree on the ticks.
//!
//! # Missed ticks
//! A process that cannot reach Redis at a tick keeps trying until the next tick comes: a tick is
//! fired late rather than lost, and never more than once. Ticks that came while **no process
//! ran** follow the schedule's [`MissedTicks`] policy: [`MissedTicks::Skip`] (the default) fires
//! none of them; [`MissedTicks::RunOnce`] fires the most recent one, once, when a process
//! starts. A catch-up never fires a tick from before the schedule was first registered.
//!
//! # Registration
//! At start each process writes its schedules to the queue's registry (`ostq:{q}:schedules`, name
//! to spec JSON); [`Client::schedules`] lists them with their last and next ticks. If processes
//! disagree on a schedule (a deploy changed it), the last one to start wins and the others stand
//! by for that schedule. [`Client::remove_schedule`] stops a schedule at once, even in processes
//! that still have it; a process started later with it registers it again.
//!
//! # Keys (all under the queue's hash tag, so it works on Redis Cluster)
//! - `ostq:{q}:schedules` HASH schedule name → spec JSON ([`ScheduleSpec`]);
//! - `ostq:{q}:cron:<name>` HASH of the schedule's state: `created` (first registration, ms),
//!   `last_tick`, `next_tick`, `last_job`, `fired` (count);
//! - `ostq:{q}:schedules:removed` HASH schedule name → removed at (ms), written by
//!   [`Client::remove_schedule`] and cleared when a process registers the schedule again.
//!
//! If the registry is lost (a Redis restart without persistence, a flush), running processes
//! register their schedules again at the next tick: only a removal stops a schedule.

use std::fmt::Write as _;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::envelope::FLAG_TRACKED;
use crate::job::now_ms;
use crate::keys::QueueKeys;
use crate::producer::PRIORITY_RANGE;
use crate::store::{self, cron::TickJob};
use crate::task::Task;
use crate::Client;
use crate::{Error, Result};

/// Longest schedule name accepted (job ids `cron:<name>:<tick>` stay within 200 bytes).
pub const MAX_SCHEDULE_NAME: usize = 150;
/// Shortest interval accepted by [`Schedule::every`].
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Longest sleep between two looks at the clock: a wall clock that jumps is noticed within it.
const MAX_SLEEP: Duration = Duration::from_secs(60);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The id of the job a schedule enqueues for the tick at `tick_ms` (unix ms).
///
/// ```
/// assert_eq!(ostq::scheduler::tick_job_id("daily", 1_700_000_000_000), "cron:daily:1700000000000");
/// ```
pub fn tick_job_id(name: &str, tick_ms: u64) -> String {
    format!("cron:{name}:{tick_ms}")
}

/// What to do with ticks that came while no scheduler process ran.
///
/// ```
/// assert_eq!(ostq::MissedTicks::default(), ostq::MissedTicks::Skip);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedTicks {
    /// Fire none of them; the next tick after start is the first one fired.
    #[default]
    Skip,
    /// Fire the most recent missed tick once when a process starts (still exactly once across
    /// processes), then carry on with the next ticks.
    RunOnce,
}

/// A schedule as recorded in the registry and listed by [`Client::schedules`]. Processes compare
/// it byte for byte (as JSON) with their own registration before firing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleSpec {
    /// The cron expression, for cron schedules.
    #[serde(default)]
    pub cron: Option<String>,
    /// The interval in milliseconds, for fixed-interval schedules.
    #[serde(default)]
    pub every_ms: Option<u64>,
    /// IANA time zone the cron expression is read in (`UTC` by default).
    #[serde(default)]
    pub time_zone: String,
    /// What happens to ticks missed while no process ran.
    #[serde(default)]
    pub missed: MissedTicks,
    /// The job's payload: UTF-8 text, or lowercase hex when `payload_hex` is set.
    #[serde(default)]
    pub payload: String,
    /// Whether `payload` is hex (the payload is not UTF-8).
    #[serde(default)]
    pub payload_hex: bool,
    /// The job's task type name (empty when none).
    #[serde(default)]
    pub task_name: String,
    /// The job's priority.
    #[serde(default)]
    pub priority: i32,
    /// The job's attempt limit (0 = the worker's default).
    #[serde(default)]
    pub max_attempts: u32,
    /// Whether the jobs keep a status record.
    #[serde(default)]
    pub track: bool,
}

impl ScheduleSpec {
    /// The payload's bytes.
    ///
    /// ```
    /// # let spec: ostq::scheduler::ScheduleSpec =
    /// #     serde_json::from_str(r#"{"payload":"00ff","payload_hex":true}"#).unwrap();
    /// assert_eq!(spec.payload_bytes(), vec![0, 255]);
    /// ```
    pub fn payload_bytes(&self) -> Vec<u8> {
        if self.payload_hex {
            from_hex(&self.payload).unwrap_or_default()
        } else {
            self.payload.clone().into_bytes()
        }
    }
}

/// A registered schedule, as [`Client::schedules`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule's name, unique within its queue.
    pub name: String,
    /// The queue its jobs go to.
    pub queue: String,
    /// What it fires and when.
    pub spec: ScheduleSpec,
    /// When the schedule was first registered, unix ms.
    pub created_ms: Option<u64>,
    /// The last tick fired, unix ms.
    pub last_tick_ms: Option<u64>,
    /// The next tick, as computed by the process that fired or registered last (in the past
    /// when no process has run it since).
    pub next_tick_ms: Option<u64>,
    /// The id of the last job fired.
    pub last_job_id: Option<String>,
    /// How many ticks were fired.
    pub fired: u64,
}

/// What became of one process's call for a tick; see [`SchedulerBuilder::on_tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TickOutcome {
    /// This process won the tick and enqueued the job.
    Fired {
        /// The job's id, `cron:<name>:<tick>`.
        job_id: String,
    },
    /// Another process (or an earlier call) already fired this tick or a later one.
    Taken,
    /// The tick is older than the schedule's first registration: nothing was missed.
    Early,
    /// The schedule was removed from the registry: this process no longer fires it.
    Removed,
    /// The registry holds another definition of this schedule (registered by a process started
    /// later): this process stands by for it.
    Superseded,
}

/// One process's call for a schedule tick, given to the [`SchedulerBuilder::on_tick`] hook.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tick {
    /// The schedule's name.
    pub schedule: String,
    /// Its queue.
    pub queue: String,
    /// The tick's time, unix ms.
    pub tick_ms: u64,
    /// Whether this is a [`MissedTicks::RunOnce`] catch-up at start.
    pub catch_up: bool,
    /// What happened.
    pub outcome: TickOutcome,
}

#[derive(Debug, Clone)]
enum Timing {
    Cron(String),
    Every(Duration),
}

/// A schedule to register: when to fire and what job to enqueue.
///
/// ```
/// use std::time::Duration;
/// use ostq::{MissedTicks, Schedule};
///
/// let nightly = Schedule::cron("nightly", "reports", "30 2 * * *")
///     .time_zone("America/New_York")
///     .missed(MissedTicks::RunOnce)
///     .payload(r#"{"kind":"full"}"#)
///     .max_attempts(3)
///     .track();
/// let poll = Schedule::every("poll", "feeds", Duration::from_secs(10)).payload("rss");
/// ```
#[derive(Debug, Clone)]
pub struct Schedule {
    name: String,
    queue: String,
    timing: Timing,
    time_zone: String,
    missed: MissedTicks,
    payload: Vec<u8>,
    task_name: String,
    priority: i32,
    max_attempts: u32,
    track: bool,
    error: Option<String>,
}

impl Schedule {
    fn new(name: &str, queue: &str, timing: Timing) -> Self {
        Self {
            name: name.to_string(),
            queue: queue.to_string(),
            timing,
            time_zone: "UTC".to_string(),
            missed: MissedTicks::Skip,
            payload: Vec::new(),
            task_name: String::new(),
            priority: 0,
            max_attempts: 0,
            track: false,
            error: None,
        }
    }

    /// A schedule on a cron expression: `min hour day month weekday`, or with a seconds field
    /// first (`sec min hour day month weekday`), optionally a year last. Extensions such as `L`,
    /// `W`, `#` and `@daily` are accepted. A bad expression is reported by
    /// [`SchedulerBuilder::build`].
    pub fn cron(name: &str, queue: &str, expression: &str) -> Self {
        Self::new(name, queue, Timing::Cron(expression.to_string()))
    }

    /// A schedule firing every `interval` (at least 10 ms, whole milliseconds), aligned to the
    /// Unix epoch: every 5 minutes fires at :00, :05, … UTC.
    pub fn every(name: &str, queue: &str, interval: Duration) -> Self {
        Self::new(name, queue, Timing::Every(interval))
    }

    /// The schedule a registry entry describes ([`Client::schedules`]), to run schedules that
    /// another process (or `ostq cron add`) registered: it registers the same spec again, byte
    /// for byte, so every process agrees on it. A spec with neither a cron expression nor an
    /// interval gives a schedule that [`SchedulerBuilder::build`] refuses.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let mut builder = ostq::Scheduler::builder(client.clone());
    /// for info in client.schedules("reports").await? {
    ///     builder = builder.schedule(ostq::Schedule::from_info(&info));
    /// }
    /// builder.build()?.run().await
    /// # }
    /// ```
    pub fn from_info(info: &ScheduleInfo) -> Self {
        let spec = &info.spec;
        let timing = match (&spec.cron, spec.every_ms) {
            (Some(expr), _) => Timing::Cron(expr.clone()),
            (None, Some(ms)) => Timing::Every(Duration::from_millis(ms)),
            (None, None) => Timing::Cron(String::new()),
        };
        let mut schedule = Self::new(&info.name, &info.queue, timing);
        if spec.cron.is_none() && spec.every_ms.is_none() {
            schedule.error =
                Some("the registry entry has neither a cron expression nor an interval".into());
        }
        if spec.payload_hex && from_hex(&spec.payload).is_none() {
            schedule.error = Some("the registry entry's payload is not hex".into());
        }
        if !spec.time_zone.is_empty() {
            schedule.time_zone = spec.time_zone.clone();
        }
        schedule.missed = spec.missed;
        schedule.payload = spec.payload_bytes();
        schedule.task_name = spec.task_name.clone();
        schedule.priority = spec.priority;
        schedule.max_attempts = spec.max_attempts;
        schedule.track = spec.track;
        schedule
    }

    /// The job's payload (empty by default).
    pub fn payload(mut self, payload: impl AsRef<[u8]>) -> Self {
        self.payload = payload.as_ref().to_vec();
        self
    }

    /// A typed task as the job (JSON payload, the task's name and attempt limit).
    ///
    /// ```
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Cleanup { days: u32 }
    /// # impl ostq::Task for Cleanup { const NAME: &'static str = "cleanup"; }
    /// let s = ostq::Schedule::cron("cleanup", "maintenance", "0 4 * * *").task(&Cleanup { days: 30 });
    /// ```
    pub fn task<T: Task>(mut self, task: &T) -> Self {
        match serde_json::to_vec(task) {
            Ok(payload) => self.payload = payload,
            Err(e) => self.error = Some(format!("cannot encode task {}: {e}", T::NAME)),
        }
        self.task_name = T::NAME.to_string();
        if self.max_attempts == 0 {
            if let Some(limit) = T::retry_policy().and_then(|p| p.attempt_limit()) {
                self.max_attempts = limit;
            }
        }
        self
    }

    /// The IANA time zone the cron expression is read in, e.g. `Europe/Paris` (default `UTC`).
    /// Daylight saving changes follow croner: a time skipped by the change fires when the clock
    /// jumps, a repeated time fires once. Fixed intervals ignore the time zone.
    pub fn time_zone(mut self, tz: &str) -> Self {
        self.time_zone = tz.to_string();
        self
    }

    /// What to do with ticks missed while no process ran (default [`MissedTicks::Skip`]).
    pub fn missed(mut self, policy: MissedTicks) -> Self {
        self.missed = policy;
        self
    }

    /// The job's task type name.
    pub fn task_name(mut self, name: &str) -> Self {
        self.task_name = name.to_string();
        self
    }

    /// The job's priority (-1000..=1000, higher runs first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The job's attempt limit (0 = the worker's default).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Keep a status record for each job (see [`crate::PushOptions::track`]).
    pub fn track(mut self) -> Self {
        self.track = true;
        self
    }

    /// Checks the schedule as [`SchedulerBuilder::build`] does, without a client (import
    /// validates schedules read from a file before writing anything).
    pub(crate) fn check(self) -> Result<()> {
        self.compile().map(drop)
    }

    fn compile(self) -> Result<Compiled> {
        let bad = |msg: String| Error::Config(format!("schedule {:?}: {msg}", self.name));
        if let Some(e) = &self.error {
            return Err(bad(e.clone()));
        }
        validate_schedule_name(&self.name)?;
        let keys = QueueKeys::new(&self.queue).map_err(|e| bad(e.to_string()))?;
        if !PRIORITY_RANGE.contains(&self.priority) {
            return Err(bad(format!(
                "priority {} is outside -1000..=1000",
                self.priority
            )));
        }
        let tz = Tz::from_str(&self.time_zone)
            .map_err(|_| bad(format!("unknown time zone {:?}", self.time_zone)))?;
        let (clock, cron, every_ms) = match &self.timing {
            Timing::Cron(expr) => {
                let parsed = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(expr)
                    .map_err(|e| bad(format!("bad cron expression {expr:?}: {e}")))?;
                (Clock::Cron(Box::new(parsed), tz), Some(expr.clone()), None)
            }
            Timing::Every(interval) => {
                if *interval < MIN_INTERVAL || interval.subsec_nanos() % 1_000_000 != 0 {
                    return Err(bad(format!(
                        "interval {interval:?} must be at least {MIN_INTERVAL:?}, in whole milliseconds"
                    )));
                }
                let ms = interval.as_millis() as u64;
                (Clock::Every(ms), None, Some(ms))
            }
        };
        if clock.next_after(now_ms()).is_none() {
            return Err(bad(format!(
                "cron expression {:?} never fires",
                cron.unwrap_or_default()
            )));
        }
        let (payload, payload_hex) = match std::str::from_utf8(&self.payload) {
            Ok(text) => (text.to_string(), false),
            Err(_) => (to_hex(&self.payload), true),
        };
        let spec = ScheduleSpec {
            cron,
            every_ms,
            time_zone: tz.name().to_string(),
            missed: self.missed,
            payload,
            payload_hex,
            task_name: self.task_name.clone(),
            priority: self.priority,
            max_attempts: self.max_attempts,
            track: self.track,
        };
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| bad(format!("cannot encode spec: {e}")))?;
        Ok(Compiled {
            keys,
            name: self.name,
            clock,
            spec_json,
            missed: self.missed,
            payload: self.payload,
            task_name: self.task_name,
            priority: self.priority,
            max_attempts: self.max_attempts,
            flags: if self.track { FLAG_TRACKED } else { 0 },
        })
    }
}

/// Checks a schedule name: 1..=150 bytes without whitespace or control characters.
fn validate_schedule_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_SCHEDULE_NAME
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::Config(format!(
            "schedule name {name:?} must be 1..={MAX_SCHEDULE_NAME} bytes without whitespace or control characters"
        )));
    }
    Ok(())
}

/// When a schedule's ticks come, on the unix-ms time line.
#[derive(Debug, Clone)]
enum Clock {
    Cron(Box<Cron>, Tz),
    Every(u64),
}

impl Clock {
    /// The first tick strictly after `t`.
    fn next_after(&self, t: u64) -> Option<u64> {
        match self {
            Clock::Every(ms) => (t / ms).checked_add(1)?.checked_mul(*ms),
            Clock::Cron(cron, tz) => {
                // Cron ticks are whole seconds: after the second holding t, not after t itself.
                let at = DateTime::from_timestamp((t / 1000) as i64, 0)?.with_timezone(tz);
                let next = cron.find_next_occurrence(&at, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }

    /// The last tick at or before `t`.
    fn latest_until(&self, t: u64) -> Option<u64> {
        match self {
            Clock::Every(ms) => Some(t / ms * ms),
            Clock::Cron(cron, tz) => {
                let at = DateTime::from_timestamp((t / 1000) as i64, 0)?.with_timezone(tz);
                let prev = cron.find_previous_occurrence(&at, true).ok()?;
                u64::try_from(prev.timestamp_millis()).ok()
            }
        }
    }
}

/// A checked schedule, ready to fire.
#[derive(Debug)]
struct Compiled {
    name: String,
    keys: QueueKeys,
    clock: Clock,
    spec_json: String,
    missed: MissedTicks,
    payload: Vec<u8>,
    task_name: String,
    priority: i32,
    max_attempts: u32,
    flags: u64,
}

type TickHook = Arc<dyn Fn(&Tick) + Send + Sync>;

/// Builds a [`Scheduler`]; get one with [`Scheduler::builder`].
pub struct SchedulerBuilder {
    client: Client,
    schedules: Vec<Schedule>,
    on_tick: Option<TickHook>,
    local_skew_ms: i64,
}

impl std::fmt::Debug for SchedulerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerBuilder")
            .field("schedules", &self.schedules)
            .finish_non_exhaustive()
    }
}

impl SchedulerBuilder {
    /// Adds a schedule with all its options.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// Adds a cron schedule with default options (UTC, [`MissedTicks::Skip`]); see
    /// [`Schedule::cron`] for the expression and [`SchedulerBuilder::schedule`] for the options.
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let scheduler = ostq::Scheduler::builder(client)
    ///     .cron("every-ten-seconds", "ticks", "*/10 * * * * *", "tick")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn cron(
        self,
        name: &str,
        queue: &str,
        expression: &str,
        payload: impl AsRef<[u8]>,
    ) -> Self {
        self.schedule(Schedule::cron(name, queue, expression).payload(payload))
    }

    /// Adds a fixed-interval schedule with default options; see [`Schedule::every`].
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let scheduler = ostq::Scheduler::builder(client)
    ///     .every("poll", "feeds", std::time::Duration::from_secs(30), "rss")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn every(
        self,
        name: &str,
        queue: &str,
        interval: Duration,
        payload: impl AsRef<[u8]>,
    ) -> Self {
        self.schedule(Schedule::every(name, queue, interval).payload(payload))
    }

    /// Called after each of this process's calls for a tick, with its outcome (for metrics or
    /// tests; keep it quick, it runs on the scheduler's task).
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let scheduler = ostq::Scheduler::builder(client)
    ///     .cron("minutely", "q", "* * * * *", "")
    ///     .on_tick(|tick| println!("{} at {}: {:?}", tick.schedule, tick.tick_ms, tick.outcome))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn on_tick(mut self, hook: impl Fn(&Tick) + Send + Sync + 'static) -> Self {
        self.on_tick = Some(Arc::new(hook));
        self
    }

    /// **For tests only; not part of the API.** Makes this scheduler read its local clock as if
    /// it were `skew_ms` ahead (positive) or behind (negative) of the real one, so that tests can
    /// check that ticks follow the Redis server's clock whatever the local clock says (a test
    /// cannot set the machine's clock). Never needed in production: the scheduler measures its
    /// offset from the server on every reply.
    #[doc(hidden)]
    pub fn local_clock_skew_ms(mut self, skew_ms: i64) -> Self {
        self.local_skew_ms = skew_ms;
        self
    }

    /// Checks every schedule: names, queue, cron expression, time zone, interval, priority.
    /// Errors are [`Error::Config`] naming the schedule.
    ///
    /// ```no_run
    /// # fn demo(client: ostq::Client) {
    /// let err = ostq::Scheduler::builder(client)
    ///     .cron("broken", "q", "61 * * * *", "")
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("schedule \"broken\": bad cron expression \"61 * * * *\""));
    /// # }
    /// ```
    pub fn build(self) -> Result<Scheduler> {
        if self.schedules.is_empty() {
            return Err(Error::Config(
                "a scheduler needs at least one schedule".into(),
            ));
        }
        let mut compiled: Vec<Compiled> = Vec::new();
        for schedule in self.schedules {
            let schedule = schedule.compile()?;
            if compiled
                .iter()
                .any(|c| c.name == schedule.name && c.keys.queue == schedule.keys.queue)
            {
                return Err(Error::Config(format!(
                    "schedule {:?} is registered twice on queue {:?}",
                    schedule.name, schedule.keys.queue
                )));
            }
            compiled.push(schedule);
        }
        Ok(Scheduler {
            client: self.client,
            schedules: compiled,
            on_tick: self.on_tick,
            local_skew_ms: self.local_skew_ms,
        })
    }
}

/// Enqueues the jobs of its schedules on their ticks. Run the same registration in as many
/// processes as you like (each worker process, say): every tick is enqueued once. See the
/// [module documentation](self) for the guarantees.
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// let stop = tokio_util::sync::CancellationToken::new();
/// let scheduler = ostq::Scheduler::builder(client.clone())
///     .cron("hourly", "reports", "0 * * * *", "summary")
///     .build()?;
/// let worker = ostq::Worker::builder(client)
///     .queue("reports")
///     .handler(|job: ostq::Job| async move { Ok::<_, ostq::BoxError>(()) })
///     .build()?;
/// // One process, both roles:
/// let (a, b) = tokio::join!(
///     scheduler.run_until(stop.clone().cancelled_owned()),
///     worker.run_until(stop.clone().cancelled_owned()),
/// );
/// a?;
/// b?;
/// # Ok(()) }
/// ```
pub struct Scheduler {
    client: Client,
    schedules: Vec<Compiled>,
    on_tick: Option<TickHook>,
    /// Test seam, see [`SchedulerBuilder::local_clock_skew_ms`]; 0 otherwise.
    local_skew_ms: i64,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .schedules
            .iter()
            .map(|s| format!("{}/{}", s.keys.queue, s.name))
            .collect();
        f.debug_struct("Scheduler")
            .field("schedules", &names)
            .finish_non_exhaustive()
    }
}

/// The Redis server's clock as seen from here: the offset is measured on every script reply.
/// Until the first measurement it is the local clock, which may be off by any amount: nothing
/// that depends on the time (the start of a run) may be read before [`ServerClock::measure`].
#[derive(Debug, Default)]
struct ServerClock {
    offset_ms: i64,
    /// Added to every local reading: a test seam ([`SchedulerBuilder::local_clock_skew_ms`]).
    local_skew_ms: i64,
}

impl ServerClock {
    fn with_local_skew(local_skew_ms: i64) -> Self {
        Self {
            offset_ms: 0,
            local_skew_ms,
        }
    }

    /// The local clock (as skewed for tests), unix ms.
    fn local_now(&self) -> u64 {
        (now_ms() as i64).saturating_add(self.local_skew_ms).max(0) as u64
    }

    fn now(&self) -> u64 {
        (self.local_now() as i64 + self.offset_ms).max(0) as u64
    }

    /// Measures the offset with one `TIME` round trip.
    async fn measure(&mut self, client: &Client) -> Result<()> {
        let sent = self.local_now();
        let server_ms = store::cron::server_time_ms(&mut client.conn()).await?;
        self.observe(server_ms, sent, self.local_now());
        Ok(())
    }

    fn observe(&mut self, server_ms: i64, sent_local: u64, received_local: u64) {
        let mid = (sent_local as i64 + received_local as i64) / 2;
        self.offset_ms = server_ms - mid;
    }
}

/// One schedule's progress in this process.
#[derive(Debug)]
struct Cursor {
    /// Ticks at or before this are handled (or were skipped); `None` until the first tick of a
    /// [`MissedTicks::RunOnce`] schedule.
    done_until: Option<u64>,
    /// The last outcome class logged, so each change is logged once.
    standing: Standing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Active,
    Removed,
    Superseded,
}

/// Logs Redis trouble once per change of state.
#[derive(Debug)]
struct Health {
    failing: bool,
    backoff: Duration,
}

impl Health {
    fn new() -> Self {
        Self {
            failing: false,
            backoff: BACKOFF_START,
        }
    }

    fn failed(&mut self, what: &str, error: &Error) -> Duration {
        if !self.failing {
            warn!(error = %error, "scheduler: {what} failed; retrying with backoff");
            self.failing = true;
        } else {
            debug!(error = %error, "scheduler: {what} failed again");
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }

    fn ok(&mut self) {
        if self.failing {
            info!("scheduler: redis reachable again");
            self.failing = false;
        }
        self.backoff = BACKOFF_START;
    }
}

impl Scheduler {
    /// Starts building a scheduler on `client`.
    ///
    /// ```no_run
    /// # async fn demo() -> ostq::Result<()> {
    /// let client = ostq::Client::connect("redis://127.0.0.1:6379").await?;
    /// ostq::Scheduler::builder(client)
    ///     .cron("nightly", "reports", "0 2 * * *", "")
    ///     .build()?
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn builder(client: Client) -> SchedulerBuilder {
        SchedulerBuilder {
            client,
            schedules: Vec::new(),
            on_tick: None,
            local_skew_ms: 0,
        }
    }

    /// Writes the schedules to their queues' registries without firing anything (runs do this at
    /// start), so that inspection lists them. Fails on the first Redis error.
    pub async fn register(&self) -> Result<()> {
        let mut clock = ServerClock::with_local_skew(self.local_skew_ms);
        self.register_all(&mut clock).await
    }

    /// Runs until ctrl-c or SIGTERM.
    pub async fn run(self) -> Result<()> {
        self.run_until(crate::worker::shutdown_signal()).await
    }

    /// Registers the schedules, then fires their ticks until `shutdown` completes. Sleeps until
    /// the next tick of any schedule (no polling). Redis errors are logged once per change of
    /// state and retried with backoff (100 ms doubling to 5 s); they never end the run.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        tokio::pin!(shutdown);
        let mut clock = ServerClock::with_local_skew(self.local_skew_ms);
        let mut health = Health::new();
        // `started` must be on the server's clock. Read from an unmeasured (local) clock X ahead,
        // `Skip` skipped every tick of the first X after start; X behind, it fired ticks from
        // before the start. If Redis cannot be reached yet, the run starts once it can.
        loop {
            let wait = match clock.measure(&self.client).await {
                Ok(()) => break,
                Err(e) => health.failed("reading the server clock", &e),
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let started = clock.now();
        let mut cursors: Vec<Cursor> = self
            .schedules
            .iter()
            .map(|s| Cursor {
                done_until: match s.missed {
                    MissedTicks::Skip => Some(started),
                    MissedTicks::RunOnce => None,
                },
                standing: Standing::Active,
            })
            .collect();
        // Register first: a process whose registry entry is missing would fire nothing.
        loop {
            let wait = match self.register_all(&mut clock).await {
                Ok(()) => break,
                Err(e) => health.failed("registering schedules", &e),
            };
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        health.ok();
        info!(
            schedules = self.schedules.len(),
            "scheduler started: schedules registered"
        );
        loop {
            let wait = match self.fire_due(&mut cursors, &mut clock).await {
                Err(e) => health.failed("firing a schedule tick", &e),
                Ok(()) => {
                    health.ok();
                    self.until_next_tick(&cursors, clock.now())
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait.min(MAX_SLEEP)) => {}
            }
        }
        info!("scheduler stopped");
        Ok(())
    }

    /// Fires the latest due tick of every schedule not yet handled; stops at the first error.
    async fn fire_due(&self, cursors: &mut [Cursor], clock: &mut ServerClock) -> Result<()> {
        let now = clock.now();
        for (schedule, cursor) in self.schedules.iter().zip(cursors.iter_mut()) {
            let Some(due) = schedule.clock.latest_until(now) else {
                continue;
            };
            if cursor.done_until.is_some_and(|done| due <= done) {
                continue;
            }
            let catch_up = cursor.done_until.is_none();
            let outcome = self.fire(schedule, due, clock).await?;
            cursor.done_until = Some(due);
            note_standing(schedule, cursor, &outcome);
            if let Some(hook) = &self.on_tick {
                hook(&Tick {
                    schedule: schedule.name.clone(),
                    queue: schedule.keys.queue.clone(),
                    tick_ms: due,
                    catch_up,
                    outcome,
                });
            }
        }
        Ok(())
    }

    /// How long until the next tick of any schedule (at most [`MAX_SLEEP`]).
    fn until_next_tick(&self, cursors: &[Cursor], now: u64) -> Duration {
        let next = self
            .schedules
            .iter()
            .zip(cursors)
            .filter_map(|(s, c)| s.clock.next_after(c.done_until.unwrap_or(now)))
            .min();
        match next {
            Some(next) => Duration::from_millis(next.saturating_sub(now)),
            None => MAX_SLEEP,
        }
    }

    async fn register_all(&self, clock: &mut ServerClock) -> Result<()> {
        let mut conn = self.client.conn();
        for schedule in &self.schedules {
            self.client.register_queue(&schedule.keys.queue).await?;
            let next = schedule.clock.next_after(clock.now()).unwrap_or(0);
            let sent = clock.local_now();
            let (server_ms, changed) = store::cron::register(
                &mut conn,
                &schedule.keys,
                &schedule.name,
                &schedule.spec_json,
                next,
            )
            .await?;
            clock.observe(server_ms, sent, clock.local_now());
            if changed {
                info!(queue = %schedule.keys.queue, schedule = %schedule.name, spec = %schedule.spec_json, "schedule registered");
            }
        }
        Ok(())
    }

    async fn fire(
        &self,
        schedule: &Compiled,
        tick: u64,
        clock: &mut ServerClock,
    ) -> Result<TickOutcome> {
        let job_id = tick_job_id(&schedule.name, tick);
        let next = schedule.clock.next_after(tick).unwrap_or(0);
        let mut conn = self.client.conn();
        let sent = clock.local_now();
        let tick_job = TickJob {
            name: &schedule.name,
            spec_json: &schedule.spec_json,
            tick_ms: tick,
            next_tick_ms: next,
            job_id: &job_id,
            payload: &schedule.payload,
            task_name: &schedule.task_name,
            max_attempts: schedule.max_attempts,
            priority: schedule.priority,
            flags: schedule.flags,
        };
        let (outcome, server_ms) = store::cron::fire(&mut conn, &schedule.keys, &tick_job).await?;
        clock.observe(server_ms, sent, clock.local_now());
        Ok(match outcome.as_str() {
            "fired" => {
                debug!(queue = %schedule.keys.queue, schedule = %schedule.name, tick, "tick fired");
                TickOutcome::Fired { job_id }
            }
            "taken" => TickOutcome::Taken,
            "early" => TickOutcome::Early,
            "removed" => TickOutcome::Removed,
            "superseded" => TickOutcome::Superseded,
            other => return Err(Error::Protocol(format!("cron_fire.lua answered {other:?}"))),
        })
    }
}

/// Logs a schedule's change between active, removed and superseded, once per change.
fn note_standing(schedule: &Compiled, cursor: &mut Cursor, outcome: &TickOutcome) {
    let standing = match outcome {
        TickOutcome::Removed => Standing::Removed,
        TickOutcome::Superseded => Standing::Superseded,
        _ => Standing::Active,
    };
    if standing == cursor.standing {
        return;
    }
    let (queue, name) = (&schedule.keys.queue, &schedule.name);
    match standing {
        Standing::Removed => {
            info!(queue = %queue, schedule = %name, "schedule removed from the registry; not firing it")
        }
        Standing::Superseded => {
            info!(queue = %queue, schedule = %name, "schedule registered differently by another process; standing by")
        }
        Standing::Active => info!(queue = %queue, schedule = %name, "schedule firing again"),
    }
    cursor.standing = standing;
}

impl Client {
    /// The schedules registered on `queue`, by name.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// for s in client.schedules("reports").await? {
    ///     println!("{}: {:?} every {:?} ms, last tick {:?}", s.name, s.spec.cron, s.spec.every_ms, s.last_tick_ms);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn schedules(&self, queue: &str) -> Result<Vec<ScheduleInfo>> {
        let keys = QueueKeys::new(queue)?;
        let mut conn = self.conn();
        let entries = store::cron::specs(&mut conn, &keys).await?;
        let mut names: Vec<String> = entries.keys().cloned().collect();
        names.sort();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let states = store::cron::states(&mut conn, &keys, &names).await?;
        let mut out = Vec::with_capacity(names.len());
        for (name, (created, last, next, last_job, fired)) in names.into_iter().zip(states) {
            let json = entries.get(&name).map(String::as_str).unwrap_or("{}");
            let spec: ScheduleSpec = serde_json::from_str(json).map_err(|e| {
                Error::Protocol(format!(
                    "schedule {name:?} on {queue:?} has a bad spec: {e}"
                ))
            })?;
            out.push(ScheduleInfo {
                name,
                queue: queue.to_string(),
                spec,
                created_ms: created,
                last_tick_ms: last,
                next_tick_ms: next,
                last_job_id: last_job,
                fired: fired.unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Removes the schedule `name` from `queue`'s registry, with its state. Processes that still
    /// have it registered stop firing it at once; one that starts later with it registers it
    /// again (remove it from the code too). Returns whether it was registered.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// if client.remove_schedule("reports", "nightly").await? {
    ///     println!("removed");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn remove_schedule(&self, queue: &str, name: &str) -> Result<bool> {
        let keys = QueueKeys::new(queue)?;
        store::cron::remove(&mut self.conn(), &keys, name).await
    }
}

fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn clock_of(schedule: Schedule) -> Clock {
        schedule.compile().unwrap().clock
    }

    const T0: u64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z

    #[test]
    fn intervals_are_aligned_to_the_epoch() {
        let clock = clock_of(Schedule::every("s", "q", Duration::from_millis(200)));
        assert_eq!(clock.next_after(T0), Some(T0 + 200));
        assert_eq!(clock.next_after(T0 + 1), Some(T0 + 200));
        assert_eq!(clock.next_after(T0 + 199), Some(T0 + 200));
        assert_eq!(clock.latest_until(T0 + 199), Some(T0));
        assert_eq!(clock.latest_until(T0 + 200), Some(T0 + 200));
    }

    #[test]
    fn cron_seconds_are_optional_and_ticks_are_whole_seconds() {
        let every_second = clock_of(Schedule::cron("s", "q", "* * * * * *"));
        assert_eq!(every_second.next_after(T0), Some(T0 + 1000));
        assert_eq!(every_second.next_after(T0 + 500), Some(T0 + 1000));
        assert_eq!(every_second.latest_until(T0 + 999), Some(T0));
        assert_eq!(every_second.latest_until(T0 + 1000), Some(T0 + 1000));

        let minutely = clock_of(Schedule::cron("s", "q", "* * * * *"));
        // T0 is 22:13:20.
        assert_eq!(minutely.next_after(T0), Some(T0 + 40_000));
        assert_eq!(minutely.latest_until(T0), Some(T0 - 20_000));
    }

    #[test]
    fn cron_is_read_in_its_time_zone() {
        // 03:00 in Paris on 2023-11-15 (UTC+1) is 02:00 UTC.
        let paris = clock_of(Schedule::cron("s", "q", "0 3 * * *").time_zone("Europe/Paris"));
        let expected = DateTime::parse_from_rfc3339("2023-11-15T02:00:00Z")
            .unwrap()
            .timestamp_millis() as u64;
        assert_eq!(paris.next_after(T0), Some(expected));
        let utc = clock_of(Schedule::cron("s", "q", "0 3 * * *"));
        assert_eq!(utc.next_after(T0), Some(expected + 3_600_000));
    }

    #[test]
    fn bad_schedules_are_config_errors_naming_them() {
        let cases = [
            (
                Schedule::cron("x", "q", "61 * * * *"),
                "bad cron expression",
            ),
            (Schedule::cron("x", "q", "* * *"), "bad cron expression"),
            (Schedule::cron("x", "q", "0 0 30 2 *"), "never fires"),
            (
                Schedule::cron("x", "q", "* * * * *").time_zone("Mars/Olympus"),
                "unknown time zone",
            ),
            (
                Schedule::every("x", "q", Duration::from_millis(5)),
                "interval",
            ),
            (
                Schedule::every("x", "q", Duration::from_micros(10_500)),
                "interval",
            ),
            (
                Schedule::every("x", "a b", Duration::from_secs(1)),
                "queue name",
            ),
            (
                Schedule::every("x", "q", Duration::from_secs(1)).priority(5000),
                "priority",
            ),
        ];
        for (schedule, expected) in cases {
            let err = schedule.compile().unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Config(_)), "{text}");
            assert!(text.contains("schedule \"x\""), "{text}");
            assert!(text.contains(expected), "{text}");
        }
        let err = Schedule::every("a b", "q", Duration::from_secs(1))
            .compile()
            .unwrap_err();
        assert!(err.to_string().contains("schedule name"), "{err}");
    }

    #[test]
    fn specs_round_trip_and_keep_binary_payloads() {
        let compiled = Schedule::every("x", "q", Duration::from_secs(1))
            .payload([0u8, 255, 10])
            .compile()
            .unwrap();
        let spec: ScheduleSpec = serde_json::from_str(&compiled.spec_json).unwrap();
        assert!(spec.payload_hex);
        assert_eq!(spec.payload_bytes(), vec![0, 255, 10]);
        assert_eq!(spec.every_ms, Some(1000));
        assert_eq!(spec.time_zone, "UTC");
    }

    /// A registry entry read back gives the same spec, byte for byte: processes running
    /// schedules they did not define (`ostq scheduler`) agree with the one that registered them.
    #[test]
    fn a_schedule_from_its_registry_entry_registers_the_same_spec() {
        let originals = [
            Schedule::cron("nightly", "reports", "30 2 * * *")
                .time_zone("Europe/Paris")
                .missed(MissedTicks::RunOnce)
                .payload(r#"{"kind":"full"}"#)
                .task_name("report")
                .priority(5)
                .max_attempts(3)
                .track(),
            Schedule::every("poll", "feeds", Duration::from_millis(1500)).payload([0u8, 255]),
        ];
        for original in originals {
            let compiled = original.compile().unwrap();
            let info = ScheduleInfo {
                name: compiled.name.clone(),
                queue: compiled.keys.queue.clone(),
                spec: serde_json::from_str(&compiled.spec_json).unwrap(),
                created_ms: None,
                last_tick_ms: None,
                next_tick_ms: None,
                last_job_id: None,
                fired: 0,
            };
            let again = Schedule::from_info(&info).compile().unwrap();
            assert_eq!(again.spec_json, compiled.spec_json);
        }
        let mut broken: ScheduleSpec = serde_json::from_str("{}").unwrap();
        broken.payload = "zz".into();
        let info = ScheduleInfo {
            name: "b".into(),
            queue: "q".into(),
            spec: broken,
            created_ms: None,
            last_tick_ms: None,
            next_tick_ms: None,
            last_job_id: None,
            fired: 0,
        };
        assert!(Schedule::from_info(&info).compile().is_err());
    }
}
