//! What the benches on real processes share: the release binaries, a scratch directory, a
//! `carapace serve` started and waited for, and the removal of every pod cgroup of a run.

use anyhow::{Context as _, bail};
use carapace_drivers::cgroup::MemoryCgroups;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The pid of the daemon a bench runs, for the Ctrl-C path (0: none).
pub static DAEMON_PID: AtomicU32 = AtomicU32::new(0);

/// A bench's `main`: parses its arguments (exit 2 when they are bad), runs it with a pod
/// cgroup parent of its own (`{bench}-{pid}`), and runs `cleanup` however it ends, on Ctrl-C
/// too (exit 1 when it failed, 130 when interrupted).
pub fn main<O>(
    bench: &'static str,
    parse: fn(&[String]) -> anyhow::Result<O>,
    run: fn(&O, &str) -> anyhow::Result<()>,
    cleanup: fn(&str),
) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("{bench}: {error:#}");
            std::process::exit(2);
        }
    };
    let parent = format!(
        "carapace-{}-{}",
        bench.replace('_', "-"),
        std::process::id()
    );
    let on_interrupt = parent.clone();
    self::on_interrupt(bench, move || cleanup(&on_interrupt));
    let outcome = run(&options, &parent);
    // Whatever happened: no process and no cgroup of ours outlives the bench.
    cleanup(&parent);
    if let Err(error) = outcome {
        eprintln!("{bench}: {error:#}");
        std::process::exit(1);
    }
}

/// Kills the daemon `DAEMON_PID` names, if any.
pub fn kill_daemon() {
    let daemon = DAEMON_PID.swap(0, Ordering::SeqCst);
    if daemon != 0 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(daemon as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

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
fn on_interrupt(bench: &'static str, cleanup: impl FnOnce() + Send + 'static) {
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
