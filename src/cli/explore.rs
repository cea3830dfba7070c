//! `carapace explore SCENARIO --seeds N [--swarm] [--shrink] [--check-determinism]`: swarm
//! testing. Every seed runs under continuous safety checks and a liveness check after the
//! faults stop; each failing seed is printed with the one command that reproduces it, and
//! `--shrink` writes the smallest scenario that still fails plus its agent's timeline.

use super::sim::{SimError, load_traces};
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use anyhow::Context;
use carapace_sim::explore::{self, Checks, Divergence, Failure, Verdict};
use carapace_sim::scenario::{self, Scenario};
use carapace_sim::trace::MemorySeries;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Failing seeds shrunk per invocation: each shrink makes up to `--shrink-runs` runs.
const MAX_SHRUNK_SEEDS: usize = 3;

#[derive(Debug, clap::Args)]
pub struct ExploreArgs {
    /// Scenario file (TOML) every seed starts from.
    scenario: PathBuf,
    /// Seeds to run: FIRST_SEED, FIRST_SEED + 1, ...
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Each seed also picks its fault mix (some faults off, others scaled) and the engine's
    /// knobs within bounds. Without it, only the seed changes.
    #[arg(long)]
    swarm: bool,
    /// Minimise each failing run (at most three) and write the minimal scenario and the
    /// violating agent's timeline.
    #[arg(long)]
    shrink: bool,
    /// Runs shrinking may make per failing seed.
    #[arg(long, default_value_t = 400)]
    shrink_runs: u32,
    /// Run each seed twice and compare the command streams.
    #[arg(long)]
    check_determinism: bool,
    /// Check invariants every N events [default: 1 up to 500 agents, else agents / 10].
    #[arg(long)]
    check_every: Option<u64>,
    /// Where minimal scenarios and timelines go.
    #[arg(long, default_value = "reports/explore")]
    out: PathBuf,
}

pub fn run(args: ExploreArgs) -> anyhow::Result<ExitCode> {
    let base = match scenario::load_file(&args.scenario) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let dir = args
        .scenario
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    // Memory curves replay as in `sim`; a scenario's fixed fault events do not: explore draws
    // its own fault mix for every seed.
    let series = match load_traces(&base, &dir) {
        Ok(replays) => replays.memory,
        Err(SimError::BadInput(message)) => {
            eprintln!("{message}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let mut checks = Checks::for_scenario(&base);
    if let Some(every) = args.check_every {
        checks.invariants_every = every.max(1);
    }
    let seeds: Vec<u64> = (0..args.seeds)
        .map(|i| args.first_seed.wrapping_add(i))
        .collect();
    let started = Instant::now();
    let outcomes = explore_seeds(
        &base,
        &series,
        &checks,
        &seeds,
        args.swarm,
        args.check_determinism,
    );
    let elapsed = started.elapsed().as_secs_f64();
    let mut failed: Vec<(Scenario, Failure)> = Vec::new();
    let mut divergent = 0usize;
    for outcome in outcomes {
        let (variant, verdict, divergence) = match outcome {
            Ok(done) => done,
            Err(message) => {
                eprintln!("{message}");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
        };
        if let Some(divergence) = divergence {
            divergent += 1;
            println!("error: {divergence}");
            println!("  reproduce: {}", reproduce(&args, verdict.seed));
        }
        if let Some(failure) = verdict.failure {
            println!("seed {}: {failure}", verdict.seed);
            println!("  reproduce: {}", reproduce(&args, verdict.seed));
            failed.push((variant, failure));
        }
    }
    println!(
        "explored {} seeds of {} ({}) in {elapsed:.2}s: {:.3} seeds/s; {} failed{}",
        seeds.len(),
        base.name,
        if args.swarm { "swarm" } else { "seed only" },
        seeds.len() as f64 / elapsed.max(1e-9),
        failed.len(),
        if args.check_determinism {
            format!(", {divergent} not deterministic")
        } else {
            String::new()
        },
    );
    if args.shrink {
        for (variant, failure) in failed.iter().take(MAX_SHRUNK_SEEDS) {
            shrink_one(&args, variant, failure, &series, &checks)?;
        }
    }
    Ok(if failed.is_empty() && divergent == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

type Outcome = Result<(Scenario, Verdict, Option<Divergence>), String>;

/// Runs every seed on every core; results come back in seed order.
fn explore_seeds(
    base: &Scenario,
    series: &[(usize, MemorySeries)],
    checks: &Checks,
    seeds: &[u64],
    swarm: bool,
    determinism: bool,
) -> Vec<Outcome> {
    let one = |seed: u64| -> Outcome {
        let variant = if swarm {
            explore::swarm(base, seed)
        } else {
            let mut s = base.clone();
            s.seed = seed;
            s
        };
        let judged = if determinism {
            explore::check_determinism(&variant, series, checks)
        } else {
            explore::check(&variant, series, checks).map(|v| (v, None))
        };
        let (verdict, divergence) = judged.map_err(|e| format!("seed {seed}: {e}"))?;
        Ok((variant, verdict, divergence))
    };
    super::runner::parallel_map(seeds, |_, &seed| one(seed))
}

/// The one command that reruns exactly this seed.
fn reproduce(args: &ExploreArgs, seed: u64) -> String {
    let mut line = format!(
        "carapace explore {} --seeds 1 --first-seed {seed}",
        args.scenario.display()
    );
    if args.swarm {
        line.push_str(" --swarm");
    }
    if let Some(every) = args.check_every {
        line.push_str(&format!(" --check-every {every}"));
    }
    line
}

#[derive(Serialize)]
struct TimelineFile<'a> {
    scenario: &'a str,
    seed: u64,
    failure: &'a Failure,
    agent: Option<u32>,
    events: Vec<explore::TimelineEntry>,
}

fn shrink_one(
    args: &ExploreArgs,
    variant: &Scenario,
    failure: &Failure,
    series: &[(usize, MemorySeries)],
    checks: &Checks,
) -> anyhow::Result<()> {
    let seed = variant.seed;
    let shrunk = explore::shrink(variant, failure, series, checks, args.shrink_runs);
    let stem = format!("{}-seed-{seed}", variant.name);
    let mut minimal = shrunk.scenario.clone();
    minimal.name = format!("{stem}-min");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let toml_path = args.out.join(format!("{stem}-min.toml"));
    let header = format!(
        "# Minimal scenario from `carapace explore --shrink` ({} runs): {}\n\n",
        shrunk.runs, shrunk.failure
    );
    let text = toml::to_string(&minimal).context("a scenario serialises")?;
    std::fs::write(&toml_path, header + &text)
        .with_context(|| format!("writing {}", toml_path.display()))?;
    let events = match shrunk.failure.agent {
        Some(agent) => explore::timeline(&minimal, series, checks, agent)
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Vec::new(),
    };
    let timeline_path = args.out.join(format!("{stem}-timeline.json"));
    let file = TimelineFile {
        scenario: &minimal.name,
        seed,
        failure: &shrunk.failure,
        agent: shrunk.failure.agent.map(|a| a.0),
        events,
    };
    std::fs::write(&timeline_path, serde_json::to_string_pretty(&file)? + "\n")
        .with_context(|| format!("writing {}", timeline_path.display()))?;
    println!(
        "shrunk seed {seed} in {} runs to {} agents, {} nodes, {} tenants, {}: {}",
        shrunk.runs,
        minimal.agent_count(),
        minimal.fleet.nodes,
        minimal.fleet.tenants,
        minimal.duration,
        shrunk.failure
    );
    println!("  minimal scenario: {}", toml_path.display());
    println!("  timeline: {}", timeline_path.display());
    println!(
        "  reproduce: carapace explore {} --seeds 1 --first-seed {seed} --check-every {}",
        toml_path.display(),
        checks.invariants_every
    );
    Ok(())
}
