//! Growth of long-lived collections by an eighth instead of doubling.
//!
//! A `Vec` that doubles is, right after it does, half empty; a fleet's state is a handful of
//! such collections sized by agents, and at the peak of a run several of them have just
//! doubled. Growing by an eighth keeps the slack under 12.5% and the cost amortised O(1)
//! (each element moves about eight times over the collection's life instead of about once;
//! large blocks are mostly resized in place). Only for collections that grow for the life of
//! a fleet: small or short-lived ones should double as usual.

use std::collections::BinaryHeap;

/// Below this many elements, the slack of doubling is not worth a reallocation per push.
const SMALL: usize = 16;

/// The minimum number of extra elements to reserve when full, given `len`.
fn step(len: usize) -> usize {
    if len < SMALL { len.max(4) } else { len / 8 }
}

/// Makes room for one more element, by an eighth of the length when full.
pub trait GrowGently {
    fn grow_gently(&mut self);
}

impl<T> GrowGently for Vec<T> {
    fn grow_gently(&mut self) {
        if self.len() == self.capacity() {
            self.reserve_exact(step(self.len()));
        }
    }
}

impl<T: Ord> GrowGently for BinaryHeap<T> {
    fn grow_gently(&mut self) {
        if self.len() == self.capacity() {
            self.reserve_exact(step(self.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GrowGently;
    use proptest::prelude::*;
    use std::collections::BinaryHeap;

    proptest! {
        #[test]
        fn slack_stays_under_an_eighth_and_contents_are_kept(n in 0usize..5_000) {
            let mut v = Vec::new();
            let mut h = BinaryHeap::new();
            for i in 0..n {
                v.grow_gently();
                prop_assert!(v.capacity() > v.len());
                v.push(i);
                h.grow_gently();
                h.push(std::cmp::Reverse(i));
            }
            prop_assert_eq!(v.clone(), (0..n).collect::<Vec<_>>());
            // `reserve_exact` may round up; what it gets is never more than one step over.
            if n >= 64 {
                prop_assert!(v.capacity() <= n + n / 7 + 1, "{} for {n}", v.capacity());
                prop_assert!(h.capacity() <= n + n / 7 + 1, "{} for {n}", h.capacity());
            }
            let drained: Vec<usize> = std::iter::from_fn(|| h.pop().map(|r| r.0)).collect();
            prop_assert_eq!(drained, (0..n).collect::<Vec<_>>());
        }
    }
}
