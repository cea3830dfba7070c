//! `carapace chaos --data DIR --agent NAME --fault FAULT`: the simulator's faults, for real,
//! against a running `carapace serve` — and the simulator's measures of them.
//!
//! Each repetition waits for the agent to run, injects the fault into its real pod, and
//! follows the daemon's event feed until the agent is healthy again (or alerted). Times are
//! the engine's (`now_ms` of the API), so detection and recovery are measured on the clock
//! the decisions were made on. The incidents go through the simulator's own `Measures`, so
//! detection, recovery, the ladder and "unnoticed" mean here exactly what they mean in a
//! simulated report; a real client polls the agent throughout to tell when a request would
//! first have hit the outage.

pub mod daemon;
pub mod round;

use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use carapace_engine::{AgentId, Millis};
use carapace_sim::report::Percentiles;
use carapace_sim::{Fault, IncidentLog, Measures};
use daemon::{Client, Daemon};
use round::{Ending, Plan};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Bounds on one chaos run.
const MAX_REPEAT: u32 = 1_000;

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// The daemon's data directory (its `serve.json` and `token` are read from there).
    #[arg(long)]
    data: PathBuf,
    /// The agent to break.
    #[arg(long)]
    agent: String,
    #[arg(long, value_enum)]
    fault: FaultKind,
    /// Times to inject the fault, one after the other.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Healthy time between repetitions (lets the known-good dwell pass).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Give up on one repetition after this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Bytes a `spike` allocates inside the agent's cgroup.
    #[arg(long, default_value_t = 1 << 30)]
    spike_bytes: u64,
    /// The modelled client: a request this often, failing after this timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    client_interval: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    client_timeout: Duration,
    /// Where to write incidents.csv, metrics.json and summary.md.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The daemon's config, to start it again after `kill-daemon`.
    #[arg(long)]
    restart_with: Option<PathBuf>,
    /// A recovery slower than this fails the run (exit 1).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    recovery_slo: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// kill -9 the agent's process.
    Kill,
    /// SIGSTOP the agent: alive, answering nothing.
    Hang,
    /// Truncate the agent's config file (to an eighth), then kill it: the next start must
    /// refuse the config.
    TruncateConfig,
    /// Allocate `--spike-bytes` inside the agent's memory cgroup.
    Spike,
    /// kill -9 the pod's supervisor.
    KillSupervisor,
    /// kill -9 the pod's supervisor, then kill -9 the daemon as soon as it decides what to do
    /// about it (mid-command), and start it again with `--restart-with`.
    KillDaemon,
}

impl FaultKind {
    /// Its name on the command line and in fidelity files.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Hang => "hang",
            FaultKind::TruncateConfig => "truncate-config",
            FaultKind::Spike => "spike",
            FaultKind::KillSupervisor => "kill-supervisor",
            FaultKind::KillDaemon => "kill-daemon",
        }
    }

    /// The simulator's name for what the fault does to the agent.
    pub fn fault(self) -> Fault {
        match self {
            FaultKind::Kill | FaultKind::KillSupervisor | FaultKind::KillDaemon => Fault::Crash,
            FaultKind::Hang => Fault::Hang,
            FaultKind::TruncateConfig => Fault::ConfigCorruption,
            FaultKind::Spike => Fault::OomKilled,
        }
    }
}

pub fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    if args.repeat == 0 || args.repeat > MAX_REPEAT {
        eprintln!("carapace chaos: --repeat must be 1 to {MAX_REPEAT}");
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let daemon = match Daemon::find(&args.data) {
        Ok(daemon) => daemon,
        Err(message) => {
            eprintln!("carapace chaos: {message}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let first = daemon.agent(&args.agent)?;
    let Some(id) = first["id"].as_u64() else {
        eprintln!("carapace chaos: no agent named `{}`", args.agent);
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    };
    let agent = AgentId(u32::try_from(id)?);
    let class = format!("class-{}", first["class"]);
    let client = Client::start(
        &daemon,
        &args.agent,
        args.client_interval,
        args.client_timeout,
    );
    let mut measures = Measures::new(Millis::ZERO);
    let mut failures = Vec::new();
    let mut absorbed = 0u32;
    let mut phases = super::calibrate::Phases::default();
    let plan = Plan {
        data: args.data.clone(),
        agent: args.agent.clone(),
        id: agent,
        class,
        fault: args.fault,
        settle: args.settle,
        timeout: args.timeout,
        spike_bytes: args.spike_bytes,
        client_timeout: args.client_timeout,
        restart_with: args.restart_with.clone(),
    };
    for round in 0..args.repeat {
        match round::run(&daemon, &plan, &client, &mut measures, &mut phases) {
            Ok(outcome) if outcome.ending == Ending::Absorbed => absorbed += 1,
            Ok(_) => {}
            Err(error) => {
                eprintln!("carapace chaos: round {}: {error:#}", round + 1);
                failures.push(format!("round {}: {error:#}", round + 1));
            }
        }
    }
    client.stop();
    let summary = summarise(&measures, &args, &failures, absorbed);
    println!("{}", summary_table(&summary));
    if let Some(out) = &args.out {
        write_report(out, &measures.incidents, &summary)?;
        let mut csv = csv::Writer::from_path(out.join("latencies.csv"))?;
        csv.write_record(["phase", "ms"])?;
        for (phase, ms) in &phases.samples {
            csv.write_record([*phase, &ms.to_string()])?;
        }
        csv.flush()?;
    }
    let passed = summary["passed"].as_bool().unwrap_or(false);
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

fn summarise(measures: &Measures, args: &ChaosArgs, failures: &[String], absorbed: u32) -> Value {
    let recovery = Percentiles::of(&measures.recovery);
    let detection = Percentiles::of(&measures.detection);
    let resolved = measures.noticed + measures.unnoticed;
    let unnoticed = if resolved == 0 {
        0.0
    } else {
        measures.unnoticed as f64 / resolved as f64
    };
    let slo_ms = args.recovery_slo.as_millis() as u64;
    // Every incident resolved by a rung (none alerted) within the SLO.
    let resolved_by_rungs = measures.ladder[..3].iter().sum::<u64>();
    let recovered_in_time = resolved_by_rungs == measures.incidents.len() as u64
        && (recovery.count == 0 || recovery.max <= slo_ms);
    json!({
        "agent": args.agent,
        "fault": args.fault.fault().name(),
        "rounds": args.repeat,
        "incidents": measures.incidents.len(),
        "absorbed": absorbed,
        "detection_ms": detection,
        "recovery_ms": recovery,
        "unnoticed_fraction": (unnoticed * 10_000.0).round() / 10_000.0,
        "ladder": measures.ladder,
        "recovery_slo_ms": slo_ms,
        "failures": failures,
        "passed": failures.is_empty() && recovered_in_time,
    })
}

fn summary_table(summary: &Value) -> String {
    let p = |v: &Value| {
        format!(
            "p50 {} ms, p90 {} ms, max {} ms (n={})",
            v["p50"], v["p90"], v["max"], v["count"]
        )
    };
    format!(
        "| measure | value |\n|---|---|\n| fault | {} × {} on {} |\n| detection | {} |\n| recovery | {} |\n| ladder (rung 1, 2, 3, alert) | {} |\n| absorbed (no incident) | {} |\n| unnoticed | {} |\n| recovery within {} ms | {} |",
        summary["fault"].as_str().unwrap_or(""),
        summary["rounds"],
        summary["agent"].as_str().unwrap_or(""),
        p(&summary["detection_ms"]),
        p(&summary["recovery_ms"]),
        summary["ladder"],
        summary["absorbed"],
        summary["unnoticed_fraction"],
        summary["recovery_slo_ms"],
        if summary["passed"].as_bool().unwrap_or(false) {
            "pass"
        } else {
            "FAIL"
        },
    )
}

fn write_report(out: &Path, incidents: &IncidentLog, summary: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut csv = csv::Writer::from_path(out.join("incidents.csv"))?;
    for incident in incidents.iter() {
        csv.serialize(incident)?;
    }
    csv.flush()?;
    std::fs::write(
        out.join("metrics.json"),
        serde_json::to_vec_pretty(summary)?,
    )?;
    std::fs::write(
        out.join("summary.md"),
        format!(
            "# Chaos: {}\n\n{}\n",
            summary["fault"].as_str().unwrap_or(""),
            summary_table(summary)
        ),
    )?;
    Ok(())
}
