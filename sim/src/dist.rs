//! Sampling latency distributions and Poisson arrivals. Floating point goes through `libm`, a
//! pure-Rust maths library, so samples are bit-identical on every platform.

use crate::scenario::Dist;
use carapace_engine::Millis;

/// z such that P(Z ≤ z) = 0.9 for a standard normal.
const Z90: f64 = 1.281_551_565_544_600_4;

/// A sample of `dist` from two uniforms in [0, 1).
pub fn sample(dist: &Dist, u1: f64, u2: f64) -> Millis {
    match *dist {
        Dist::Constant { value } => value.0,
        Dist::Uniform { min, max } => {
            let span = (max.ms() - min.ms()) as f64;
            Millis(min.ms() + (u1 * span) as u64)
        }
        Dist::LogNormal { median, p90 } => {
            let sigma = libm::log(p90.ms() as f64 / median.ms() as f64) / Z90;
            let z = standard_normal(u1, u2);
            let value = median.ms() as f64 * libm::exp(sigma * z);
            Millis(value.clamp(0.0, 1e15) as u64)
        }
        Dist::Deciles { deciles } => {
            let at = u1.clamp(0.0, 1.0) * 10.0;
            let index = (at as usize).min(9);
            let (low, high) = (deciles[index].ms(), deciles[index + 1].ms());
            let within = at - index as f64;
            Millis(low + (within * high.saturating_sub(low) as f64) as u64)
        }
    }
}

/// Box–Muller.
fn standard_normal(u1: f64, u2: f64) -> f64 {
    let u1 = u1.max(f64::MIN_POSITIVE);
    libm::sqrt(-2.0 * libm::log(u1)) * libm::cos(2.0 * std::f64::consts::PI * u2)
}

/// Time to the next event of a Poisson process with `per_day` events a day; `None` when the
/// rate is zero.
pub fn exponential_gap(per_day: f64, u: f64) -> Option<Millis> {
    if per_day <= 0.0 {
        return None;
    }
    let mean_ms = 86_400_000.0 / per_day;
    let gap = -libm::log(1.0 - u) * mean_ms;
    Some(Millis(gap.clamp(1.0, 1e15) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Span;

    #[test]
    fn lognormal_hits_its_median_and_p90() {
        let dist = Dist::LogNormal {
            median: Span(Millis(13_000)),
            p90: Span(Millis(16_000)),
        };
        let n = 20_000u32;
        let mut samples: Vec<u64> = (0..n)
            .map(|k| {
                let u1 = (f64::from(k) + 0.5) / f64::from(n);
                let u2 = ((f64::from(k) * 0.618_033_988_75) % 1.0 + 0.5 / f64::from(n)) % 1.0;
                sample(&dist, u1, u2).0
            })
            .collect();
        samples.sort_unstable();
        let median = samples[samples.len() / 2] as f64;
        let p90 = samples[samples.len() * 9 / 10] as f64;
        assert!((median / 13_000.0 - 1.0).abs() < 0.03, "median {median}");
        assert!((p90 / 16_000.0 - 1.0).abs() < 0.03, "p90 {p90}");
    }

    #[test]
    fn deciles_are_drawn_between_their_neighbours_and_keep_their_mass() {
        // A boot seen at one of two probe ticks: 60% at 200 ms, 40% at 300 ms.
        let ms = |v| Span(Millis(v));
        let deciles = [200, 200, 200, 200, 200, 200, 200, 300, 300, 300, 300].map(ms);
        let dist = Dist::Deciles { deciles };
        let n = 10_000u32;
        let samples: Vec<u64> = (0..n)
            .map(|k| sample(&dist, (f64::from(k) + 0.5) / f64::from(n), 0.5).0)
            .collect();
        assert!(samples.iter().all(|&v| (200..=300).contains(&v)));
        let at_200 = samples.iter().filter(|&&v| v == 200).count();
        let at_300 = samples.iter().filter(|&&v| v == 300).count();
        // The jump between the 6th and 7th decile is smeared over that tenth of the mass.
        assert!((6_000..=6_020).contains(&at_200), "{at_200} at 200 ms");
        assert_eq!(at_300, 3_000);
        assert_eq!(sample(&dist, 0.65, 0.0).0, 250);
    }

    #[test]
    fn exponential_gaps_have_the_right_mean() {
        let n = 50_000u32;
        let mean: f64 = (0..n)
            .map(|k| {
                exponential_gap(24.0, (f64::from(k) + 0.5) / f64::from(n))
                    .unwrap()
                    .0 as f64
            })
            .sum::<f64>()
            / f64::from(n);
        assert!((mean / 3_600_000.0 - 1.0).abs() < 0.01, "mean {mean}");
        assert_eq!(exponential_gap(0.0, 0.5), None);
    }
}
