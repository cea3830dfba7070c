//! Node membership: joins, drains, heartbeats and losses, and the warm pool each node keeps.

use super::state::{AfterStop, Launch, Node, NodeState, Phase, SnapshotSource, VERSION_CACHE};
use super::{Controller, Timer};
use crate::command::{Command, StartReason, StopReason};
use crate::error::EngineError;
use crate::id::{AgentId, Instance, NodeId};
use crate::input::Outcome;
use crate::postmortem::{Cause, TimelineEvent};
use crate::spec::NodeSpec;
use crate::time::Millis;

impl Controller {
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
            moving: Vec::new(),
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
        self.continue_drain(id);
        Ok(())
    }

    /// Moves the draining node's agents away a few at a time: the next ones go once the last
    /// ones run elsewhere. Re-armed on a timer until the node is empty.
    pub(super) fn continue_drain(&mut self, id: NodeId) {
        let concurrency = usize::from(self.config.placement.drain_concurrency);
        let retry = Millis(self.config.storm.placement_retry_ms);
        let Ok(node) = self.node_mut(id) else { return };
        if node.state != NodeState::Draining {
            return;
        }
        let (moving, on_node) = (std::mem::take(&mut node.moving), node.agents.clone());
        let mut moving: Vec<AgentId> = moving
            .into_iter()
            .filter(|a| {
                self.agent_ref(*a)
                    .is_some_and(|a| !matches!(a.phase, Phase::Running | Phase::Parked))
            })
            .collect();
        for agent in on_node {
            if moving.len() >= concurrency {
                break;
            }
            let a = self.agent_expect(agent);
            if matches!(a.phase, Phase::Stopping { .. }) || moving.contains(&agent) {
                continue;
            }
            let launch = Launch {
                reason: StartReason::Migrate,
                version: a.spec.version,
                source: SnapshotSource::Latest,
                avoid: Some(id),
            };
            self.stats.migrations += 1;
            self.stop(agent, StopReason::Migrate, true, AfterStop::Launch(launch));
            moving.push(agent);
        }
        let node = self.node_expect(id);
        let unfinished = !node.agents.is_empty() || !moving.is_empty();
        node.moving = moving;
        if unfinished {
            self.timers.set(self.now + retry, Timer::Drain { node: id });
        }
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

    /// A new agent takes a blank instance from the node's warm pool when one of its runtime
    /// is idle there; the pool is refilled at once.
    pub(super) fn take_warm_instance(&mut self, node_id: NodeId, launch: Launch) -> bool {
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
    pub(super) fn on_warmed(&mut self, node_id: NodeId, outcome: Outcome) {
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
}

fn invalid_node(spec: &NodeSpec, field: &'static str, problem: &str) -> EngineError {
    EngineError::InvalidSpec {
        subject: spec.id.to_string(),
        field,
        problem: problem.to_owned(),
    }
}
