//! Errors come from bad input; bugs are broken invariants and panic with the invariant's name.

use crate::id::{AgentId, NodeId, RolloutId};
use crate::time::Millis;

/// An input the engine refused. Refusing changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("time went backwards: input at {got} after {now}")]
    TimeWentBackwards { now: Millis, got: Millis },
    #[error("unknown agent {0}")]
    UnknownAgent(AgentId),
    #[error("agent {0} already exists")]
    DuplicateAgent(AgentId),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
    #[error("node {0} already joined")]
    DuplicateNode(NodeId),
    #[error("rollout {0} already exists")]
    DuplicateRollout(RolloutId),
    #[error("invalid spec for {subject}: field `{field}` {problem}")]
    InvalidSpec {
        subject: String,
        field: &'static str,
        problem: String,
    },
    #[error("dependency cycle: {agent} would depend on itself through {through}")]
    DependencyCycle { agent: AgentId, through: AgentId },
    #[error("agent {agent} cannot be removed: {dependent} depends on it")]
    DependedOn { agent: AgentId, dependent: AgentId },
}

/// A policy knob out of range, named by its path in the config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid config `{field}`: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: &'static str,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: &'static str) -> ConfigError {
        ConfigError { field, problem }
    }
}
