//! `carapace validate FILE...`.

use super::EXIT_BAD_INPUT;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Scenario files to check.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut bad = false;
    for file in &args.files {
        match carapace_sim::scenario::load_file(file) {
            Ok(scenario) => println!(
                "{}: ok ({} agents on {} nodes)",
                file.display(),
                scenario.agent_count(),
                scenario.fleet.nodes
            ),
            Err(error) => {
                eprintln!("{error}");
                bad = true;
            }
        }
    }
    Ok(if bad {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}
