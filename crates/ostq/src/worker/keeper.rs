//! The lease keeper: writes outcomes in batches (whatever piled up while the previous round was
//! in flight) as `fail.lua`, `requeue.lua` and `complete.lua` calls, retrying through outages
//! for up to a lease, and settles the held groups.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::runtime::{groups, Outcome, OutcomeKind, Shared, CHUNK};
use crate::scripts::{COMPLETE_SCRIPT, FAIL_SCRIPT, REQUEUE_SCRIPT};
use crate::Result;

/// Writes outcomes in batches. Keeps trying through Redis outages for up to a lease length;
/// after that it drops the batch's groups from the table, so they are no longer renewed: their
/// leases expire and their unfinished jobs are recovered (at-least-once, never lost). Renewal
/// goes on meanwhile in [`lease_renewer`].
pub(super) async fn lease_keeper(
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

pub(super) async fn write_outcomes(
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
