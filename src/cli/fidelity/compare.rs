//! Judging the simulated side against the real one: the same rung for every fault, and
//! recovery and provisioning times whose distributions are close (two-sample
//! Kolmogorov–Smirnov distance).

use super::real::RealRun;
use super::simulated::SimRun;
use super::spec::Judge;
use serde::Serialize;

/// One round of the schedule on both sides.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoundRow {
    pub round: usize,
    pub agent: u32,
    pub fault: String,
    pub at_ms: u64,
    /// 1–3, 4 for an alert, 0 when the agent never stopped; None when the real round failed.
    pub real_rung: Option<u8>,
    pub real_recovery_ms: Option<u64>,
    /// Seeds per rung the simulator chose, `[rung 0, 1, 2, 3, alert]`.
    pub sim_rungs: [u32; 5],
    pub same_rung: bool,
    /// Why the real round has no verdict.
    pub error: Option<String>,
}

/// A real and a simulated distribution of one measure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DistributionRow {
    pub measure: String,
    pub real_n: usize,
    pub sim_n: usize,
    pub real_p50_ms: Option<u64>,
    pub sim_p50_ms: Option<u64>,
    pub ks: Option<f64>,
    /// The distance two samples of these sizes drawn from one distribution exceed only 5% of
    /// the time: a KS below it is as close as these sample sizes can show.
    pub ks_noise: Option<f64>,
    /// None when too few real samples to judge.
    pub passed: Option<bool>,
    #[serde(skip)]
    pub real: Vec<u64>,
    #[serde(skip)]
    pub sim: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub rounds: Vec<RoundRow>,
    pub distributions: Vec<DistributionRow>,
    pub ks_max: f64,
    pub min_samples: usize,
    /// Recreates after the schedule that provisioned, and why the one that did not failed.
    pub recreated: usize,
    pub recreate_failure: Option<String>,
    pub passed: bool,
}

pub fn compare(real: &RealRun, sim: &SimRun, judge: &Judge) -> Comparison {
    let mut rounds = Vec::new();
    for (k, (round, simulated)) in real.rounds.iter().zip(&sim.rounds).enumerate() {
        let mut sim_rungs = [0u32; 5];
        for (rung, _) in simulated {
            sim_rungs[usize::from((*rung).min(4))] += 1;
        }
        let (real_rung, real_recovery_ms, error) = match &round.outcome {
            Ok(resolved) => (Some(resolved.rung), resolved.recovery_ms, None),
            Err(error) => (None, None, Some(error.clone())),
        };
        let same_rung = real_rung.is_some_and(|rung| {
            !simulated.is_empty() && simulated.iter().all(|(sim_rung, _)| *sim_rung == rung)
        });
        rounds.push(RoundRow {
            round: k + 1,
            agent: round.agent,
            fault: round.fault.name().to_owned(),
            at_ms: round.at_ms,
            real_rung,
            real_recovery_ms,
            sim_rungs,
            same_rung,
            error,
        });
    }
    let mut distributions = Vec::new();
    let mut faults: Vec<&str> = rounds.iter().map(|r| r.fault.as_str()).collect();
    faults.sort_unstable();
    faults.dedup();
    for fault in faults {
        let mut real_times = Vec::new();
        let mut sim_times = Vec::new();
        for (round, simulated) in real.rounds.iter().zip(&sim.rounds) {
            if round.fault.name() != fault {
                continue;
            }
            if let Ok(resolved) = &round.outcome {
                real_times.extend(resolved.recovery_ms);
            }
            sim_times.extend(simulated.iter().filter_map(|(_, recovery)| *recovery));
        }
        distributions.push(distribution(
            format!("recovery: {fault}"),
            real_times,
            sim_times,
            judge,
        ));
    }
    distributions.push(distribution(
        "provisioning".into(),
        real.provisioning_ms.clone(),
        sim.provisioning_ms.clone(),
        judge,
    ));
    let recreate_failure = real.recreates.iter().find_map(|r| r.outcome.clone().err());
    let passed = rounds.iter().all(|r| r.same_rung)
        && distributions.iter().all(|d| d.passed != Some(false))
        && recreate_failure.is_none();
    Comparison {
        rounds,
        distributions,
        ks_max: judge.ks_max,
        min_samples: judge.min_samples,
        recreated: real.recreates.iter().filter(|r| r.outcome.is_ok()).count(),
        recreate_failure,
        passed,
    }
}

fn distribution(
    measure: String,
    mut real: Vec<u64>,
    mut sim: Vec<u64>,
    judge: &Judge,
) -> DistributionRow {
    real.sort_unstable();
    sim.sort_unstable();
    let ks = (!real.is_empty() && !sim.is_empty()).then(|| ks_two_sample(&real, &sim));
    let judged = real.len() >= judge.min_samples && !sim.is_empty();
    DistributionRow {
        measure,
        real_n: real.len(),
        sim_n: sim.len(),
        real_p50_ms: median(&real),
        sim_p50_ms: median(&sim),
        ks: ks.map(|d| (d * 1_000.0).round() / 1_000.0),
        ks_noise: ks_critical_95(real.len(), sim.len()).map(|d| (d * 1_000.0).round() / 1_000.0),
        passed: judged.then(|| ks.is_some_and(|d| d <= judge.ks_max)),
        real,
        sim,
    }
}

fn median(sorted: &[u64]) -> Option<u64> {
    (!sorted.is_empty()).then(|| sorted[(sorted.len() - 1) / 2])
}

/// sup |F_a(x) − F_b(x)| over both samples; both sorted ascending and non-empty.
pub fn ks_two_sample(a: &[u64], b: &[u64]) -> f64 {
    assert!(!a.is_empty() && !b.is_empty(), "KS needs two samples");
    assert!(a.is_sorted() && b.is_sorted(), "KS samples are sorted");
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut distance) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        // Step past every copy of the smaller value on both sides before comparing: ties
        // move both empirical CDFs at once.
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] == x {
            i += 1;
        }
        while j < b.len() && b[j] == x {
            j += 1;
        }
        distance = distance.max((i as f64 / n - j as f64 / m).abs());
    }
    distance
}

/// The asymptotic 95% critical value of the two-sample KS distance, c(0.05)·√((n+m)/(nm)):
/// with 8 real samples against 80 simulated it is 0.50, so a perfect simulator can fail a 0.2
/// target; with ten simulated samples to each real one it is under 0.2 from 52 real samples.
pub fn ks_critical_95(n: usize, m: usize) -> Option<f64> {
    const C_95: f64 = 1.358;
    (n > 0 && m > 0).then(|| {
        let (n, m) = (n as f64, m as f64);
        C_95 * ((n + m) / (n * m)).sqrt()
    })
}

/// Step points of a sample's empirical CDF, for the plots.
pub fn cdf_points(sorted: &[u64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    let mut points = vec![(0.0, 0.0)];
    for (i, &x) in sorted.iter().enumerate() {
        if sorted.get(i + 1) != Some(&x) {
            points.push((x as f64 / 1_000.0, (i + 1) as f64 / n));
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ks_is_zero_for_the_same_sample_and_one_for_disjoint_ones() {
        assert_eq!(ks_two_sample(&[1, 2, 3], &[1, 2, 3]), 0.0);
        assert_eq!(ks_two_sample(&[1, 2, 3], &[10, 20]), 1.0);
        // F_a jumps to 1/2 at 1, F_b is still 0 there.
        assert_eq!(ks_two_sample(&[1, 5], &[5, 5]), 0.5);
    }

    #[test]
    fn the_noise_floor_shrinks_with_the_samples() {
        assert_eq!(ks_critical_95(0, 10), None);
        let small = ks_critical_95(8, 80).unwrap();
        let large = ks_critical_95(64, 640).unwrap();
        assert!((small - 0.503).abs() < 0.001, "{small}");
        assert!(large < 0.2 && large < small, "{large}");
    }

    proptest! {
        #[test]
        fn ks_is_a_symmetric_distance_within_zero_and_one(
            mut a in prop::collection::vec(0u64..50, 1..40),
            mut b in prop::collection::vec(0u64..50, 1..40),
        ) {
            a.sort_unstable();
            b.sort_unstable();
            let d = ks_two_sample(&a, &b);
            prop_assert!((0.0..=1.0).contains(&d));
            prop_assert_eq!(d, ks_two_sample(&b, &a));
            // The brute-force definition, over every point of either sample.
            let cdf = |s: &[u64], x: u64| s.iter().filter(|&&v| v <= x).count() as f64 / s.len() as f64;
            let brute = a.iter().chain(&b).map(|&x| (cdf(&a, x) - cdf(&b, x)).abs()).fold(0.0, f64::max);
            prop_assert!((d - brute).abs() < 1e-12, "{} vs {}", d, brute);
        }
    }
}
