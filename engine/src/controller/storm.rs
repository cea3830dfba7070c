//! Restart-storm control: one queue for every start, drained in dependency and priority order
//! under a fleet-wide concurrency limit and a token bucket with jitter.

use super::state::Phase;
use super::{Controller, Timer};
use crate::config::StormPolicy;
use crate::id::AgentId;
use crate::postmortem::TimelineEvent;
use crate::spec::Priority;
use crate::time::Millis;
use rand::RngExt;
use std::cmp::Reverse;
use std::collections::BTreeSet;

/// Queue order: dependencies first (lower depth), then higher priority, then first come.
type QueueKey = (u16, Reverse<Priority>, u64, AgentId);

#[derive(Debug, Default)]
pub(crate) struct StartQueue {
    keys: BTreeSet<QueueKey>,
    sequence: u64,
}

impl StartQueue {
    pub(crate) fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    pub(crate) fn insert(
        &mut self,
        (depth, priority, sequence): (u16, Priority, u64),
        agent: AgentId,
    ) {
        self.keys
            .insert((depth, Reverse(priority), sequence, agent));
    }

    pub(crate) fn remove(
        &mut self,
        (depth, priority, sequence): (u16, Priority, u64),
        agent: AgentId,
    ) {
        self.keys
            .remove(&(depth, Reverse(priority), sequence, agent));
    }

    fn pop(&mut self) -> Option<AgentId> {
        self.keys.pop_first().map(|(_, _, _, agent)| agent)
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Tokens in millionths, refilled by elapsed virtual time: integer arithmetic only.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    micro_tokens: u64,
    capacity_micro: u64,
    /// Micro-tokens gained per millisecond (= tokens per second × 1000).
    rate_micro_per_ms: u64,
    refilled_at: Millis,
}

const ONE_TOKEN: u64 = 1_000_000;

impl TokenBucket {
    pub(crate) fn new(policy: &StormPolicy) -> TokenBucket {
        let capacity_micro = u64::from(policy.burst) * ONE_TOKEN;
        TokenBucket {
            micro_tokens: capacity_micro,
            capacity_micro,
            rate_micro_per_ms: ((policy.starts_per_second * 1000.0) as u64).max(1),
            refilled_at: Millis::ZERO,
        }
    }

    fn refill(&mut self, now: Millis) {
        let elapsed = now.saturating_since(self.refilled_at).0;
        self.refilled_at = now;
        let gained = elapsed.saturating_mul(self.rate_micro_per_ms);
        self.micro_tokens = self
            .micro_tokens
            .saturating_add(gained)
            .min(self.capacity_micro);
    }

    fn try_take(&mut self, now: Millis) -> bool {
        self.refill(now);
        if self.micro_tokens < ONE_TOKEN {
            return false;
        }
        self.micro_tokens -= ONE_TOKEN;
        true
    }

    fn give_back(&mut self) {
        self.micro_tokens = (self.micro_tokens + ONE_TOKEN).min(self.capacity_micro);
    }

    /// When the next whole token will be there.
    fn next_token_at(&self, now: Millis) -> Millis {
        let missing = ONE_TOKEN.saturating_sub(self.micro_tokens);
        now + Millis(missing.div_ceil(self.rate_micro_per_ms))
    }
}

impl Controller {
    /// Starts queued agents while the fleet's budget allows.
    pub(super) fn pump_queue(&mut self) {
        let max_starting = self.config.storm.max_concurrent_starts;
        // Each pass either starts an agent or moves it out of the queue, so the loop is bounded
        // by the queue's length.
        let mut budget = self.queue.len();
        // Within one pass nothing frees room, so an agent needing at least as much as one
        // that found no node cannot find one either: skip the scan. This keeps a large
        // backlog (after a zone loss) from costing a full scan per agent per retry.
        // Recoveries may use more headroom than new work, so each kind keeps its own bound.
        let mut smallest_failure: [Option<(u64, u64)>; 2] = [None, None];
        while budget > 0 && self.starting < max_starting && !self.queue.is_empty() {
            budget -= 1;
            if !self.bucket.try_take(self.now) {
                self.arm_pump();
                return;
            }
            let id = self
                .queue
                .pop()
                .expect("the queue was checked to be non-empty");
            let Some(Phase::Queued { launch, .. }) = self.agent_ref(id).map(|a| a.phase) else {
                self.bucket.give_back();
                continue;
            };
            if !self.dependencies_running(id) {
                self.bucket.give_back();
                self.awaiting_dependencies.insert(id);
                continue;
            }
            self.refresh_reservation(id);
            let needs = self.placement_needs(id);
            let slot = usize::from(super::placement::is_recovery(launch.reason));
            let hopeless = needs.is_some_and(|(limit, reservation)| {
                smallest_failure[slot].is_some_and(|(l, r)| limit >= l && reservation >= r)
            });
            let placed = if hopeless {
                None
            } else {
                self.choose_node(id, launch.avoid, launch.reason)
            };
            match placed {
                Some((node, candidates)) => self.start(id, node, launch, candidates),
                None => {
                    if !hopeless && let Some(needs) = needs {
                        smallest_failure[slot] = Some(match smallest_failure[slot] {
                            Some((l, r)) if l <= needs.0 && r <= needs.1 => (l, r),
                            _ => needs,
                        });
                    }
                    self.bucket.give_back();
                    self.stats.placement_failures += 1;
                    self.unplaced.insert(id);
                    self.note_once(id, TimelineEvent::Unplaceable);
                    self.arm_retry();
                }
            }
        }
    }

    /// What an unconstrained agent needs from a node: its limit and its reservation. `None`
    /// for an agent restricted to some zones, whose failure says nothing about the others.
    fn placement_needs(&self, id: AgentId) -> Option<(u64, u64)> {
        let agent = self.agent_ref(id)?;
        agent
            .spec
            .allowed_zones()
            .is_empty()
            .then_some((agent.spec.memory_bytes_limit, agent.reservation_bytes))
    }

    fn arm_pump(&mut self) {
        if self.pump_armed_at.is_some() {
            return;
        }
        let jitter = match self.config.storm.jitter_ms {
            0 => 0,
            max => self.rng.random_range(0..=max),
        };
        let at = self.bucket.next_token_at(self.now) + Millis(jitter);
        self.pump_armed_at = Some(at);
        self.timers.set(at, Timer::Pump);
    }

    fn arm_retry(&mut self) {
        if self.retry_armed {
            return;
        }
        self.retry_armed = true;
        let at = self.now + Millis(self.config.storm.placement_retry_ms);
        self.timers.set(at, Timer::RetryPlacement);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_with_virtual_time_and_caps_at_its_burst() {
        let policy = StormPolicy {
            starts_per_second: 2.0,
            burst: 3,
            ..StormPolicy::default()
        };
        let mut bucket = TokenBucket::new(&policy);
        let t0 = Millis(0);
        assert!((0..3).all(|_| bucket.try_take(t0)));
        assert!(!bucket.try_take(t0));
        assert_eq!(bucket.next_token_at(t0), Millis(500));
        assert!(!bucket.try_take(Millis(499)));
        assert!(bucket.try_take(Millis(500)));
        bucket.refill(Millis(1_000_000));
        assert_eq!(bucket.micro_tokens, 3 * ONE_TOKEN);
    }
}
