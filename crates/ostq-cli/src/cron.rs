//! `ostq cron add/list/remove` and `ostq scheduler` (also `ostq worker --cron`): schedules kept in
//! each queue's registry in Redis, fired by the library's `Scheduler`, exactly once per tick
//! however many processes run it.

use std::time::Duration;

use anyhow::bail;
use ostq::scheduler::ScheduleInfo;
use ostq::{Client, MissedTicks, Schedule, Scheduler};
use tokio::sync::watch;

use crate::cli::{CronAction, CronAddArgs, CronArgs, CronListArgs, Global, SchedulerArgs};
use crate::util::{check_queue, connect, lib_err, rfc3339_ms, short_duration};

/// How often a running scheduler reads the registries again, for schedules added, changed or
/// removed meanwhile (one `HGETALL` and a pipeline per queue).
const RELOAD: Duration = Duration::from_secs(10);

pub async fn run(global: &Global, args: CronArgs) -> anyhow::Result<()> {
    let client = connect(&global.redis_url()).await?;
    match args.action {
        CronAction::Add(add) => add_schedule(&client, add).await,
        CronAction::List(list) => list_schedules(&client, list, global.json).await,
        CronAction::Remove(remove) => {
            check_queue(&remove.queue)?;
            let removed = client
                .remove_schedule(&remove.queue, &remove.name)
                .await
                .map_err(lib_err("cannot remove the schedule"))?;
            if !removed {
                bail!(
                    "no schedule '{}' on queue '{}' (`ostq cron list` shows them)",
                    remove.name,
                    remove.queue
                );
            }
            eprintln!("removed schedule '{}' of '{}'", remove.name, remove.queue);
            Ok(())
        }
    }
}

async fn add_schedule(client: &Client, args: CronAddArgs) -> anyhow::Result<()> {
    check_queue(&args.queue)?;
    let mut schedule = match (&args.cron, args.every) {
        (Some(expr), _) => Schedule::cron(&args.name, &args.queue, expr),
        (None, Some(every)) => Schedule::every(&args.name, &args.queue, every),
        (None, None) => bail!("give --cron EXPR or --every DURATION"),
    };
    schedule = schedule
        .payload(args.payload.as_bytes())
        .time_zone(&args.tz)
        .priority(args.priority);
    if let Some(task) = &args.task {
        schedule = schedule.task_name(task);
    }
    if args.run_missed {
        schedule = schedule.missed(MissedTicks::RunOnce);
    }
    if let Some(n) = args.max_attempts {
        schedule = schedule.max_attempts(n);
    }
    if args.track {
        schedule = schedule.track();
    }
    let replacing = client
        .schedules(&args.queue)
        .await
        .map_err(lib_err("cannot read the schedules"))?
        .iter()
        .any(|s| s.name == args.name);
    let scheduler = Scheduler::builder(client.clone())
        .schedule(schedule)
        .build()
        .map_err(lib_err("bad schedule"))?;
    scheduler
        .register()
        .await
        .map_err(lib_err("cannot register the schedule"))?;
    let info = client
        .schedules(&args.queue)
        .await
        .map_err(lib_err("cannot read the schedules"))?
        .into_iter()
        .find(|s| s.name == args.name);
    let next = info
        .and_then(|i| i.next_tick_ms)
        .map(|ms| format!("; next tick {}", rfc3339_ms(ms)))
        .unwrap_or_default();
    eprintln!(
        "{} schedule '{}' of '{}'{next} (fired by `ostq scheduler` or `ostq worker --cron`)",
        if replacing { "replaced" } else { "added" },
        args.name,
        args.queue
    );
    Ok(())
}

/// Every schedule of the given queues (every known queue for none), by queue then name.
async fn load(client: &Client, queues: &[String]) -> ostq::Result<Vec<ScheduleInfo>> {
    let names = if queues.is_empty() {
        client.queues().await?
    } else {
        queues.to_vec()
    };
    let mut all = Vec::new();
    for queue in names {
        all.extend(client.schedules(&queue).await?);
    }
    Ok(all)
}

async fn list_schedules(client: &Client, args: CronListArgs, json: bool) -> anyhow::Result<()> {
    for q in &args.queues {
        check_queue(q)?;
    }
    let all = load(client, &args.queues)
        .await
        .map_err(lib_err("cannot read the schedules"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("(no schedules: `ostq cron add QUEUE NAME --cron EXPR` adds one)");
        return Ok(());
    }
    println!(
        "{:<16} {:<20} {:<22} {:<24} {:<24} {:>6}",
        "QUEUE", "NAME", "WHEN", "NEXT TICK", "LAST TICK", "FIRED"
    );
    for s in &all {
        let when = match (&s.spec.cron, s.spec.every_ms) {
            (Some(expr), _) if s.spec.time_zone != "UTC" => {
                format!("{expr} ({})", s.spec.time_zone)
            }
            (Some(expr), _) => expr.clone(),
            (None, Some(ms)) => format!("every {}", short_duration(Duration::from_millis(ms))),
            (None, None) => "?".into(),
        };
        let at = |t: Option<u64>| t.map(rfc3339_ms).unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:<20} {:<22} {:<24} {:<24} {:>6}",
            s.queue,
            s.name,
            when,
            at(s.next_tick_ms),
            at(s.last_tick_ms),
            s.fired
        );
    }
    Ok(())
}

/// `ostq scheduler`: fires the registered schedules until ctrl-c or SIGTERM.
pub async fn scheduler(global: &Global, args: SchedulerArgs) -> anyhow::Result<()> {
    for q in &args.queues {
        check_queue(q)?;
    }
    let client = connect(&global.redis_url()).await?;
    let (stop_tx, stop) = watch::channel(false);
    eprintln!(
        "ostq scheduler: firing the schedules of {} (ctrl-c to stop)",
        if args.queues.is_empty() {
            "every queue".to_string()
        } else {
            args.queues.join(", ")
        }
    );
    let run = run_registered(client, args.queues, stop);
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => return result,
        _ = ostq::worker::shutdown_signal() => {}
    }
    let _ = stop_tx.send(true);
    run.await?;
    eprintln!("ostq scheduler: stopped");
    Ok(())
}

/// Runs a library `Scheduler` over every schedule registered on `queues` (every known queue for
/// none) until `stop` turns true, rebuilding it when the registries change. A schedule the
/// library refuses (a bad registry entry) is reported once and left out.
pub async fn run_registered(
    client: Client,
    queues: Vec<String>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut reported: Vec<String> = Vec::new();
    loop {
        let infos = load(&client, &queues)
            .await
            .map_err(lib_err("cannot read the schedules"))?;
        let mut builder = Scheduler::builder(client.clone()).on_tick(report_tick);
        let mut running = 0;
        for info in &infos {
            let schedule = Schedule::from_info(info);
            // Checked alone first, so one bad entry does not stop the others.
            let alone = Scheduler::builder(client.clone())
                .schedule(schedule.clone())
                .build();
            match alone {
                Ok(_) => {
                    builder = builder.schedule(schedule);
                    running += 1;
                }
                Err(e) => {
                    let key = format!("{}/{}: {e}", info.queue, info.name);
                    if !reported.contains(&key) {
                        eprintln!(
                            "warning: schedule '{}' of '{}' left out: {e}",
                            info.name, info.queue
                        );
                        reported.push(key);
                    }
                }
            }
        }
        let changed = registry_changed(&client, &queues, &infos, stop.clone());
        if running == 0 {
            changed.await;
        } else {
            let scheduler = builder.build().map_err(lib_err("bad schedule"))?;
            scheduler
                .run_until(changed)
                .await
                .map_err(lib_err("the scheduler failed"))?;
        }
        if *stop.borrow_and_update() {
            return Ok(());
        }
    }
}

/// Completes when `stop` turns true or the registries no longer hold `seen` (read every
/// [`RELOAD`]; a failed read changes nothing).
async fn registry_changed(
    client: &Client,
    queues: &[String],
    seen: &[ScheduleInfo],
    mut stop: watch::Receiver<bool>,
) {
    let fingerprint = |infos: &[ScheduleInfo]| -> Vec<(String, String, String)> {
        infos
            .iter()
            .map(|i| {
                let spec = serde_json::to_string(&i.spec).unwrap_or_default();
                (i.queue.clone(), i.name.clone(), spec)
            })
            .collect()
    };
    let before = fingerprint(seen);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RELOAD) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        if let Ok(now) = load(client, queues).await {
            if fingerprint(&now) != before {
                return;
            }
        }
    }
}

fn report_tick(tick: &ostq::scheduler::Tick) {
    if let ostq::scheduler::TickOutcome::Fired { job_id } = &tick.outcome {
        eprintln!(
            "fired '{}' of '{}' for {}: job {job_id}",
            tick.schedule,
            tick.queue,
            rfc3339_ms(tick.tick_ms)
        );
    }
}
