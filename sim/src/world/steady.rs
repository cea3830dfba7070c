//! The exact total memory of a node's steady processes of one class, in O(log n) per tick.
//!
//! A steady process (live, not spiking, not throttled, not replayed) uses
//! `baseline + ⌊growth × (now − started) / DAY⌋` bytes. The tick needs the sum of that over a
//! node's processes, exactly (the report's utilisation and the OOM test read it), and summing
//! it process by process at every tick was most of a run. Within a class `growth` is shared,
//! so with `growth × now = Q × DAY + R` and `growth × started_i = q_i × DAY + r_i` each term is
//! `baseline_i + Q − q_i − [R < r_i]`, and the sum is
//! `Σ (baseline_i − q_i) + n × Q − #{i : r_i > R}`: two running totals and a sorted list of
//! remainders, counted by binary search.

use carapace_engine::Millis;

const DAY_MS: u128 = 86_400_000;

#[derive(Debug, Clone)]
pub struct SteadySum {
    growth_bytes_per_day: u64,
    count: u64,
    /// `Σ (baseline_i − q_i)`, wrapping: exact modulo 2^64, and the total it enters (the sum
    /// of real memory sizes) fits in a `u64`, so the wrapped arithmetic yields it exactly.
    offset: u64,
    /// Every member's `r_i`, sorted.
    remainders: Vec<u64>,
}

impl SteadySum {
    pub fn new(growth_bytes_per_day: u64) -> SteadySum {
        SteadySum {
            growth_bytes_per_day,
            count: 0,
            offset: 0,
            remainders: Vec::new(),
        }
    }

    pub fn growth_bytes_per_day(&self) -> u64 {
        self.growth_bytes_per_day
    }

    /// `(q, r)` of `growth × at` divided by a day.
    fn split(&self, at: Millis) -> (u64, u64) {
        // In 64 bits when the product fits, as it does for every realistic growth and run
        // length: dividing a u128 is a call into compiler builtins, and every node's tick
        // asks this once per class.
        if let Some(product) = self.growth_bytes_per_day.checked_mul(at.0) {
            return (product / DAY_MS as u64, product % DAY_MS as u64);
        }
        let product = u128::from(self.growth_bytes_per_day) * u128::from(at.0);
        // The quotient is the growth over `at` in bytes: it fits whenever a process's memory
        // does, as the model's memory must.
        ((product / DAY_MS) as u64, (product % DAY_MS) as u64)
    }

    /// Adds a process of `baseline_bytes` started at `started_at`. The sum is only asked for
    /// at times not before any member's start.
    pub fn insert(&mut self, baseline_bytes: u64, started_at: Millis) {
        let (q, r) = self.split(started_at);
        self.count += 1;
        self.offset = self.offset.wrapping_add(baseline_bytes).wrapping_sub(q);
        let at = self.remainders.partition_point(|&x| x <= r);
        self.remainders.insert(at, r);
    }

    /// Takes out a process added with the same arguments.
    pub fn remove(&mut self, baseline_bytes: u64, started_at: Millis) {
        let (q, r) = self.split(started_at);
        let at = self
            .remainders
            .binary_search(&r)
            .expect("invariant: only members are removed");
        self.remainders.remove(at);
        self.count -= 1;
        self.offset = self.offset.wrapping_sub(baseline_bytes).wrapping_add(q);
    }

    /// The members' total memory at `now`.
    pub fn total(&self, now: Millis) -> u64 {
        let (q, r) = self.split(now);
        let carried = self.remainders.len() - self.remainders.partition_point(|&x| x <= r);
        self.offset
            .wrapping_add(self.count.wrapping_mul(q))
            .wrapping_sub(carried as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::SteadySum;
    use carapace_engine::Millis;
    use proptest::prelude::*;

    fn brute(growth: u64, members: &[(u64, u64)], now: u64) -> u64 {
        members
            .iter()
            .map(|&(baseline, started)| {
                baseline + (u128::from(growth) * u128::from(now - started) / 86_400_000) as u64
            })
            .sum()
    }

    proptest! {
        #[test]
        fn total_is_the_sum_of_each_members_memory(
            growth in prop_oneof![Just(0u64), 0u64..(1 << 34)],
            members in prop::collection::vec((0u64..(8 << 30), 0u64..2_000_000_000), 0..40),
            removed in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
            ahead in 0u64..2_000_000_000,
        ) {
            let mut sum = SteadySum::new(growth);
            let mut members = members;
            for &(baseline, started) in &members {
                sum.insert(baseline, Millis(started));
            }
            for index in removed {
                if members.is_empty() {
                    break;
                }
                let (baseline, started) = members.remove(index.index(members.len()));
                sum.remove(baseline, Millis(started));
            }
            let latest = members.iter().map(|&(_, s)| s).max().unwrap_or(0);
            for now in [latest, latest + 1, latest + ahead] {
                prop_assert_eq!(sum.total(Millis(now)), brute(growth, &members, now));
            }
        }
    }
}
