//! Safety invariants, checkable at any moment by tests and the simulator.

use super::Controller;
use super::state::Phase;
use crate::id::{AgentId, NodeId};
use crate::time::Millis;

/// A broken invariant: a bug in the engine, never the caller's fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvariantViolation {
    #[error("{node}: committed {committed} bytes of limits over its cap of {cap}")]
    OverCap {
        node: NodeId,
        committed: u64,
        cap: u64,
    },
    #[error("{node}: accounting says {recorded} bytes committed, its agents sum to {actual}")]
    CommittedDrift {
        node: NodeId,
        recorded: u64,
        actual: u64,
    },
    #[error("{agent} is charged {charged} bytes on its node but its limit is {limit}")]
    ChargeDrift {
        agent: AgentId,
        charged: u64,
        limit: u64,
    },
    #[error("{agent} is listed on {listed} but says it is on {claims:?}")]
    Misplaced {
        agent: AgentId,
        listed: NodeId,
        claims: Option<NodeId>,
    },
    #[error("{agent} holds {node} but is not listed there")]
    Unlisted { agent: AgentId, node: NodeId },
    #[error("{agent} is neither running, recovering under a deadline, nor alerted")]
    SilentlyLost { agent: AgentId },
    #[error("{agent} runs in a zone it does not allow, on {node}")]
    ZoneConstraint { agent: AgentId, node: NodeId },
    #[error("{agent}'s deadline {deadline} has passed at {now}")]
    DeadlinePassed {
        agent: AgentId,
        deadline: Millis,
        now: Millis,
    },
}

impl Controller {
    /// Checks every safety invariant. `O(agents + nodes)`: for tests and simulation, not for
    /// every input in production.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let node_id = NodeId(index as u32);
            let mut committed = 0u64;
            for &agent_id in &node.agents {
                let agent = self
                    .agent_ref(agent_id)
                    .ok_or(InvariantViolation::Misplaced {
                        agent: agent_id,
                        listed: node_id,
                        claims: None,
                    })?;
                if agent.node != Some(node_id) {
                    return Err(InvariantViolation::Misplaced {
                        agent: agent_id,
                        listed: node_id,
                        claims: agent.node,
                    });
                }
                if !agent.spec.allowed_zones().is_empty()
                    && !agent.spec.allowed_zones().contains(&node.spec.zone)
                {
                    return Err(InvariantViolation::ZoneConstraint {
                        agent: agent_id,
                        node: node_id,
                    });
                }
                // What the agent was charged: its limit, or, only while it is stopped to move,
                // its old one (a bigger limit that did not fit here).
                let moving = matches!(agent.phase, Phase::Stopping { .. });
                if !moving && agent.committed_bytes != agent.spec.memory_bytes_limit {
                    return Err(InvariantViolation::ChargeDrift {
                        agent: agent_id,
                        charged: agent.committed_bytes,
                        limit: agent.spec.memory_bytes_limit,
                    });
                }
                committed += agent.committed_bytes;
            }
            if committed != node.committed_bytes {
                return Err(InvariantViolation::CommittedDrift {
                    node: node_id,
                    recorded: node.committed_bytes,
                    actual: committed,
                });
            }
            if committed > node.cap_bytes {
                return Err(InvariantViolation::OverCap {
                    node: node_id,
                    committed,
                    cap: node.cap_bytes,
                });
            }
        }
        for agent_id in self.agent_ids() {
            let agent = self.agent_ref(agent_id).expect("listed ids exist");
            if let Some(node) = agent.node {
                let listed = self
                    .nodes
                    .get(node.index())
                    .and_then(Option::as_ref)
                    .is_some_and(|n| n.agents.binary_search(&agent_id).is_ok());
                if !listed {
                    return Err(InvariantViolation::Unlisted {
                        agent: agent_id,
                        node,
                    });
                }
            }
            match agent.phase {
                Phase::Running | Phase::Parked => {}
                Phase::Queued { .. }
                | Phase::Starting { .. }
                | Phase::Restarting
                | Phase::Stopping { .. } => {
                    let alerted = agent.incident.is_some_and(|i| i.alerted);
                    let Some(deadline) = agent.deadline else {
                        if alerted {
                            continue;
                        }
                        return Err(InvariantViolation::SilentlyLost { agent: agent_id });
                    };
                    if deadline < self.now {
                        return Err(InvariantViolation::DeadlinePassed {
                            agent: agent_id,
                            deadline,
                            now: self.now,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
