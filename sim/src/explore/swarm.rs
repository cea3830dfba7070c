//! One seed's variant of a scenario: which faults happen, how often, and the knobs the engine
//! runs with.

use crate::scenario::{self, Scenario};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The swarm's own ChaCha stream: no component of the simulator uses stream `u32::MAX << 32`,
/// so the variant's draws never coincide with the run's.
const SWARM_STREAM: u64 = (u32::MAX as u64) << 32;

/// Chance that one fault class is switched off entirely for a seed. Swarm testing's point: a
/// run without crashes explores the states crashes would have cut short.
const FAULT_OFF: f64 = 0.35;

/// The variant of `base` that `seed` picks, with `seed` as its seed. Faults: each agent-fault
/// rate is zeroed or scaled ×0.5–×8, node failures are on or off, churn scaled ×0–×4, the
/// scheduled node losses kept or dropped. Knobs: overcommit 1.5–4, ordered watermarks,
/// restart intensity 1–5, hang probe failures 1–5, starts per node 1–8, snapshot interval
/// 10 min–2 h, reservation margin 0–0.5. The variant passes every check a scenario file does;
/// should one draw not, the base with only its seed changed is returned.
pub fn swarm(base: &Scenario, seed: u64) -> Scenario {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(SWARM_STREAM);
    let mut s = base.clone();
    s.seed = seed;
    vary_faults(&mut s, &mut rng);
    vary_knobs(&mut s, &mut rng);
    let valid = toml::to_string(&s)
        .ok()
        .and_then(|text| scenario::parse_str(&text, "<swarm>").ok());
    let mut fallback = base.clone();
    fallback.seed = seed;
    let variant = valid.unwrap_or(fallback);
    assert_eq!(variant.seed, seed, "invariant: a variant runs its own seed");
    variant
}

fn vary_faults(s: &mut Scenario, rng: &mut ChaCha8Rng) {
    for class in &mut s.fleet.classes {
        let faults = &mut class.faults;
        for rate in [
            &mut faults.crashes_per_day,
            &mut faults.hangs_per_day,
            &mut faults.config_corruptions_per_day,
            &mut class.memory.spikes_per_day,
        ] {
            *rate = scaled_or_off(*rate, rng);
        }
        faults.crash_poisons_state = if unit(rng) < FAULT_OFF {
            0.0
        } else {
            (faults.crash_poisons_state * between(rng, 0.5, 2.0)).min(1.0)
        };
    }
    let nf = &mut s.node_faults;
    nf.failures_per_node_per_day = if unit(rng) < 0.5 {
        0.0
    } else if nf.failures_per_node_per_day > 0.0 {
        nf.failures_per_node_per_day * between(rng, 0.5, 8.0)
    } else {
        between(rng, 0.2, 3.0)
    };
    if nf.repair_time.ms() == 0 {
        nf.repair_time = scenario::Span(carapace_engine::Millis(
            between(rng, 60_000.0, 1_800_000.0) as u64,
        ));
    }
    if unit(rng) < 0.3 {
        nf.scheduled.clear();
    }
    s.churn.creates_per_hour *= between(rng, 0.0, 4.0);
}

fn vary_knobs(s: &mut Scenario, rng: &mut ChaCha8Rng) {
    let p = &mut s.policy;
    p.placement.overcommit_ratio = between(rng, 1.5, 4.0);
    p.placement.reservation_margin = between(rng, 0.0, 0.5);
    p.placement.max_starts_per_node = between(rng, 1.0, 8.99) as u16;
    let stop_placing = between(rng, 0.6, 0.9);
    let migrate = between(rng, stop_placing, (stop_placing + 0.1).min(0.97));
    let evict = between(rng, migrate, 0.99);
    p.density.watermark_stop_placing = stop_placing;
    p.density.watermark_migrate = migrate;
    p.density.watermark_evict = evict;
    p.supervisor.restart_intensity = between(rng, 1.0, 5.99) as u32;
    p.supervisor.hang_probe_failures = between(rng, 1.0, 5.99) as u32;
    p.supervisor.crash_loop_exits = between(rng, 1.0, 3.99) as u32;
    p.recovery.snapshot_interval_ms = between(rng, 600_000.0, 7_200_000.0) as u64;
}

/// Off with probability [`FAULT_OFF`], else scaled ×0.5–×8 (log-uniform).
fn scaled_or_off(rate: f64, rng: &mut ChaCha8Rng) -> f64 {
    let off = unit(rng) < FAULT_OFF;
    let factor = 2f64.powf(between(rng, -1.0, 3.0));
    if off { 0.0 } else { rate * factor }
}

fn between(rng: &mut ChaCha8Rng, low: f64, high: f64) -> f64 {
    low + (high - low) * unit(rng)
}

/// Uniform in [0, 1).
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = include_str!("../../../scenarios/smoke.toml");

    #[test]
    fn a_seed_picks_one_valid_variant_and_seeds_differ() {
        let base = scenario::parse_str(SMOKE, "smoke.toml").unwrap();
        let a = swarm(&base, 7);
        assert_eq!(a, swarm(&base, 7), "the same seed, the same variant");
        assert_eq!(a.seed, 7);
        assert_ne!(a.policy, base.policy, "the knobs moved");
        let variants: Vec<Scenario> = (0..40).map(|seed| swarm(&base, seed)).collect();
        for v in &variants {
            let text = toml::to_string(v).unwrap();
            assert_eq!(&scenario::parse_str(&text, "variant").unwrap(), v);
            assert!((1.5..=4.0).contains(&v.policy.placement.overcommit_ratio));
        }
        let crashes_off = variants
            .iter()
            .filter(|v| v.fleet.classes[0].faults.crashes_per_day == 0.0)
            .count();
        assert!(
            (4..36).contains(&crashes_off),
            "some seeds run without crashes, most with: {crashes_off} of 40 off"
        );
    }
}
