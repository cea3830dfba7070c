//! Command-line parsing and the subcommands.

mod calibrate;
mod chaos;
mod explore;
mod fidelity;
#[cfg(test)]
mod fuzz;
mod gate;
mod journal;
mod node;
mod replay;
mod runner;
mod schema;
mod serve;
mod sim;
mod snapshot;
mod supervise;
mod tune;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
/// `supervise` handed the agent on: restarting in place cannot help (rung 2 and up).
pub const EXIT_ESCALATED: u8 = 3;
/// `serve --etcd`: this controller no longer leads (etcd refused its fenced write, or its
/// leadership lease expired); a restart campaigns again.
pub const EXIT_DEPOSED: u8 = 4;
pub const EXIT_INTERNAL: u8 = 70;

/// Agent-aware placement, density and recovery for fleets of OpenClaw gateways.
#[derive(Debug, Parser)]
#[command(name = "carapace", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a scenario and report against its SLOs (exit 1 when one is missed).
    Sim(sim::SimArgs),
    /// Check scenario files; report every problem with file, line, column and field (exit 2).
    Validate(validate::ValidateArgs),
    /// Sweep knobs over seeds and recommend the densest setting that holds every SLO.
    Tune(tune::TuneArgs),
    /// Run scenarios over seeds; fail on an SLO breach or a regression from the baseline.
    Check(gate::check::CheckArgs),
    /// Record the p90 over seeds of every SLO as the baseline `check` compares against.
    Baseline(gate::baseline::BaselineArgs),
    /// Swarm-test a scenario over seeds: invariants, liveness, shrinking, determinism.
    Explore(explore::ExploreArgs),
    /// Keep one agent process alive (rung 1 of the ladder); events as JSON lines on stdout.
    /// Exit 3 when restarting in place cannot help and the controller must take over.
    Supervise(supervise::SuperviseArgs),
    /// Versions of an agent's state directory: take, restore, list (content-addressed, blake3).
    Snapshot(snapshot::SnapshotArgs),
    /// Run the controller as a daemon: pods on this machine, a durable journal, an HTTP API.
    Serve(serve::ServeArgs),
    /// Run one machine of a cluster: register in etcd under a lease, run the pods the leader
    /// assigns here, stop them all when the lease cannot be renewed in time.
    Node(node::NodeArgs),
    /// Inject a real fault into an agent of a running `serve` and measure its recovery.
    Chaos(chaos::ChaosArgs),
    /// Fit the simulator's latency model to chaos runs; writes a scenario fragment.
    Calibrate(calibrate::CalibrateArgs),
    /// Re-run the engine on a journal `serve` recorded; exit 1 on the first divergence.
    Replay(replay::ReplayArgs),
    /// Run one fault schedule on a running `serve` and in the simulator; compare rung per
    /// fault and recovery/provisioning distributions (exit 1 when they differ).
    Fidelity(fidelity::FidelityArgs),
    /// Print the JSON Schema of scenario files.
    Schema,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Tune(args) => tune::run(args),
        Command::Check(args) => gate::check::run(args),
        Command::Baseline(args) => gate::baseline::run(args),
        Command::Explore(args) => explore::run(args),
        Command::Supervise(args) => supervise::run(args),
        Command::Node(args) => node::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Fidelity(args) => fidelity::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Schema => schema::run(),
    }
}

/// Resolves on SIGTERM or Ctrl-C: how daemons and supervisors are asked to stop.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    })
}
