//! One job by id within a stated budget ([`Queue::find_job`]).
//!
//! Every state but pending finds a job in O(1) or O(active jobs): scheduled, retry and dead jobs
//! by their sorted set and the jobs hash, completed ones by their status record. A pending job
//! sits in a list that keeps no index of its ids (an index would cost memory per waiting job),
//! so finding it means scanning the list. Two things keep that cheap:
//!
//! - **A hint.** A listing ([`Queue::page`]) tells where each pending job was
//!   ([`Page::list_index`](crate::admin::Page::list_index)). Entries of the list only move
//!   towards the end that runs next while they wait, so the scan starts a little above the
//!   hinted index and goes down: a job that is still there is met within as many entries as
//!   were consumed since it was listed.
//! - **A budget.** Without a hint, the list is scanned from its newest end. Either scan stops
//!   after [`JobLookup::budget`] entries and says so ([`Found::StoppedEarly`]) with the lookup
//!   that goes on from there, so one call stays bounded at any queue size.

use serde::{Deserialize, Serialize};

use super::jobs::{envelope_id, find_active, info_from_bytes, record_info};
use crate::job::{JobInfo, JobState};
use crate::keys::QueueKeys;
use crate::producer::Queue;
use crate::shards::ShardLayout;
use crate::store::queues::{self as stored, SCAN_CHUNK};
use crate::store::Conn;
use crate::Result;

/// Entries of the pending list one [`Queue::find_job`] call scans by default: about a tenth of
/// a second of reading, so a dashboard page stays well under 300 ms at any queue size.
///
/// ```
/// assert_eq!(ostq::admin::lookup::DEFAULT_FIND_BUDGET, 200_000);
/// ```
pub const DEFAULT_FIND_BUDGET: u64 = 200_000;

/// How far above its hinted index a pending job is still looked for: jobs put back at the end
/// that runs next (a worker giving back its leases at shutdown, recovered leases, due retries)
/// push the waiting ones up by one each.
const HINT_SLACK: u64 = 4_096;
/// Entries read per round trip by a hinted scan: the first one covers the slack and the hint.
const HINT_CHUNK: u64 = 5_000;

/// Where and how far [`Queue::find_job`] looks for a pending job.
///
/// ```
/// use ostq::admin::lookup::JobLookup;
/// let lookup = JobLookup::new().near(Some(123_456)).budget(50_000);
/// assert_eq!(lookup.near, Some(123_456));
/// assert_eq!(JobLookup::whole().budget, u64::MAX);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobLookup {
    /// The job's index in the pending list when it was listed (0 = the next to run), from
    /// [`Page::list_index`](crate::admin::Page::list_index); `None` without one.
    pub near: Option<u64>,
    /// A hinted look that an earlier call stopped: goes on down the list from this index.
    pub below: Option<u64>,
    /// Without a hint: entries at the newest end already looked through by an earlier call.
    pub from_newest: u64,
    /// Most entries of the pending list this call reads.
    pub budget: u64,
}

impl Default for JobLookup {
    fn default() -> Self {
        Self::new()
    }
}

impl JobLookup {
    /// No hint, [`DEFAULT_FIND_BUDGET`].
    ///
    /// ```
    /// assert_eq!(ostq::admin::lookup::JobLookup::new().near, None);
    /// ```
    pub fn new() -> Self {
        Self {
            near: None,
            below: None,
            from_newest: 0,
            budget: DEFAULT_FIND_BUDGET,
        }
    }

    /// No hint and no budget: the whole pending list if need be (O(pending)).
    ///
    /// ```
    /// assert_eq!(ostq::admin::lookup::JobLookup::whole().near, None);
    /// ```
    pub fn whole() -> Self {
        Self {
            budget: u64::MAX,
            ..Self::new()
        }
    }

    /// Starts at the index a listing gave (see [`JobLookup::near`](field@JobLookup::near)).
    ///
    /// ```
    /// let lookup = ostq::admin::lookup::JobLookup::new().near(Some(7));
    /// assert_eq!(lookup.near, Some(7));
    /// ```
    pub fn near(mut self, index: Option<u64>) -> Self {
        self.near = index;
        self
    }

    /// Goes on with a hinted look that stopped (see [`JobLookup::below`](field@JobLookup::below)).
    ///
    /// ```
    /// assert_eq!(ostq::admin::lookup::JobLookup::new().below(Some(5)).below, Some(5));
    /// ```
    pub fn below(mut self, index: Option<u64>) -> Self {
        self.below = index;
        self
    }

    /// Skips the entries at the newest end that an earlier call looked through.
    ///
    /// ```
    /// assert_eq!(ostq::admin::lookup::JobLookup::new().from_newest(10).from_newest, 10);
    /// ```
    pub fn from_newest(mut self, entries: u64) -> Self {
        self.from_newest = entries;
        self
    }

    /// Reads at most `entries` of the pending list (at least one chunk).
    ///
    /// ```
    /// assert_eq!(ostq::admin::lookup::JobLookup::new().budget(9).budget, 9);
    /// ```
    pub fn budget(mut self, entries: u64) -> Self {
        self.budget = entries;
        self
    }
}

/// What [`Queue::find_job`] found. Exhaustive on purpose: a caller handles each case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The job, in whatever state it is.
    Job {
        /// What is known of it.
        job: Box<JobInfo>,
        /// Where it is in the pending list (0 = the next to run), for a job found there: a hint
        /// for the next lookup ([`JobLookup::near`]).
        list_index: Option<u64>,
    },
    /// No such job: it finished untracked, was deleted, its record expired, or never was.
    NotFound,
    /// Not in any other state, and not in the part of the pending list read within the budget.
    StoppedEarly {
        /// Entries of the pending list read by this call.
        scanned: u64,
        /// Entries in the pending list now.
        pending: u64,
        /// The lookup that goes on where this one stopped.
        next: JobLookup,
    },
}

impl Queue {
    /// One job by id, like [`Queue::job`], but a pending job is looked for within
    /// `lookup.budget` entries of the pending list, from `lookup.near` when a listing gave it
    /// (see the [module docs](crate::admin::lookup)). Every other state is found without a scan.
    ///
    /// On a sharded queue (design §19) the job is looked for in the shard its id names, with
    /// `lookup` (so O(1) for every state but pending, as unsharded); only if that shard does
    /// not have it are the others asked, each within `lookup.budget` of its pending list (a
    /// pending job outside its id's shard and beyond that budget is then reported not found:
    /// [`JobLookup::whole`] finds it).
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// use ostq::admin::lookup::{Found, JobLookup};
    /// let queue = client.queue("videos");
    /// let mut lookup = JobLookup::new();
    /// loop {
    ///     match queue.find_job("01HZX", lookup).await? {
    ///         Found::Job { job, .. } => break println!("{}", job.state),
    ///         Found::NotFound => break println!("no such job"),
    ///         Found::StoppedEarly { scanned, pending, next } => {
    ///             println!("not among {scanned} of {pending} pending jobs; looking further");
    ///             lookup = next;
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn find_job(&self, id: &str, lookup: JobLookup) -> Result<Found> {
        let (layout, shards) = self.shard_set().await?;
        if shards.len() == 1 {
            return self.find_here(id, lookup).await;
        }
        // A sharded queue (design §19): the shard the id names holds it (a generated id carries
        // its shard), so it is asked first with the caller's lookup, and a listing's hint is an
        // index in that shard's list. Only when it does not have the job (a given id pushed with
        // an ordering or unique key, a job of a former layout) are the others asked, each with a
        // fresh lookup of the same budget.
        let mut order = shard_order(&layout, shards.len(), id);
        let first = order.next().and_then(|i| shards.get(i));
        let Some(first) = first else {
            return Ok(Found::NotFound);
        };
        match first.find_here(id, lookup).await? {
            Found::Job {
                mut job,
                list_index,
            } => {
                job.queue = self.name().to_string();
                return Ok(Found::Job { job, list_index });
            }
            // Going on (`next`) goes on in this shard, where the job should be.
            stopped @ Found::StoppedEarly { .. } => return Ok(stopped),
            Found::NotFound => {}
        }
        for shard in order.filter_map(|i| shards.get(i)) {
            let fresh = JobLookup::new().budget(lookup.budget);
            if let Found::Job {
                mut job,
                list_index,
            } = shard.find_here(id, fresh).await?
            {
                job.queue = self.name().to_string();
                return Ok(Found::Job { job, list_index });
            }
        }
        Ok(Found::NotFound)
    }

    /// [`Queue::find_job`] in this physical queue alone.
    async fn find_here(&self, id: &str, lookup: JobLookup) -> Result<Found> {
        let keys = self.keys()?;
        let mut conn = self.client_ref().conn();
        let conn = &mut conn;
        let mut found = kept_by_id(conn, keys, id).await?;
        if found.is_none() {
            found = find_active(conn, keys, id).await?;
        }
        let mut list_index = None;
        if found.is_none() {
            match find_pending_within(conn, keys, id, lookup).await? {
                Scan::Found { bytes, from_right } => {
                    found = Some(info_from_bytes(&keys.queue, JobState::Pending, &bytes));
                    list_index = from_right;
                }
                Scan::Missing => {}
                Scan::Stopped { scanned, next } => {
                    // A tracked job's record still tells its state and figures.
                    if let Some(info) = record_info(conn, keys, id, None).await? {
                        if info.state != JobState::Pending {
                            let job = Box::new(info);
                            return Ok(Found::Job {
                                job,
                                list_index: None,
                            });
                        }
                    }
                    let pending = stored::pending_len(conn, keys).await?;
                    return Ok(Found::StoppedEarly {
                        scanned,
                        pending,
                        next,
                    });
                }
            }
        }
        Ok(match record_info(conn, keys, id, found).await? {
            Some(info) => Found::Job {
                job: Box::new(info),
                list_index,
            },
            None => Found::NotFound,
        })
    }
}

/// The shards of a sharded queue in the order job `id` is looked for: the one the id names
/// ([`ShardLayout::shard_of_id`]), then the others, draining ones included (`physical` of them).
pub(super) fn shard_order(
    layout: &ShardLayout,
    physical: usize,
    id: &str,
) -> impl Iterator<Item = usize> {
    let first = layout.shard_of_id(id);
    std::iter::once(first).chain((0..physical).filter(move |&i| i != first))
}

/// A job kept in the jobs hash (scheduled, retry, dead), with its due or died-at time.
async fn kept_by_id(conn: &mut Conn, keys: &QueueKeys, id: &str) -> Result<Option<JobInfo>> {
    let envelope = stored::envelopes_by_id(conn, keys, &[id]).await?;
    let Some(bytes) = envelope.into_iter().next().flatten() else {
        return Ok(None);
    };
    let scores = stored::timed_scores(conn, keys, id).await?;
    let (state, due) = match scores {
        (Some(t), _, _) => (JobState::Scheduled, Some(t)),
        (_, Some(t), _) => (JobState::Retry, Some(t)),
        (_, _, Some(t)) => (JobState::Dead, Some(t)),
        _ => (JobState::Pending, None), // being promoted right now
    };
    let mut info = info_from_bytes(&keys.queue, state, &bytes);
    if state == JobState::Dead {
        info.finished_at_ms = due;
    } else {
        info.due_at_ms = due;
    }
    Ok(Some(info))
}

/// The outcome of a budgeted scan of the pending state.
pub(super) enum Scan {
    /// The job's envelope, and its index from the right end of the list when it is there.
    Found {
        bytes: Vec<u8>,
        from_right: Option<u64>,
    },
    Missing,
    Stopped {
        scanned: u64,
        next: JobLookup,
    },
}

/// Looks for a pending job's envelope: by its hint, or in the prioritized set and then the list
/// from its newest end; at most `lookup.budget` list entries.
pub(super) async fn find_pending_within(
    conn: &mut Conn,
    keys: &QueueKeys,
    id: &str,
    lookup: JobLookup,
) -> Result<Scan> {
    let is_it = |bytes: &[u8]| envelope_id(bytes) == Some(id.as_bytes());
    let budget = lookup.budget.max(SCAN_CHUNK as u64);
    let mut scanned = 0;
    let top = match (lookup.near, lookup.below) {
        (_, Some(below)) => Some(below),
        (Some(near), None) => Some(near.saturating_add(HINT_SLACK)),
        (None, None) => None,
    };
    if let Some(mut top) = top {
        // Downwards from just above the hint: entries only move down while they wait.
        loop {
            let take = HINT_CHUNK.min(top + 1);
            let start = top + 1 - take;
            let window = stored::pending_window(conn, keys, start, take).await?;
            // `window` is in run order: index 0 is `start`; search from the top down.
            if let Some(at) = window.iter().rposition(|b| is_it(b)) {
                let from_right = Some(start + at as u64);
                let bytes = window.into_iter().nth(at).unwrap_or_default();
                return Ok(Scan::Found { bytes, from_right });
            }
            scanned += take;
            if start == 0 {
                return Ok(Scan::Missing);
            }
            if scanned >= budget {
                let next = JobLookup {
                    near: None,
                    below: Some(start - 1),
                    ..lookup
                };
                return Ok(Scan::Stopped { scanned, next });
            }
            top = start - 1;
        }
    }
    if lookup.from_newest == 0 {
        // Prioritized jobs: a sorted set, usually small, read whole on the first call.
        let mut start = 0;
        loop {
            let entries =
                stored::pending_chunk(conn, &keys.prioritized, false, start, SCAN_CHUNK).await?;
            if entries.is_empty() {
                break;
            }
            start += entries.len();
            if let Some(bytes) = entries.into_iter().find(|b| is_it(b)) {
                let from_right = None; // prioritized: not in the list
                return Ok(Scan::Found { bytes, from_right });
            }
        }
    }
    // From the newest end: pushes only move entries away from it, so going on from an offset
    // later may read some entries twice but skips none that stayed.
    let mut start = lookup.from_newest;
    loop {
        let at = usize::try_from(start).unwrap_or(usize::MAX);
        let entries = stored::pending_chunk(conn, &keys.pending, true, at, SCAN_CHUNK).await?;
        if entries.is_empty() {
            return Ok(Scan::Missing);
        }
        let read = entries.len() as u64;
        if let Some(at) = entries.iter().position(|b| is_it(b)) {
            // Its index from the other end, as listings give it (one more round trip, only
            // here: a lookup that found its job by scanning).
            let len = stored::pending_len(conn, keys).await?;
            let from_left = start + at as u64;
            let from_right = len.checked_sub(from_left + 1);
            let bytes = entries.into_iter().nth(at).unwrap_or_default();
            return Ok(Scan::Found { bytes, from_right });
        }
        start += read;
        scanned += read;
        if scanned >= budget {
            let next = JobLookup {
                from_newest: start,
                ..lookup
            };
            return Ok(Scan::Stopped { scanned, next });
        }
    }
}
