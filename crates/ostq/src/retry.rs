//! Retry policies: how long a failed job waits before its next attempt, and how many it gets.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

/// Attempts a job gets when neither the job nor its policy says otherwise (Sidekiq's default).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

#[derive(Clone)]
enum Backoff {
    Exponential { base: Duration, max: Duration },
    Fixed(Duration),
    Custom(Arc<dyn Fn(u32) -> Duration + Send + Sync>),
}

/// How failed jobs are retried. The default is exponential backoff with jitter: about 1 s after
/// the first failure, doubling each time, capped at one hour.
///
/// ```
/// use std::time::Duration;
/// use ostq::RetryPolicy;
///
/// let policy = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(60))
///     .max_attempts(5);
/// let wait = policy.delay(3); // after the third failure: 400 ms, jittered down to at least 200 ms
/// assert!(wait >= Duration::from_millis(200) && wait <= Duration::from_millis(400));
/// assert_eq!(RetryPolicy::fixed(Duration::from_secs(2)).delay(9), Duration::from_secs(2));
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    max_attempts: Option<u32>,
    backoff: Backoff,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backoff = match &self.backoff {
            Backoff::Exponential { base, max } => format!("exponential({base:?}, max {max:?})"),
            Backoff::Fixed(d) => format!("fixed({d:?})"),
            Backoff::Custom(_) => "custom".to_string(),
        };
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &backoff)
            .finish()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::exponential(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

impl RetryPolicy {
    /// `base * 2^(failures-1)`, capped at `max`, then jittered into its upper half so that jobs that
    /// failed together do not all come back at the same instant.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Self {
            max_attempts: None,
            backoff: Backoff::Exponential { base, max },
        }
    }

    /// The same wait after every failure.
    pub fn fixed(delay: Duration) -> Self {
        Self {
            max_attempts: None,
            backoff: Backoff::Fixed(delay),
        }
    }

    /// Any function of the number of failures so far (1 after the first failure).
    pub fn custom(f: impl Fn(u32) -> Duration + Send + Sync + 'static) -> Self {
        Self {
            max_attempts: None,
            backoff: Backoff::Custom(Arc::new(f)),
        }
    }

    /// Attempts allowed in all, for jobs that do not set their own.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// The configured attempt limit, if any.
    pub fn attempt_limit(&self) -> Option<u32> {
        self.max_attempts
    }

    /// How long to wait after the `failures`-th failure.
    pub fn delay(&self, failures: u32) -> Duration {
        match &self.backoff {
            Backoff::Fixed(d) => *d,
            Backoff::Custom(f) => f(failures),
            Backoff::Exponential { base, max } => {
                let exp = failures.saturating_sub(1).min(40);
                let full = base.saturating_mul(1u32 << exp.min(31)).min(*max);
                let half = full / 2;
                let jitter_ms = half.as_millis() as u64;
                let jitter = if jitter_ms == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
                };
                half + jitter
            }
        }
    }

    /// Like [`RetryPolicy::delay`], for the worker: a custom function is user code, and a panic in
    /// it must not take the job's task down before the outcome is recorded (the job would stay
    /// `active` forever). Its panic message comes back as the error, so the caller can fall back
    /// to [`RetryPolicy::default`] and say so.
    pub(crate) fn try_delay(&self, failures: u32) -> Result<Duration, String> {
        std::panic::catch_unwind(AssertUnwindSafe(|| self.delay(failures)))
            .map_err(|panic| crate::worker::panic_message(panic.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_grows_and_caps() {
        let p = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(10));
        for failures in 1..50 {
            let full =
                Duration::from_secs(1u64 << (failures - 1).min(20)).min(Duration::from_secs(10));
            let d = p.delay(failures);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?} vs {full:?}");
        }
    }

    #[test]
    fn custom_sees_the_failure_count() {
        let p = RetryPolicy::custom(|n| Duration::from_millis(u64::from(n) * 10)).max_attempts(0);
        assert_eq!(p.delay(3), Duration::from_millis(30));
        assert_eq!(p.attempt_limit(), Some(1));
    }

    #[test]
    fn a_panicking_custom_delay_is_reported_not_raised() {
        let p = RetryPolicy::custom(|_| panic!("no delay for you"));
        assert_eq!(p.try_delay(1), Err("no delay for you".to_string()));
        let fixed = RetryPolicy::fixed(Duration::from_secs(2));
        assert_eq!(fixed.try_delay(1), Ok(Duration::from_secs(2)));
    }
}
