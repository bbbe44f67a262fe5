//! Cron and periodic jobs: several processes running one registration enqueue each tick once;
//! bad expressions are clear errors; schedules are listed and removed; missed ticks follow their
//! policy; a Redis restart does not stop a schedule.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{setup, wait_until};
use ostq::scheduler::{Tick, TickOutcome};
use ostq::{BoxError, Client, Error, Job, JobState, MissedTicks, Schedule, Scheduler, Worker};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleeps until the wall clock reads `at_ms`.
async fn sleep_until_ms(at_ms: u64) {
    let now = now_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

/// The tick times of the pending jobs of schedule `name`, sorted.
async fn pending_ticks(client: &Client, queue: &str, name: &str) -> Vec<u64> {
    let prefix = format!("cron:{name}:");
    let mut ticks: Vec<u64> = client
        .queue(queue)
        .jobs(JobState::Pending, 0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|job| job.id.strip_prefix(&prefix).map(|t| t.parse().unwrap()))
        .collect();
    ticks.sort();
    ticks
}

/// A scheduler running in the background, with the ticks its hook saw.
struct Running {
    stop: CancellationToken,
    handle: JoinHandle<ostq::Result<()>>,
    ticks: Arc<Mutex<Vec<Tick>>>,
}

impl Running {
    fn start(client: &Client, schedules: Vec<Schedule>) -> Self {
        let ticks = Arc::new(Mutex::new(Vec::new()));
        let seen = ticks.clone();
        let mut builder = Scheduler::builder(client.clone())
            .on_tick(move |tick| seen.lock().unwrap().push(tick.clone()));
        for schedule in schedules {
            builder = builder.schedule(schedule);
        }
        let scheduler = builder.build().unwrap();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(scheduler.run_until(stop.clone().cancelled_owned()));
        Self {
            stop,
            handle,
            ticks,
        }
    }

    async fn shutdown(self) -> Vec<Tick> {
        self.stop.cancel();
        self.handle.await.unwrap().unwrap();
        let ticks = self.ticks.lock().unwrap().clone();
        ticks
    }
}

/// Not a test: the body of the scheduler processes that
/// `three_processes_enqueue_each_tick_exactly_once` starts (this test binary, re-executed). It
/// runs a scheduler from OSTQ_CRON_START_MS to OSTQ_CRON_STOP_MS and prints each tick's outcome.
#[test]
#[ignore]
fn child_scheduler() {
    let Ok(url) = std::env::var("OSTQ_CRON_URL") else {
        return;
    };
    let env_ms = |name: &str| -> u64 { std::env::var(name).unwrap().parse().unwrap() };
    let (start, stop) = (env_ms("OSTQ_CRON_START_MS"), env_ms("OSTQ_CRON_STOP_MS"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let client = Client::connect(&url).await.unwrap();
        sleep_until_ms(start).await;
        Scheduler::builder(client)
            .cron("tick", "cron", "* * * * * *", "beat")
            .on_tick(|tick| {
                let outcome = match &tick.outcome {
                    TickOutcome::Fired { .. } => "fired",
                    TickOutcome::Taken => "taken",
                    _ => "other",
                };
                println!("TICK {} {outcome}", tick.tick_ms);
            })
            .build()
            .unwrap()
            .run_until(sleep_until_ms(stop))
            .await
            .unwrap();
    });
}

#[tokio::test]
async fn three_processes_enqueue_each_tick_exactly_once() {
    let (server, client) = setup().await;
    let started = Instant::now();
    // Ten ticks of a cron every second: A, A+1 s, …, A+9 s. The processes start half a second
    // before A (skipping missed ticks, they fire nothing earlier) and stop half a second after
    // the tenth tick.
    let first_tick = (now_ms() + 2500) / 1000 * 1000 + 1000;
    let (start, stop) = (first_tick - 500, first_tick + 9_500);
    let children: Vec<_> = (0..3)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child_scheduler", "--ignored", "--nocapture"])
                .env("OSTQ_CRON_URL", server.url())
                .env("OSTQ_CRON_START_MS", start.to_string())
                .env("OSTQ_CRON_STOP_MS", stop.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs = Vec::new();
    for mut child in children {
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(child.wait().unwrap().success());
        outputs.push(out);
    }

    let expected: Vec<u64> = (0..10).map(|k| first_tick + k * 1000).collect();
    let mut fired_by_all = Vec::new();
    for out in &outputs {
        let mut seen = Vec::new();
        for line in out.lines().filter_map(|l| l.strip_prefix("TICK ")) {
            let (tick, outcome) = line.split_once(' ').unwrap();
            let tick: u64 = tick.parse().unwrap();
            assert!(outcome == "fired" || outcome == "taken", "{line}");
            seen.push(tick);
            if outcome == "fired" {
                fired_by_all.push(tick);
            }
        }
        // Every process took part in every tick: the contention was real.
        assert_eq!(seen, expected, "a process missed ticks:\n{out}");
    }
    fired_by_all.sort();
    assert_eq!(
        fired_by_all, expected,
        "each tick fired by exactly one process"
    );

    let counts = client.queue("cron").counts().await.unwrap();
    assert_eq!(counts.pending, 10);
    let jobs = client
        .queue("cron")
        .jobs(JobState::Pending, 0, 100)
        .await
        .unwrap();
    let ids: BTreeSet<String> = jobs.iter().map(|j| j.id.clone()).collect();
    assert_eq!(ids.len(), 10, "ids are distinct");
    assert!(jobs
        .iter()
        .all(|j| j.payload.as_deref() == Some(&b"beat"[..])));
    assert_eq!(pending_ticks(&client, "cron", "tick").await, expected);
    let info = &client.schedules("cron").await.unwrap()[0];
    assert_eq!(
        (info.fired, info.last_tick_ms),
        (10, Some(first_tick + 9000))
    );
    eprintln!("3 processes, 10 ticks: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_bad_cron_expression_is_a_clear_error() {
    let (_server, client) = setup().await;
    let err = Scheduler::builder(client.clone())
        .every("fine", "q", Duration::from_secs(1), "")
        .cron("nightly-report", "q", "0 25 * * *", "")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("schedule \"nightly-report\": bad cron expression \"0 25 * * *\""),
        "{text}"
    );

    for (schedule, expected) in [
        (
            Schedule::cron("s", "q", "not a cron"),
            "bad cron expression",
        ),
        (
            Schedule::cron("s", "q", "* * * * *").time_zone("Europe/Atlantis"),
            "unknown time zone \"Europe/Atlantis\"",
        ),
        (Schedule::every("s", "q", Duration::ZERO), "interval"),
    ] {
        let err = Scheduler::builder(client.clone())
            .schedule(schedule)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    let err = Scheduler::builder(client.clone())
        .every("twice", "q", Duration::from_secs(1), "")
        .cron("twice", "q", "* * * * *", "")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("registered twice"), "{err}");
    let err = Scheduler::builder(client).build().unwrap_err();
    assert!(err.to_string().contains("at least one schedule"), "{err}");
}

#[tokio::test]
async fn schedules_are_listed_and_a_removed_one_stops_firing() {
    let (_server, client) = setup().await;
    let running = Running::start(
        &client,
        vec![
            Schedule::every("fast", "maint", Duration::from_millis(100)).payload("sweep"),
            Schedule::cron("daily", "maint", "0 0 3 * * *")
                .time_zone("Europe/Paris")
                .missed(MissedTicks::RunOnce),
        ],
    );
    assert!(
        wait_until(WAIT, || async {
            pending_ticks(&client, "maint", "fast").await.len() >= 3
        })
        .await
    );

    let listed = client.schedules("maint").await.unwrap();
    let names: Vec<&str> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["daily", "fast"]);
    let (daily, fast) = (&listed[0], &listed[1]);
    assert_eq!(daily.queue, "maint");
    assert_eq!(daily.spec.cron.as_deref(), Some("0 0 3 * * *"));
    assert_eq!(daily.spec.time_zone, "Europe/Paris");
    assert_eq!(daily.spec.missed, MissedTicks::RunOnce);
    assert_eq!((daily.fired, daily.last_tick_ms), (0, None));
    let next = daily.next_tick_ms.unwrap();
    assert!(
        next > now_ms() && next < now_ms() + 25 * 3_600_000,
        "{next}"
    );
    assert_eq!(next % 3_600_000, 0, "03:00 in Paris is on a UTC hour");
    assert_eq!(fast.spec.every_ms, Some(100));
    assert_eq!(fast.spec.payload, "sweep");
    let last = fast.last_tick_ms.unwrap();
    assert!(fast.fired >= 3);
    assert_eq!(fast.next_tick_ms, Some(last + 100));
    assert_eq!(fast.last_job_id, Some(format!("cron:fast:{last}")));

    assert!(client.remove_schedule("maint", "fast").await.unwrap());
    assert!(!client.remove_schedule("maint", "fast").await.unwrap());
    let names: Vec<String> = client
        .schedules("maint")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["daily"]);
    // The process still has "fast" registered, yet fires it no more.
    let before = pending_ticks(&client, "maint", "fast").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pending_ticks(&client, "maint", "fast").await, before);
    let ticks = running.shutdown().await;
    assert!(ticks
        .iter()
        .any(|t| t.schedule == "fast" && t.outcome == TickOutcome::Removed));

    // A process started with the registration registers it again.
    let running = Running::start(
        &client,
        vec![Schedule::every("fast", "maint", Duration::from_millis(100)).payload("sweep")],
    );
    assert!(
        wait_until(WAIT, || async {
            pending_ticks(&client, "maint", "fast").await.len() > before.len()
        })
        .await
    );
    running.shutdown().await;
    assert_eq!(client.schedules("maint").await.unwrap().len(), 2);
}

/// Runs `every 400 ms` with `policy`, stops after its first tick, waits out at least three ticks,
/// restarts (with `restarts` processes at once) mid-interval and runs until one more tick.
/// Returns the ticks enqueued, the first run's start and the restart time.
async fn gap(
    client: &Client,
    url: &str,
    policy: MissedTicks,
    restarts: usize,
) -> (Vec<u64>, u64, u64) {
    let queue = format!("gap-{policy:?}");
    let schedule = || Schedule::every("g", &queue, Duration::from_millis(400)).missed(policy);
    let first_start = now_ms();
    let running = Running::start(client, vec![schedule()]);
    assert!(
        wait_until(WAIT, || async {
            !pending_ticks(client, &queue, "g").await.is_empty()
        })
        .await
    );
    let first_ticks = running.shutdown().await;
    if policy == MissedTicks::RunOnce {
        // A new schedule has missed nothing: its catch-up at start fired no tick.
        assert!(first_ticks
            .iter()
            .any(|t| t.catch_up && t.outcome == TickOutcome::Early));
    }
    let fired_first = pending_ticks(client, &queue, "g").await;
    assert_eq!(fired_first.len(), 1, "{fired_first:?}");
    // Restart 1.4 s or more after the last tick, 200 ms into an interval.
    let restart = (fired_first[0] + 1_400) / 400 * 400 + 400 + 200;
    sleep_until_ms(restart).await;
    let mut runs = Vec::new();
    for _ in 0..restarts {
        let other = Client::connect(url).await.unwrap();
        runs.push(Running::start(&other, vec![schedule()]));
    }
    let after_restart = restart + 400 - restart % 400;
    assert!(
        wait_until(WAIT, || async {
            pending_ticks(client, &queue, "g")
                .await
                .last()
                .is_some_and(|&t| t >= after_restart)
        })
        .await
    );
    for run in runs {
        run.shutdown().await;
    }
    (
        pending_ticks(client, &queue, "g").await,
        first_start,
        restart,
    )
}

#[tokio::test]
async fn run_once_fires_one_missed_tick_after_a_gap_and_skip_fires_none() {
    let (server, client) = setup().await;
    let url = server.url();

    // RunOnce, restarted by two processes at once: the latest missed tick, once.
    let (ticks, first_start, restart) = gap(&client, &url, MissedTicks::RunOnce, 2).await;
    let caught_up = restart / 400 * 400;
    assert!(ticks[0] > first_start, "{ticks:?}");
    assert_eq!(
        ticks,
        [ticks[0], caught_up, caught_up + 400],
        "restart at {restart}"
    );
    assert!(caught_up - ticks[0] >= 1_600, "at least three ticks missed");

    // Skip: nothing from the gap; the first tick after the restart comes next.
    let (ticks, _, restart) = gap(&client, &url, MissedTicks::Skip, 1).await;
    let next = restart / 400 * 400 + 400;
    assert_eq!(ticks, [ticks[0], next], "restart at {restart}");
}

#[tokio::test]
async fn tick_jobs_carry_their_options_and_workers_run_them() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Cleanup {
        days: u32,
    }
    impl ostq::Task for Cleanup {
        const NAME: &'static str = "cleanup";
    }
    let (_server, client) = setup().await;
    let running = Running::start(
        &client,
        vec![Schedule::every("clean", "jobs", Duration::from_millis(100))
            .task(&Cleanup { days: 30 })
            .priority(5)
            .max_attempts(3)
            .track()],
    );
    let queue = client.queue("jobs");
    assert!(
        wait_until(WAIT, || async {
            queue.counts().await.unwrap().pending >= 2
        })
        .await
    );
    running.shutdown().await;
    let jobs = queue.jobs(JobState::Pending, 0, 100).await.unwrap();
    for job in &jobs {
        assert!(job.id.starts_with("cron:clean:"), "{}", job.id);
        assert_eq!(job.name.as_deref(), Some("cleanup"));
        assert_eq!(job.payload.as_deref(), Some(&br#"{"days":30}"#[..]));
        assert_eq!((job.priority, job.max_attempts), (5, 3));
        assert!(job.tracked);
        let info = queue.job(&job.id).await.unwrap().unwrap();
        assert_eq!(info.state, JobState::Pending);
    }

    let ran = Arc::new(Mutex::new(Vec::new()));
    let ran2 = ran.clone();
    let worker = common::spawn(
        Worker::builder(client.clone())
            .queue("jobs")
            .task(move |task: Cleanup| {
                let ran = ran2.clone();
                async move {
                    ran.lock().unwrap().push(task.days);
                    Ok::<_, BoxError>(())
                }
            })
            .handler(|_job: Job| async { Err::<(), BoxError>("not a cleanup".into()) })
            .build()
            .unwrap(),
    );
    let n = jobs.len();
    assert!(wait_until(WAIT, || async { ran.lock().unwrap().len() == n }).await);
    worker.shutdown().await;
    let info = queue.job(&jobs[0].id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Completed);
}

#[tokio::test]
async fn a_redis_restart_without_persistence_does_not_stop_a_schedule() {
    let (mut server, client) = setup().await;
    let running = Running::start(
        &client,
        vec![Schedule::every("beat", "alive", Duration::from_millis(100))],
    );
    assert!(
        wait_until(WAIT, || async {
            pending_ticks(&client, "alive", "beat").await.len() >= 2
        })
        .await
    );
    server.restart().unwrap(); // all data gone, registry included
    assert_eq!(server.cli(&["DBSIZE"]).unwrap(), "0");
    assert!(
        wait_until(WAIT, || async {
            match client.queue("alive").jobs(JobState::Pending, 0, 100).await {
                Ok(jobs) => jobs.len() >= 3,
                Err(_) => false,
            }
        })
        .await,
        "the schedule fires again after the restart"
    );
    let ticks = pending_ticks(&client, "alive", "beat").await;
    assert!(ticks.windows(2).all(|w| w[1] > w[0]), "{ticks:?}");
    let listed = client.schedules("alive").await.unwrap();
    assert_eq!(listed.len(), 1, "registered again");
    running.shutdown().await;
}
