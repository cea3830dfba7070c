//! Density: learned reservations (Borg-style decaying reservation) and node memory watermarks
//! that act before the kernel's OOM killer picks a neighbour.

use super::Controller;
use super::state::{AfterStop, Launch, Phase, SnapshotSource};
use crate::command::{Command, StartReason, StopReason};
use crate::error::EngineError;
use crate::id::{AgentId, Instance, NodeId};
use crate::postmortem::{Cause, TimelineEvent};
use crate::time::Millis;

impl Controller {
    pub(super) fn on_memory(
        &mut self,
        id: AgentId,
        instance: Instance,
        memory_bytes: u64,
    ) -> Result<(), EngineError> {
        if !self.current(id, instance)? {
            return Ok(());
        }
        let now = self.now;
        let margin = self.config.placement.reservation_margin;
        let half_life = self.config.placement.reservation_half_life_ms;
        let agent = self.agent_expect(id);
        let node_id = agent
            .node
            .expect("invariant: a current instance holds a node");
        let previous = agent.memory;
        let elapsed = now.saturating_since(previous.sampled_at).0.max(1);
        if previous.sampled_at != Millis::ZERO || previous.used_bytes != 0 {
            let rate = (memory_bytes as i64 - previous.used_bytes as i64) * 60_000 / elapsed as i64;
            agent.memory.slope_bytes_per_min = (previous.slope_bytes_per_min + rate) / 2;
        }
        agent.memory.used_bytes = memory_bytes;
        agent.memory.sampled_at = now;
        agent.history.push(now, memory_bytes);
        let old_reservation = agent.reservation_bytes;
        let target =
            ((memory_bytes as f64 * (1.0 + margin)) as u64).min(agent.spec.memory_bytes_limit);
        agent.reservation_bytes = decayed_reservation(
            old_reservation,
            target,
            now.saturating_since(agent.reservation_updated_at).0,
            half_life,
        );
        agent.reservation_updated_at = now;
        agent.reservation_target_bytes = target;
        let new_reservation = agent.reservation_bytes;
        agent.memory.unsampled_charge_bytes = 0;
        let node = self.node_expect(node_id);
        node.unsampled_bytes = node
            .unsampled_bytes
            .saturating_sub(previous.unsampled_charge_bytes);
        node.used_bytes = node.used_bytes - previous.used_bytes.min(node.used_bytes) + memory_bytes;
        node.reserved_bytes =
            node.reserved_bytes - old_reservation.min(node.reserved_bytes) + new_reservation;
        self.relieve_pressure(node_id);
        Ok(())
    }

    /// The kernel killed it for memory: reserve its full limit until samples say otherwise.
    pub(super) fn learn_oom(&mut self, id: AgentId) {
        let now = self.now;
        let agent = self.agent_expect(id);
        let old = agent.reservation_bytes;
        agent.reservation_bytes = agent.spec.memory_bytes_limit;
        agent.reservation_updated_at = now;
        agent.reservation_target_bytes = agent.spec.memory_bytes_limit;
        let new = agent.reservation_bytes;
        if let Some(node) = agent.node {
            let node = self.node_expect(node);
            node.reserved_bytes = node.reserved_bytes - old.min(node.reserved_bytes) + new;
        }
    }

    /// Lets a waiting agent's reservation keep decaying without samples, as Borg's does: a
    /// spike seen just before the agent went down must not keep it out of every node forever.
    pub(super) fn refresh_reservation(&mut self, id: AgentId) {
        let now = self.now;
        let half_life = self.config.placement.reservation_half_life_ms;
        let Some(agent) = self.agent_mut(id) else {
            return;
        };
        if agent.node.is_some() {
            return;
        }
        let elapsed = now.saturating_since(agent.reservation_updated_at).0;
        agent.reservation_bytes = decayed_reservation(
            agent.reservation_bytes,
            agent.reservation_target_bytes,
            elapsed,
            half_life,
        );
        agent.reservation_updated_at = now;
    }

    /// Evict above the highest watermark, move (or throttle) the fastest riser above the
    /// middle one; one action per node per cooldown, so one spike causes one move.
    fn relieve_pressure(&mut self, node_id: NodeId) {
        let now = self.now;
        let node = self.node_expect(node_id);
        if node.used_bytes < node.migrate_bytes
            || node.relieved_until > now
            || node.state == super::state::NodeState::Lost
        {
            return;
        }
        let evict = node.used_bytes >= node.evict_bytes;
        let agents = node.agents.clone();
        let running = agents.iter().copied().filter(|a| {
            self.agent_ref(*a)
                .is_some_and(|a| a.phase == Phase::Running)
        });
        let chosen = if evict {
            // Lowest priority first; among equals the largest, which frees the most.
            running.min_by_key(|a| {
                let a = self.agent_ref(*a).expect("listed agents exist");
                (
                    a.spec.priority,
                    std::cmp::Reverse(a.memory.used_bytes),
                    a.spec.id,
                )
            })
        } else {
            running.max_by_key(|a| {
                let a = self.agent_ref(*a).expect("listed agents exist");
                (
                    a.memory.slope_bytes_per_min,
                    a.memory.used_bytes,
                    std::cmp::Reverse(a.spec.id),
                )
            })
        };
        let Some(victim) = chosen else { return };
        let cooldown = Millis(self.config.density.relief_cooldown_ms);
        self.node_expect(node_id).relieved_until = now + cooldown;
        if evict {
            self.stats.evictions += 1;
            self.on_failure(victim, Cause::Evicted);
            return;
        }
        if self
            .choose_node(victim, Some(node_id), StartReason::Migrate)
            .is_some_and(|(target, _)| target != node_id)
        {
            self.stats.migrations += 1;
            let version = self.agent_expect(victim).spec.version;
            let launch = Launch {
                reason: StartReason::Migrate,
                version,
                source: SnapshotSource::Latest,
                avoid: Some(node_id),
            };
            self.stop(victim, StopReason::Migrate, true, AfterStop::Launch(launch));
        } else {
            self.throttle(victim);
        }
    }

    fn throttle(&mut self, id: AgentId) {
        let headroom = self.config.density.throttle_headroom;
        let agent = self.agent_expect(id);
        if agent.throttled {
            return;
        }
        agent.throttled = true;
        let memory_bytes_high =
            ((agent.memory.used_bytes as f64 * headroom) as u64).min(agent.spec.memory_bytes_limit);
        let (instance, node) = (
            agent.instance,
            agent.node.expect("invariant: a running agent holds a node"),
        );
        self.stats.throttles += 1;
        self.note(
            id,
            TimelineEvent::Throttled {
                instance,
                memory_bytes_high,
            },
        );
        self.emit(Command::Throttle {
            agent: id,
            instance,
            node,
            memory_bytes_high,
        });
    }
}

/// Borg's decaying reservation: jump straight up to a higher target; decay exponentially
/// towards a lower one, halving the excess every half-life. In integers (whole halvings by
/// shifting, the fraction of one by linear interpolation, within 6% of 2^-x), so every machine
/// computes the same bytes.
pub(crate) fn decayed_reservation(
    current: u64,
    target: u64,
    elapsed_ms: u64,
    half_life_ms: u64,
) -> u64 {
    if target >= current {
        return target;
    }
    let half_life = half_life_ms.max(1);
    let halvings = elapsed_ms / half_life;
    if halvings >= 64 {
        return target;
    }
    let excess = (current - target) >> halvings;
    let fraction = u128::from(elapsed_ms % half_life);
    // 2^-f ≈ 1 - f/2 for f in [0, 1).
    let kept =
        u128::from(excess) * (2 * u128::from(half_life) - fraction) / (2 * u128::from(half_life));
    target + kept as u64
}

#[cfg(test)]
mod tests {
    use super::decayed_reservation;

    #[test]
    fn reservation_jumps_up_and_halves_its_excess_per_half_life() {
        assert_eq!(decayed_reservation(100, 300, 5, 1_000), 300);
        assert_eq!(decayed_reservation(300, 100, 1_000, 1_000), 200);
        assert_eq!(decayed_reservation(300, 100, 2_000, 1_000), 150);
        assert_eq!(decayed_reservation(300, 100, 500, 1_000), 250);
        assert_eq!(decayed_reservation(300, 100, 0, 1_000), 300);
        assert_eq!(decayed_reservation(300, 100, 1_000_000_000, 1_000), 100);
        // Monotone in elapsed time.
        let mut last = u64::MAX;
        for t in (0..10_000).step_by(37) {
            let r = decayed_reservation(1 << 40, 1 << 30, t, 1_000);
            assert!(r <= last);
            last = r;
        }
    }
}
