//! The command line: every command, option and the help texts that teach them.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::util::{parse_durability, parse_duration, parse_rate, parse_rfc3339, parse_state, Rate};

const ABOUT: &str = "ostq: a Redis-backed task queue, from the shell";

const LONG_ABOUT: &str = "\
ostq: a Redis-backed task queue, from the shell.

Producers push jobs (a payload: an id, a line of text, any bytes) onto named queues; workers take
them, run them, and retry the ones that fail. A job a worker took is leased: if the worker dies,
another one picks the job up when the lease runs out, so nothing is lost.";

const AFTER_HELP: &str = "\
A five-minute tour:
  ostq demo                                   # the whole story on a private redis-server
  ostq push videos 42 43 44                   # three jobs on the queue 'videos'
  ostq worker --queue videos -- ./transcode {}  # run ./transcode 42, ./transcode 43, ...
  ostq stats                                  # counts per state, throughput, latency
  ostq jobs videos --state dead               # what failed for good, and why
  ostq retry videos --all-dead                # give them another go

Redis is found at --url, else $OSTQ_URL, else $REDIS_URL, else redis://127.0.0.1:6379.
Exit codes: 0 ok, 1 error, 2 bad command line, 3 an alert threshold of `ostq stats` exceeded.";

/// The `ostq` command line.
#[derive(Debug, Parser)]
#[command(
    name = "ostq",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Redis to use: redis://[user:password@]host[:port][/db] (rediss:// for TLS),
    /// redis+sentinel://host:port[,host:port]/<service>, redis+cluster://host:port[,host:port]
    /// [default: $REDIS_URL, else redis://127.0.0.1:6379]
    #[arg(long, global = true, env = "OSTQ_URL", value_name = "URL")]
    pub url: Option<String>,

    /// Print data as JSON (one document on stdout) instead of text for people
    #[arg(long, global = true)]
    pub json: bool,
}

impl Global {
    /// The Redis URL in force: --url, $OSTQ_URL, $REDIS_URL, or the local default.
    pub fn redis_url(&self) -> String {
        self.url
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()))
            .unwrap_or_else(|| "redis://127.0.0.1:6379".to_string())
    }

    /// Whether a Redis URL was chosen explicitly (flag or environment).
    pub fn url_given(&self) -> bool {
        self.url.as_deref().is_some_and(|u| !u.is_empty())
            || std::env::var("REDIS_URL").is_ok_and(|u| !u.is_empty())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Push jobs onto a queue (from arguments, a file, or stdin)
    #[command(after_help = PUSH_AFTER)]
    Push(PushArgs),
    /// Run a program for every job: any program becomes a worker
    #[command(after_help = WORKER_AFTER)]
    Worker(WorkerArgs),
    /// Counts, throughput, failure rate and latency per queue; alert thresholds for cron
    #[command(after_help = STATS_AFTER)]
    Stats(StatsArgs),
    /// List the jobs of a queue in one state
    #[command(after_help = JOBS_AFTER)]
    Jobs(JobsArgs),
    /// Show one job: state, attempts, last error, payload, result
    #[command(after_help = JOB_AFTER)]
    Job(JobArgs),
    /// Run scheduled, retry or dead jobs again, now
    #[command(after_help = RETRY_AFTER)]
    Retry(RetryArgs),
    /// Delete jobs by id, in whatever state they are
    Delete(DeleteArgs),
    /// Delete every job of a queue, or every job in one state
    #[command(after_help = PURGE_AFTER)]
    Purge(PurgeArgs),
    /// Remove a queue: its jobs, counters, settings and history, and its name from the list
    #[command(after_help = REMOVE_AFTER)]
    Remove(RemoveArgs),
    /// Stop workers from taking jobs from a queue (pushes are still accepted)
    Pause(QueueArg),
    /// Let workers take jobs from a paused queue again
    Resume(QueueArg),
    /// Show a queue's shards, or give it N shards (one logical queue over N physical queues,
    /// spread over a Redis Cluster's primaries; workers pick up a new count when they restart)
    Shards(ShardsArgs),
    /// List the queues ever pushed to or served
    Queues(QueuesArgs),
    /// List the live workers: host, pid, queues, busy slots, started, last heartbeat
    Workers(WorkersArgs),
    /// What each task did per minute or hour: counts, run and wait time percentiles
    #[command(after_help = HISTORY_AFTER)]
    History(HistoryArgs),
    /// Serve Prometheus metrics on /metrics: queues, workers and Redis, read at each scrape
    #[command(after_help = METRICS_AFTER)]
    Metrics(MetricsArgs),
    /// Serve the web dashboard: queues, jobs, workers, bulk actions (a token off loopback)
    #[command(after_help = DASHBOARD_AFTER)]
    Dashboard(DashboardArgs),
    /// Play the whole story on a private redis-server: push, work, retry, dead set, delays
    #[command(after_help = DEMO_AFTER)]
    Demo(DemoArgs),
    /// Measure enqueue and processing rates, idle latency and memory per job on this Redis
    #[command(after_help = BENCH_AFTER)]
    Bench(BenchArgs),
    /// Print a Lua script as Redis runs it (for EVAL from redis-cli or another language)
    #[command(after_help = SCRIPT_AFTER)]
    Script(ScriptArgs),
    /// Timed jobs: add, list and remove schedules (`ostq scheduler` or `ostq worker --cron`
    /// fires them)
    #[command(after_help = CRON_AFTER)]
    Cron(CronArgs),
    /// Fire the jobs of every registered schedule on time, exactly once per tick however many
    /// schedulers run
    #[command(after_help = CRON_AFTER)]
    Scheduler(SchedulerArgs),
    /// Print a queue's events as they happen (pushed, started, completed, failed, dead, …)
    #[command(after_help = EVENTS_AFTER)]
    Events(EventsArgs),
    /// Check the Redis deployment and the queues: eviction, persistence, memory, ACL, Cluster,
    /// clock, workers; PASS / WARN / FAIL with the fix for each
    #[command(after_help = DOCTOR_AFTER)]
    Doctor(DoctorArgs),
    /// Write every job of some queues (all states), their settings, to a JSON Lines file
    #[command(after_help = BACKUP_AFTER)]
    Export(ExportArgs),
    /// Read an export file into this Redis; a job whose id is already there is left alone
    #[command(after_help = BACKUP_AFTER)]
    Import(ImportArgs),
}

const BACKUP_AFTER: &str = "\
Examples:
  ostq export -o backup.jsonl                       # every queue
  ostq export videos thumbs --pause -o v.jsonl      # these queues, paused while exported
  ostq --url redis://b:6379 import v.jsonl          # restore into another Redis
  ostq import v.jsonl --rename videos=videos-copy   # under another queue name
  ostq import dirty.jsonl --skip-bad                # skip (and list) malformed lines

The format (one JSON object per line, a header first) is in docs/backup.md. Import reads the
whole file once to check every line before it writes anything: a malformed line stops it with
its line number and nothing written, unless --skip-bad. Importing the same file twice adds
nothing: jobs are matched by id.";

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The queues (default: every queue)
    pub queues: Vec<String>,

    /// Write to this file instead of stdout
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Pause the queues while exporting (resumed after, unless they were paused before), so
    /// that workers move no job between states meanwhile
    #[arg(long)]
    pub pause: bool,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The export file (`-` for stdin is not supported: the file is read twice)
    pub file: PathBuf,

    /// Import the queue OLD as NEW (repeatable)
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_rename)]
    pub rename: Vec<(String, String)>,

    /// Skip malformed lines (listed on stderr) instead of stopping before any write
    #[arg(long)]
    pub skip_bad: bool,
}

fn parse_rename(text: &str) -> Result<(String, String), String> {
    let (old, new) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected OLD=NEW"))?;
    for name in [old, new] {
        ostq::keys::validate_queue_name(name).map_err(|e| e.to_string())?;
    }
    Ok((old.to_string(), new.to_string()))
}

const DOCTOR_AFTER: &str = "\
Examples:
  ostq doctor                          # one line per check, the fix under each that did not pass
  ostq doctor --json                   # the report as JSON (ostq::admin::doctor::Report)
  ostq doctor --strict && ./deploy.sh  # refuse to go on with warnings too

Checks: server (Redis, Valkey, Dragonfly, KeyDB; version 6.2 or later), eviction
(maxmemory-policy must be noeviction), persistence (AOF, appendfsync), memory (headroom to
maxmemory), acl (ACL DRYRUN of every command ostq needs on ostq:*, Redis 7), cluster (every slot
assigned), scripts (live workers of another ostq version), clock (skew to Redis TIME above 1 s),
workers (queues with pending jobs and no live worker), leases (lease groups over a minute past
their deadline: nobody fetches to recover them), dead (dead sets near the default cap of
10,000). A check that cannot get its answers (a
command the ACL user may not run) says \"cannot check\" and warns.

Exit codes: 0 every check passed or only warned, 3 a check failed (jobs can be lost or workers
cannot run), 4 with --strict when the worst is a warning, 1 Redis could not be asked.";

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Exit 4 when a check warns (without it, warnings exit 0: they are trade-offs, such as no
    /// maxmemory on a default redis-server)
    #[arg(long)]
    pub strict: bool,
}

const CRON_AFTER: &str = "\
Examples:
  ostq cron add reports nightly --cron '30 2 * * *' --tz Europe/Paris --payload full
  ostq cron add feeds poll --every 10s --payload rss --task fetch
  ostq cron list                      # every schedule of every queue: next and last tick
  ostq cron remove reports nightly
  ostq scheduler                      # fires them (run two or more: each tick fires once)
  ostq worker -q reports --cron -- ./report.sh   # or let workers fire them too

A schedule lives in Redis, in its queue's registry: any process may fire it, and each tick is
enqueued exactly once however many do (the job id is cron:<name>:<tick>). Ticks missed while no
scheduler ran are skipped, or the last one is fired once with --run-missed. Schedules registered
by the library's Scheduler are listed and fired the same way.";

const EVENTS_AFTER: &str = "\
Examples:
  ostq events videos --enable      # turn the queue's events on (stream and pub/sub), then tail
  ostq events videos --from-start  # everything the stream still holds (about 10,000), then tail
  ostq --json events videos        # one JSON object per line

Events cost nothing while off (the default); --enable turns them on for every producer and
worker of the queue (they notice within a second), --disable turns them off again.";

const SCRIPT_AFTER: &str = "\
Examples:
  ostq script push > push.lua                  # enqueue with every option from any language
  redis-cli EVAL \"$(ostq script push)\" 5 'ostq:{videos}:pending' 'ostq:{videos}:prioritized' \\
    'ostq:{videos}:scheduled' 'ostq:{videos}:jobs' 'ostq:{videos}:seq' 'ostq:{videos}:' '' 43 '' 0 0 0 0 0 '' 0
  ostq script --list                           # the names

Each script's header names its KEYS and ARGV; docs/design.md describes them.";

const PUSH_AFTER: &str = "\
Examples:
  ostq push videos 42                          # one job, payload \"42\"
  ostq push videos 42 43 44 --priority 5       # three jobs that jump the line
  ostq push reports monthly --delay 10m        # run in ten minutes
  ostq push mail 'to=ana' --at 2030-01-01T09:00:00+01:00
  seq 1 100000 | ostq push numbers --file -    # one job per line, pipelined in batches
  ostq push videos 42 --json                   # prints [\"<job id>\"]
  ostq push numbers -- -5 --not-a-flag         # after --, everything is a payload";

const WORKER_AFTER: &str = "\
How the program gets the payload:
  ostq worker -q videos -- ./transcode {}        # argument: ./transcode <payload>
  ostq worker -q videos -- ./transcode --id={}   # inside an argument, like find -exec
  ostq worker -q lines -- ./consume              # no {}: the payload is written to stdin

The program is started directly, never through a shell: a payload such as `$(rm -rf ~)` arrives as
those bytes and nothing runs it. Each run sees OSTQ_JOB_ID, OSTQ_QUEUE, OSTQ_ATTEMPT (from 1) and OSTQ_TASK (the job's task name, empty for none).

Exit status 0 completes the job; its stdout (the first 64 KiB) becomes the job's result, readable
with `ostq job` for jobs pushed with --track. Any other status fails the attempt with the exit
code and the end of stderr as the error; failed jobs are retried with backoff, then land in the
dead set. A program still running after --timeout is killed (with its children) and the attempt
fails. Processes a program leaves behind are killed when it exits. Ctrl-c or SIGTERM stop
taking jobs and let running ones finish (--shutdown-timeout).

  ostq worker -q videos --burst -- ./transcode {}   # drain the queue, then exit 0";

const STATS_AFTER: &str = "\
Columns: jobs per state; processed/failed attempts since the queue began; failure rate
(failed/processed); throughput in jobs/s; the age of the job that runs next (latency).

Throughput is measured, not guessed: a one-shot `ostq stats` samples the processed counter over
--sample (1s), `--watch` over the last minute.

For cron and monitoring, exit code 3 and one line on stderr per threshold exceeded:
  ostq stats --max-pending 10000 --max-failure-rate 0.05 --max-latency 5m
  ostq stats --max-memory 80% --max-connections 1000 --max-dead 0 --require-workers
  ostq stats --max-recent-failure-rate 10%     # failed/processed over the last 5 minutes only
  ostq stats --watch --max-latency 1m          # the same alerts, as ALERT: lines under the table";

const JOBS_AFTER: &str = "\
States: pending (ready), active (running now), scheduled (delayed), retry (failed, waiting for
the next attempt), dead (out of attempts), completed (tracked jobs only, within retention).
  ostq jobs videos --state dead --limit 50
  ostq jobs videos --state retry --json
  ostq jobs videos --cursor start --limit 100   # then --cursor <the next cursor it prints>";

const JOB_AFTER: &str = "\
  ostq job 01J9ZK3M4Q...                 # searches every queue
  ostq job videos 01J9ZK3M4Q...          # or name the queue (same as --queue videos)
Completed jobs are found only when they were pushed with --track.";

const RETRY_AFTER: &str = "\
  ostq retry videos --all-dead             # every dead job back to pending, attempts reset
  ostq retry videos 01J9ZK... 01J9ZM...    # these jobs (scheduled, retry or dead) now";

const PURGE_AFTER: &str = "\
Asks for confirmation when run on a terminal; --yes skips the question (scripts).
Active jobs are never purged: their workers own them (purge or delete them once they finish).
  ostq purge videos --state dead --yes";

const REMOVE_AFTER: &str = "\
Refused while workers hold jobs of the queue (nothing is deleted) unless --force; then the held
jobs run to their end but nothing is recorded of them. Stop the queue's workers first: a worker
still serving it recreates its counters. Asks for confirmation on a terminal; --yes skips it.
  ostq remove drill-queue --yes";

const DEMO_AFTER: &str = "\
Uses the Redis at --url / $OSTQ_URL / $REDIS_URL when one answers (on a queue of its own that is
purged afterwards); otherwise, or with --private, starts a throw-away redis-server on a free port
and stops it at the end. Needs redis-server installed (apt-get install redis-server).";

const BENCH_AFTER: &str = "\
Phases, each on a queue of its own (deleted at the end): bulk enqueue of N jobs (push_bulk), one
in-process worker draining them with a no-op handler (timed until Redis counts all N processed),
Redis memory per waiting job, the same with status records kept (--track), idle push→start
latency (one job at a time), and the ceiling of the Redis itself (pipelined LPUSH/RPOP).

Without --url (or $OSTQ_URL) it starts a private redis-server (no persistence) and stops it at
the end; $REDIS_URL is not used, so a bench never loads a Redis by accident.
  ostq bench                                   # 100,000 jobs on a private redis-server
  ostq bench --url redis://127.0.0.1:6379 --jobs 20000 --json
  scripts/bench-vs-peers                       # beside BullMQ and bee-queue, on one server";

#[derive(Debug, Args)]
pub struct CronArgs {
    #[command(subcommand)]
    pub action: CronAction,
}

#[derive(Debug, Subcommand)]
pub enum CronAction {
    /// Register a schedule (replaces one of the same name on the queue)
    Add(CronAddArgs),
    /// List the schedules: when, next and last tick, ticks fired
    List(CronListArgs),
    /// Remove a schedule: no process fires it any more
    Remove(CronRemoveArgs),
}

#[derive(Debug, Args)]
pub struct CronAddArgs {
    /// The queue its jobs go to
    pub queue: String,

    /// The schedule's name, unique within the queue
    pub name: String,

    /// A cron expression: `min hour day month weekday`, or with seconds first
    #[arg(
        long,
        value_name = "EXPR",
        required_unless_present = "every",
        conflicts_with = "every"
    )]
    pub cron: Option<String>,

    /// A fixed interval instead, aligned to the Unix epoch: 10s, 5m, 1h
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub every: Option<Duration>,

    /// The job's payload
    #[arg(long, default_value = "", value_name = "TEXT")]
    pub payload: String,

    /// The job's task name
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,

    /// The IANA time zone the cron expression is read in
    #[arg(long, default_value = "UTC", value_name = "ZONE")]
    pub tz: String,

    /// Fire the last tick missed while no scheduler ran, once, when one starts (default: skip)
    #[arg(long)]
    pub run_missed: bool,

    /// The job's priority, -1000..=1000
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub priority: i32,

    /// The job's attempts in all (default: the worker's)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,

    /// Keep a status record for each job
    #[arg(long)]
    pub track: bool,
}

#[derive(Debug, Args)]
pub struct CronListArgs {
    /// Only these queues (default: every known queue)
    pub queues: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CronRemoveArgs {
    /// The queue
    pub queue: String,
    /// The schedule's name
    pub name: String,
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Only the schedules of these queues (default: every known queue)
    pub queues: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The queue
    pub queue: String,

    /// Turn the queue's events on first (stream and pub/sub)
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,

    /// Turn the queue's events off and exit
    #[arg(long)]
    pub disable: bool,

    /// Start with everything the stream still holds, not only what happens from now
    #[arg(long)]
    pub from_start: bool,

    /// Exit after this many events
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Queue to push onto
    pub queue: String,

    /// Payloads, one job each
    pub payloads: Vec<OsString>,

    /// Read payloads from a file, one per line (empty lines are skipped); `-` reads stdin
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Run no earlier than this from now: 250ms, 30s, 5m, 1h, 2days
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with = "at")]
    pub delay: Option<Duration>,

    /// Run no earlier than this time (RFC 3339): 2030-01-01T09:00:00Z
    #[arg(long, value_parser = parse_rfc3339, value_name = "TIME")]
    pub at: Option<std::time::SystemTime>,

    /// Higher runs first, -1000..=1000 (default 0: first in, first out)
    #[arg(long, allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub priority: Option<i32>,

    /// Attempts allowed in all before the job goes to the dead set (default: the worker's, 25)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: Option<u32>,

    /// Keep a status record so `ostq job ID` shows the state and result even after completion
    #[arg(long)]
    pub track: bool,

    /// Use this job id instead of a generated one (one payload only)
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// The task name of the jobs (what typed workers dispatch on; `ostq worker` hands it to the
    /// program as OSTQ_TASK)
    #[arg(long, value_name = "TASK")]
    pub name: Option<String>,

    /// Don't push while another job holding this key is pending, scheduled, retrying or running
    /// (one payload only): the holder's id is printed instead. The key is released when its job
    /// completes or dies
    #[arg(long, value_name = "KEY")]
    pub unique: Option<String>,

    /// With --unique, hold the key this long from the push, whatever becomes of the job (at most
    /// one such job per period): 10m, 1h
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", requires = "unique")]
    pub unique_for: Option<Duration>,

    /// Report the push done only once this many replicas have it: N[:TIMEOUT] (WAIT, e.g. 1 or
    /// 1:500ms), aof:N[:TIMEOUT] (WAITAOF, Redis 7.2+: the primary's AOF fsync and N replicas'),
    /// none. Fewer in time: exit 5, the ids printed (the jobs are on the primary). Default
    /// timeout 1s
    #[arg(long, env = "OSTQ_DURABLE", value_parser = parse_durability, value_name = "N[:TIMEOUT]")]
    pub durable: Option<ostq::Durability>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Queue to serve (repeat for several)
    #[arg(long = "queue", short = 'q', required = true, value_name = "QUEUE")]
    pub queues: Vec<String>,

    /// Programs running at once
    #[arg(long, short = 'c', default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub concurrency: u32,

    /// Jobs leased ahead of free slots, so a slot starts the next job without waiting for a
    /// fetch (never more than started in the last 100 ms, given back after 1 s). If this
    /// worker is killed, the ones not started yet go back without an attempt counted
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub prefetch: usize,

    /// How long a job stays leased without renewal; renewed while the program runs. A dead
    /// worker's jobs are taken over by another worker after this long
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub lease: Duration,

    /// Kill the program (and its children) when it runs longer than this; 0 = no limit
    #[arg(long, default_value = "30m", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// At ctrl-c/SIGTERM, how long running programs get to finish before their jobs are given back
    #[arg(long, default_value = "25s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Attempts for jobs that did not set their own (--max-attempts of push)
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Exit 0 once the queues are drained: nothing pending or active (expired leases of dead
    /// workers are recovered first) and no scheduled or retry job due within --burst-wait
    #[arg(long)]
    pub burst: bool,

    /// With --burst, also wait for scheduled and retry jobs due within this long
    #[arg(long, default_value = "1m", value_parser = parse_duration, value_name = "DURATION", requires = "burst")]
    pub burst_wait: Duration,

    /// Print a line for every completed job too (failures are always printed)
    #[arg(long, short = 'v')]
    pub verbose: bool,

    /// Serve only jobs with this task name (repeat for several; `-` for jobs without one).
    /// Jobs with other names fail their attempt and are retried with backoff, so a worker that
    /// serves them can take them meanwhile. Default: every name
    #[arg(long = "task", value_name = "NAME")]
    pub tasks: Vec<String>,

    /// Fire the registered schedules too, as `ostq scheduler` does (each tick still fires once,
    /// however many workers do)
    #[arg(long)]
    pub cron: bool,

    /// Exit 0 once the queues have had nothing pending or running for this long (scheduled and
    /// retry jobs not yet due do not count): 30s, 1m
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", conflicts_with = "burst")]
    pub idle_exit: Option<Duration>,

    /// Don't pass the programs' stdout and stderr through (stdout still becomes the result of
    /// tracked jobs, and the end of stderr is still in failure messages). By default each line
    /// is passed through as it comes, prefixed with `[job id]` when --concurrency is above 1
    #[arg(long)]
    pub no_output: bool,

    /// Write each batch of outcomes and then wait for this many replicas (WAIT), so that an
    /// acknowledged completion survives a failover: N[:TIMEOUT], aof:N[:TIMEOUT], none. A
    /// shortfall is logged, never fatal
    #[arg(long, env = "OSTQ_DURABLE_OUTCOMES", value_parser = parse_durability, value_name = "N[:TIMEOUT]")]
    pub durable_outcomes: Option<ostq::Durability>,

    /// Skip the deployment checks at start (those of `ostq doctor` that need no scan: eviction
    /// policy, persistence, memory, server, replicas), whose warnings are printed otherwise
    #[arg(long)]
    pub no_doctor: bool,

    /// The program and its arguments; `{}` in an argument is replaced by the payload, without
    /// `{}` the payload goes to the program's stdin
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only these queues (default: all)
    pub queues: Vec<String>,

    /// Refresh until ctrl-c
    #[arg(long, short = 'w')]
    pub watch: bool,

    /// With --watch, time between refreshes
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,

    /// Without --watch, how long to sample the processed counter for jobs/s; 0 skips it
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub sample: Duration,

    /// Alert (exit 3) when a queue has more pending jobs than this
    #[arg(long, value_name = "N")]
    pub max_pending: Option<u64>,

    /// Alert (exit 3) when failed/processed exceeds this: 0.05 or 5%
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub max_failure_rate: Option<Rate>,

    /// Alert (exit 3) when failed/processed over the last 5 minutes (from the per-minute history)
    /// exceeds this: 0.1 or 10%; quiet when nothing was processed in them
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub max_recent_failure_rate: Option<Rate>,

    /// Alert (exit 3) when the next pending job has waited longer than this
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_latency: Option<Duration>,

    /// Alert (exit 3) when a queue has pending jobs and no live worker serves it (paused queues
    /// are left out)
    #[arg(long)]
    pub require_workers: bool,

    /// Alert (exit 3) when Redis uses more than this share of its maxmemory: 0.8 or 80%
    /// (a Redis without maxmemory is an alert too: the share cannot be checked)
    #[arg(long, value_parser = parse_rate, value_name = "PERCENT")]
    pub max_memory: Option<Rate>,

    /// Alert (exit 3) when Redis has more client connections than this
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,

    /// Alert (exit 3) when a queue has more dead jobs (out of attempts) than this
    #[arg(long, value_name = "N")]
    pub max_dead: Option<u64>,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The queue
    pub queue: String,

    /// Which jobs: pending, active, scheduled, retry, dead, completed
    #[arg(long, short = 's', default_value = "pending", value_parser = parse_state)]
    pub state: ostq::JobState,

    /// At most this many
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,

    /// Skip this many first (paging)
    #[arg(long, default_value_t = 0)]
    pub offset: usize,

    /// Page with a cursor, which neither skips nor repeats jobs while workers change the queue:
    /// `start` for the first page, then the `next` cursor each page gives (on stderr, or in the
    /// JSON as {"jobs": […], "next": …})
    #[arg(long, value_name = "CURSOR", conflicts_with = "offset")]
    pub cursor: Option<String>,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// [QUEUE] ID: the job's id, optionally preceded by its queue
    #[arg(required = true, num_args = 1..=2, value_name = "ID")]
    pub args: Vec<String>,

    /// The job's queue (default: search every queue)
    #[arg(long, short = 'q')]
    pub queue: Option<String>,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The queue
    pub queue: String,

    /// Jobs to run now
    #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
    pub ids: Vec<String>,

    /// Every dead job of the queue
    #[arg(long)]
    pub all_dead: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The queue
    pub queue: String,

    /// Jobs to delete
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The queue
    pub queue: String,

    /// Only jobs in this state: pending, scheduled, retry, dead, completed (default: all of them)
    #[arg(long, short = 's', value_parser = parse_state)]
    pub state: Option<ostq::JobState>,

    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The queue
    pub queue: String,

    /// Remove it even while workers hold some of its jobs
    #[arg(long)]
    pub force: bool,

    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct QueueArg {
    /// The queue
    pub queue: String,
}

#[derive(Debug, Args)]
pub struct QueuesArgs {}

#[derive(Debug, Args)]
pub struct ShardsArgs {
    /// The queue
    pub queue: String,
    /// The number of shards to give it (1..=64); without it, show the current ones
    pub count: Option<usize>,
}

#[derive(Debug, Args)]
pub struct WorkersArgs {}

const HISTORY_AFTER: &str = "\
Workers record, per task and per minute (kept 25 hours) and hour (kept 8 days), the attempts
processed, failed, retried and sent to the dead set, and histograms of run time (start to end of
an attempt) and wait time (enqueue to first start). Up to 3h is shown per minute, longer per hour;
percentiles are the upper bounds of log-scale buckets (5ms, 10ms, 20ms, … 5.8h).
  ostq history videos                          # the last hour, minute by minute
  ostq history videos --last 7d --task resize  # one task, hour by hour
  ostq history videos --last 24h --json        # the points as JSON (Queue::history)";

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The queue
    pub queue: String,

    /// How far back to look: up to 3h per minute, longer per hour (e.g. 30m, 1h, 24h, 7d)
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub last: Duration,

    /// Only this task (`-` for jobs pushed without a name)
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,
}

const METRICS_AFTER: &str = "\
Each scrape of GET /metrics reads the queues, the live workers and Redis's INFO (nothing is
cached); while Redis cannot be read it still answers, with ostq_redis_up 0.
  ostq metrics                                 # every queue, on 127.0.0.1:9808
  ostq metrics --listen :9808 videos emails    # these queues, on every interface
docs/observability.md lists the metrics and shows a Prometheus scrape_config.";

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Only these queues (default: all)
    pub queues: Vec<String>,

    /// Address to serve on: IP:PORT, or :PORT for every interface
    #[arg(long, default_value = "127.0.0.1:9808", value_parser = crate::metrics::parse_listen, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// How long one scrape may wait for Redis before it answers ostq_redis_up 0
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

// --- ostq dashboard (crates/ostq-cli/src/dashboard.rs) ---
const DASHBOARD_AFTER: &str = "\
The dashboard reads and changes queues through the admin API only. Without a token it listens on
loopback only; to listen elsewhere give it a token of at least 16 characters in
$OSTQ_DASHBOARD_TOKEN or a file (never on the command line, where `ps` shows it):
  ostq dashboard                                        # http://127.0.0.1:7777/, no token
  OSTQ_DASHBOARD_TOKEN=$(cat /run/secrets/ostq) ostq dashboard --listen :7777
  ostq dashboard --token-file /etc/ostq/token --read-only --listen 10.0.0.5:7777
docs/dashboard.md describes the pages and the security model.";

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to serve on: IP:PORT, or :PORT for every interface (a non-loopback address needs
    /// a token)
    #[arg(long, default_value = "127.0.0.1:7777", value_parser = crate::metrics::parse_listen, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,

    /// Read the token from this file [default: $OSTQ_DASHBOARD_TOKEN; none: loopback only]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Hide every action and refuse every change (405)
    #[arg(long)]
    pub read_only: bool,

    /// The path browsers reach the dashboard at, behind a proxy that strips it (e.g. /ops/queues)
    #[arg(long, value_name = "PATH")]
    pub base_path: Option<String>,

    /// Mark the session cookie Secure (when served over HTTPS by a proxy)
    #[arg(long)]
    pub secure_cookie: bool,
}
// --- end ostq dashboard ---

#[derive(Debug, Args)]
pub struct ScriptArgs {
    /// The script's name: push, fetch, complete, fail, ... (see --list)
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// List the script names
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Always start a private redis-server, even when one answers at the URL
    #[arg(long)]
    pub private: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Jobs per phase
    #[arg(long, short = 'n', default_value_t = 100_000, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10_000_000))]
    pub jobs: usize,

    /// Handlers running at once while the queue is drained. A list (1,10,50,100,500,1000) sweeps:
    /// processing (default and tracked jobs) and the Redis and worker CPU per job at each
    /// concurrency, without the latency, memory and ceiling phases
    #[arg(long, short = 'c', default_value = "500", value_delimiter = ',', num_args = 1.., value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub concurrency: Vec<u32>,

    /// Payload size in bytes [default: the job's number as an id, e.g. 42, as the peers push]
    #[arg(long, value_name = "BYTES", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_048_576))]
    pub payload_bytes: Option<usize>,

    /// Prefix of the queue names used (<prefix>-warmup, -enqueue, -tracked, -latency, -ceiling)
    /// [default: bench-<ulid>]
    #[arg(long, short = 'q', value_name = "PREFIX")]
    pub queue: Option<String>,

    /// Workers record no history (to measure what the history costs)
    #[arg(long)]
    pub no_history: bool,

    /// Workers report nothing through the `metrics` facade (to measure what it costs)
    #[arg(long, conflicts_with = "prometheus")]
    pub no_metrics: bool,

    /// Install a Prometheus recorder in the bench process, so the workers' metrics are recorded
    /// as in an application that exports them (without it the facade has no recorder)
    #[arg(long)]
    pub prometheus: bool,

    /// Measure a sharded queue on a Redis Cluster (design §19): the same jobs on an unsharded
    /// queue and on one of N shards, each primary's share of the jobs and of Redis CPU, CPU per
    /// job, the projected ceiling Σ 1/(CPU s per job) over the primaries, the drained rate and
    /// the idle latency. --url must be redis+cluster:// listing every primary; without --url, a
    /// private cluster of max(N, 3) primaries. Only the first --concurrency is used
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub shards: Option<usize>,
}
