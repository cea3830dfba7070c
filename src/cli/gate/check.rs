//! `carapace check SCENARIO|DIR...`: runs each scenario over K seeds, judges every SLO on its
//! p90 over seeds against its target and, with `--baseline`, against the committed baseline
//! within the file's tolerances. Exit 0 when all pass, 1 on a breach, a regression or a
//! broken invariant, 2 on bad input (nothing runs). Never writes the baseline.

use super::baseline::{Baseline, ScenarioBaseline, Tolerances};
use super::{
    BadInput, DEFAULT_SEEDS, Input, MAX_SEEDS, OverSeeds, SeedViolation, format_value, junit,
    load_inputs, seeds_of, within, write_atomically,
};
use crate::cli::{EXIT_BAD_INPUT, EXIT_FAILED};
use anyhow::Context;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Scenario files, or directories whose *.toml files are all taken (sorted).
    #[arg(required = true, value_name = "SCENARIO|DIR")]
    scenarios: Vec<PathBuf>,
    /// Seeds per scenario: the scenario's seed and the ones after it [default: the baseline's,
    /// else 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SEEDS)))]
    seeds: Option<u32>,
    /// Committed baseline (from `carapace baseline`): also fail on regressions beyond its
    /// tolerances. Read only.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Write JUnit XML: one test suite per scenario, one test case per SLO.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Write the full verdict as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let (inputs, baseline, seeds) = match prepare(&args) {
        Ok(prepared) => prepared,
        Err(bad) => return Ok(bad_input(bad)),
    };
    let runs = match super::run(&inputs, seeds, "check") {
        Ok(runs) => runs,
        Err(bad) => return Ok(bad_input(bad)),
    };
    let tolerances = baseline.as_ref().map(|b| b.tolerances).unwrap_or_default();
    // `prepare` refused any scenario the baseline has no entry for, so the index holds.
    let outcomes: Vec<Outcome> = runs
        .iter()
        .map(|run| {
            judge(
                run,
                baseline.as_ref().map(|b| &b.scenarios[&run.scenario]),
                &tolerances,
            )
        })
        .collect();
    print!("{}", table(&outcomes, seeds));
    print!("{}", failures(&outcomes));
    let passed = outcomes.iter().all(Outcome::passed);
    if let Some(path) = &args.junit {
        write_atomically(path, junit::render(&outcomes, seeds).as_bytes())
            .with_context(|| format!("writing JUnit XML to {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let report = JsonReport {
            passed,
            seeds,
            baseline: args.baseline.as_ref().map(|p| p.display().to_string()),
            tolerances: baseline.as_ref().map(|b| b.tolerances),
            method: METHOD,
            scenarios: &outcomes,
        };
        let mut json = serde_json::to_string_pretty(&report)?;
        json.push('\n');
        write_atomically(path, json.as_bytes())
            .with_context(|| format!("writing JSON to {}", path.display()))?;
    }
    println!("{}", verdict_line(&outcomes, seeds));
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

const METHOD: &str = "Each SLO is judged on its p90 over seeds (nearest rank): the value at least 90% \
                      of seeds do as well as, i.e. the 90th percentile of an SLO that must stay low \
                      (<=) and the 10th percentile of one that must stay high (>=). Seeds with no \
                      samples are left out.";

/// Prints every problem and returns exit 2.
pub fn bad_input(BadInput(problems): BadInput) -> ExitCode {
    assert!(!problems.is_empty(), "bad input says what is bad");
    for problem in problems {
        eprintln!("{problem}");
    }
    ExitCode::from(EXIT_BAD_INPUT)
}

/// Everything that can be wrong before a single run: the scenarios, the baseline, whether
/// they belong together, and output paths that would overwrite the baseline.
fn prepare(args: &CheckArgs) -> Result<(Vec<Input>, Option<Baseline>, u32), BadInput> {
    let inputs = load_inputs(&args.scenarios)?;
    let Some(path) = &args.baseline else {
        return Ok((inputs, None, args.seeds.unwrap_or(DEFAULT_SEEDS)));
    };
    let baseline = Baseline::read(path)?;
    let seeds = args.seeds.unwrap_or(baseline.seeds);
    let mut problems = Vec::new();
    if seeds != baseline.seeds {
        problems.push(format!(
            "--seeds {seeds}, but {} was recorded over {} seeds: p90s over different seeds do not compare",
            path.display(),
            baseline.seeds
        ));
    }
    for output in [&args.junit, &args.json].into_iter().flatten() {
        if same_file(output, path) {
            problems.push(format!(
                "{}: is the baseline; `check` never writes it",
                output.display()
            ));
        }
    }
    for input in &inputs {
        if let Err(problem) = matches(input, baseline.scenarios.get(&input.scenario.name), seeds) {
            problems.push(format!("{}: {problem}; refresh the baseline on purpose with `carapace baseline ... --out {}` (docs/ci.md)", input.file, path.display()));
        }
    }
    if !problems.is_empty() {
        return Err(BadInput(problems));
    }
    let unchecked: Vec<&str> = baseline
        .scenarios
        .keys()
        .filter(|name| !inputs.iter().any(|i| &&i.scenario.name == name))
        .map(String::as_str)
        .collect();
    if !unchecked.is_empty() {
        eprintln!(
            "note: not checked this time, though in the baseline: {}",
            unchecked.join(", ")
        );
    }
    Ok((inputs, Some(baseline), seeds))
}

/// Whether a scenario's baseline entry was recorded from the same seeds it will run with.
fn matches(input: &Input, recorded: Option<&ScenarioBaseline>, seeds: u32) -> Result<(), String> {
    let name = &input.scenario.name;
    let recorded = recorded.ok_or_else(|| format!("scenario `{name}` is not in the baseline"))?;
    let now = seeds_of(&input.scenario, seeds)?;
    if recorded.seeds != now {
        return Err(format!(
            "scenario `{name}` was recorded with seeds {:?} and now runs with {now:?} (its seed changed)",
            recorded.seeds
        ));
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// One scenario's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub file: String,
    pub seeds: Vec<u64>,
    pub command_stream_hashes: Vec<String>,
    /// Seeds whose command stream is byte-for-byte the baseline's; `None` without one.
    pub seeds_identical_to_baseline: Option<usize>,
    pub invariant_violations: Vec<SeedViolation>,
    pub slo: Vec<SloOutcome>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.invariant_violations.is_empty() && self.slo.iter().all(|s| !s.breach && !s.regression)
    }

    /// The invariants row: what it says, and whether it holds.
    pub fn invariants(&self) -> (String, bool) {
        match self.invariant_violations.first() {
            None => (format!("held on all {} seeds", self.seeds.len()), true),
            Some(v) => (
                format!(
                    "broken on {} of {} seeds; first at seed {}: {}",
                    self.invariant_violations.len(),
                    self.seeds.len(),
                    v.seed,
                    v.violation
                ),
                false,
            ),
        }
    }
}

/// One SLO's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct SloOutcome {
    pub name: String,
    pub comparison: String,
    pub target: f64,
    pub unit: String,
    /// Per seed, in seed order; `null` where that seed had nothing to measure.
    pub values: Vec<Option<f64>>,
    pub p90_over_seeds: Option<f64>,
    /// The baseline has an entry for this SLO (it may still hold no samples).
    pub baseline_recorded: bool,
    /// The baseline's p90 over seeds.
    pub baseline: Option<f64>,
    /// The worst value within tolerance of the baseline.
    pub baseline_limit: Option<f64>,
    /// The tolerance that gave the limit, e.g. `+10% +1 s`.
    pub tolerance: Option<String>,
    /// The p90 over seeds misses the target.
    pub breach: bool,
    /// The p90 over seeds is worse than the baseline beyond tolerance.
    pub regression: bool,
    pub verdict: &'static str,
    /// One line: measured, target, baseline and verdict.
    pub message: String,
}

/// Judges one scenario's runs against its targets and, when given, its baseline.
pub fn judge(
    run: &OverSeeds,
    recorded: Option<&ScenarioBaseline>,
    tolerances: &Tolerances,
) -> Outcome {
    let slo = run
        .slo
        .iter()
        .map(|s| {
            let at_most = s.comparison_is_at_most();
            let (kind, tolerance) = tolerances.of(&s.unit, at_most);
            let entry = recorded.and_then(|r| r.slo.get(&s.name));
            let base = entry.and_then(|b| b.p90_over_seeds);
            let limit = base.map(|b| tolerance.limit(b, at_most));
            let breach = s.breached();
            let regression =
                matches!((s.p90_over_seeds, limit), (Some(v), Some(l)) if !within(v, at_most, l));
            let verdict = match (breach, regression) {
                (false, false) => "pass",
                (true, false) => "BREACH",
                (false, true) => "REGRESSION",
                (true, true) => "BREACH+REGRESSION",
            };
            let mut outcome = SloOutcome {
                name: s.name.clone(),
                comparison: s.comparison.clone(),
                target: s.target,
                unit: s.unit.clone(),
                values: s.values.clone(),
                p90_over_seeds: s.p90_over_seeds,
                baseline_recorded: entry.is_some(),
                baseline: base,
                baseline_limit: limit,
                tolerance: base.map(|_| format!("{kind} {}", tolerance.describe(&s.unit, at_most))),
                breach,
                regression,
                verdict,
                message: String::new(),
            };
            outcome.message = message(&outcome, recorded.is_some(), run.seeds.len());
            outcome
        })
        .collect();
    Outcome {
        scenario: run.scenario.clone(),
        file: run.file.clone(),
        seeds: run.seeds.clone(),
        command_stream_hashes: run.command_stream_hashes.clone(),
        seeds_identical_to_baseline: recorded.map(|r| {
            r.command_stream_hashes
                .iter()
                .zip(&run.command_stream_hashes)
                .filter(|(a, b)| a == b)
                .count()
        }),
        invariant_violations: run.invariant_violations.clone(),
        slo,
    }
}

fn message(s: &SloOutcome, with_baseline: bool, seeds: usize) -> String {
    let value = |v: Option<f64>| v.map_or("no samples".to_owned(), |v| format_value(v, &s.unit));
    let mut out = format!(
        "{}: {} (p90 over {seeds} seeds); target {} {}",
        s.name,
        value(s.p90_over_seeds),
        s.comparison,
        format_value(s.target, &s.unit)
    );
    if let (Some(base), Some(limit), Some(tolerance)) = (s.baseline, s.baseline_limit, &s.tolerance)
    {
        let _ = write!(
            out,
            "; baseline {} (tolerance {tolerance}: {} {})",
            format_value(base, &s.unit),
            s.comparison,
            format_value(limit, &s.unit)
        );
    } else if with_baseline {
        out.push_str(if s.baseline_recorded {
            "; baseline: no samples, not compared"
        } else {
            "; baseline: not recorded, not compared"
        });
    }
    let _ = write!(out, ": {}", s.verdict);
    if s.regression {
        out.push_str(" (worse than the baseline beyond its tolerance)");
    }
    out
}

/// The table `check` prints.
pub fn table(outcomes: &[Outcome], seeds: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | SLO | target | p90 over {seeds} seeds | baseline | verdict |\n|---|---|---|---|---|---|"
    );
    for o in outcomes {
        for s in &o.slo {
            let value =
                |v: Option<f64>| v.map_or("no samples".to_owned(), |v| format_value(v, &s.unit));
            let baseline = match (o.seeds_identical_to_baseline, s.baseline_recorded) {
                (None, _) => "-".to_owned(),
                (Some(_), false) => "not recorded".to_owned(),
                (Some(_), true) => value(s.baseline),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {} | {baseline} | {} |",
                o.scenario,
                s.name,
                s.comparison,
                format_value(s.target, &s.unit),
                value(s.p90_over_seeds),
                s.verdict
            );
        }
        let (held, ok) = o.invariants();
        let _ = writeln!(
            out,
            "| {} | invariants | hold | {} | - | {} |",
            o.scenario,
            held.replace('|', "/"),
            if ok { "pass" } else { "FAIL" }
        );
    }
    for o in outcomes {
        if let Some(same) = o.seeds_identical_to_baseline {
            let _ = writeln!(
                out,
                "{}: command streams identical to the baseline on {same} of {} seeds{}",
                o.scenario,
                o.seeds.len(),
                if same == o.seeds.len() {
                    ""
                } else {
                    " (behaviour changed; numbers judged above)"
                }
            );
        }
    }
    out
}

/// One line per failed SLO or broken invariant, with the numbers behind it.
fn failures(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    for o in outcomes {
        for s in o.slo.iter().filter(|s| s.breach || s.regression) {
            let _ = writeln!(out, "FAIL {} ({}): {}", o.scenario, o.file, s.message);
        }
        let (held, ok) = o.invariants();
        if !ok {
            let _ = writeln!(out, "FAIL {} ({}): invariants {held}", o.scenario, o.file);
        }
    }
    out
}

fn verdict_line(outcomes: &[Outcome], seeds: u32) -> String {
    let slos: usize = outcomes.iter().map(|o| o.slo.len()).sum();
    let all_slo = || outcomes.iter().flat_map(|o| &o.slo);
    let breaches = all_slo().filter(|s| s.breach).count();
    let regressions = all_slo().filter(|s| s.regression).count();
    let broken = outcomes
        .iter()
        .filter(|o| !o.invariant_violations.is_empty())
        .count();
    let head = format!(
        "check: {} scenarios x {seeds} seeds, {slos} SLOs",
        outcomes.len()
    );
    if breaches + regressions + broken == 0 {
        return format!("{head}: all pass");
    }
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{head}: {}, {}, {}",
        plural(breaches, "breach", "breaches"),
        plural(regressions, "regression", "regressions"),
        plural(
            broken,
            "scenario with broken invariants",
            "scenarios with broken invariants"
        )
    )
}

#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    passed: bool,
    seeds: u32,
    baseline: Option<String>,
    tolerances: Option<Tolerances>,
    method: &'static str,
    scenarios: &'a [Outcome],
}
