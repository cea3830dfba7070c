//! The self-fencing rule: a node that cannot renew its lease stops its agents before the
//! lease can expire, so that it never serves an agent the controller recreates elsewhere.
//!
//! # The timing rule
//!
//! etcd restarts a lease's TTL when it *processes* a keep-alive, which is never before the node
//! *sent* it. So if the last keep-alive that etcd acknowledged was sent at `s`, the lease cannot
//! expire before `s + ttl` (on etcd's clock; a change of etcd leader only extends leases). The
//! controller learns of the loss only from that expiry, and only then recreates the node's
//! agents. The node therefore begins stopping its agents at
//!
//! ```text
//! fence_at = s + ttl − stop_grace − margin
//! ```
//!
//! and every agent is gone (SIGTERM, then SIGKILL after `stop_grace`) by `s + ttl − margin`.
//! `margin` covers the rate difference between the node's monotonic clock and etcd's over one
//! TTL, and the time a kill takes to land. For the node not to fence itself in normal
//! operation, a renewal must be attempted and answered well before `fence_at`: the rule
//! requires `renew_every + call_timeout < ttl − stop_grace − margin`.
//!
//! # When etcd has no quorum
//!
//! A lease can only expire through etcd's leader, and a new leader grants every lease a full
//! TTL when it takes office. So while etcd has no leader at all (two of three members down),
//! no lease can expire, and a node that renews as soon as a leader is back loses nothing by
//! keeping its agents: rung 1 goes on. A node that cannot renew therefore asks the members it
//! can reach; when some answer and none knows of a leader, it counts that answer like a
//! renewal sent when it asked (see [`Watchdog::acknowledged`]). The assumption this rests on,
//! stated: the members a node reaches are not cut off *together with it* from a majority that
//! still has a leader. Where a node and an etcd member can be partitioned together (a member
//! on the node's own machine or rack), turn it off (`trust_leaderless_members = false`) and a
//! node fences on any silence.
//!
//! Time here is milliseconds on the node's monotonic clock, as plain numbers, so the rule is
//! tested without waiting.

use std::time::Duration;

/// The fencing timings of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FencingRule {
    pub ttl: Duration,
    pub renew_every: Duration,
    pub call_timeout: Duration,
    pub stop_grace: Duration,
    pub margin: Duration,
}

impl FencingRule {
    /// Checks that a node under this rule renews in time when etcd answers; the error says
    /// which inequality fails, with the figures.
    pub fn check(&self) -> Result<(), String> {
        let budget = self
            .ttl
            .checked_sub(self.stop_grace + self.margin)
            .unwrap_or_default();
        let needed = self.renew_every + self.call_timeout;
        if budget.is_zero() || needed >= budget {
            return Err(format!(
                "lease ttl {} s leaves {} ms after the stop grace ({} ms) and the margin ({} ms), \
                 which must exceed one renewal period plus one call timeout ({} ms)",
                self.ttl.as_secs(),
                budget.as_millis(),
                self.stop_grace.as_millis(),
                self.margin.as_millis(),
                needed.as_millis()
            ));
        }
        Ok(())
    }

    /// When the node must begin stopping its agents, given when it sent the last keep-alive
    /// etcd acknowledged.
    pub fn fence_at(&self, last_acknowledged_sent_ms: u64) -> u64 {
        last_acknowledged_sent_ms + millis(self.ttl) - millis(self.stop_grace) - millis(self.margin)
    }
}

/// Tracks a node's renewals and says when it must fence.
#[derive(Clone, Debug)]
pub struct Watchdog {
    rule: FencingRule,
    /// When the newest acknowledged keep-alive (or the grant) was sent.
    acknowledged_sent_ms: u64,
}

impl Watchdog {
    /// A watchdog for a lease whose grant request was sent at `granted_sent_ms`.
    pub fn new(rule: FencingRule, granted_sent_ms: u64) -> Watchdog {
        debug_assert!(rule.check().is_ok(), "an unchecked fencing rule");
        Watchdog {
            rule,
            acknowledged_sent_ms: granted_sent_ms,
        }
    }

    /// etcd acknowledged the keep-alive sent at `sent_ms`. Acknowledgements may arrive out of
    /// order; an older one never moves the deadline back.
    pub fn acknowledged(&mut self, sent_ms: u64) {
        self.acknowledged_sent_ms = self.acknowledged_sent_ms.max(sent_ms);
    }

    pub fn fence_at(&self) -> u64 {
        self.rule.fence_at(self.acknowledged_sent_ms)
    }

    /// When the newest keep-alive etcd acknowledged was sent.
    pub fn last_acknowledged_sent_ms(&self) -> u64 {
        self.acknowledged_sent_ms
    }

    pub fn must_fence(&self, now_ms: u64) -> bool {
        now_ms >= self.fence_at()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule() -> FencingRule {
        FencingRule {
            ttl: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            call_timeout: Duration::from_secs(1),
            stop_grace: Duration::from_secs(3),
            margin: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_rule_that_would_fence_a_healthy_node_is_refused() {
        assert!(rule().check().is_ok());
        let tight = FencingRule {
            renew_every: Duration::from_secs(6),
            ..rule()
        };
        let error = tight.check().unwrap_err();
        assert!(
            error.contains("6500 ms") && error.contains("7000 ms"),
            "{error}"
        );
        let no_room = FencingRule {
            stop_grace: Duration::from_secs(20),
            ..rule()
        };
        assert!(no_room.check().is_err());
    }

    #[test]
    fn the_fence_begins_one_grace_and_margin_before_the_earliest_expiry() {
        let mut watchdog = Watchdog::new(rule(), 1_000);
        assert_eq!(watchdog.fence_at(), 1_000 + 10_000 - 3_000 - 500);
        watchdog.acknowledged(5_000);
        watchdog.acknowledged(3_000);
        assert_eq!(watchdog.fence_at(), 5_000 + 6_500);
        assert!(!watchdog.must_fence(11_499));
        assert!(watchdog.must_fence(11_500));
    }

    proptest! {
        /// Whatever the renewals' delays, every agent is stopped (fence + grace) at least the
        /// margin before the earliest moment etcd could expire the lease.
        #[test]
        fn agents_are_gone_before_the_lease_can_expire(
            delays in proptest::collection::vec((0u64..1_000, 0u64..3_000), 1..40),
        ) {
            let rule = rule();
            let mut watchdog = Watchdog::new(rule, 0);
            // The lease was granted no earlier than its request was sent, at 0.
            let mut earliest_expiry = 10_000;
            for (i, (to_etcd, back)) in delays.iter().enumerate() {
                let sent = (i as u64 + 1) * 2_000;
                let answered = sent + to_etcd + back;
                if to_etcd + back > 1_000 {
                    // Timed out: the node counts it as failed, whatever etcd did with it.
                    continue;
                }
                if watchdog.must_fence(answered) {
                    break; // the node began fencing; later answers change nothing
                }
                watchdog.acknowledged(sent);
                // etcd restarted the TTL when it processed this keep-alive.
                earliest_expiry = earliest_expiry.max(sent + to_etcd + 10_000);
            }
            prop_assert!(watchdog.fence_at() + 3_000 + 500 <= earliest_expiry);
        }

        /// A node whose renewals every period are answered within the call timeout never
        /// reaches its fence.
        #[test]
        fn a_node_that_etcd_answers_in_time_never_fences(
            answers in proptest::collection::vec(0u64..=1_000, 1..40),
        ) {
            let mut watchdog = Watchdog::new(rule(), 0);
            for (i, answer) in answers.iter().enumerate() {
                let sent = (i as u64 + 1) * 2_000;
                // The latest the node can look before this renewal's answer is in.
                prop_assert!(!watchdog.must_fence(sent + answer));
                watchdog.acknowledged(sent);
            }
        }
    }
}
