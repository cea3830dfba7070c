//! Time-series buckets and the safety checks over the whole world.

use super::*;

impl Simulation {
    pub(super) fn close_bucket(&mut self) {
        let bucket = self.scenario.report.bucket.0;
        if self.now + bucket <= self.end {
            self.queue.push(self.now + bucket, Event::Bucket);
        }
        let desired = self.controller.agent_count();
        let down = desired.saturating_sub(self.serving);
        let nodes_up = self.nodes.iter().filter(|n| n.up).count() as u32;
        let mut load = crate::measures::NodeLoad::default();
        let mut up = 0u32;
        for node in self.controller.node_ids() {
            let Some(view) = self.controller.node(node).filter(|v| !v.lost) else {
                continue;
            };
            up += 1;
            load.placed += view.agents;
            load.reserved_mean += view.reserved_bytes as f64 / view.capacity_bytes as f64;
            load.committed_mean += view.committed_bytes as f64 / view.cap_bytes.max(1) as f64;
        }
        if up > 0 {
            load.reserved_mean /= f64::from(up);
            load.committed_mean /= f64::from(up);
        }
        load.queued = self.controller.queued_agents();
        self.measures.agents_down(down);
        self.measures
            .close_bucket(self.now, desired, down, nodes_up, load);
    }

    /// Safety checks over the whole world: the engine's invariants, and never two live copies.
    pub(super) fn check_world(&mut self) {
        if let Err(violation) = self.controller.check_invariants() {
            self.stats
                .invariant_violation
                .get_or_insert(format!("at {}: {violation}", self.now));
            return;
        }
        let mut seen = BTreeSet::new();
        for node in self.nodes.iter().filter(|n| n.up) {
            for &id in node.pods() {
                if !seen.insert(id) {
                    self.stats
                        .invariant_violation
                        .get_or_insert(format!("at {}: two live copies of {id}", self.now));
                    return;
                }
            }
        }
    }
}
