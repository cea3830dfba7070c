//! One chaos round: wait for the agent to settle, inject the fault into its real pod, and
//! follow the daemon's event feed until the agent is healthy again, alerted, or untouched.

use super::FaultKind;
use super::daemon::{Client, Daemon};
use crate::cli::calibrate::Phases;
use carapace_engine::{AgentId, Millis, Rung};
use carapace_sim::Measures;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one round does, to which agent, and how long it may take.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The daemon's data directory (its log is appended to when it is restarted).
    pub data: PathBuf,
    pub agent: String,
    pub id: AgentId,
    pub class: String,
    pub fault: FaultKind,
    pub settle: Duration,
    pub timeout: Duration,
    pub spike_bytes: u64,
    pub client_timeout: Duration,
    /// The daemon's config, to start it again after `kill-daemon`.
    pub restart_with: Option<PathBuf>,
}

/// How one round ended, and when (engine time) its fault was injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub injected_at: Millis,
    pub ending: Ending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Healthy again; the rung that did it.
    Recovered(Option<Rung>),
    Alerted,
    /// The fault did not stop the agent (a spike whose victim was the spiking process).
    Absorbed,
}

/// Runs one round; its incident goes into `measures` and the phases it shows into `phases`.
pub fn run(
    daemon: &Daemon,
    plan: &Plan,
    client: &Client,
    measures: &mut Measures,
    phases: &mut Phases,
) -> anyhow::Result<Outcome> {
    let (args, agent, class) = (plan, plan.id, plan.class.as_str());
    // Running, and the last incident closed (known-good again): otherwise a new fault would
    // count as a relapse of the old one and climb the ladder.
    let settled = |v: &Value| v["status"] == "running" && v["rung"].is_null();
    daemon.wait(&args.agent, args.timeout, settled)?;
    std::thread::sleep(args.settle);
    let view = daemon.wait(&args.agent, args.timeout, settled)?;
    // A snapshot pauses the agent and resumes it: a hang injected meanwhile would be undone.
    daemon.wait_for_snapshots(&args.agent, SNAPSHOT_WAIT)?;
    let after = daemon.feed_tail()?;
    let injected_at = inject(args, &view)?;
    phases.injected(args.fault, injected_at);
    let mut seen = after;

    // A spike's victim is the kernel's choice: when it is the spiking process itself, the
    // agent never stops serving and there is no incident. Every other fault stops it.
    let mut open = args.fault != FaultKind::Spike;
    if open {
        measures.fault(agent, args.fault.fault(), injected_at);
    }
    let mut detected = false;
    if args.fault == FaultKind::KillDaemon {
        if let Some(at) = kill_daemon_mid_command(daemon, args, seen)? {
            measures.observed(agent, at);
            detected = true;
        }
        // The restarted daemon's feed starts afresh (its decisions replayed from the journal).
        seen = 0;
    }
    let deadline = Instant::now() + args.timeout;
    let absorbed_after = Instant::now() + SPIKE_WINDOW;
    loop {
        let feed = daemon.events(seen)?;
        for event in feed["events"].as_array().into_iter().flatten() {
            seen = event["seq"].as_u64().unwrap_or(seen);
            if event["agent"] != args.agent.as_str() {
                continue;
            }
            phases.see(event);
            let at = Millis(event["at_ms"].as_u64().unwrap_or(0));
            let name = event["event"].as_str().unwrap_or("");
            let failure = event["kind"] == "observation" && FAILURES.contains(&name);
            if failure && !open {
                measures.fault(agent, args.fault.fault(), injected_at);
                open = true;
            }
            if failure && !detected {
                measures.observed(agent, at);
                detected = true;
            }
            if open && name == "ready" && at >= injected_at {
                let current = daemon.agent(&args.agent)?;
                let rung = rung_of(&current["rung"]);
                let first_request = client.first_request_after(injected_at).unwrap_or(at);
                let timeout = Millis(args.client_timeout.as_millis() as u64);
                measures.healthy(agent, class, at, rung, first_request, timeout);
                return Ok(Outcome {
                    injected_at,
                    ending: Ending::Recovered(rung),
                });
            }
            if name == "alert" {
                measures.alerted(agent, class, at);
                return Ok(Outcome {
                    injected_at,
                    ending: Ending::Alerted,
                });
            }
        }
        if !open && Instant::now() > absorbed_after {
            return Ok(Outcome {
                injected_at,
                ending: Ending::Absorbed,
            });
        }
        if Instant::now() > deadline {
            anyhow::bail!("not healthy again within {:?}", args.timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Observations that show the agent stopped serving.
const FAILURES: &[&str] = &[
    "exited",
    "probe_failed",
    "escalated",
    "config_rejected",
    "spawn_failed",
    "supervisor_lost",
];

/// How long to let a snapshot under way finish before injecting anyway.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// A spike that has not stopped the agent by then was absorbed by its pod.
const SPIKE_WINDOW: Duration = Duration::from_secs(15);

/// Injects the fault into the agent's pod; returns the engine time it happened at.
fn inject(args: &Plan, view: &Value) -> anyhow::Result<Millis> {
    let pod = &view["pod"];
    let pid = |field: &str| -> anyhow::Result<i32> {
        pod[field]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow::anyhow!("the agent's pod reports no {field}: {pod}"))
    };
    let dir = PathBuf::from(pod["dir"].as_str().unwrap_or_default());
    // The engine time of the view, plus what passed since it was read.
    let read_at = Instant::now();
    let now_ms = view["now_ms"].as_u64().unwrap_or(0);
    let kill = |pid: i32, signal| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| anyhow::anyhow!("signal {pid}: {e}"))
    };
    match args.fault {
        FaultKind::Kill => kill(pid("agent_pid")?, nix::sys::signal::Signal::SIGKILL)?,
        FaultKind::Hang => kill(pid("agent_pid")?, nix::sys::signal::Signal::SIGSTOP)?,
        FaultKind::KillSupervisor | FaultKind::KillDaemon => {
            kill(pid("supervisor_pid")?, nix::sys::signal::Signal::SIGKILL)?
        }
        FaultKind::TruncateConfig => {
            let config = dir.join("config.json");
            let length = std::fs::metadata(&config)?.len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&config)?
                .set_len(length / 8)?;
            kill(pid("agent_pid")?, nix::sys::signal::Signal::SIGKILL)?;
        }
        FaultKind::Spike => spike(&dir, args.spike_bytes)?,
    }
    Ok(Millis(now_ms + read_at.elapsed().as_millis() as u64))
}

/// Kills the daemon with SIGKILL at its first decision about the agent after `after` (a
/// command journaled and under way), then starts it again and waits for its API. Returns when
/// the daemon had observed the fault, if it had.
fn kill_daemon_mid_command(
    daemon: &Daemon,
    args: &Plan,
    after: u64,
) -> anyhow::Result<Option<Millis>> {
    let config = args
        .restart_with
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--fault kill-daemon needs --restart-with CONFIG"))?;
    let deadline = Instant::now() + args.timeout;
    let mut observed = None;
    'decided: loop {
        let feed = daemon.events(after)?;
        for event in feed["events"].as_array().into_iter().flatten() {
            if event["agent"] != args.agent.as_str() {
                continue;
            }
            let name = event["event"].as_str().unwrap_or("");
            if observed.is_none() && event["kind"] == "observation" && FAILURES.contains(&name) {
                observed = event["at_ms"].as_u64().map(Millis);
            }
            if event["kind"] == "decision" {
                break 'decided;
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the daemon decided nothing about {} within {:?}",
                args.agent,
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = i32::try_from(daemon.pid)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| anyhow::anyhow!("kill -9 the daemon ({pid}): {e}"))?;
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let log_path = args.data.join("serve.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut restarted = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    // The restart has a timeout of its own: the wait for a decision above may have used most
    // of the first.
    let deadline = Instant::now() + args.timeout;
    while daemon.get("/v1/nodes").is_err() {
        if let Some(status) = restarted.try_wait()? {
            anyhow::bail!(
                "the restarted daemon exited ({status}); {}",
                log_tail(&log_path)
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the daemon did not come back within {:?}; {}",
                args.timeout,
                log_tail(&log_path)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(observed)
}

/// The last lines of the daemon's log, for an error that says why it did not come back.
fn log_tail(path: &Path) -> String {
    const LINES: usize = 12;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LINES)..].join("\n  ");
            format!("the end of {}:\n  {tail}", path.display())
        }
        Err(error) => format!("{} unreadable: {error}", path.display()),
    }
}

/// Starts a process inside the pod's memory cgroup that allocates `bytes` and holds them: the
/// kernel's OOM killer then picks a victim inside the pod, as it would for a real spike.
fn spike(dir: &Path, bytes: u64) -> anyhow::Result<()> {
    let spec: Value = serde_json::from_slice(&std::fs::read(dir.join("pod.json"))?)?;
    let cgroup = spec["cgroup"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the pod has no memory cgroup: limits are not enforced"))?;
    let mut hog = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, time\nsys.stdin.readline()\nb = bytearray(int(sys.argv[1]))\ntime.sleep(600)",
            &bytes.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    std::fs::write(Path::new(cgroup).join("cgroup.procs"), hog.id().to_string())?;
    use std::io::Write as _;
    hog.stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("the hog's stdin"))?
        .write_all(b"go\n")?;
    // Reaped later; it dies to the OOM killer or with the pod.
    std::thread::spawn(move || {
        let _ = hog.wait();
    });
    Ok(())
}

fn rung_of(value: &Value) -> Option<Rung> {
    Some(match value.as_str()? {
        "restart_in_place" => Rung::RestartInPlace,
        "recreate" => Rung::Recreate,
        "restore_known_good" => Rung::RestoreKnownGood,
        "alert" => Rung::Alert,
        _ => return None,
    })
}
