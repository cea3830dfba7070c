//! Desired state: what the operator asks for. Specs are validated once, on entry, into values
//! the rest of the engine can trust.

use crate::id::{AgentId, NodeId, RegionId, TenantId, Version, ZoneId};
use serde::{Deserialize, Serialize};

/// How urgently an agent must run; evictions take the lowest first, queues drain highest first.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Priority(pub u8);

/// One desired agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub id: AgentId,
    pub tenant: TenantId,
    /// Agents of one class share a memory model; reported per class.
    pub class: u16,
    pub priority: Priority,
    /// The hard limit the pod runs under (cgroup). Committed against the overcommit cap.
    pub memory_bytes_limit: u64,
    /// What the operator expects it to use; the starting point of the learned reservation.
    pub memory_bytes_request: u64,
    pub version: Version,
    /// Agents that must run before this one starts (a team's coordinator before its workers).
    #[serde(default)]
    pub depends_on: Vec<AgentId>,
    /// Zones this agent may run in; empty means any.
    #[serde(default)]
    pub allowed_zones: Vec<ZoneId>,
}

/// One machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    pub region: RegionId,
    pub zone: ZoneId,
    /// Physical memory available to pods.
    pub memory_bytes_capacity: u64,
}

/// A version change to stage across a set of agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub id: crate::id::RolloutId,
    pub agents: Vec<AgentId>,
    pub version: Version,
    /// Agents changed at once; the next wave waits for this one to be known-good.
    pub wave_size: u32,
}
