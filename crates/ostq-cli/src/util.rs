//! Shared pieces: argument parsers, connecting with clear errors, exit codes.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;

/// How long connecting to Redis may take before we say it is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An exit with a specific code and message (printed as is), e.g. an alert threshold.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Prints a command-line error as one line (help and version as they are) and picks the code.
pub fn report_clap_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // The first paragraph names the problem (and, after a colon, the arguments).
            let text = err.render().to_string();
            let paragraph: Vec<&str> = text
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = if paragraph.is_empty() {
                "error: invalid command line".to_string()
            } else {
                paragraph.join(" ")
            };
            let first = if first.starts_with("error:") {
                first
            } else {
                format!("error: {first}")
            };
            eprintln!("{first} (see `ostq --help`)");
            ExitCode::from(2)
        }
    }
}

/// Joins a multi-line message into one line.
pub fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `2days`, `1h 30m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration: expected e.g. 30s, 5m, 1h, 250ms".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|e| format!("bad duration {t:?}: {e}"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("bad duration {t:?} ({e}): expected e.g. 30s, 5m, 1h, 250ms"))
}

/// Parses an RFC 3339 time such as `2030-01-01T09:00:00Z` or `2030-01-01T10:00:00+01:00`.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let t = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
        format!("bad time {text:?} ({e}): expected RFC 3339, e.g. 2030-01-01T09:00:00Z")
    })?;
    let ms = t.timestamp_millis();
    let ms = u64::try_from(ms).map_err(|_| format!("time {text:?} is before 1970"))?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

/// A failure rate between 0 and 1.
#[derive(Debug, Clone, Copy)]
pub struct Rate(pub f64);

/// Parses a durability for `--durable`: `N[:TIMEOUT]`, `aof:N[:TIMEOUT]`, `none`.
pub fn parse_durability(text: &str) -> Result<ostq::Durability, String> {
    text.parse::<ostq::Durability>().map_err(|e| match e {
        ostq::Error::Config(msg) => msg,
        other => other.to_string(),
    })
}

/// Parses a rate for the alert thresholds: `0.05` or `5%`.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let t = text.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (t, 1.0),
    };
    let value: f64 = num.parse().map_err(|_| {
        format!("bad rate {t:?}: expected a fraction like 0.05 or a percentage like 5%")
    })?;
    let value = value / scale;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("rate {t:?} is outside 0..1 (0%..100%)"));
    }
    Ok(Rate(value))
}

/// Parses a job state name.
pub fn parse_state(text: &str) -> Result<ostq::JobState, String> {
    text.trim()
        .to_ascii_lowercase()
        .parse::<ostq::JobState>()
        .map_err(|_| {
            format!(
                "unknown state {text:?}: expected pending, active, scheduled, retry, dead or completed"
            )
        })
}

/// Hides a password in a URL before it is shown (the library's rule).
pub use ostq::connection::redact;

/// The URLs the library takes, for messages about a bad one.
const URL_FORMS: &str = "redis://[user:password@]host[:port][/db], \
     redis+sentinel://host:port[,…]/<service> or redis+cluster://host:port[,…]";

/// Whether a URL carries a password (`scheme://[user]:password@…`).
fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .is_some_and(|(_, password)| !password.is_empty())
}

/// Explains a library error met connecting to Redis in words an operator can act on, by its kind.
pub fn explain_redis_error(url: &str, err: &ostq::Error) -> anyhow::Error {
    let shown = redact(url);
    match err {
        ostq::Error::Auth { .. } if has_password(url) => {
            anyhow!("Redis at {shown} refused the password: check the user and password in the URL")
        }
        ostq::Error::Auth { .. } => anyhow!(
            "Redis at {shown} requires a password: put it in the URL, redis://:PASSWORD@host:port"
        ),
        ostq::Error::Unreachable { message, .. } => anyhow!(
            "cannot connect to Redis at {shown}: {} (is redis-server running there?)",
            one_line(message)
        ),
        // `connect` is given nothing but the URL: a configuration error is about it.
        ostq::Error::Config(msg) => anyhow!("{msg} (expected {URL_FORMS})"),
        other => anyhow!(
            "cannot use Redis at {shown}: {}",
            one_line(&other.to_string())
        ),
    }
}

fn no_answer(url: &str) -> anyhow::Error {
    anyhow!(
        "cannot connect to Redis at {}: no answer within {} s",
        redact(url),
        CONNECT_TIMEOUT.as_secs()
    )
}

/// Connects the ostq client (one server, Sentinel or Cluster), with a time limit and errors that
/// say what went wrong.
pub async fn connect(url: &str) -> anyhow::Result<ostq::Client> {
    match tokio::time::timeout(CONNECT_TIMEOUT, ostq::Client::connect(url)).await {
        Err(_) => Err(no_answer(url)),
        Ok(Err(e)) => Err(explain_redis_error(url, &e)),
        Ok(Ok(client)) => {
            // Connecting sends nothing without a password: one read shows whether Redis wants one.
            match tokio::time::timeout(CONNECT_TIMEOUT, client.queues()).await {
                Err(_) => Err(no_answer(url)),
                Ok(Err(e)) => Err(explain_redis_error(url, &e)),
                Ok(Ok(_)) => Ok(client),
            }
        }
    }
}

/// Maps a library error from a Redis operation into a one-line message with context.
pub fn lib_err(what: &str) -> impl FnOnce(ostq::Error) -> anyhow::Error + '_ {
    move |e| anyhow::Error::new(e).context(what.to_string())
}

/// Checks a queue name before using it, with the library's own rules.
pub fn check_queue(name: &str) -> anyhow::Result<()> {
    match ostq::keys::validate_queue_name(name) {
        Ok(()) => Ok(()),
        Err(ostq::Error::Config(msg)) => Err(anyhow!("{msg}")),
        Err(e) => Err(e.into()),
    }
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A short human form of a duration (the library's, so alerts and tables agree).
pub use ostq::admin::alerts::short_duration;

/// An RFC 3339 UTC time for unix milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-3s").is_err());
    }

    #[test]
    fn rates() {
        assert!((parse_rate("5%").unwrap().0 - 0.05).abs() < 1e-9);
        assert!((parse_rate("0.1").unwrap().0 - 0.1).abs() < 1e-9);
        assert!(parse_rate("2").is_err());
        assert!(parse_rate("abc").is_err());
    }

    #[test]
    fn passwords_in_urls_are_noticed() {
        assert!(has_password("redis://:pw@h:1/0"));
        assert!(has_password("redis://user:pw@h:1"));
        assert!(has_password("redis+sentinel://:pw@h:1,h:2/mymaster"));
        assert!(!has_password("redis://user@h:1"));
        assert!(!has_password("redis://h:1"));
        assert!(!has_password("redis://:@h:1"));
        assert!(!has_password("nonsense"));
    }

    #[test]
    fn times() {
        let t = parse_rfc3339("1970-01-01T01:00:01+01:00").unwrap();
        assert_eq!(t, SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        assert!(parse_rfc3339("tomorrow").is_err());
    }
}
