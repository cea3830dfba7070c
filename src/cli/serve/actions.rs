//! What an operator asks of one agent or node (from the dashboard or the API): restart it in
//! place, recreate it, restore one of its config versions, drain its node.
//!
//! None of them is a new mechanism. A restart goes through the pod's supervisor exactly as a
//! crash does (rung 1); a recreation and a restore are new config versions, which the engine
//! carries out as it carries out any config change — a new instance from the latest snapshot,
//! state intact. So each one is journaled, replays, and shows on the event feed by itself.

use super::agents::AgentRecord;
use super::daemon::{ApiError, Daemon};
use carapace_engine::{AgentId, AgentStatus, Input, NodeId, Version};
use carapace_store::Batch;
use serde::Deserialize;

/// The body of `POST /v1/agents/{name}/restore`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// One of the agent's config versions (`GET /v1/agents/{name}/versions`).
    pub config_version: u32,
}

impl Daemon {
    /// Restarts the agent's process in place: it is sent SIGTERM, and its pod's supervisor
    /// starts it again at once. The engine sees the exit as it sees any other (an incident
    /// resolved by rung 1): an operator's restart is not hidden from the measures.
    pub fn restart(&mut self, tenant: u32, name: &str) -> Result<u32, ApiError> {
        let id = self.id_of(tenant, name)?;
        let view = self
            .controller
            .agent(id)
            .ok_or_else(|| ApiError::NotFound(format!("no agent named `{name}`")))?;
        if view.status != AgentStatus::Running {
            return Err(ApiError::Conflict(format!(
                "status: `{name}` is {}; only a running agent restarts in place",
                status_name(view.status)
            )));
        }
        // The pid is the one the current instance's supervisor last reported spawning, and
        // the engine holds that instance running: the process is that pid's.
        let pid = self
            .agent_pids
            .get(&id)
            .filter(|(instance, _)| *instance == view.instance)
            .map(|(_, pid)| *pid)
            .ok_or_else(|| ApiError::Conflict(format!("`{name}`: its process is not known yet")))?;
        let pid = i32::try_from(pid)
            .map_err(|_| ApiError::Conflict(format!("`{name}`: pid {pid} is out of range")))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|error| {
            ApiError::Conflict(format!("`{name}`: cannot signal its process: {error}"))
        })?;
        tracing::info!(agent = %id, pid, "restart in place requested");
        Ok(view.instance.0)
    }

    /// Recreates the agent: a new config version with the same config, so the engine stops
    /// the instance and starts a new one from its latest snapshot.
    pub fn recreate(&mut self, tenant: u32, name: &str) -> Result<AgentRecord, ApiError> {
        let id = self.id_of(tenant, name)?;
        let config = self.agents[&id].request.config.clone();
        self.move_to_config(id, config)
    }

    /// Restores config version `request.config_version`: its text becomes a new config
    /// version (versions only go forward, so the journal never sees a number twice).
    pub fn restore(
        &mut self,
        tenant: u32,
        name: &str,
        request: RestoreRequest,
    ) -> Result<AgentRecord, ApiError> {
        let id = self.id_of(tenant, name)?;
        let wanted = request.config_version;
        let text = self.configs.get(&(id, wanted)).ok_or_else(|| {
            ApiError::NotFound(format!(
                "config_version: `{name}` has no config version {wanted}"
            ))
        })?;
        let config: serde_json::Value = serde_json::from_str(text).map_err(|error| {
            ApiError::Conflict(format!(
                "config_version: version {wanted} of `{name}` does not parse: {error}"
            ))
        })?;
        self.move_to_config(id, Some(config))
    }

    /// Drains a node: the engine stops placing on it and moves its agents away. This daemon
    /// is one node: draining it would stop every agent with nowhere to go, so it is refused
    /// until other nodes exist.
    pub fn drain(&mut self, node: u32) -> Result<(), ApiError> {
        let node = NodeId(node);
        if self.controller.node(node).is_none() {
            return Err(ApiError::NotFound(format!("node: no node {}", node.0)));
        }
        if self.controller.node_ids().all(|other| other == node) {
            return Err(ApiError::Conflict(format!(
                "node: {} is this daemon's only node; draining it would stop every agent with \
                 nowhere to move them",
                node.0
            )));
        }
        self.apply(Input::DrainNode { node }, Batch::new())
            .map_err(ApiError::from)
    }

    /// Moves an agent to a new config version holding `config`, as one journaled step.
    fn move_to_config(
        &mut self,
        id: AgentId,
        config: Option<serde_json::Value>,
    ) -> Result<AgentRecord, ApiError> {
        let old = self.agents[&id].clone();
        let mut request = old.request.clone();
        request.config = config;
        let record = AgentRecord {
            id,
            version: Version::new(old.version.runtime, self.next_config_version(id)),
            request,
        };
        assert!(
            !self.configs.contains_key(&(id, record.version.config)),
            "invariant: config versions only go forward"
        );
        self.commit_update(record)
    }
}

/// A status as the API spells it.
pub fn status_name(status: AgentStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
