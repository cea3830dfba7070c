//! Which memory samples a node writes to etcd. A pod samples its memory every few seconds; at
//! fleet scale writing each one would be a write per agent per interval (1,100/s for 11,000
//! agents at 10 s) for numbers that mostly did not move. A sample is written when it moved
//! by `relative` of the last one written, or when `refresh_ms` has passed since it, so the
//! controller's view is never older than that and never off by more than that fraction.

use carapace_engine::{AgentId, Instance};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Deadband {
    /// Fraction of the last written sample a new one must move by (0.05: 5%).
    pub relative: f64,
    pub refresh_ms: u64,
}

/// The last sample written per pod.
#[derive(Debug, Default)]
pub struct MemoryFilter {
    last: BTreeMap<(AgentId, Instance), (u64, u64)>,
}

impl MemoryFilter {
    /// Whether the sample of `bytes` taken at `at_ms` (the pod's clock) is written.
    pub fn admit(
        &mut self,
        band: Deadband,
        agent: AgentId,
        instance: Instance,
        at_ms: u64,
        bytes: u64,
    ) -> bool {
        let key = (agent, instance);
        let admitted = match self.last.get(&key) {
            None => true,
            Some(&(last_at, last_bytes)) => {
                let moved = bytes.abs_diff(last_bytes) as f64 >= band.relative * last_bytes as f64;
                // A restarted pod's clock starts again: an older time is a new series.
                let stale = at_ms < last_at || at_ms - last_at >= band.refresh_ms;
                moved || stale
            }
        };
        if admitted {
            self.last.insert(key, (at_ms, bytes));
        }
        admitted
    }

    /// Forgets a pod that is gone.
    pub fn forget(&mut self, agent: AgentId) {
        self.last.retain(|(a, _), _| *a != agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BAND: Deadband = Deadband {
        relative: 0.05,
        refresh_ms: 600_000,
    };

    #[test]
    fn steady_memory_is_written_once_per_refresh_and_a_move_at_once() {
        let mut filter = MemoryFilter::default();
        let (a, i) = (AgentId(1), Instance(1));
        assert!(filter.admit(BAND, a, i, 0, 1_000_000));
        assert!(!filter.admit(BAND, a, i, 10_000, 1_040_000));
        assert!(filter.admit(BAND, a, i, 20_000, 1_060_000));
        assert!(!filter.admit(BAND, a, i, 30_000, 1_060_000));
        assert!(filter.admit(BAND, a, i, 620_000, 1_060_000));
        // Another instance is another series.
        assert!(filter.admit(BAND, a, Instance(2), 630_000, 1_060_000));
        filter.forget(a);
        assert!(filter.admit(BAND, a, i, 640_000, 1_060_000));
    }

    proptest! {
        /// Whatever the samples, the last one written is within the band of the newest, or
        /// younger than the refresh period.
        #[test]
        fn the_written_view_is_never_far_from_the_truth(
            samples in proptest::collection::vec((1u64..60_000, 1u64..1 << 34), 1..200),
        ) {
            let mut filter = MemoryFilter::default();
            let (a, i) = (AgentId(1), Instance(1));
            let mut now = 0;
            let mut written = (0, 0);
            for (gap, bytes) in samples {
                now += gap;
                if filter.admit(BAND, a, i, now, bytes) {
                    written = (now, bytes);
                }
                let off = bytes.abs_diff(written.1) as f64;
                let fresh = off < BAND.relative * written.1 as f64 && now - written.0 < BAND.refresh_ms;
                prop_assert!(written == (now, bytes) || fresh);
            }
        }
    }
}
