//! An append-only list whose elements never move: the worker's physical queues (and their job
//! contexts) are referred to by index everywhere (lease groups, outcomes, parked jobs, renewal,
//! history), and queues are added while the worker runs (a new shard layout, design §19). Every
//! task reads it without a lock and may hold a `&T` while the fetch loop appends. A thin layer
//! over `boxcar::Vec` (lock-free reads, elements never reallocated) that reads like a `Vec`.

use std::ops::Index;

/// Elements are added at the end and never removed or moved; `len` only grows.
pub(super) struct AppendOnly<T> {
    items: boxcar::Vec<T>,
}

impl<T> Default for AppendOnly<T> {
    fn default() -> Self {
        Self {
            items: boxcar::Vec::new(),
        }
    }
}

impl<T> AppendOnly<T> {
    /// Adds `value` at the end; its index. (`Option` for the callers' sake: a list that can no
    /// longer grow would say `None`; boxcar's grows as far as memory does.)
    pub(super) fn push(&self, value: T) -> Option<usize> {
        Some(self.items.push(value))
    }

    /// Elements added so far.
    pub(super) fn len(&self) -> usize {
        self.items.count()
    }

    /// Element `i`, if added.
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)
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

impl<T> Index<usize> for AppendOnly<T> {
    type Output = T;

    /// Like a `Vec`'s: an index is only ever one handed out by `push`.
    fn index(&self, i: usize) -> &T {
        &self.items[i]
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
    fn elements_keep_their_index_and_place_as_the_list_grows() {
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
        assert_eq!((&list).into_iter().count(), 5000);
        assert_eq!(list[4999], 4999 * 3);
        assert!(list.get(5000).is_none());
    }
}
