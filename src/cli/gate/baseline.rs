//! `carapace baseline SCENARIO|DIR... --out FILE`: records each SLO's p90 over seeds, the
//! seeds and their command-stream hashes, so `carapace check` can tell a regression from a
//! target that still happens to hold. Only this command writes a baseline.

use super::{BadInput, DEFAULT_SEEDS, MAX_SEEDS, OverSeeds, format_value, load_inputs};
use crate::cli::EXIT_FAILED;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The version of the baseline file format this binary reads and writes.
pub const FORMAT: u32 = 1;

#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    /// Scenario files, or directories whose *.toml files are all taken (sorted).
    #[arg(required = true, value_name = "SCENARIO|DIR")]
    scenarios: Vec<PathBuf>,
    /// The baseline file to write (JSON). Tolerances already in it are kept.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Seeds per scenario: the scenario's seed and the ones after it.
    #[arg(long, default_value_t = DEFAULT_SEEDS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SEEDS)))]
    seeds: u32,
}

/// A committed baseline: per scenario and SLO, the p90 over seeds it was recorded at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub format: u32,
    /// Says what the file is and how to refresh it, for whoever opens it.
    pub about: String,
    /// Seeds every scenario was recorded with.
    pub seeds: u32,
    pub tolerances: Tolerances,
    /// By scenario name.
    pub scenarios: BTreeMap<String, ScenarioBaseline>,
}

/// How much worse than its baseline an SLO may get before it counts as a regression:
/// `relative` × |baseline| + `absolute`, in the SLO's unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    pub relative: f64,
    pub absolute: f64,
}

/// A tolerance per kind of SLO.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerances {
    /// Times (recovery, provisioning), in seconds.
    pub seconds: Tolerance,
    /// Fractions that must stay high (unnoticed incidents).
    pub fraction: Tolerance,
    /// Ratios that must stay high (density).
    pub ratio: Tolerance,
    /// Counts that must stay low (node OOM events, collateral kills, alerts).
    pub count: Tolerance,
}

impl Default for Tolerances {
    fn default() -> Self {
        Tolerances {
            seconds: Tolerance {
                relative: 0.10,
                absolute: 1.0,
            },
            fraction: Tolerance {
                relative: 0.0,
                absolute: 0.02,
            },
            ratio: Tolerance {
                relative: 0.0,
                absolute: 0.02,
            },
            count: Tolerance {
                relative: 0.0,
                absolute: 0.0,
            },
        }
    }
}

impl Tolerances {
    /// The tolerance for an SLO, by its unit and direction.
    pub fn of(&self, unit: &str, at_most: bool) -> (&'static str, Tolerance) {
        match (unit, at_most) {
            ("s", _) => ("seconds", self.seconds),
            ("x", _) => ("ratio", self.ratio),
            (_, false) => ("fraction", self.fraction),
            (_, true) => ("count", self.count),
        }
    }

    fn check(&self) -> Result<(), String> {
        for (name, t) in [
            ("seconds", self.seconds),
            ("fraction", self.fraction),
            ("ratio", self.ratio),
            ("count", self.count),
        ] {
            let ok = |v: f64| v.is_finite() && v >= 0.0;
            if !ok(t.relative) || !ok(t.absolute) {
                return Err(format!(
                    "tolerances.{name}: relative and absolute must be finite and >= 0"
                ));
            }
        }
        Ok(())
    }
}

impl Tolerance {
    /// The worst value still within tolerance of `baseline`.
    pub fn limit(&self, baseline: f64, at_most: bool) -> f64 {
        let slack = self.relative * baseline.abs() + self.absolute;
        if at_most {
            baseline + slack
        } else {
            baseline - slack
        }
    }

    /// Reads as `+10% +1 s` (or `-0.02` for an SLO that must stay high).
    pub fn describe(&self, unit: &str, at_most: bool) -> String {
        let sign = if at_most { '+' } else { '-' };
        let mut parts = Vec::new();
        if self.relative > 0.0 {
            parts.push(format!(
                "{sign}{}%",
                format_value(self.relative * 100.0, "")
            ));
        }
        if self.absolute > 0.0 || parts.is_empty() {
            parts.push(format!("{sign}{}", format_value(self.absolute, unit)));
        }
        parts.join(" ")
    }
}

/// One scenario as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioBaseline {
    /// Where it was read from, for the reader; scenarios are matched by name.
    pub file: String,
    pub seeds: Vec<u64>,
    /// Per seed: equal hashes mean the engine issued exactly the same commands.
    pub command_stream_hashes: Vec<String>,
    /// By SLO name.
    pub slo: BTreeMap<String, SloBaseline>,
}

/// One SLO as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloBaseline {
    pub comparison: String,
    pub target: f64,
    pub unit: String,
    /// `None` when no seed had anything to measure.
    pub p90_over_seeds: Option<f64>,
}

impl Baseline {
    /// Reads and checks a baseline file; every problem is bad input.
    pub fn read(path: &Path) -> Result<Baseline, BadInput> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BadInput::one(format!("{}: cannot read the baseline: {e}", path.display()))
        })?;
        let baseline: Baseline = serde_json::from_str(&text).map_err(|e| {
            BadInput::one(format!(
                "{}:{}:{}: not a carapace baseline: {e}",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        let problem = |message: String| BadInput::one(format!("{}: {message}", path.display()));
        if baseline.format != FORMAT {
            return Err(problem(format!(
                "baseline format {} (this carapace reads format {FORMAT}); refresh it with `carapace baseline`",
                baseline.format
            )));
        }
        if !(1..=MAX_SEEDS).contains(&baseline.seeds) {
            return Err(problem(format!(
                "seeds: {} is not in 1..={MAX_SEEDS}",
                baseline.seeds
            )));
        }
        baseline.tolerances.check().map_err(problem)?;
        for (name, s) in &baseline.scenarios {
            if s.seeds.len() != baseline.seeds as usize
                || s.command_stream_hashes.len() != s.seeds.len()
            {
                return Err(problem(format!(
                    "scenario `{name}`: {} seeds and {} hashes recorded, the file says {}",
                    s.seeds.len(),
                    s.command_stream_hashes.len(),
                    baseline.seeds
                )));
            }
        }
        Ok(baseline)
    }

    /// Builds a baseline from runs.
    pub fn of(runs: &[OverSeeds], seeds: u32, tolerances: Tolerances) -> Baseline {
        let scenarios = runs
            .iter()
            .map(|run| {
                assert_eq!(
                    run.seeds.len(),
                    seeds as usize,
                    "every scenario ran every seed"
                );
                let slo = run
                    .slo
                    .iter()
                    .map(|s| {
                        let recorded = SloBaseline {
                            comparison: s.comparison.clone(),
                            target: s.target,
                            unit: s.unit.clone(),
                            p90_over_seeds: s.p90_over_seeds,
                        };
                        (s.name.clone(), recorded)
                    })
                    .collect();
                let recorded = ScenarioBaseline {
                    file: run.file.clone(),
                    seeds: run.seeds.clone(),
                    command_stream_hashes: run.command_stream_hashes.clone(),
                    slo,
                };
                (run.scenario.clone(), recorded)
            })
            .collect();
        Baseline {
            format: FORMAT,
            about:
                "Written by `carapace baseline`; read by `carapace check --baseline`, which never \
                    rewrites it. Refresh on purpose and review the diff: see docs/ci.md."
                    .to_owned(),
            seeds,
            tolerances,
            scenarios,
        }
    }

    /// Pretty JSON with a final newline: stable bytes, readable diffs.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("a baseline serialises");
        json.push('\n');
        json
    }
}

pub fn run(args: BaselineArgs) -> anyhow::Result<ExitCode> {
    let tolerances = match existing_tolerances(&args.out) {
        Ok(t) => t,
        Err(bad) => return Ok(super::check::bad_input(bad)),
    };
    let inputs = match load_inputs(&args.scenarios) {
        Ok(inputs) => inputs,
        Err(bad) => return Ok(super::check::bad_input(bad)),
    };
    let runs = match super::run(&inputs, args.seeds, "baseline") {
        Ok(runs) => runs,
        Err(bad) => return Ok(super::check::bad_input(bad)),
    };
    let outcomes: Vec<_> = runs
        .iter()
        .map(|r| super::check::judge(r, None, &tolerances))
        .collect();
    print!("{}", super::check::table(&outcomes, args.seeds));
    if let Some(bad) = runs.iter().find(|r| !r.invariant_violations.is_empty()) {
        let v = &bad.invariant_violations[0];
        eprintln!(
            "carapace baseline: not written: scenario `{}` broke an invariant at seed {}: {}",
            bad.scenario, v.seed, v.violation
        );
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    let baseline = Baseline::of(&runs, args.seeds, tolerances);
    super::write_atomically(&args.out, baseline.to_json().as_bytes())
        .with_context(|| format!("writing the baseline to {}", args.out.display()))?;
    let breached = outcomes.iter().filter(|o| !o.passed()).count();
    if breached > 0 {
        eprintln!(
            "carapace baseline: warning: {breached} scenario(s) miss an SLO target; `carapace check` will fail on them until they meet it"
        );
    }
    println!(
        "wrote {} ({} scenarios x {} seeds)",
        args.out.display(),
        runs.len(),
        args.seeds
    );
    Ok(ExitCode::SUCCESS)
}

/// The tolerances of the baseline being replaced, so tuning them survives a refresh.
fn existing_tolerances(out: &Path) -> Result<Tolerances, BadInput> {
    if !out.exists() {
        return Ok(Tolerances::default());
    }
    Baseline::read(out).map(|b| b.tolerances).map_err(|BadInput(mut problems)| {
        problems.push(format!(
            "{}: refusing to replace a file that is not a readable baseline (its tolerances would be lost); move it away first",
            out.display()
        ));
        BadInput(problems)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_limits_go_the_worse_way() {
        let t = Tolerance {
            relative: 0.10,
            absolute: 1.0,
        };
        assert!((t.limit(20.0, true) - 23.0).abs() < 1e-12);
        assert!((t.limit(20.0, false) - 17.0).abs() < 1e-12);
        assert_eq!(t.describe("s", true), "+10% +1 s");
        let count = Tolerances::default().count;
        assert_eq!(count.limit(0.0, true), 0.0);
        assert_eq!(count.describe("", true), "+0");
        assert_eq!(Tolerances::default().fraction.describe("", false), "-0.020");
    }

    #[test]
    fn tolerances_by_unit_and_direction() {
        let t = Tolerances::default();
        assert_eq!(t.of("s", true).0, "seconds");
        assert_eq!(t.of("", false).0, "fraction");
        assert_eq!(t.of("x", false).0, "ratio");
        assert_eq!(t.of("", true).0, "count");
    }
}
