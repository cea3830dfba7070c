//! `carapace fidelity FILE --config carapace.toml`: does the simulator tell the truth about
//! production? One small fleet and one fixed fault schedule, run for real on a running
//! `carapace serve` and in the simulator with the driver latencies fitted to the real run;
//! per fault, the rung each side chose, and how far apart their recovery and provisioning
//! times are (two-sample Kolmogorov–Smirnov distance).
//!
//! Exit 0: every fault resolved by the same rung on both sides and every judged distance
//! within `judge.ks_max`; 1: not so (or a real round failed); 2: bad input.

mod compare;
mod real;
mod simulated;
mod spec;

use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use carapace_sim::report::svg;
use compare::{Comparison, cdf_points};
use spec::Spec;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct FidelityArgs {
    /// The fidelity file: the agents to create, the fault schedule, how to judge.
    spec: PathBuf,
    /// The config of the running `carapace serve` (its data dir, policy and probes).
    #[arg(long)]
    config: PathBuf,
    /// Where to write the report (summary.md, fidelity.json, rounds.csv, CDF plots, the real
    /// phases as latencies.csv and feed as feed.jsonl, and the simulated side's scenario.toml
    /// and schedule.csv).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: FidelityArgs) -> anyhow::Result<ExitCode> {
    let spec = match Spec::load(&args.spec) {
        Ok(spec) => spec,
        Err(message) => return bad_input(&message),
    };
    let config = match super::serve::config::load(&args.config, None) {
        Ok(config) => config,
        Err(message) => return bad_input(&message),
    };
    if !config.data_dir.join("serve.json").exists() {
        return bad_input(&format!(
            "{}: no daemon has run on data_dir {} (start `carapace serve --config {}` first)",
            args.config.display(),
            config.data_dir.display(),
            args.config.display()
        ));
    }
    let real = match real::run(&spec, &config.data_dir) {
        Ok(real) => real,
        Err(error) => {
            eprintln!("carapace fidelity: the real side failed: {error:#}");
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let (sim, scenario, events) = simulated::run(&spec, &config, &real)?;
    let comparison = compare::compare(&real, &sim, &spec.judge);
    let summary = summary(&comparison, &sim);
    println!("{summary}");
    if let Some(out) = &args.out {
        write_report(out, &comparison, &summary, &scenario, &events, &real)?;
    }
    Ok(if comparison.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

fn bad_input(message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("carapace fidelity: {message}");
    Ok(ExitCode::from(EXIT_BAD_INPUT))
}

fn rung_name(rung: u8) -> &'static str {
    match rung {
        // Real: the agent never stopped; simulated: also a fault that fell into an incident
        // already open.
        0 => "no incident of its own",
        1 => "1 restart in place",
        2 => "2 recreate",
        3 => "3 restore known-good",
        _ => "alert",
    }
}

/// summary.md: the per-fault table, the distributions and the fitted latencies.
fn summary(comparison: &Comparison, sim: &simulated::SimRun) -> String {
    let mut text = String::from("# Fidelity: real vs simulated\n\n## Rung per fault\n\n");
    text.push_str(
        "| # | agent | fault | at | real rung | real recovery | simulated rungs (seeds) | same |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in &comparison.rounds {
        let sim_rungs: Vec<String> = row
            .sim_rungs
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(rung, n)| format!("{} ×{n}", rung_name(rung as u8)))
            .collect();
        let _ = writeln!(
            text,
            "| {} | {} | {} | {:.1} s | {} | {} | {} | {} |",
            row.round,
            row.agent,
            row.fault,
            row.at_ms as f64 / 1_000.0,
            match (&row.real_rung, &row.error) {
                (Some(rung), _) => rung_name(*rung).to_owned(),
                (None, Some(error)) => format!("failed: {error}"),
                (None, None) => "failed".to_owned(),
            },
            row.real_recovery_ms
                .map_or("-".into(), |ms| format!("{ms} ms")),
            if sim_rungs.is_empty() {
                "-".into()
            } else {
                sim_rungs.join(", ")
            },
            if row.same_rung { "yes" } else { "NO" },
        );
    }
    let _ = write!(
        text,
        "\n## Distributions (pass: KS ≤ {}, judged from {} real samples)\n\nKS noise: the distance two samples of these sizes from one distribution exceed 5% of the time; a KS under it is as close as the samples can tell.\n\n| measure | real n | simulated n | real p50 | simulated p50 | KS | KS noise | verdict |\n|---|---|---|---|---|---|---|---|\n",
        comparison.ks_max, comparison.min_samples
    );
    for row in &comparison.distributions {
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            row.measure,
            row.real_n,
            row.sim_n,
            ms(row.real_p50_ms),
            ms(row.sim_p50_ms),
            row.ks.map_or("-".into(), |d| format!("{d:.3}")),
            row.ks_noise.map_or("-".into(), |d| format!("{d:.3}")),
            match row.passed {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "too few samples to judge",
            }
        );
    }
    if comparison.recreated > 0 || comparison.recreate_failure.is_some() {
        let _ = writeln!(
            text,
            "\nProvisioning pools the first creates and {} recreates (each an agent removed and created again, one at a time).",
            comparison.recreated
        );
    }
    if let Some(error) = &comparison.recreate_failure {
        let _ = writeln!(text, "\n**A recreate failed**: {error}");
    }
    text.push_str("\n## Latencies from the real run\n\n| field | real phase | n | simulated as | log-normal fit (median, p90) | KS of the fit |\n|---|---|---|---|---|---|\n");
    for fitted in &sim.fitted {
        let model = sim
            .models
            .iter()
            .find(|(field, _)| *field == fitted.field)
            .map_or("the default".into(), |(_, dist)| describe(dist));
        let _ = writeln!(
            text,
            "| {} | {} | {} | {model} | {} | {} |",
            fitted.field,
            fitted.phase,
            fitted.samples,
            fitted
                .fit
                .map_or("-".into(), |f| format!("{} ms, {} ms", f.median.0, f.p90.0)),
            fitted.fit.map_or("-".into(), |f| format!("{:.3}", f.ks)),
        );
    }
    let _ = write!(
        text,
        "\n**{}**\n",
        if comparison.passed {
            "pass: the simulator chose the real rung for every fault"
        } else {
            "FAIL: see the rows marked NO or FAIL, and any failed recreate"
        }
    );
    text
}

fn describe(dist: &carapace_sim::scenario::Dist) -> String {
    use carapace_sim::scenario::Dist;
    match dist {
        Dist::Constant { value } => format!("constant {} ms", value.0.0),
        Dist::Uniform { min, max } => format!("uniform {}–{} ms", min.0.0, max.0.0),
        Dist::LogNormal { median, p90 } => {
            format!("log-normal, median {} ms, p90 {} ms", median.0.0, p90.0.0)
        }
        Dist::Deciles { deciles } => format!(
            "observed deciles, {}–{} ms, median {} ms",
            deciles[0].0.0, deciles[10].0.0, deciles[5].0.0
        ),
    }
}

fn write_report(
    out: &Path,
    comparison: &Comparison,
    summary: &str,
    scenario: &carapace_sim::scenario::Scenario,
    events: &[carapace_sim::trace::TraceEvent],
    real: &real::RealRun,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("summary.md"), summary)?;
    std::fs::write(
        out.join("fidelity.json"),
        serde_json::to_vec_pretty(comparison)?,
    )?;
    let mut rounds = csv::Writer::from_path(out.join("rounds.csv"))?;
    rounds.write_record([
        "round",
        "agent",
        "fault",
        "at_ms",
        "real_rung",
        "real_recovery_ms",
        "sim_rungs",
        "same_rung",
    ])?;
    for row in &comparison.rounds {
        rounds.write_record([
            row.round.to_string(),
            row.agent.to_string(),
            row.fault.clone(),
            row.at_ms.to_string(),
            row.real_rung.map_or(String::new(), |r| r.to_string()),
            row.real_recovery_ms
                .map_or(String::new(), |r| r.to_string()),
            format!("{:?}", row.sim_rungs),
            row.same_rung.to_string(),
        ])?;
    }
    rounds.flush()?;
    for row in &comparison.distributions {
        let file = format!(
            "cdf-{}.svg",
            row.measure
                .replace(": ", "-")
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
        );
        let (real, sim) = (cdf_points(&row.real), cdf_points(&row.sim));
        let lines = [
            svg::Line {
                label: "real",
                points: real,
            },
            svg::Line {
                label: "simulated",
                points: sim,
            },
        ];
        let title = format!(
            "{}: real (n={}) vs simulated (n={}), KS {}",
            row.measure,
            row.real_n,
            row.sim_n,
            row.ks.map_or("-".into(), |d| format!("{d:.3}"))
        );
        std::fs::write(
            out.join(file),
            svg::lines(&title, "seconds", "fraction", &lines, Some(1.0), true),
        )?;
    }
    // The simulated side as files `carapace sim` runs again.
    std::fs::write(out.join("scenario.toml"), toml::to_string(scenario)?)?;
    let mut trace = csv::Writer::from_path(out.join("schedule.csv"))?;
    trace.write_record(["time_ms", "agent", "kind", "value", "duration_ms"])?;
    for event in events {
        trace.write_record([
            event.at_ms.to_string(),
            event.target.to_string(),
            event.kind.name().to_owned(),
            event.value.to_string(),
            event.duration_ms.to_string(),
        ])?;
    }
    trace.flush()?;
    // The real phases, as `carapace chaos` writes them: `carapace calibrate` reads this
    // report as it reads a chaos run.
    let mut latencies = csv::Writer::from_path(out.join("latencies.csv"))?;
    latencies.write_record(["phase", "ms"])?;
    for (phase, values) in &real.phases {
        for ms in values {
            latencies.write_record([phase, &ms.to_string()])?;
        }
    }
    latencies.flush()?;
    // What the daemon reported about the run's agents, to follow any round phase by phase.
    let mut feed = Vec::new();
    for entry in &real.feed {
        serde_json::to_writer(&mut feed, entry)?;
        feed.push(b'\n');
    }
    std::fs::write(out.join("feed.jsonl"), feed)?;
    Ok(())
}
