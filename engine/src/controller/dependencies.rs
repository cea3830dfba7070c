//! Agent dependencies as a graph: a team's coordinator starts before its workers, and a cycle
//! is refused before it is stored.

use crate::error::EngineError;
use crate::id::AgentId;
use petgraph::Direction;
use petgraph::algo::has_path_connecting;
use petgraph::graphmap::DiGraphMap;
use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

/// The longest dependency chain allowed, in edges.
const MAX_CHAIN: u16 = 64;

/// GraphMap iterates in insertion order whatever the hasher; a fixed one keeps even its
/// internal layout identical from run to run.
type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// Edges point from an agent to what it depends on. Only agents with a dependency or a
/// dependent are in the graph, so a fleet without teams costs nothing.
#[derive(Debug, Default)]
pub(crate) struct Dependencies {
    graph: DiGraphMap<AgentId, (), FixedHasher>,
}

impl Dependencies {
    /// Sets `agent`'s dependencies and returns its depth (longest chain below it). Refuses a
    /// cycle without changing anything.
    pub(crate) fn set(
        &mut self,
        agent: AgentId,
        depends_on: &[AgentId],
    ) -> Result<u16, EngineError> {
        for &dependency in depends_on {
            if dependency == agent
                || (self.graph.contains_node(dependency)
                    && self.graph.contains_node(agent)
                    && has_path_connecting(&self.graph, dependency, agent, None))
            {
                return Err(EngineError::DependencyCycle {
                    agent,
                    through: dependency,
                });
            }
        }
        // Keep every chain short: a bounded chain bounds the walks below, and a team is never
        // this deep in practice.
        let below = depends_on
            .iter()
            .map(|&d| self.longest(d, Direction::Outgoing, &mut BTreeMap::new()) + 1)
            .max()
            .unwrap_or(0);
        let above = self.longest(agent, Direction::Incoming, &mut BTreeMap::new());
        if below + above > MAX_CHAIN {
            return Err(EngineError::InvalidSpec {
                subject: agent.to_string(),
                field: "depends_on",
                problem: format!("makes a dependency chain longer than {MAX_CHAIN}"),
            });
        }
        if self.graph.contains_node(agent) {
            let old: Vec<AgentId> = self
                .graph
                .neighbors_directed(agent, Direction::Outgoing)
                .collect();
            for dependency in old {
                self.graph.remove_edge(agent, dependency);
            }
        }
        for &dependency in depends_on {
            self.graph.add_edge(agent, dependency, ());
        }
        self.prune(agent);
        Ok(self.depth(agent))
    }

    pub(crate) fn first_dependent(&self, agent: AgentId) -> Option<AgentId> {
        if !self.graph.contains_node(agent) {
            return None;
        }
        self.graph
            .neighbors_directed(agent, Direction::Incoming)
            .min()
    }

    pub(crate) fn remove(&mut self, agent: AgentId) {
        self.graph.remove_node(agent);
    }

    /// Longest chain of dependencies below `agent`. Walks only what `agent` reaches, so the
    /// cost is the size of its team, not of the fleet.
    pub(crate) fn depth(&self, agent: AgentId) -> u16 {
        self.longest(agent, Direction::Outgoing, &mut BTreeMap::new())
    }

    /// Longest path from `agent` following edges in `direction` (outgoing: its dependencies;
    /// incoming: its dependents). Recursion is bounded by `MAX_CHAIN`, which `set` keeps.
    fn longest(
        &self,
        agent: AgentId,
        direction: Direction,
        memo: &mut BTreeMap<AgentId, u16>,
    ) -> u16 {
        if !self.graph.contains_node(agent) {
            return 0;
        }
        if let Some(&length) = memo.get(&agent) {
            return length;
        }
        let next: Vec<AgentId> = self.graph.neighbors_directed(agent, direction).collect();
        let length = next
            .into_iter()
            .map(|n| self.longest(n, direction, memo).saturating_add(1))
            .max()
            .unwrap_or(0);
        memo.insert(agent, length);
        length
    }

    fn prune(&mut self, agent: AgentId) {
        if self.graph.contains_node(agent)
            && self
                .graph
                .neighbors_directed(agent, Direction::Outgoing)
                .next()
                .is_none()
            && self
                .graph
                .neighbors_directed(agent, Direction::Incoming)
                .next()
                .is_none()
        {
            self.graph.remove_node(agent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_follows_the_longest_chain_and_cycles_are_refused() {
        let mut deps = Dependencies::default();
        assert_eq!(deps.set(AgentId(1), &[]).unwrap(), 0);
        assert_eq!(deps.set(AgentId(2), &[AgentId(1)]).unwrap(), 1);
        assert_eq!(deps.set(AgentId(3), &[AgentId(2), AgentId(1)]).unwrap(), 2);
        assert_eq!(
            deps.set(AgentId(1), &[AgentId(3)]),
            Err(EngineError::DependencyCycle {
                agent: AgentId(1),
                through: AgentId(3)
            })
        );
        assert_eq!(
            deps.depth(AgentId(3)),
            2,
            "a refused change leaves the graph as it was"
        );
        assert_eq!(deps.first_dependent(AgentId(1)), Some(AgentId(2)));
        deps.remove(AgentId(3));
        deps.remove(AgentId(2));
        assert_eq!(deps.first_dependent(AgentId(1)), None);
    }

    #[test]
    fn chains_longer_than_the_limit_are_refused_from_either_end() {
        let mut deps = Dependencies::default();
        for a in 1..=u32::from(MAX_CHAIN) {
            deps.set(AgentId(a), &[AgentId(a - 1)]).unwrap();
        }
        assert_eq!(deps.depth(AgentId(u32::from(MAX_CHAIN))), MAX_CHAIN);
        let top = AgentId(u32::from(MAX_CHAIN) + 1);
        assert!(matches!(
            deps.set(top, &[AgentId(u32::from(MAX_CHAIN))]),
            Err(EngineError::InvalidSpec { .. })
        ));
        // Hanging the chain under a new root lengthens it too.
        assert!(matches!(
            deps.set(AgentId(0), &[AgentId(1000)]),
            Err(EngineError::InvalidSpec { .. })
        ));
        assert_eq!(
            deps.depth(AgentId(u32::from(MAX_CHAIN))),
            MAX_CHAIN,
            "refusals change nothing"
        );
    }
}
