//! The lease keeper: writes outcomes in batches (whatever piled up while the previous round was
//! in flight) as `fail.lua`, `requeue.lua` and `complete.lua` calls, retrying through outages
//! for up to a lease, and settles the held groups.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::runtime::{groups, Outcome, OutcomeKind, Shared, CHUNK};
use crate::durability::Acked;
use crate::store::durable;
use crate::store::lease::{self, Completion, Failure, GroupCompletions};
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
    let mut not_durable = false;
    let mut deferred = Deferred::default();
    // Reused from round to round, like every buffer below: an outcome is 200-odd bytes, and
    // building these afresh each round cost a malloc and several doublings (each a copy of every
    // outcome) per round on the worker's busiest path.
    let mut batch: Vec<Outcome> = Vec::new();
    let mut write: Vec<Outcome> = Vec::new();
    let mut by_queue: Vec<Vec<Outcome>> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            outcome = rx.recv() => outcome,
            _ = stop.cancelled() => rx.try_recv().ok(),
            _ = deferred.due() => None,
        };
        let stopping = stop.is_cancelled() || rx.is_closed();
        if first.is_none() && deferred.is_empty() && stopping {
            return;
        }
        batch.extend(first);
        while batch.len() < CHUNK {
            match rx.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        // Once stopping with nothing more queued, everything held back is written too.
        let flush_all = stopping && batch.len() < CHUNK;
        deferred.plan(&shared, &mut batch, &mut write, flush_all);
        let queue = write.first().map(|o| o.queue);
        if write.iter().all(|o| Some(o.queue) == queue) {
            // One queue (always, for a worker that serves one): no sorting by queue.
            if let Some(queue) = queue {
                let flags = Flags {
                    failing: &mut failing,
                    not_durable: &mut not_durable,
                };
                settle(&shared, queue, &write, flags).await;
            }
            write.clear();
            continue;
        }
        by_queue.resize_with(shared.queues.len(), Vec::new);
        for outcome in write.drain(..) {
            by_queue[outcome.queue].push(outcome);
        }
        for (queue, outcomes) in by_queue.iter_mut().enumerate() {
            if outcomes.is_empty() {
                continue;
            }
            let flags = Flags {
                failing: &mut failing,
                not_durable: &mut not_durable,
            };
            settle(&shared, queue, outcomes, flags).await;
            outcomes.clear();
        }
    }
}

/// The keeper's maps keyed by lease group, hashed with FxHash instead of SipHash: the keeper
/// looks groups up several times per outcome, and SipHash showed in its profile. Flooding
/// resistance is not needed here: group ids are random numbers this worker drew itself
/// (`store::lease::fetch_call`), and queue indexes are small.
pub(super) type GroupMap<K, V> = rustc_hash::FxHashMap<K, V>;

/// How long the completion of a plain job may be held back while other jobs of its group are
/// still running.
const DEFER: Duration = Duration::from_millis(100);

/// Completions of plain jobs (untracked, no unique key) held back while their group still has
/// jobs running or parked: once the group's last job settles, the whole group is deleted in one
/// `DEL`, where writing each completion as it came would cost an `LINDEX` and an `LSET` per job.
/// Held at most [`DEFER`]; a crash meanwhile runs them again (docs/design.md §16).
#[derive(Default)]
struct Deferred {
    groups: GroupMap<(usize, u64), (tokio::time::Instant, Vec<Outcome>)>,
    /// Scratch space of [`Deferred::plan`], kept between rounds: per group of the batch, its
    /// outcomes in the batch and how many of its jobs are not settled yet.
    counts: GroupMap<(usize, u64), (u32, u32)>,
    finishing: Vec<(usize, u64)>,
}

impl Deferred {
    fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Resolves when the oldest held completion is due (never when none is held).
    async fn due(&self) {
        match self.groups.values().map(|(since, _)| *since).min() {
            Some(since) => tokio::time::sleep_until(since + DEFER).await,
            None => std::future::pending().await,
        }
    }

    /// Moves the outcomes to write now from `batch` (left empty) to `write`: the batch, except
    /// the completions that can wait for their group to finish, plus the held ones whose group
    /// this batch finishes or whose time is up.
    fn plan(
        &mut self,
        shared: &Shared,
        batch: &mut Vec<Outcome>,
        write: &mut Vec<Outcome>,
        flush_all: bool,
    ) {
        let now = tokio::time::Instant::now();
        if flush_all || shared.config.prefetch == 0 {
            write.append(batch);
            for (_, (_, held)) in self.groups.drain() {
                write.extend(held);
            }
            return;
        }
        let counts = &mut self.counts;
        counts.clear();
        for outcome in batch.iter() {
            counts.entry((outcome.queue, outcome.group)).or_default().0 += 1;
        }
        self.finishing.clear();
        {
            let held = groups(shared);
            for (key, (n, unsettled)) in counts.iter_mut() {
                let waiting = self.groups.get(key).map_or(0, |(_, v)| v.len() as u32);
                match held.get(key) {
                    Some(state) if state.settled + *n + waiting < state.total => {
                        *unsettled = state.total - state.settled;
                    }
                    // Finishing, or no longer held (lost): nothing to wait for.
                    _ => self.finishing.push(*key),
                }
            }
        }
        write.reserve(batch.len());
        for outcome in batch.drain(..) {
            let key = (outcome.queue, outcome.group);
            let plain = matches!(outcome.settled.kind, OutcomeKind::Completed { .. })
                && !outcome.settled.tracked
                && outcome.settled.unique.is_empty();
            if plain && !self.finishing.contains(&key) {
                match self.groups.entry(key) {
                    Entry::Occupied(held) => held.into_mut().1.push(outcome),
                    Entry::Vacant(slot) => {
                        // Sized for the group's unsettled jobs at once: pushed one by one into
                        // an empty Vec, each held outcome was copied about twice more as it grew.
                        let unsettled = self.counts.get(&key).map_or(0, |&(_, u)| u as usize);
                        slot.insert((now, Vec::with_capacity(unsettled)))
                            .1
                            .push(outcome);
                    }
                }
            } else {
                write.push(outcome);
            }
        }
        for key in &self.finishing {
            if let Some((_, held)) = self.groups.remove(key) {
                write.extend(held);
            }
        }
        let due: Vec<(usize, u64)> = self
            .groups
            .iter()
            .filter(|(_, (since, _))| now >= *since + DEFER)
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            if let Some((_, held)) = self.groups.remove(&key) {
                write.extend(held);
            }
        }
    }
}

/// What the keeper remembers between batches, so that an outage is logged once when it starts and
/// once when it ends.
struct Flags<'a> {
    /// Writes are failing.
    failing: &'a mut bool,
    /// Durable outcomes: waits are falling short.
    not_durable: &'a mut bool,
}

/// Adds a written batch to the worker's own totals (completed, retried, dead).
fn count_ended(shared: &Shared, outcomes: &[Outcome]) {
    let mut ended = [0u64; 3];
    for outcome in outcomes {
        match outcome.settled.kind {
            OutcomeKind::Completed { .. } => ended[0] += 1,
            OutcomeKind::Failed { dead: false, .. } => ended[1] += 1,
            OutcomeKind::Failed { dead: true, .. } => ended[2] += 1,
            OutcomeKind::GivenBack => {}
        }
    }
    for (total, n) in shared.ended.iter().zip(ended) {
        if n > 0 {
            total.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Writes one queue's outcomes (retrying through outages for up to a lease) and settles their
/// groups in the table: finished or given-up groups leave it, the others count their settled jobs.
async fn settle(shared: &Shared, queue: usize, outcomes: &[Outcome], flags: Flags<'_>) {
    let mut counts: GroupMap<u64, u32> = GroupMap::default();
    for outcome in outcomes {
        *counts.entry(outcome.group).or_default() += 1;
    }
    // Which groups this batch finishes: those get deleted whole. A group missing from the table
    // was lost (or given up): its completions are not sent, failures are (the scripts ignore
    // them as stale).
    let mut finishing: GroupMap<u64, bool> = GroupMap::default();
    {
        let mut held = groups(shared);
        for (group, n) in &counts {
            if let Some(state) = held.get_mut(&(queue, *group)) {
                let all = state.settled + n >= state.total;
                state.closing |= all;
                finishing.insert(*group, all);
            }
        }
    }
    let written = write_with_retries(shared, queue, outcomes, &finishing, flags).await;
    if written && shared.config.history {
        // Only once written, so that a retried write does not count twice.
        super::history::add(shared, queue, outcomes);
    }
    if written {
        count_ended(shared, outcomes);
    }
    if written && shared.config.metrics {
        super::metrics::record(shared, queue, outcomes);
    }
    let mut held = groups(shared);
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

/// Writes the outcomes, retrying with backoff for up to a lease; `false` if it gave up.
async fn write_with_retries(
    shared: &Shared,
    queue: usize,
    outcomes: &[Outcome],
    finishing: &GroupMap<u64, bool>,
    flags: Flags<'_>,
) -> bool {
    let Flags {
        failing,
        not_durable,
    } = flags;
    let mut delay = Duration::from_millis(50);
    let give_up = tokio::time::Instant::now() + shared.config.lease;
    loop {
        match write_outcomes(shared, queue, outcomes, finishing).await {
            Ok(acked) => {
                if *failing {
                    info!("redis reachable again, outcomes flowing");
                    *failing = false;
                }
                let durability = &shared.config.durable_outcomes;
                if let Some(acked) = acked {
                    let short = !acked.satisfies(durability);
                    if short && !*not_durable {
                        warn!(
                            %durability,
                            replicas = acked.replicas,
                            "outcomes written on the primary but not confirmed by its \
                             replicas in time; a failover now would run those jobs again"
                        );
                    } else if !short && *not_durable {
                        info!(%durability, "outcomes confirmed by the replicas again");
                    }
                    *not_durable = short;
                }
                return true;
            }
            Err(e) => {
                if !*failing {
                    warn!(error = %e, "could not record job outcomes; retrying");
                    *failing = true;
                }
                if tokio::time::Instant::now() >= give_up {
                    warn!(jobs = outcomes.len(), "gave up recording outcomes; their leases will expire and the unfinished jobs run again");
                    return false;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Writes one queue's batch of outcomes: failures, then give-backs (tombstones first), then the
/// completions, which delete the groups this batch finishes. With durable outcomes they go over a
/// durable connection and are followed by `WAIT` on it, whose confirmation is returned.
async fn write_outcomes(
    shared: &Shared,
    queue: usize,
    outcomes: &[Outcome],
    finishing: &GroupMap<u64, bool>,
) -> Result<Option<Acked>> {
    let keys = &shared.queues[queue];
    let durability = &shared.config.durable_outcomes;
    let mut conn = if durability.is_durable() {
        shared.client.durable_conn(durability).await?
    } else {
        shared.client.conn()
    };
    let failures: Vec<Failure> = outcomes.iter().filter_map(failure_of).collect();
    if !failures.is_empty() {
        let stale = lease::fail(&mut conn, keys, &failures).await?;
        if stale > 0 {
            warn!(queue = %keys.queue, stale, "failures reported after their leases expired; ignored (the jobs were recovered)");
        }
    }
    let given_back = given_back_by_group(outcomes);
    if !given_back.is_empty() {
        let n = lease::requeue(&mut conn, keys, &given_back).await?;
        info!(queue = %keys.queue, jobs = n, "gave unfinished jobs back to the queue");
    }
    let completions = completions_by_group(outcomes, finishing);
    if !completions.is_empty() {
        let retention_s = shared.config.completed_retention.as_secs().max(1);
        let stale = lease::complete(&mut conn, keys, retention_s, &completions).await?;
        if stale > 0 {
            warn!(queue = %keys.queue, stale, "completions reported after their leases expired; ignored (the jobs were recovered and run again)");
        }
    }
    // The batch's scripts cannot share a round trip with the wait (each depends on the last
    // one's success), so it follows them on the same connection: WAIT covers every write the
    // connection made. (Were the connection replaced in between, by a reconnect or a Sentinel
    // switch, the wait would measure the new one; the outcome is then only as safe as without
    // the option: at worst the job runs again.)
    match durable::wait_cmd(durability) {
        Some(wait) => Ok(Some(durable::wait_alone(&mut conn, &wait).await?)),
        None => Ok(None),
    }
}

fn failure_of(outcome: &Outcome) -> Option<Failure<'_>> {
    let job = &outcome.settled;
    let OutcomeKind::Failed {
        envelope,
        dead,
        delay_ms,
        attempt,
        error,
    } = &job.kind
    else {
        return None;
    };
    Some(Failure {
        group: outcome.group,
        index: outcome.index,
        id: &job.id,
        envelope,
        dead: *dead,
        delay_ms: *delay_ms,
        tracked: job.tracked,
        attempt: *attempt,
        error,
        unique: &job.unique,
    })
}

/// The jobs to give back, by group, each group's in lease order so they go back in the order
/// they were fetched.
fn given_back_by_group(outcomes: &[Outcome]) -> Vec<(u64, Vec<u32>)> {
    let mut by_group: GroupMap<u64, Vec<u32>> = GroupMap::default();
    for outcome in outcomes {
        if matches!(outcome.settled.kind, OutcomeKind::GivenBack) {
            by_group
                .entry(outcome.group)
                .or_default()
                .push(outcome.index);
        }
    }
    let mut groups: Vec<(u64, Vec<u32>)> = by_group.into_iter().collect();
    for (_, indexes) in &mut groups {
        indexes.sort_unstable();
    }
    groups
}

/// The completions of each group that has some or that this batch finishes. A group finishing
/// whole only needs the jobs that carry more than a count (a record, a result, a unique key).
fn completions_by_group<'a>(
    outcomes: &'a [Outcome],
    finishing: &GroupMap<u64, bool>,
) -> Vec<GroupCompletions<'a>> {
    let mut completed: GroupMap<u64, Vec<&Outcome>> = GroupMap::default();
    for outcome in outcomes {
        if matches!(outcome.settled.kind, OutcomeKind::Completed { .. }) {
            completed.entry(outcome.group).or_default().push(outcome);
        }
    }
    let mut groups = Vec::new();
    for (group, all) in finishing {
        let done = completed.get(group).map(Vec::as_slice).unwrap_or_default();
        if done.is_empty() && !*all {
            continue;
        }
        let detailed = done
            .iter()
            .filter(|o| !*all || o.settled.tracked || !o.settled.unique.is_empty())
            .map(|outcome| {
                let job = &outcome.settled;
                let result = match &job.kind {
                    OutcomeKind::Completed { result } if job.tracked => {
                        result.as_deref().unwrap_or_default()
                    }
                    _ => &[],
                };
                Completion {
                    index: outcome.index,
                    id: &job.id,
                    tracked: job.tracked,
                    result,
                    unique: &job.unique,
                }
            })
            .collect();
        groups.push(GroupCompletions {
            group: *group,
            all: *all,
            completed: done.len(),
            detailed,
        });
    }
    groups
}
