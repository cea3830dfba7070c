//! A deadline queue with lazy cancellation: entries carry a generation that the owner checks
//! when one fires, so cancelling is bumping a counter rather than searching the heap.

use crate::growth::GrowGently;
use crate::time::Millis;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug)]
pub(crate) struct Timers<K: Ord> {
    // Ordered by (deadline, sequence): ties fire in the order they were set, on every machine.
    heap: BinaryHeap<Reverse<(Millis, u64, K)>>,
    sequence: u64,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
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

    pub(crate) fn next_deadline(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<K> {
        if self.next_deadline()? > now {
            return None;
        }
        let popped = self.heap.pop().map(|Reverse((_, _, key))| key);
        // A fleet's boot leaves its start deadlines here at once; give that memory back.
        self.heap.shrink_gently();
        popped
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}
