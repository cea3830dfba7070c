//! Failure domains as a tree — region → zone → node — in a graph, so that the blast radius of
//! any domain (which nodes, hence which agents and tenants, go down with it) is one walk.

use crate::error::EngineError;
use crate::id::{NodeId, RegionId, ZoneId};
use crate::spec::NodeSpec;
use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::Dfs;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A failure domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Domain {
    Region(RegionId),
    Zone(ZoneId),
    Node(NodeId),
}

/// Edges point from a domain to the domains inside it.
#[derive(Debug, Default)]
pub(crate) struct Topology {
    graph: DiGraph<Domain, ()>,
    index: BTreeMap<Domain, NodeIndex>,
}

impl Topology {
    /// Checks that `spec` fits the tree: a zone lies in one region only.
    pub(crate) fn check(&self, spec: &NodeSpec) -> Result<(), EngineError> {
        let Some(&zone) = self.index.get(&Domain::Zone(spec.zone)) else {
            return Ok(());
        };
        let region = self
            .graph
            .neighbors_directed(zone, Direction::Incoming)
            .next()
            .map(|r| self.graph[r]);
        if region.is_some_and(|r| r != Domain::Region(spec.region)) {
            return Err(EngineError::InvalidSpec {
                subject: spec.id.to_string(),
                field: "region",
                problem: format!("{} already lies in another region", spec.zone),
            });
        }
        Ok(())
    }

    /// Adds the node (and its zone and region on first sight). Idempotent; call `check` first.
    pub(crate) fn add(&mut self, spec: &NodeSpec) {
        let region = self.domain(Domain::Region(spec.region));
        let zone = self.domain(Domain::Zone(spec.zone));
        let node = self.domain(Domain::Node(spec.id));
        self.graph.update_edge(region, zone, ());
        self.graph.update_edge(zone, node, ());
    }

    fn domain(&mut self, domain: Domain) -> NodeIndex {
        *self
            .index
            .entry(domain)
            .or_insert_with(|| self.graph.add_node(domain))
    }

    /// Every node inside `domain`, ascending; empty for an unknown domain.
    pub(crate) fn nodes_in(&self, domain: Domain) -> Vec<NodeId> {
        let Some(&start) = self.index.get(&domain) else {
            return Vec::new();
        };
        let mut nodes = Vec::new();
        let mut dfs = Dfs::new(&self.graph, start);
        while let Some(index) = dfs.next(&self.graph) {
            if let Domain::Node(node) = self.graph[index] {
                nodes.push(node);
            }
        }
        nodes.sort_unstable();
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u32, region: u32, zone: u32) -> NodeSpec {
        NodeSpec {
            id: NodeId(id),
            region: RegionId(region),
            zone: ZoneId(zone),
            memory_bytes_capacity: 1,
        }
    }

    #[test]
    fn domains_contain_their_nodes_and_a_zone_has_one_region() {
        let mut topology = Topology::default();
        for s in [spec(0, 0, 0), spec(1, 0, 1), spec(2, 0, 0), spec(3, 1, 2)] {
            topology.check(&s).unwrap();
            topology.add(&s);
        }
        assert_eq!(
            topology.nodes_in(Domain::Zone(ZoneId(0))),
            vec![NodeId(0), NodeId(2)]
        );
        assert_eq!(
            topology.nodes_in(Domain::Region(RegionId(0))),
            vec![NodeId(0), NodeId(1), NodeId(2)]
        );
        assert_eq!(topology.nodes_in(Domain::Node(NodeId(3))), vec![NodeId(3)]);
        assert!(topology.nodes_in(Domain::Zone(ZoneId(9))).is_empty());
        assert!(
            topology.check(&spec(4, 1, 0)).is_err(),
            "zone 0 lies in region 0"
        );
        topology.add(&spec(2, 0, 0));
        assert_eq!(
            topology.nodes_in(Domain::Zone(ZoneId(0))).len(),
            2,
            "adding twice changes nothing"
        );
    }
}
