//! Running one job: decode it, pick its handler, run it under `catch_unwind` and the timeout,
//! and turn however it ended (success, error, panic, timeout, cancellation, shutdown) into an
//! outcome for the lease keeper. Every user-supplied code path ends in an outcome.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::field::Empty;
use tracing::{debug, warn, Instrument};

use super::handler::{panic_message, BoxError, DynHandler, HandlerFuture, Permanent, Unhandled};
use super::prefetch::Leased;
use super::runtime::{Figures, Outcome, OutcomeKind, Settled, Shared};
use super::Failure;
use crate::envelope::Envelope;
use crate::job::{now_ms, Job};
use crate::keys::QueueKeys;
use crate::retry::RetryPolicy;
use crate::store::lease;

/// Longest error text kept with a job.
pub(super) const MAX_ERROR_LEN: usize = 4096;

/// Runs `job` on the slot `permit` holds, then, while jobs are parked ahead of free slots
/// (prefetch, docs/design.md §7.1), the next one on the same slot, without waiting for a fetch.
/// The slot is freed once none is parked.
pub(super) fn start_job(shared: &Arc<Shared>, job: Leased, permit: OwnedSemaphorePermit) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut job = job;
        loop {
            run_on_slot(&shared, job).await;
            match shared.prefetch.next() {
                Some(next) => job = next,
                None => break,
            }
        }
        drop(permit);
    });
}

/// One job on a slot: run it and send its outcome to the lease keeper.
async fn run_on_slot(shared: &Arc<Shared>, job: Leased) {
    let Leased {
        queue,
        group,
        index,
        envelope,
        ..
    } = job;
    shared.running.fetch_add(1, Ordering::Relaxed);
    shared.prefetch.started.fetch_add(1, Ordering::Relaxed);
    // The job's span: user code's events inside the handler carry it. The id, task and attempt
    // are filled in once the envelope is decoded, the outcome once the attempt ended. DEBUG, not
    // INFO: with an INFO fmt subscriber a span per job took processing from ~320k to ~200k
    // jobs/s in `ostq bench` (2.1 -> 5 us of worker CPU per job); `RUST_LOG=ostq=debug` shows it.
    let span = tracing::debug_span!(
        "job",
        queue = %shared.queues[queue].queue,
        id = Empty,
        task = Empty,
        attempt = Empty,
        outcome = Empty,
    );
    // Feature `opentelemetry`: the span continues the trace the job was pushed in (its envelope's
    // traceparent), so every attempt is a child of the producer's span. Set before the span is
    // first entered: the OpenTelemetry layer starts its span then, and its parent is fixed.
    #[cfg(feature = "opentelemetry")]
    crate::otel::continue_trace(&span, &envelope);
    let task = async move {
        // Last resort: whatever panics in here (a handler future whose drop panics at a timeout,
        // a bug of ours), the job must end in an outcome. Without one its group would be renewed
        // for as long as the worker runs and the job would stay `active` forever.
        let attempt = run_job(shared, queue, group, index, &envelope);
        let settled = match AssertUnwindSafe(attempt).catch_unwind().await {
            Ok(settled) => settled,
            Err(panic) => {
                let panic = panic_message(panic.as_ref());
                panicked_job(shared, queue, group, index, &envelope, panic)
            }
        };
        tracing::Span::current().record("outcome", settled.kind.name());
        let _ = shared.events.send(Outcome {
            queue,
            group,
            index,
            settled,
        });
        shared.running.fetch_sub(1, Ordering::Relaxed);
    };
    task.instrument(span).await;
}

/// The outcome of a job whose task panicked outside the handler's own `catch_unwind`: a failed
/// attempt, retried after the default backoff (or dead when it was the last). Calls no user code
/// (no policy, no hook), so it cannot panic the same way again.
pub(super) fn panicked_job(
    shared: &Shared,
    queue: usize,
    group: u64,
    index: u32,
    bytes: &[u8],
    panic: String,
) -> Settled {
    let keys = &shared.queues[queue];
    let error = truncate(format!("worker panicked while running the job: {panic}"));
    let Ok(envelope) = Envelope::decode(bytes) else {
        // As in `run_job`: keep the bytes for the operator, as the payload of a dead job.
        let id = format!("~{group}.{index}");
        let wrapped = Envelope {
            id: id.clone(),
            payload: bytes.to_vec(),
            last_error: error.clone(),
            ..Envelope::default()
        };
        let kind = OutcomeKind::Failed {
            envelope: wrapped.encode(),
            dead: true,
            delay_ms: 0,
            attempt: 1,
            error,
        };
        return Settled::new(id, false, String::new(), kind);
    };
    let failures = envelope.attempt.saturating_add(1);
    let max_attempts = if envelope.max_attempts == 0 {
        let name = (!envelope.name.is_empty()).then_some(envelope.name.as_str());
        shared
            .handlers
            .policy_for(name)
            .and_then(RetryPolicy::attempt_limit)
            .unwrap_or(shared.config.default_max_attempts)
    } else {
        envelope.max_attempts
    };
    let dead = failures >= max_attempts;
    let delay = if dead {
        Duration::ZERO
    } else {
        RetryPolicy::default().delay(failures)
    };
    warn!(queue = %keys.queue, id = %envelope.id, attempt = failures, dead, error = %error, "job's task panicked; recorded as a failed attempt");
    failed_attempt(envelope, failures, error, dead, millis(delay))
}

/// The outcome of failed attempt number `failures`: the envelope rewritten with that count and
/// the error, for `fail.lua` to file in `retry` (after `delay_ms`) or `dead`.
fn failed_attempt(
    mut envelope: Envelope,
    failures: u32,
    error: String,
    dead: bool,
    delay_ms: u64,
) -> Settled {
    envelope.attempt = failures;
    envelope.last_error = error.clone();
    let figures = Figures {
        task: envelope.name.clone(),
        ..Figures::default()
    };
    let kind = OutcomeKind::Failed {
        envelope: envelope.encode(),
        dead,
        delay_ms,
        attempt: failures,
        error,
    };
    Settled::new(
        envelope.id.clone(),
        envelope.tracked(),
        envelope.unique.clone(),
        kind,
    )
    .with(figures)
}

/// A delay in whole milliseconds for the scripts; a custom policy may return anything, and
/// `as u64` would wrap a huge one around to a short delay.
pub(super) fn millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

pub(super) async fn run_job(
    shared: &Shared,
    queue: usize,
    group: u64,
    index: u32,
    bytes: &[u8],
) -> Settled {
    // Everything up to the handler's call is done in a plain function: what this future keeps
    // across its awaits is then only what it needs after them (the envelope and the job were
    // kept too, their space never reused, and the whole future is moved several times per job).
    let Started {
        attempt,
        clock,
        started_ms,
        id,
        tracked,
        unique,
        mut figures,
        enqueued_at_ms,
        first_attempt,
    } = match start(shared, queue, group, index, bytes) {
        Ok(started) => started,
        Err(refused) => return *refused,
    };
    let Some(ended) = limit_handler(shared, attempt, clock).await else {
        return Settled::new(id, tracked, unique, OutcomeKind::GivenBack);
    };
    let run_ms = millis(clock.elapsed());
    figures.run_ms = Some(run_ms);
    let known = |since: u64| (enqueued_at_ms > 0).then(|| since.saturating_sub(enqueued_at_ms));
    figures.wait_ms = if first_attempt {
        known(started_ms)
    } else {
        None
    };
    let not_done = match ended {
        Some(Ok(Ok(result))) => {
            figures.total_ms = known(started_ms.saturating_add(run_ms));
            let kind = OutcomeKind::Completed { result };
            return Settled::new(id, tracked, unique, kind).with(figures);
        }
        Some(Ok(Err(error))) => NotDone::Error(error),
        Some(Err(panic)) => NotDone::Panicked(panic),
        None => NotDone::TimedOut,
    };
    // Boxed: the failure path awaits a Redis call (a cancellation to forget), and its state
    // inside this future made every job's future bigger, and every move of it longer.
    let failed = Box::pin(failed_run(
        shared, queue, bytes, not_done, id, tracked, unique,
    ))
    .await;
    failed.with(figures)
}

/// What a handler returns, or the panic it raised.
type HandlerResult = std::thread::Result<Result<Option<Vec<u8>>, BoxError>>;

/// A handler's attempt in progress: its future, or the panic its call raised.
type Attempt = futures::future::Either<
    futures::future::CatchUnwind<AssertUnwindSafe<HandlerFuture>>,
    futures::future::Ready<HandlerResult>,
>;

/// A job whose handler was called, with what its outcome needs.
struct Started {
    attempt: Attempt,
    /// When the handler was called.
    clock: Instant,
    started_ms: u64,
    id: String,
    tracked: bool,
    unique: String,
    figures: Figures,
    enqueued_at_ms: u64,
    first_attempt: bool,
}

/// Decodes the job, and calls its handler (user code: a closure may panic before it returns its
/// future, which is caught). `Err` is the outcome of a job that cannot run.
fn start(
    shared: &Shared,
    queue: usize,
    group: u64,
    index: u32,
    bytes: &[u8],
) -> Result<Started, Box<Settled>> {
    let keys = &shared.queues[queue];
    let (envelope, handler, default_max) = accept(shared, keys, group, index, bytes)?;
    let (id, tracked, unique) = (
        envelope.id.clone(),
        envelope.tracked(),
        envelope.unique.clone(),
    );
    let figures = Figures {
        task: envelope.name.clone(),
        ..Figures::default()
    };
    let enqueued_at_ms = envelope.enqueued_at_ms;
    let first_attempt = envelope.attempt == 0;
    let mut job = Job::from_envelope(&keys.queue, envelope, default_max);
    let span = tracing::Span::current();
    span.record("id", tracing::field::display(&job.id));
    span.record("task", tracing::field::display(&figures.task));
    span.record("attempt", job.attempt);
    job.context = Some(shared.contexts[queue].clone());
    // Two clock reads per job: the start (the timeout's deadline and the wall-clock start are
    // derived from it) and the end. Four reads were ~6 % of the worker's CPU in `ostq bench`.
    let clock = Instant::now();
    let started_ms = wall_ms(clock);
    let attempt = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(job))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().left_future(),
        Err(panic) => futures::future::ready(Err(panic)).right_future(),
    };
    Ok(Started {
        attempt,
        clock,
        started_ms,
        id,
        tracked,
        unique,
        figures,
        enqueued_at_ms,
        first_attempt,
    })
}

/// How a handler call ended without success.
enum NotDone {
    Error(BoxError),
    Panicked(Box<dyn std::any::Any + Send>),
    TimedOut,
}

/// The outcome of an attempt whose handler did not succeed: an error (a cancellation honoured
/// among them), a panic or a timeout.
async fn failed_run(
    shared: &Shared,
    queue: usize,
    bytes: &[u8],
    not_done: NotDone,
    id: String,
    tracked: bool,
    unique: String,
) -> Settled {
    let keys = &shared.queues[queue];
    let (error, permanent) = match not_done {
        NotDone::Error(error) if shared.contexts[queue].cancelled.borrow().contains(&id) => {
            // Honoured: forget the request, so a later run of the same id is not cancelled too.
            let mut conn = shared.client.conn();
            let _ = lease::forget_cancel(&mut conn, keys, &id).await;
            (format!("cancelled: {}", error_text(&error)), true)
        }
        NotDone::Error(error) => (error_text(&error), is_permanent(&error)),
        NotDone::Panicked(panic) => (
            format!("handler panicked: {}", panic_message(panic.as_ref())),
            false,
        ),
        NotDone::TimedOut => (
            format!(
                "timed out after {:?}",
                shared.config.timeout.unwrap_or_default()
            ),
            false,
        ),
    };
    // The failure path rebuilds the envelope from the leased bytes, which the handler never saw.
    match Envelope::decode(bytes) {
        Ok(envelope) => fail(shared, keys, envelope, error, permanent),
        Err(e) => Settled::new(
            id,
            tracked,
            unique,
            OutcomeKind::Failed {
                envelope: bytes.to_vec(),
                dead: true,
                delay_ms: 0,
                attempt: 1,
                error: e.to_string(),
            },
        ),
    }
}

/// The wall-clock time (unix ms) at `at`, from a (wall clock, monotonic clock) pair read at most
/// a second earlier on this thread: saves a clock read per job. Re-read every second, so a step
/// of the wall clock shows within a second, and the slew in between is far below a millisecond.
fn wall_ms(at: Instant) -> u64 {
    thread_local! {
        static ANCHOR: Cell<Option<(u64, Instant)>> = const { Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        if let Some((ms, since)) = anchor.get() {
            let since_anchor = at.checked_duration_since(since);
            if let Some(d) = since_anchor.filter(|d| *d < Duration::from_secs(1)) {
                return ms.saturating_add(millis(d));
            }
        }
        let ms = now_ms();
        anchor.set(Some((ms, at)));
        ms
    })
}

/// Decodes a leased job and finds its handler and attempt limit. A job that cannot run (not an
/// envelope, an oversized payload, no name and no default handler) is refused straight to the
/// dead set; one whose task name this worker has no handler for fails an attempt and retries
/// ([`Unhandled::Retry`]).
fn accept(
    shared: &Shared,
    keys: &QueueKeys,
    group: u64,
    index: u32,
    bytes: &[u8],
) -> Result<(Envelope, DynHandler, u32), Box<Settled>> {
    let envelope = match Envelope::decode(bytes) {
        Ok(env) => env,
        Err(e) => {
            // Keep the bytes for the operator: wrap them as the payload of a dead job.
            let env = Envelope {
                id: format!("~{group}.{index}"),
                payload: bytes.to_vec(),
                last_error: e.to_string(),
                ..Envelope::default()
            };
            return Err(Box::new(fail(shared, keys, env, e.to_string(), true)));
        }
    };
    let name = (!envelope.name.is_empty()).then(|| envelope.name.clone());
    let default_max = shared
        .handlers
        .policy_for(name.as_deref())
        .and_then(|p| p.attempt_limit())
        .unwrap_or(shared.config.default_max_attempts);
    let handler = match shared.handlers.pick(name.as_deref()) {
        Ok((handler, _)) => handler,
        Err(Unhandled::Retry(reason)) => {
            return Err(Box::new(fail(shared, keys, envelope, reason, false)))
        }
        Err(Unhandled::Dead(reason)) => {
            return Err(Box::new(fail(shared, keys, envelope, reason, true)))
        }
    };
    if envelope.payload.len() > shared.config.max_payload {
        let reason = format!(
            "payload of {} bytes is over the limit of {} bytes",
            envelope.payload.len(),
            shared.config.max_payload
        );
        return Err(Box::new(fail(shared, keys, envelope, reason, true)));
    }
    Ok((envelope, handler, default_max))
}

/// How a handler's attempt ended: `None` when shutdown's grace time ran out first (the job goes
/// back); `Some(None)` when it timed out (the timeout counts from `started`); else its result,
/// or the panic it raised.
async fn limit_handler(
    shared: &Shared,
    attempt: Attempt,
    started: Instant,
) -> Option<Option<HandlerResult>> {
    // The deadline from the start already read, not from another clock read. (A limit too far
    // away for an Instant is no limit.)
    let deadline = shared
        .config
        .timeout
        .and_then(|limit| started.checked_add(limit));
    let limited = async {
        match deadline {
            Some(deadline) => {
                let deadline = tokio::time::Instant::from_std(deadline);
                tokio::time::timeout_at(deadline, attempt).await.ok()
            }
            None => Some(attempt.await),
        }
    };
    tokio::select! {
        ended = limited => Some(ended),
        _ = shared.abort_jobs.cancelled() => None,
    }
}

pub(super) fn is_permanent(error: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = source {
        if e.is::<Permanent>() {
            return true;
        }
        source = e.source();
    }
    false
}

pub(super) fn error_text(error: &BoxError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

pub(super) fn truncate(mut text: String) -> String {
    if text.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Decides retry or dead for a failed attempt and tells the error hook. The retry policy and
/// the hook are user code: a panic in either is caught, so the outcome is still recorded.
pub(super) fn fail(
    shared: &Shared,
    keys: &QueueKeys,
    envelope: Envelope,
    error: String,
    permanent: bool,
) -> Settled {
    let mut error = truncate(error);
    let name = (!envelope.name.is_empty()).then_some(envelope.name.as_str());
    let policy = shared
        .handlers
        .policy_for(name)
        .unwrap_or(&shared.config.retry);
    let default_max = policy
        .attempt_limit()
        .unwrap_or(shared.config.default_max_attempts);
    let failures = envelope.attempt + 1;
    let max_attempts = if envelope.max_attempts == 0 {
        default_max
    } else {
        envelope.max_attempts
    };
    let dead = permanent || failures >= max_attempts;
    let delay = (!dead).then(|| match policy.try_delay(failures) {
        Ok(delay) => delay,
        Err(panic) => {
            // The job still needs a retry time: the default backoff is always safe. The job's
            // error says why it came back sooner or later than the policy meant (the note may be
            // cut off after a very long error; the log has it in any case).
            warn!(queue = %keys.queue, id = %envelope.id, panic = %panic, "retry policy panicked; retrying after the default backoff");
            error = truncate(format!(
                "{error} (retry policy panicked: {panic}; retrying after the default backoff)"
            ));
            RetryPolicy::default().delay(failures)
        }
    });
    if let Some(hook) = &shared.on_error {
        let job = Job::from_envelope(&keys.queue, envelope.clone(), default_max);
        let failure = Failure {
            error: error.clone(),
            dead,
            retry_in: delay,
        };
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&job, &failure))) {
            warn!(queue = %keys.queue, id = %envelope.id, panic = %panic_message(panic.as_ref()), "error hook panicked; the outcome is recorded anyway");
        }
    }
    if dead {
        warn!(queue = %keys.queue, id = %envelope.id, attempt = failures, error = %error, "job dead");
    } else {
        debug!(queue = %keys.queue, id = %envelope.id, attempt = failures, error = %error, "job failed, will retry");
    }
    failed_attempt(
        envelope,
        failures,
        error,
        dead,
        delay.map(millis).unwrap_or(0),
    )
}
