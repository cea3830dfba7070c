//! `carapace sim [SCENARIO]`: one run, its SLO table on stdout, the full report on disk.

use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use anyhow::Context;
use carapace_sim::Simulation;
use carapace_sim::report::Report;
use carapace_sim::scenario::{self, Scenario};
use carapace_sim::trace::Replays;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The scenario `carapace sim` runs when given none: 11,000 agents, 300 tenants, 7 days.
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/fleet-11k.toml");

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Scenario file (TOML). Without one, runs the built-in fleet-11k scenario.
    scenario: Option<PathBuf>,
    /// Overrides the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Report directory [default: reports/NAME].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Check the engine's invariants every N events (0: only at the end).
    #[arg(long, default_value_t = 0)]
    check_every: u64,
    /// Print metrics.json to stdout instead of the SLO table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    let (mut scenario, base) = match &args.scenario {
        Some(path) => match scenario::load_file(path) {
            Ok(s) => (s, path.parent().map(Path::to_path_buf).unwrap_or_default()),
            Err(error) => {
                eprintln!("{error}");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
        },
        None => (
            scenario::parse_str(DEFAULT_SCENARIO, "<built-in fleet-11k.toml>")
                .context("the built-in scenario is valid")?,
            PathBuf::from("scenarios"),
        ),
    };
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    let report = match simulate(scenario, &base, args.check_every) {
        Ok(report) => report,
        Err(SimError::BadInput(message)) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let out = args
        .out
        .unwrap_or_else(|| Path::new("reports").join(&report.summary.scenario));
    report
        .write(&out)
        .with_context(|| format!("writing the report to {}", out.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.summary)?);
    } else {
        print!("{}", report.slo_table());
        println!("report: {}", out.join("report.html").display());
    }
    Ok(if report.summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// A scenario that loaded but cannot run (a trace that does not parse, a policy the engine
/// refuses): bad input, exit 2.
#[derive(Debug)]
pub enum SimError {
    BadInput(String),
}

/// Loads every trace the scenario replays (memory curves, fault events), resolving paths
/// against `base`.
pub fn load_traces(scenario: &Scenario, base: &Path) -> Result<Replays, SimError> {
    carapace_sim::trace::load_all(scenario, base).map_err(|e| SimError::BadInput(e.to_string()))
}

/// Runs one scenario to its end, calling `progress(now)` as virtual time passes.
pub fn run_one(
    scenario: Scenario,
    replays: Replays,
    check_every: u64,
    progress: impl FnMut(carapace_engine::Millis),
) -> Result<Report, SimError> {
    let mut sim =
        Simulation::new(scenario, replays).map_err(|e| SimError::BadInput(e.to_string()))?;
    sim.check_invariants_every(check_every);
    sim.run(progress);
    Ok(Report::of(&sim))
}

/// Loads the traces the scenario names, runs it with a progress bar on a terminal, and
/// builds the report.
pub fn simulate(scenario: Scenario, base: &Path, check_every: u64) -> Result<Report, SimError> {
    let series = load_traces(&scenario, base)?;
    let total_ms = scenario.duration.ms().max(1);
    let bar = ProgressBar::with_draw_target(Some(total_ms / 60_000), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} simulated {pos}/{len} min [{bar:40}] {percent}% eta {eta}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let report = run_one(scenario, series, check_every, |now| {
        bar.set_position(now.0 / 60_000)
    });
    bar.finish_and_clear();
    report
}
