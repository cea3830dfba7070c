//! What the benches on real processes share: the release binaries, a scratch directory, a
//! `carapace serve` started and waited for, and the removal of every pod cgroup of a run.

use anyhow::{Context as _, bail};
use carapace_drivers::cgroup::MemoryCgroups;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Binaries {
    pub carapace: PathBuf,
    pub test_agent: PathBuf,
}

impl Binaries {
    /// Beside this bench's own release directory (target/release/deps/BENCH-*), else
    /// CARGO_MANIFEST_DIR/target/release.
    pub fn find() -> anyhow::Result<Binaries> {
        let mut dirs = Vec::new();
        if let Some(release) = std::env::current_exe()?.parent().and_then(Path::parent) {
            dirs.push(release.to_owned());
        }
        dirs.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release"));
        for dir in &dirs {
            let (carapace, test_agent) = (dir.join("carapace"), dir.join("carapace-test-agent"));
            if carapace.is_file() && test_agent.is_file() {
                return Ok(Binaries {
                    carapace,
                    test_agent,
                });
            }
        }
        bail!(
            "target/release/carapace and carapace-test-agent are missing: run `cargo build --release --bins` first (looked in {dirs:?})"
        )
    }
}

/// A directory of the system's temp dir, emptied when made and removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `carapace serve --config CONFIG` and returns once it says it listens (its stdout
/// is read to the end by a thread of its own, so the daemon never blocks on it).
pub fn serve(bins: &Binaries, config: &Path, within: Duration) -> anyhow::Result<Child> {
    let mut child = Command::new(&bins.carapace)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start carapace serve")?;
    let stdout = child.stdout.take().context("the daemon's stdout")?;
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains("listening on") => return Ok(child),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("carapace serve did not listen within {within:?}");
            }
        }
    }
}

/// Every live process in the pods' cgroups under `parent`.
pub fn pod_pids(parent: &str) -> Vec<u32> {
    let Ok(cgroups) = MemoryCgroups::detect(parent) else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for name in cgroups.list() {
        if let Some(cgroup) = cgroups.open(&name) {
            pids.extend(cgroup.pids().unwrap_or_default());
        }
    }
    pids
}

/// Kills every process of every pod under `parent`, then removes the pods' cgroups and
/// `parent` itself. Safe to call more than once; `bench` names the caller in its complaints.
pub fn clear_pods(parent: &str, bench: &str) {
    let Ok(cgroups) = MemoryCgroups::detect(parent) else {
        return;
    };
    for name in cgroups.list() {
        if let Some(cgroup) = cgroups.open(&name) {
            let _ = cgroup.kill_all();
            if let Err(error) = cgroup.remove_when_empty(Duration::from_secs(10)) {
                eprintln!(
                    "{bench}: could not remove {}: {error}",
                    cgroup.path().display()
                );
            }
        }
    }
    let _ = std::fs::remove_dir(cgroups.root());
}

/// On Ctrl-C or SIGTERM: says so, runs `cleanup`, then exits 130.
pub fn on_interrupt(bench: &'static str, cleanup: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(mut terminate) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        });
        eprintln!("{bench}: interrupted; cleaning up");
        cleanup();
        std::process::exit(130);
    });
}
