//! Observations of instances: healthy, exited, probe failures, rejected configs, escalations,
//! finished commands, and the timers of a running agent (known-good dwell, snapshots).

use super::state::Phase;
use super::{Controller, InFlight, InFlightKind, Timer};
use crate::command::Command;
use crate::error::EngineError;
use crate::id::{AgentId, Instance};
use crate::input::Outcome;
use crate::postmortem::{Cause, TimelineEvent};
use crate::time::Millis;

impl Controller {
    pub(super) fn on_healthy(
        &mut self,
        id: AgentId,
        instance: Instance,
    ) -> Result<(), EngineError> {
        if !self.current(id, instance)? {
            return Ok(());
        }
        let phase = self.agent_expect(id).phase;
        if !matches!(phase, Phase::Starting { .. } | Phase::Restarting) {
            return Ok(());
        }
        self.set_phase(id, Phase::Running);
        let now = self.now;
        let dwell = Millis(self.config.recovery.known_good_dwell_ms);
        let snapshot_every = Millis(self.config.recovery.snapshot_interval_ms);
        self.agent_expect(id).healthy_since = Some(now);
        self.note(id, TimelineEvent::Healthy { instance });
        self.arm_agent_timer(
            now + dwell,
            |generation| Timer::Dwell {
                agent: id,
                generation,
            },
            id,
        );
        self.arm_snapshot_timer(now + snapshot_every, id);
        self.wake_dependents();
        Ok(())
    }

    pub(super) fn on_exited(
        &mut self,
        id: AgentId,
        instance: Instance,
        code: i32,
        oom_killed: bool,
    ) -> Result<(), EngineError> {
        if !self.current(id, instance)? {
            return Ok(());
        }
        self.note_failure(
            id,
            TimelineEvent::Exited {
                instance,
                code,
                oom_killed,
            },
        );
        if oom_killed {
            // It needed more than we thought: reserve its whole limit until it shows otherwise.
            self.learn_oom(id);
        }
        let cause = if oom_killed {
            Cause::OomKilled
        } else {
            Cause::Crashed
        };
        self.on_failure(id, cause);
        Ok(())
    }

    pub(super) fn on_probe_failed(
        &mut self,
        id: AgentId,
        instance: Instance,
    ) -> Result<(), EngineError> {
        if self.current(id, instance)? {
            self.note(id, TimelineEvent::ProbeFailed { instance });
        }
        Ok(())
    }

    pub(super) fn on_config_rejected(
        &mut self,
        id: AgentId,
        instance: Instance,
        version: crate::Version,
    ) -> Result<(), EngineError> {
        if self.current(id, instance)? {
            self.note_failure(id, TimelineEvent::ConfigRejected { instance, version });
            self.on_failure(id, Cause::ConfigInvalid);
        }
        Ok(())
    }

    pub(super) fn on_escalated(
        &mut self,
        id: AgentId,
        instance: Instance,
        reason: crate::EscalationReason,
    ) -> Result<(), EngineError> {
        if self.current(id, instance)? {
            self.note_failure(id, TimelineEvent::Escalated { instance, reason });
            self.on_failure(id, Cause::from_escalation(reason));
        }
        Ok(())
    }

    pub(super) fn on_finished(&mut self, command: crate::CommandId, outcome: Outcome) {
        if let Some(node) = self.warming.remove(&command) {
            self.on_warmed(node, outcome);
            return;
        }
        let Some(flight) = self.in_flight.remove(command) else {
            self.stats.stale_inputs += 1;
            return;
        };
        let InFlight {
            agent: id,
            instance,
            kind,
        } = flight;
        let Some(agent) = self.agent_ref(id) else {
            return;
        };
        if agent.instance != instance {
            self.stats.stale_inputs += 1;
            return;
        }
        match kind {
            InFlightKind::Start => {
                if outcome == Outcome::Failed && matches!(agent.phase, Phase::Starting { .. }) {
                    self.note_failure(id, TimelineEvent::StartFailed { instance });
                    self.release_node(id);
                    self.on_failure(id, Cause::StartFailed);
                }
            }
            InFlightKind::Stop { snapshot } => {
                let Phase::Stopping {
                    command: current,
                    then,
                    ..
                } = agent.phase
                else {
                    return;
                };
                if current != command {
                    return;
                }
                if outcome == Outcome::Failed {
                    let generation = agent.generation;
                    self.timers.set(
                        self.now + Millis(1_000),
                        Timer::RetryStop {
                            agent: id,
                            generation,
                        },
                    );
                    return;
                }
                if outcome == Outcome::Succeeded
                    && let Some(snapshot) = snapshot
                {
                    self.agent_expect(id).snapshots.latest = Some(snapshot);
                }
                self.release_node(id);
                self.after_stop(id, then);
            }
            InFlightKind::Snapshot {
                snapshot,
                known_good,
            } => {
                let version = agent.version;
                let snapshots = &mut self.agent_expect(id).snapshots;
                if outcome == Outcome::Succeeded {
                    if snapshots.latest.is_none_or(|latest| latest < snapshot) {
                        snapshots.latest = Some(snapshot);
                    }
                    if known_good {
                        snapshots.known_good = Some((version, Some(snapshot)));
                    }
                }
            }
        }
    }

    pub(super) fn on_dwell(&mut self, id: AgentId) {
        let agent = self.agent_expect(id);
        if agent.phase != Phase::Running {
            return;
        }
        let version = agent.version;
        let latest = agent.snapshots.latest;
        agent.snapshots.known_good = Some((version, latest));
        let closed = agent.incident.take();
        agent.timeline = None;
        self.stats.known_good_marks += 1;
        if let Some(incident) = closed {
            self.count_resolved(incident);
        }
        self.take_snapshot(id, true);
        self.rollout_on_known_good(id);
    }

    pub(super) fn on_snapshot_due(&mut self, id: AgentId) {
        if self.agent_expect(id).phase != Phase::Running {
            return;
        }
        self.take_snapshot(id, false);
        let at = self.now + Millis(self.config.recovery.snapshot_interval_ms);
        self.arm_snapshot_timer(at, id);
    }

    pub(super) fn take_snapshot(&mut self, id: AgentId, known_good: bool) {
        let command = self.next_command_id();
        let agent = self.agent_expect(id);
        let snapshot = agent.snapshots.allocate();
        let (instance, node) = (
            agent.instance,
            agent.node.expect("invariant: a running agent holds a node"),
        );
        self.in_flight.insert(
            command,
            InFlight {
                agent: id,
                instance,
                kind: InFlightKind::Snapshot {
                    snapshot,
                    known_good,
                },
            },
        );
        self.emit(Command::TakeSnapshot {
            id: command,
            agent: id,
            instance,
            node,
            snapshot,
            known_good,
        });
    }
}
