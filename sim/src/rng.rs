//! Randomness addressed by (component, entity, draw number).
//!
//! Every draw comes from the scenario seed's ChaCha8 keystream at a position fixed by what it
//! is for: the n-th crash time of agent 17 is the same number whatever else the run contains.
//! So adding a component, a fault type or an agent never shifts another component's draws,
//! and the order in which events happen to be processed cannot change a value either.

mod block;

use block::Block;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a draw is for. The discriminant is the ChaCha stream's high bits: never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Component {
    Crash = 1,
    Hang = 2,
    ConfigCorruption = 3,
    Spike = 4,
    Latency = 5,
    Clients = 6,
    NodeFailure = 7,
    Baseline = 8,
    Churn = 9,
    TraceAssignment = 10,
    Poison = 11,
    ProbePhase = 12,
    WarmUp = 13,
    /// Drawn by a node's failure number, not through [`Counters`].
    NodeLease = 14,
    /// The leading controller's failures and its lease at each: drawn by failure number.
    ControllerFailure = 15,
    ControllerLease = 16,
}

/// The keystream of `ChaCha8Rng::seed_from_u64(seed)`, read one addressed word at a time.
#[derive(Debug)]
pub struct Streams {
    block: Block,
}

impl Streams {
    pub fn new(seed: u64) -> Streams {
        Streams {
            block: Block::new(ChaCha8Rng::seed_from_u64(seed).get_seed()),
        }
    }

    /// The `draw`-th 64-bit number of `component`'s stream for `entity`: words `2 × draw` and
    /// `2 × draw + 1` of ChaCha8 stream `component << 32 | entity`.
    pub fn u64(&mut self, component: Component, entity: u32, draw: u32) -> u64 {
        let stream = (u64::from(component as u32) << 32) | u64::from(entity);
        self.block.u64_at(stream, u64::from(draw) * 2)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self, component: Component, entity: u32, draw: u32) -> f64 {
        (self.u64(component, entity, draw) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Per-entity draw counters, one per component that entity uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([u32; 14]);

impl Counters {
    /// The next draw number for `component`.
    pub fn next(&mut self, component: Component) -> u32 {
        let slot = &mut self.0[component as usize];
        let draw = *slot;
        *slot += 1;
        draw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_depend_only_on_their_address() {
        let mut a = Streams::new(7);
        let mut b = Streams::new(7);
        let first = a.u64(Component::Crash, 3, 0);
        // Interleave other components' draws in b: the addressed value stays the same.
        for entity in 0..50 {
            let _ = b.u64(Component::Hang, entity, 4);
        }
        assert_eq!(b.u64(Component::Crash, 3, 0), first);
        assert_ne!(a.u64(Component::Crash, 3, 1), first);
        assert_ne!(a.u64(Component::Crash, 4, 0), first);
        assert_ne!(Streams::new(8).u64(Component::Crash, 3, 0), first);
    }

    #[test]
    fn draws_are_those_of_rand_chacha() {
        use rand::{Rng, SeedableRng};
        let mut streams = Streams::new(11_000);
        for (component, entity, draw) in [
            (Component::Crash, 0, 0),
            (Component::Latency, 10_999, 7),
            (Component::WarmUp, u32::MAX, u32::MAX),
        ] {
            let mut rng = ChaCha8Rng::seed_from_u64(11_000);
            rng.set_stream((u64::from(component as u32) << 32) | u64::from(entity));
            rng.set_word_pos(u128::from(draw) * 2);
            assert_eq!(streams.u64(component, entity, draw), rng.next_u64());
        }
    }

    #[test]
    fn unit_draws_are_uniform_enough() {
        let mut s = Streams::new(1);
        let n = 20_000;
        let mean: f64 = (0..n)
            .map(|k| s.unit(Component::Latency, 0, k))
            .sum::<f64>()
            / f64::from(n);
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    }
}
