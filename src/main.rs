//! `carapace`: keeps fleets of OpenClaw gateways alive, dense and versioned.
//!
//! Exit codes: 0 success; 1 an SLO breach, a regression or a broken invariant; 2 bad input
//! (usage, a scenario or trace that does not parse); 3 `supervise` escalated (restarting in
//! place cannot help); 70 an internal error.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("carapace: {error:#}");
            ExitCode::from(cli::EXIT_INTERNAL)
        }
    }
}
