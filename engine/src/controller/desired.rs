//! Desired-state changes: agents created, updated and removed, each checked before anything
//! changes.

use super::Controller;
use super::state::{AfterStop, Agent, Launch, Phase, SnapshotSource};
use crate::command::{StartReason, StopReason};
use crate::error::EngineError;
use crate::id::AgentId;
use crate::spec::AgentSpec;

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
        self.agents[id.index()] = Some(Box::new(Agent::new(spec, depth, self.now)));
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
        if old.spec.depends_on() != spec.depends_on.as_slice() {
            let depth = self.dependencies.set(id, &spec.depends_on)?;
            self.agent_expect(id).depth = depth;
        }
        let node = self.agent_ref(id).and_then(|a| a.node);
        let agent = self.agent_expect(id);
        agent.spec = spec.into();
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

    pub(super) fn validate_agent_spec(&self, spec: &AgentSpec) -> Result<(), EngineError> {
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
    pub(super) fn forget(&mut self, id: AgentId) {
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
