//! The event queue: the simulator's one source of "what happens next".
//!
//! Events are ordered by virtual time; events due at the same instant come
//! out in the order they were scheduled (a sequence number breaks ties), so
//! the order never depends on anything but the run's own history.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use kaelix_core::Instant;

/// A min-queue of `(time, item)` with FIFO order among equal times.
///
/// Items live in a slab; the heap orders small `(time, seq, slot)` keys, so
/// sifting moves 24 bytes whatever the size of an event.
#[derive(Debug)]
pub struct EventQueue<T> {
    heap: BinaryHeap<Reverse<Key>>,
    items: slab::Slab<T>,
    next_seq: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    at: Instant,
    seq: u64,
    slot: usize,
}

impl<T> Default for EventQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> EventQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        EventQueue { heap: BinaryHeap::new(), items: slab::Slab::new(), next_seq: 0 }
    }

    /// Schedules `item` at `at`.
    pub fn push(&mut self, at: Instant, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let slot = self.items.insert(item);
        self.heap.push(Reverse(Key { at, seq, slot }));
    }

    /// The time of the earliest event.
    pub fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(k)| k.at)
    }

    /// Removes the earliest event.
    pub fn pop(&mut self) -> Option<(Instant, T)> {
        self.heap.pop().map(|Reverse(k)| (k.at, self.items.remove(k.slot)))
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Drops every pending event for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        let items = &mut self.items;
        self.heap.retain(|Reverse(k)| {
            let kept = keep(&items[k.slot]);
            if !kept {
                items.remove(k.slot);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Pops come out sorted by time, FIFO among equal times, and nothing
        /// is lost or invented.
        #[test]
        fn pops_in_time_then_insertion_order(times in proptest::collection::vec(0u64..50, 0..200)) {
            let mut q = EventQueue::new();
            for (i, t) in times.iter().enumerate() {
                q.push(Instant::from_nanos(*t), i);
            }
            let mut expected: Vec<(u64, usize)> = times.iter().copied().zip(0..).collect();
            expected.sort();
            let mut got = Vec::new();
            while let Some((t, i)) = q.pop() {
                got.push((t.as_nanos(), i));
            }
            prop_assert_eq!(got, expected);
        }

        /// Interleaving pushes and pops never yields an event earlier than
        /// one already popped, when every push is at or after the last pop
        /// (which is how the simulator uses the queue: no scheduling in the
        /// past).
        #[test]
        fn time_never_goes_backwards(ops in proptest::collection::vec((any::<bool>(), 0u64..1000), 1..300)) {
            let mut q = EventQueue::new();
            let mut now = 0u64;
            for (push, delay) in ops {
                if push {
                    q.push(Instant::from_nanos(now + delay), ());
                } else if let Some((t, ())) = q.pop() {
                    prop_assert!(t.as_nanos() >= now);
                    now = t.as_nanos();
                }
            }
        }

        #[test]
        fn retain_drops_exactly_the_rejected(items in proptest::collection::vec(0u32..100, 0..100)) {
            let mut q = EventQueue::new();
            for (i, v) in items.iter().enumerate() {
                q.push(Instant::from_nanos(i as u64), *v);
            }
            q.retain(|v| v % 2 == 0);
            let kept: Vec<u32> = std::iter::from_fn(|| q.pop().map(|(_, v)| v)).collect();
            let expected: Vec<u32> = items.into_iter().filter(|v| v % 2 == 0).collect();
            prop_assert_eq!(kept, expected);
        }
    }
}
