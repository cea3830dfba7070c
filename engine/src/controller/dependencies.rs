//! Agent dependencies as a graph: a team's coordinator starts before its workers, and a cycle
//! is refused before it is stored.

use crate::error::EngineError;
use crate::id::AgentId;
use petgraph::Direction;
use petgraph::algo::has_path_connecting;
use petgraph::graphmap::DiGraphMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

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
        if !self.graph.contains_node(agent) {
            return 0;
        }
        let mut memo = std::collections::BTreeMap::new();
        self.depth_of(agent, &mut memo)
    }

    fn depth_of(&self, agent: AgentId, memo: &mut std::collections::BTreeMap<AgentId, u16>) -> u16 {
        if let Some(&depth) = memo.get(&agent) {
            return depth;
        }
        let dependencies: Vec<AgentId> = self
            .graph
            .neighbors_directed(agent, Direction::Outgoing)
            .collect();
        let depth = dependencies
            .into_iter()
            .map(|dependency| self.depth_of(dependency, memo).saturating_add(1))
            .max()
            .unwrap_or(0);
        memo.insert(agent, depth);
        depth
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
}
