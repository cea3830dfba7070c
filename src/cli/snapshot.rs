//! `carapace snapshot take|restore|list`: versions of an agent's state directory in a
//! content-addressed store (take them while the agent is stopped: SQLite runs in WAL mode).

use super::EXIT_BAD_INPUT;
use carapace_drivers::snapshot::{DEFAULT_EXCLUDES, SnapshotError, Store};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Store the state directory as a new version; prints its manifest summary.
    Take {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        version: u32,
        /// Top-level directories to leave out [default: tmp, cache].
        #[arg(long = "exclude")]
        excludes: Vec<String>,
    },
    /// Replace the state directory with a stored version (checked against every hash first).
    Restore {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        version: u32,
        #[arg(long)]
        state: PathBuf,
    },
    /// List the stored versions.
    List {
        #[arg(long)]
        store: PathBuf,
    },
}

pub fn run(args: SnapshotArgs) -> anyhow::Result<ExitCode> {
    let result = match args.action {
        Action::Take {
            state,
            store,
            version,
            excludes,
        } => {
            let excludes: Vec<&str> = if excludes.is_empty() {
                DEFAULT_EXCLUDES.to_vec()
            } else {
                excludes.iter().map(String::as_str).collect()
            };
            Store::open(store)
                .and_then(|s| s.take(&state, version, &excludes))
                .map(|m| {
                    let bytes: u64 = m.files.iter().map(|f| f.size).sum();
                    println!(
                        "version {}: {} files, {bytes} bytes",
                        m.version,
                        m.files.len()
                    );
                })
        }
        Action::Restore {
            store,
            version,
            state,
        } => Store::open(store)
            .and_then(|s| s.restore(version, &state))
            .map(|m| {
                println!(
                    "restored version {} ({} files) into {}",
                    m.version,
                    m.files.len(),
                    state.display()
                )
            }),
        Action::List { store } => Store::open(store)
            .and_then(|s| s.versions())
            .map(|versions| {
                for version in versions {
                    println!("{version}");
                }
            }),
    };
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error @ (SnapshotError::UnknownVersion(_) | SnapshotError::VersionExists(_))) => {
            eprintln!("carapace snapshot: {error}");
            Ok(ExitCode::from(EXIT_BAD_INPUT))
        }
        Err(error) => Err(error.into()),
    }
}
