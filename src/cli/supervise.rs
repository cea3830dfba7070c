//! `carapace supervise [OPTIONS] -- COMMAND [ARGS...]`: the in-pod daemon (rung 1). Keeps one
//! agent process alive under the engine's Supervisor and prints what happens as JSON lines.
//! `carapace supervise --pod DIR` runs a pod that `carapace serve` laid out: its spec, event
//! log and control socket live in DIR.

use super::{EXIT_BAD_INPUT, EXIT_ESCALATED};
use carapace_drivers::pod::{PodDir, run_pod};
use carapace_drivers::probe::Probe;
use carapace_drivers::process::ProcessSpec;
use carapace_drivers::supervise::{Control, Outcome, SuperviseConfig, supervise};
use carapace_engine::SupervisorPolicy;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// Run the pod laid out in DIR by `carapace serve` (spec, events and control socket there);
    /// every other option is then taken from the pod's spec.
    #[arg(long, conflicts_with_all = ["probe", "command"])]
    pod: Option<PathBuf>,
    /// Health probe: http://IP:PORT/PATH (2xx is healthy), tcp://IP:PORT or "cmd:PROGRAM ARGS".
    #[arg(long, required_unless_present = "pod")]
    probe: Option<Probe>,
    /// Probe period while the agent starts.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    startup_probe_interval: Duration,
    /// Probe period once it answered.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    probe_interval: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
    /// Memory sampling period (resident memory of the agent's process tree).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    memory_interval: Duration,
    /// Time between SIGTERM and SIGKILL when stopping.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Restarts allowed within --restart-period before escalating.
    #[arg(long, default_value_t = SupervisorPolicy::default().restart_intensity)]
    restart_intensity: u32,
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    restart_period: Duration,
    /// Failed probes in a row, process alive, that make a hang.
    #[arg(long, default_value_t = SupervisorPolicy::default().hang_probe_failures)]
    hang_probe_failures: u32,
    /// Environment for the agent, KEY=VALUE (repeatable). Values are never printed.
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Working directory of the agent.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// File the agent's stdout and stderr are appended to.
    #[arg(long)]
    log: Option<PathBuf>,
    /// The agent's command line.
    #[arg(last = true, required_unless_present = "pod")]
    command: Vec<String>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or("expected KEY=VALUE")?;
    if key.is_empty() || key.contains('\0') || value.contains('\0') {
        return Err("expected KEY=VALUE with a non-empty key".into());
    }
    Ok((key.to_owned(), value.to_owned()))
}

pub fn run(args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.pod {
        return run_pod_dir(PodDir::new(dir));
    }
    let defaults = SupervisorPolicy::default();
    let policy = SupervisorPolicy {
        restart_intensity: args.restart_intensity,
        restart_period_ms: u64::try_from(args.restart_period.as_millis()).unwrap_or(u64::MAX),
        hang_probe_failures: args.hang_probe_failures,
        ..defaults
    };
    if policy.restart_intensity == 0 || policy.hang_probe_failures == 0 {
        eprintln!(
            "carapace supervise: --restart-intensity and --hang-probe-failures must be at least 1"
        );
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let mut words = args.command.into_iter();
    let program = words.next().expect("clap requires a command without --pod");
    let config = SuperviseConfig {
        process: ProcessSpec {
            program,
            args: words.collect(),
            env: args.env,
            dir: args.dir,
            log: args.log,
        },
        probe: args.probe.expect("clap requires a probe without --pod"),
        startup_probe_interval: args.startup_probe_interval,
        probe_interval: args.probe_interval,
        probe_timeout: args.probe_timeout,
        memory_interval: args.memory_interval,
        grace: args.grace,
        policy,
        validate: None,
        config_file: None,
        state: None,
        cgroup: None,
    };
    let grace = config.grace;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let shutdown = super::shutdown_signal()?;
        let (control, requests) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            shutdown.await;
            let (reply, _) = tokio::sync::oneshot::channel();
            let _ = control.send(Control::Stop { grace, reply }).await;
        });
        let emit = |event| {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout must not stop supervision: the agent matters more than the log.
            let _ = serde_json::to_writer(&mut stdout, &event);
            let _ = stdout.write_all(b"\n");
            let _ = stdout.flush();
        };
        anyhow::Ok(supervise(config, emit, requests).await?)
    })?;
    Ok(match outcome {
        Outcome::Stopped => ExitCode::SUCCESS,
        Outcome::Escalated(_) => ExitCode::from(EXIT_ESCALATED),
    })
}

fn run_pod_dir(dir: PodDir) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        let shutdown = super::shutdown_signal()?;
        anyhow::Ok(run_pod(dir, shutdown).await?)
    })?;
    Ok(match outcome {
        Outcome::Stopped => ExitCode::SUCCESS,
        Outcome::Escalated(_) => ExitCode::from(EXIT_ESCALATED),
    })
}
