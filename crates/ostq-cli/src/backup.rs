//! `ostq export` and `ostq import`: queues to and from JSON Lines (docs/backup.md), through the
//! library's `admin::backup` (cursor paging out, id-checked batches in).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use ostq::admin::backup::{rename, Line};

use crate::cli::{ExportArgs, Global, ImportArgs};
use crate::util::{check_queue, connect, lib_err, now_ms};

/// Lines written per import batch (one MULTI/EXEC per queue in it).
const IMPORT_BATCH: usize = 500;

pub async fn export(global: &Global, args: ExportArgs) -> anyhow::Result<()> {
    let client = connect(&global.redis_url()).await?;
    let queues = if args.queues.is_empty() {
        client
            .queues()
            .await
            .map_err(lib_err("cannot list the queues"))?
    } else {
        for queue in &args.queues {
            check_queue(queue)?;
        }
        args.queues.clone()
    };
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    // Pause first, all at once, and remember which were running to resume only those.
    let mut paused_by_us = Vec::new();
    if args.pause {
        for name in &queues {
            let queue = client.queue(name);
            let counts = queue
                .counts()
                .await
                .map_err(lib_err("cannot read a queue"))?;
            if !counts.paused {
                queue
                    .pause()
                    .await
                    .map_err(lib_err("cannot pause a queue"))?;
                paused_by_us.push(name.clone());
            }
        }
    }
    let progress = export_progress(&client, &queues).await;
    let written = write_export(&client, &queues, &mut out, &paused_by_us, progress.as_ref()).await;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    for name in &paused_by_us {
        client
            .queue(name)
            .resume()
            .await
            .map_err(lib_err("cannot resume a queue paused for the export"))?;
    }
    let jobs = written?;
    out.flush().context("cannot write the export")?;
    eprintln!("exported {jobs} job(s) of {} queue(s)", queues.len());
    Ok(())
}

async fn write_export(
    client: &ostq::Client,
    queues: &[String],
    out: &mut dyn Write,
    paused_by_us: &[String],
    progress: Option<&ProgressBar>,
) -> anyhow::Result<u64> {
    let mut jobs = 0;
    writeln!(out, "{}", serde_json::to_string(&Line::header(now_ms()))?)?;
    for name in queues {
        let mut exporter = client.queue(name).exporter();
        let mut first = true;
        while let Some(lines) = exporter
            .next_lines()
            .await
            .map_err(lib_err("cannot read the queue"))?
        {
            for mut line in lines {
                // The queue's own setting, not the pause this export made.
                if let (true, Line::Queue(settings)) = (first, &mut line) {
                    if paused_by_us.contains(name) {
                        settings.paused = false;
                    }
                }
                first = false;
                if matches!(line, Line::Job(_)) {
                    jobs += 1;
                    if let Some(bar) = progress {
                        bar.inc(1);
                    }
                }
                writeln!(out, "{}", serde_json::to_string(&line)?)
                    .context("cannot write the export")?;
            }
        }
    }
    Ok(jobs)
}

/// A progress bar on stderr when it is a terminal (nothing when piped or redirected), sized by
/// the queues' counts read now: under live traffic the export may write somewhat more or fewer
/// jobs than that (docs/backup.md, "Consistency"), so the bar is a guide, not a promise.
async fn export_progress(client: &ostq::Client, queues: &[String]) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let mut total = 0;
    for name in queues {
        let counts = client.queue(name).counts().await.ok()?;
        total += counts.pending
            + counts.active
            + counts.scheduled
            + counts.retry
            + counts.dead
            + counts.completed;
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} jobs  {per_sec}  ({eta})")
    {
        bar.set_style(style);
    }
    Some(bar)
}

/// Reads the file's lines, numbered from 1, with blank lines left out.
fn numbered_lines(
    path: &Path,
) -> anyhow::Result<impl Iterator<Item = (usize, std::io::Result<String>)>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty())))
}

/// One line parsed and renamed, or why it is malformed.
fn read_line(
    number: usize,
    text: std::io::Result<String>,
    renames: &[(String, String)],
) -> anyhow::Result<Result<Line, String>> {
    let text = text.with_context(|| format!("cannot read line {number}"))?;
    Ok(Line::parse(&text).map(|mut line| {
        rename(&mut line, renames);
        line
    }))
}

pub async fn import(global: &Global, args: ImportArgs) -> anyhow::Result<()> {
    // Pass 1: check every line before writing anything.
    let mut bad: HashSet<usize> = HashSet::new();
    let mut header_seen = false;
    for (number, text) in numbered_lines(&args.file)? {
        let problem = match read_line(number, text, &args.rename)? {
            Ok(Line::Header { .. }) if !header_seen && number == 1 => {
                header_seen = true;
                continue;
            }
            Ok(Line::Header { .. }) => "a second header".to_string(),
            Ok(_) if !header_seen => bail!(
                "line {number}: the file does not start with an ostq export header; nothing was written"
            ),
            Ok(_) => continue,
            Err(problem) => problem,
        };
        if number == 1 {
            bail!("line 1: not an ostq export header ({problem}); nothing was written");
        }
        if !args.skip_bad {
            bail!("line {number}: {problem}; nothing was written (--skip-bad skips such lines)");
        }
        eprintln!("skipping line {number}: {problem}");
        bad.insert(number);
    }
    if !header_seen {
        bail!("{} is empty; nothing was written", args.file.display());
    }
    // Pass 2: write in batches.
    let client = connect(&global.redis_url()).await?;
    let mut importer = client.importer();
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    for (number, text) in numbered_lines(&args.file)? {
        if bad.contains(&number) {
            continue;
        }
        let line = read_line(number, text, &args.rename)?
            .map_err(|problem| anyhow!("line {number} changed since it was checked: {problem}"))?;
        batch.push(line);
        if batch.len() == IMPORT_BATCH {
            importer
                .write(&batch)
                .await
                .map_err(lib_err("cannot import"))?;
            batch.clear();
        }
    }
    importer
        .write(&batch)
        .await
        .map_err(lib_err("cannot import"))?;
    let counts = importer.counts();
    if global.json {
        let mut json = serde_json::to_value(counts)?;
        json["skipped_bad"] = bad.len().into();
        let mut lines: Vec<usize> = bad.into_iter().collect();
        lines.sort_unstable();
        json["bad_lines"] = lines.into();
        println!("{json}");
    } else {
        eprintln!(
            "imported {} job(s), {} already present (left as they were), {} malformed line(s) skipped, settings of {} queue(s), {} schedule(s) added, {} already there",
            counts.imported,
            counts.present,
            bad.len(),
            counts.queues,
            counts.schedules,
            counts.schedules_present
        );
    }
    Ok(())
}
