//! `carapace supervise`: one agent process kept alive by the engine's Supervisor (rung 1).
//!
//! The loop owns the clock, the process and the probes; every decision — restart now, back
//! off, give up and escalate — is the Supervisor's, fed the same observations the simulator
//! feeds it. Events go out as they happen, for a controller (or a human) to follow.

use crate::clock::Clock;
use crate::probe::Probe;
use crate::process::{AgentProcess, ProcessSpec, exit_code, tree_rss_bytes};
use carapace_engine::{
    AgentId, EscalationReason, Instance, Millis, Supervisor, SupervisorCommand, SupervisorInput,
    SupervisorPolicy,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const AGENT: AgentId = AgentId(0);
const INSTANCE: Instance = Instance(1);

/// How to supervise one agent.
#[derive(Clone, Debug)]
pub struct SuperviseConfig {
    pub process: ProcessSpec,
    pub probe: Probe,
    /// Readiness probe period until the first success, then the liveness period.
    pub startup_probe_interval: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub memory_interval: Duration,
    /// SIGTERM to SIGKILL.
    pub grace: Duration,
    pub policy: SupervisorPolicy,
    /// Run before every start; a non-zero exit means the config is broken and the agent is
    /// not started (the controller restores its known-good version: rung 3).
    pub validate: Option<ProcessSpec>,
    /// The config file the validator checks: unchanged since it last passed (same blake3
    /// content hash), it is not checked again.
    pub config_file: Option<PathBuf>,
    /// The agent's state directory, for snapshots.
    pub state: Option<PathBuf>,
    /// The pod's memory cgroup, whose usage is reported beside the process tree's.
    pub cgroup: Option<crate::cgroup::PodCgroup>,
}

/// A request from whoever runs the supervisor (a signal handler, or a pod's control socket).
#[derive(Debug)]
pub enum Control {
    /// Stop the agent and end supervision; replies with how the agent ended.
    Stop {
        grace: Duration,
        reply: oneshot::Sender<Option<i32>>,
    },
    /// Snapshot the state directory as `version` in the store at `store`, the agent paused.
    Snapshot {
        store: PathBuf,
        version: u32,
        reply: oneshot::Sender<Result<(u32, u64), String>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// Hand the running agent (a warm pool's standby) to a new owner without restarting it:
    /// move `staged` over the config file (the agent reloads it itself), emit `spawned` for
    /// the process as it is, and count it ready once `probe` passes — a probe that only the
    /// new config can pass, so ready means the new config has taken effect.
    Adopt {
        staged: Option<PathBuf>,
        probe: Probe,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What the supervisor is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub agent_pid: Option<u32>,
    pub healthy: bool,
}

/// What happened, as a line of JSON on the event stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    Spawned {
        at_ms: u64,
        pid: u32,
        attempt: u32,
    },
    Ready {
        at_ms: u64,
        pid: u32,
        after_ms: u64,
    },
    ProbeFailed {
        at_ms: u64,
        pid: u32,
        reason: String,
    },
    Exited {
        at_ms: u64,
        pid: u32,
        code: i32,
    },
    Memory {
        at_ms: u64,
        pid: u32,
        /// Resident memory of the agent's process tree, from /proc.
        rss_bytes: u64,
        /// What the pod's memory cgroup charges (page cache included): what its limit and
        /// the kernel's OOM killer judge by.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup_bytes: Option<u64>,
    },
    Escalated {
        at_ms: u64,
        reason: EscalationReason,
    },
    SpawnFailed {
        at_ms: u64,
        error: String,
    },
    /// The config failed validation before a start; the agent was not started.
    ConfigRejected {
        at_ms: u64,
        code: i32,
    },
    Snapshotted {
        at_ms: u64,
        version: u32,
        files: u32,
        bytes: u64,
    },
    Stopped {
        at_ms: u64,
        code: Option<i32>,
    },
}

impl Event {
    /// When it happened, on the clock of the supervisor that reports it.
    pub fn at_ms(&self) -> u64 {
        match *self {
            Event::Spawned { at_ms, .. }
            | Event::Ready { at_ms, .. }
            | Event::ProbeFailed { at_ms, .. }
            | Event::Exited { at_ms, .. }
            | Event::Memory { at_ms, .. }
            | Event::Escalated { at_ms, .. }
            | Event::SpawnFailed { at_ms, .. }
            | Event::ConfigRejected { at_ms, .. }
            | Event::Snapshotted { at_ms, .. }
            | Event::Stopped { at_ms, .. } => at_ms,
        }
    }
}

/// How supervision ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Asked to stop; the agent was stopped gracefully.
    Stopped,
    /// Restarting in place cannot help; the controller must take over (rung 2 and up).
    Escalated(EscalationReason),
}

/// An error of the driver itself (not of the agent).
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("the supervisor refused an input: {0}")]
    Engine(#[from] carapace_engine::SupervisorError),
}

struct Running {
    process: AgentProcess,
    spawned_at: Millis,
    healthy: bool,
}

/// Supervises until a [`Control::Stop`] arrives (or `control` closes) or the Supervisor
/// escalates.
pub async fn supervise(
    config: SuperviseConfig,
    mut emit: impl FnMut(Event),
    mut control: mpsc::Receiver<Control>,
) -> Result<Outcome, SuperviseError> {
    let clock = Clock::start();
    let mut supervisor = Supervisor::new(config.policy.clone());
    supervisor.handle(
        clock.now(),
        SupervisorInput::Adopt {
            agent: AGENT,
            instance: INSTANCE,
        },
    )?;
    // The fingerprint of the config file the validator last passed.
    let mut validated = None;
    let mut running = match start(&config, &clock, 0, &mut validated, &mut emit).await {
        Ok(started) => Some(started),
        Err(StartFailure::SpawnFailed) => {
            supervisor.handle(clock.now(), exited(127))?;
            None
        }
        // The controller, told of the broken config by the event, replaces the pod (rung 3).
        Err(StartFailure::ConfigRejected) => None,
    };
    let mut next_probe = clock.now();
    // While a standby is being adopted: the probe that tells the new config took effect.
    let mut adopting: Option<Probe> = None;
    let mut next_memory = clock.now() + millis(config.memory_interval);
    let mut last_rss = 0u64;
    loop {
        let deadline = supervisor.next_deadline().map(|at| clock.instant(at));
        tokio::select! {
            biased;
            request = control.recv() => {
                let Some(request) = request else {
                    stop(&mut running, config.grace, &clock, &mut emit).await;
                    return Ok(Outcome::Stopped);
                };
                match request {
                    Control::Stop { grace, reply } => {
                        let code = stop(&mut running, grace, &clock, &mut emit).await;
                        let _ = reply.send(code);
                        return Ok(Outcome::Stopped);
                    }
                    Control::Snapshot { store, version, reply } => {
                        let pid = running.as_ref().map(|r| r.process.pid());
                        let result = snapshot(config.state.as_deref(), pid, &store, version).await;
                        if let Ok((files, bytes)) = result {
                            emit(Event::Snapshotted { at_ms: clock.now().0, version, files, bytes });
                        }
                        let _ = reply.send(result);
                    }
                    Control::Status { reply } => {
                        let _ = reply.send(Status {
                            agent_pid: running.as_ref().map(|r| r.process.pid()),
                            healthy: running.as_ref().is_some_and(|r| r.healthy),
                        });
                    }
                    Control::Adopt { staged, probe, reply } => {
                        let adopted = adopt(&config, &clock, running.as_mut(), staged, &mut emit);
                        if adopted.is_ok() {
                            // The config the validator passed is no longer the file's.
                            validated = None;
                            adopting = Some(probe);
                            next_probe = clock.now();
                        }
                        let _ = reply.send(adopted);
                    }
                }
            }
            status = wait(&mut running) => {
                // A restart is a fresh boot on the file's config: the usual probe again.
                adopting = None;
                let code = status.map(exit_code).unwrap_or(-1);
                let pid = running.take().map_or(0, |r| r.process.pid());
                let now = clock.now();
                emit(Event::Exited { at_ms: now.0, pid, code });
                supervisor.handle(now, exited(code))?;
            }
            () = sleep_until(deadline) => {
                supervisor.handle_timeout(clock.now())?;
            }
            () = tokio::time::sleep_until(clock.instant(next_probe).into()) => {
                let interval = if running.as_ref().is_some_and(|r| r.healthy) { config.probe_interval } else { config.startup_probe_interval };
                next_probe = clock.now() + millis(interval);
                if let Some(r) = running.as_mut() {
                    let probe = adopting.as_ref().unwrap_or(&config.probe);
                    let result = probe.check(config.probe_timeout).await;
                    if adopting.is_some() && result.is_ok() {
                        adopting = None;
                    }
                    observe_probe(&mut supervisor, &clock, r, result, &mut emit)?;
                }
            }
            () = tokio::time::sleep_until(clock.instant(next_memory).into()) => {
                next_memory = clock.now() + millis(config.memory_interval);
                if let Some(r) = running.as_ref() {
                    let rss = tree_rss_bytes(r.process.pid()).unwrap_or(0);
                    // Report moves, not repeats: a quiet agent makes a quiet stream.
                    if rss.abs_diff(last_rss) * 20 > last_rss {
                        last_rss = rss;
                        let cgroup_bytes = config.cgroup.as_ref().and_then(|c| c.usage_bytes().ok());
                        emit(Event::Memory { at_ms: clock.now().0, pid: r.process.pid(), rss_bytes: rss, cgroup_bytes });
                    }
                }
            }
        }
        while let Some(command) = supervisor.poll_command() {
            match command {
                SupervisorCommand::Restart { attempt, .. } => {
                    match start(&config, &clock, attempt, &mut validated, &mut emit).await {
                        Ok(started) => running = Some(started),
                        // Spawning failed: to the Supervisor that is an exit like any other.
                        Err(StartFailure::SpawnFailed) => {
                            supervisor.handle(clock.now(), exited(127))?;
                        }
                        // No restart in place mends a broken config: wait, agent down, for
                        // the controller to replace the pod.
                        Err(StartFailure::ConfigRejected) => {}
                    }
                    next_probe = clock.now();
                }
                SupervisorCommand::Escalate { reason, .. } => {
                    emit(Event::Escalated {
                        at_ms: clock.now().0,
                        reason,
                    });
                    if let Some(r) = running.as_mut() {
                        // A hung process still holds its port and state: free them for the
                        // instance the controller will start.
                        let _ = r.process.stop(config.grace).await;
                    }
                    return Ok(Outcome::Escalated(reason));
                }
            }
        }
    }
}

/// Puts the staged config in place under the running agent and reports the process as
/// spawned anew, unready until the adoption probe passes.
fn adopt(
    config: &SuperviseConfig,
    clock: &Clock,
    running: Option<&mut Running>,
    staged: Option<PathBuf>,
    emit: &mut impl FnMut(Event),
) -> Result<(), String> {
    let running = running
        .filter(|r| r.healthy)
        .ok_or("the agent is not running and ready: nothing to adopt")?;
    if let (Some(staged), Some(file)) = (staged, &config.config_file) {
        // A rename: the agent's watcher sees one complete file, never a half-written one.
        std::fs::rename(&staged, file)
            .map_err(|e| format!("cannot put the config in place: {e}"))?;
    }
    let now = clock.now();
    running.healthy = false;
    running.spawned_at = now;
    emit(Event::Spawned {
        at_ms: now.0,
        pid: running.process.pid(),
        attempt: 0,
    });
    Ok(())
}

fn exited(code: i32) -> SupervisorInput {
    SupervisorInput::Exited {
        agent: AGENT,
        instance: INSTANCE,
        code,
    }
}

async fn stop(
    running: &mut Option<Running>,
    grace: Duration,
    clock: &Clock,
    emit: &mut impl FnMut(Event),
) -> Option<i32> {
    let code = match running.as_mut() {
        Some(r) => r.process.stop(grace).await.ok().map(exit_code),
        None => None,
    };
    *running = None;
    emit(Event::Stopped {
        at_ms: clock.now().0,
        code,
    });
    code
}

/// Copies the state directory into the snapshot store with the agent's process group paused,
/// so that files written together (SQLite's db, WAL and shm) are copied as of one instant.
async fn snapshot(
    state: Option<&std::path::Path>,
    agent_pid: Option<u32>,
    store: &std::path::Path,
    version: u32,
) -> Result<(u32, u64), String> {
    let state = state
        .ok_or("this supervisor has no state directory")?
        .to_owned();
    let store = store.to_owned();
    // A process someone else stopped (an operator, a debugger, a hang being examined) stays
    // stopped: the snapshot pauses only what it will resume.
    let agent_pid = agent_pid.filter(|pid| !crate::process::is_stopped(*pid));
    if let Some(pid) = agent_pid {
        crate::process::signal_group(pid, nix::sys::signal::Signal::SIGSTOP);
    }
    let copied = tokio::task::spawn_blocking(move || {
        let store = crate::snapshot::Store::open(store).map_err(|e| e.to_string())?;
        let manifest = store
            .take(&state, version, SNAPSHOT_EXCLUDES)
            .map_err(|e| e.to_string())?;
        let bytes = manifest.files.iter().map(|f| f.size).sum();
        Ok((manifest.files.len() as u32, bytes))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the snapshot task failed: {e}")));
    if let Some(pid) = agent_pid {
        crate::process::signal_group(pid, nix::sys::signal::Signal::SIGCONT);
    }
    copied
}

/// Top-level directories of a state directory that snapshots skip: locks and scratch files
/// that a new instance must not inherit.
pub const SNAPSHOT_EXCLUDES: &[&str] = &["tmp"];

fn observe_probe(
    supervisor: &mut Supervisor,
    clock: &Clock,
    running: &mut Running,
    result: Result<(), String>,
    emit: &mut impl FnMut(Event),
) -> Result<(), SuperviseError> {
    let now = clock.now();
    let pid = running.process.pid();
    match result {
        Ok(()) => {
            if !running.healthy {
                running.healthy = true;
                emit(Event::Ready {
                    at_ms: now.0,
                    pid,
                    after_ms: now.saturating_since(running.spawned_at).0,
                });
            }
            supervisor.handle(
                now,
                SupervisorInput::ProbeSucceeded {
                    agent: AGENT,
                    instance: INSTANCE,
                },
            )?;
        }
        // Before the first success the agent is still booting: failures are expected.
        Err(_) if !running.healthy => {}
        Err(reason) => {
            emit(Event::ProbeFailed {
                at_ms: now.0,
                pid,
                reason,
            });
            supervisor.handle(
                now,
                SupervisorInput::ProbeFailed {
                    agent: AGENT,
                    instance: INSTANCE,
                },
            )?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartFailure {
    ConfigRejected,
    SpawnFailed,
}

/// Validates the config (when a validator is set), then spawns the agent. A rejected config
/// is reported as its own event.
async fn start(
    config: &SuperviseConfig,
    clock: &Clock,
    attempt: u32,
    validated: &mut Option<blake3::Hash>,
    emit: &mut impl FnMut(Event),
) -> Result<Running, StartFailure> {
    if let Some(validator) = &config.validate {
        // The config that passed last time passes again: a restart in place of a ~1 GB
        // gateway should not wait ~2.5 s for `openclaw config validate` to say so.
        let fingerprint = config
            .config_file
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .map(|bytes| blake3::hash(&bytes));
        if fingerprint.is_some() && fingerprint == *validated {
            return spawn(config, clock, attempt, emit).ok_or(StartFailure::SpawnFailed);
        }
        let code = match AgentProcess::spawn(validator) {
            Ok(mut process) => match tokio::time::timeout(VALIDATE_TIMEOUT, process.wait()).await {
                Ok(Ok(status)) => exit_code(status),
                Ok(Err(_)) => 127,
                Err(_) => {
                    let _ = process.stop(Duration::ZERO).await;
                    124
                }
            },
            Err(_) => 127,
        };
        if code != 0 {
            *validated = None;
            emit(Event::ConfigRejected {
                at_ms: clock.now().0,
                code,
            });
            return Err(StartFailure::ConfigRejected);
        }
        *validated = fingerprint;
    }
    spawn(config, clock, attempt, emit).ok_or(StartFailure::SpawnFailed)
}

/// A validator that has not answered by then counts as a rejection.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

fn spawn(
    config: &SuperviseConfig,
    clock: &Clock,
    attempt: u32,
    emit: &mut impl FnMut(Event),
) -> Option<Running> {
    let now = clock.now();
    match AgentProcess::spawn(&config.process) {
        Ok(process) => {
            emit(Event::Spawned {
                at_ms: now.0,
                pid: process.pid(),
                attempt,
            });
            Some(Running {
                process,
                spawned_at: now,
                healthy: false,
            })
        }
        Err(error) => {
            emit(Event::SpawnFailed {
                at_ms: now.0,
                error: error.to_string(),
            });
            None
        }
    }
}

async fn wait(running: &mut Option<Running>) -> std::io::Result<std::process::ExitStatus> {
    match running {
        Some(r) => r.process.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn millis(duration: Duration) -> Millis {
    Millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}
