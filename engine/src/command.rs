//! Commands: the engine's decisions, for a driver (real or simulated) to carry out.

use crate::id::{AgentId, CommandId, Instance, NodeId, RolloutId, SnapshotId, Version};
use crate::postmortem::PostMortem;
use serde::{Deserialize, Serialize};

/// One decision of the [`Controller`](crate::Controller).
///
/// Commands that take time carry a [`CommandId`]; the driver reports their end with
/// [`Input::FinishCommand`](crate::Input::FinishCommand).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Command {
    /// Create a pod for a new instance on `node` and start it at `version`, restoring
    /// `snapshot` into its state directory first when one is named.
    Start {
        id: CommandId,
        agent: AgentId,
        instance: Instance,
        node: NodeId,
        version: Version,
        snapshot: Option<SnapshotId>,
        reason: StartReason,
        /// Attach to a blank instance of the node's warm pool instead of booting a new one.
        warm: bool,
    },
    /// Boot a blank instance of `runtime` on `node` and keep it idle in the node's warm pool.
    WarmUp {
        id: CommandId,
        node: NodeId,
        runtime: u32,
    },
    /// Stop an instance for good (SIGTERM, then SIGKILL after the grace period) and remove its
    /// pod. When `snapshot` is set, snapshot the state directory once the process is down.
    Stop {
        id: CommandId,
        agent: AgentId,
        instance: Instance,
        node: NodeId,
        snapshot: Option<SnapshotId>,
        reason: StopReason,
    },
    /// Snapshot a running instance's state directory (consistently: online backup or a brief
    /// pause). `known_good` marks the version a later restore rolls back to.
    TakeSnapshot {
        id: CommandId,
        agent: AgentId,
        instance: Instance,
        node: NodeId,
        snapshot: SnapshotId,
        known_good: bool,
    },
    /// Cap a spiking instance's memory below its limit (cgroup memory.high) while it is moved
    /// or until it calms down.
    Throttle {
        agent: AgentId,
        instance: Instance,
        node: NodeId,
        memory_bytes_high: u64,
    },
    /// Recovery gave up: the agent is parked and a human is paged with the post-mortem.
    Alert(Box<PostMortem>),
    /// A rollout moved on or ended.
    ReportRollout {
        rollout: RolloutId,
        state: RolloutState,
    },
    /// An input was refused; nothing changed.
    Reject { reason: String },
}

impl Command {
    /// The agent this command acts on, if any.
    pub fn agent(&self) -> Option<AgentId> {
        match self {
            Command::Start { agent, .. }
            | Command::Stop { agent, .. }
            | Command::TakeSnapshot { agent, .. }
            | Command::Throttle { agent, .. } => Some(*agent),
            Command::Alert(post_mortem) => Some(post_mortem.agent),
            Command::WarmUp { .. } | Command::ReportRollout { .. } | Command::Reject { .. } => None,
        }
    }

    /// The id the driver reports the command's end with, if it takes time.
    pub fn id(&self) -> Option<CommandId> {
        match self {
            Command::Start { id, .. }
            | Command::Stop { id, .. }
            | Command::TakeSnapshot { id, .. }
            | Command::WarmUp { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Why a new instance is started; also the rung of the ladder that started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StartReason {
    /// First start of a newly desired agent.
    Provision,
    /// Rung 2: recreate from the latest snapshot.
    Recreate,
    /// Rung 3: roll config and state back to the known-good version.
    RestoreKnownGood,
    /// Moved off a node under memory pressure or drain.
    Migrate,
    /// Restarted at a new version by a rollout (or its rollback).
    Rollout,
}

/// Why an instance is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// Replaced by a new instance (rungs 2 and 3).
    Replace,
    /// Moved elsewhere (memory pressure or drain).
    Migrate,
    /// Evicted to protect its node from running out of memory.
    Evict,
    /// Restarted at another version.
    Rollout,
    /// No longer desired.
    Remove,
    /// Parked after a critical alert.
    Park,
}

/// A rollout's progress, as reported to the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum RolloutState {
    /// Wave `wave` (from 0) started.
    WaveStarted { wave: u32, agents: u32 },
    /// Every agent runs the new version and was healthy for the dwell time.
    Completed,
    /// An agent of the rollout failed on the new version; every changed agent goes back.
    RolledBack { failed_agent: AgentId },
}
