//! The recovery ladder: which rung a failure calls for, and climbing it.

use super::Controller;
use super::state::{AfterStop, Incident, Launch, Phase, SnapshotSource};
use crate::command::{Command, StartReason, StopReason};
use crate::id::AgentId;
use crate::postmortem::{Cause, PostMortem, Rung, TimelineEvent};
use crate::time::Millis;

impl Controller {
    /// The current instance failed (or can no longer be trusted) because of `cause`.
    pub(super) fn on_failure(&mut self, id: AgentId, cause: Cause) {
        let now = self.now;
        let relapse_window = Millis(self.config.recovery.relapse_window_ms);
        let agent = self.agent_expect(id);
        if matches!(agent.phase, Phase::Stopping { .. } | Phase::Parked) {
            return;
        }
        let healthy_long_enough = agent.phase == Phase::Running
            && agent
                .healthy_since
                .is_some_and(|since| since + relapse_window <= now);
        if healthy_long_enough && let Some(resolved) = agent.incident.take() {
            // The last rung worked: this is a new incident, not a relapse. The timeline goes on:
            // what came just before is context for what comes next.
            self.count_resolved(resolved);
        }
        let agent = self.agent_expect(id);
        let rung = next_rung(agent.incident, cause);
        match &mut agent.incident {
            Some(incident) => {
                incident.rung = rung;
                incident.rungs_tried |= 1 << rung.number();
            }
            None => {
                agent.incident = Some(Incident {
                    opened_at: now,
                    cause,
                    rung,
                    rungs_tried: 1 << rung.number(),
                    alerted: false,
                });
                agent.timeline.get_or_insert_with(Box::default);
            }
        }
        self.note(id, TimelineEvent::Rung { rung, cause });
        self.rollout_on_failure(id, cause);
        self.climb(id, rung, cause);
    }

    fn climb(&mut self, id: AgentId, rung: Rung, cause: Cause) {
        let agent = self.agent_expect(id);
        let version = agent.spec.version;
        let known_good = agent.snapshots.known_good;
        match rung {
            Rung::RestartInPlace => {
                // The supervisor beside the agent restarts it; the controller only keeps time.
                if agent.phase == Phase::Running {
                    self.set_phase(id, Phase::Restarting);
                    self.set_deadline(id, self.config.recovery.restart_deadline_ms);
                }
            }
            Rung::Recreate => {
                let avoid = if cause == Cause::Evicted {
                    agent.node
                } else {
                    None
                };
                let launch = Launch {
                    reason: StartReason::Recreate,
                    version,
                    source: SnapshotSource::Latest,
                    avoid,
                };
                // An eviction is a density decision, not a recovery: say so to the driver and
                // in reports, rather than calling it a replacement.
                let reason = if cause == Cause::Evicted {
                    StopReason::Evict
                } else {
                    StopReason::Replace
                };
                self.replace(id, launch, reason, true);
            }
            Rung::RestoreKnownGood => {
                // Never known-good: the last state known to be sound is the one it was
                // provisioned with, its desired version and an empty state directory.
                let (version, _) = known_good.unwrap_or((version, None));
                let launch = Launch {
                    reason: StartReason::RestoreKnownGood,
                    version,
                    source: SnapshotSource::KnownGood,
                    avoid: None,
                };
                self.replace(id, launch, StopReason::Replace, false);
            }
            Rung::Alert => self.park(id),
        }
    }

    pub(super) fn count_resolved(&mut self, incident: Incident) {
        if incident.alerted {
            return;
        }
        let rung = usize::from(incident.rung.number());
        assert!(
            (1..=3).contains(&rung),
            "invariant: only rungs 1–3 bring an agent back"
        );
        self.stats.resolved_by_rung[rung - 1] += 1;
    }

    /// Replaces the current instance: stop it if it holds a node, then launch.
    fn replace(&mut self, id: AgentId, launch: Launch, reason: StopReason, snapshot: bool) {
        // PLANTED BUG (feature `planted-bug`, for `carapace explore`'s own test only): a
        // recreate forgets the old pod instead of stopping it, so the old copy keeps running.
        #[cfg(feature = "planted-bug")]
        if launch.reason == StartReason::Recreate && self.agent_expect(id).node.is_some() {
            self.release_node(id);
            self.enqueue(id, launch);
            return;
        }
        if self.agent_expect(id).node.is_some() {
            self.stop(id, reason, snapshot, AfterStop::Launch(launch));
        } else {
            self.enqueue(id, launch);
        }
    }

    /// No node had room within the queue deadline. Parking would not help (nothing is wrong
    /// with the agent): page a human once and keep the agent in line, so it starts as soon as
    /// capacity returns.
    fn alert_while_queued(&mut self, id: AgentId) {
        let now = self.now;
        let agent = self.agent_expect(id);
        let incident = agent.incident.get_or_insert(Incident {
            opened_at: now,
            cause: Cause::NoCapacity,
            rung: Rung::Recreate,
            rungs_tried: 1 << Rung::Recreate.number(),
            alerted: false,
        });
        // A human was paged for this incident already; either way nothing more is due.
        agent.deadline = None;
        if incident.alerted {
            return;
        }
        incident.alerted = true;
        agent.timeline.get_or_insert_with(Box::default);
        self.note(id, TimelineEvent::Unplaceable);
        self.raise_alert(id);
    }

    /// Rung 4: raise the critical alert now; park once the pod is gone.
    fn park(&mut self, id: AgentId) {
        self.note(id, TimelineEvent::Parked);
        self.raise_alert(id);
        if self.agent_expect(id).node.is_some() {
            self.stop(id, StopReason::Park, false, AfterStop::Park);
        } else {
            self.leave_queue(id);
            self.set_phase(id, Phase::Parked);
        }
    }

    pub(super) fn on_deadline(&mut self, id: AgentId) {
        match self.agent_expect(id).phase {
            Phase::Starting { .. } | Phase::Restarting => {
                self.on_failure(id, Cause::DeadlineMissed)
            }
            Phase::Queued { .. } => self.alert_while_queued(id),
            Phase::Stopping { then, .. } => {
                // The pod will not go away. Starting another copy could make two: page a human
                // and keep asking the node to stop it.
                if then != AfterStop::Park && then != AfterStop::Remove {
                    self.set_after_stop(id, AfterStop::Park);
                    self.raise_alert(id);
                }
                self.retry_stop(id);
                self.set_deadline(id, self.config.recovery.stop_deadline_ms);
            }
            Phase::Running | Phase::Parked => {}
        }
    }

    /// Takes a queued agent out of every waiting line.
    pub(super) fn leave_queue(&mut self, id: AgentId) {
        let agent = self.agent_expect(id);
        if let Phase::Queued { sequence, .. } = agent.phase {
            let key = (agent.depth, agent.spec.priority, sequence);
            self.queue.remove(key, id);
        }
        self.unplaced.remove(&id);
        self.awaiting_dependencies.remove(&id);
    }

    /// Pages a human: the critical alert, carrying the agent's post-mortem.
    fn raise_alert(&mut self, id: AgentId) {
        let post_mortem = self.post_mortem(id);
        self.stats.alerts += 1;
        self.emit(Command::Alert(Box::new(post_mortem)));
    }

    fn post_mortem(&mut self, id: AgentId) -> PostMortem {
        let now = self.now;
        let agent = self.agent_expect(id);
        let incident = agent
            .incident
            .expect("invariant: an alert closes an open incident");
        let rungs = [
            Rung::RestartInPlace,
            Rung::Recreate,
            Rung::RestoreKnownGood,
            Rung::Alert,
        ]
        .into_iter()
        .filter(|r| incident.rungs_tried & (1 << r.number()) != 0)
        .collect();
        PostMortem {
            agent: id,
            tenant: agent.spec.tenant,
            at: now,
            incident_opened_at: incident.opened_at,
            cause: incident.cause,
            rungs,
            desired_version: agent.spec.version,
            known_good_version: agent.snapshots.known_good.map(|(v, _)| v),
            last_node: agent.node,
            memory_bytes_limit: agent.spec.memory_bytes_limit,
            memory_history: agent.history.to_vec(),
            timeline: agent.timeline.as_deref().cloned().unwrap_or_default(),
        }
    }
}

/// The rung a failure calls for, given the incident already open.
///
/// A new failure before the agent was known-good again means the last rung did not work, so
/// the ladder climbs; failures that are not the agent's fault (its node died, it was evicted)
/// do not count against it. Repeated exits during rung 1 are the supervisor's to count.
pub(crate) fn next_rung(open: Option<Incident>, cause: Cause) -> Rung {
    let first = cause.first_rung();
    let Some(open) = open else { return first };
    let external = matches!(cause, Cause::NodeLost | Cause::Evicted);
    if external {
        return first.max(open.rung);
    }
    if first == Rung::RestartInPlace && open.rung == Rung::RestartInPlace {
        return Rung::RestartInPlace;
    }
    first.max(open.rung.next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Millis;

    fn open(rung: Rung) -> Option<Incident> {
        Some(Incident {
            opened_at: Millis(0),
            cause: Cause::Crashed,
            rung,
            rungs_tried: 0,
            alerted: false,
        })
    }

    #[test]
    fn first_failures_start_at_the_rung_their_cause_needs() {
        assert_eq!(next_rung(None, Cause::Crashed), Rung::RestartInPlace);
        assert_eq!(next_rung(None, Cause::Hung), Rung::Recreate);
        assert_eq!(next_rung(None, Cause::NodeLost), Rung::Recreate);
        assert_eq!(
            next_rung(None, Cause::ConfigInvalid),
            Rung::RestoreKnownGood
        );
        assert_eq!(next_rung(None, Cause::CrashLoop), Rung::RestoreKnownGood);
    }

    #[test]
    fn failing_again_before_known_good_climbs() {
        assert_eq!(
            next_rung(open(Rung::RestartInPlace), Cause::Crashed),
            Rung::RestartInPlace
        );
        assert_eq!(
            next_rung(open(Rung::RestartInPlace), Cause::RestartBudgetExhausted),
            Rung::Recreate
        );
        assert_eq!(
            next_rung(open(Rung::Recreate), Cause::Crashed),
            Rung::RestoreKnownGood
        );
        assert_eq!(
            next_rung(open(Rung::RestoreKnownGood), Cause::Crashed),
            Rung::Alert
        );
        assert_eq!(next_rung(open(Rung::Alert), Cause::Crashed), Rung::Alert);
    }

    #[test]
    fn losing_a_node_does_not_count_against_the_agent() {
        assert_eq!(
            next_rung(open(Rung::Recreate), Cause::NodeLost),
            Rung::Recreate
        );
        assert_eq!(
            next_rung(open(Rung::RestartInPlace), Cause::NodeLost),
            Rung::Recreate
        );
    }
}
