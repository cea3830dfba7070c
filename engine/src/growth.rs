//! Growth of long-lived collections by an eighth instead of doubling.
//!
//! A `Vec` that doubles is, right after it does, half empty; a fleet's state is a handful of
//! such collections sized by agents, and at the peak of a run several of them have just
//! doubled. Growing by an eighth keeps the slack under 12.5% and the cost amortised O(1)
//! (each element moves about eight times over the collection's life instead of about once;
//! large blocks are mostly resized in place). Only for collections that grow for the life of
//! a fleet: small or short-lived ones should double as usual.
//!
//! Some of them swell for a while and then empty again (every agent's start deadline is
//! pending at once while a fleet boots; a run's queue drains towards its end): those also
//! give memory back once at most three quarters of it is in use
//! ([`GrowGently::shrink_gently`]), so a transient does not stay in the peak for the rest of
//! the run.

use std::collections::{BinaryHeap, VecDeque};

/// Below this many elements, the slack of doubling is not worth a reallocation per push.
const SMALL: usize = 16;

/// The minimum number of extra elements to reserve when full, given `len`.
fn step(len: usize) -> usize {
    if len < SMALL { len.max(4) } else { len / 8 }
}

/// Whether a collection this full holds enough spare memory to give back.
fn worth_shrinking(len: usize, capacity: usize) -> bool {
    capacity > SMALL * 4 && len <= capacity / 4 * 3
}

/// Growth by an eighth, and shrinking back once a quarter is unused.
pub trait GrowGently {
    /// Makes room for one more element, by an eighth of the length when full.
    fn grow_gently(&mut self);

    /// Once at most three quarters of the capacity are in use, shrinks it to the length plus
    /// one step. Between a shrink and the next one the length must fall by a sixth again (or
    /// grow by an eighth before the next growth), so each reallocation is paid for by that
    /// many pushes or pops: amortised O(1) per element.
    fn shrink_gently(&mut self);
}

/// The same two methods for each collection: they share the inherent `len`, `capacity`,
/// `reserve_exact` and `shrink_to`, but no trait that has them.
macro_rules! grow_gently {
    ($($collection:ident<T $(: $bound:ident)?>),*) => {$(
        impl<T $(: $bound)?> GrowGently for $collection<T> {
            fn grow_gently(&mut self) {
                if self.len() == self.capacity() {
                    self.reserve_exact(step(self.len()));
                }
            }

            fn shrink_gently(&mut self) {
                if worth_shrinking(self.len(), self.capacity()) {
                    self.shrink_to(self.len() + step(self.len()));
                }
            }
        }
    )*};
}

grow_gently!(Vec<T>, VecDeque<T>, BinaryHeap<T: Ord>);

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

        #[test]
        fn shrinking_gives_back_all_but_a_step_and_keeps_the_contents(
            n in 0usize..5_000,
            keep_per_mille in 0usize..1_000,
        ) {
            let mut v: Vec<usize> = Vec::new();
            let mut h = BinaryHeap::new();
            for i in 0..n {
                v.grow_gently();
                v.push(i);
                h.grow_gently();
                h.push(std::cmp::Reverse(i));
            }
            let keep = n * keep_per_mille / 1_000;
            let mut drained = Vec::new();
            while h.len() > keep {
                v.pop();
                v.shrink_gently();
                drained.push(h.pop().unwrap().0);
                h.shrink_gently();
                // Never more than a third over what is in use, beyond the small sizes.
                prop_assert!(v.capacity() <= (v.len() * 4 / 3 + 1).max(64) + 1, "{} for {}", v.capacity(), v.len());
                prop_assert!(h.capacity() <= (h.len() * 4 / 3 + 1).max(64) + 1, "{} for {}", h.capacity(), h.len());
                prop_assert!(v.capacity() >= v.len() && h.capacity() >= h.len());
            }
            prop_assert_eq!(v, (0..keep).collect::<Vec<_>>());
            prop_assert_eq!(drained, (0..n - keep).collect::<Vec<_>>());
            let rest: Vec<usize> = std::iter::from_fn(|| h.pop().map(|r| r.0)).collect();
            prop_assert_eq!(rest, (n - keep..n).collect::<Vec<_>>());
        }
    }
}
