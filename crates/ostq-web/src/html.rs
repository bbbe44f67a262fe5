//! Building HTML by hand: every piece of data goes through [`esc`] (text and attribute values
//! alike), so a payload, an error text, a queue name or a job id can never become markup. The page
//! shell carries no inline script or style: the Content-Security-Policy forbids both.

use std::fmt::{self, Display, Write};
use std::time::Duration;

use crate::Ctx;

/// Text made safe for HTML text and quoted attribute values: `& < > " '` escaped (see the
/// tests below).
pub(crate) struct Esc<'a>(pub(crate) &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Escapes `text` for HTML (see [`Esc`]).
pub(crate) fn esc(text: &str) -> Esc<'_> {
    Esc(text)
}

/// A path segment or query value percent-encoded (everything but unreserved characters), for
/// URLs built from queue names, job ids and cursors. Still passed through [`esc`] when written
/// into an attribute (it is then a no-op).
pub(crate) fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A query string from pairs, leaving out empty values; `""` or `"?a=1&b=2"`.
pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(if out.is_empty() { '?' } else { '&' });
        let _ = write!(out, "{}={}", url_part(key), url_part(value));
    }
    out
}

/// A count with thin separators: 1234567 → "1,234,567".
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count with its noun: `1 queue`, `2 queues`, `1,000 jobs`.
pub(crate) fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", count(n), if n == 1 { one } else { many })
}

/// A short duration for people: 850ms, 12.3s, 3m 20s, 2h 5m, 3d 4h.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    match s {
        0..=59 => format!("{:.1}s", d.as_secs_f64()),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A unix-ms time as UTC text, `2026-11-26 12:34:56Z`.
pub(crate) fn time(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => format!("{ms} ms"),
    }
}

/// A time with how long ago (or ahead) it is: `2026-11-26 12:34:56Z (3m 2s ago)`.
pub(crate) fn time_ago(ms: u64, now_ms: u64) -> String {
    let when = time(ms);
    if ms <= now_ms {
        let ago = duration(Duration::from_millis(now_ms - ms));
        format!("{when} ({ago} ago)")
    } else {
        let ahead = duration(Duration::from_millis(ms - now_ms));
        format!("{when} (in {ahead})")
    }
}

/// A rate 0..1 as a percentage, `-` when unknown.
pub(crate) fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// Milliseconds since the epoch now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The hidden field every form that changes something carries.
pub(crate) fn csrf_field(ctx: &Ctx) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&ctx.csrf)
    )
}

/// Which part of the navigation is the current page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Queue,
    Workers,
    Schedules,
    Metrics,
    None,
}

/// The whole page around `body`: head with the embedded assets, the navigation, and `main`.
pub(crate) fn page(ctx: &Ctx, title: &str, nav: Nav, body: &str) -> String {
    let base = esc(&ctx.base);
    let version = crate::assets::VERSION;
    let current = |item: Nav| {
        if item == nav {
            r#" aria-current="page""#
        } else {
            ""
        }
    };
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<meta name="referrer" content="same-origin">
<meta name="csrf-token" content="{csrf}">
<title>{title} · ostq</title>
<link rel="icon" href="{base}/assets/favicon.svg?v={version}">
<link rel="stylesheet" href="{base}/assets/app.css?v={version}">
<script src="{base}/assets/app.js?v={version}" defer></script>
</head>
<body data-base="{base}">
<header class="top">
<a class="brand" href="{home}">ostq</a>
<nav>
<a href="{home}"{overview}>Overview</a>
<a href="{base}/workers"{workers}>Workers</a>
<a href="{base}/schedules"{schedules}>Schedules</a>
<a href="{base}/metrics-page"{metrics}>Metrics</a>
</nav>
<span class="redis" title="Redis">{redis}</span>
{mode}{logout}
</header>
<main>
{body}
</main>
</body>
</html>
"#,
        title = esc(title),
        csrf = esc(&ctx.csrf),
        home = esc(&ctx.home()),
        overview = current(Nav::Overview),
        workers = current(Nav::Workers),
        schedules = current(Nav::Schedules),
        metrics = current(Nav::Metrics),
        redis = esc(&ctx.redis_label),
        mode = if ctx.read_only {
            r#"<span class="badge" id="read-only">read-only</span>"#
        } else {
            ""
        },
        logout = if ctx.can_log_out {
            format!(
                r#"<form method="post" action="{base}/logout" class="inline">{}<button type="submit" class="link">Log out</button></form>"#,
                csrf_field(ctx)
            )
        } else {
            String::new()
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_markup_is_escaped() {
        let hostile = r#"<script>alert(1)</script>"><img src=x onerror='a'>&"#;
        let shown = esc(hostile).to_string();
        assert!(!shown.contains('<') && !shown.contains('>') && !shown.contains('"'));
        assert!(!shown.contains('\''));
        assert_eq!(esc("a&b").to_string(), "a&amp;b");
    }

    #[test]
    fn url_parts_keep_only_unreserved_characters() {
        assert_eq!(url_part("a b/c?d#e%"), "a%20b%2Fc%3Fd%23e%25");
        assert_eq!(url_part("é"), "%C3%A9");
        assert_eq!(
            query(&[("a", "1"), ("b", ""), ("c", "x y")]),
            "?a=1&c=x%20y"
        );
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(counted(1, "queue", "queues"), "1 queue");
        assert_eq!(counted(0, "queue", "queues"), "0 queues");
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_secs(200)), "3m 20s");
        assert_eq!(time(0), "1970-01-01 00:00:00Z");
        assert_eq!(percent(Some(0.125)), "12.5%");
    }
}
