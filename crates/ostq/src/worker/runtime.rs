//! The running worker: one fetch loop per queue sharing a concurrency semaphore, one task per
//! job, one acker that batches outcomes into `complete.lua` / `fail.lua` calls, one lease renewer,
//! and the monitor hook.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::handler::{BoxError, Handlers, Permanent};
use super::{Config, ErrorHook, Failure, MonitorHook, Worker};
use crate::connection::{Client, Conn};
use crate::envelope::Envelope;
use crate::job::Job;
use crate::keys::QueueKeys;
use crate::scripts::{COMPLETE_SCRIPT, FAIL_SCRIPT, FETCH_SCRIPT, RENEW_SCRIPT, REQUEUE_SCRIPT};
use crate::{Error, Result};

/// Longest error text kept with a job.
const MAX_ERROR_LEN: usize = 4096;
/// Leases per renew or requeue call.
const LEASE_CHUNK: usize = 1000;

/// What became of one attempt, on its way to Redis.
struct Outcome {
    queue: usize,
    lease: String,
    id: String,
    tracked: bool,
    kind: OutcomeKind,
}

enum OutcomeKind {
    Completed {
        result: Option<Vec<u8>>,
    },
    Failed {
        envelope: Vec<u8>,
        dead: bool,
        delay_ms: u64,
        attempt: u32,
        error: String,
    },
}

struct Shared {
    client: Client,
    queues: Vec<Arc<QueueKeys>>,
    config: Config,
    handlers: Handlers,
    on_error: Option<ErrorHook>,
    semaphore: Arc<Semaphore>,
    /// Leases this worker holds, per queue: renewed until their outcome is in Redis.
    held: Vec<Mutex<HashSet<String>>>,
    /// Handler tasks still running, per (queue, lease): aborted at the end of a shutdown.
    running: Mutex<HashMap<(usize, String), AbortHandle>>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

pub(super) async fn run(worker: Worker, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let Worker {
        client,
        queues,
        config,
        handlers,
        on_error,
        on_monitor,
    } = worker;
    for keys in &queues {
        client.register_queue(&keys.queue).await?;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        held: queues.iter().map(|_| Mutex::new(HashSet::new())).collect(),
        semaphore: Arc::new(Semaphore::new(config.concurrency)),
        running: Mutex::new(HashMap::new()),
        client,
        queues,
        config,
        handlers,
        on_error,
        outcomes: tx,
    });

    let stop_fetching = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let fetchers: Vec<JoinHandle<()>> = (0..shared.queues.len())
        .map(|q| tokio::spawn(fetch_loop(shared.clone(), q, stop_fetching.clone())))
        .collect();
    let acker = tokio::spawn(ack_loop(shared.clone(), rx, stop_background.clone()));
    let renewer = tokio::spawn(renew_loop(shared.clone(), stop_background.clone()));
    let monitor = on_monitor.map(|(every, hook)| {
        tokio::spawn(monitor_loop(
            shared.clone(),
            every,
            hook,
            stop_background.clone(),
        ))
    });
    info!(queues = ?shared.queues.iter().map(|k| k.queue.as_str()).collect::<Vec<_>>(), concurrency = shared.config.concurrency, "worker started");

    shutdown.await;
    info!("worker shutting down: no more fetches");
    stop_fetching.cancel();
    for fetcher in fetchers {
        let _ = fetcher.await;
    }
    let all = u32::try_from(shared.config.concurrency).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(
        shared.config.shutdown_timeout,
        shared.semaphore.acquire_many(all),
    )
    .await;
    if drained.is_err() {
        give_back_running(&shared).await;
    }
    stop_background.cancel();
    let _ = acker.await;
    let _ = renewer.await;
    if let Some(monitor) = monitor {
        let _ = monitor.await;
    }
    info!("worker stopped");
    Ok(())
}

/// Aborts the handlers still running after the shutdown timeout and returns their jobs to the
/// head of their queues at once, without counting an attempt.
async fn give_back_running(shared: &Shared) {
    let running: Vec<((usize, String), AbortHandle)> = match shared.running.lock() {
        Ok(mut map) => map.drain().collect(),
        Err(_) => return,
    };
    let mut by_queue: HashMap<usize, Vec<String>> = HashMap::new();
    for ((queue, lease), abort) in running {
        abort.abort();
        by_queue.entry(queue).or_default().push(lease);
    }
    let mut conn = shared.client.conn();
    for (queue, leases) in by_queue {
        let keys = &shared.queues[queue];
        for chunk in leases.chunks(LEASE_CHUNK) {
            let mut invocation = REQUEUE_SCRIPT.prepare_invoke();
            invocation
                .key(&keys.pending)
                .key(&keys.prioritized)
                .key(&keys.active)
                .key(&keys.inflight)
                .key(&keys.seq)
                .arg(&keys.prefix);
            for lease in chunk {
                invocation.arg(lease);
            }
            match invocation.invoke_async::<u64>(&mut conn).await {
                Ok(n) => {
                    info!(queue = %keys.queue, jobs = n, "gave unfinished jobs back to the queue")
                }
                Err(e) => {
                    warn!(queue = %keys.queue, error = %e, "could not give jobs back; their leases will expire and they will be recovered")
                }
            }
        }
        if let Ok(mut held) = shared.held[queue].lock() {
            for lease in &leases {
                held.remove(lease);
            }
        }
    }
}

/// A fetched batch: server time, when something timed is next due, and (lease, envelope) pairs.
struct Fetched {
    now_ms: i64,
    wake_at_ms: i64,
    jobs: Vec<(String, Vec<u8>)>,
}

fn parse_fetched(value: Value) -> Result<Fetched> {
    let Value::Array(items) = value else {
        return Err(Error::Protocol(format!("fetch returned {value:?}")));
    };
    let mut items = items.into_iter();
    let int = |v: Option<Value>| -> Result<i64> {
        match v {
            Some(Value::Int(n)) => Ok(n),
            other => Err(Error::Protocol(format!(
                "fetch returned {other:?} where a number belongs"
            ))),
        }
    };
    let now_ms = int(items.next())?;
    let wake_at_ms = int(items.next())?;
    let mut jobs = Vec::with_capacity(items.len() / 2);
    while let (Some(lease), Some(env)) = (items.next(), items.next()) {
        match (lease, env) {
            (Value::BulkString(lease), Value::BulkString(env)) => {
                jobs.push((String::from_utf8_lossy(&lease).into_owned(), env));
            }
            other => {
                return Err(Error::Protocol(format!(
                    "fetch returned {other:?} where a job belongs"
                )))
            }
        }
    }
    Ok(Fetched {
        now_ms,
        wake_at_ms,
        jobs,
    })
}

async fn fetch(shared: &Shared, queue: usize, want: usize) -> Result<Fetched> {
    let keys = &shared.queues[queue];
    let cfg = &shared.config;
    let mut invocation = FETCH_SCRIPT.prepare_invoke();
    invocation
        .key(&keys.pending)
        .key(&keys.prioritized)
        .key(&keys.scheduled)
        .key(&keys.retry)
        .key(&keys.jobs)
        .key(&keys.active)
        .key(&keys.inflight)
        .key(&keys.dead)
        .key(&keys.seq)
        .key(&keys.stats)
        .key(&keys.completed)
        .key(&keys.paused)
        .arg(&keys.prefix)
        .arg(want)
        .arg(cfg.lease.as_millis() as u64)
        .arg(cfg.default_max_attempts)
        .arg(cfg.dead_max)
        .arg(cfg.dead_retention.as_millis() as u64)
        .arg(cfg.completed_retention.as_millis() as u64);
    let mut conn = shared.client.conn();
    let value: Value = invocation.invoke_async(&mut conn).await?;
    parse_fetched(value)
}

/// Leases jobs while there is capacity; when the queue is empty, blocks (no polling) on its own
/// connection until something is pushed or the next timed job is due.
async fn fetch_loop(shared: Arc<Shared>, queue: usize, stop: CancellationToken) {
    let keys = shared.queues[queue].clone();
    let mut blocking: Option<Conn> = None;
    let mut failing = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut permit = tokio::select! {
            permit = shared.semaphore.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let extra = shared
            .semaphore
            .available_permits()
            .min(shared.config.max_batch - 1);
        if extra > 0 {
            if let Ok(more) = shared
                .semaphore
                .clone()
                .try_acquire_many_owned(extra as u32)
            {
                permit.merge(more);
            }
        }
        let want = permit.num_permits();
        match fetch(&shared, queue, want).await {
            Ok(fetched) => {
                if failing {
                    info!(queue = %keys.queue, "redis reachable again, fetching");
                    failing = false;
                    backoff = Duration::from_millis(100);
                }
                let got = fetched.jobs.len();
                for (lease, envelope) in fetched.jobs {
                    let Some(one) = permit.split(1) else { break };
                    start_job(&shared, queue, lease, envelope, one);
                }
                drop(permit);
                if got < want {
                    wait_for_work(
                        &shared,
                        &keys,
                        &mut blocking,
                        &fetched.now_ms,
                        fetched.wake_at_ms,
                        &stop,
                    )
                    .await;
                }
            }
            Err(e) => {
                drop(permit);
                if !failing {
                    warn!(queue = %keys.queue, error = %e, "fetch failed; retrying with backoff");
                    failing = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Blocks until the queue's list gets an entry, or until the next scheduled, retry or lease
/// deadline (at most `idle_wait`). `BLMOVE list list RIGHT RIGHT` pops and pushes the same end of
/// the same list: it waits for an entry without taking it, so an abandoned wait loses nothing.
async fn wait_for_work(
    shared: &Shared,
    keys: &QueueKeys,
    blocking: &mut Option<Conn>,
    now_ms: &i64,
    wake_at_ms: i64,
    stop: &CancellationToken,
) {
    let idle = shared.config.idle_wait.as_millis() as i64;
    let wait_ms = if wake_at_ms > 0 {
        (wake_at_ms - now_ms).clamp(0, idle)
    } else {
        idle
    };
    if wait_ms == 0 {
        return;
    }
    if blocking.is_none() {
        match shared.client.blocking_conn().await {
            Ok(conn) => *blocking = Some(conn),
            Err(e) => {
                debug!(error = %e, "no blocking connection; sleeping instead");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
                    _ = stop.cancelled() => {}
                }
                return;
            }
        }
    }
    let Some(conn) = blocking.as_mut() else {
        return;
    };
    let timeout_s = format!("{:.3}", wait_ms as f64 / 1000.0);
    let mut blmove = redis::cmd("BLMOVE");
    blmove
        .arg(&keys.pending)
        .arg(&keys.pending)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(timeout_s);
    let wait = blmove.query_async::<Option<Vec<u8>>>(conn);
    tokio::select! {
        result = wait => if let Err(e) = result {
            debug!(error = %e, "blocking wait failed; reconnecting next time");
            *blocking = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        },
        _ = stop.cancelled() => {}
    }
}

fn start_job(
    shared: &Arc<Shared>,
    queue: usize,
    lease: String,
    envelope: Vec<u8>,
    permit: OwnedSemaphorePermit,
) {
    if let Ok(mut held) = shared.held[queue].lock() {
        held.insert(lease.clone());
    }
    let shared2 = shared.clone();
    tokio::spawn(async move {
        run_job(&shared2, queue, lease, envelope).await;
        drop(permit);
    });
}

async fn run_job(shared: &Arc<Shared>, queue: usize, lease: String, bytes: Vec<u8>) {
    let keys = &shared.queues[queue];
    let envelope = match Envelope::decode(&bytes) {
        Ok(env) => env,
        Err(e) => {
            // Keep the bytes for the operator: wrap them as the payload of a dead job.
            let env = Envelope {
                id: format!("~{lease}"),
                payload: bytes,
                last_error: e.to_string(),
                ..Envelope::default()
            };
            let job = Job::from_envelope(&keys.queue, lease, env, 1);
            fail(shared, queue, job, e.to_string(), true);
            return;
        }
    };
    let policy = shared
        .handlers
        .policy_for(Some(envelope.name.as_str()).filter(|n| !n.is_empty()));
    let default_max = policy
        .and_then(|p| p.attempt_limit())
        .unwrap_or(shared.config.default_max_attempts);
    let job = Job::from_envelope(&keys.queue, lease.clone(), envelope, default_max);
    let handler = match shared.handlers.pick(job.name.as_deref()) {
        Ok((handler, _)) => handler,
        Err(reason) => {
            fail(shared, queue, job, reason, true);
            return;
        }
    };
    let task = tokio::spawn(handler(job.clone()));
    if let Ok(mut running) = shared.running.lock() {
        running.insert((queue, lease.clone()), task.abort_handle());
    }
    let abort = task.abort_handle();
    let joined = match shared.config.timeout {
        Some(limit) => match tokio::time::timeout(limit, task).await {
            Ok(joined) => Some(joined),
            Err(_) => {
                abort.abort();
                None
            }
        },
        None => Some(task.await),
    };
    let still_ours = shared
        .running
        .lock()
        .map(|mut running| running.remove(&(queue, lease.clone())).is_some())
        .unwrap_or(false);
    match joined {
        None => {
            let limit = shared.config.timeout.unwrap_or_default();
            fail(
                shared,
                queue,
                job,
                format!("timed out after {limit:?}"),
                false,
            );
        }
        Some(Ok(Ok(result))) => {
            let _ = shared.outcomes.send(Outcome {
                queue,
                lease,
                tracked: job.envelope.tracked(),
                id: job.id,
                kind: OutcomeKind::Completed { result },
            });
        }
        Some(Ok(Err(error))) => {
            let permanent = is_permanent(&error);
            fail(shared, queue, job, error_text(&error), permanent);
        }
        Some(Err(join)) if join.is_panic() => {
            let message = panic_message(join.into_panic());
            fail(
                shared,
                queue,
                job,
                format!("handler panicked: {message}"),
                false,
            );
        }
        Some(Err(_)) => {
            // Aborted by a shutdown that gives the job back: nothing to report.
            if still_ours {
                debug!("handler cancelled");
            }
        }
    }
}

fn is_permanent(error: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = source {
        if e.is::<Permanent>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn error_text(error: &BoxError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

fn truncate(mut text: String) -> String {
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

/// Decides retry or dead for a failed attempt, tells the error hook, and queues the outcome.
fn fail(shared: &Shared, queue: usize, job: Job, error: String, permanent: bool) {
    let error = truncate(error);
    let policy = shared
        .handlers
        .policy_for(job.name.as_deref())
        .unwrap_or(&shared.config.retry);
    let failures = job.attempt;
    let dead = permanent || failures >= job.max_attempts;
    let delay = (!dead).then(|| policy.delay(failures));
    let failure = Failure {
        error: error.clone(),
        dead,
        retry_in: delay,
    };
    if let Some(hook) = &shared.on_error {
        hook(&job, &failure);
    }
    if dead {
        warn!(queue = %job.queue, id = %job.id, attempt = failures, error = %error, "job dead");
    } else {
        debug!(queue = %job.queue, id = %job.id, attempt = failures, error = %error, "job failed, will retry");
    }
    let mut envelope = job.envelope;
    envelope.attempt = failures;
    envelope.last_error = error.clone();
    let _ = shared.outcomes.send(Outcome {
        queue,
        lease: job.lease,
        tracked: envelope.tracked(),
        id: envelope.id.clone(),
        kind: OutcomeKind::Failed {
            envelope: envelope.encode(),
            dead,
            delay_ms: delay.map(|d| d.as_millis() as u64).unwrap_or(0),
            attempt: failures,
            error,
        },
    });
}

/// Writes outcomes to Redis in batches: whatever piled up while the previous call was in flight
/// goes in the next one. Keeps trying through Redis outages; a lease that expires meanwhile is
/// recovered by someone and its late ack is ignored by the scripts.
async fn ack_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        let first = tokio::select! {
            biased;
            outcome = rx.recv() => outcome,
            _ = stop.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < LEASE_CHUNK {
            match rx.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        let mut by_queue: HashMap<usize, Vec<Outcome>> = HashMap::new();
        for outcome in batch {
            by_queue.entry(outcome.queue).or_default().push(outcome);
        }
        for (queue, outcomes) in by_queue {
            let mut delay = Duration::from_millis(50);
            let give_up = tokio::time::Instant::now() + shared.config.lease;
            loop {
                match write_outcomes(&shared, queue, &outcomes).await {
                    Ok(()) => {
                        if failing {
                            info!("redis reachable again, acks flowing");
                            failing = false;
                        }
                        break;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "could not record job outcomes; retrying");
                            failing = true;
                        }
                        if tokio::time::Instant::now() >= give_up {
                            warn!(jobs = outcomes.len(), "gave up recording outcomes; their leases will expire and the jobs run again");
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
            if let Ok(mut held) = shared.held[queue].lock() {
                for outcome in &outcomes {
                    held.remove(&outcome.lease);
                }
            }
        }
    }
}

async fn write_outcomes(shared: &Shared, queue: usize, outcomes: &[Outcome]) -> Result<()> {
    let keys = &shared.queues[queue];
    let mut complete = COMPLETE_SCRIPT.prepare_invoke();
    complete
        .key(&keys.active)
        .key(&keys.inflight)
        .key(&keys.completed)
        .key(&keys.stats)
        .arg(&keys.prefix)
        .arg(shared.config.completed_retention.as_secs().max(1));
    let mut fail = FAIL_SCRIPT.prepare_invoke();
    fail.key(&keys.active)
        .key(&keys.inflight)
        .key(&keys.retry)
        .key(&keys.dead)
        .key(&keys.jobs)
        .key(&keys.stats)
        .key(&keys.pending)
        .key(&keys.scheduled)
        .arg(&keys.prefix);
    let (mut completes, mut fails) = (0, 0);
    for outcome in outcomes {
        match &outcome.kind {
            OutcomeKind::Completed { result } => {
                completes += 1;
                complete
                    .arg(&outcome.lease)
                    .arg(if outcome.tracked {
                        outcome.id.as_str()
                    } else {
                        ""
                    })
                    .arg(
                        result
                            .as_deref()
                            .filter(|_| outcome.tracked)
                            .unwrap_or_default(),
                    );
            }
            OutcomeKind::Failed {
                envelope,
                dead,
                delay_ms,
                attempt,
                error,
            } => {
                fails += 1;
                fail.arg(&outcome.lease)
                    .arg(&outcome.id)
                    .arg(envelope.as_slice())
                    .arg(if *dead { "dead" } else { "retry" })
                    .arg(*delay_ms)
                    .arg(if outcome.tracked { "1" } else { "0" })
                    .arg(*attempt)
                    .arg(error);
            }
        }
    }
    let mut conn = shared.client.conn();
    let mut conn2 = conn.clone();
    let (stale_completes, stale_fails) = tokio::try_join!(
        async {
            if completes > 0 {
                complete.invoke_async::<u64>(&mut conn).await
            } else {
                Ok(0)
            }
        },
        async {
            if fails > 0 {
                fail.invoke_async::<u64>(&mut conn2).await
            } else {
                Ok(0)
            }
        }
    )?;
    if stale_completes + stale_fails > 0 {
        warn!(
            queue = %keys.queue,
            stale = stale_completes + stale_fails,
            "outcomes arrived after their leases expired; ignored (the jobs were recovered and run again)"
        );
    }
    Ok(())
}

/// Renews the leases this worker holds every third of the lease length.
async fn renew_loop(shared: Arc<Shared>, stop: CancellationToken) {
    let every = shared.config.lease / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        for (queue, keys) in shared.queues.iter().enumerate() {
            let leases: Vec<String> = match shared.held[queue].lock() {
                Ok(held) => held.iter().cloned().collect(),
                Err(_) => continue,
            };
            for chunk in leases.chunks(LEASE_CHUNK) {
                let mut invocation = RENEW_SCRIPT.prepare_invoke();
                invocation
                    .key(&keys.active)
                    .arg(shared.config.lease.as_millis() as u64);
                for lease in chunk {
                    invocation.arg(lease);
                }
                let mut conn = shared.client.conn();
                match invocation.invoke_async::<Vec<String>>(&mut conn).await {
                    Ok(lost) if !lost.is_empty() => {
                        // Outcomes already written also show up here (they left `held` after we
                        // copied it); only leases still held were really lost.
                        if let Ok(mut held) = shared.held[queue].lock() {
                            let really_lost: Vec<&String> =
                                lost.iter().filter(|l| held.remove(*l)).collect();
                            if !really_lost.is_empty() {
                                warn!(queue = %keys.queue, leases = ?really_lost, "lost leases: those jobs may run again elsewhere");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "lease renewal failed; will retry"),
                }
            }
        }
    }
}

async fn monitor_loop(
    shared: Arc<Shared>,
    every: Duration,
    hook: MonitorHook,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let mut all = Vec::with_capacity(shared.queues.len());
        for keys in &shared.queues {
            match crate::inspect::counts_of(&shared.client, keys).await {
                Ok(counts) => all.push(counts),
                Err(e) => debug!(error = %e, "monitor could not read counts"),
            }
        }
        if !all.is_empty() {
            hook(&all);
        }
    }
}
