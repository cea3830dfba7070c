//! The phase transitions every flow goes through: queueing, starting, stopping, attaching to
//! and releasing a node, and the agent's timeline.

use super::state::{AfterStop, Launch, Phase, SnapshotSource};
use super::{Controller, InFlight, InFlightKind, Timer};
use crate::command::{Command, StopReason};
use crate::id::{AgentId, NodeId};
use crate::postmortem::{Candidate, TimelineEvent};
use crate::time::Millis;

impl Controller {
    // Nodes.

    // Observations.

    // Transitions.

    /// Moves an agent to `phase`, voiding every timer of the phase it leaves.
    pub(super) fn set_phase(&mut self, id: AgentId, phase: Phase) {
        self.end_starting(id);
        let agent = self.agent_expect(id);
        agent.phase = phase;
        agent.generation = agent.generation.wrapping_add(1);
        agent.deadline = None;
        if phase != Phase::Running {
            agent.healthy_since = None;
        }
    }

    /// Sets the deadline by which the agent must leave its current phase.
    pub(super) fn set_deadline(&mut self, id: AgentId, after_ms: u64) {
        let at = self.now + Millis(after_ms);
        self.agent_expect(id).deadline = Some(at);
        self.arm_agent_timer(
            at,
            |generation| Timer::Deadline {
                agent: id,
                generation,
            },
            id,
        );
    }

    /// Puts the agent in the start queue.
    pub(super) fn enqueue(&mut self, id: AgentId, launch: Launch) {
        let sequence = self.queue.next_sequence();
        self.set_phase(id, Phase::Queued { launch, sequence });
        let agent = self.agent_expect(id);
        let key = (agent.depth, agent.spec.priority, sequence);
        self.queue.insert(key, id);
        self.set_deadline(id, self.config.recovery.queue_deadline_ms);
    }

    /// Puts a queued agent back in line at its old place.
    pub(super) fn requeue(&mut self, id: AgentId) {
        let Some(agent) = self.agent_ref(id) else {
            return;
        };
        if let Phase::Queued { sequence, .. } = agent.phase {
            let key = (agent.depth, agent.spec.priority, sequence);
            self.queue.insert(key, id);
        }
    }

    pub(super) fn retry_unplaced(&mut self) {
        for agent in std::mem::take(&mut self.unplaced) {
            self.requeue(agent);
        }
    }

    /// Issues a start on `node`; the agent must hold no node.
    pub(super) fn start(
        &mut self,
        id: AgentId,
        node_id: NodeId,
        launch: Launch,
        candidates: Vec<Candidate>,
    ) {
        let command = self.next_command_id();
        let agent = self.agent_expect(id);
        assert!(
            agent.node.is_none(),
            "invariant: never two live copies of {id}"
        );
        agent.instance = agent.instance.next();
        agent.version = launch.version;
        agent.memory = Default::default();
        let snapshot = match launch.source {
            SnapshotSource::Empty => None,
            SnapshotSource::Latest => agent.snapshots.latest,
            SnapshotSource::KnownGood => agent.snapshots.known_good.and_then(|(_, s)| s),
        };
        let instance = agent.instance;
        self.note(
            id,
            TimelineEvent::Placed {
                instance,
                node: node_id,
                reason: launch.reason,
                version: launch.version,
                snapshot,
                candidates,
            },
        );
        self.attach_node(id, node_id);
        let warm = self.take_warm_instance(node_id, launch);
        self.set_phase(id, Phase::Starting { command });
        self.agent_expect(id).counted_starting = true;
        self.node_expect(node_id).starting += 1;
        self.starting += 1;
        self.set_deadline(id, self.config.recovery.start_deadline_ms);
        self.in_flight.insert(
            command,
            InFlight {
                agent: id,
                instance,
                kind: InFlightKind::Start,
            },
        );
        self.stats.placements += 1;
        self.emit(Command::Start {
            id: command,
            agent: id,
            instance,
            node: node_id,
            version: launch.version,
            snapshot,
            reason: launch.reason,
            warm,
        });
    }

    /// Issues a stop of the agent's pod; `then` follows when it completes.
    pub(super) fn stop(
        &mut self,
        id: AgentId,
        reason: StopReason,
        snapshot: bool,
        then: AfterStop,
    ) {
        let command = self.next_command_id();
        let agent = self.agent_expect(id);
        let node = agent
            .node
            .expect("invariant: only an agent holding a node is stopped");
        let instance = agent.instance;
        let snapshot = snapshot.then(|| agent.snapshots.allocate());
        self.note(id, TimelineEvent::Stopped { instance, reason });
        self.set_phase(
            id,
            Phase::Stopping {
                command,
                then,
                reason,
            },
        );
        self.set_deadline(id, self.config.recovery.stop_deadline_ms);
        self.in_flight.insert(
            command,
            InFlight {
                agent: id,
                instance,
                kind: InFlightKind::Stop { snapshot },
            },
        );
        self.emit(Command::Stop {
            id: command,
            agent: id,
            instance,
            node,
            snapshot,
            reason,
        });
    }

    /// Changes what follows a stop already under way.
    pub(super) fn set_after_stop(&mut self, id: AgentId, next: AfterStop) {
        if let Phase::Stopping { then, .. } = &mut self.agent_expect(id).phase {
            *then = next;
        }
    }

    /// Issues the same stop again after a failure; the deadline keeps running.
    pub(super) fn retry_stop(&mut self, id: AgentId) {
        let agent = self.agent_expect(id);
        let Phase::Stopping { then, reason, .. } = agent.phase else {
            return;
        };
        let (node, instance) = (
            agent
                .node
                .expect("invariant: a stopping agent holds a node"),
            agent.instance,
        );
        let command = self.next_command_id();
        let agent = self.agent_expect(id);
        agent.phase = Phase::Stopping {
            command,
            then,
            reason,
        };
        self.in_flight.insert(
            command,
            InFlight {
                agent: id,
                instance,
                kind: InFlightKind::Stop { snapshot: None },
            },
        );
        self.emit(Command::Stop {
            id: command,
            agent: id,
            instance,
            node,
            snapshot: None,
            reason,
        });
    }

    pub(super) fn after_stop(&mut self, id: AgentId, then: AfterStop) {
        match then {
            AfterStop::Launch(launch) => self.enqueue(id, launch),
            AfterStop::Park => {
                self.set_phase(id, Phase::Parked);
            }
            AfterStop::Remove => {
                self.set_phase(id, Phase::Parked);
                self.forget(id);
            }
        }
    }

    /// Leaves the starting state, if the agent was in it, and frees its start slot.
    pub(super) fn end_starting(&mut self, id: AgentId) {
        let agent = self.agent_expect(id);
        if !agent.counted_starting {
            return;
        }
        agent.counted_starting = false;
        let node = agent
            .node
            .expect("invariant: a starting agent holds a node");
        let node = self.node_expect(node);
        assert!(
            node.starting > 0,
            "invariant: a node counts its starting agents"
        );
        node.starting -= 1;
        assert!(
            self.starting > 0,
            "invariant: the controller counts starting agents"
        );
        self.starting -= 1;
    }

    pub(super) fn attach_node(&mut self, id: AgentId, node_id: NodeId) {
        let agent = self.agent_expect(id);
        agent.node = Some(node_id);
        agent.committed_bytes = agent.spec.memory_bytes_limit;
        let (limit, reservation, tenant, version) = (
            agent.spec.memory_bytes_limit,
            agent.reservation_bytes,
            agent.spec.tenant,
            agent.version,
        );
        agent.memory.unsampled_charge_bytes = reservation;
        let node = self.node_expect(node_id);
        node.committed_bytes += limit;
        node.reserved_bytes += reservation;
        node.unsampled_bytes += reservation;
        let zone = node.spec.zone;
        let position = node
            .agents
            .binary_search(&id)
            .expect_err("invariant: an agent is listed once per node");
        node.agents.insert(position, id);
        node.remember_version(version);
        self.tenants.add(tenant, node_id, zone);
    }

    /// The agent's pod is gone: give its node back its memory.
    pub(super) fn release_node(&mut self, id: AgentId) {
        self.end_starting(id);
        let agent = self.agent_expect(id);
        let Some(node_id) = agent.node.take() else {
            return;
        };
        let (limit, reservation, used, unsampled, tenant) = (
            std::mem::take(&mut agent.committed_bytes),
            agent.reservation_bytes,
            agent.memory.used_bytes,
            agent.memory.unsampled_charge_bytes,
            agent.spec.tenant,
        );
        agent.memory = Default::default();
        agent.throttled = false;
        let node = self.node_expect(node_id);
        node.committed_bytes = node
            .committed_bytes
            .checked_sub(limit)
            .expect("invariant: committed memory covers every agent on the node");
        node.reserved_bytes = node.reserved_bytes.saturating_sub(reservation);
        node.used_bytes = node.used_bytes.saturating_sub(used);
        node.unsampled_bytes = node.unsampled_bytes.saturating_sub(unsampled);
        let zone = node.spec.zone;
        let position = node
            .agents
            .binary_search(&id)
            .expect("invariant: an agent holding a node is listed on it");
        node.agents.remove(position);
        self.tenants.remove(tenant, node_id, zone);
        self.retry_unplaced_soon();
    }

    pub(super) fn retry_unplaced_soon(&mut self) {
        if self.unplaced.is_empty() || self.retry_armed {
            return;
        }
        self.retry_armed = true;
        self.timers.set(self.now, Timer::RetryPlacement);
    }

    /// Appends to the agent's timeline, if an incident keeps one.
    pub(super) fn note(&mut self, id: AgentId, event: TimelineEvent) {
        let capacity = self.config.limits.timeline_entries;
        let now = self.now;
        if let Some(timeline) = self.agent_expect(id).timeline.as_mut() {
            timeline.push(
                capacity,
                crate::postmortem::TimelineEntry { at: now, event },
            );
        }
    }

    /// Records the input that shows a failure, opening the timeline first so that the
    /// post-mortem starts with what went wrong.
    pub(super) fn note_failure(&mut self, id: AgentId, event: TimelineEvent) {
        self.agent_expect(id)
            .timeline
            .get_or_insert_with(Box::default);
        self.note(id, event);
    }

    /// Appends to the timeline unless the last entry says the same: retries that keep failing
    /// the same way would otherwise flood it.
    pub(super) fn note_once(&mut self, id: AgentId, event: TimelineEvent) {
        let repeated = self
            .agent_expect(id)
            .timeline
            .as_ref()
            .and_then(|t| t.entries.back())
            .is_some_and(|last| last.event == event);
        if !repeated {
            self.note(id, event);
        }
    }

    /// Releases agents whose dependencies now all run.
    pub(super) fn wake_dependents(&mut self) {
        if self.awaiting_dependencies.is_empty() {
            return;
        }
        for id in std::mem::take(&mut self.awaiting_dependencies) {
            self.requeue(id);
        }
    }

    pub(super) fn dependencies_running(&self, id: AgentId) -> bool {
        let Some(agent) = self.agent_ref(id) else {
            return false;
        };
        agent.spec.depends_on().iter().all(|d| {
            self.agent_ref(*d)
                .is_some_and(|a| a.phase == Phase::Running)
        })
    }
}
