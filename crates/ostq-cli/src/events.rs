//! `ostq events QUEUE`: tails a queue's events from its capped stream (turning them on first with
//! `--enable`), one line each, or one JSON object per line with `--json`.

use anyhow::Context;
use futures::StreamExt;
use ostq::events::{Event, EventSink, EventsFrom};

use crate::cli::{EventsArgs, Global};
use crate::util::{check_queue, connect, lib_err, one_line, rfc3339_ms, short_duration};

pub async fn run(global: &Global, args: EventsArgs) -> anyhow::Result<()> {
    check_queue(&args.queue)?;
    let client = connect(&global.redis_url()).await?;
    let queue = client.queue(&args.queue);
    if args.disable {
        queue
            .set_events(EventSink::Off)
            .await
            .map_err(lib_err("cannot turn the events off"))?;
        eprintln!("events of '{}' are off", args.queue);
        return Ok(());
    }
    if args.enable {
        queue
            .set_events(EventSink::Both)
            .await
            .map_err(lib_err("cannot turn the events on"))?;
        eprintln!(
            "events of '{}' are on (stream and pub/sub); `ostq events {} --disable` turns them off",
            args.queue, args.queue
        );
    } else {
        let sink = queue
            .events_sink()
            .await
            .map_err(lib_err("cannot read the queue's settings"))?;
        if matches!(sink, EventSink::Off | EventSink::PubSub) {
            eprintln!(
                "note: events of '{}' do not go to its stream ({sink:?}): nothing will show until \
                 they do (`ostq events {} --enable`)",
                args.queue, args.queue
            );
        }
    }
    let from = if args.from_start {
        EventsFrom::Beginning
    } else {
        EventsFrom::Now
    };
    let events = client
        .events(&args.queue, from)
        .await
        .map_err(lib_err("cannot read the events"))?;
    let mut events = Box::pin(events);
    let mut shown = 0u64;
    loop {
        if args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        let next = tokio::select! {
            next = events.next() => next,
            _ = ostq::worker::shutdown_signal() => return Ok(()),
        };
        let Some(event) = next else { return Ok(()) };
        let event = event.map_err(lib_err("cannot read the events"))?;
        if global.json {
            println!(
                "{}",
                serde_json::to_string(&event).context("cannot encode an event")?
            );
        } else {
            println!("{}", line(&event));
        }
        shown += 1;
    }
}

/// One event for people: time, what, job id, and what else it says.
fn line(e: &Event) -> String {
    let mut out = format!(
        "{}  {:<9}  {}",
        rfc3339_ms(e.ts),
        format!("{:?}", e.event).to_lowercase(),
        e.id
    );
    if let Some(attempt) = e.attempt {
        out.push_str(&format!("  attempt {attempt}"));
    }
    if let Some(state) = &e.state {
        out.push_str(&format!("  ({state})"));
    }
    if let Some(ms) = e.retry_in_ms {
        out.push_str(&format!(
            "  retry in {}",
            short_duration(std::time::Duration::from_millis(ms))
        ));
    }
    if let Some(from) = &e.from {
        out.push_str(&format!("  from {from}"));
    }
    if let Some(progress) = &e.progress {
        out.push_str(&format!("  progress {progress}"));
    }
    if let Some(error) = &e.error {
        out.push_str(&format!("  error: {}", one_line(error)));
    }
    out
}
