//! Export and import of queues as JSON Lines (`ostq export`, `ostq import`; the format is
//! documented in docs/backup.md).
//!
//! A file is a [`Line::Header`] first, then per queue a [`Line::Queue`] (its settings), one
//! [`Line::Schedule`] per cron or interval schedule, and one [`Line::Job`] per job ([`JobInfo`]'s stable JSON form: payload as text, or
//! `payload_base64` when it is not UTF-8):
//!
//! ```json
//! {"type":"header","format":"ostq-export","version":1,"ostq_version":"0.1.0","exported_at_ms":1764160000000}
//! {"type":"queue","queue":"videos","paused":false,"rate_limit":null}
//! {"type":"job","id":"01J…","queue":"videos","state":"dead","name":null,"payload":"42","attempts":3,…}
//! ```
//!
//! Export ([`Queue::exporter`]) pages through each state with [`Queue::page`]'s cursors, one
//! page in memory at a time. Import ([`Importer`]) is idempotent by job id: a job the target
//! queue already holds is left as it is and counted, so importing a file twice adds nothing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::admin::Cursor;
use crate::envelope::{Envelope, FLAG_TRACKED};
use crate::job::{JobInfo, JobState};
use crate::keys::QueueKeys;
use crate::producer::Queue;
use crate::scheduler::{Schedule, ScheduleInfo, ScheduleSpec, Scheduler};
use crate::store::backup::{self as stored, JobWrite, Slot};
use crate::{Client, Result};

/// The `format` of a header line.
pub const FORMAT: &str = "ostq-export";
/// The version of the format this library writes and reads. A later version may add fields
/// (readers ignore unknown ones); a change readers cannot ignore raises it.
pub const FORMAT_VERSION: u32 = 1;
/// Jobs read per page while exporting.
pub const EXPORT_PAGE: usize = 500;
/// How long an imported completed job's status record is kept (the default completed
/// retention of workers).
pub const COMPLETED_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// The states exported, in this order. Active jobs are exported with `"state":"active"` and
/// imported as pending (their attempt had not ended), with their attempt count.
pub const EXPORT_STATES: [JobState; 6] = [
    JobState::Pending,
    JobState::Active,
    JobState::Scheduled,
    JobState::Retry,
    JobState::Dead,
    JobState::Completed,
];

/// A queue's settings as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueSettings {
    /// The queue.
    pub queue: String,
    /// Whether workers are told not to fetch.
    pub paused: bool,
    /// The rate limit, if any.
    pub rate_limit: Option<RateLimit>,
}

/// A queue's rate limit: at most `max` jobs started per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Jobs per period.
    pub max: u32,
    /// The period in milliseconds.
    pub period_ms: u64,
}

/// One line of an export file.
///
/// ```
/// use ostq::admin::backup::Line;
/// let header = Line::header(1_764_160_000_000);
/// let text = serde_json::to_string(&header).unwrap();
/// assert!(text.starts_with(r#"{"type":"header","format":"ostq-export","version":1"#));
/// assert_eq!(Line::parse(&text).unwrap(), header);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// The first line: the format and its version.
    Header {
        /// Always [`FORMAT`].
        format: String,
        /// [`FORMAT_VERSION`] of the writer.
        version: u32,
        /// The ostq version that wrote it.
        ostq_version: String,
        /// When the export started, unix ms (this host's clock).
        exported_at_ms: u64,
    },
    /// A queue's settings, before its jobs.
    Queue(QueueSettings),
    /// One job.
    Job(JobInfo),
    /// A cron or interval schedule of the queue (after its settings, before its jobs).
    Schedule(ScheduleLine),
}

/// A schedule as exported: its queue, name and the registry's spec (cron or interval, payload,
/// time zone, task, priority…). Its firing state (last tick) is not carried: the target's
/// schedulers start from the next tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ScheduleLine {
    /// The queue its jobs go to.
    pub queue: String,
    /// The schedule's name.
    pub name: String,
    /// What it fires and when, as registered.
    pub spec: ScheduleSpec,
}

impl Line {
    /// The header this version writes.
    pub fn header(exported_at_ms: u64) -> Line {
        Line::Header {
            format: FORMAT.to_string(),
            version: FORMAT_VERSION,
            ostq_version: env!("CARGO_PKG_VERSION").to_string(),
            exported_at_ms,
        }
    }

    /// Parses and checks one line: JSON of a known type, a header of a version this library
    /// reads, valid queue names, job ids, states and priorities. Says what is wrong otherwise.
    ///
    /// ```
    /// use ostq::admin::backup::Line;
    /// assert!(Line::parse(r#"{"type":"queue","queue":"a b","paused":false,"rate_limit":null}"#).is_err());
    /// ```
    pub fn parse(text: &str) -> std::result::Result<Line, String> {
        let line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match &line {
            Line::Header {
                format, version, ..
            } => {
                if format != FORMAT {
                    return Err(format!("not an ostq export (format {format:?})"));
                }
                if *version == 0 || *version > FORMAT_VERSION {
                    return Err(format!(
                        "format version {version}: this ostq reads versions 1 to {FORMAT_VERSION}"
                    ));
                }
            }
            Line::Queue(settings) => {
                QueueKeys::new(&settings.queue).map_err(|e| e.to_string())?;
                if let Some(limit) = settings.rate_limit {
                    if limit.max == 0 || limit.period_ms == 0 {
                        return Err("rate_limit needs max and period_ms above 0".into());
                    }
                }
            }
            Line::Job(job) => check_job(job)?,
            Line::Schedule(line) => {
                // The checks of building a scheduler: name, queue, expression, time zone,
                // interval, payload, priority.
                Schedule::from_info(&line.to_info())
                    .check()
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(line)
    }
}

impl ScheduleLine {
    fn to_info(&self) -> ScheduleInfo {
        ScheduleInfo {
            name: self.name.clone(),
            queue: self.queue.clone(),
            spec: self.spec.clone(),
            created_ms: None,
            last_tick_ms: None,
            next_tick_ms: None,
            last_job_id: None,
            fired: 0,
        }
    }
}

fn check_job(job: &JobInfo) -> std::result::Result<(), String> {
    QueueKeys::new(&job.queue).map_err(|e| e.to_string())?;
    if job.id.is_empty() || job.id.len() > 255 {
        return Err(format!("job id of {} bytes (1 to 255)", job.id.len()));
    }
    if job.id == "(unassigned)" {
        // A bare entry not yet leased: it has no id of its own. Exported with its payload
        // and imported as a new job under a fresh id would not be idempotent; refuse.
        return Err("a bare entry without an id cannot be imported idempotently".into());
    }
    if !(-1000..=1000).contains(&job.priority) {
        return Err(format!("priority {} outside -1000..=1000", job.priority));
    }
    if job.payload.is_none() && job.state != JobState::Completed {
        return Err(format!("job {} has no payload", job.id));
    }
    Ok(())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Streams one queue's settings and jobs, a page at a time (see [`Queue::exporter`]).
#[derive(Debug)]
pub struct Exporter {
    queue: Queue,
    states: std::vec::IntoIter<JobState>,
    state: Option<JobState>,
    cursor: Option<Cursor>,
    settings_sent: bool,
}

impl Queue {
    /// An exporter of this queue: [`Exporter::next_lines`] returns its settings, then its jobs
    /// state by state ([`EXPORT_STATES`]) a page at a time, then `None`. Memory stays at one
    /// page whatever the queue's size. Under live traffic a job that changes state while the
    /// export runs can appear twice (in both states) or not at all (it moved to a state already
    /// exported); `ostq export --pause` pauses the queue to export a still picture of pending.
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let mut export = client.queue("videos").exporter();
    /// while let Some(lines) = export.next_lines().await? {
    ///     for line in lines {
    ///         println!("{}", serde_json::to_string(&line).unwrap());
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn exporter(&self) -> Exporter {
        Exporter {
            queue: self.clone(),
            states: EXPORT_STATES.to_vec().into_iter(),
            state: None,
            cursor: None,
            settings_sent: false,
        }
    }
}

impl Exporter {
    /// The next lines, `None` at the end.
    pub async fn next_lines(&mut self) -> Result<Option<Vec<Line>>> {
        if !self.settings_sent {
            self.settings_sent = true;
            let counts = self.queue.counts().await?;
            let rate_limit = self
                .queue
                .rate_limit()
                .await?
                .map(|(max, period)| RateLimit {
                    max,
                    period_ms: period.as_millis() as u64,
                });
            let mut lines = vec![Line::Queue(QueueSettings {
                queue: self.queue.name().to_string(),
                paused: counts.paused,
                rate_limit,
            })];
            let schedules = self.queue.client_ref().schedules(self.queue.name()).await?;
            lines.extend(schedules.into_iter().map(|info| {
                Line::Schedule(ScheduleLine {
                    queue: info.queue,
                    name: info.name,
                    spec: info.spec,
                })
            }));
            return Ok(Some(lines));
        }
        loop {
            let state = match self.state {
                Some(state) => state,
                None => match self.states.next() {
                    Some(state) => {
                        self.state = Some(state);
                        self.cursor = None;
                        state
                    }
                    None => return Ok(None),
                },
            };
            let page = self
                .queue
                .page(state, self.cursor.as_ref(), EXPORT_PAGE)
                .await?;
            self.cursor = page.next;
            if self.cursor.is_none() {
                self.state = None;
            }
            let lines: Vec<Line> = page
                .jobs
                .into_iter()
                // Bare entries (a hand-pushed LPUSH not yet leased) have no id to import by.
                .filter(|job| job.id != "(unassigned)")
                .map(Line::Job)
                .collect();
            if !lines.is_empty() {
                return Ok(Some(lines));
            }
        }
    }
}

/// What an import did.
///
/// JSON: `{"queues": 1, "imported": 10, "present": 2, "schedules": 1, "schedules_present": 0}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ImportCounts {
    /// Queue settings applied.
    pub queues: u64,
    /// Jobs written.
    pub imported: u64,
    /// Jobs left alone because the target already had a job with their id.
    pub present: u64,
    /// Schedules registered.
    pub schedules: u64,
    /// Schedules left alone because the target queue had one of that name.
    pub schedules_present: u64,
}

/// Writes validated lines into a Redis (see [`Client::importer`]).
#[derive(Debug)]
pub struct Importer {
    client: Client,
    /// Ids of the jobs each target queue holds in lists and lease groups, and of the untracked
    /// ready jobs imported so far: the ones Redis cannot find by id (the jobs hash and status
    /// records are asked per batch). Kept as [`IdDigest`]s: a sixth of the memory of the ids.
    known: HashMap<String, HashSet<u128>>,
    digest: IdDigest,
    counts: ImportCounts,
}

/// A 128-bit digest of a job id: two SipHash-1-3 hashes under independent random keys. Two
/// ids of one import share a digest with a probability of about n²/2¹²⁹ (10⁻²¹ for a billion
/// jobs); such a job would be counted as present instead of imported.
#[derive(Debug, Default)]
struct IdDigest(std::hash::RandomState, std::hash::RandomState);

impl IdDigest {
    fn of(&self, id: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.0.hash_one(id)) << 64) | u128::from(self.1.hash_one(id))
    }
}

impl Client {
    /// An importer into this Redis. Feed it batches of lines checked by [`Line::parse`]; each
    /// batch is written per queue in one `MULTI`/`EXEC`. A job whose id the target queue
    /// already holds (in any state) is left as it is and counted in
    /// [`ImportCounts::present`]. To find pending and running jobs by id, the importer lists
    /// the ids of each target queue's pending and active jobs once (memory: those ids).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client, text: &str) -> ostq::Result<()> {
    /// use ostq::admin::backup::Line;
    /// let lines: Vec<Line> = text.lines().map(Line::parse).collect::<Result<_, _>>()
    ///     .map_err(ostq::Error::Config)?;
    /// let mut importer = client.importer();
    /// importer.write(&lines).await?;
    /// println!("{:?}", importer.counts());
    /// # Ok(()) }
    /// ```
    pub fn importer(&self) -> Importer {
        Importer {
            client: self.clone(),
            known: HashMap::new(),
            digest: IdDigest::default(),
            counts: ImportCounts::default(),
        }
    }
}

impl Importer {
    /// What was done so far.
    pub fn counts(&self) -> &ImportCounts {
        &self.counts
    }

    /// Writes a batch of lines (headers are skipped; queue settings applied; jobs filed in
    /// their states).
    pub async fn write(&mut self, lines: &[Line]) -> Result<()> {
        let mut per_queue: Vec<(String, Vec<&JobInfo>)> = Vec::new();
        for line in lines {
            match line {
                Line::Header { .. } => {}
                Line::Queue(settings) => {
                    let queue = self.client.queue(&settings.queue);
                    if settings.paused {
                        queue.pause().await?;
                    }
                    if let Some(limit) = settings.rate_limit {
                        queue
                            .set_rate_limit(limit.max, Duration::from_millis(limit.period_ms))
                            .await?;
                    }
                    self.client.register_queue(&settings.queue).await?;
                    self.counts.queues += 1;
                }
                Line::Schedule(line) => self.write_schedule(line).await?,
                Line::Job(job) => match per_queue.iter_mut().find(|(q, _)| *q == job.queue) {
                    Some((_, jobs)) => jobs.push(job),
                    None => per_queue.push((job.queue.clone(), vec![job])),
                },
            }
        }
        for (queue, jobs) in per_queue {
            // A sharded queue (design §19): each job goes to the shard a push of its id goes
            // to (a generated id names its shard), where `find_job` looks for it first.
            let (layout, _) = self.client.queue(&queue).shard_set().await?;
            if layout.count() == 1 {
                self.write_queue(&queue, &queue, &jobs).await?;
                continue;
            }
            let mut groups: Vec<Vec<&JobInfo>> = vec![Vec::new(); layout.count()];
            for job in jobs {
                if let Some(group) = groups.get_mut(layout.shard_of_id(&job.id)) {
                    group.push(job);
                }
            }
            for (shard, group) in layout.shards.iter().zip(&groups) {
                if !group.is_empty() {
                    self.write_queue(&queue, shard, group).await?;
                }
            }
        }
        Ok(())
    }

    /// Registers a schedule unless the target queue has one of that name (left as it is).
    async fn write_schedule(&mut self, line: &ScheduleLine) -> Result<()> {
        let existing = self.client.schedules(&line.queue).await?;
        if existing.iter().any(|s| s.name == line.name) {
            self.counts.schedules_present += 1;
            return Ok(());
        }
        Scheduler::builder(self.client.clone())
            .schedule(Schedule::from_info(&line.to_info()))
            .build()?
            .register()
            .await?;
        self.counts.schedules += 1;
        Ok(())
    }

    /// Files `jobs` of queue `queue` in its physical queue `physical` (the queue itself, or
    /// one of its shards).
    async fn write_queue(&mut self, queue: &str, physical: &str, jobs: &[&JobInfo]) -> Result<()> {
        QueueKeys::new(queue)?;
        let keys = QueueKeys::physical(physical)?;
        if !self.known.contains_key(queue) {
            let ids = self.listed_ids(queue).await?;
            self.known.insert(queue.to_string(), ids);
        }
        let mut conn = self.client.conn();
        let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
        let present = stored::ids_present(&mut conn, &keys, &ids).await?;
        let known = self.known.entry(queue.to_string()).or_default();
        // A line listed twice in one batch (an export under live traffic can list a job in
        // two states) is written once.
        let mut in_batch: HashSet<&str> = HashSet::new();
        let mut fresh = Vec::new();
        for (job, present) in jobs.iter().zip(present) {
            let digest = self.digest.of(&job.id);
            if present || known.contains(&digest) || !in_batch.insert(&job.id) {
                self.counts.present += 1;
                continue;
            }
            if is_ready(job.state) && !job.tracked {
                // Nothing in Redis finds it by id once written: remember it.
                known.insert(digest);
            }
            fresh.push(*job);
        }
        let prioritized = fresh
            .iter()
            .filter(|j| is_ready(j.state) && j.priority != 0)
            .count() as u64;
        let mut seq = if prioritized > 0 {
            stored::reserve_seq(&mut conn, &keys, prioritized).await?
        } else {
            0
        };
        let mut writes = Vec::with_capacity(fresh.len());
        for job in &fresh {
            writes.push(job_write(job, &keys, &mut seq));
        }
        stored::write_jobs(&mut conn, &keys, &writes).await?;
        self.client.register_queue(queue).await?;
        self.counts.imported += writes.len() as u64;
        Ok(())
    }

    /// The ids of the queue's pending and active jobs, paged.
    async fn listed_ids(&self, queue: &str) -> Result<HashSet<u128>> {
        let queue = self.client.queue(queue);
        let mut ids = HashSet::new();
        for state in [JobState::Pending, JobState::Active] {
            let mut cursor = None;
            loop {
                let page = queue.page(state, cursor.as_ref(), EXPORT_PAGE).await?;
                ids.extend(page.jobs.iter().map(|j| self.digest.of(&j.id)));
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        Ok(ids)
    }
}

fn is_ready(state: JobState) -> bool {
    matches!(state, JobState::Pending | JobState::Active)
}

/// The envelope, place and status record of one imported job.
fn job_write(job: &JobInfo, keys: &QueueKeys, seq: &mut u64) -> JobWrite {
    let envelope = Envelope {
        id: job.id.clone(),
        flags: if job.tracked { FLAG_TRACKED } else { 0 },
        payload: job.payload.clone().unwrap_or_default(),
        name: job.name.clone().unwrap_or_default(),
        attempt: job.attempts,
        max_attempts: job.max_attempts,
        priority: job.priority,
        enqueued_at_ms: job.enqueued_at_ms.unwrap_or_else(now_ms),
        last_error: job.last_error.clone().unwrap_or_default(),
        ..Envelope::default()
    };
    let due = || job.due_at_ms.unwrap_or_else(now_ms);
    let slot = match job.state {
        JobState::Pending | JobState::Active if job.priority == 0 => Slot::Pending,
        JobState::Pending | JobState::Active => {
            let score = -(f64::from(job.priority)) * 2f64.powi(42) + *seq as f64;
            *seq += 1;
            Slot::Prioritized(score)
        }
        JobState::Scheduled => Slot::Indexed {
            key: keys.scheduled.clone(),
            score: due(),
        },
        JobState::Retry => Slot::Indexed {
            key: keys.retry.clone(),
            score: due(),
        },
        JobState::Dead => Slot::Indexed {
            key: keys.dead.clone(),
            score: job.finished_at_ms.unwrap_or_else(now_ms),
        },
        JobState::Completed => Slot::Completed(job.finished_at_ms.unwrap_or_else(now_ms)),
    };
    let state = match job.state {
        JobState::Active => JobState::Pending,
        other => other,
    };
    let mut record: Vec<(&'static str, Vec<u8>)> = Vec::new();
    if job.tracked || job.state == JobState::Completed {
        record.push(("state", state.as_str().as_bytes().to_vec()));
        record.push(("attempt", job.attempts.to_string().into_bytes()));
        let mut time = |field: &'static str, value: Option<u64>| {
            if let Some(ms) = value {
                record.push((field, ms.to_string().into_bytes()));
            }
        };
        time("enqueued_at", job.enqueued_at_ms);
        time("run_at", job.due_at_ms.or(job.enqueued_at_ms));
        time("started_at", job.started_at_ms);
        time("finished_at", job.finished_at_ms);
        if let Some(error) = &job.last_error {
            record.push(("error", error.as_bytes().to_vec()));
        }
        if let Some(result) = &job.result {
            if !result.is_empty() {
                record.push(("result", result.clone()));
            }
        }
        if let Some(progress) = &job.progress {
            record.push(("progress", progress.as_bytes().to_vec()));
        }
    }
    JobWrite {
        id: job.id.clone(),
        envelope: envelope.encode(),
        slot,
        record,
        record_ttl_secs: (job.state == JobState::Completed)
            .then_some(COMPLETED_RETENTION.as_secs()),
    }
}

/// Applies `--rename OLD=NEW` to a line's queue names.
///
/// ```
/// use ostq::admin::backup::{rename, Line};
/// let mut line = Line::parse(r#"{"type":"queue","queue":"a","paused":false,"rate_limit":null}"#).unwrap();
/// rename(&mut line, &[("a".into(), "b".into())]);
/// assert!(matches!(line, Line::Queue(s) if s.queue == "b"));
/// ```
pub fn rename(line: &mut Line, renames: &[(String, String)]) {
    let name = match line {
        Line::Header { .. } => return,
        Line::Queue(settings) => &mut settings.queue,
        Line::Job(job) => &mut job.queue,
        Line::Schedule(schedule) => &mut schedule.queue,
    };
    if let Some((_, new)) = renames.iter().find(|(old, _)| old == name) {
        *name = new.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_checked_like_a_scheduler_checks_them() {
        let line = |cron: &str| {
            format!(
                r#"{{"type":"schedule","queue":"q","name":"n","spec":{{"cron":"{cron}","payload":"","payload_hex":false,"tz":"UTC","priority":0,"max_attempts":0,"track":false,"missed":"skip"}}}}"#
            )
        };
        let good = Line::parse(&line("0 2 * * *"));
        assert!(matches!(good, Ok(Line::Schedule(_))), "{good:?}");
        let bad = Line::parse(&line("61 * * * *")).unwrap_err();
        assert!(bad.contains("bad cron expression"), "{bad}");
    }

    #[test]
    fn a_later_format_version_is_refused() {
        let text = r#"{"type":"header","format":"ostq-export","version":2,"ostq_version":"9","exported_at_ms":1}"#;
        assert!(Line::parse(text).unwrap_err().contains("format version 2"));
    }
}
