//! The bounded record of why the engine did what it did to one agent, and the post-mortem a
//! critical alert carries.

use crate::command::{StartReason, StopReason};
use crate::id::{AgentId, Instance, NodeId, SnapshotId, TenantId, Version};
use crate::input::EscalationReason;
use crate::time::Millis;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// What started an incident: a span in which a desired agent does not serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    Crashed,
    OomKilled,
    Hung,
    CrashLoop,
    RestartBudgetExhausted,
    ConfigInvalid,
    NodeLost,
    Evicted,
    StartFailed,
    /// The pod's supervisor died: nothing on the node restarts the agent in place.
    SupervisorLost,
    /// A rung did not bring the agent back within its deadline.
    DeadlineMissed,
    /// No node had room within the queue deadline.
    NoCapacity,
}

impl Cause {
    /// The lowest rung that can resolve this cause.
    pub fn first_rung(self) -> Rung {
        match self {
            Cause::Crashed | Cause::OomKilled => Rung::RestartInPlace,
            Cause::Hung
            | Cause::RestartBudgetExhausted
            | Cause::NodeLost
            | Cause::Evicted
            | Cause::StartFailed
            | Cause::SupervisorLost
            | Cause::DeadlineMissed => Rung::Recreate,
            Cause::CrashLoop | Cause::ConfigInvalid => Rung::RestoreKnownGood,
            Cause::NoCapacity => Rung::Alert,
        }
    }

    pub(crate) fn from_escalation(reason: EscalationReason) -> Cause {
        match reason {
            EscalationReason::BudgetExhausted => Cause::RestartBudgetExhausted,
            EscalationReason::Hung => Cause::Hung,
            EscalationReason::CrashLoop => Cause::CrashLoop,
            EscalationReason::SupervisorLost => Cause::SupervisorLost,
        }
    }
}

/// The recovery ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    /// 1: the node-side supervisor restarts the process where it is.
    RestartInPlace = 1,
    /// 2: a new instance from the latest snapshot, on the same or another node.
    Recreate = 2,
    /// 3: config and state rolled back to the last known-good version.
    RestoreKnownGood = 3,
    /// 4: parked; a human is paged with the post-mortem.
    Alert = 4,
}

impl Rung {
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The rung above, or `Alert` when there is none.
    pub fn next(self) -> Rung {
        match self {
            Rung::RestartInPlace => Rung::Recreate,
            Rung::Recreate => Rung::RestoreKnownGood,
            Rung::RestoreKnownGood | Rung::Alert => Rung::Alert,
        }
    }
}

/// One line of an agent's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Millis,
    pub event: TimelineEvent,
}

/// What happened, or what was decided and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum TimelineEvent {
    Exited {
        instance: Instance,
        code: i32,
        oom_killed: bool,
    },
    ProbeFailed {
        instance: Instance,
    },
    Healthy {
        instance: Instance,
    },
    Escalated {
        instance: Instance,
        reason: EscalationReason,
    },
    ConfigRejected {
        instance: Instance,
        version: Version,
    },
    NodeLost {
        node: NodeId,
    },
    StartFailed {
        instance: Instance,
    },
    /// The ladder moved to `rung` because of `cause`.
    Rung {
        rung: Rung,
        cause: Cause,
    },
    /// A new instance was placed; the best candidates and their scores say why this node.
    Placed {
        instance: Instance,
        node: NodeId,
        reason: StartReason,
        version: Version,
        snapshot: Option<SnapshotId>,
        candidates: Vec<Candidate>,
    },
    Stopped {
        instance: Instance,
        reason: StopReason,
    },
    Throttled {
        instance: Instance,
        memory_bytes_high: u64,
    },
    /// No node could take the agent right now.
    Unplaceable,
    Parked,
}

/// A placement candidate and its score (higher is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub node: NodeId,
    pub score: i64,
}

/// The agent's recent history, kept from the moment an incident opens until it closes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub entries: VecDeque<TimelineEntry>,
    /// Entries dropped because the timeline is bounded.
    pub dropped: u32,
}

impl Timeline {
    pub(crate) fn push(&mut self, capacity: u16, entry: TimelineEntry) {
        debug_assert!(
            capacity > 0,
            "timeline capacity is validated to be positive"
        );
        if self.entries.len() >= usize::from(capacity) {
            self.entries.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        self.entries.push_back(entry);
    }
}

/// A memory sample kept for post-mortems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPoint {
    pub at: Millis,
    pub memory_bytes: u64,
}

/// Everything a human needs to understand why an agent was given up on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PostMortem {
    pub agent: AgentId,
    pub tenant: TenantId,
    pub at: Millis,
    pub incident_opened_at: Millis,
    pub cause: Cause,
    /// Every rung the incident climbed, in order.
    pub rungs: Vec<Rung>,
    pub desired_version: Version,
    pub known_good_version: Option<Version>,
    pub last_node: Option<NodeId>,
    pub memory_bytes_limit: u64,
    pub memory_history: Vec<MemoryPoint>,
    pub timeline: Timeline,
}
