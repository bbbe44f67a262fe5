//! How jobs and payloads are shown to people. (For programs, `--json` prints the library's own
//! serde forms: [`ostq::JobInfo`], [`ostq::Page`], …)

use std::time::Duration;

use crate::util::{now_ms, rfc3339_ms, short_duration};

/// Bytes as readable text: UTF-8 with control characters escaped; other bytes as `\xNN`.
pub fn show_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// "3s ago" / "in 5m 0s" for a unix-ms instant.
pub fn relative(ms: u64) -> String {
    let now = now_ms();
    if ms <= now {
        format!("{} ago", short_duration(Duration::from_millis(now - ms)))
    } else {
        format!("in {}", short_duration(Duration::from_millis(ms - now)))
    }
}

/// One line per job for `ostq jobs`.
pub fn job_table(jobs: &[ostq::JobInfo]) -> String {
    let mut out = format!(
        "{:<26}  {:<9}  {:>8}  {:<14}  {:<30}  {}\n",
        "ID", "STATE", "ATTEMPTS", "WHEN", "PAYLOAD", "LAST ERROR"
    );
    for job in jobs {
        let attempts = if job.max_attempts > 0 {
            format!("{}/{}", job.attempts, job.max_attempts)
        } else {
            job.attempts.to_string()
        };
        let when = job
            .due_at_ms
            .or(job.finished_at_ms)
            .or(job.enqueued_at_ms)
            .map(relative)
            .unwrap_or_default();
        let payload = job
            .payload
            .as_deref()
            .map(|p| truncate(&show_bytes(p), 30))
            .unwrap_or_else(|| "-".into());
        let error = job
            .last_error
            .as_deref()
            .map(|e| truncate(&show_bytes(e.as_bytes()), 60))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<26}  {:<9}  {:>8}  {:<14}  {:<30}  {}\n",
            job.id,
            job.state.as_str(),
            attempts,
            when,
            payload,
            error
        ));
    }
    out
}

/// Every field of one job for `ostq job`.
pub fn job_detail(job: &ostq::JobInfo) -> String {
    let mut lines = vec![
        format!("id:           {}", job.id),
        format!("queue:        {}", job.queue),
        format!("state:        {}", job.state),
    ];
    if let Some(name) = &job.name {
        lines.push(format!("task:         {name}"));
    }
    let max = if job.max_attempts > 0 {
        job.max_attempts.to_string()
    } else {
        "worker default".into()
    };
    lines.push(format!("attempts:     {} (of {max})", job.attempts));
    if job.priority != 0 {
        lines.push(format!("priority:     {}", job.priority));
    }
    let stamp = |label: &str, ms: Option<u64>| {
        ms.map(|ms| format!("{label:<14}{} ({})", rfc3339_ms(ms), relative(ms)))
    };
    lines.extend(stamp("enqueued:", job.enqueued_at_ms));
    lines.extend(stamp("started:", job.started_at_ms));
    lines.extend(stamp("finished:", job.finished_at_ms));
    let due_label = if job.state == ostq::JobState::Active {
        "lease ends:"
    } else {
        "due:"
    };
    lines.extend(stamp(due_label, job.due_at_ms));
    if let Some(err) = &job.last_error {
        lines.push(format!("last error:   {}", show_bytes(err.as_bytes())));
    }
    match &job.payload {
        Some(p) => lines.push(format!("payload:      {}", show_bytes(p))),
        None => lines.push("payload:      (not kept after completion)".into()),
    }
    if let Some(r) = &job.result {
        lines.push(format!("result:       {}", show_bytes(r)));
    }
    lines.push(format!("tracked:      {}", job.tracked));
    lines.join("\n")
}

/// The live workers as a table: id, busy/slots, queues, started and last seen (relative).
pub fn worker_table(workers: &[ostq::admin::WorkerInfo]) -> String {
    let mut out = format!(
        "{:<40} {:>9} {:<24} {:>10} {:>10}\n",
        "WORKER", "BUSY", "QUEUES", "STARTED", "SEEN"
    );
    for w in workers {
        out.push_str(&format!(
            "{:<40} {:>9} {:<24} {:>10} {:>10}\n",
            truncate(&w.id, 40),
            format!("{}/{}", w.busy, w.concurrency),
            truncate(&w.queues.join(","), 24),
            relative(w.started_at_ms),
            relative(w.last_seen_ms),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_shown_safely() {
        assert_eq!(show_bytes(b"video 42"), "video 42");
        assert_eq!(show_bytes(b"a\nb"), "a\\nb");
        assert_eq!(show_bytes(b"\xff\x00x"), "\\xff\\x00x");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
