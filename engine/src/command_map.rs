//! What is in flight per command, for ids handed out in increasing order.
//!
//! A fleet's commands finish about as fast as they are issued (a snapshot in half a second, a
//! start in seconds), so the live ids sit in a short window just below the newest one. A
//! sliding window over that range makes each insert and remove O(1) instead of a B-tree's
//! O(log n) search and rebalancing, which a week of a large fleet does millions of times.
//! A command that stays in flight long (a stop on a node that went silent) would stretch the
//! window over every id issued since; once the window holds far more empty slots than live
//! entries, its oldest entries move to an ordered side map, so memory stays proportional to
//! what is in flight.

use crate::id::CommandId;
use std::collections::{BTreeMap, VecDeque};

/// Window slots allowed beyond four per live entry before the oldest are moved aside.
const SLACK: usize = 64;

/// A map from [`CommandId`] to `V`, fast when ids are inserted in increasing order and removed
/// roughly in that order; correct for any order.
#[derive(Clone, Debug)]
pub struct CommandMap<V> {
    /// The id of `window[0]`.
    base: u64,
    window: VecDeque<Option<V>>,
    /// Entries of `window` that are `Some`.
    in_window: usize,
    /// Entries below `base`: moved out of the window, or inserted below it.
    aside: BTreeMap<u64, V>,
}

impl<V> Default for CommandMap<V> {
    fn default() -> Self {
        CommandMap {
            base: 0,
            window: VecDeque::new(),
            in_window: 0,
            aside: BTreeMap::new(),
        }
    }
}

impl<V> CommandMap<V> {
    pub fn len(&self) -> usize {
        self.in_window + self.aside.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts `value` for `id`, returning what `id` held before.
    pub fn insert(&mut self, id: CommandId, value: V) -> Option<V> {
        let id = id.0;
        if self.window.is_empty() {
            // Start the window at `id`, unless that would put entries aside above its base.
            let floor = self.aside.last_key_value().map_or(0, |(last, _)| last + 1);
            if id >= floor {
                self.base = id;
            }
        }
        if id < self.base {
            return self.aside.insert(id, value);
        }
        let slot = usize::try_from(id - self.base).unwrap_or(usize::MAX);
        if slot >= self.window.len() {
            let gap = slot - self.window.len();
            if gap > SLACK + 4 * self.len() {
                // Far beyond the window: restart the window here, the live entries aside.
                self.move_all_aside();
                self.base = id;
            } else {
                self.window.resize_with(slot, || None);
            }
            self.window.push_back(Some(value));
            self.in_window += 1;
            self.compact();
            return None;
        }
        let previous = self.window[slot].replace(value);
        if previous.is_none() {
            self.in_window += 1;
        }
        previous
    }

    pub fn get(&self, id: CommandId) -> Option<&V> {
        match id.0.checked_sub(self.base) {
            Some(slot) => self.window.get(usize::try_from(slot).ok()?)?.as_ref(),
            None => self.aside.get(&id.0),
        }
    }

    pub fn remove(&mut self, id: CommandId) -> Option<V> {
        let Some(slot) = id.0.checked_sub(self.base) else {
            return self.aside.remove(&id.0);
        };
        let slot = usize::try_from(slot).ok()?;
        let removed = self.window.get_mut(slot)?.take()?;
        self.in_window -= 1;
        self.trim_front();
        self.compact();
        Some(removed)
    }

    /// Keeps only the entries for which `keep` is true, visiting them in increasing id order.
    pub fn retain(&mut self, mut keep: impl FnMut(CommandId, &mut V) -> bool) {
        self.aside.retain(|id, value| keep(CommandId(*id), value));
        for (slot, id) in self.window.iter_mut().zip(self.base..) {
            if let Some(value) = slot
                && !keep(CommandId(id), value)
            {
                *slot = None;
                self.in_window -= 1;
            }
        }
        self.trim_front();
        self.compact();
    }

    /// Every entry, in increasing id order.
    pub fn iter(&self) -> impl Iterator<Item = (CommandId, &V)> {
        let aside = self.aside.iter().map(|(id, v)| (CommandId(*id), v));
        let window = self
            .window
            .iter()
            .zip(self.base..)
            .filter_map(|(v, id)| v.as_ref().map(|v| (CommandId(id), v)));
        aside.chain(window)
    }

    /// Drops the window's leading empty slots.
    fn trim_front(&mut self) {
        while self.window.front().is_some_and(Option::is_none) {
            self.window.pop_front();
            self.base += 1;
        }
        if self.window.is_empty() {
            // Keep the memory of a window that will refill; give back a swollen one.
            if self.window.capacity() > 4 * SLACK {
                self.window.shrink_to(SLACK);
            }
        }
    }

    /// Moves the oldest entries aside while the window is mostly empty slots.
    fn compact(&mut self) {
        while self.window.len() > SLACK + 4 * self.in_window {
            if let Some(Some(value)) = self.window.pop_front() {
                self.in_window -= 1;
                self.aside.insert(self.base, value);
            }
            self.base += 1;
            self.trim_front();
        }
    }

    /// Empties the window into `aside`; the caller sets a new base above it.
    fn move_all_aside(&mut self) {
        let base = self.base;
        for (value, id) in self.window.drain(..).zip(base..) {
            if let Some(value) = value {
                self.aside.insert(id, value);
            }
        }
        self.in_window = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// Insert the next id, `skip` ids past the last one.
        InsertNext {
            skip: u64,
        },
        /// Insert an id `back` below the newest one.
        InsertBack {
            back: u64,
        },
        /// Remove the live entry at this position (mod the count), or a random id.
        Remove {
            pick: usize,
        },
        RemoveAbsent {
            id: u64,
        },
        /// Keep the entries whose id plus value is not a multiple of `modulus`.
        Retain {
            modulus: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..3).prop_map(|skip| Op::InsertNext { skip }),
            1 => (0u64..500).prop_map(|back| Op::InsertBack { back }),
            1 => (0u64..100_000).prop_map(|skip| Op::InsertNext { skip }),
            5 => any::<usize>().prop_map(|pick| Op::Remove { pick }),
            1 => (0u64..2_000).prop_map(|id| Op::RemoveAbsent { id }),
            1 => (2u64..5).prop_map(|modulus| Op::Retain { modulus }),
        ]
    }

    proptest! {
        /// Against a BTreeMap: the same answers to every insert, get and remove, the same
        /// entries in the same order, and the window bounded by what is live.
        #[test]
        fn behaves_as_an_ordered_map(ops in proptest::collection::vec(op(), 0..600)) {
            let mut map = CommandMap::default();
            let mut reference = BTreeMap::new();
            let mut newest = 0u64;
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::InsertNext { skip } => {
                        newest += 1 + skip;
                        prop_assert_eq!(
                            map.insert(CommandId(newest), n),
                            reference.insert(newest, n)
                        );
                    }
                    Op::InsertBack { back } => {
                        let id = newest.saturating_sub(back);
                        prop_assert_eq!(map.insert(CommandId(id), n), reference.insert(id, n));
                    }
                    Op::Remove { pick } => {
                        if reference.is_empty() {
                            continue;
                        }
                        let id = *reference.keys().nth(pick % reference.len()).unwrap();
                        prop_assert_eq!(map.remove(CommandId(id)), reference.remove(&id));
                        prop_assert_eq!(map.remove(CommandId(id)), None);
                    }
                    Op::RemoveAbsent { id } => {
                        prop_assert_eq!(map.remove(CommandId(id)), reference.remove(&id));
                    }
                    Op::Retain { modulus } => {
                        let mut seen = Vec::new();
                        map.retain(|id, v| {
                            seen.push(id.0);
                            !(id.0 + *v as u64).is_multiple_of(modulus)
                        });
                        let expected_seen: Vec<u64> = reference.keys().copied().collect();
                        prop_assert_eq!(seen, expected_seen);
                        reference.retain(|id, v| !(*id + *v as u64).is_multiple_of(modulus));
                    }
                }
                prop_assert_eq!(map.len(), reference.len());
                prop_assert!(map.window.len() <= SLACK + 4 * map.len() + 1);
                let entries: Vec<(u64, usize)> = map.iter().map(|(id, v)| (id.0, *v)).collect();
                let expected: Vec<(u64, usize)> = reference.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(entries, expected);
                for id in newest.saturating_sub(5)..=newest + 1 {
                    prop_assert_eq!(map.get(CommandId(id)), reference.get(&id));
                }
            }
        }
    }

    #[test]
    fn commands_finishing_in_order_keep_the_window_short() {
        let mut map = CommandMap::default();
        for id in 1..100_000u64 {
            map.insert(CommandId(id), id);
            if id > 10 {
                assert_eq!(map.remove(CommandId(id - 10)), Some(id - 10));
            }
        }
        assert_eq!(map.len(), 10);
        assert!(map.aside.is_empty());
        assert!(map.window.len() <= 11, "{}", map.window.len());
    }

    #[test]
    fn a_command_stuck_in_flight_moves_aside_instead_of_stretching_the_window() {
        let mut map = CommandMap::default();
        map.insert(CommandId(1), 1);
        for id in 2..10_000u64 {
            map.insert(CommandId(id), id);
            map.remove(CommandId(id));
        }
        assert_eq!(map.len(), 1);
        assert!(map.window.len() <= SLACK + 4, "{}", map.window.len());
        assert_eq!(map.get(CommandId(1)), Some(&1));
        assert_eq!(map.remove(CommandId(1)), Some(1));
        assert!(map.is_empty());
    }
}
