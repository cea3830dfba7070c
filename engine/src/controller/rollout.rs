//! Rollouts: a version change staged in waves, each gated on the previous wave becoming
//! known-good, rolled back everywhere when one agent fails on the new version.

use super::Controller;
use super::state::{AfterStop, Launch, Phase, SnapshotSource};
use crate::command::{Command, RolloutState, StartReason, StopReason};
use crate::error::EngineError;
use crate::id::{AgentId, RolloutId, Version};
use crate::spec::RolloutSpec;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug)]
pub(crate) struct Rollout {
    version: Version,
    wave_size: usize,
    /// Agents in the order they change: dependencies first.
    order: Vec<AgentId>,
    changed: usize,
    wave: u32,
    /// Agents of the current wave not yet known-good on the new version.
    waiting: BTreeSet<AgentId>,
    /// Desired versions before the rollout, for rolling back.
    previous: BTreeMap<AgentId, Version>,
    active: bool,
}

impl Controller {
    pub(super) fn start_rollout(&mut self, spec: RolloutSpec) -> Result<(), EngineError> {
        if self.rollouts.contains_key(&spec.id) {
            return Err(EngineError::DuplicateRollout(spec.id));
        }
        let invalid = |field, problem: &str| EngineError::InvalidSpec {
            subject: spec.id.to_string(),
            field,
            problem: problem.to_owned(),
        };
        if spec.wave_size == 0 {
            return Err(invalid("wave_size", "must be at least 1"));
        }
        let mut seen = BTreeSet::new();
        for &agent in &spec.agents {
            let a = self
                .agent_ref(agent)
                .ok_or(EngineError::UnknownAgent(agent))?;
            if a.rollout.is_some() {
                return Err(invalid(
                    "agents",
                    "names an agent already in an active rollout",
                ));
            }
            if !seen.insert(agent) {
                return Err(invalid("agents", "names an agent twice"));
            }
        }
        let mut order = spec.agents.clone();
        order.sort_by_key(|a| (self.agent_ref(*a).map_or(0, |a| a.depth), *a));
        for &agent in &order {
            self.agent_expect(agent).rollout = Some(spec.id);
        }
        self.rollouts.insert(
            spec.id,
            Rollout {
                version: spec.version,
                wave_size: spec.wave_size as usize,
                order,
                changed: 0,
                wave: 0,
                waiting: BTreeSet::new(),
                previous: BTreeMap::new(),
                active: true,
            },
        );
        self.next_wave(spec.id);
        Ok(())
    }

    fn next_wave(&mut self, id: RolloutId) {
        let rollout = self
            .rollouts
            .get_mut(&id)
            .expect("invariant: rollout exists");
        if rollout.changed == rollout.order.len() {
            rollout.active = false;
            for agent in rollout.order.clone() {
                if let Some(a) = self.agent_mut(agent) {
                    a.rollout = None;
                }
            }
            self.emit(Command::ReportRollout {
                rollout: id,
                state: RolloutState::Completed,
            });
            return;
        }
        let end = (rollout.changed + rollout.wave_size).min(rollout.order.len());
        let wave: Vec<AgentId> = rollout.order[rollout.changed..end].to_vec();
        rollout.changed = end;
        let (number, version) = (rollout.wave, rollout.version);
        rollout.wave += 1;
        self.emit(Command::ReportRollout {
            rollout: id,
            state: RolloutState::WaveStarted {
                wave: number,
                agents: wave.len() as u32,
            },
        });
        for agent in wave {
            let Some(a) = self.agent_mut(agent) else {
                continue;
            };
            let previous = std::mem::replace(&mut a.spec.version, version);
            let rollout = self
                .rollouts
                .get_mut(&id)
                .expect("invariant: rollout exists");
            rollout.previous.insert(agent, previous);
            // A parked agent changes version now but cannot gate the wave: it will not become
            // known-good until an operator acts on it.
            if self
                .agent_ref(agent)
                .is_some_and(|a| a.phase != Phase::Parked)
            {
                let rollout = self
                    .rollouts
                    .get_mut(&id)
                    .expect("invariant: rollout exists");
                rollout.waiting.insert(agent);
            }
            self.change_version(agent, version);
        }
        if self.rollouts[&id].waiting.is_empty() {
            self.next_wave(id);
        }
    }

    /// Restarts the agent at `version` (its desired version is already set).
    fn change_version(&mut self, agent: AgentId, version: Version) {
        let launch = Launch {
            reason: StartReason::Rollout,
            version,
            source: SnapshotSource::Latest,
            avoid: None,
        };
        match self.agent_expect(agent).phase {
            Phase::Running | Phase::Restarting | Phase::Starting { .. } => {
                if self.agent_expect(agent).version != version {
                    self.stop(agent, StopReason::Rollout, true, AfterStop::Launch(launch));
                }
            }
            Phase::Queued {
                launch: mut queued,
                sequence,
            } => {
                queued.version = version;
                self.agent_expect(agent).phase = Phase::Queued {
                    launch: queued,
                    sequence,
                };
            }
            Phase::Stopping {
                then: AfterStop::Launch(mut next),
                ..
            } => {
                next.version = version;
                self.set_after_stop(agent, AfterStop::Launch(next));
            }
            Phase::Stopping { .. } | Phase::Parked => {}
        }
    }

    /// The agent was healthy for the dwell time on its current version.
    pub(super) fn rollout_on_known_good(&mut self, agent: AgentId) {
        let Some(id) = self.agent_expect(agent).rollout else {
            return;
        };
        let version = self.agent_expect(agent).version;
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        if !rollout.active || version != rollout.version || !rollout.waiting.remove(&agent) {
            return;
        }
        if rollout.waiting.is_empty() {
            self.next_wave(id);
        }
    }

    /// The agent failed while part of a rollout: on the new version, that rolls everything back.
    /// Failures that are not the agent's own (its node died, it was evicted) say nothing about
    /// the new version and leave the rollout alone.
    pub(super) fn rollout_on_failure(&mut self, failed: AgentId, cause: crate::Cause) {
        if matches!(
            cause,
            crate::Cause::NodeLost | crate::Cause::Evicted | crate::Cause::NoCapacity
        ) {
            return;
        }
        let Some(id) = self.agent_expect(failed).rollout else {
            return;
        };
        let Some(rollout) = self.rollouts.get_mut(&id) else {
            return;
        };
        if !rollout.active || !rollout.previous.contains_key(&failed) {
            return;
        }
        rollout.active = false;
        let previous = std::mem::take(&mut rollout.previous);
        let order = rollout.order.clone();
        for agent in order {
            if let Some(a) = self.agent_mut(agent) {
                a.rollout = None;
            }
        }
        self.emit(Command::ReportRollout {
            rollout: id,
            state: RolloutState::RolledBack {
                failed_agent: failed,
            },
        });
        for (agent, version) in previous {
            let Some(a) = self.agent_mut(agent) else {
                continue;
            };
            a.spec.version = version;
            // The failing agent's own ladder restarts it, now at the old desired version.
            if agent != failed {
                self.change_version(agent, version);
            }
        }
    }
}
