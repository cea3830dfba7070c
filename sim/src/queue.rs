//! The event queue: a binary heap for one-off events and a FIFO lane for events that recur
//! with one fixed period (node ticks). Pushing `now + period` onto a FIFO keeps it sorted, so
//! the bulk of the events never touch the heap. Ties go to the lower sequence number, across
//! both lanes, so the order is total and the same on every run.

use carapace_engine::Millis;
use carapace_engine::growth::GrowGently;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

#[derive(Debug)]
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<Entry<E>>>,
    periodic: VecDeque<(Millis, u64, E)>,
    sequence: u64,
}

#[derive(Debug)]
struct Entry<E>(Millis, u64, E);

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            periodic: VecDeque::new(),
            sequence: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn push(&mut self, at: Millis, event: E) {
        self.sequence += 1;
        // The heap holds a couple of pending events per agent for the whole run.
        self.heap.grow_gently();
        self.heap.push(Reverse(Entry(at, self.sequence, event)));
    }

    /// For events of the one fixed period only: `at` must not precede the last one pushed.
    pub fn push_periodic(&mut self, at: Millis, event: E) {
        debug_assert!(
            self.periodic.back().is_none_or(|(last, _, _)| *last <= at),
            "periodic events arrive in time order"
        );
        self.sequence += 1;
        self.periodic.push_back((at, self.sequence, event));
    }

    pub fn pop(&mut self) -> Option<(Millis, E)> {
        let heap_first = self
            .heap
            .peek()
            .map(|Reverse(Entry(at, seq, _))| (*at, *seq));
        let fifo_first = self.periodic.front().map(|(at, seq, _)| (*at, *seq));
        match (heap_first, fifo_first) {
            (Some(h), Some(f)) if f < h => self.pop_periodic(),
            (Some(_), _) => {
                let popped = self.heap.pop().map(|Reverse(Entry(at, _, e))| (at, e));
                // A run's queue drains towards its end (nothing is drawn past it).
                self.heap.shrink_gently();
                popped
            }
            (None, Some(_)) => self.pop_periodic(),
            (None, None) => None,
        }
    }

    pub fn peek_time(&self) -> Option<Millis> {
        let heap = self.heap.peek().map(|Reverse(Entry(at, _, _))| *at);
        let fifo = self.periodic.front().map(|(at, _, _)| *at);
        match (heap, fifo) {
            (Some(h), Some(f)) => Some(h.min(f)),
            (h, f) => h.or(f),
        }
    }

    fn pop_periodic(&mut self) -> Option<(Millis, E)> {
        self.periodic.pop_front().map(|(at, _, e)| (at, e))
    }

    pub fn len(&self) -> usize {
        self.heap.len() + self.periodic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_lanes_merge_in_time_then_sequence_order() {
        let mut q = EventQueue::default();
        q.push(Millis(5), "heap-5");
        q.push_periodic(Millis(5), "fifo-5");
        q.push(Millis(1), "heap-1");
        q.push_periodic(Millis(9), "fifo-9");
        q.push(Millis(9), "heap-9");
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).map(|(_, e)| e).collect();
        assert_eq!(order, ["heap-1", "heap-5", "fifo-5", "fifo-9", "heap-9"]);
    }
}
