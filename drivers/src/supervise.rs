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
use serde::Serialize;
use std::future::Future;
use std::time::Duration;

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
}

/// What happened, as a line of JSON on the event stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
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
        rss_bytes: u64,
    },
    Escalated {
        at_ms: u64,
        reason: EscalationReason,
    },
    SpawnFailed {
        at_ms: u64,
        error: String,
    },
    Stopped {
        at_ms: u64,
        code: Option<i32>,
    },
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

/// Supervises until `shutdown` resolves or the Supervisor escalates.
pub async fn supervise(
    config: SuperviseConfig,
    mut emit: impl FnMut(Event),
    shutdown: impl Future<Output = ()>,
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
    let mut running = spawn(&config, &clock, 0, &mut emit);
    let mut next_probe = clock.now();
    let mut next_memory = clock.now() + millis(config.memory_interval);
    let mut last_rss = 0u64;
    tokio::pin!(shutdown);
    loop {
        let deadline = supervisor.next_deadline().map(|at| clock.instant(at));
        tokio::select! {
            biased;
            () = &mut shutdown => {
                let code = match running.as_mut() {
                    Some(r) => r.process.stop(config.grace).await.ok().map(exit_code),
                    None => None,
                };
                emit(Event::Stopped { at_ms: clock.now().0, code });
                return Ok(Outcome::Stopped);
            }
            status = wait(&mut running) => {
                let code = status.map(exit_code).unwrap_or(-1);
                let pid = running.take().map_or(0, |r| r.process.pid());
                let now = clock.now();
                emit(Event::Exited { at_ms: now.0, pid, code });
                supervisor.handle(now, SupervisorInput::Exited { agent: AGENT, instance: INSTANCE, code })?;
            }
            () = sleep_until(deadline) => {
                supervisor.handle_timeout(clock.now())?;
            }
            () = tokio::time::sleep_until(clock.instant(next_probe).into()) => {
                let interval = if running.as_ref().is_some_and(|r| r.healthy) { config.probe_interval } else { config.startup_probe_interval };
                next_probe = clock.now() + millis(interval);
                if let Some(r) = running.as_mut() {
                    let result = config.probe.check(config.probe_timeout).await;
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
                        emit(Event::Memory { at_ms: clock.now().0, pid: r.process.pid(), rss_bytes: rss });
                    }
                }
            }
        }
        while let Some(command) = supervisor.poll_command() {
            match command {
                SupervisorCommand::Restart { attempt, .. } => {
                    running = spawn(&config, &clock, attempt, &mut emit);
                    next_probe = clock.now();
                    if running.is_none() {
                        // Spawning failed: to the Supervisor that is an exit like any other.
                        supervisor.handle(
                            clock.now(),
                            SupervisorInput::Exited {
                                agent: AGENT,
                                instance: INSTANCE,
                                code: 127,
                            },
                        )?;
                    }
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
