//! Command-line parsing and the subcommands.

mod runner;
mod schema;
mod sim;
mod tune;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
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
    /// Print the JSON Schema of scenario files.
    Schema,
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Tune(args) => tune::run(args),
        Command::Schema => schema::run(),
    }
}
