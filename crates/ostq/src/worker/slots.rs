//! An append-only list whose elements never move: the worker's physical queues (and their job
//! contexts) are referred to by index everywhere (lease groups, outcomes, parked jobs, renewal,
//! history), and queues are added while the worker runs (a new shard layout, design §19). Every
//! task reads it without a lock and may hold a `&T` while the fetch loop appends.

use std::ops::Index;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Elements in the first chunk; chunk `k` holds `FIRST << k`, so 24 chunks hold over 260 million.
const FIRST: usize = 16;
const CHUNKS: usize = 24;

/// Elements are added at the end and never removed or moved; `len` only grows.
pub(super) struct AppendOnly<T> {
    chunks: [OnceLock<Box<[OnceLock<T>]>>; CHUNKS],
    len: AtomicUsize,
    /// Serialises `push` (the reads take no lock).
    push: Mutex<()>,
}

impl<T> Default for AppendOnly<T> {
    fn default() -> Self {
        Self {
            chunks: std::array::from_fn(|_| OnceLock::new()),
            len: AtomicUsize::new(0),
            push: Mutex::new(()),
        }
    }
}

/// The chunk and the place in it of element `i`.
fn place(i: usize) -> (usize, usize) {
    let shifted = i + FIRST;
    let chunk =
        (usize::BITS - 1 - shifted.leading_zeros()) as usize - FIRST.trailing_zeros() as usize;
    (chunk, shifted - (FIRST << chunk))
}

impl<T> AppendOnly<T> {
    /// Adds `value` at the end; its index, or `None` when full (never in practice).
    pub(super) fn push(&self, value: T) -> Option<usize> {
        let _one_at_a_time = self.push.lock().unwrap_or_else(PoisonError::into_inner);
        let i = self.len.load(Ordering::Acquire);
        let (chunk, at) = place(i);
        let slots = self
            .chunks
            .get(chunk)?
            .get_or_init(|| (0..FIRST << chunk).map(|_| OnceLock::new()).collect());
        slots.get(at)?.set(value).ok()?;
        // Published only once the element is in place: a reader that sees the new length finds it.
        self.len.store(i + 1, Ordering::Release);
        Some(i)
    }

    /// Elements added so far.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Element `i`, if added.
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len() {
            return None;
        }
        let (chunk, at) = place(i);
        self.chunks.get(chunk)?.get()?.get(at)?.get()
    }

    /// The elements added so far (when called), in order.
    pub(super) fn iter(&self) -> Iter<'_, T> {
        Iter {
            list: self,
            next: 0,
            end: self.len(),
        }
    }
}

impl<T> Index<usize> for AppendOnly<T> {
    type Output = T;

    /// Like a `Vec`'s: an index is only ever one handed out by `push`.
    fn index(&self, i: usize) -> &T {
        match self.get(i) {
            Some(value) => value,
            None => panic!("index {i} out of range ({} elements)", self.len()),
        }
    }
}

/// Iterates over the elements an `AppendOnly` had when the iteration began.
pub(super) struct Iter<'a, T> {
    list: &'a AppendOnly<T>,
    next: usize,
    end: usize,
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        if self.next >= self.end {
            return None;
        }
        self.next += 1;
        self.list.get(self.next - 1)
    }
}

impl<'a, T> IntoIterator for &'a AppendOnly<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_keep_their_index_and_place_across_chunks() {
        let list = AppendOnly::default();
        assert!(list.get(0).is_none());
        for i in 0..1000 {
            assert_eq!(list.push(i * 3), Some(i));
        }
        let first: *const usize = &list[0];
        for i in 1000..5000 {
            list.push(i * 3);
        }
        // Nothing moved while the list grew.
        assert!(std::ptr::eq(first, &list[0]));
        assert_eq!(list.len(), 5000);
        assert!(list.iter().enumerate().all(|(i, v)| *v == i * 3));
        assert_eq!(list[4999], 4999 * 3);
        assert!(list.get(5000).is_none());
        assert_eq!(place(0), (0, 0));
        assert_eq!(place(15), (0, 15));
        assert_eq!(place(16), (1, 0));
        assert_eq!(place(47), (1, 31));
        assert_eq!(place(48), (2, 0));
    }
}
