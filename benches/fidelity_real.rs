//! `carapace fidelity` at a sample size that can judge it: a real daemon in a temp dir (its
//! own ports, its own memory cgroup parent) with `carapace-test-agent` agents, put through
//! every fault class `carapace fidelity` replays, and the simulator run over the same
//! schedule with the latencies fitted to it. Measured, not asserted: the report's tables go to
//! `target/fidelity_real.md` (figures in `benches/README.md`), the whole report to
//! `target/fidelity_real/`.
//!
//! A KS distance is only worth judging beside its noise floor (`KS noise` in the report):
//! with 10 seeds it falls under the 0.2 target from 52 real samples, so the default is 64
//! rounds of each fault, and only distributions of at least 52 real samples are judged.
//! Provisioning has one sample per create: 8 agents are too few to judge it, and 64 agents
//! at once load the two cores of the project machine so much that every real phase depends
//! on how many agents run beside it (see benches/README.md), so the run ends with as many
//! recreates as rounds of a fault (each an agent removed and created again, one at a time).
//!
//! ```sh
//! cargo build --release --bins
//! cargo bench --bench fidelity_real      # 8 agents, 64 rounds of each fault, 64 recreates
//! cargo bench --bench fidelity_real -- --agents 4 --rounds 8  # a quick look (too few to judge)
//! cargo bench --bench fidelity_real -- --agents 64 --recreates 0 --seeds 20 --out FILE
//! ```
//!
//! Exits 1 when the daemon or the fidelity run could not run; a fidelity verdict of "fail" is
//! a measurement, reported, and exits 0.

// Benches measure wall time (and spawn threads): the determinism guard of clippy.toml binds
// the engine and the simulator, not a bench binary that drives real processes.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "support/real.rs"]
mod real;
use real::{Binaries, DAEMON_PID, Scratch};

/// The API and one port per pod slot: below the CLI tests' ports (20,000 up) and above
/// `serve_real`'s (16,000–17,xxx).
const API_PORT: u16 = 18_900;
const PORT_BASE: u16 = 19_000;
const MAX_AGENTS: usize = 128;
/// Pod slots beyond the agents (a replaced instance holds its slot until it is gone).
const SPARE_PODS: usize = 16;
const DAEMON_START: Duration = Duration::from_secs(30);
/// Real samples from which a KS distance is judged: where its noise floor, with 10 seeds,
/// falls under the 0.2 target.
const JUDGED_FROM: usize = 52;

/// Probes fast beside the test agent's 200 ms boot.
const PODS: &str = r#"
startup_probe_interval = "100ms"
probe_interval = "200ms"
probe_timeout = "300ms"
memory_interval = "200ms"
grace = "1s"
"#;

/// 16 starts at once, so that the provisioning of every agent is not mostly the wait for a
/// start slot.
const POLICY: &str = r#"
[policy.placement]
max_starts_per_node = 16

[policy.supervisor]
hang_probe_failures = 3

[policy.recovery]
known_good_dwell_ms = 1500
relapse_window_ms = 500
restart_deadline_ms = 20000
start_deadline_ms = 30000
snapshot_interval_ms = 600000
"#;

#[derive(Debug)]
struct Options {
    agents: usize,
    rounds: usize,
    /// Recreates after the schedule (default: as many as `rounds`).
    recreates: Option<usize>,
    seeds: usize,
    out: PathBuf,
}

impl Options {
    /// `--agents N`, `--rounds N` (of each fault), `--recreates N`, `--seeds N`, `--out FILE`;
    /// anything else (cargo passes `--bench`) is ignored.
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options {
            agents: 8,
            rounds: 64,
            recreates: None,
            seeds: 10,
            out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fidelity_real.md"),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> anyhow::Result<usize> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{name} needs a positive number"))
            };
            match arg.as_str() {
                "--agents" => options.agents = number("--agents")?,
                "--rounds" => options.rounds = number("--rounds")?,
                "--recreates" => {
                    options.recreates = Some(
                        args.next()
                            .and_then(|v| v.parse().ok())
                            .context("--recreates needs a number")?,
                    )
                }
                "--seeds" => options.seeds = number("--seeds")?,
                "--out" => options.out = PathBuf::from(args.next().context("--out needs a file")?),
                _ => {}
            }
        }
        if options.agents > MAX_AGENTS {
            bail!("--agents: at most {MAX_AGENTS}");
        }
        Ok(options)
    }

    fn recreates(&self) -> usize {
        self.recreates.unwrap_or(self.rounds)
    }
}

fn main() {
    real::main("fidelity_real", Options::parse, run, cleanup);
}

fn cleanup(parent: &str) {
    real::kill_daemon();
    real::clear_pods(parent, "fidelity_real");
}

/// The daemon, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        DAEMON_PID.store(0, Ordering::SeqCst);
    }
}

fn run(options: &Options, parent: &str) -> anyhow::Result<()> {
    let bins = Binaries::find()?;
    let scratch = Scratch::new("carapace-bench-fidelity")?;
    for port in [API_PORT, PORT_BASE] {
        std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("port {port} is taken"))?;
    }
    let config = scratch.path().join("carapace.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"data\"\n\
             [api]\nlisten = \"127.0.0.1:{API_PORT}\"\n\
             [node]\ncgroup_parent = \"{parent}\"\n\
             [pods]\nport_base = {PORT_BASE}\nport_stride = 1\nmax_pods = {}\n{PODS}\n{POLICY}",
            options.agents + SPARE_PODS
        ),
    )?;
    let spec = scratch.path().join("fidelity.toml");
    std::fs::write(&spec, spec_text(options, &bins.test_agent))?;
    let daemon = Daemon(real::serve(&bins, &config, DAEMON_START)?);
    DAEMON_PID.store(daemon.0.id(), Ordering::SeqCst);
    println!(
        "fidelity_real: daemon pid {} on 127.0.0.1:{API_PORT}; {} agents, {} rounds of each fault, {} seeds",
        daemon.0.id(),
        options.agents,
        options.rounds,
        options.seeds
    );
    let report = options.out.with_extension("");
    let started = Instant::now();
    let fidelity = Command::new(&bins.carapace)
        .arg("fidelity")
        .arg(&spec)
        .arg("--config")
        .arg(&config)
        .arg("--out")
        .arg(&report)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("run carapace fidelity")?;
    let took = started.elapsed();
    // Fidelity removes its agents however it ends; what runs on is a leak worth a word.
    let left = real::pod_pids(parent).len();
    if left > 0 {
        eprintln!("fidelity_real: {left} pod processes outlived their agents; killing them");
    }
    drop(daemon);
    let verdict = match fidelity.status.code() {
        Some(0) => "pass",
        Some(1) => "fail",
        _ => bail!(
            "carapace fidelity exited with {}:\n{}",
            fidelity.status,
            String::from_utf8_lossy(&fidelity.stdout)
        ),
    };
    let summary = String::from_utf8_lossy(&fidelity.stdout);
    let text = format!(
        "# fidelity_real\n\n{} agents (`carapace-test-agent`, 200 ms boot), {} rounds each of kill, hang, \
         truncate-config and kill-supervisor, {} recreates, {} seeds; {:.0} s; verdict: **{verdict}**\n\n{}",
        options.agents,
        options.rounds,
        options.recreates(),
        options.seeds,
        took.as_secs_f64(),
        distributions(&summary)
    );
    println!("\n{text}");
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.out, &text)?;
    println!(
        "fidelity_real: wrote {} and the report {}",
        options.out.display(),
        report.display()
    );
    Ok(())
}

/// The fidelity file: the test agent as the daemon's agents, every fault `rounds` times.
fn spec_text(options: &Options, test_agent: &Path) -> String {
    let agent = test_agent.display();
    let mut text = format!(
        "agents = {}\nrecreates = {}\nsettle = \"200ms\"\ntimeout = \"2m\"\n\
         [client]\ninterval = \"100ms\"\n\
         [sim]\nseeds = {}\n\
         [judge]\nks_max = 0.2\nmin_samples = {JUDGED_FROM}\n\
         [agent]\nname = \"fid\"\nmemory_limit = \"256MiB\"\n\
         command = [\"{agent}\", \"--state\", \"{{state}}\", \"--config\", \"{{config}}\", \"--port\", \"{{port}}\"]\n\
         probe = \"http://127.0.0.1:{{port}}/readyz\"\n\
         validate = [\"{agent}\", \"--validate\", \"--config\", \"{{config}}\"]\n\
         [agent.config]\nport = 1\nboot_ms = 200\ngreeting = \"v1\"\n",
        options.agents,
        options.recreates(),
        options.seeds
    );
    for kind in ["kill", "hang", "truncate-config", "kill-supervisor"] {
        text.push_str(&format!(
            "[[fault]]\nkind = \"{kind}\"\nrepeat = {}\n",
            options.rounds
        ));
    }
    text
}

/// The report's tables from the distributions on (the per-round table is in the report dir).
fn distributions(summary: &str) -> &str {
    summary
        .find("## Distributions")
        .map_or(summary, |at| &summary[at..])
}
