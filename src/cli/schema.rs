//! `carapace schema`.

use std::process::ExitCode;

pub fn run() -> anyhow::Result<ExitCode> {
    println!("{}", carapace_sim::scenario::json_schema());
    Ok(ExitCode::SUCCESS)
}
