//! The fetch loop: leases jobs while the worker has free slots, asking its queues in weighted or
//! strict order, and when they are all empty blocks in Redis (no polling) until something is
//! pushed or the next timed job is due. It registers each lease group in the shared table before
//! any of the group's jobs starts, so the renewer covers it at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::executor::start_job;
use super::runtime::{hold_group, Outcome, OutcomeKind, Settled, Shared};
use super::Config;
use crate::envelope::Envelope;
use crate::store::lease::{self, FetchSettings, Fetched};
use crate::store::Conn;
use crate::Result;

/// What `fetch.lua` needs of the worker's settings.
fn fetch_settings(cfg: &Config) -> FetchSettings {
    FetchSettings {
        lease_ms: cfg.lease.as_millis() as u64,
        default_max_attempts: cfg.default_max_attempts,
        dead_max: cfg.dead_max as u64,
        dead_retention_ms: cfg.dead_retention.as_millis() as u64,
        completed_retention_ms: cfg.completed_retention.as_millis() as u64,
    }
}

pub(super) async fn fetch(shared: &Shared, queue: usize, want: usize) -> Result<Fetched> {
    let settings = fetch_settings(&shared.config);
    lease::fetch(
        &mut shared.client.conn(),
        &shared.queues[queue],
        want,
        &settings,
    )
    .await
}

/// The order in which to ask the queues this round: as added (strict), or a weighted random
/// permutation, so a queue with weight 3 beside one with weight 1 comes first three times in four.
pub(super) fn queue_order(weights: &[u32], strict: bool) -> Vec<usize> {
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
pub(super) struct QueueWait {
    pub(super) queue: usize,
    pub(super) now_ms: i64,
    pub(super) wake_at_ms: i64,
    pub(super) hold: bool,
}

/// Leases jobs while there is capacity, asking the queues in weighted or strict order; when they
/// are all empty, blocks (no polling) until something is pushed or the next timed job is due.
pub(super) async fn fetch_loop(shared: Arc<Shared>, weights: Vec<u32>, stop: CancellationToken) {
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
                    let keys = &shared.queues[wait.queue];
                    let settings = fetch_settings(&shared.config);
                    let result = lease::wait_then_fetch(conn, keys, want, wait_ms, &settings).await;
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
pub(super) fn give_back(shared: &Shared, queue: usize, fetched: Fetched) {
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
pub(super) fn given_back(queue: usize, group: u64, index: u32, bytes: &[u8]) -> Outcome {
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

/// How long an idle worker may wait: until the earliest scheduled, retry, lease or rate-limit
/// deadline of the queues it asked, at most `idle_wait`.
pub(super) fn wait_ms(shared: &Shared, waits: &[QueueWait]) -> i64 {
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
pub(super) async fn wait_for_work(
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
    let mut futures = Vec::with_capacity(watched.len());
    for (queue, conn) in blocking.iter_mut().enumerate() {
        let Some(conn) = conn.as_mut().filter(|_| watched.contains(&queue)) else {
            continue;
        };
        let keys = shared.queues[queue].clone();
        futures.push(Box::pin(async move {
            (queue, lease::wait_for_entry(conn, &keys, wait_ms).await)
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
