//! Durable writes: how many copies of a push (or of a worker's outcome batch) must exist before it
//! is reported as done. Redis replicates asynchronously and acknowledges a write as soon as the
//! primary has it in memory; a failover or a crash can then drop writes that were acknowledged
//! (docs/design.md §16). With a [`Durability`] other than [`Durability::Async`], the write is
//! followed, in the same round trip and on the same connection, by `WAIT` (replicas have it in
//! memory) or `WAITAOF` (the primary and/or replicas have fsynced it to their AOF, Redis 7.2 and
//! later), and the push fails with [`crate::Error::NotDurable`] when fewer copies were confirmed in
//! time.

use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// Longest time a durable write may wait for its copies. The connections durable writes use allow
/// replies this late (and a few of them queued behind each other); Redis itself has no limit.
pub const MAX_DURABLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait for copies used when a [`Durability`] is parsed without one (`"1"`): one second.
pub const DEFAULT_DURABLE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many copies of a write must be confirmed before it is reported as done. Set it per client
/// ([`crate::connection::ClientBuilder::durability`]), per push
/// ([`crate::PushOptions::durable`]) or for a worker's outcomes
/// ([`crate::WorkerBuilder::durable_outcomes`]).
///
/// ```
/// use std::time::Duration;
/// use ostq::Durability;
/// // One replica must have the push in memory within 500 ms (`WAIT 1 500`).
/// let replicas = Durability::replicas(1, Duration::from_millis(500));
/// assert_eq!("1:500ms".parse::<Durability>()?, replicas);
/// // The primary's AOF and one replica's AOF fsynced, Redis 7.2+ (`WAITAOF 1 1 1000`).
/// let aof = Durability::aof(true, 1, Duration::from_secs(1));
/// assert_eq!("aof:1".parse::<Durability>()?, aof);
/// assert_eq!("none".parse::<Durability>()?, Durability::Async);
/// # Ok::<(), ostq::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Reported done once the primary has the write in memory (Redis's default; the fastest). A
    /// failover or a restart without AOF can lose it.
    #[default]
    Async,
    /// `WAIT count timeout`: reported done once `count` replicas have the write in memory. A
    /// failover to one of them keeps it.
    Replicas {
        /// Replicas that must acknowledge (at least 1).
        count: u32,
        /// How long to wait for them (at most [`MAX_DURABLE_TIMEOUT`]).
        timeout: Duration,
    },
    /// `WAITAOF local replicas timeout` (Redis 7.2 and later): reported done once the primary (when
    /// `local`) and `replicas` replicas have fsynced the write to their append-only file, so it
    /// survives a crash of the machine as well. Needs `appendonly yes` on the servers counted.
    Aof {
        /// The primary's own AOF must be fsynced.
        local: bool,
        /// Replicas whose AOF must be fsynced.
        replicas: u32,
        /// How long to wait (at most [`MAX_DURABLE_TIMEOUT`]).
        timeout: Duration,
    },
}

impl Durability {
    /// `WAIT count timeout` after each write. See [`Durability::Replicas`].
    ///
    /// ```
    /// let durable = ostq::Durability::replicas(1, std::time::Duration::from_secs(1));
    /// assert!(durable.is_durable());
    /// ```
    pub fn replicas(count: u32, timeout: Duration) -> Self {
        Durability::Replicas { count, timeout }
    }

    /// `WAITAOF local replicas timeout` after each write (Redis 7.2 and later). See
    /// [`Durability::Aof`].
    ///
    /// ```
    /// let fsynced = ostq::Durability::aof(true, 0, std::time::Duration::from_secs(1));
    /// assert!(fsynced.is_durable());
    /// ```
    pub fn aof(local: bool, replicas: u32, timeout: Duration) -> Self {
        Durability::Aof {
            local,
            replicas,
            timeout,
        }
    }

    /// Whether writes wait for copies (anything but [`Durability::Async`]).
    ///
    /// ```
    /// assert!(!ostq::Durability::Async.is_durable());
    /// ```
    pub fn is_durable(&self) -> bool {
        !matches!(self, Durability::Async)
    }

    /// Checks the numbers: something to wait for, a timeout of 1 ms..=[`MAX_DURABLE_TIMEOUT`].
    ///
    /// ```
    /// use std::time::Duration;
    /// assert!(ostq::Durability::replicas(0, Duration::from_secs(1)).check().is_err());
    /// assert!(ostq::Durability::replicas(1, Duration::from_secs(60)).check().is_err());
    /// ```
    pub fn check(&self) -> Result<()> {
        let (something, timeout) = match *self {
            Durability::Async => return Ok(()),
            Durability::Replicas { count, timeout } => (count > 0, timeout),
            Durability::Aof {
                local,
                replicas,
                timeout,
            } => (local || replicas > 0, timeout),
        };
        if !something {
            return Err(Error::Config(format!(
                "durability {self}: wait for at least one replica (or, with aof, the local fsync)"
            )));
        }
        if timeout.is_zero() || timeout > MAX_DURABLE_TIMEOUT {
            return Err(Error::Config(format!(
                "durability {self}: the timeout must be 1 ms..={MAX_DURABLE_TIMEOUT:?} (0 would \
                 make Redis wait forever)"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Durability::Async => write!(f, "none"),
            Durability::Replicas { count, timeout } => {
                write!(f, "{count}:{}ms", timeout.as_millis())
            }
            Durability::Aof {
                local,
                replicas,
                timeout,
            } => {
                let prefix = if local { "aof" } else { "aof-replicas" };
                write!(f, "{prefix}:{replicas}:{}ms", timeout.as_millis())
            }
        }
    }
}

/// Parses what `ostq push --durable` and `OSTQ_DURABLE` take: `none`; `N` or `N:TIMEOUT` (`WAIT`
/// for N replicas); `aof:N[:TIMEOUT]` (`WAITAOF`: the primary's fsync and N replicas');
/// `aof-replicas:N[:TIMEOUT]` (N replicas' fsync only). TIMEOUT is `500ms`, `2s` or milliseconds;
/// default [`DEFAULT_DURABLE_TIMEOUT`].
impl FromStr for Durability {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Config(format!(
                "durability {text:?}: {why}; expected none, N[:TIMEOUT], aof:N[:TIMEOUT] or \
                 aof-replicas:N[:TIMEOUT] (TIMEOUT like 500ms or 2s)"
            ))
        };
        let text = text.trim();
        if text.is_empty() || text == "none" || text == "0" {
            return Ok(Durability::Async);
        }
        let (kind, rest) = match text.split_once(':') {
            Some(("aof", rest)) => (Some(true), rest),
            Some(("aof-replicas", rest)) => (Some(false), rest),
            _ => (None, text),
        };
        let (count, timeout) = match rest.split_once(':') {
            Some((count, timeout)) => (count, Some(timeout)),
            None => (rest, None),
        };
        let count: u32 = count
            .parse()
            .map_err(|_| bad("the replica count is not a number"))?;
        let timeout = match timeout {
            None => DEFAULT_DURABLE_TIMEOUT,
            Some(t) => parse_timeout(t).ok_or_else(|| bad("bad timeout"))?,
        };
        let durability = match kind {
            None => Durability::replicas(count, timeout),
            Some(local) => Durability::aof(local, count, timeout),
        };
        durability.check()?;
        Ok(durability)
    }
}

fn parse_timeout(text: &str) -> Option<Duration> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = text.strip_suffix('s') {
        return s
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
            .map(Duration::from_secs_f64);
    }
    text.parse().ok().map(Duration::from_millis)
}

/// What Redis confirmed after a durable write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acked {
    /// Whether the primary fsynced it (WAITAOF with local; `true` when not asked).
    pub(crate) local: bool,
    /// Replicas that acknowledged (WAIT) or fsynced (WAITAOF) it.
    pub(crate) replicas: u32,
}

impl Acked {
    /// Whether this is as much as `durability` asked for.
    pub(crate) fn satisfies(&self, durability: &Durability) -> bool {
        match *durability {
            Durability::Async => true,
            Durability::Replicas { count, .. } => self.replicas >= count,
            Durability::Aof {
                local, replicas, ..
            } => (self.local || !local) && self.replicas >= replicas,
        }
    }

    /// The error a caller gets when this falls short of `durability`.
    pub(crate) fn shortfall(&self, durability: &Durability, ids: Vec<String>) -> Error {
        let (wanted, local_wanted) = match *durability {
            Durability::Async => (0, false),
            Durability::Replicas { count, .. } => (count, false),
            Durability::Aof {
                local, replicas, ..
            } => (replicas, local),
        };
        Error::NotDurable {
            ids,
            acked: self.replicas,
            wanted,
            local_fsync_missing: local_wanted && !self.local,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durability_is_parsed_and_checked() {
        let ms = Duration::from_millis;
        assert_eq!(
            "2".parse::<Durability>().unwrap(),
            Durability::replicas(2, DEFAULT_DURABLE_TIMEOUT)
        );
        assert_eq!(
            "1:250".parse::<Durability>().unwrap(),
            Durability::replicas(1, ms(250))
        );
        assert_eq!(
            "1:2s".parse::<Durability>().unwrap(),
            Durability::replicas(1, ms(2000))
        );
        assert_eq!(
            "aof-replicas:2:100ms".parse::<Durability>().unwrap(),
            Durability::aof(false, 2, ms(100))
        );
        assert_eq!(
            "aof:0".parse::<Durability>().unwrap(),
            Durability::aof(true, 0, DEFAULT_DURABLE_TIMEOUT)
        );
        for bad in ["x", "1:", "1:0", "1:11s", "aof-replicas:0", "-1", "1:2h"] {
            assert!(bad.parse::<Durability>().is_err(), "{bad}");
        }
        for d in [
            Durability::Async,
            Durability::replicas(3, ms(40)),
            Durability::aof(true, 1, ms(900)),
            Durability::aof(false, 1, ms(900)),
        ] {
            assert_eq!(d.to_string().parse::<Durability>().unwrap(), d);
        }
    }

    #[test]
    fn acks_are_compared_with_what_was_asked() {
        let one = Durability::replicas(1, Duration::from_secs(1));
        let acked = |local, replicas| Acked { local, replicas };
        assert!(acked(true, 1).satisfies(&one));
        assert!(!acked(true, 0).satisfies(&one));
        let aof = Durability::aof(true, 0, Duration::from_secs(1));
        assert!(!acked(false, 3).satisfies(&aof));
        let err = acked(false, 0).shortfall(&aof, vec!["a".into()]);
        assert!(
            matches!(err, Error::NotDurable { acked: 0, wanted: 0, local_fsync_missing: true, ref ids } if ids == &["a"]),
            "{err}"
        );
    }
}
