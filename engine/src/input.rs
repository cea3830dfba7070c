//! Inputs: everything the engine learns, each fed with the time it happened.
//!
//! Inputs are serde types because production journals every one of them: replaying a journal
//! through a fresh engine must reproduce the recorded commands exactly.

use crate::id::{AgentId, CommandId, Instance, NodeId, Version};
use crate::spec::{AgentSpec, NodeSpec, RolloutSpec};
use serde::{Deserialize, Serialize};

/// One observation or desired-state change for the [`Controller`](crate::Controller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Input {
    // Desired state.
    CreateAgent(AgentSpec),
    UpdateAgent(AgentSpec),
    RemoveAgent {
        agent: AgentId,
    },
    StartRollout(RolloutSpec),

    // Membership.
    JoinNode(NodeSpec),
    /// Stop placing on the node and move its agents away.
    DrainNode {
        node: NodeId,
    },
    /// The node answers again (heartbeat) — the controller's liveness signal.
    HeartbeatNode {
        node: NodeId,
    },
    /// The node is gone and fenced: its processes are dead or will be killed by the node itself.
    LoseNode {
        node: NodeId,
    },

    // Observations of one instance.
    /// The instance's process is up (not yet healthy).
    AgentStarted {
        agent: AgentId,
        instance: Instance,
    },
    /// The process exited. `oom_killed` when the kernel killed it for memory.
    AgentExited {
        agent: AgentId,
        instance: Instance,
        code: i32,
        oom_killed: bool,
    },
    /// A readiness probe answered.
    ProbeSucceeded {
        agent: AgentId,
        instance: Instance,
    },
    /// A readiness probe failed or timed out while the process was alive.
    ProbeFailed {
        agent: AgentId,
        instance: Instance,
    },
    /// Memory used by the instance's process tree.
    SampleMemory {
        agent: AgentId,
        instance: Instance,
        memory_bytes: u64,
    },
    /// The instance's config failed validation (before start, or on reload).
    RejectConfig {
        agent: AgentId,
        instance: Instance,
        version: Version,
    },
    /// The node-side supervisor gave up on in-place restarts.
    Escalate {
        agent: AgentId,
        instance: Instance,
        reason: EscalationReason,
    },

    /// A command the engine issued has finished.
    FinishCommand {
        command: CommandId,
        outcome: Outcome,
    },
}

/// Why the node-side supervisor handed an agent to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EscalationReason {
    /// Too many restarts within the budget's period.
    BudgetExhausted,
    /// The process lives but its probe failed the configured number of times in a row.
    Hung,
    /// The process died again right after (re)starting: restarting the same state will not help.
    CrashLoop,
    /// The node found the pod's supervisor dead (and killed what was left of the pod): rung 1
    /// is gone for this instance. Reported by the node driver, never by a Supervisor.
    SupervisorLost,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// Only for a stop that asked for a snapshot: the pod is gone, the snapshot was not taken.
    SnapshotFailed,
}

impl Input {
    /// The agent this input is about, if it is about one.
    pub fn agent(&self) -> Option<AgentId> {
        match self {
            Input::CreateAgent(spec) | Input::UpdateAgent(spec) => Some(spec.id),
            Input::RemoveAgent { agent }
            | Input::AgentStarted { agent, .. }
            | Input::AgentExited { agent, .. }
            | Input::ProbeSucceeded { agent, .. }
            | Input::ProbeFailed { agent, .. }
            | Input::SampleMemory { agent, .. }
            | Input::RejectConfig { agent, .. }
            | Input::Escalate { agent, .. } => Some(*agent),
            Input::StartRollout(_)
            | Input::JoinNode(_)
            | Input::DrainNode { .. }
            | Input::HeartbeatNode { .. }
            | Input::LoseNode { .. }
            | Input::FinishCommand { .. } => None,
        }
    }
}
