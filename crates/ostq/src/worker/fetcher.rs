//! The fetch loop: leases jobs while the worker has free slots, asking its queues in weighted or
//! strict order, and when they are all empty blocks in Redis (no polling) until something is
//! pushed or the next timed job is due. It registers each lease group in the shared table before
//! any of the group's jobs starts, so the renewer covers it at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::executor::start_job;
use super::layouts::{Layouts, Served};
use super::prefetch::{Leased, StartRate};
use super::runtime::{hold_group, Following, Outcome, OutcomeKind, Settled, Shared};
use super::Config;
use crate::envelope::Envelope;
use crate::keys::QueueKeys;
use crate::store::connection::MAX_BLOCK;
use crate::store::lease::{self, FetchSettings, Fetched, Stage};
use crate::store::{queues, Conn};
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

/// Leases up to `want` jobs of `queue`, of which the worker starts `start_now` at once and parks
/// the rest.
pub(super) async fn fetch(
    shared: &Shared,
    queue: usize,
    want: usize,
    start_now: usize,
    stage: Option<Stage>,
) -> Result<Fetched> {
    let settings = fetch_settings(&shared.config);
    lease::fetch(
        &mut shared.client.conn(),
        &shared.queues[queue],
        want,
        start_now,
        &settings,
        stage,
    )
    .await
}

/// The order in which to ask `queues` (given in strict order) this round: as given (strict), or a
/// weighted random permutation, so a queue with weight 3 beside one with weight 1 comes first
/// three times in four. `weights` is indexed by queue.
pub(super) fn queue_order(queues: &[usize], weights: &[u32], strict: bool) -> Vec<usize> {
    let mut left: Vec<usize> = queues.to_vec();
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

/// When each queue is to be fetched again while the worker is idle, and whether it is on hold.
/// An idle spell ends for a queue when its wait on the list returns (something was pushed, or a
/// wake marker) or when its deadline passes; the round after it asks only those queues.
struct Deadlines {
    /// `None`: never fetched (or to be fetched at the next round whatever happens).
    due: Vec<Option<Instant>>,
    /// Paused or out of rate-limit tokens: its list is not watched.
    hold: Vec<bool>,
    /// Paused: its `resumed` list is watched instead (a resume pushes onto it).
    paused: Vec<bool>,
    /// No longer served (a shard a later layout forgot): never due, never watched.
    retired: Vec<bool>,
}

impl Deadlines {
    /// A queue added at the end, or served again: fetched at the next round.
    fn serve(&mut self, queue: usize) {
        while self.due.len() <= queue {
            self.due.push(None);
            self.hold.push(false);
            self.paused.push(false);
            self.retired.push(false);
        }
        self.due[queue] = None;
        self.retired[queue] = false;
    }

    /// After a fetch of `queue`: due again at its next timed event (earliest scheduled or retry
    /// job, earliest lease expiry, next rate-limit token), at most `idle_wait` when out of
    /// rate-limit tokens (a rate-limit change pushes nothing), and otherwise (paused included: a
    /// resume pushes onto the list it then waits on) at most the safety re-check. The
    /// re-check comes round once per `idle_recheck` for the whole worker: each of its `n` queues
    /// every `n × idle_recheck`, the first time staggered by the queue's rank, so that an idle
    /// worker's commands do not grow with its queues.
    fn fetched(&mut self, cfg: &Config, queue: usize, fetched: &Fetched) {
        let (now_ms, wake_at_ms, hold) = (fetched.now_ms, fetched.wake_at_ms, fetched.hold);
        let n = u32::try_from(self.due.len()).unwrap_or(u32::MAX);
        let rank = u32::try_from(queue + 1).unwrap_or(u32::MAX);
        let cap = if hold && !fetched.paused {
            cfg.idle_wait
        } else if self.due[queue].is_none() {
            cfg.idle_recheck.saturating_mul(rank)
        } else {
            cfg.idle_recheck.saturating_mul(n.max(1))
        }
        // (Any duration a user gives must not overflow an Instant.)
        .min(MAX_DUE);
        let timed = if wake_at_ms > 0 {
            Duration::from_millis(u64::try_from(wake_at_ms - now_ms).unwrap_or(0))
        } else {
            cap
        };
        self.due[queue] = Some(Instant::now() + timed.min(cap));
        self.hold[queue] = hold;
        self.paused[queue] = fetched.paused;
    }

    /// The list to watch for `queue`: its pending list, its `resumed` list while paused, or
    /// none while out of rate-limit tokens.
    fn watch(&self, queue: usize) -> Option<Watch> {
        if self.retired[queue] {
            return None;
        }
        match (self.hold[queue], self.paused[queue]) {
            (false, _) => Some(Watch::Pending),
            (true, true) => Some(Watch::Resumed),
            (true, false) => None,
        }
    }

    /// A fetch failed: try the queue again within `idle_wait` (not at once: a queue whose fetch
    /// keeps failing while the others work must not spin the loop).
    fn failed(&mut self, cfg: &Config, queue: usize) {
        self.due[queue] = Some(Instant::now() + cfg.idle_wait);
    }

    /// The queues due at `now`.
    fn due_at(&self, now: Instant) -> Vec<bool> {
        self.due
            .iter()
            .zip(&self.retired)
            .map(|(d, retired)| !retired && d.is_none_or(|d| d <= now))
            .collect()
    }

    /// The earliest deadline.
    fn next(&self, now: Instant) -> Instant {
        self.due
            .iter()
            .zip(&self.retired)
            .filter(|(_, retired)| !**retired)
            .map(|(d, _)| d.unwrap_or(now))
            .min()
            .unwrap_or(now)
    }
}

/// The furthest an idle queue's deadline may be: a year.
const MAX_DUE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Leases jobs while there is capacity, asking the queues in weighted or strict order; when they
/// are all empty, blocks (no polling) until something is pushed or the next timed job is due.
/// Leases up to `prefetch` jobs more than it has free slots, parked for the next free slot.
pub(super) async fn fetch_loop(shared: Arc<Shared>, layouts: Following, stop: CancellationToken) {
    let n = shared.queues.len();
    let applied_at_start = layouts.changes.borrow().clone();
    let mut fetcher = Fetcher {
        blocking: shared.queues.iter().map(|_| Blocking::Closed).collect(),
        deadlines: Deadlines {
            due: vec![None; n],
            hold: vec![false; n],
            paused: vec![false; n],
            retired: vec![false; n],
        },
        only: None,
        shared,
        served: layouts.served,
        applied: applied_at_start,
        changes: layouts.changes,
        stop,
        failing: false,
        backoff: Duration::from_millis(100),
        carried: None,
        rate: StartRate::new(),
        drained: false,
        ahead: Arc::new(Ahead::default()),
        ahead_task: None,
        ahead_to: None,
        stage_group: lease::new_group(),
        staged: false,
    };
    while let Some((mut slots, first)) = fetcher.take_slots().await {
        let (fetched, errors) = fetcher.fetch_round(&mut slots, first).await;
        if errors > 0 && fetched == 0 {
            drop(slots);
            if !fetcher.back_off().await {
                fetcher.shut_down().await;
                return;
            }
            continue;
        }
        if fetcher.failing && errors == 0 {
            info!("redis reachable again, fetching");
            fetcher.failing = false;
            fetcher.backoff = Duration::from_millis(100);
        }
        if let Some(permit) = slots.filter(|p| p.num_permits() > 0) {
            fetcher.idle(permit).await;
        }
    }
}

/// The fetch loop's state between rounds.
struct Fetcher {
    shared: Arc<Shared>,
    /// The physical queues served (weights, strict order, retired ones).
    served: Served,
    /// The layout watcher's news: a new layout to serve.
    changes: watch::Receiver<Arc<Layouts>>,
    /// The layouts served now.
    applied: Arc<Layouts>,
    stop: CancellationToken,
    /// Per queue, its blocking connection once it has waited, and the wait it carries.
    blocking: Vec<Blocking>,
    deadlines: Deadlines,
    /// After an idle spell: the queues the next round asks (those woken or due), not all.
    only: Option<Vec<bool>>,
    failing: bool,
    backoff: Duration,
    /// A fetch that ran at the end of an idle wait, with the slots it was made for.
    carried: Option<(OwnedSemaphorePermit, Result<Fetched>)>,
    /// How many jobs started lately: the buffer holds no more than that.
    rate: StartRate,
    /// The last round got fewer jobs than it asked for: no prefetching until a slot frees.
    drained: bool,
    /// The fetch sent ahead, if one is in flight or just landed.
    ahead: Arc<Ahead>,
    ahead_task: Option<JoinHandle<()>>,
    /// The lease group this worker's fetches stage for its idle wait (one queue only), and whether
    /// the last fetch registered it. A group a wait was sent for is never staged again.
    stage_group: u64,
    staged: bool,
    /// The queue a fetch ahead may ask: the one whose fetch came back full in the last round, until
    /// a fetch ahead is sent. At most one per round: a round asks the queues in their strict or
    /// weighted order, a fetch ahead only the busy one, so a queue of higher priority that gets
    /// work waits for one batch at most.
    ahead_to: Option<usize>,
}

/// A fetch sent while the jobs of the previous one are still running, to top up the parked jobs
/// (design §7.1). It runs in a task of its own, so that Redis works on the next batch while the
/// worker runs this one: with one fetch in flight at a time, the fetch loop spent over 90 % of a
/// busy drain waiting on fetch round trips at concurrency 100, and a third of the slots that
/// finished a job found nothing parked. Its jobs are all parked (`start_now` 0: no attempt is
/// counted for them until they start) and started on whatever slots are free when it lands.
#[derive(Default)]
struct Ahead {
    /// Jobs the fetch in flight asked for (0: none in flight): counted against the prefetch room,
    /// so that parked and asked-for jobs stay within `prefetch`.
    asked: AtomicUsize,
    /// It came back with fewer jobs than asked for, or failed: none is sent again until a round
    /// of the fetch loop finds the queue full again.
    short: AtomicBool,
}

impl Fetcher {
    /// How many more jobs may be parked now (the prefetch room), after updating the low water
    /// mark at which the job tasks ask for more.
    fn room(&mut self) -> usize {
        let prefetch = &self.shared.prefetch;
        let recent = self
            .rate
            .recent(prefetch.started.load(Ordering::Relaxed), Instant::now());
        let cap = self
            .shared
            .config
            .prefetch
            .min(usize::try_from(recent).unwrap_or(usize::MAX));
        prefetch.set_low_water(cap / 2);
        cap.saturating_sub(prefetch.len() + self.ahead.asked.load(Ordering::Acquire))
    }

    /// Whether a fetch sent ahead is still in flight (or landing).
    fn ahead_in_flight(&mut self) -> bool {
        if self.ahead_task.as_ref().is_some_and(|t| t.is_finished()) {
            self.ahead_task = None;
        }
        self.ahead_task.is_some()
    }

    /// Sends a fetch ahead to the queue that was busy last, for the prefetch room, unless one is
    /// in flight; `false` when none could be sent (none since the last full round, the last one
    /// came back short, no room).
    fn send_ahead(&mut self) -> bool {
        if self.ahead_in_flight() {
            return true;
        }
        let Some(queue) = self.ahead_to else {
            return false;
        };
        if self.ahead.short.load(Ordering::Acquire)
            || self.failing
            || self.stop.is_cancelled()
            || self.served.retired.get(queue).copied().unwrap_or(true)
            || self.deadlines.hold.get(queue).copied().unwrap_or(true)
        {
            return false;
        }
        let want = self.room().min(self.shared.config.max_batch);
        if want == 0 {
            return false;
        }
        self.ahead.asked.store(want, Ordering::Release);
        self.ahead_to = None;
        let (shared, ahead, stop) = (self.shared.clone(), self.ahead.clone(), self.stop.clone());
        self.ahead_task = Some(tokio::spawn(async move {
            let short = match fetch(&shared, queue, want, 0, None).await {
                Ok(fetched) if stop.is_cancelled() => {
                    give_back(&shared, queue, fetched);
                    true
                }
                Ok(fetched) => {
                    let short = fetched.envelopes.len() < want;
                    let mut room = fetched.envelopes.len();
                    start_fetched(&shared, queue, fetched, &mut None, &mut room);
                    start_on_free_slots(&shared);
                    short
                }
                Err(e) => {
                    debug!(queue = %shared.queues[queue].queue, error = %e, "fetch ahead failed");
                    true
                }
            };
            ahead.short.store(short, Ordering::Release);
            ahead.asked.store(0, Ordering::Release);
        }));
        true
    }

    /// Waits for the fetch sent ahead, if one is in flight.
    async fn land_ahead(&mut self) {
        if let Some(task) = self.ahead_task.take() {
            let _ = task.await;
        }
    }

    /// Free slots to fill (at most `max_batch`; `None` for a round that only tops up the
    /// prefetched jobs), with the carried fetch if there is one; `None` once shutdown began.
    #[allow(clippy::type_complexity)]
    async fn take_slots(
        &mut self,
    ) -> Option<(Option<OwnedSemaphorePermit>, Option<Result<Fetched>>)> {
        loop {
            // Shutdown began: start nothing more. A carried fetch already leased its jobs, so they
            // go straight back rather than wait for their lease to expire; so do parked jobs.
            if self.stop.is_cancelled() {
                self.shut_down().await;
                return None;
            }
            if let Some((permit, fetched)) = self.carried.take() {
                return Some((Some(permit), Some(fetched)));
            }
            let prefetch = &self.shared.prefetch;
            for job in prefetch.take_expired(Instant::now()) {
                let _ = self.shared.events.send(parked_back(&job));
            }
            let expiry = prefetch.next_expiry();
            let semaphore = self.shared.semaphore.clone();
            // Biased: when a permit and the stop signal are both ready, stop. Unbiased, the loop
            // went on fetching and starting jobs after shutdown began, one round in two.
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => {}
                permit = semaphore.clone().acquire_owned() => {
                    let mut permit = permit.ok()?;
                    let extra = semaphore
                        .available_permits()
                        .min(self.shared.config.max_batch - 1);
                    if extra > 0 {
                        if let Ok(more) = semaphore.try_acquire_many_owned(extra as u32) {
                            permit.merge(more);
                        }
                    }
                    // Parked jobs first: they were leased before anything a fetch would bring.
                    let permit = self.start_parked(permit);
                    self.drained = false;
                    if permit.is_some() {
                        return Some((permit, None));
                    }
                    // Every slot has a job: top up the parked ones without waiting for it.
                    if self.room() > 0 && !self.send_ahead() {
                        return Some((None, None));
                    }
                }
                // A slot took a parked job and left the buffer low: top it up while the parked
                // jobs run, unless the queues were found empty.
                _ = prefetch.low.notified() => {
                    if !self.drained && self.wants_more() && !self.send_ahead() {
                        return Some((None, None));
                    }
                }
                _ = sleep_until(expiry) => {}
            }
        }
    }

    /// The buffer is at or below half of what it may hold.
    fn wants_more(&mut self) -> bool {
        let room = self.room();
        room > 0 && self.shared.prefetch.len() <= room
    }

    /// Starts parked jobs on the free slots of `permit`; the slots left, if any.
    fn start_parked(&self, permit: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        let mut slots = Some(permit);
        start_parked_on(&self.shared, &mut slots);
        slots.filter(|p| p.num_permits() > 0)
    }

    /// Shutdown: the parked jobs go back to their queues at once (through the lease keeper, no
    /// attempt counted), and so do the jobs of a fetch carried out of an idle wait or sent ahead.
    async fn shut_down(&mut self) {
        // (It sees the stop once it lands, and gives its jobs back.)
        self.land_ahead().await;
        // (Only a worker serving one queue carries a fetch: it is queue 0.)
        if let Some((_, Ok(fetched))) = self.carried.take() {
            give_back(&self.shared, 0, fetched);
        }
        // A group staged and not waited on is empty: deleted now rather than left in `active`
        // and `staged` until its deadline.
        if std::mem::take(&mut self.staged) {
            let shared = &self.shared;
            let lease_ms = shared.config.lease.as_millis() as u64;
            let mut conn = shared.client.conn();
            match lease::claim(&mut conn, &shared.queues[0], self.stage_group, lease_ms).await {
                Ok(Some(entry)) => give_back(shared, 0, one_job(self.stage_group, entry)),
                Ok(None) => {}
                Err(e) => debug!(error = %e, "could not drop the staged group at shutdown"),
            }
        }
        give_back_parked(&self.shared);
    }

    /// Asks each queue in turn (after an idle spell, only the queues it woke) for as many jobs as
    /// there are free slots, plus the prefetch room, and starts them (or parks them); returns how
    /// many fetches worked and how many failed.
    async fn fetch_round(
        &mut self,
        slots: &mut Option<OwnedSemaphorePermit>,
        mut first: Option<Result<Fetched>>,
    ) -> (usize, usize) {
        let added = self.follow_layouts().await;
        let mut room = self.room();
        let shared = &self.shared;
        let mut only = self.only.take();
        if let Some(only) = &mut only {
            // Queues added or served again since the idle spell: asked this round.
            only.resize(shared.queues.len(), true);
            for &queue in &added {
                only[queue] = true;
            }
        }
        let mut order = queue_order(
            &self.served.active(),
            &self.served.weights,
            shared.config.strict,
        );
        if first.is_some() {
            // The carried fetch is queue 0's (the only queue served when it was sent); queues a
            // new layout added meanwhile come after it.
            order.retain(|&q| q != 0);
            order.insert(0, 0);
        }
        let one_queue = self.served.active() == [0];
        let mut fetched_ok = 0;
        let mut errors = 0;
        let mut short = false;
        for queue in order {
            if only.as_ref().is_some_and(|only| !only[queue]) {
                continue;
            }
            let free = slots.as_ref().map_or(0, |p| p.num_permits());
            let want = (free + room).min(shared.config.max_batch);
            if want == 0 {
                break;
            }
            // A worker serving one queue stages a lease group for its idle wait in each fetch
            // (registered only when the fetch leases nothing; design §7.2).
            let stage = one_queue.then_some(Stage {
                group: self.stage_group,
                horizon_ms: (STAGED_WAIT + shared.config.lease).as_millis() as u64,
            });
            // A fetch ahead sent before this one leased earlier jobs: Redis runs the two in the
            // order they were sent (one connection), so it has landed, or is landing, by the time
            // this one is back. Its jobs are parked and must start before this fetch's.
            let ahead_before = self.ahead_task.as_ref().is_some_and(|t| !t.is_finished());
            let result = match first.take() {
                Some(result) => result,
                None if self.stop.is_cancelled() => break,
                None => fetch(shared, queue, want, free, stage).await,
            };
            if ahead_before {
                if let Some(task) = self.ahead_task.take() {
                    let _ = task.await;
                }
                // (The slots they take were asked for by this fetch too: its jobs park instead.)
                room += start_parked_on(shared, slots);
            }
            match result {
                Ok(fetched) if self.stop.is_cancelled() => {
                    // Shutdown began while this fetch was in flight: its jobs go back at once.
                    give_back(shared, queue, fetched);
                }
                Ok(fetched) => {
                    self.staged = fetched.staged;
                    short = fetched.envelopes.len() < want;
                    if short {
                        self.ahead_to = None;
                    } else {
                        self.ahead_to = Some(queue);
                        self.ahead.short.store(false, Ordering::Release);
                    }
                    fetched_ok += 1;
                    self.deadlines.fetched(&shared.config, queue, &fetched);
                    start_fetched(shared, queue, fetched, slots, &mut room);
                }
                Err(e) => {
                    short = true;
                    errors += 1;
                    self.deadlines.failed(&shared.config, queue);
                    if !self.failing {
                        warn!(queue = %shared.queues[queue].queue, error = %e, "fetch failed; retrying with backoff");
                    }
                }
            }
        }
        self.drained = short;
        (fetched_ok, errors)
    }

    /// Follows the layout watcher: serves the queues of a new layout (asked at once: they are
    /// returned), and stops serving forgotten ones once this worker holds nothing there (their
    /// waits are dropped with their connections).
    async fn follow_layouts(&mut self) -> Vec<usize> {
        let mut added = Vec::new();
        // Compared with what was applied, not by `has_changed`: an idle wait that ended on the
        // change has marked it seen already.
        let layouts = self.changes.borrow_and_update().clone();
        if !Arc::ptr_eq(&layouts, &self.applied) {
            added = self.served.sync(&self.shared, &layouts);
            self.applied = layouts;
            for &queue in &added {
                self.deadlines.serve(queue);
                if self.blocking.len() <= queue {
                    self.blocking.resize_with(queue + 1, Blocking::default);
                }
                let name = &self.shared.queues[queue].queue;
                if let Err(e) = self.shared.client.register_queue(name).await {
                    debug!(queue = %name, error = %e, "could not register the queue");
                }
            }
        }
        if self.served.retiring() {
            for queue in self.served.retire(&self.shared) {
                self.deadlines.retired[queue] = true;
                self.blocking[queue] = Blocking::Closed;
            }
        }
        added
    }

    /// Every fetch failed: waits out the backoff. `false` when shutdown began meanwhile.
    async fn back_off(&mut self) -> bool {
        self.failing = true;
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = self.stop.cancelled() => return false,
        }
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        true
    }

    /// Slots are left over: the queues are empty (or on hold). One queue not on hold waits and
    /// fetches in one round trip, keeping the free slots (the fetch is carried into the next
    /// round); otherwise the slots go back and the loop blocks until there is work, and the next
    /// round asks only the queues that woke or are due.
    async fn idle(&mut self, permit: OwnedSemaphorePermit) {
        // A fetch sent ahead lands first: its jobs are not renewed until then, and if it brought
        // any, the slots take them instead of waiting.
        self.land_ahead().await;
        if self.shared.prefetch.len() > 0 {
            return;
        }
        let shared = self.shared.clone();
        let one_queue = self.served.active() == [0];
        if one_queue && self.staged && !self.deadlines.hold[0] && !self.stop.is_cancelled() {
            self.wait_staged(permit).await;
            return;
        }
        if one_queue && !self.deadlines.hold[0] && !self.stop.is_cancelled() {
            let wait_ms = self.single_wait_ms(MAX_BLOCK);
            if wait_ms == 0 {
                return;
            }
            self.open_blocking_conn().await;
            // (A wait still in flight from a spell on hold is taken up below instead.)
            if let Blocking::Free(conn) = &mut self.blocking[0] {
                let want = permit.num_permits();
                let keys = &shared.queues[0];
                let settings = fetch_settings(&shared.config);
                // The fetch behind the wait is already sent: ended early, the wait lets it run,
                // and what it leases goes back below (at shutdown) or is carried as usual (for a
                // new layout). (If Redis cannot be reached, the connection is dropped after a
                // while: a blocked client that goes away never runs its fetch.)
                let result = end_early(
                    lease::wait_then_fetch(conn, keys, want, wait_ms, &settings),
                    &shared,
                    keys,
                    &self.stop,
                    &mut self.changes,
                )
                .await;
                match result {
                    Err(_) => self.blocking[0] = Blocking::Closed,
                    Ok(fetched) if self.stop.is_cancelled() => {
                        // Asked to stop while waiting: what the fetch leased goes back at once.
                        give_back(&shared, 0, fetched);
                        return;
                    }
                    Ok(_) => {}
                }
                self.carried = Some((permit, result));
                return;
            }
        }
        drop(permit);
        let woken = wait_for_work(
            &shared,
            &self.deadlines,
            &mut self.blocking,
            &mut self.changes,
            &self.stop,
        )
        .await;
        self.only = Some(woken);
    }
}

/// How long a single-queue worker that is stopping waits for its idle wait to end once it has
/// pushed a wake marker.
const SHUTDOWN_WAKE: Duration = Duration::from_secs(5);

/// Runs a single-queue worker's idle wait, a blocked command that cannot be abandoned half-way
/// (what follows it on its connection is already sent, or it may have moved a job), to its end.
/// It may last until the queue's deadline, so when the worker stops or a new layout comes, the
/// wake marker ends it early; it is given up after [`SHUTDOWN_WAKE`].
async fn end_early<T>(
    waiting: impl Future<Output = Result<T>>,
    shared: &Shared,
    keys: &QueueKeys,
    stop: &CancellationToken,
    changes: &mut watch::Receiver<Arc<Layouts>>,
) -> Result<T> {
    tokio::pin!(waiting);
    let why = tokio::select! {
        result = &mut waiting => return result,
        _ = stop.cancelled() => "at shutdown",
        _ = layout_changed(changes) => "for a new layout",
    };
    if let Err(e) = lease::wake(&mut shared.client.conn(), keys).await {
        debug!(error = %e, "could not wake the idle wait {why}");
    }
    tokio::time::timeout(SHUTDOWN_WAKE, waiting)
        .await
        .unwrap_or_else(|_| {
            Err(crate::Error::Protocol(format!(
                "the idle wait did not end {why}"
            )))
        })
}

/// A staged group's one job, as a fetch would have brought it.
fn one_job(group: u64, envelope: Vec<u8>) -> Fetched {
    Fetched {
        now_ms: 0,
        wake_at_ms: 0,
        group,
        hold: false,
        paused: false,
        staged: false,
        envelopes: vec![envelope],
    }
}

/// The longest staged wait (design §7.2). A staged group's deadline is this plus a lease away, so
/// that it outlives the wait: were the worker lost in the instant after its wait moved a job into
/// the group, the job would be recovered after at most that long.
const STAGED_WAIT: Duration = Duration::from_secs(60);

impl Fetcher {
    /// How long the single queue's idle wait may block: until its deadline, at most `cap`.
    fn single_wait_ms(&self, cap: Duration) -> i64 {
        let now = Instant::now();
        self.deadlines
            .next(now)
            .saturating_duration_since(now)
            .min(cap)
            .as_millis() as i64
    }

    /// Opens the single queue's blocking connection if it has none.
    async fn open_blocking_conn(&mut self) {
        if matches!(self.blocking[0], Blocking::Closed) {
            match self.shared.client.blocking_conn().await {
                Ok(conn) => self.blocking[0] = Blocking::Free(conn),
                Err(e) => debug!(error = %e, "no blocking connection"),
            }
        }
    }

    /// The idle wait of a worker serving one queue whose last fetch staged a lease group: the next
    /// job pushed is moved into the group by Redis itself and comes back with the wake-up, so it
    /// starts one hop after its push, with no script on the way (`fetch.lua` on a cold Redis was
    /// most of the idle latency). `claim.lua` then makes the group an ordinary one, after the job
    /// has started when its entry can run as it is (the usual case), else before.
    async fn wait_staged(&mut self, mut permit: OwnedSemaphorePermit) {
        let shared = self.shared.clone();
        let keys = &shared.queues[0];
        let group = self.stage_group;
        // Never staged again: a wait that failed may have moved a job into it all the same.
        self.stage_group = lease::new_group();
        self.staged = false;
        let wait_ms = self.single_wait_ms(STAGED_WAIT);
        if wait_ms == 0 {
            return;
        }
        self.open_blocking_conn().await;
        let Blocking::Free(conn) = &mut self.blocking[0] else {
            return;
        };
        // Ended early, the wait takes the marker, or a job pushed in the same instant, which
        // goes back below.
        let result = end_early(
            lease::wait_staged(conn, keys, group, wait_ms),
            &shared,
            keys,
            &self.stop,
            &mut self.changes,
        )
        .await;
        let entry = match result {
            Ok(entry) => entry,
            Err(e) => {
                // Whatever the wait moved is recovered when the group's deadline passes.
                debug!(error = %e, "the staged wait failed");
                self.blocking[0] = Blocking::Closed;
                return;
            }
        };
        let lease_ms = shared.config.lease.as_millis() as u64;
        let runs_as_is = entry
            .as_deref()
            .is_some_and(|e| Envelope::decode(e).is_ok_and(|env| env.encode() == e));
        let job = match entry {
            Some(entry) if runs_as_is && !self.stop.is_cancelled() => {
                // Claimed in the background: the job starts now. Its outcome may reach Redis
                // first, which the scripts allow for (claim.lua).
                let (claimer, keys) = (shared.clone(), keys.clone());
                tokio::spawn(async move {
                    let mut conn = claimer.client.conn();
                    if let Err(e) = lease::claim(&mut conn, &keys, group, lease_ms).await {
                        debug!(error = %e, "could not claim the staged group");
                    }
                });
                entry
            }
            // The wake marker, nothing (timed out), an entry fetch.lua would rewrite, or a job
            // that came as the worker stops: claimed first, and started (or given back) as the
            // claim returns it.
            _ => match lease::claim(&mut shared.client.conn(), keys, group, lease_ms).await {
                Ok(Some(entry)) => entry,
                Ok(None) => return,
                Err(e) => {
                    debug!(error = %e, "could not claim the staged group");
                    return;
                }
            },
        };
        let fetched = one_job(group, job);
        if self.stop.is_cancelled() {
            give_back(&shared, 0, fetched);
            return;
        }
        let mut one = permit.split(1);
        let mut room = 0;
        start_fetched(&shared, 0, fetched, &mut one, &mut room);
    }
}

/// Completes when the layout watcher has a layout the fetch loop has not seen (never once the
/// watcher has stopped).
async fn layout_changed(changes: &mut watch::Receiver<Arc<Layouts>>) {
    if changes.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps until `at`, or for ever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Holds a fetched group (renewed from now on, before any of its jobs starts, whatever the keeper
/// is doing), starts each of its jobs on one slot of `slots`, and parks the rest (up to `room`).
fn start_fetched(
    shared: &Arc<Shared>,
    queue: usize,
    fetched: Fetched,
    slots: &mut Option<OwnedSemaphorePermit>,
    room: &mut usize,
) {
    hold_group(shared, queue, fetched.group, fetched.envelopes.len());
    let now = Instant::now();
    let mut parked = Vec::new();
    for (index, envelope) in fetched.envelopes.into_iter().enumerate() {
        let job = Leased {
            queue,
            group: fetched.group,
            index: index as u32,
            envelope,
            parked: now,
        };
        match slots.as_mut().and_then(|p| p.split(1)) {
            Some(one) => start_job(shared, job, one),
            None if *room > 0 => {
                *room -= 1;
                parked.push(job);
            }
            // More jobs than asked for (never, by fetch.lua's contract): each needs an outcome
            // all the same, or its group is renewed forever.
            None => {
                let _ = shared.events.send(parked_back(&job));
            }
        }
    }
    // (Shutdown began meanwhile: what could not be parked goes back.)
    for job in shared.prefetch.park(parked) {
        let _ = shared.events.send(parked_back(&job));
    }
}

/// Starts parked jobs on the slots free now (after a fetch sent ahead landed). A slot that ends
/// its job takes the next parked one itself; this covers the slots that had found none.
fn start_on_free_slots(shared: &Arc<Shared>) {
    while let Ok(permit) = shared.semaphore.clone().try_acquire_owned() {
        match shared.prefetch.next() {
            Some(job) => start_job(shared, job, permit),
            None => break,
        }
    }
}

/// Starts parked jobs on the free slots of `slots`, in the order they were parked; how many.
fn start_parked_on(shared: &Arc<Shared>, slots: &mut Option<OwnedSemaphorePermit>) -> usize {
    let mut started = 0;
    while let Some(permit) = slots.as_mut().filter(|p| p.num_permits() > 0) {
        let Some(job) = shared.prefetch.next() else {
            break;
        };
        match permit.split(1) {
            Some(one) => start_job(shared, job, one),
            None => break,
        }
        started += 1;
    }
    started
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

/// Shutdown: closes the buffer of parked jobs (no slot takes one from now on) and gives them back
/// to their queues through the lease keeper, without counting an attempt.
pub(super) fn give_back_parked(shared: &Shared) {
    for job in shared.prefetch.close() {
        let _ = shared.events.send(parked_back(&job));
    }
}

/// The outcome that gives a parked (never started) job back to its queue.
fn parked_back(job: &Leased) -> Outcome {
    given_back(job.queue, job.group, job.index, &job.envelope)
}

/// The outcome that sends a leased job back to its queue without counting an attempt.
pub(super) fn given_back(queue: usize, group: u64, index: u32, bytes: &[u8]) -> Outcome {
    let envelope = Envelope::decode(bytes).unwrap_or_default();
    let tracked = envelope.tracked();
    Outcome {
        queue,
        group,
        index,
        settled: Settled::new(
            envelope.id,
            tracked,
            envelope.unique,
            OutcomeKind::GivenBack,
        ),
    }
}

/// A queue's blocking connection: not opened yet (or broken), free, or carrying a wait that has
/// not returned yet. A wait is never abandoned: when another queue's wait or the deadline ends
/// the idle spell first, the wait stays in flight on its connection and is taken up again by
/// the next idle spell (or returns the connection when it ends), so an idle worker serving many
/// queues opens no new connection.
#[derive(Default)]
pub(super) enum Blocking {
    #[default]
    Closed,
    Free(Conn),
    /// The wait resolves to its connection and whether the list has an entry.
    Waiting(
        Pin<Box<dyn Future<Output = (Conn, Result<bool>)> + Send>>,
        Watch,
    ),
}

/// Which list of a queue a wait watches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Watch {
    /// `pending`: a push or a wake marker ends the wait.
    Pending,
    /// `resumed`, while the queue is paused: a resume ends the wait.
    Resumed,
}

/// Starts the wait on `queue` on its connection, which the wait owns until it returns.
fn start_wait(
    shared: &Shared,
    queue: usize,
    mut conn: Conn,
    wait_ms: i64,
    watch: Watch,
) -> Blocking {
    let keys = &shared.queues[queue];
    let list = match watch {
        Watch::Pending => keys.pending.clone(),
        Watch::Resumed => queues::resumed_key(keys),
    };
    Blocking::Waiting(
        Box::pin(async move {
            let result = lease::wait_for_entry(&mut conn, &list, wait_ms).await;
            (conn, result)
        }),
        watch,
    )
}

/// Blocks until a watched queue's list gets an entry (a push or a wake marker), a queue's
/// deadline passes, or a wait fails; returns the queues to fetch (those, and any other whose wait
/// has ended or whose deadline has passed meanwhile). `BLMOVE list list RIGHT RIGHT` pops and
/// pushes the same end of the same list: it waits for an entry without taking it. Queues on
/// hold (paused, rate-limited) are not watched: their lists may be full. A wait still in flight
/// from an earlier spell counts as watching its queue. A new layout ends the spell too (its
/// queues are asked at the next round).
async fn wait_for_work(
    shared: &Shared,
    deadlines: &Deadlines,
    blocking: &mut [Blocking],
    changes: &mut watch::Receiver<Arc<Layouts>>,
    stop: &CancellationToken,
) -> Vec<bool> {
    let n = blocking.len();
    let mut woken = vec![false; n];
    loop {
        let now = Instant::now();
        let due = deadlines.due_at(now);
        if due.iter().any(|&d| d) || woken.iter().any(|&w| w) {
            // Waits that ended meanwhile count too: they need no spell of their own.
            collect_ended(blocking, &mut woken);
            return due.iter().zip(&woken).map(|(d, w)| *d || *w).collect();
        }
        let deadline = deadlines.next(now);
        for queue in 0..n {
            let Some(watch) = deadlines.watch(queue) else {
                continue; // out of rate-limit tokens: fetched again at its next token
            };
            let until = deadlines.due[queue].unwrap_or(now);
            // A wait ends at its queue's deadline (a timed job due, a lease to recover) or after
            // MAX_BLOCK, when it is simply sent again.
            let left = until
                .saturating_duration_since(now)
                .min(MAX_BLOCK)
                .as_millis() as i64;
            blocking[queue] = match std::mem::take(&mut blocking[queue]) {
                Blocking::Waiting(wait, on) if on == watch => Blocking::Waiting(wait, on),
                // The queue was paused or resumed while its wait was in flight on the other
                // list: the wait is dropped with its connection (it takes nothing, so nothing
                // is lost) and a new one watches the right list. One connection per pause or
                // resume, not per idle spell.
                Blocking::Waiting(..) | Blocking::Closed => {
                    match shared.client.blocking_conn().await {
                        Ok(conn) => start_wait(shared, queue, conn, left.max(1), watch),
                        Err(e) => {
                            // Fetch it instead (a fetch that fails too backs the loop off).
                            debug!(error = %e, "no blocking connection; fetching instead");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                                _ = stop.cancelled() => {}
                            }
                            woken[queue] = true;
                            Blocking::Closed
                        }
                    }
                }
                Blocking::Free(conn) => start_wait(shared, queue, conn, left.max(1), watch),
            };
        }
        if woken.iter().any(|&w| w) {
            continue;
        }
        let in_flight: Vec<_> = blocking
            .iter_mut()
            .enumerate()
            .filter_map(|(queue, b)| match b {
                Blocking::Waiting(wait, _) => {
                    Some(Box::pin(async move { (queue, wait.as_mut().await) }))
                }
                _ => None,
            })
            .collect();
        let ended = if in_flight.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => None,
                _ = stop.cancelled() => return woken,
                _ = layout_changed(changes) => return woken,
            }
        } else {
            tokio::select! {
                ((queue, ended), _, _) = futures::future::select_all(in_flight) => Some((queue, ended)),
                _ = tokio::time::sleep_until(deadline.into()) => None,
                _ = stop.cancelled() => return woken,
                _ = layout_changed(changes) => return woken,
            }
        };
        if let Some((queue, ended)) = ended {
            ended_wait(blocking, &mut woken, queue, ended);
        }
        if woken.iter().any(|&w| w) {
            // A dropped connection is not retried in a tight loop (a Redis restart ends every
            // wait at once; the fetch that follows backs off if Redis is still away).
            if blocking.iter().any(|b| matches!(b, Blocking::Closed)) {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
}

/// Records a wait that returned: an entry on the list, or a failed wait (the connection died,
/// Redis restarted: whatever was pushed meanwhile is found by a fetch), wakes its queue. A wait
/// that timed out before its queue's deadline (MAX_BLOCK) is sent again by the caller.
fn ended_wait(
    blocking: &mut [Blocking],
    woken: &mut [bool],
    queue: usize,
    (conn, result): (Conn, Result<bool>),
) {
    match result {
        Ok(entry) => {
            blocking[queue] = Blocking::Free(conn);
            woken[queue] |= entry;
        }
        Err(e) => {
            debug!(error = %e, "idle wait failed; fetching");
            blocking[queue] = Blocking::Closed;
            woken[queue] = true;
        }
    }
}

/// Takes every wait that has already returned, without waiting for the others.
fn collect_ended(blocking: &mut [Blocking], woken: &mut [bool]) {
    for queue in 0..blocking.len() {
        let ended = match &mut blocking[queue] {
            Blocking::Waiting(wait, _) => wait.as_mut().now_or_never(),
            _ => None,
        };
        if let Some(ended) = ended {
            ended_wait(blocking, woken, queue, ended);
        }
    }
}
