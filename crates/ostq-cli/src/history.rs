//! `ostq history QUEUE`: what each task did per minute or per hour (`Queue::history`).

use std::time::{Duration, SystemTime};

use ostq::admin::{Histogram, HistoryPoint, Resolution, TaskFigures};

use crate::cli::{Global, HistoryArgs};
use crate::util::{check_queue, connect, lib_err, short_duration};

/// Ranges up to this long are shown per minute, longer ones per hour.
const MINUTES_UP_TO: Duration = Duration::from_secs(3 * 3600);

/// The longest `--last`: hour points are kept 8 days.
const LONGEST: Duration = Duration::from_secs(8 * 86_400);

/// The resolution for a range looking back `last`.
fn resolution_for(last: Duration) -> Resolution {
    if last <= MINUTES_UP_TO {
        Resolution::Minute
    } else {
        Resolution::Hour
    }
}

pub async fn run(global: &Global, args: HistoryArgs) -> anyhow::Result<()> {
    check_queue(&args.queue)?;
    if args.last > LONGEST {
        anyhow::bail!(
            "--last {} is longer than the history is kept (8 days of hours, 25 hours of minutes)",
            humantime::format_duration(args.last)
        );
    }
    let resolution = resolution_for(args.last);
    let to = SystemTime::now();
    let from = to.checked_sub(args.last).unwrap_or(SystemTime::UNIX_EPOCH);
    let client = connect(&global.redis_url()).await?;
    let mut points = client
        .queue(&args.queue)
        .history(resolution, from, to)
        .await
        .map_err(lib_err("cannot read the history"))?;
    if let Some(task) = &args.task {
        for point in &mut points {
            point.tasks.retain(|name, _| name == task);
        }
    }
    if global.json {
        println!("{}", serde_json::to_string(&points)?);
    } else {
        print!("{}", table(&points, resolution));
    }
    Ok(())
}

/// A quantile for people: `-` when nothing was counted, `>5.8h` in the unbounded last bucket.
fn quantile(h: &Histogram, q: f64) -> String {
    match h.quantile_bucket(q) {
        None => "-".into(),
        Some(b) => match Histogram::upper_bound(b) {
            Some(d) => short_duration(d),
            None => format!(
                ">{}",
                Histogram::lower_bound(b).map_or_else(String::new, short_duration)
            ),
        },
    }
}

/// A point's time, UTC, to the minute.
fn when(at_ms: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms);
    let text = humantime::format_rfc3339_seconds(t).to_string();
    // 2024-05-01T10:23:00Z → 2024-05-01 10:23Z
    format!("{} {}Z", &text[..10], &text[11..16])
}

fn row(time: &str, f: &TaskFigures) -> String {
    format!(
        "{:<18} {:>9} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9}\n",
        time,
        f.processed,
        f.failed,
        f.retried,
        f.dead,
        quantile(&f.run, 0.5),
        quantile(&f.run, 0.95),
        quantile(&f.wait, 0.5),
    )
}

/// One line per point (every task together), oldest first, then the sum.
fn table(points: &[HistoryPoint], resolution: Resolution) -> String {
    let mut out = format!(
        "{:<18} {:>9} {:>7} {:>7} {:>6} {:>9} {:>9} {:>9}\n",
        match resolution {
            Resolution::Minute => "MINUTE (UTC)",
            Resolution::Hour => "HOUR (UTC)",
        },
        "PROCESSED",
        "FAILED",
        "RETRIED",
        "DEAD",
        "RUN P50",
        "RUN P95",
        "WAIT P50"
    );
    let mut sum = TaskFigures::default();
    for point in points {
        let all = point.all_tasks();
        sum.merge(&all);
        out.push_str(&row(&when(point.at_ms), &all));
    }
    out.push_str(&row("all", &sum));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_hours_or_less_is_per_minute() {
        assert_eq!(
            resolution_for(Duration::from_secs(3600)),
            Resolution::Minute
        );
        assert_eq!(
            resolution_for(Duration::from_secs(3 * 3600)),
            Resolution::Minute
        );
        assert_eq!(
            resolution_for(Duration::from_secs(86_400)),
            Resolution::Hour
        );
    }

    #[test]
    fn quantiles_read_for_people() {
        let mut h = Histogram::default();
        assert_eq!(quantile(&h, 0.5), "-");
        h.buckets[3] = 1;
        assert_eq!(quantile(&h, 0.5), "40ms");
        h.buckets[3] = 0;
        h.buckets[23] = 1;
        assert_eq!(quantile(&h, 0.5), ">5h 49m");
    }

    #[test]
    fn the_table_has_a_line_per_point_and_a_sum() {
        let mut point = HistoryPoint {
            at_ms: 1_714_000_020_000,
            ..HistoryPoint::default()
        };
        let mut ok = TaskFigures::default();
        ok.processed = 3;
        ok.run.buckets[1] = 3;
        point.tasks.insert("ok".into(), ok);
        let empty = HistoryPoint {
            at_ms: 1_714_000_080_000,
            ..HistoryPoint::default()
        };
        let text = table(&[point, empty], Resolution::Minute);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].starts_with("2024-04-24 23:07Z"), "{text}");
        assert!(lines[1].contains("10ms"), "{text}");
        assert!(lines[2].contains(" - "), "{text}");
        assert!(lines[3].starts_with("all"), "{text}");
    }
}
