//! Inspecting and operating: jobs, job, retry, delete, purge, pause, resume, queues.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{anyhow, bail, Context};
use serde_json::json;

use crate::cli::{
    DeleteArgs, Global, JobArgs, JobsArgs, PurgeArgs, QueueArg, QueuesArgs, RemoveArgs, RetryArgs,
    ShardsArgs, WorkersArgs,
};
use crate::output::{job_detail, job_table};
use crate::util::{check_queue, connect, lib_err};

/// Most jobs one `ostq jobs` call lists.
const MAX_LIMIT: usize = 100_000;

async fn queue_handle(global: &Global, name: &str) -> anyhow::Result<ostq::Queue> {
    check_queue(name)?;
    let client = connect(&global.redis_url()).await?;
    Ok(client.queue(name))
}

pub async fn jobs(global: &Global, args: JobsArgs) -> anyhow::Result<()> {
    if args.limit > MAX_LIMIT {
        bail!(
            "--limit {} is above {MAX_LIMIT}: page with --offset",
            args.limit
        );
    }
    let queue = queue_handle(global, &args.queue).await?;
    if let Some(cursor) = &args.cursor {
        return jobs_page(global, &queue, &args, cursor).await;
    }
    let list = queue
        .jobs(args.state, args.offset, args.limit)
        .await
        .map_err(lib_err("cannot list jobs"))?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print_jobs(&list, &args);
    }
    Ok(())
}

fn print_jobs(list: &[ostq::JobInfo], args: &JobsArgs) {
    if list.is_empty() {
        eprintln!("no {} jobs in '{}'", args.state, args.queue);
    } else {
        print!("{}", job_table(list));
    }
}

/// `ostq jobs --cursor`: one page of the library's cursor listing.
async fn jobs_page(
    global: &Global,
    queue: &ostq::Queue,
    args: &JobsArgs,
    cursor: &str,
) -> anyhow::Result<()> {
    let max = ostq::admin::listing::MAX_PAGE;
    if args.limit > max {
        bail!("--limit {} is above {max} with --cursor", args.limit);
    }
    let cursor = match cursor {
        "start" => None,
        text => Some(
            text.parse::<ostq::Cursor>()
                .map_err(|e| anyhow!("--cursor {text:?}: {e}"))?,
        ),
    };
    let page = queue
        .page(args.state, cursor.as_ref(), args.limit)
        .await
        .map_err(lib_err("cannot list jobs"))?;
    if global.json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    print_jobs(&page.jobs, args);
    if let Some(next) = &page.next {
        eprintln!(
            "next page: ostq jobs {} --state {} --limit {} --cursor {next}",
            args.queue, args.state, args.limit
        );
    }
    Ok(())
}

pub async fn job(global: &Global, args: JobArgs) -> anyhow::Result<()> {
    let (queue, id) = match (args.args.as_slice(), args.queue) {
        ([id], q) => (q, id.clone()),
        ([q, id], None) => (Some(q.clone()), id.clone()),
        ([_, _], Some(_)) => {
            bail!("give the queue either as an argument or with --queue, not both")
        }
        _ => bail!("usage: ostq job [QUEUE] ID"),
    };
    let client = connect(&global.redis_url()).await?;
    let queues = match queue {
        Some(q) => {
            check_queue(&q)?;
            vec![q]
        }
        None => client
            .queues()
            .await
            .map_err(lib_err("cannot list the queues"))?,
    };
    let mut found = None;
    for q in &queues {
        if let Some(info) = client
            .queue(q)
            .job(&id)
            .await
            .map_err(lib_err("cannot read the job"))?
        {
            found = Some(info);
            break;
        }
    }
    let Some(info) = found else {
        let place = if queues.len() == 1 {
            format!("queue '{}'", queues[0])
        } else {
            format!("any of the {} queues", queues.len())
        };
        bail!("no job {id:?} in {place} (completed jobs are kept only when pushed with --track)");
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{}", job_detail(&info));
    }
    Ok(())
}

pub async fn retry(global: &Global, args: RetryArgs) -> anyhow::Result<()> {
    let queue = queue_handle(global, &args.queue).await?;
    let moved = if args.all_dead {
        queue
            .retry_all_dead()
            .await
            .map_err(lib_err("cannot retry the dead jobs"))?
    } else {
        let ids: Vec<&str> = args.ids.iter().map(String::as_str).collect();
        queue
            .retry_now(&ids)
            .await
            .map_err(lib_err("cannot retry the jobs"))?
    };
    if global.json {
        println!("{}", json!({ "moved": moved }));
    } else {
        let asked = if args.all_dead {
            String::new()
        } else {
            format!(" of {}", args.ids.len())
        };
        println!("moved {moved}{asked} jobs of '{}' to pending", args.queue);
    }
    if !args.all_dead && moved < args.ids.len() as u64 {
        eprintln!("note: only scheduled, retry and dead jobs can be retried; the others were not found in those states");
    }
    Ok(())
}

pub async fn delete(global: &Global, args: DeleteArgs) -> anyhow::Result<()> {
    let queue = queue_handle(global, &args.queue).await?;
    let ids: Vec<&str> = args.ids.iter().map(String::as_str).collect();
    let removed = queue
        .delete(&ids)
        .await
        .map_err(lib_err("cannot delete the jobs"))?;
    if global.json {
        println!("{}", json!({ "deleted": removed }));
    } else {
        println!(
            "deleted {removed} of {} jobs from '{}'",
            ids.len(),
            args.queue
        );
    }
    Ok(())
}

/// Asks `question` on stderr and reads the answer from stdin: yes only for "y" or "yes".
fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

pub async fn purge(global: &Global, args: PurgeArgs) -> anyhow::Result<()> {
    if args.state == Some(ostq::JobState::Active) {
        bail!("active jobs cannot be purged while workers own them; purge or delete them once they finish");
    }
    let queue = queue_handle(global, &args.queue).await?;
    let what = match args.state {
        Some(s) => format!("every {s} job of '{}'", args.queue),
        None => format!(
            "every job of '{}' (pending, scheduled, retry, dead, completed)",
            args.queue
        ),
    };
    if !args.yes && std::io::stdin().is_terminal() {
        let counts = queue
            .counts()
            .await
            .map_err(lib_err("cannot read the queue"))?;
        let n = match args.state {
            Some(ostq::JobState::Pending) => counts.pending,
            Some(ostq::JobState::Scheduled) => counts.scheduled,
            Some(ostq::JobState::Retry) => counts.retry,
            Some(ostq::JobState::Dead) => counts.dead,
            Some(ostq::JobState::Completed) => counts.completed,
            _ => counts.pending + counts.scheduled + counts.retry + counts.dead + counts.completed,
        };
        if !confirm(&format!("delete {what}: {n} jobs?"))? {
            bail!("purge cancelled: nothing was deleted");
        }
    }
    let removed = queue
        .purge(args.state)
        .await
        .map_err(lib_err("cannot purge the queue"))?;
    if global.json {
        println!("{}", json!({ "purged": removed }));
    } else {
        println!("purged {removed} jobs from '{}'", args.queue);
    }
    Ok(())
}

pub async fn remove(global: &Global, args: RemoveArgs) -> anyhow::Result<()> {
    let queue = queue_handle(global, &args.queue).await?;
    if !args.yes && std::io::stdin().is_terminal() {
        let counts = queue
            .counts()
            .await
            .map_err(lib_err("cannot read the queue"))?;
        let jobs =
            counts.pending + counts.scheduled + counts.retry + counts.dead + counts.completed;
        let question = format!(
            "remove queue '{}' with {jobs} jobs, its counters, settings and history?",
            args.queue
        );
        if !confirm(&question)? {
            bail!("remove cancelled: nothing was deleted");
        }
    }
    let removal = queue
        .remove(args.force)
        .await
        .map_err(lib_err("cannot remove the queue"))?;
    match removal {
        ostq::admin::Removal::Removed { keys, active } => {
            if global.json {
                println!(
                    "{}",
                    json!({ "removed": true, "keys": keys, "active": active })
                );
            } else if active > 0 {
                println!(
                    "removed '{}' ({keys} keys); {active} jobs workers held run to their end unrecorded",
                    args.queue
                );
            } else {
                println!("removed '{}' ({keys} keys)", args.queue);
            }
            Ok(())
        }
        ostq::admin::Removal::Busy { active } => bail!(
            "workers hold {active} jobs of '{}': nothing was deleted (stop them first, or --force)",
            args.queue
        ),
        other => bail!("the queue was not removed: {other:?}"),
    }
}

pub async fn pause(global: &Global, args: QueueArg, pause: bool) -> anyhow::Result<()> {
    let queue = queue_handle(global, &args.queue).await?;
    if pause {
        queue.pause().await.map_err(lib_err("cannot pause"))?;
    } else {
        queue.resume().await.map_err(lib_err("cannot resume"))?;
    }
    if global.json {
        println!("{}", json!({ "queue": args.queue, "paused": pause }));
    } else if pause {
        println!(
            "paused '{}': workers take no jobs from it until `ostq resume {}`",
            args.queue, args.queue
        );
    } else {
        println!("resumed '{}'", args.queue);
    }
    Ok(())
}

pub async fn shards(global: &Global, args: ShardsArgs) -> anyhow::Result<()> {
    let queue = queue_handle(global, &args.queue).await?;
    let layout = match args.count {
        Some(count) => queue
            .set_shards(count)
            .await
            .map_err(lib_err("cannot set the shards"))?,
        None => queue
            .shards()
            .await
            .map_err(lib_err("cannot read the shards"))?,
    };
    if global.json {
        println!(
            "{}",
            json!({ "queue": args.queue, "shards": layout.shards, "draining": layout.draining })
        );
        return Ok(());
    }
    println!("'{}' has {} shard(s):", args.queue, layout.count());
    for (i, name) in layout.shards.iter().enumerate() {
        println!("  {i}  {name}  (slot {})", ostq::keys::slot_of_queue(name));
    }
    for name in &layout.draining {
        println!(
            "  draining  {name}  (slot {})",
            ostq::keys::slot_of_queue(name)
        );
    }
    if args.count.is_some() {
        println!("producers use it within a second, running workers within about 2 s");
    }
    if !layout.draining.is_empty() {
        println!(
            "draining shards are still served; a later `ostq shards` forgets each once it is empty and has drained for {} s",
            ostq::shards::DRAIN_GRACE_MS / 1000
        );
    }
    Ok(())
}

pub async fn queues(global: &Global, _args: QueuesArgs) -> anyhow::Result<()> {
    let client = connect(&global.redis_url()).await?;
    let names = client
        .queues()
        .await
        .map_err(lib_err("cannot list the queues"))?;
    if global.json {
        println!("{}", serde_json::to_string(&names)?);
    } else if names.is_empty() {
        eprintln!("no queues yet: `ostq push QUEUE PAYLOAD` creates one");
    } else {
        for n in names {
            println!("{n}");
        }
    }
    Ok(())
}

/// `ostq workers`: the live workers (library workers and `ostq worker` alike).
pub async fn workers(global: &Global, _args: WorkersArgs) -> anyhow::Result<()> {
    let client = connect(&global.redis_url()).await?;
    let workers = client
        .workers()
        .await
        .map_err(lib_err("cannot list the workers"))?;
    if global.json {
        println!("{}", serde_json::to_string(&workers)?);
    } else if workers.is_empty() {
        eprintln!("no live workers: `ostq worker --queue Q -- CMD` starts one");
    } else {
        print!("{}", crate::output::worker_table(&workers));
    }
    Ok(())
}
