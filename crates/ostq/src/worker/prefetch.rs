//! Jobs leased ahead of free slots (docs/design.md §7.1). The fetch loop leases up to
//! `prefetch` jobs more than it has free slots and parks the extra ones here; a slot whose job
//! ended takes the next one from here and runs it at once, without a fetch in between, while the
//! fetch loop tops the buffer up in the background. The leases of parked jobs are held and
//! renewed like those of running jobs (their groups are in the table), given back at shutdown,
//! given back when they waited longer than [`MAX_WAIT`], and dropped when their group is lost.
//! When a parked job starts, its group's start mark moves past it; the renewer sends the marks
//! to Redis, whose recovery counts an attempt only for jobs that started (design §16).
//!
//! Bounded by count (`prefetch`, and no more than the jobs that started in the last
//! [`RATE_WINDOW`], so slow jobs are not hoarded) and by time ([`MAX_WAIT`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::keeper::GroupMap;

/// A parked job waits at most this long for a slot; then it is given back to its queue.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(1);
/// The buffer holds no more jobs than started in such a window (the recent start rate).
pub(super) const RATE_WINDOW: Duration = Duration::from_millis(100);

/// A leased job, with where it came from.
pub(super) struct Leased {
    pub(super) queue: usize,
    pub(super) group: u64,
    pub(super) index: u32,
    pub(super) envelope: Vec<u8>,
    /// When it was parked (for [`MAX_WAIT`]).
    pub(super) parked: Instant,
}

#[derive(Default)]
struct Parked {
    jobs: VecDeque<Leased>,
    /// Shutdown began: nothing more is handed out.
    closed: bool,
    /// Start marks not yet sent: per (queue, group), how many of its entries have started. A
    /// group's parked jobs start in lease order, so one number per group says which ones ran.
    marks: GroupMap<(usize, u64), u32>,
}

/// The buffer of parked jobs, shared by the fetch loop (which fills it) and the job tasks (which
/// empty it). Locked for a push or a pop only.
#[derive(Default)]
pub(super) struct Prefetch {
    parked: Mutex<Parked>,
    /// Signalled when a pop leaves the buffer at or below `low_water`: time to top it up.
    pub(super) low: Notify,
    low_water: AtomicUsize,
    /// Jobs started so far (parked or not), for the start rate.
    pub(super) started: AtomicU64,
    /// Signalled when a parked job starts and no start mark was waiting to be sent: the renewer
    /// sends the marks shortly after (`renewer.rs`).
    pub(super) marked: Notify,
}

impl Prefetch {
    fn lock(&self) -> MutexGuard<'_, Parked> {
        // Each section is one push, pop or drain: a panic cannot leave it half-done.
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Jobs parked now.
    pub(super) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub(super) fn set_low_water(&self, n: usize) {
        self.low_water.store(n, Ordering::Relaxed);
    }

    /// Parks jobs in lease order. Once shutdown closed the buffer, it parks nothing and hands the
    /// jobs back (to be given back to their queues).
    pub(super) fn park(&self, jobs: Vec<Leased>) -> Vec<Leased> {
        let mut parked = self.lock();
        if parked.closed {
            return jobs;
        }
        parked.jobs.extend(jobs);
        Vec::new()
    }

    /// The next parked job for a free slot; `None` when there is none or shutdown began. The job
    /// counts as started from here: its group's start mark moves past it.
    pub(super) fn next(&self) -> Option<Leased> {
        let (job, left, first_mark) = {
            let mut parked = self.lock();
            if parked.closed {
                return None;
            }
            let job = parked.jobs.pop_front()?;
            let first_mark = parked.marks.is_empty();
            let mark = parked.marks.entry((job.queue, job.group)).or_default();
            *mark = (*mark).max(job.index.saturating_add(1));
            (job, parked.jobs.len(), first_mark)
        };
        if first_mark {
            self.marked.notify_one();
        }
        if left <= self.low_water.load(Ordering::Relaxed) {
            self.low.notify_one();
        }
        Some(job)
    }

    /// The start marks to send, which are forgotten here.
    pub(super) fn take_marks(&self) -> GroupMap<(usize, u64), u32> {
        std::mem::take(&mut self.lock().marks)
    }

    /// Start marks a failed call did not send: kept for the next one (unless newer ones came).
    pub(super) fn restore_marks(&self, queue: usize, marks: &[(u64, Option<u32>)]) {
        let mut parked = self.lock();
        for &(group, mark) in marks {
            if let Some(mark) = mark {
                let kept = parked.marks.entry((queue, group)).or_default();
                *kept = (*kept).max(mark);
            }
        }
    }

    /// Shutdown: hands out nothing more, and returns what was parked (to be given back).
    pub(super) fn close(&self) -> Vec<Leased> {
        let mut parked = self.lock();
        parked.closed = true;
        parked.jobs.drain(..).collect()
    }

    /// The parked jobs that waited longer than [`MAX_WAIT`] (to be given back).
    pub(super) fn take_expired(&self, now: Instant) -> Vec<Leased> {
        let mut parked = self.lock();
        let n = parked
            .jobs
            .iter()
            .take_while(|j| now.duration_since(j.parked) >= MAX_WAIT)
            .count();
        parked.jobs.drain(..n).collect()
    }

    /// When the oldest parked job reaches [`MAX_WAIT`].
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.lock().jobs.front().map(|j| j.parked + MAX_WAIT)
    }

    /// Forgets the parked jobs of groups whose lease was lost: they are recovered elsewhere, and
    /// their outcomes would be ignored as stale.
    pub(super) fn drop_groups(&self, queue: usize, lost: &[u64]) {
        self.lock()
            .jobs
            .retain(|j| j.queue != queue || !lost.contains(&j.group));
    }
}

/// The start rate over the last [`RATE_WINDOW`]: how many jobs the buffer may hold.
pub(super) struct StartRate {
    window_start: Instant,
    base: u64,
    previous: u64,
}

impl StartRate {
    pub(super) fn new() -> Self {
        Self {
            window_start: Instant::now(),
            base: 0,
            previous: 0,
        }
    }

    /// Jobs started in the last full window or in the current one, whichever is more.
    pub(super) fn recent(&mut self, started: u64, now: Instant) -> u64 {
        let elapsed = now.duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            // A window with no fetch in it (idle) counts as empty.
            self.previous = if elapsed >= 2 * RATE_WINDOW {
                0
            } else {
                started - self.base
            };
            self.base = started;
            self.window_start = now;
        }
        self.previous.max(started - self.base)
    }
}
