//! The running worker: one fetch loop for all its queues sharing a concurrency semaphore, one
//! task per job, one lease keeper that writes outcomes, and one renewer that extends the lease
//! groups this worker holds. The keeper batches outcomes into `fail.lua` / `requeue.lua` /
//! `complete.lua` calls (whatever piled up while the previous call was in flight). The renewer
//! has a task of its own so that renewal never waits behind outcome writes, however many there
//! are or however long a failing one is retried. The table of held groups is shared by the three
//! (a mutex, held for short synchronous sections only); the per-job path takes no lock, it sends
//! its outcome over a channel.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use redis::Value;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::handler::{panic_message, BoxError, Handlers, Permanent};
use super::{Config, ErrorHook, Failure, MonitorHook, Worker};
use crate::connection::{Client, Conn};
use crate::envelope::Envelope;
use crate::job::{Job, JobContext};
use crate::keys::QueueKeys;
use crate::retry::RetryPolicy;
use crate::scripts::{COMPLETE_SCRIPT, FAIL_SCRIPT, FETCH_SCRIPT, RENEW_SCRIPT, REQUEUE_SCRIPT};
use crate::{Error, Result};

/// Longest error text kept with a job.
const MAX_ERROR_LEN: usize = 4096;
/// Groups per renew call, outcomes per flush.
const CHUNK: usize = 1000;

/// An attempt ended: what the lease keeper hears about.
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
    events: mpsc::UnboundedSender<Outcome>,
    /// The lease groups this worker holds, by (queue index, group). The fetch loop adds a group
    /// as soon as a fetch returns it, before any of its jobs starts; the keeper counts settled
    /// jobs and removes groups whose outcomes are all written (or given up); the renewer renews
    /// what is here and removes what Redis says is lost. Locked only for short synchronous
    /// sections, never across an `.await`.
    groups: Mutex<HashMap<(usize, u64), Group>>,
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
        groups: Mutex::new(HashMap::new()),
        abort_jobs: CancellationToken::new(),
    });

    let stop_fetching = CancellationToken::new();
    let stop_background = CancellationToken::new();
    let stop_renewing = CancellationToken::new();
    let fetcher = tokio::spawn(fetch_loop(shared.clone(), weights, stop_fetching.clone()));
    let keeper = tokio::spawn(lease_keeper(shared.clone(), rx, stop_background.clone()));
    let renewer = tokio::spawn(lease_renewer(shared.clone(), stop_renewing.clone()));
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
    // Only now: while the keeper was still writing (or retrying) outcomes, their groups had to
    // stay renewed. What it gave up on or never heard of is left to expire and be recovered.
    stop_renewing.cancel();
    let _ = renewer.await;
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
        // Shutdown began: start nothing more. A carried fetch already leased its jobs, so they go
        // straight back rather than wait for their lease to expire.
        if stop.is_cancelled() {
            // (Only a worker serving one queue carries a fetch: it is queue 0.)
            if let Some((_, Ok(fetched))) = carried.take() {
                give_back(&shared, 0, fetched);
            }
            return;
        }
        let (mut permit, mut first) = match carried.take() {
            Some((permit, fetched)) => (permit, Some(fetched)),
            None => {
                // Biased: when a permit and the stop signal are both ready, stop. Unbiased, the
                // loop went on fetching and starting jobs after shutdown began, one round in two.
                let mut permit = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    permit = shared.semaphore.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => return,
                    },
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
                None if stop.is_cancelled() => break,
                None => fetch(&shared, queue, want).await,
            };
            match result {
                Ok(fetched) if stop.is_cancelled() => {
                    // Shutdown began while this fetch was in flight: its jobs go back at once.
                    give_back(&shared, queue, fetched);
                }
                Ok(fetched) => {
                    // Held (and renewed) before any job starts, whatever the keeper is doing.
                    hold_group(&shared, queue, fetched.group, fetched.envelopes.len());
                    for (index, envelope) in fetched.envelopes.into_iter().enumerate() {
                        let index = index as u32;
                        match permit.split(1) {
                            Some(one) => {
                                start_job(&shared, queue, fetched.group, index, envelope, one)
                            }
                            // More jobs than asked for (never, by fetch.lua's contract): each
                            // needs an outcome all the same, or its group is renewed forever.
                            None => {
                                let _ = shared.events.send(given_back(
                                    queue,
                                    fetched.group,
                                    index,
                                    &envelope,
                                ));
                            }
                        }
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
    // Held like any fetched group: renewed until the keeper has written the give-back, and known
    // to the keeper, which deletes it once all of its jobs are back.
    hold_group(shared, queue, fetched.group, fetched.envelopes.len());
    for (index, bytes) in fetched.envelopes.iter().enumerate() {
        let _ = shared
            .events
            .send(given_back(queue, fetched.group, index as u32, bytes));
    }
}

/// The outcome that sends a leased job back to its queue without counting an attempt.
fn given_back(queue: usize, group: u64, index: u32, bytes: &[u8]) -> Outcome {
    let envelope = Envelope::decode(bytes).unwrap_or_default();
    Outcome {
        queue,
        group,
        index,
        settled: Settled {
            tracked: envelope.tracked(),
            unique: envelope.unique,
            id: envelope.id,
            kind: OutcomeKind::GivenBack,
        },
    }
}

/// The table of held groups. A panic while it was locked cannot leave it half-updated (each
/// section is a single insert, update or removal), so a poisoned lock is used as is.
fn groups(shared: &Shared) -> MutexGuard<'_, HashMap<(usize, u64), Group>> {
    shared.groups.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records a group a fetch just leased, so that it is renewed from now on.
fn hold_group(shared: &Shared, queue: usize, group: u64, jobs: usize) {
    if jobs == 0 {
        return;
    }
    groups(shared).insert(
        (queue, group),
        Group {
            total: u32::try_from(jobs).unwrap_or(u32::MAX),
            settled: 0,
            closing: false,
        },
    );
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
        // Last resort: whatever panics in here (a handler future whose drop panics at a timeout,
        // a bug of ours), the job must end in an outcome. Without one its group would be renewed
        // for as long as the worker runs and the job would stay `active` forever.
        let settled = match AssertUnwindSafe(run_job(&shared, queue, group, index, &envelope))
            .catch_unwind()
            .await
        {
            Ok(settled) => settled,
            Err(panic) => {
                let panic = panic_message(panic.as_ref());
                panicked_job(&shared, queue, group, index, &envelope, panic)
            }
        };
        let _ = shared.events.send(Outcome {
            queue,
            group,
            index,
            settled,
        });
        drop(permit);
    });
}

/// The outcome of a job whose task panicked outside the handler's own `catch_unwind`: a failed
/// attempt, retried after the default backoff (or dead when it was the last). Calls no user code
/// (no policy, no hook), so it cannot panic the same way again.
fn panicked_job(
    shared: &Shared,
    queue: usize,
    group: u64,
    index: u32,
    bytes: &[u8],
    panic: String,
) -> Settled {
    let keys = &shared.queues[queue];
    let error = truncate(format!("worker panicked while running the job: {panic}"));
    let Ok(mut envelope) = Envelope::decode(bytes) else {
        // As in `run_job`: keep the bytes for the operator, as the payload of a dead job.
        let id = format!("~{group}.{index}");
        let wrapped = Envelope {
            id: id.clone(),
            payload: bytes.to_vec(),
            last_error: error.clone(),
            ..Envelope::default()
        };
        return Settled {
            id,
            tracked: false,
            unique: String::new(),
            kind: OutcomeKind::Failed {
                envelope: wrapped.encode(),
                dead: true,
                delay_ms: 0,
                attempt: 1,
                error,
            },
        };
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
    envelope.attempt = failures;
    envelope.last_error = error.clone();
    Settled {
        id: envelope.id.clone(),
        tracked: envelope.tracked(),
        unique: envelope.unique.clone(),
        kind: OutcomeKind::Failed {
            envelope: envelope.encode(),
            dead,
            delay_ms: millis(delay),
            attempt: failures,
            error,
        },
    }
}

/// A delay in whole milliseconds for the scripts; a custom policy may return anything, and
/// `as u64` would wrap a huge one around to a short delay.
fn millis(delay: Duration) -> u64 {
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

async fn run_job(shared: &Shared, queue: usize, group: u64, index: u32, bytes: &[u8]) -> Settled {
    let keys = &shared.queues[queue];
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
    // Calling the handler is user code too: a closure may panic before it returns its future.
    let attempt = match std::panic::catch_unwind(AssertUnwindSafe(|| handler(job))) {
        Ok(future) => AssertUnwindSafe(future).catch_unwind().left_future(),
        Err(panic) => futures::future::ready(Err(panic)).right_future(),
    };
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
        Some(Err(panic)) => (
            format!("handler panicked: {}", panic_message(panic.as_ref())),
            false,
        ),
        None => (
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
        Err(e) => settled(OutcomeKind::Failed {
            envelope: bytes.to_vec(),
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

/// Decides retry or dead for a failed attempt and tells the error hook. The retry policy and
/// the hook are user code: a panic in either is caught, so the outcome is still recorded.
fn fail(
    shared: &Shared,
    keys: &QueueKeys,
    mut envelope: Envelope,
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
    envelope.attempt = failures;
    envelope.last_error = error.clone();
    Settled {
        id: envelope.id.clone(),
        tracked: envelope.tracked(),
        unique: envelope.unique.clone(),
        kind: OutcomeKind::Failed {
            envelope: envelope.encode(),
            dead,
            delay_ms: delay.map(millis).unwrap_or(0),
            attempt: failures,
            error,
        },
    }
}

/// A lease group this worker holds: how many jobs it has and how many are settled in Redis.
struct Group {
    total: u32,
    settled: u32,
    /// The keeper is writing the outcomes that settle the group's last jobs, which deletes the
    /// group: if renewal then finds it gone, that is our own doing, not a lost lease.
    closing: bool,
}

/// Writes outcomes in batches. Keeps trying through Redis outages for up to a lease length;
/// after that it drops the batch's groups from the table, so they are no longer renewed: their
/// leases expire and their unfinished jobs are recovered (at-least-once, never lost). Renewal
/// goes on meanwhile in [`lease_renewer`].
async fn lease_keeper(
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
        let mut outcomes = vec![first];
        while outcomes.len() < CHUNK {
            match rx.try_recv() {
                Ok(outcome) => outcomes.push(outcome),
                Err(_) => break,
            }
        }
        let mut by_queue: HashMap<usize, Vec<Outcome>> = HashMap::new();
        for outcome in outcomes {
            by_queue.entry(outcome.queue).or_default().push(outcome);
        }
        for (queue, outcomes) in by_queue {
            let mut counts: HashMap<u64, u32> = HashMap::new();
            for outcome in &outcomes {
                *counts.entry(outcome.group).or_default() += 1;
            }
            // Which groups this batch finishes: those get deleted whole. A group missing from
            // the table was lost (or given up): its completions are not sent, failures are
            // (the scripts ignore them as stale).
            let mut finishing: HashMap<u64, bool> = HashMap::new();
            {
                let mut held = groups(&shared);
                for (group, n) in &counts {
                    if let Some(state) = held.get_mut(&(queue, *group)) {
                        let all = state.settled + n >= state.total;
                        state.closing |= all;
                        finishing.insert(*group, all);
                    }
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
            let mut held = groups(&shared);
            for (group, n) in counts {
                if !written {
                    held.remove(&(queue, group)); // stop renewing: let recovery take it
                } else if finishing.get(&group) == Some(&true) {
                    held.remove(&(queue, group));
                } else if let Some(state) = held.get_mut(&(queue, group)) {
                    state.settled += n;
                }
            }
        }
    }
}

/// Renews every held group each `lease / 3`, on its own task: outcome writes, however many or
/// however long retried, never delay it. A renewal that fails is tried again at the next tick.
async fn lease_renewer(shared: Arc<Shared>, stop: CancellationToken) {
    let mut renew = tokio::time::interval(shared.config.lease / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = renew.tick() => {}
        }
        renew_groups(&shared).await;
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

/// Extends every group still held; forgets the ones Redis says are gone (expired, or taken by
/// a recovery under way): their handlers keep running, and their outcomes will be ignored.
async fn renew_groups(shared: &Shared) {
    for (queue, keys) in shared.queues.iter().enumerate() {
        let held: Vec<u64> = groups(shared)
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
                Ok(gone) => {
                    let mut lost = Vec::new();
                    {
                        let mut held = groups(shared);
                        for group in gone {
                            // Not in the table any more, or closing: the keeper settled it and
                            // deleted it while this call was in flight. Nothing was lost.
                            if let Some(state) = held.remove(&(queue, group)) {
                                if !state.closing {
                                    lost.push(group);
                                }
                            }
                        }
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
            // User code: a panic would end the monitor task for good, silently.
            if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&all))) {
                warn!(panic = %panic_message(panic.as_ref()), "monitor hook panicked");
            }
        }
    }
}
