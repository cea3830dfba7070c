//! Desired-state changes, node membership and the phase transitions every flow goes through.

use super::state::{
    AfterStop, Agent, Launch, Node, NodeState, Phase, SnapshotSource, VERSION_CACHE,
};
use super::{Controller, InFlight, InFlightKind, Timer};
use crate::command::{Command, StartReason, StopReason};
use crate::error::EngineError;
use crate::id::{AgentId, Instance, NodeId};
use crate::input::Outcome;
use crate::postmortem::{Candidate, Cause, TimelineEvent};
use crate::spec::{AgentSpec, NodeSpec};
use crate::time::Millis;

impl Controller {
    pub(super) fn create_agent(&mut self, spec: AgentSpec) -> Result<(), EngineError> {
        self.validate_agent_spec(&spec)?;
        if self.agent_ref(spec.id).is_some() {
            return Err(EngineError::DuplicateAgent(spec.id));
        }
        let depth = self.dependencies.set(spec.id, &spec.depends_on)?;
        let id = spec.id;
        if self.warm_runtime.is_none() {
            // The fleet's runtime is known from its first agent: warm every pool for it.
            self.warm_runtime = Some(spec.version.runtime);
            for node in self.node_ids().collect::<Vec<_>>() {
                self.refill_warm_pool(node);
            }
        }
        let launch = Launch {
            reason: StartReason::Provision,
            version: spec.version,
            source: SnapshotSource::Empty,
            avoid: None,
        };
        if self.agents.len() <= id.index() {
            self.agents.resize_with(id.index() + 1, || None);
        }
        self.agents[id.index()] = Some(Agent::new(spec, depth, self.now));
        self.agent_count += 1;
        self.enqueue(id, launch);
        Ok(())
    }

    pub(super) fn update_agent(&mut self, spec: AgentSpec) -> Result<(), EngineError> {
        self.validate_agent_spec(&spec)?;
        let id = spec.id;
        let old = self.agent_ref(id).ok_or(EngineError::UnknownAgent(id))?;
        if old.spec.tenant != spec.tenant {
            return Err(invalid(
                &spec,
                "tenant",
                "cannot change; remove and create the agent",
            ));
        }
        let version_changed = old.spec.version != spec.version;
        let limit_delta = spec.memory_bytes_limit as i64 - old.spec.memory_bytes_limit as i64;
        if old.spec.depends_on != spec.depends_on {
            let depth = self.dependencies.set(id, &spec.depends_on)?;
            self.agent_expect(id).depth = depth;
        }
        let node = self.agent_ref(id).and_then(|a| a.node);
        let agent = self.agent_expect(id);
        agent.spec = spec;
        let version = agent.spec.version;
        let phase = agent.phase;
        let mut over_cap = false;
        if let Some(node) = node {
            // The pod keeps running under its old limit until it is replaced, so a bigger limit
            // that does not fit here is never charged here: the node stays under its cap and
            // the agent migrates to where the new limit fits.
            let node = self.node_expect(node);
            let committed = node.committed_bytes.saturating_add_signed(limit_delta);
            over_cap = committed > node.cap_bytes;
            if !over_cap {
                node.committed_bytes = committed;
                let agent = self.agent_expect(id);
                agent.committed_bytes = agent.spec.memory_bytes_limit;
            }
        }
        match phase {
            Phase::Parked => {
                // The operator changed a parked agent: try it again from its latest state.
                let agent = self.agent_expect(id);
                agent.incident = None;
                agent.timeline = None;
                let launch = rollout_launch(version);
                self.enqueue(id, launch);
            }
            Phase::Queued {
                mut launch,
                sequence,
            } if version_changed => {
                launch.version = version;
                self.agent_expect(id).phase = Phase::Queued { launch, sequence };
            }
            Phase::Running | Phase::Restarting | Phase::Starting { .. }
                if version_changed || over_cap =>
            {
                let reason = if over_cap {
                    StopReason::Migrate
                } else {
                    StopReason::Rollout
                };
                let mut launch = rollout_launch(version);
                if over_cap {
                    launch.reason = StartReason::Migrate;
                    launch.avoid = node;
                }
                self.stop(id, reason, true, AfterStop::Launch(launch));
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) fn remove_agent(&mut self, id: AgentId) -> Result<(), EngineError> {
        let agent = self.agent_ref(id).ok_or(EngineError::UnknownAgent(id))?;
        if let Some(dependent) = self.dependencies.first_dependent(id) {
            return Err(EngineError::DependedOn {
                agent: id,
                dependent,
            });
        }
        match agent.phase {
            Phase::Stopping { .. } => self.set_after_stop(id, AfterStop::Remove),
            Phase::Starting { .. } | Phase::Running | Phase::Restarting => {
                self.stop(id, StopReason::Remove, false, AfterStop::Remove);
            }
            Phase::Queued { .. } | Phase::Parked => self.forget(id),
        }
        Ok(())
    }

    fn validate_agent_spec(&self, spec: &AgentSpec) -> Result<(), EngineError> {
        let limits = &self.config.limits;
        if spec.id.0 >= limits.max_agents {
            return Err(invalid(spec, "id", "is beyond limits.max_agents"));
        }
        if spec.memory_bytes_limit == 0 {
            return Err(invalid(spec, "memory_bytes_limit", "must be positive"));
        }
        if spec.memory_bytes_request > spec.memory_bytes_limit {
            return Err(invalid(
                spec,
                "memory_bytes_request",
                "must not exceed memory_bytes_limit",
            ));
        }
        if spec.depends_on.len() > usize::from(limits.max_dependencies) {
            return Err(invalid(
                spec,
                "depends_on",
                "names more agents than limits.max_dependencies",
            ));
        }
        if spec.allowed_zones.len() > 256 {
            return Err(invalid(spec, "allowed_zones", "names more than 256 zones"));
        }
        for &dependency in &spec.depends_on {
            if dependency == spec.id {
                return Err(EngineError::DependencyCycle {
                    agent: spec.id,
                    through: spec.id,
                });
            }
            if self.agent_ref(dependency).is_none() {
                return Err(EngineError::UnknownAgent(dependency));
            }
        }
        Ok(())
    }

    /// Drops every trace of an agent that holds no node.
    fn forget(&mut self, id: AgentId) {
        let agent = self.agent_expect(id);
        assert!(
            agent.node.is_none(),
            "invariant: a forgotten agent holds no node"
        );
        if let Phase::Queued { sequence, .. } = agent.phase {
            let key = (agent.depth, agent.spec.priority, sequence);
            self.queue.remove(key, id);
        }
        self.unplaced.remove(&id);
        self.awaiting_dependencies.remove(&id);
        self.dependencies.remove(id);
        self.agents[id.index()] = None;
        self.agent_count -= 1;
    }

    // Nodes.

    pub(super) fn join_node(&mut self, spec: NodeSpec) -> Result<(), EngineError> {
        if spec.id.0 >= self.config.limits.max_nodes {
            return Err(invalid_node(&spec, "id", "is beyond limits.max_nodes"));
        }
        if spec.memory_bytes_capacity == 0 {
            return Err(invalid_node(
                &spec,
                "memory_bytes_capacity",
                "must be positive",
            ));
        }
        if spec.zone.0 >= 65_536 {
            return Err(invalid_node(&spec, "zone", "must be below 65536"));
        }
        self.topology.check(&spec)?;
        if let Some(existing) = self.nodes.get(spec.id.index()).and_then(Option::as_ref) {
            if existing.state != NodeState::Lost {
                return Err(EngineError::DuplicateNode(spec.id));
            }
            assert!(
                existing.agents.is_empty(),
                "invariant: a lost node holds no agents"
            );
        }
        let fraction = |f: f64| (spec.memory_bytes_capacity as f64 * f) as u64;
        let density = &self.config.density;
        let node = Node {
            cap_bytes: fraction(self.config.placement.overcommit_ratio),
            stop_placing_bytes: fraction(density.watermark_stop_placing),
            migrate_bytes: fraction(density.watermark_migrate),
            evict_bytes: fraction(density.watermark_evict),
            committed_bytes: 0,
            reserved_bytes: 0,
            used_bytes: 0,
            unsampled_bytes: 0,
            starting: 0,
            warm: 0,
            warming: 0,
            agents: Vec::new(),
            versions: [None; VERSION_CACHE],
            last_heartbeat: None,
            relieved_until: Millis::ZERO,
            state: NodeState::Ready,
            spec,
        };
        let (index, zone) = (node.spec.id.index(), node.spec.zone.index());
        if self.nodes.len() <= index {
            self.nodes.resize_with(index + 1, || None);
        }
        if self.zone_penalties.len() <= zone {
            self.zone_penalties.resize(zone + 1, 0);
        }
        self.topology.add(&node.spec);
        self.nodes[index] = Some(node);
        self.refill_warm_pool(NodeId(index as u32));
        self.retry_unplaced();
        Ok(())
    }

    pub(super) fn drain_node(&mut self, id: NodeId) -> Result<(), EngineError> {
        let node = self.node_mut(id)?;
        if node.state != NodeState::Ready {
            return Ok(());
        }
        node.state = NodeState::Draining;
        // The start queue's budget spreads the restarts; stops happen at once so the node
        // empties within one stop deadline.
        for agent in node.agents.clone() {
            if matches!(self.agent_expect(agent).phase, Phase::Stopping { .. }) {
                continue;
            }
            let version = self.agent_expect(agent).spec.version;
            let launch = Launch {
                reason: StartReason::Migrate,
                version,
                source: SnapshotSource::Latest,
                avoid: Some(id),
            };
            self.stats.migrations += 1;
            self.stop(agent, StopReason::Migrate, true, AfterStop::Launch(launch));
        }
        Ok(())
    }

    pub(super) fn heartbeat_node(&mut self, id: NodeId) -> Result<(), EngineError> {
        let now = self.now;
        let timeout = Millis(self.config.recovery.heartbeat_timeout_ms);
        let node = self.node_mut(id)?;
        if node.state == NodeState::Lost {
            return Ok(());
        }
        let first = node.last_heartbeat.is_none();
        node.last_heartbeat = Some(now);
        if first {
            self.timers
                .set(now + timeout, Timer::Heartbeat { node: id });
        }
        Ok(())
    }

    pub(super) fn check_heartbeat(&mut self, id: NodeId) {
        let timeout = Millis(self.config.recovery.heartbeat_timeout_ms);
        let now = self.now;
        let Ok(node) = self.node_mut(id) else { return };
        let Some(last) = node.last_heartbeat else {
            return;
        };
        if node.state == NodeState::Lost {
            return;
        }
        if last + timeout <= now {
            // A lost node must rejoin; its heartbeat watch starts over then.
            node.last_heartbeat = None;
            self.lose_node(id)
                .expect("the node exists: it was just looked up");
        } else {
            self.timers
                .set(last + timeout, Timer::Heartbeat { node: id });
        }
    }

    pub(super) fn lose_node(&mut self, id: NodeId) -> Result<(), EngineError> {
        let node = self.node_mut(id)?;
        if node.state == NodeState::Lost {
            return Ok(());
        }
        node.state = NodeState::Lost;
        node.last_heartbeat = None;
        node.warm = 0;
        node.warming = 0;
        self.warming.retain(|_, n| *n != id);
        let node = self.node_mut(id)?;
        let agents = node.agents.clone();
        // Commands sent to the lost node will never report back: forget them.
        let lost: std::collections::BTreeSet<(AgentId, Instance)> = agents
            .iter()
            .filter_map(|&a| self.agent_ref(a).map(|agent| (a, agent.instance)))
            .collect();
        self.in_flight
            .retain(|_, flight| !lost.contains(&(flight.agent, flight.instance)));
        for agent in agents {
            let phase = self.agent_expect(agent).phase;
            self.note_failure(agent, TimelineEvent::NodeLost { node: id });
            self.release_node(agent);
            match phase {
                // The node fences itself: the stop is done, without a snapshot.
                Phase::Stopping { then, .. } => self.after_stop(agent, then),
                _ => self.on_failure(agent, Cause::NodeLost),
            }
        }
        let node = self.node_expect(id);
        assert!(
            node.agents.is_empty() && node.committed_bytes == 0 && node.starting == 0,
            "invariant: a lost node holds nothing"
        );
        node.used_bytes = 0;
        node.reserved_bytes = 0;
        Ok(())
    }

    pub(super) fn node_mut(&mut self, id: NodeId) -> Result<&mut Node, EngineError> {
        self.nodes
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .ok_or(EngineError::UnknownNode(id))
    }

    // Observations.

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
        self.arm_agent_timer(
            now + snapshot_every,
            |generation| Timer::Snapshot {
                agent: id,
                generation,
            },
            id,
        );
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
        let Some(flight) = self.in_flight.remove(&command) else {
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
        self.arm_agent_timer(
            at,
            |generation| Timer::Snapshot {
                agent: id,
                generation,
            },
            id,
        );
    }

    fn take_snapshot(&mut self, id: AgentId, known_good: bool) {
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

    /// A new agent takes a blank instance from the node's warm pool when one of its runtime
    /// is idle there; the pool is refilled at once.
    fn take_warm_instance(&mut self, node_id: NodeId, launch: Launch) -> bool {
        let runtime_matches = self.warm_runtime == Some(launch.version.runtime);
        let node = self.node_expect(node_id);
        if launch.reason != StartReason::Provision || !runtime_matches || node.warm == 0 {
            return false;
        }
        node.warm -= 1;
        self.refill_warm_pool(node_id);
        true
    }

    /// Boots blank instances until the node's pool is full (bounded by the pool size).
    pub(super) fn refill_warm_pool(&mut self, node_id: NodeId) {
        let Some(runtime) = self.warm_runtime else {
            return;
        };
        let per_node = self.config.placement.warm_pool_per_node;
        loop {
            let node = self.node_expect(node_id);
            if node.state != NodeState::Ready || node.warm + node.warming >= per_node {
                return;
            }
            node.warming += 1;
            let id = self.next_command_id();
            self.warming.insert(id, node_id);
            self.emit(Command::WarmUp {
                id,
                node: node_id,
                runtime,
            });
        }
    }

    /// A warm-up ended: the instance joins the pool, or the slot stays empty until the pool
    /// is next used (a failing node is not hammered with warm-ups).
    fn on_warmed(&mut self, node_id: NodeId, outcome: Outcome) {
        let Ok(node) = self.node_mut(node_id) else {
            return;
        };
        if node.state == NodeState::Lost {
            return;
        }
        node.warming = node.warming.saturating_sub(1);
        if outcome == Outcome::Succeeded {
            node.warm += 1;
        }
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
    fn end_starting(&mut self, id: AgentId) {
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

    fn attach_node(&mut self, id: AgentId, node_id: NodeId) {
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

    fn retry_unplaced_soon(&mut self) {
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
        agent.spec.depends_on.iter().all(|d| {
            self.agent_ref(*d)
                .is_some_and(|a| a.phase == Phase::Running)
        })
    }
}

fn rollout_launch(version: crate::Version) -> Launch {
    Launch {
        reason: StartReason::Rollout,
        version,
        source: SnapshotSource::Latest,
        avoid: None,
    }
}

fn invalid(spec: &AgentSpec, field: &'static str, problem: &str) -> EngineError {
    EngineError::InvalidSpec {
        subject: spec.id.to_string(),
        field,
        problem: problem.to_owned(),
    }
}

fn invalid_node(spec: &NodeSpec, field: &'static str, problem: &str) -> EngineError {
    EngineError::InvalidSpec {
        subject: spec.id.to_string(),
        field,
        problem: problem.to_owned(),
    }
}
