//! A deadline queue with lazy cancellation: entries carry a generation that the owner checks
//! when one fires, so cancelling is bumping a counter rather than searching the heap.
//!
//! Timers that are always set one fixed delay ahead (every agent's next snapshot) are set in
//! deadline order, so they ride a FIFO lane beside the heap: O(1) to set and to fire instead
//! of a heap's O(log n), which is most of a steady fleet's timers. Both lanes order by
//! (deadline, sequence), so which lane a timer rode never changes the order timers fire in.

use crate::growth::GrowGently;
use crate::time::Millis;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

#[derive(Debug)]
pub(crate) struct Timers<K: Ord> {
    // Ordered by (deadline, sequence): ties fire in the order they were set, on every machine.
    heap: BinaryHeap<Reverse<(Millis, u64, K)>>,
    /// Sorted by (deadline, sequence), as set (see [`Timers::set_in_order`]).
    in_order: VecDeque<(Millis, u64, K)>,
    sequence: u64,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            in_order: VecDeque::new(),
            sequence: 0,
        }
    }
}

impl<K: Ord> Timers<K> {
    pub(crate) fn set(&mut self, at: Millis, key: K) {
        self.sequence += 1;
        // A fleet's timers number a few per agent, stale ones included.
        self.heap.grow_gently();
        self.heap.push(Reverse((at, self.sequence, key)));
    }

    /// Like [`Timers::set`], for a timer that is usually due no earlier than the last one set
    /// this way (one fixed delay from now): it goes to the FIFO lane when it is, to the heap
    /// when it is not (the delay was shortened), so the order timers fire in stays exact.
    pub(crate) fn set_in_order(&mut self, at: Millis, key: K) {
        if self.in_order.back().is_some_and(|(last, _, _)| at < *last) {
            self.set(at, key);
            return;
        }
        self.sequence += 1;
        // About one per agent for the whole life of a fleet.
        self.in_order.grow_gently();
        self.in_order.push_back((at, self.sequence, key));
    }

    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        let heap = self.heap.peek().map(|Reverse((at, _, _))| *at);
        let lane = self.in_order.front().map(|(at, _, _)| *at);
        match (heap, lane) {
            (Some(h), Some(l)) => Some(h.min(l)),
            (h, l) => h.or(l),
        }
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<K> {
        let heap = self.heap.peek().map(|Reverse((at, seq, _))| (*at, *seq));
        let lane = self.in_order.front().map(|(at, seq, _)| (*at, *seq));
        let from_lane = match (heap, lane) {
            (Some(h), Some(l)) => l < h,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if from_lane {
            if self.in_order.front()?.0 > now {
                return None;
            }
            let popped = self.in_order.pop_front().map(|(_, _, key)| key);
            self.in_order.shrink_gently();
            return popped;
        }
        if self.heap.peek()?.0.0 > now {
            return None;
        }
        let popped = self.heap.pop().map(|Reverse((_, _, key))| key);
        // A fleet's boot leaves its start deadlines here at once; give that memory back.
        self.heap.shrink_gently();
        popped
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len() + self.in_order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever lane each timer is set through, timers fire exactly as from one heap:
        /// a reference that sets every timer with `set` pops the same keys at the same times.
        #[test]
        fn timers_fire_as_from_one_heap_whichever_lane_they_ride(
            ops in proptest::collection::vec((0u64..50, any::<bool>(), 0u64..8), 0..300),
        ) {
            let mut timers = Timers::default();
            let mut reference = Timers::default();
            let mut now = 0;
            for (n, (delay, in_order, advance)) in ops.into_iter().enumerate() {
                let at = Millis(now + delay);
                if in_order {
                    timers.set_in_order(at, n);
                } else {
                    timers.set(at, n);
                }
                reference.set(at, n);
                now += advance;
                prop_assert_eq!(timers.next_deadline(), reference.next_deadline());
                loop {
                    let (got, want) = (timers.pop_due(Millis(now)), reference.pop_due(Millis(now)));
                    prop_assert_eq!(got, want);
                    if got.is_none() {
                        break;
                    }
                }
                prop_assert_eq!(timers.len(), reference.len());
            }
            let drain = |t: &mut Timers<usize>| {
                std::iter::from_fn(|| t.pop_due(Millis::MAX)).collect::<Vec<_>>()
            };
            prop_assert_eq!(drain(&mut timers), drain(&mut reference));
        }
    }
}
