//! Placement: by learned memory, under the overcommit cap, spread by tenant and zone, towards
//! nodes that already hold the version.

use super::Controller;
use super::state::NodeState;
use crate::command::StartReason;
use crate::id::{AgentId, NodeId};
use crate::postmortem::Candidate;

/// Agents that were already running somewhere come back even on a node past the
/// stop-placing watermark, up to the migrate one: the watermark holds new work back, and
/// refusing a recovery would turn a short outage into a long one.
pub(super) fn is_recovery(reason: StartReason) -> bool {
    matches!(
        reason,
        StartReason::Recreate | StartReason::RestoreKnownGood
    )
}

/// Candidates kept in the timeline to explain a placement.
const EXPLAINED_CANDIDATES: usize = 3;
const INELIGIBLE: i64 = i64::MIN;

impl Controller {
    /// The best node for `id`, with the top candidates and their scores; `None` when no node
    /// can take it without breaking a constraint.
    pub(super) fn choose_node(
        &mut self,
        id: AgentId,
        avoid: Option<NodeId>,
        reason: StartReason,
    ) -> Option<(NodeId, Vec<Candidate>)> {
        let recovering = is_recovery(reason);
        let mut scores = std::mem::take(&mut self.scores);
        let mut zone_penalties = std::mem::take(&mut self.zone_penalties);
        let agent = self
            .agent_ref(id)
            .expect("invariant: only desired agents are placed");
        let spec = &agent.spec;
        let (limit, reservation, version) = (
            spec.memory_bytes_limit,
            agent.reservation_bytes,
            agent.spec.version,
        );
        let policy = &self.config.placement;
        let max_starts = policy.max_starts_per_node;

        // Tenant spread by zone: a small table, filled for this tenant and cleared afterwards.
        let spread = self.tenants.get(spec.tenant);
        if let Some(spread) = spread {
            let placed: u32 = spread.zones.iter().map(|&(_, count)| count).sum();
            let per_zone = (policy.max_tenant_share_per_zone * f64::from(placed + 1)).ceil() as u32;
            for &(zone, count) in &spread.zones {
                let over_blast_radius = count + 1 > per_zone.max(1);
                zone_penalties[zone.index()] = i64::from(count) * policy.penalty_same_tenant_zone
                    + if over_blast_radius {
                        policy.penalty_over_blast_radius
                    } else {
                        0
                    };
            }
        }

        scores.clear();
        scores.reserve(self.nodes.len());
        for node in &self.nodes {
            let score = match node {
                Some(node) if node.state == NodeState::Ready => {
                    // What the node will use: what it uses now, the reservations of agents
                    // placed but not yet measured, and this agent's reservation (which covers
                    // its own spikes). Summing every agent's spike-covering reservation would
                    // count spikes that never coincide, and leave a spiky fleet no room.
                    let warm_bytes =
                        u64::from(node.warm + node.warming) * policy.warm_instance_bytes;
                    let expected =
                        node.used_bytes + node.unsampled_bytes + warm_bytes + reservation;
                    let fits = node.committed_bytes + limit <= node.cap_bytes
                        && expected
                            <= if recovering {
                                node.migrate_bytes
                            } else {
                                node.stop_placing_bytes
                            }
                        && node.starting < max_starts
                        && (spec.allowed_zones().is_empty()
                            || spec.allowed_zones().contains(&node.spec.zone));
                    if fits {
                        let capacity = node.spec.memory_bytes_capacity;
                        let headroom_permille =
                            ((capacity - expected.min(capacity)) * 1000 / capacity) as i64;
                        let mut score = policy.weight_headroom * headroom_permille
                            - zone_penalties[node.spec.zone.index()];
                        if reason == StartReason::Provision
                            && node.warm > 0
                            && self.warm_runtime == Some(version.runtime)
                        {
                            score += policy.bonus_warm_instance;
                        }
                        if node.has_version(version) {
                            score += policy.bonus_version_cached;
                        }
                        if Some(node.spec.id) == avoid {
                            score -= policy.penalty_avoided_node;
                        }
                        score
                    } else {
                        INELIGIBLE
                    }
                }
                _ => INELIGIBLE,
            };
            scores.push(score);
        }

        if let Some(spread) = spread {
            for &(zone, _) in &spread.zones {
                zone_penalties[zone.index()] = 0;
            }
            for &(node, count) in &spread.nodes {
                let score = &mut scores[node.index()];
                if *score != INELIGIBLE {
                    *score -= i64::from(count) * policy.penalty_same_tenant_node;
                }
            }
        }

        // Top candidates: highest score, ties to the lowest node id.
        let mut top: [Option<Candidate>; EXPLAINED_CANDIDATES] = [None; EXPLAINED_CANDIDATES];
        for (index, &score) in scores.iter().enumerate() {
            if score == INELIGIBLE {
                continue;
            }
            let candidate = Candidate {
                node: NodeId(index as u32),
                score,
            };
            let Some(slot) = top.iter().position(|c| c.is_none_or(|c| score > c.score)) else {
                continue;
            };
            top.copy_within(slot..EXPLAINED_CANDIDATES - 1, slot + 1);
            top[slot] = Some(candidate);
        }
        self.scores = scores;
        self.zone_penalties = zone_penalties;
        let best = top[0]?;
        Some((best.node, top.into_iter().flatten().collect()))
    }
}
