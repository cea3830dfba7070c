//! `carapace check` and `carapace baseline`: every scenario run over K seeds, each SLO judged
//! on its p90 over seeds, compared against a committed baseline. This module holds what both
//! share: finding the scenario files, running them, and the per-SLO values over seeds.
//!
//! "p90 over seeds" is the value at least 90% of seeds do as well as (nearest rank): the 90th
//! percentile of an SLO that must stay low (`<=`), the 10th percentile of one that must stay
//! high (`>=`). One lucky seed cannot hide a bad tail, and one unlucky seed among twenty
//! cannot fail a build, which is how Borg compared policies.

pub mod baseline;
pub mod check;
mod junit;

use super::runner::{Job, run_all};
use super::sim::SimError;
use carapace_sim::report::Report;
use carapace_sim::scenario::{self, Scenario};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Seeds per scenario when neither `--seeds` nor the baseline says.
pub const DEFAULT_SEEDS: u32 = 5;
/// More seeds than this is a typo, not a gate.
pub const MAX_SEEDS: u32 = 1_000;
/// More scenario files than this in one gate is a wrong directory.
const MAX_SCENARIOS: usize = 1_000;
/// The percentile of seeds an SLO is judged on.
const SEEDS_PERCENT: u32 = 90;

/// A scenario file, parsed, with the directory its traces resolve against.
#[derive(Debug, Clone)]
pub struct Input {
    pub file: String,
    pub scenario: Scenario,
    pub base: PathBuf,
}

/// Why a gate cannot run: bad input, exit 2, with every message to print.
#[derive(Debug)]
pub struct BadInput(pub Vec<String>);

impl BadInput {
    pub fn one(message: impl Into<String>) -> BadInput {
        BadInput(vec![message.into()])
    }
}

/// Expands the arguments (a directory means every `*.toml` in it, sorted) and parses every
/// scenario. Any problem anywhere is reported, and nothing runs.
pub fn load_inputs(args: &[PathBuf]) -> Result<Vec<Input>, BadInput> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    for arg in args {
        match expand(arg) {
            Ok(found) => files.extend(found),
            Err(message) => problems.push(message),
        }
    }
    if files.len() > MAX_SCENARIOS {
        problems.push(format!(
            "{} scenario files; a gate takes at most {MAX_SCENARIOS}",
            files.len()
        ));
    }
    let mut inputs: Vec<Input> = Vec::with_capacity(files.len());
    for path in files {
        match scenario::load_file(&path) {
            Ok(scenario) => inputs.push(Input {
                file: path.display().to_string(),
                base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
                scenario,
            }),
            Err(error) => problems.push(error.to_string()),
        }
    }
    for (i, input) in inputs.iter().enumerate() {
        let name = &input.scenario.name;
        if let Some(first) = inputs[..i].iter().find(|o| &o.scenario.name == name) {
            problems.push(format!(
                "{}: scenario name `{name}` is also the name of {}; names key the baseline and must be unique",
                input.file, first.file
            ));
        }
    }
    if problems.is_empty() {
        Ok(inputs)
    } else {
        Err(BadInput(problems))
    }
}

fn expand(arg: &Path) -> Result<Vec<PathBuf>, String> {
    if !arg.is_dir() {
        return Ok(vec![arg.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(arg).map_err(|e| format!("{}: cannot read: {e}", arg.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: cannot read: {e}", arg.display()))?
            .path();
        if path.is_file() && path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no *.toml scenario files in it", arg.display()));
    }
    Ok(files)
}

/// The seeds a scenario runs with: its own seed and the K − 1 after it.
pub fn seeds_of(scenario: &Scenario, seeds: u32) -> Result<Vec<u64>, String> {
    (0..u64::from(seeds))
        .map(|i| {
            scenario
                .seed
                .checked_add(i)
                .ok_or_else(|| format!("seed {} + {i} overflows u64", scenario.seed))
        })
        .collect()
}

/// One scenario's runs, reduced to what the gate judges.
#[derive(Debug, Clone, Serialize)]
pub struct OverSeeds {
    pub scenario: String,
    pub file: String,
    pub seeds: Vec<u64>,
    pub command_stream_hashes: Vec<String>,
    pub invariant_violations: Vec<SeedViolation>,
    pub slo: Vec<SloOverSeeds>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedViolation {
    pub seed: u64,
    pub violation: String,
}

/// One SLO over every seed.
#[derive(Debug, Clone, Serialize)]
pub struct SloOverSeeds {
    pub name: String,
    /// `<=` or `>=`.
    pub comparison: String,
    pub target: f64,
    pub unit: String,
    /// Per seed, in seed order; `None` where that run had nothing to measure.
    pub values: Vec<Option<f64>>,
    /// The value at least 90% of seeds do as well as; `None` when no seed had samples.
    pub p90_over_seeds: Option<f64>,
}

impl SloOverSeeds {
    pub fn breached(&self) -> bool {
        self.p90_over_seeds
            .is_some_and(|v| !within(v, self.comparison_is_at_most(), self.target))
    }

    pub fn comparison_is_at_most(&self) -> bool {
        self.comparison == "<="
    }
}

/// `value` meets `bound` (a small epsilon forgives floating-point noise in the arithmetic).
pub fn within(value: f64, at_most: bool, bound: f64) -> bool {
    const EPSILON: f64 = 1e-9;
    if at_most {
        value <= bound + EPSILON
    } else {
        value >= bound - EPSILON
    }
}

/// Runs every input over its seeds on every core; results come back in input order.
pub fn run(inputs: &[Input], seeds: u32, label: &str) -> Result<Vec<OverSeeds>, BadInput> {
    assert!((1..=MAX_SEEDS).contains(&seeds), "seeds checked by clap");
    let mut seed_lists = Vec::with_capacity(inputs.len());
    for input in inputs {
        seed_lists.push(
            seeds_of(&input.scenario, seeds)
                .map_err(|e| BadInput::one(format!("{}: {e}", input.file)))?,
        );
    }
    let mut jobs = Vec::with_capacity(inputs.len() * seeds as usize);
    for (input, list) in inputs.iter().zip(&seed_lists) {
        for &seed in list {
            let mut scenario = input.scenario.clone();
            scenario.seed = seed;
            jobs.push(Job {
                scenario,
                base: &input.base,
            });
        }
    }
    let mut results = run_all(jobs, label, |_, _| {}).into_iter();
    let mut out = Vec::with_capacity(inputs.len());
    let mut problems = Vec::new();
    for (input, list) in inputs.iter().zip(seed_lists) {
        let mut reports = Vec::with_capacity(list.len());
        for (seed, result) in list.iter().zip(results.by_ref()) {
            match result {
                Ok(report) => reports.push(report),
                Err(SimError::BadInput(message)) => {
                    problems.push(format!("{} (seed {seed}): {message}", input.file));
                }
            }
        }
        if reports.len() == list.len() {
            out.push(over_seeds(input, list, &reports));
        }
    }
    assert!(results.next().is_none(), "one result per job");
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(BadInput(problems))
    }
}

/// Reduces one scenario's reports (one per seed, in seed order) to its SLOs over seeds.
fn over_seeds(input: &Input, seeds: Vec<u64>, reports: &[Report]) -> OverSeeds {
    assert_eq!(seeds.len(), reports.len(), "one report per seed");
    let first = &reports.first().expect("at least one seed").summary;
    let slo = first
        .slo
        .iter()
        .enumerate()
        .map(|(i, verdict)| {
            let values: Vec<Option<f64>> = reports
                .iter()
                .map(|r| {
                    let v = &r.summary.slo[i];
                    assert_eq!(v.name, verdict.name, "every seed judges the same SLOs");
                    v.measured
                })
                .collect();
            SloOverSeeds {
                name: verdict.name.clone(),
                comparison: verdict.comparison.to_owned(),
                target: verdict.target,
                unit: verdict.unit.to_owned(),
                p90_over_seeds: p90_over_seeds(&values, verdict.comparison == "<="),
                values,
            }
        })
        .collect();
    OverSeeds {
        scenario: input.scenario.name.clone(),
        file: input.file.clone(),
        command_stream_hashes: reports
            .iter()
            .map(|r| r.summary.command_stream_hash.clone())
            .collect(),
        invariant_violations: seeds
            .iter()
            .zip(reports)
            .filter_map(|(&seed, r)| {
                r.summary
                    .invariant_violation
                    .clone()
                    .map(|violation| SeedViolation { seed, violation })
            })
            .collect(),
        seeds,
        slo,
    }
}

/// The value at least 90% of seeds do as well as: the 90th percentile when lower is better
/// (`at_most`), the 10th when higher is better. Seeds without samples are left out; `None`
/// when none had any.
pub fn p90_over_seeds(values: &[Option<f64>], at_most: bool) -> Option<f64> {
    let sampled: Vec<f64> = values.iter().flatten().copied().collect();
    let percent = if at_most {
        SEEDS_PERCENT
    } else {
        100 - SEEDS_PERCENT
    };
    percentile_nearest_rank(&sampled, percent)
}

/// The nearest-rank percentile: the smallest value with at least `percent`% of the values at
/// or below it. Integer arithmetic, so the rank never depends on how 0.9 rounds.
pub fn percentile_nearest_rank(values: &[f64], percent: u32) -> Option<f64> {
    assert!(percent <= 100, "a percentile is at most 100");
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as u64;
    let rank = (u64::from(percent) * n).div_ceil(100).max(1);
    assert!(rank >= 1 && rank <= n, "nearest rank within 1..=n");
    Some(sorted[(rank - 1) as usize])
}

/// Writes to a temporary sibling and renames, so a reader (or a CI step that uploads the
/// file) never sees half of it. Creates the parent directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A value as the tables print it: whole numbers without decimals, others with three.
pub fn format_value(value: f64, unit: &str) -> String {
    let number = if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    };
    if unit.is_empty() {
        number
    } else {
        format!("{number} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_of_five_seeds_is_the_worst_seed() {
        let values = [3.0, 1.0, 5.0, 2.0, 4.0];
        assert_eq!(percentile_nearest_rank(&values, 90), Some(5.0));
        assert_eq!(percentile_nearest_rank(&values, 10), Some(1.0));
        assert_eq!(percentile_nearest_rank(&values, 50), Some(3.0));
    }

    #[test]
    fn nearest_rank_of_twenty_seeds_forgives_two() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile_nearest_rank(&values, 90), Some(18.0));
        assert_eq!(percentile_nearest_rank(&values, 10), Some(2.0));
        assert_eq!(percentile_nearest_rank(&values, 100), Some(20.0));
        assert_eq!(percentile_nearest_rank(&values, 0), Some(1.0));
    }

    #[test]
    fn nearest_rank_of_ten_does_not_depend_on_float_rounding() {
        // In f64, 0.28 * 25 is 7.000000000000001, whose ceiling would be rank 8.
        let values: Vec<f64> = (1..=25).map(f64::from).collect();
        assert_eq!(percentile_nearest_rank(&values, 28), Some(7.0));
        assert_eq!(percentile_nearest_rank(&values, 90), Some(23.0));
        assert_eq!(percentile_nearest_rank(&values, 10), Some(3.0));
    }

    #[test]
    fn nearest_rank_of_nothing_and_of_one() {
        assert_eq!(percentile_nearest_rank(&[], 90), None);
        assert_eq!(percentile_nearest_rank(&[7.5], 90), Some(7.5));
        assert_eq!(percentile_nearest_rank(&[7.5], 10), Some(7.5));
    }

    #[test]
    fn p90_over_seeds_takes_the_bad_tail_and_skips_seeds_without_samples() {
        let values = [Some(0.9), None, Some(0.7), Some(1.0), Some(0.95), None];
        // Higher is better: the 10th percentile of the four sampled seeds.
        assert_eq!(p90_over_seeds(&values, false), Some(0.7));
        // Lower is better: the 90th percentile.
        assert_eq!(p90_over_seeds(&values, true), Some(1.0));
        assert_eq!(p90_over_seeds(&[None, None], true), None);
    }

    #[test]
    fn within_forgives_float_noise_only() {
        assert!(within(1.000_000_000_1, true, 1.0));
        assert!(!within(1.001, true, 1.0));
        assert!(within(0.999_999_999_9, false, 1.0));
        assert!(!within(0.999, false, 1.0));
    }
}
