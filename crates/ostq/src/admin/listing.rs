//! Listings with cursors ([`Queue::page`]) that neither skip nor repeat jobs while workers and
//! producers change the queue.
//!
//! **Sorted sets** (scheduled, retry, dead, completed, and prioritized pending jobs) are ordered
//! by (score, member), Redis's own order. A cursor holds the last entry seen; the next page is
//! what follows it in that order *now*: the entries before it may come and go without moving it.
//! The entry is found again by its rank (entries of lower score are counted, `ZCOUNT`, and its
//! index among equal scores is a hint), and the page is read in the same `ZRANGE` reply as an
//! entry at or before the cursor, so the page starts exactly after it even if it is gone.
//!
//! **The pending list** is consumed at its right end and pushed at its left, so entries only move
//! right (towards the next to run). A cursor holds the last entry's job id and its index from the
//! right end. The next page starts just left of that entry, found again by scanning from the
//! hinted index towards the right end (a few hundred entries per round trip, at most
//! [`LIST_SCAN_CAP`] per call; a call that reaches the cap returns what it has with a cursor that
//! goes on scanning). If the entry was consumed meanwhile, everything to its right was consumed
//! too, so the page starts at the right end. The caveat: jobs put back at the right end (a
//! worker's shutdown giving back leased jobs, recovery of expired leases, due retries) go behind
//! the cursor, and if the cursor's own entry was consumed they may come round again, so a job
//! that left the pending state and came back can be listed twice. A job that stays pending the
//! whole time is listed exactly once. (Bare entries, payloads pushed without an envelope, are
//! recognised by their bytes: when the cursor's entry is consumed, an unseen twin with the same
//! bytes can be taken for it.)
//!
//! **Active jobs** are listed by lease group id, then index within the group: both stay fixed
//! while the job is held.
//!
//! **Sharded queues** (design §19): the sorted sets are merged by (score, member) over the
//! shards, the cursor holding one mark per shard (each read as above, `limit` entries at most);
//! pending and active jobs are listed shard by shard, the cursor naming the shard and holding
//! that shard's own cursor. Everything above holds within each shard.

use serde::{Deserialize, Serialize};

use super::cursor::{Cursor, EntryKey, ListMark, Mark, Position, ShardMark};
use super::jobs::{active_info, completed_infos, envelope_id, info_from_bytes, infos_by_id};
use crate::job::{JobInfo, JobState};
use crate::keys::QueueKeys;
use crate::producer::Queue;
use crate::store::queues::{self as stored, SCAN_CHUNK, WAKE};
use crate::store::Conn;
use crate::{Error, Result};

/// Most jobs one page holds; a larger `limit` is lowered to it (and 0 raised to 1).
///
/// ```
/// assert_eq!(ostq::admin::listing::MAX_PAGE, 10_000);
/// ```
pub const MAX_PAGE: usize = 10_000;
/// Entries of the pending list scanned at most in one call while finding a cursor's place: a
/// call that reaches it returns a page (perhaps empty) whose cursor goes on scanning.
///
/// ```
/// assert!(ostq::admin::listing::LIST_SCAN_CAP >= ostq::admin::listing::MAX_PAGE as u64);
/// ```
pub const LIST_SCAN_CAP: u64 = 10_000;
/// How far left (jobs put back at the right end) a cursor's list entry is still looked for.
const LIST_SLACK: u64 = 16;
/// Attempts at finding a sorted-set cursor's place in a set that keeps changing under it.
const ZSET_ATTEMPTS: usize = 12;
/// Most entries read before a sorted-set cursor's hinted place in one attempt.
const ZSET_MAX_BACK: u64 = 4096;
/// Lease groups read per round trip when listing active jobs.
const GROUP_BATCH: usize = 16;

/// One page of a listing: the jobs, and the cursor of the next page (`None` at the end).
///
/// JSON: `{"jobs": [<job>, …], "next": "<cursor>" | null}` (jobs as [`JobInfo`] serializes).
///
/// ```no_run
/// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
/// use ostq::JobState;
/// let queue = client.queue("videos");
/// let mut cursor = None;
/// loop {
///     let page = queue.page(JobState::Dead, cursor.as_ref(), 100).await?;
///     for job in &page.jobs {
///         println!("{} {:?}", job.id, job.last_error);
///     }
///     match page.next {
///         Some(next) => cursor = Some(next),
///         None => break,
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Page {
    /// The jobs, in the state's order. A page may hold fewer than asked (even none) and still
    /// have a next one.
    pub jobs: Vec<JobInfo>,
    /// Where the next page starts; `None` when this one reached the end.
    pub next: Option<Cursor>,
    /// For a page of pending jobs, one entry per job: its index in the pending list when read
    /// (0 = the next to run), `None` for a prioritized job. Passed to
    /// [`JobLookup::near`](crate::admin::lookup::JobLookup::near), it finds the job again
    /// without scanning the list. Empty for other states (and left out of the JSON then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub list_index: Vec<Option<u64>>,
}

impl Queue {
    /// A page of the jobs in `state`, after `cursor` (from the start for `None`), at most `limit`
    /// (1..=[`MAX_PAGE`]). Paging with the returned cursors lists every job that stays in the
    /// state the whole time exactly once, while workers and producers change the queue (see the
    /// [module docs](crate::admin::listing) for the one caveat of the pending list).
    ///
    /// Orders: pending jobs in run order (positive priorities, the list from the next to run,
    /// negative priorities), active ones by lease, scheduled and retry by due time, dead and
    /// completed newest first. On a sharded queue the scheduled, retry, dead and completed jobs
    /// are in that order over every shard, pending and active ones shard by shard. A cursor
    /// belongs to its state: passing it for another one is an [`Error::Config`].
    ///
    /// ```no_run
    /// # async fn demo(client: ostq::Client) -> ostq::Result<()> {
    /// let queue = client.queue("videos");
    /// let first = queue.page(ostq::JobState::Pending, None, 50).await?;
    /// if let Some(next) = &first.next {
    ///     let second = queue.page(ostq::JobState::Pending, Some(next), 50).await?;
    ///     println!("{} more", second.jobs.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn page(
        &self,
        state: JobState,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page> {
        let keys = self.keys()?;
        let position = cursor.map(Cursor::position).transpose()?;
        let limit = limit.clamp(1, MAX_PAGE);
        let (_, shards) = self.shard_set().await?;
        if shards.len() > 1 {
            return self.page_over_shards(state, &shards, position, limit).await;
        }
        let position = match position {
            // A sharded listing's cursor in shard 0: the queue itself.
            Some(Position::Shard { index: 0, inner }) => inner.map(|p| *p),
            Some(Position::Shard { .. }) => {
                return Err(Error::Config(
                    "this cursor belongs to a listing of a sharded queue".into(),
                ))
            }
            other => other,
        };
        let mut conn = self.client_ref().conn();
        let conn = &mut conn;
        match (state, position) {
            (JobState::Pending, None) => pending_page(conn, keys, Phase::High(None), limit).await,
            (JobState::Pending, Some(Position::High(mark))) => {
                pending_page(conn, keys, Phase::High(Some(mark)), limit).await
            }
            (JobState::Pending, Some(Position::List(mark))) => {
                pending_page(conn, keys, Phase::List(mark), limit).await
            }
            (JobState::Pending, Some(Position::Low(mark))) => {
                pending_page(conn, keys, Phase::Low(mark), limit).await
            }
            (JobState::Active, None) => active_page(conn, keys, None, limit).await,
            (JobState::Active, Some(Position::Active { group, index })) => {
                active_page(conn, keys, Some((group, index)), limit).await
            }
            (JobState::Pending | JobState::Active, Some(_)) => Err(foreign_cursor(state)),
            (_, None) => sorted_page(conn, keys, state, None, limit).await,
            (_, Some(Position::Sorted(of, mark))) if of == state => {
                sorted_page(conn, keys, state, Some(mark), limit).await
            }
            (_, Some(_)) => Err(foreign_cursor(state)),
        }
    }
}

impl Queue {
    /// A page of a sharded queue (design §19): the time-ordered states merged over the shards
    /// (`merged_page`); pending and active jobs shard 0's listing, then shard 1's, and
    /// so on (the draining shards last), the cursor naming the shard and its place in it. One
    /// call reads a page from each shard it reaches (at most one page in all, plus the next
    /// shard's start), so it stays bounded like an unsharded page, and paging lists every job
    /// that stays in its state exactly once, as in one physical queue.
    async fn page_over_shards(
        &self,
        state: JobState,
        shards: &[Queue],
        position: Option<Position>,
        limit: usize,
    ) -> Result<Page> {
        if matches!(
            state,
            JobState::Scheduled | JobState::Retry | JobState::Dead | JobState::Completed
        ) {
            let mut marks = match position {
                None => Vec::new(),
                Some(Position::Merged(of, marks)) if of == state => marks,
                // A cursor from before the queue was sharded: shard 0's place.
                Some(Position::Sorted(of, mark)) if of == state => vec![ShardMark::After(mark)],
                Some(_) => return Err(foreign_cursor(state)),
            };
            // Shards added since the cursor was made are listed from their start.
            marks.resize(shards.len(), ShardMark::Start);
            return self.merged_page(state, shards, marks, limit).await;
        }
        let (mut index, mut inner) = match position {
            None => (0, None),
            Some(Position::Shard { index, inner }) => (index, inner.map(|p| *p)),
            // A cursor from before the queue was sharded: it was in shard 0 (the queue itself).
            Some(other) => (0, Some(other)),
        };
        let mut out = Page {
            jobs: Vec::new(),
            next: None,
            list_index: Vec::new(),
        };
        loop {
            let Some(shard) = usize::try_from(index).ok().and_then(|i| shards.get(i)) else {
                return Ok(out); // past the last shard: the end
            };
            if out.jobs.len() >= limit {
                let start = Position::Shard { index, inner: None };
                out.next = Some(Cursor::from_position(&start));
                return Ok(out);
            }
            let cursor = inner.take().map(|p| Cursor::from_position(&p));
            let page = Box::pin(shard.page(state, cursor.as_ref(), limit - out.jobs.len())).await?;
            out.jobs.extend(page.jobs.into_iter().map(|mut job| {
                job.queue = self.name().to_string();
                job
            }));
            // A pending job's index is in its shard's list, where `find_job` looks first.
            out.list_index.extend(page.list_index);
            if let Some(next) = page.next {
                let inner = Some(Box::new(next.position()?));
                out.next = Some(Cursor::from_position(&Position::Shard { index, inner }));
                return Ok(out);
            }
            index += 1;
        }
    }
}

impl Queue {
    /// A page of a sharded queue's scheduled, retry, dead or completed jobs in the state's order
    /// over every shard (design §19): the next `limit` entries of each shard's sorted set after
    /// its mark (one bounded read per shard), merged by (score, member), the first `limit`
    /// kept. Each shard's first `limit` entries hold every one of its entries among the merged
    /// first `limit`, so the page is the true order; each shard's mark moves past what it gave.
    async fn merged_page(
        &self,
        state: JobState,
        shards: &[Queue],
        mut marks: Vec<ShardMark>,
        limit: usize,
    ) -> Result<Page> {
        let descending = matches!(state, JobState::Dead | JobState::Completed);
        let mut conn = self.client_ref().conn();
        let mut reads: Vec<Option<ZPage>> = Vec::with_capacity(shards.len());
        for (shard, mark) in shards.iter().zip(&marks) {
            let zset = sorted_key(shard.keys()?, state);
            reads.push(match mark {
                ShardMark::Done => None,
                ShardMark::Start => {
                    Some(zset_after(&mut conn, zset, descending, None, limit).await?)
                }
                ShardMark::After(mark) => {
                    Some(zset_after(&mut conn, zset, descending, Some(mark), limit).await?)
                }
            });
        }
        // (score, member, shard, index in the shard's read), in the listing's order.
        let mut merged: Vec<(f64, &[u8], usize, usize)> = Vec::new();
        for (shard, read) in reads.iter().enumerate() {
            for (at, (member, score)) in read.iter().flat_map(|r| r.entries.iter()).enumerate() {
                merged.push((*score, member, shard, at));
            }
        }
        merged.sort_by(|a, b| {
            let order =
                a.0.partial_cmp(&b.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then_with(|| a.1.cmp(b.1))
                    .then_with(|| a.2.cmp(&b.2));
            if descending {
                order.reverse()
            } else {
                order
            }
        });
        merged.truncate(limit);
        // Each shard's new mark: past the entries it gave.
        let mut taken = vec![0usize; shards.len()];
        for (_, _, shard, _) in &merged {
            taken[*shard] += 1;
        }
        for (shard, read) in reads.iter().enumerate() {
            let Some(read) = read else { continue };
            let took = taken[shard];
            if took == read.entries.len() {
                marks[shard] = read.next.clone().map_or(ShardMark::Done, ShardMark::After);
            } else if took > 0 {
                let (member, score) = &read.entries[took - 1];
                // The index among entries of equal score: a hint for finding it again.
                let same = read.entries[..took - 1]
                    .iter()
                    .rev()
                    .take_while(|(_, s)| s == score)
                    .count() as u64;
                let tie = match &marks[shard] {
                    ShardMark::After(prev) if same == (took - 1) as u64 && prev.score == *score => {
                        prev.tie + 1 + same
                    }
                    _ => same,
                };
                marks[shard] = ShardMark::After(Mark::new(member, *score, tie));
            }
        }
        // The jobs, read shard by shard, then put in the merged order.
        let mut infos: std::collections::HashMap<(usize, String), JobInfo> =
            std::collections::HashMap::new();
        for (shard, queue) in shards.iter().enumerate() {
            let ids: Vec<(String, u64)> = merged
                .iter()
                .filter(|(_, _, s, _)| *s == shard)
                .map(|(score, member, _, _)| {
                    (String::from_utf8_lossy(member).into_owned(), *score as u64)
                })
                .collect();
            if ids.is_empty() {
                continue;
            }
            let keys = queue.keys()?;
            let jobs = if state == JobState::Completed {
                let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
                completed_infos(&mut conn, keys, &names).await?
            } else {
                infos_by_id(&mut conn, keys, state, ids).await?
            };
            for mut job in jobs {
                job.queue = self.name().to_string();
                infos.insert((shard, job.id.clone()), job);
            }
        }
        let jobs = merged
            .iter()
            .filter_map(|(_, member, shard, _)| {
                infos.remove(&(*shard, String::from_utf8_lossy(member).into_owned()))
            })
            .collect();
        let next = (!marks.iter().all(|m| *m == ShardMark::Done))
            .then(|| Cursor::from_position(&Position::Merged(state, marks)));
        Ok(Page {
            jobs,
            next,
            list_index: Vec::new(),
        })
    }
}

/// The sorted set of a time-ordered state.
fn sorted_key(keys: &QueueKeys, state: JobState) -> &str {
    match state {
        JobState::Scheduled => &keys.scheduled,
        JobState::Retry => &keys.retry,
        JobState::Dead => &keys.dead,
        _ => &keys.completed,
    }
}

fn foreign_cursor(state: JobState) -> Error {
    Error::Config(format!(
        "this cursor belongs to a listing of another state than {state}"
    ))
}

/// Entries of a sorted set after a mark, and the mark of the next page (`None` at the end).
struct ZPage {
    entries: Vec<(Vec<u8>, f64)>,
    next: Option<Mark>,
}

/// Scheduled, retry, dead or completed jobs after `mark`.
async fn sorted_page(
    conn: &mut Conn,
    keys: &QueueKeys,
    state: JobState,
    mark: Option<Mark>,
    limit: usize,
) -> Result<Page> {
    let (zset, descending) = match state {
        JobState::Scheduled => (&keys.scheduled, false),
        JobState::Retry => (&keys.retry, false),
        JobState::Dead => (&keys.dead, true),
        _ => (&keys.completed, true),
    };
    let page = zset_after(conn, zset, descending, mark.as_ref(), limit).await?;
    let ids: Vec<(String, u64)> = page
        .entries
        .iter()
        .map(|(member, score)| (String::from_utf8_lossy(member).into_owned(), *score as u64))
        .collect();
    let jobs = if state == JobState::Completed {
        let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        completed_infos(conn, keys, &names).await?
    } else {
        infos_by_id(conn, keys, state, ids).await?
    };
    let next = page
        .next
        .map(|m| Cursor::from_position(&Position::Sorted(state, m)));
    Ok(Page {
        jobs,
        next,
        list_index: Vec::new(),
    })
}

/// Whether an entry comes after the mark in the listing's order.
fn is_after(member: &[u8], score: f64, mark: &Mark, descending: bool) -> bool {
    use std::cmp::Ordering;
    let by_member = || {
        let n = mark.member.len();
        if mark.truncated && member.len() >= n && member[..n] == mark.member[..] {
            Ordering::Equal // the same entry, as far as the cursor can tell
        } else {
            member.cmp(&mark.member)
        }
    };
    let order = score
        .partial_cmp(&mark.score)
        .unwrap_or(Ordering::Equal)
        .then_with(by_member);
    if descending {
        order == Ordering::Less
    } else {
        order == Ordering::Greater
    }
}

/// Up to `limit` entries of a sorted set after `mark` (from the start for `None`), ascending or
/// descending. Each attempt is one `ZRANGE` that must hold the boundary: an entry at or before
/// the mark followed by the first one after it (or the set's start).
async fn zset_after(
    conn: &mut Conn,
    zset: &str,
    descending: bool,
    mark: Option<&Mark>,
    limit: usize,
) -> Result<ZPage> {
    let Some(mark) = mark else {
        let want = limit as u64 + 1;
        let reply = stored::zset_window(conn, zset, 0, want, descending).await?;
        return Ok(cut_zset(
            reply,
            0,
            Span {
                start: 0,
                want,
                limit,
            },
            None,
        ));
    };
    let group_start = stored::zset_count_before(conn, zset, mark.score, descending).await?;
    // Where the mark is (or was) if nothing before it moved.
    let mut guess = group_start + mark.tie;
    let mut back = 1;
    for _ in 0..ZSET_ATTEMPTS {
        let start = guess.saturating_sub(back);
        let want = (guess - start) + limit as u64 + 2;
        let reply = stored::zset_window(conn, zset, start, want, descending).await?;
        let after = reply
            .iter()
            .position(|(member, score)| is_after(member, *score, mark, descending));
        match after {
            // Entries before the window went away: the boundary is further back.
            Some(0) if start > 0 => {
                guess = start;
                back = (back * 8).min(ZSET_MAX_BACK);
            }
            Some(j) => {
                let span = Span { start, want, limit };
                return Ok(cut_zset(reply, j, span, Some((mark, group_start))));
            }
            // Entries were added before the mark: it is further on.
            None if reply.len() as u64 == want => {
                guess = start + want - 1;
                back = 1;
            }
            None => {
                return Ok(ZPage {
                    entries: Vec::new(),
                    next: None,
                })
            }
        }
    }
    Err(Error::Timeout(format!(
        "{zset} changed too fast to find the cursor's place in {ZSET_ATTEMPTS} reads; ask again"
    )))
}

/// Where a window was read: its first rank, how many entries were asked for, the page size.
#[derive(Clone, Copy)]
struct Span {
    start: u64,
    want: u64,
    limit: usize,
}

/// The page in a window read from rank `span.start`, starting at reply index `from`.
/// `mark` is the previous cursor and the rank its score's entries started at.
fn cut_zset(
    reply: Vec<(Vec<u8>, f64)>,
    from: usize,
    span: Span,
    mark: Option<(&Mark, u64)>,
) -> ZPage {
    let full = reply.len() as u64 == span.want;
    let end = reply.len().min(from + span.limit);
    let more = end < reply.len() || full;
    let next = (more && end > from).then(|| {
        let last = end - 1;
        let (member, score) = &reply[last];
        let tie = match mark {
            Some((mark, group_start)) if *score == mark.score => {
                (span.start + last as u64).saturating_sub(group_start)
            }
            // Its score's entries start in this window: after the boundary, or at the set's start.
            _ => reply[..last]
                .iter()
                .rev()
                .take_while(|(_, s)| s == score)
                .count() as u64,
        };
        Mark::new(member, *score, tie)
    });
    let entries = reply.into_iter().take(end).skip(from).collect();
    ZPage { entries, next }
}

/// Where a pending listing is: its three parts in run order.
enum Phase {
    /// Prioritized jobs that run before the list (positive priorities: negative scores).
    High(Option<Mark>),
    List(Option<ListMark>),
    /// Prioritized jobs that run after the list (negative priorities: positive scores).
    Low(Option<Mark>),
}

/// Pending jobs in run order, across the parts of the pending state.
async fn pending_page(
    conn: &mut Conn,
    keys: &QueueKeys,
    mut phase: Phase,
    limit: usize,
) -> Result<Page> {
    let mut jobs = Vec::new();
    let mut list_index = Vec::new();
    let pending = |bytes: &[u8]| info_from_bytes(&keys.queue, JobState::Pending, bytes);
    loop {
        let room = limit - jobs.len();
        let (next, then) = match phase {
            Phase::High(mark) => {
                let page = zset_after(conn, &keys.prioritized, false, mark.as_ref(), room).await?;
                let low = page.entries.iter().position(|(_, score)| *score >= 0.0);
                let high = &page.entries[..low.unwrap_or(page.entries.len())];
                jobs.extend(high.iter().map(|(bytes, _)| pending(bytes)));
                list_index.resize(jobs.len(), None);
                match page.next {
                    Some(mark) if low.is_none() => (Some(Position::High(mark)), Phase::List(None)),
                    _ => (None, Phase::List(None)),
                }
            }
            Phase::List(mark) => {
                let page = list_after(conn, keys, mark.as_ref(), room).await?;
                for (index, bytes) in &page.entries {
                    jobs.push(pending(bytes));
                    list_index.push(Some(*index));
                }
                (page.next.map(|m| Position::List(Some(m))), Phase::Low(None))
            }
            Phase::Low(mark) => {
                let zero = Mark::new(b"", 0.0, 0); // before every negative priority
                let mark = mark.unwrap_or(zero);
                let page = zset_after(conn, &keys.prioritized, false, Some(&mark), room).await?;
                jobs.extend(page.entries.iter().map(|(bytes, _)| pending(bytes)));
                list_index.resize(jobs.len(), None);
                let next = page
                    .next
                    .map(|m| Cursor::from_position(&Position::Low(Some(m))));
                return Ok(Page {
                    jobs,
                    next,
                    list_index,
                });
            }
        };
        if let Some(next) = next {
            let next = Some(Cursor::from_position(&next));
            return Ok(Page {
                jobs,
                next,
                list_index,
            });
        }
        if jobs.len() == limit {
            let next = match then {
                Phase::List(_) => Position::List(None),
                _ => Position::Low(None),
            };
            let next = Some(Cursor::from_position(&next));
            return Ok(Page {
                jobs,
                next,
                list_index,
            });
        }
        phase = then;
    }
}

/// Entries of the pending list after a mark, in run order, with their index from the right end
/// when read, and the mark of the next page.
struct ListPage {
    entries: Vec<(u64, Vec<u8>)>,
    next: Option<ListMark>,
}

/// How a pending list entry is recognised (`None` for the wake marker, which is no job).
fn entry_key(bytes: &[u8]) -> Option<EntryKey> {
    if bytes == WAKE {
        return None;
    }
    Some(match envelope_id(bytes) {
        Some(id) => EntryKey::Id(String::from_utf8_lossy(id).into_owned()),
        None => EntryKey::Bare(fnv1a(bytes)),
    })
}

/// FNV-1a, 64 bits: a stable hash of a bare entry's bytes (cursors outlive processes).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Up to `limit` entries of the pending list after `mark` (from the right end for `None`).
async fn list_after(
    conn: &mut Conn,
    keys: &QueueKeys,
    mark: Option<&ListMark>,
    limit: usize,
) -> Result<ListPage> {
    let Some(mark) = mark else {
        let want = limit as u64 + 1;
        let window = stored::pending_window(conn, keys, 0, want).await?;
        return Ok(cut_list(
            window,
            0,
            Span {
                start: 0,
                want,
                limit,
            },
        ));
    };
    // The highest index the entry can be at, and how far below it to look in one read.
    let mut top = mark.from_right + LIST_SLACK;
    let mut reach = 2 * LIST_SLACK;
    let mut scanned = 0;
    loop {
        let start = top.saturating_sub(reach);
        let want = (top - start + 1) + limit as u64 + 1;
        let window = stored::pending_window(conn, keys, start, want).await?;
        let searched = window.len().min((top - start + 1) as usize);
        let found = find_entry(
            &window[..searched],
            &mark.key,
            mark.from_right - start.min(mark.from_right),
        );
        let span = Span { start, want, limit };
        match found {
            Some(at) => return Ok(cut_list(window, at + 1, span)),
            // Consumed: everything to its right went before it, so the right end is next.
            None if start == 0 => return Ok(cut_list(window, 0, span)),
            None => {}
        }
        scanned += top - start + 1;
        if scanned >= LIST_SCAN_CAP {
            let next = ListMark {
                key: mark.key.clone(),
                from_right: start,
            };
            return Ok(ListPage {
                entries: Vec::new(),
                next: Some(next),
            });
        }
        top = start;
        reach = SCAN_CHUNK as u64;
    }
}

/// Where `key` is in a window: entries only move right (to lower indices), so the match nearest
/// the hinted index at or below it, else (jobs put back at the right end) the nearest above it.
/// Only bare twins (equal bytes) can match twice.
fn find_entry(window: &[Vec<u8>], key: &EntryKey, hint: u64) -> Option<usize> {
    let hint = usize::try_from(hint).unwrap_or(usize::MAX);
    let mut matches = window
        .iter()
        .enumerate()
        .filter(|(_, bytes)| entry_key(bytes).as_ref() == Some(key))
        .map(|(at, _)| at);
    let mut below = None;
    for at in matches.by_ref() {
        if at > hint {
            return below.or(Some(at));
        }
        below = Some(at);
    }
    below
}

/// The page in a window of the pending list read from index `span.start` (from the right),
/// starting at window index `from`; the wake marker is skipped.
fn cut_list(window: Vec<Vec<u8>>, from: usize, span: Span) -> ListPage {
    let full = window.len() as u64 == span.want;
    let mut entries = Vec::new();
    let mut last = None;
    let mut rest = window.iter().enumerate().skip(from);
    for (at, bytes) in rest.by_ref() {
        if let Some(key) = entry_key(bytes) {
            entries.push((span.start + at as u64, bytes.clone()));
            last = Some((at, key));
            if entries.len() == span.limit {
                break;
            }
        }
    }
    let more = full || rest.any(|(_, bytes)| bytes.as_slice() != WAKE);
    let next = last.filter(|_| more).map(|(at, key)| ListMark {
        key,
        from_right: span.start + at as u64,
    });
    ListPage { entries, next }
}

/// Active jobs after entry `after` = (group, index), by group id then index.
async fn active_page(
    conn: &mut Conn,
    keys: &QueueKeys,
    after: Option<(u64, u64)>,
    limit: usize,
) -> Result<Page> {
    let mut groups = stored::lease_deadlines(conn, keys).await?;
    groups.sort_unstable();
    let first = after.map_or(0, |(g, _)| groups.partition_point(|(id, _)| *id < g));
    let mut jobs = Vec::new();
    let mut last = None;
    for batch in groups[first..].chunks(GROUP_BATCH) {
        let ids: Vec<u64> = batch.iter().map(|(group, _)| *group).collect();
        let entries = stored::lease_entries(conn, keys, &ids).await?;
        for (&(group, deadline), entries) in batch.iter().zip(entries) {
            for (index, bytes) in (0u64..).zip(&entries) {
                let seen = after.is_some_and(|(g, i)| group == g && index <= i);
                if bytes.is_empty() || seen {
                    continue;
                }
                if jobs.len() == limit {
                    let next = last.map(|(group, index)| {
                        Cursor::from_position(&Position::Active { group, index })
                    });
                    return Ok(Page {
                        jobs,
                        next,
                        list_index: Vec::new(),
                    });
                }
                jobs.push(active_info(keys, bytes, deadline));
                last = Some((group, index));
            }
        }
    }
    Ok(Page {
        jobs,
        next: None,
        list_index: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(member: &str, score: f64) -> Mark {
        Mark::new(member.as_bytes(), score, 0)
    }

    #[test]
    fn entries_after_a_mark_follow_redis_order() {
        let m = mark("b", 5.0);
        assert!(is_after(b"c", 5.0, &m, false));
        assert!(is_after(b"a", 6.0, &m, false));
        assert!(!is_after(b"b", 5.0, &m, false));
        assert!(!is_after(b"z", 4.0, &m, false));
        assert!(is_after(b"a", 5.0, &m, true));
        assert!(is_after(b"z", 4.0, &m, true));
        assert!(!is_after(b"c", 5.0, &m, true));
        let long = vec![7u8; 300];
        let m = Mark::new(&long, 1.0, 0);
        assert!(!is_after(&long, 1.0, &m, false), "the same long member");
        let mut longer = long.clone();
        longer[10] = 8;
        assert!(is_after(&longer, 1.0, &m, false));
    }

    #[test]
    fn a_window_is_cut_after_the_boundary_with_a_tie_hint() {
        let reply: Vec<(Vec<u8>, f64)> = ["a", "b", "c", "d", "e"]
            .iter()
            .zip([1.0, 2.0, 2.0, 2.0, 3.0])
            .map(|(m, s)| (m.as_bytes().to_vec(), s))
            .collect();
        let m = mark("b", 2.0);
        let span = Span {
            start: 10,
            want: 5,
            limit: 2,
        };
        let page = cut_zset(reply.clone(), 2, span, Some((&m, 11)));
        let members: Vec<&[u8]> = page.entries.iter().map(|(m, _)| m.as_slice()).collect();
        assert_eq!(members, [b"c", b"d"]);
        // "d" is rank 13; the entries of its score start at rank 11 ("b").
        assert_eq!(page.next, Some(Mark::new(b"d", 2.0, 2)));
        let page = cut_zset(reply.clone(), 0, Span { limit: 5, ..span }, None);
        assert_eq!(
            page.next,
            Some(Mark::new(b"e", 3.0, 0)),
            "the window was full"
        );
        let short = Span {
            want: 6,
            limit: 5,
            ..span
        };
        assert_eq!(cut_zset(reply, 1, short, None).next, None, "the set ended");
    }

    #[test]
    fn bare_entries_are_told_apart_by_their_bytes() {
        assert_eq!(entry_key(WAKE), None);
        assert_ne!(entry_key(b"42"), entry_key(b"43"));
        assert_eq!(entry_key(b"42"), entry_key(b"42"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
