//! The running worker: one fetch loop for all its queues sharing a concurrency semaphore, one
//! task per job, and one lease keeper that owns every lease group this worker holds. The keeper batches
//! outcomes into `fail.lua` / `requeue.lua` / `complete.lua` calls (whatever piled up while the
//! previous call was in flight) and renews the groups still held. Nothing on the per-job path
//! takes a lock.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use redis::Value;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::handler::{BoxError, Handlers, Permanent};
use super::{Config, ErrorHook, Failure, MonitorHook, Worker};
use crate::connection::{Client, Conn};
use crate::envelope::Envelope;
use crate::job::{Job, JobContext};
use crate::keys::QueueKeys;
use crate::scripts::{COMPLETE_SCRIPT, FAIL_SCRIPT, FETCH_SCRIPT, RENEW_SCRIPT, REQUEUE_SCRIPT};
use crate::{Error, Result};

/// Longest error text kept with a job.
const MAX_ERROR_LEN: usize = 4096;
/// Groups per renew call, outcomes per flush.
const CHUNK: usize = 1000;

/// What the lease keeper hears about.
enum Event {
    /// A fetch leased `count` jobs as group `group` (sent before any of its jobs start).
    Leased {
        queue: usize,
        group: u64,
        count: u32,
    },
    /// An attempt ended.
    Done(Outcome),
}

struct Outcome {
    queue: usize,
    group: u64,
    index: u32,
    settled: Settled,
}

/// How an attempt ended, with what the scripts need to know of the job.
struct Settled {
    id: String,
    tracked: bool,
    /// The unique key the job holds until it completes or dies ("" for none).
    unique: String,
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
    /// Shutdown stopped the handler: the job goes back to the queue.
    GivenBack,
}

struct Shared {
    client: Client,
    queues: Vec<Arc<QueueKeys>>,
    /// Per queue, what its jobs can reach (progress, cancellation).
    contexts: Vec<Arc<JobContext>>,
    config: Config,
    handlers: Handlers,
    on_error: Option<ErrorHook>,
    semaphore: Arc<Semaphore>,
    events: mpsc::UnboundedSender<Event>,
    /// Cancelled when the shutdown grace time is over: running handlers stop, jobs go back.
    abort_jobs: CancellationToken,
}

pub(super) async fn run(worker: Worker, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    let Worker {
        client,
        queues,
        weights,
        config,
        handlers,
        on_error,
        on_monitor,
    } = worker;
    for keys in &queues {
        client.register_queue(&keys.queue).await?;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(Arc::new(HashSet::new()));
    let contexts = queues
        .iter()
        .map(|keys| {
            Arc::new(JobContext {
                client: client.clone(),
                keys: keys.clone(),
                cancelled: cancel_rx.clone(),
            })
        })
        .collect();
    let shared = Arc::new(Shared {
        contexts,
        semaphore: Arc::new(Semaphore::new(config.concurrency)),
        client,
        queues,
        config,
        handlers,
        on_error,
        events: tx,
        abort_jobs: CancellationToken::new(),
    });

    let stop_fetching = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let fetcher = tokio::spawn(fetch_loop(shared.clone(), weights, stop_fetching.clone()));
    let keeper = tokio::spawn(lease_keeper(shared.clone(), rx, stop_background.clone()));
    let canceller = tokio::spawn(watch_cancellations(
        shared.clone(),
        cancel_tx,
        stop_background.clone(),
    ));
    let monitor = on_monitor.map(|(every, hook)| {
        tokio::spawn(monitor_loop(
            shared.clone(),
            every,
            hook,
            stop_background.clone(),
        ))
    });
    info!(
        queues = ?shared.queues.iter().map(|k| k.queue.as_str()).collect::<Vec<_>>(),
        concurrency = shared.config.concurrency,
        "worker started"
    );

    shutdown.await;
    info!("worker shutting down: no more fetches");
    stop_fetching.cancel();
    let _ = fetcher.await;
    let all = u32::try_from(shared.config.concurrency).unwrap_or(u32::MAX);
    let grace = shared.config.shutdown_timeout;
    if tokio::time::timeout(grace, shared.semaphore.acquire_many(all))
        .await
        .is_err()
    {
        info!("shutdown grace time over: giving unfinished jobs back to their queues");
        shared.abort_jobs.cancel();
        // Handlers stop at their next await; their jobs are reported as given back.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), shared.semaphore.acquire_many(all)).await;
    }
    stop_background.cancel();
    let _ = keeper.await;
    let _ = canceller.await;
    if let Some(monitor) = monitor {
        let _ = monitor.await;
    }
    info!("worker stopped");
    Ok(())
}

/// A fetched batch: server time, when something timed is next due, the lease group and its
/// envelopes in order; `hold` when the queue is paused or out of rate-limit tokens (do not wait
/// on its list, which may be full: sleep until the wake time).
struct Fetched {
    now_ms: i64,
    wake_at_ms: i64,
    group: u64,
    hold: bool,
    envelopes: Vec<Vec<u8>>,
}

fn parse_fetched(value: Value) -> Result<Fetched> {
    let Value::Array(items) = value else {
        return Err(Error::Protocol(format!("fetch returned {value:?}")));
    };
    let mut items = items.into_iter();
    let mut int = || -> Result<i64> {
        match items.next() {
            Some(Value::Int(n)) => Ok(n),
            other => Err(Error::Protocol(format!(
                "fetch returned {other:?} where a number belongs"
            ))),
        }
    };
    let (now_ms, wake_at_ms) = (int()?, int()?);
    // The group comes back as the decimal id the worker sent, or 0 when nothing was leased.
    let group = match items.next() {
        Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
        Some(Value::BulkString(bytes)) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::Protocol("fetch returned a lease group that is not a number".into())
            })?,
        other => {
            return Err(Error::Protocol(format!(
                "fetch returned {other:?} where a lease group belongs"
            )))
        }
    };
    let hold = match items.next() {
        Some(Value::Int(n)) => n,
        other => {
            return Err(Error::Protocol(format!(
                "fetch returned {other:?} where a number belongs"
            )))
        }
    };
    let envelopes = items
        .map(|item| match item {
            Value::BulkString(bytes) => Ok(bytes),
            other => Err(Error::Protocol(format!(
                "fetch returned {other:?} where a job belongs"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Fetched {
        now_ms,
        wake_at_ms,
        group,
        hold: hold != 0,
        envelopes,
    })
}

/// The `EVALSHA fetch.lua` command for `want` jobs of `queue`.
fn fetch_cmd(shared: &Shared, queue: usize, want: usize) -> redis::Cmd {
    let keys = &shared.queues[queue];
    let cfg = &shared.config;
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(FETCH_SCRIPT.get_hash()).arg(14);
    for key in [
        &keys.pending,
        &keys.prioritized,
        &keys.scheduled,
        &keys.retry,
        &keys.jobs,
        &keys.active,
        &keys.dead,
        &keys.seq,
        &keys.stats,
        &keys.completed,
        &keys.paused,
        &keys.rate_limit,
        &keys.config,
        &keys.events,
    ] {
        cmd.arg(key);
    }
    cmd.arg(&keys.prefix)
        .arg(want)
        .arg(cfg.lease.as_millis() as u64)
        .arg(cfg.default_max_attempts)
        .arg(cfg.dead_max)
        .arg(cfg.dead_retention.as_millis() as u64)
        .arg(cfg.completed_retention.as_millis() as u64)
        // Random, never 0 (0 means "nothing leased"): unique without asking Redis for a counter.
        .arg(rand::random::<u64>() >> 1 | 1);
    cmd
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

async fn fetch(shared: &Shared, queue: usize, want: usize) -> Result<Fetched> {
    let mut conn = shared.client.conn();
    let cmd = fetch_cmd(shared, queue, want);
    let value: Value = match cmd.query_async(&mut conn).await {
        Err(e) if is_noscript(&e) => {
            FETCH_SCRIPT.load_async(&mut conn).await?;
            cmd.query_async(&mut conn).await?
        }
        reply => reply?,
    };
    parse_fetched(value)
}

/// The idle wait of a worker that serves one queue: `BLMOVE` (which waits for an entry without
/// taking it) and `fetch.lua` pipelined on the blocking connection, so Redis runs the fetch the
/// moment the wait ends and the job arrives with the wake-up: one round trip, not two.
async fn wait_then_fetch(
    shared: &Shared,
    queue: usize,
    want: usize,
    wait_ms: i64,
    conn: &mut Conn,
) -> Result<Fetched> {
    let pending = &shared.queues[queue].pending;
    let mut blmove = redis::cmd("BLMOVE");
    blmove
        .arg(pending)
        .arg(pending)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(format!("{:.3}", wait_ms as f64 / 1000.0));
    let mut pipe = redis::pipe();
    pipe.add_command(blmove)
        .ignore()
        .add_command(fetch_cmd(shared, queue, want));
    let value: Value = match pipe.query_async::<(Value,)>(conn).await {
        Ok((value,)) => value,
        Err(e) if is_noscript(&e) => {
            // The fetch did not run (no jobs were leased): load the script, fetch plainly.
            FETCH_SCRIPT.load_async(conn).await?;
            return fetch(shared, queue, want).await;
        }
        Err(e) => return Err(e.into()),
    };
    parse_fetched(value)
}

/// The order in which to ask the queues this round: as added (strict), or a weighted random
/// permutation, so a queue with weight 3 beside one with weight 1 comes first three times in four.
fn queue_order(weights: &[u32], strict: bool) -> Vec<usize> {
    let mut left: Vec<usize> = (0..weights.len()).collect();
    if strict || left.len() < 2 {
        return left;
    }
    let mut rng = rand::rng();
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|&q| u64::from(weights[q])).sum();
        let mut pick = rand::Rng::random_range(&mut rng, 0..total);
        let mut chosen = 0;
        for (i, &q) in left.iter().enumerate() {
            let w = u64::from(weights[q]);
            if pick < w {
                chosen = i;
                break;
            }
            pick -= w;
        }
        order.push(left.remove(chosen));
    }
    order
}

/// What a fetch said about a queue, for planning the wait.
struct QueueWait {
    queue: usize,
    now_ms: i64,
    wake_at_ms: i64,
    hold: bool,
}

/// Leases jobs while there is capacity, asking the queues in weighted or strict order; when they
/// are all empty, blocks (no polling) until something is pushed or the next timed job is due.
async fn fetch_loop(shared: Arc<Shared>, weights: Vec<u32>, stop: CancellationToken) {
    let mut blocking: Vec<Option<Conn>> = shared.queues.iter().map(|_| None).collect();
    let mut failing = false;
    let mut backoff = Duration::from_millis(100);
    // A fetch that ran at the end of an idle wait, with the slots it was made for.
    let mut carried: Option<(OwnedSemaphorePermit, Result<Fetched>)> = None;
    loop {
        let (mut permit, mut first) = match carried.take() {
            Some((permit, fetched)) => (permit, Some(fetched)),
            None => {
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
                (permit, None)
            }
        };
        let mut waits = Vec::new();
        let mut errors = 0;
        for queue in queue_order(&weights, shared.config.strict) {
            let want = permit.num_permits();
            if want == 0 {
                break;
            }
            let result = match first.take() {
                Some(result) => result,
                None => fetch(&shared, queue, want).await,
            };
            match result {
                Ok(fetched) => {
                    let got = fetched.envelopes.len();
                    if got > 0 {
                        let _ = shared.events.send(Event::Leased {
                            queue,
                            group: fetched.group,
                            count: got as u32,
                        });
                    }
                    for (index, envelope) in fetched.envelopes.into_iter().enumerate() {
                        let Some(one) = permit.split(1) else { break };
                        start_job(&shared, queue, fetched.group, index as u32, envelope, one);
                    }
                    waits.push(QueueWait {
                        queue,
                        now_ms: fetched.now_ms,
                        wake_at_ms: fetched.wake_at_ms,
                        hold: fetched.hold,
                    });
                }
                Err(e) => {
                    errors += 1;
                    if !failing {
                        warn!(queue = %shared.queues[queue].queue, error = %e, "fetch failed; retrying with backoff");
                    }
                }
            }
        }
        let idle = permit.num_permits() > 0;
        if errors > 0 && waits.is_empty() {
            drop(permit);
            failing = true;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        if failing && errors == 0 {
            info!("redis reachable again, fetching");
            failing = false;
            backoff = Duration::from_millis(100);
        }
        if !idle {
            continue;
        }
        // One queue, not on hold: wait and fetch in one round trip, keeping the free slots.
        if let [wait] = waits.as_slice() {
            if shared.queues.len() == 1 && !wait.hold && !stop.is_cancelled() {
                let wait_ms = wait_ms(&shared, &waits);
                if wait_ms == 0 {
                    continue;
                }
                if blocking[0].is_none() {
                    match shared.client.blocking_conn().await {
                        Ok(conn) => blocking[0] = Some(conn),
                        Err(e) => debug!(error = %e, "no blocking connection"),
                    }
                }
                if let Some(conn) = blocking[0].as_mut() {
                    let want = permit.num_permits();
                    let result = wait_then_fetch(&shared, wait.queue, want, wait_ms, conn).await;
                    match result {
                        Err(_) => blocking[0] = None,
                        Ok(fetched) if stop.is_cancelled() => {
                            // Asked to stop while waiting: what the fetch leased goes back at once.
                            give_back(&shared, wait.queue, fetched);
                            continue;
                        }
                        Ok(_) => {}
                    }
                    carried = Some((permit, result));
                    continue;
                }
            }
        }
        drop(permit);
        wait_for_work(&shared, &waits, &mut blocking, &stop).await;
    }
}

/// Hands jobs leased by a fetch that came back after shutdown began straight back to the queue
/// (through the lease keeper, like jobs whose handlers were stopped); no attempt is counted.
fn give_back(shared: &Shared, queue: usize, fetched: Fetched) {
    if fetched.envelopes.is_empty() {
        return;
    }
    let _ = shared.events.send(Event::Leased {
        queue,
        group: fetched.group,
        count: fetched.envelopes.len() as u32,
    });
    for (index, bytes) in fetched.envelopes.iter().enumerate() {
        let envelope = Envelope::decode(bytes).unwrap_or_default();
        let _ = shared.events.send(Event::Done(Outcome {
            queue,
            group: fetched.group,
            index: index as u32,
            settled: Settled {
                tracked: envelope.tracked(),
                unique: envelope.unique,
                id: envelope.id,
                kind: OutcomeKind::GivenBack,
            },
        }));
    }
}

/// How long an idle worker may wait: until the earliest scheduled, retry, lease or rate-limit
/// deadline of the queues it asked, at most `idle_wait`.
fn wait_ms(shared: &Shared, waits: &[QueueWait]) -> i64 {
    let idle = shared.config.idle_wait.as_millis() as i64;
    waits
        .iter()
        .map(|w| {
            if w.wake_at_ms > 0 {
                (w.wake_at_ms - w.now_ms).clamp(0, idle)
            } else {
                idle
            }
        })
        .min()
        .unwrap_or(idle)
}

/// Blocks until a watched queue's list gets an entry, or until the next scheduled, retry, lease or
/// rate-limit deadline (at most `idle_wait`). `BLMOVE list list RIGHT RIGHT` pops and pushes the
/// same end of the same list: it waits for an entry without taking it, so an abandoned wait loses
/// nothing. Queues on hold (paused, rate-limited) are not watched: their lists may be full.
async fn wait_for_work(
    shared: &Shared,
    waits: &[QueueWait],
    blocking: &mut [Option<Conn>],
    stop: &CancellationToken,
) {
    let wait_ms = wait_ms(shared, waits);
    if wait_ms == 0 {
        return;
    }
    let sleep = |ms: i64| async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms as u64)) => {}
            _ = stop.cancelled() => {}
        }
    };
    let watched: Vec<usize> = waits.iter().filter(|w| !w.hold).map(|w| w.queue).collect();
    if watched.is_empty() {
        sleep(wait_ms).await;
        return;
    }
    for &queue in &watched {
        if blocking[queue].is_none() {
            match shared.client.blocking_conn().await {
                Ok(conn) => blocking[queue] = Some(conn),
                Err(e) => {
                    debug!(error = %e, "no blocking connection; sleeping instead");
                    sleep(wait_ms.min(100)).await;
                    return;
                }
            }
        }
    }
    let timeout = format!("{:.3}", wait_ms as f64 / 1000.0);
    let mut futures = Vec::with_capacity(watched.len());
    for (queue, conn) in blocking.iter_mut().enumerate() {
        let Some(conn) = conn.as_mut().filter(|_| watched.contains(&queue)) else {
            continue;
        };
        let pending = shared.queues[queue].pending.clone();
        let timeout = timeout.clone();
        futures.push(Box::pin(async move {
            let mut blmove = redis::cmd("BLMOVE");
            blmove
                .arg(&pending)
                .arg(&pending)
                .arg("RIGHT")
                .arg("RIGHT")
                .arg(timeout);
            (queue, blmove.query_async::<Option<Vec<u8>>>(conn).await)
        }));
    }
    let (done, failed) = tokio::select! {
        ((queue, result), _, rest) = futures::future::select_all(futures) => {
            drop(rest);
            (Some(queue), result.is_err())
        }
        _ = stop.cancelled() => (None, false),
    };
    if watched.len() > 1 || failed {
        // The waits still blocked were abandoned on their connections: start afresh next time.
        for &queue in &watched {
            if Some(queue) != done || failed {
                blocking[queue] = None;
            }
        }
    }
    if failed {
        sleep(50).await;
    }
}

fn start_job(
    shared: &Arc<Shared>,
    queue: usize,
    group: u64,
    index: u32,
    envelope: Vec<u8>,
    permit: OwnedSemaphorePermit,
) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let settled = run_job(&shared, queue, group, index, envelope).await;
        let _ = shared.events.send(Event::Done(Outcome {
            queue,
            group,
            index,
            settled,
        }));
        drop(permit);
    });
}

async fn run_job(shared: &Shared, queue: usize, group: u64, index: u32, bytes: Vec<u8>) -> Settled {
    let keys = &shared.queues[queue];
    let envelope = match Envelope::decode(&bytes) {
        Ok(env) => env,
        Err(e) => {
            // Keep the bytes for the operator: wrap them as the payload of a dead job.
            let env = Envelope {
                id: format!("~{group}.{index}"),
                payload: bytes,
                last_error: e.to_string(),
                ..Envelope::default()
            };
            return fail(shared, keys, env, e.to_string(), true);
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
        Err(reason) => return fail(shared, keys, envelope, reason, true),
    };
    if envelope.payload.len() > shared.config.max_payload {
        let reason = format!(
            "payload of {} bytes is over the limit of {} bytes",
            envelope.payload.len(),
            shared.config.max_payload
        );
        return fail(shared, keys, envelope, reason, true);
    }
    let (id, tracked, unique) = (
        envelope.id.clone(),
        envelope.tracked(),
        envelope.unique.clone(),
    );
    let settled = |kind| Settled {
        id,
        tracked,
        unique,
        kind,
    };
    let job_id = envelope.id.clone();
    let mut job = Job::from_envelope(&keys.queue, envelope, default_max);
    job.context = Some(shared.contexts[queue].clone());
    let context = shared.contexts[queue].clone();
    let attempt = AssertUnwindSafe(handler(job)).catch_unwind();
    let limited = async {
        match shared.config.timeout {
            Some(limit) => tokio::time::timeout(limit, attempt).await.ok(),
            None => Some(attempt.await),
        }
    };
    let ended = tokio::select! {
        ended = limited => ended,
        _ = shared.abort_jobs.cancelled() => return settled(OutcomeKind::GivenBack),
    };
    let (error, permanent) = match ended {
        Some(Ok(Ok(result))) => return settled(OutcomeKind::Completed { result }),
        Some(Ok(Err(error))) if context.cancelled.borrow().contains(&job_id) => {
            // Honoured: forget the request, so a later run of the same id is not cancelled too.
            let mut conn = shared.client.conn();
            let _: redis::RedisResult<()> = redis::cmd("SREM")
                .arg(&keys.cancel)
                .arg(&job_id)
                .query_async(&mut conn)
                .await;
            (format!("cancelled: {}", error_text(&error)), true)
        }
        Some(Ok(Err(error))) => (error_text(&error), is_permanent(&error)),
        Some(Err(panic)) => (format!("handler panicked: {}", panic_message(panic)), false),
        None => (
            format!(
                "timed out after {:?}",
                shared.config.timeout.unwrap_or_default()
            ),
            false,
        ),
    };
    // The failure path rebuilds the envelope from the leased bytes, which the handler never saw.
    match Envelope::decode(&bytes) {
        Ok(envelope) => fail(shared, keys, envelope, error, permanent),
        Err(e) => settled(OutcomeKind::Failed {
            envelope: bytes,
            dead: true,
            delay_ms: 0,
            attempt: 1,
            error: e.to_string(),
        }),
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

/// Decides retry or dead for a failed attempt and tells the error hook.
fn fail(
    shared: &Shared,
    keys: &QueueKeys,
    mut envelope: Envelope,
    error: String,
    permanent: bool,
) -> Settled {
    let error = truncate(error);
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
    let delay = (!dead).then(|| policy.delay(failures));
    if let Some(hook) = &shared.on_error {
        let job = Job::from_envelope(&keys.queue, envelope.clone(), default_max);
        hook(
            &job,
            &Failure {
                error: error.clone(),
                dead,
                retry_in: delay,
            },
        );
    }
    if dead {
        warn!(queue = %keys.queue, id = %envelope.id, attempt = failures, error = %error, "job dead");
    } else {
        debug!(queue = %keys.queue, id = %envelope.id, attempt = failures, error = %error, "job failed, will retry");
    }
    envelope.attempt = failures;
    envelope.last_error = error.clone();
    Settled {
        id: envelope.id.clone(),
        tracked: envelope.tracked(),
        unique: envelope.unique.clone(),
        kind: OutcomeKind::Failed {
            envelope: envelope.encode(),
            dead,
            delay_ms: delay.map(|d| d.as_millis() as u64).unwrap_or(0),
            attempt: failures,
            error,
        },
    }
}

/// A lease group this worker holds: how many jobs it has and how many are settled in Redis.
struct Group {
    total: u32,
    settled: u32,
}

/// Owns the lease groups: writes outcomes in batches and renews what is still held. Keeps trying
/// through Redis outages for up to a lease length; after that it stops renewing the group, whose
/// lease then expires and whose unfinished jobs are recovered (at-least-once, never lost).
async fn lease_keeper(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    stop: CancellationToken,
) {
    let mut groups: HashMap<(usize, u64), Group> = HashMap::new();
    let mut renew = tokio::time::interval(shared.config.lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    let mut failing = false;
    loop {
        let first = tokio::select! {
            biased;
            event = rx.recv() => event,
            _ = renew.tick() => {
                renew_groups(&shared, &mut groups).await;
                continue;
            }
            _ = stop.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else { return };
        let mut outcomes: Vec<Outcome> = Vec::new();
        let mut event = Some(first);
        while let Some(e) = event.take() {
            match e {
                Event::Leased {
                    queue,
                    group,
                    count,
                } => {
                    groups.insert(
                        (queue, group),
                        Group {
                            total: count,
                            settled: 0,
                        },
                    );
                }
                Event::Done(outcome) => outcomes.push(outcome),
            }
            if outcomes.len() < CHUNK {
                event = rx.try_recv().ok();
            }
        }
        let mut by_queue: HashMap<usize, Vec<Outcome>> = HashMap::new();
        for outcome in outcomes {
            by_queue.entry(outcome.queue).or_default().push(outcome);
        }
        for (queue, outcomes) in by_queue {
            // Which groups this batch finishes: those get deleted whole.
            let mut finishing: HashMap<u64, bool> = HashMap::new();
            let mut counts: HashMap<u64, u32> = HashMap::new();
            for outcome in &outcomes {
                *counts.entry(outcome.group).or_default() += 1;
            }
            for (group, n) in &counts {
                if let Some(state) = groups.get(&(queue, *group)) {
                    finishing.insert(*group, state.settled + n >= state.total);
                }
            }
            let mut delay = Duration::from_millis(50);
            let give_up = tokio::time::Instant::now() + shared.config.lease;
            let written = loop {
                match write_outcomes(&shared, queue, &outcomes, &finishing).await {
                    Ok(()) => {
                        if failing {
                            info!("redis reachable again, outcomes flowing");
                            failing = false;
                        }
                        break true;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(error = %e, "could not record job outcomes; retrying");
                            failing = true;
                        }
                        if tokio::time::Instant::now() >= give_up {
                            warn!(jobs = outcomes.len(), "gave up recording outcomes; their leases will expire and the unfinished jobs run again");
                            break false;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            };
            for (group, n) in counts {
                if !written {
                    groups.remove(&(queue, group)); // stop renewing: let recovery take it
                } else if finishing.get(&group) == Some(&true) {
                    groups.remove(&(queue, group));
                } else if let Some(state) = groups.get_mut(&(queue, group)) {
                    state.settled += n;
                }
            }
        }
    }
}

async fn write_outcomes(
    shared: &Shared,
    queue: usize,
    outcomes: &[Outcome],
    finishing: &HashMap<u64, bool>,
) -> Result<()> {
    let keys = &shared.queues[queue];
    let mut fail = FAIL_SCRIPT.prepare_invoke();
    fail.key(&keys.active)
        .key(&keys.retry)
        .key(&keys.dead)
        .key(&keys.jobs)
        .key(&keys.stats)
        .key(&keys.pending)
        .key(&keys.scheduled)
        .key(&keys.config)
        .key(&keys.events)
        .arg(&keys.prefix);
    let mut completed: HashMap<u64, Vec<&Outcome>> = HashMap::new();
    let mut given_back: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut fails = 0;
    for outcome in outcomes {
        let job = &outcome.settled;
        match &job.kind {
            OutcomeKind::Completed { .. } => {
                completed.entry(outcome.group).or_default().push(outcome)
            }
            OutcomeKind::GivenBack => given_back
                .entry(outcome.group)
                .or_default()
                .push(outcome.index),
            OutcomeKind::Failed {
                envelope,
                dead,
                delay_ms,
                attempt,
                error,
            } => {
                fails += 1;
                fail.arg(outcome.group)
                    .arg(outcome.index)
                    .arg(&job.id)
                    .arg(envelope.as_slice())
                    .arg(if *dead { "dead" } else { "retry" })
                    .arg(*delay_ms)
                    .arg(if job.tracked { "1" } else { "0" })
                    .arg(*attempt)
                    .arg(error)
                    .arg(&job.unique);
            }
        }
    }
    let mut conn = shared.client.conn();
    // Order matters: tombstones first (fail, requeue), then complete deletes finished groups.
    if fails > 0 {
        let stale: u64 = fail.invoke_async(&mut conn).await?;
        if stale > 0 {
            warn!(queue = %keys.queue, stale, "failures reported after their leases expired; ignored (the jobs were recovered)");
        }
    }
    if !given_back.is_empty() {
        let mut requeue = REQUEUE_SCRIPT.prepare_invoke();
        requeue
            .key(&keys.pending)
            .key(&keys.prioritized)
            .key(&keys.active)
            .key(&keys.seq)
            .key(&keys.stats)
            .arg(&keys.prefix);
        for (group, indexes) in &mut given_back {
            // In lease order, so the jobs go back in the order they were fetched.
            indexes.sort_unstable();
            requeue.arg(*group).arg("0").arg(indexes.len());
            for index in indexes {
                requeue.arg(*index);
            }
        }
        let n: u64 = requeue.invoke_async(&mut conn).await?;
        info!(queue = %keys.queue, jobs = n, "gave unfinished jobs back to the queue");
    }
    let mut complete = COMPLETE_SCRIPT.prepare_invoke();
    complete
        .key(&keys.active)
        .key(&keys.completed)
        .key(&keys.stats)
        .key(&keys.config)
        .key(&keys.events)
        .arg(&keys.prefix)
        .arg(shared.config.completed_retention.as_secs().max(1));
    let mut any = false;
    for (group, all) in finishing {
        let done = completed.get(group).map(Vec::as_slice).unwrap_or_default();
        if done.is_empty() && !*all {
            continue;
        }
        any = true;
        // A group finishing whole only needs the jobs that carry more than a count.
        let detailed: Vec<&&Outcome> = done
            .iter()
            .filter(|o| !*all || o.settled.tracked || !o.settled.unique.is_empty())
            .collect();
        complete
            .arg(*group)
            .arg(if *all { "1" } else { "0" })
            .arg(done.len())
            .arg(detailed.len());
        for outcome in detailed {
            let job = &outcome.settled;
            let result = match &job.kind {
                OutcomeKind::Completed { result } if job.tracked => {
                    result.as_deref().unwrap_or_default()
                }
                _ => &[],
            };
            complete
                .arg(outcome.index)
                .arg(&job.id)
                .arg(if job.tracked { "1" } else { "0" })
                .arg(result)
                .arg(&job.unique);
        }
    }
    if any {
        let stale: u64 = complete.invoke_async(&mut conn).await?;
        if stale > 0 {
            warn!(queue = %keys.queue, stale, "completions reported after their leases expired; ignored (the jobs were recovered and run again)");
        }
    }
    Ok(())
}

/// Extends every group still held; forgets the ones Redis says are gone.
async fn renew_groups(shared: &Shared, groups: &mut HashMap<(usize, u64), Group>) {
    for (queue, keys) in shared.queues.iter().enumerate() {
        let held: Vec<u64> = groups
            .keys()
            .filter(|(q, _)| *q == queue)
            .map(|(_, g)| *g)
            .collect();
        for chunk in held.chunks(CHUNK) {
            let mut invocation = RENEW_SCRIPT.prepare_invoke();
            invocation
                .key(&keys.active)
                .arg(shared.config.lease.as_millis() as u64);
            for group in chunk {
                invocation.arg(*group);
            }
            let mut conn = shared.client.conn();
            match invocation.invoke_async::<Vec<u64>>(&mut conn).await {
                Ok(lost) => {
                    for group in &lost {
                        groups.remove(&(queue, *group));
                    }
                    if !lost.is_empty() {
                        warn!(queue = %keys.queue, groups = ?lost, "lost leases: their jobs may run again elsewhere");
                    }
                }
                Err(e) => debug!(error = %e, "lease renewal failed; will retry"),
            }
        }
    }
}

/// Keeps the worker's view of cancellation requests fresh: while jobs run, reads each queue's
/// cancel set every half second (one SMEMBERS per queue; nothing while idle) and tells the jobs
/// when it changes.
async fn watch_cancellations(
    shared: Arc<Shared>,
    tx: watch::Sender<Arc<HashSet<String>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.cancelled() => return,
        }
        if shared.semaphore.available_permits() == shared.config.concurrency {
            continue; // nothing running: nothing to cancel
        }
        let mut wanted = HashSet::new();
        let mut conn = shared.client.conn();
        for keys in &shared.queues {
            match redis::cmd("SMEMBERS")
                .arg(&keys.cancel)
                .query_async::<Vec<String>>(&mut conn)
                .await
            {
                Ok(ids) => wanted.extend(ids),
                Err(e) => debug!(error = %e, "could not read cancellations"),
            }
        }
        if **tx.borrow() != wanted {
            let _ = tx.send(Arc::new(wanted));
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
