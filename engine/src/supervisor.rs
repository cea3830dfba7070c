//! Rung 1: the node-side supervisor. It restarts an exited agent process in place, at once,
//! within a restart budget, and hands the agent to the controller when restarting in place
//! cannot help.
//!
//! It runs beside the agents (one per node, or one per pod), so agents keep restarting through
//! a controller outage. Like the [`Controller`](crate::Controller) it is sans-IO: the caller
//! feeds observations with their time and carries out the commands it polls.

use crate::config::SupervisorPolicy;
use crate::id::{AgentId, Instance};
use crate::input::EscalationReason;
use crate::sorted_map::SortedMap;
use crate::time::Millis;
use crate::timer::Timers;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// An observation of a supervised process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SupervisorInput {
    /// A pod was created for this instance and its process spawned: supervise it.
    Adopt {
        agent: AgentId,
        instance: Instance,
    },
    /// The process exited.
    Exited {
        agent: AgentId,
        instance: Instance,
        code: i32,
    },
    ProbeSucceeded {
        agent: AgentId,
        instance: Instance,
    },
    ProbeFailed {
        agent: AgentId,
        instance: Instance,
    },
    /// The controller is stopping this instance: stop supervising it.
    Release {
        agent: AgentId,
        instance: Instance,
    },
}

/// A decision of the supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SupervisorCommand {
    /// Spawn the agent's process again, in the same pod, with the same state.
    Restart {
        agent: AgentId,
        instance: Instance,
        /// Restarts in a row without a healthy spell, from 1.
        attempt: u32,
    },
    /// Restarting in place cannot help: report to the controller
    /// ([`Input::Escalate`](crate::Input::Escalate)). The process, if alive, is left for the
    /// controller to stop.
    Escalate {
        agent: AgentId,
        instance: Instance,
        reason: EscalationReason,
    },
}

/// An input the supervisor refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    #[error("time went backwards: input at {got} after {now}")]
    TimeWentBackwards { now: Millis, got: Millis },
    #[error("{0} is not supervised here")]
    UnknownAgent(AgentId),
}

/// Restarts agent processes in place with an OTP-style budget.
///
/// # Driving it
/// 1. Feed each observation with [`handle`](Self::handle).
/// 2. Drain [`poll_command`](Self::poll_command) until `None` and carry each command out.
/// 3. Call [`handle_timeout`](Self::handle_timeout) when [`next_deadline`](Self::next_deadline)
///    passes (spurious calls are harmless), then poll again.
#[derive(Debug)]
pub struct Supervisor {
    policy: SupervisorPolicy,
    now: Millis,
    /// By agent id; a node's few dozen children, so a sorted `Vec` rather than a `BTreeMap`.
    children: SortedMap<AgentId, Child>,
    timers: Timers<(AgentId, u32)>,
    commands: VecDeque<SupervisorCommand>,
}

#[derive(Debug)]
struct Child {
    instance: Instance,
    state: ChildState,
    restarts: RestartHistory,
    early_exits: u32,
    probe_failures: u32,
    /// Restarts since the last healthy spell; drives the backoff.
    attempt: u32,
    timer_generation: u32,
}

/// Restart times within the budget's period, oldest first; at most `restart_intensity`.
///
/// Allocated at a child's first restart and freed once its restarts have all left the period:
/// most children of a fleet never restart, or not for long, and each holds one pointer.
#[derive(Clone, Debug, Default)]
#[expect(
    clippy::box_collection,
    reason = "one pointer in every child instead of a VecDeque's 32 bytes"
)]
struct RestartHistory(Option<Box<VecDeque<Millis>>>);

impl RestartHistory {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |times| times.len())
    }

    fn forget_before(&mut self, period_start: Millis) {
        let Some(times) = self.0.as_mut() else {
            return;
        };
        while times.front().is_some_and(|&at| at < period_start) {
            times.pop_front();
        }
        if times.is_empty() {
            self.0 = None;
        }
    }

    fn push(&mut self, now: Millis, intensity: u32) {
        self.0
            .get_or_insert_with(|| Box::new(VecDeque::with_capacity(intensity as usize)))
            .push_back(now);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChildState {
    Running {
        spawned_at: Millis,
        healthy_since: Option<Millis>,
    },
    BackingOff,
    /// Handed to the controller; nothing more to do until it is released or replaced.
    Escalated,
}

impl Supervisor {
    pub fn new(policy: SupervisorPolicy) -> Supervisor {
        Supervisor {
            policy,
            now: Millis::ZERO,
            children: SortedMap::default(),
            timers: Timers::default(),
            commands: VecDeque::new(),
        }
    }

    /// Agents currently supervised.
    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Feeds one observation. Observations about a replaced instance are ignored.
    pub fn handle(&mut self, now: Millis, input: SupervisorInput) -> Result<(), SupervisorError> {
        self.advance(now)?;
        match input {
            SupervisorInput::Adopt { agent, instance } => {
                self.adopt(agent, instance);
                Ok(())
            }
            SupervisorInput::Release { agent, instance } => {
                if self.current(agent, instance)?.is_some() {
                    self.children.remove(&agent);
                }
                Ok(())
            }
            SupervisorInput::Exited {
                agent, instance, ..
            } => {
                self.on_exit(agent, instance)?;
                Ok(())
            }
            SupervisorInput::ProbeSucceeded { agent, instance } => {
                let now = self.now;
                if let Some(child) = self.current(agent, instance)? {
                    child.probe_failures = 0;
                    if let ChildState::Running { healthy_since, .. } = &mut child.state {
                        healthy_since.get_or_insert(now);
                    }
                }
                Ok(())
            }
            SupervisorInput::ProbeFailed { agent, instance } => {
                self.on_probe_failed(agent, instance)?;
                Ok(())
            }
        }
    }

    /// The next decision, if any. Poll until `None` after every `handle*` call.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<SupervisorCommand> {
        self.commands.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.next_deadline()
    }

    /// Fires every timer due at `now`. Safe to call at any time.
    pub fn handle_timeout(&mut self, now: Millis) -> Result<(), SupervisorError> {
        self.advance(now)?;
        while let Some((agent, generation)) = self.timers.pop_due(now) {
            let Some(child) = self.children.get_mut(&agent) else {
                continue;
            };
            if child.timer_generation != generation || child.state != ChildState::BackingOff {
                continue;
            }
            child.state = ChildState::Running {
                spawned_at: now,
                healthy_since: None,
            };
            self.commands.push_back(SupervisorCommand::Restart {
                agent,
                instance: child.instance,
                attempt: child.attempt,
            });
        }
        Ok(())
    }

    fn advance(&mut self, now: Millis) -> Result<(), SupervisorError> {
        if now < self.now {
            return Err(SupervisorError::TimeWentBackwards {
                now: self.now,
                got: now,
            });
        }
        self.now = now;
        Ok(())
    }

    /// The child if `instance` is the one supervised; `None` for a stale instance.
    fn current(
        &mut self,
        agent: AgentId,
        instance: Instance,
    ) -> Result<Option<&mut Child>, SupervisorError> {
        let child = self
            .children
            .get_mut(&agent)
            .ok_or(SupervisorError::UnknownAgent(agent))?;
        Ok((child.instance == instance).then_some(child))
    }

    fn adopt(&mut self, agent: AgentId, instance: Instance) {
        let child = Child {
            instance,
            state: ChildState::Running {
                spawned_at: self.now,
                healthy_since: None,
            },
            // Allocated at the first restart: most children never restart.
            restarts: RestartHistory::default(),
            early_exits: 0,
            probe_failures: 0,
            attempt: 0,
            timer_generation: 0,
        };
        self.children.insert(agent, child);
    }

    fn on_probe_failed(
        &mut self,
        agent: AgentId,
        instance: Instance,
    ) -> Result<(), SupervisorError> {
        let threshold = self.policy.hang_probe_failures;
        let Some(child) = self.current(agent, instance)? else {
            return Ok(());
        };
        if !matches!(child.state, ChildState::Running { .. }) {
            return Ok(());
        }
        child.probe_failures += 1;
        if child.probe_failures >= threshold {
            child.state = ChildState::Escalated;
            self.commands.push_back(SupervisorCommand::Escalate {
                agent,
                instance,
                reason: EscalationReason::Hung,
            });
        }
        Ok(())
    }

    fn on_exit(&mut self, agent: AgentId, instance: Instance) -> Result<(), SupervisorError> {
        let now = self.now;
        let policy = &self.policy;
        let child = self
            .children
            .get_mut(&agent)
            .ok_or(SupervisorError::UnknownAgent(agent))?;
        if child.instance != instance {
            return Ok(());
        }
        let ChildState::Running { healthy_since, .. } = child.state else {
            // Already backing off or escalated: the exit of a process we no longer track.
            return Ok(());
        };
        let early =
            healthy_since.is_none_or(|since| now.saturating_since(since).0 < policy.early_exit_ms);
        if early {
            child.early_exits += 1;
        } else {
            child.early_exits = 0;
            child.attempt = 0;
        }
        let period_start = now.saturating_since(Millis(policy.restart_period_ms));
        child.restarts.forget_before(period_start);
        let escalation = if child.attempt > 0 && child.early_exits >= policy.crash_loop_exits {
            Some(EscalationReason::CrashLoop)
        } else if child.restarts.len() >= policy.restart_intensity as usize {
            Some(EscalationReason::BudgetExhausted)
        } else {
            None
        };
        if let Some(reason) = escalation {
            child.state = ChildState::Escalated;
            self.commands.push_back(SupervisorCommand::Escalate {
                agent,
                instance,
                reason,
            });
            return Ok(());
        }
        assert!(
            child.restarts.len() < policy.restart_intensity as usize,
            "restart budget bounds the restart history"
        );
        child.restarts.push(now, policy.restart_intensity);
        child.attempt += 1;
        child.probe_failures = 0;
        let delay = backoff_ms(policy, child.attempt);
        if delay == 0 {
            child.state = ChildState::Running {
                spawned_at: now,
                healthy_since: None,
            };
            self.commands.push_back(SupervisorCommand::Restart {
                agent,
                instance,
                attempt: child.attempt,
            });
        } else {
            child.state = ChildState::BackingOff;
            child.timer_generation += 1;
            self.timers.set(
                now.saturating_add(Millis(delay)),
                (agent, child.timer_generation),
            );
        }
        Ok(())
    }
}

/// No delay for the first restart, then `initial × 2^(attempt-2)`, capped.
fn backoff_ms(policy: &SupervisorPolicy, attempt: u32) -> u64 {
    if attempt <= 1 {
        return 0;
    }
    let doublings = (attempt - 2).min(32);
    policy
        .backoff_initial_ms
        .saturating_mul(1u64 << doublings)
        .min(policy.backoff_max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: AgentId = AgentId(7);
    const I: Instance = Instance(1);

    fn drain(s: &mut Supervisor) -> Vec<SupervisorCommand> {
        std::iter::from_fn(|| s.poll_command()).collect()
    }

    fn adopted(policy: SupervisorPolicy) -> Supervisor {
        let mut s = Supervisor::new(policy);
        s.handle(
            Millis(0),
            SupervisorInput::Adopt {
                agent: A,
                instance: I,
            },
        )
        .unwrap();
        s.handle(
            Millis(13_000),
            SupervisorInput::ProbeSucceeded {
                agent: A,
                instance: I,
            },
        )
        .unwrap();
        s
    }

    fn exit(s: &mut Supervisor, at: u64) {
        s.handle(
            Millis(at),
            SupervisorInput::Exited {
                agent: A,
                instance: I,
                code: 1,
            },
        )
        .unwrap();
    }

    #[test]
    fn first_exit_restarts_at_once() {
        let mut s = adopted(SupervisorPolicy::default());
        exit(&mut s, 3_600_000);
        assert_eq!(
            drain(&mut s),
            vec![SupervisorCommand::Restart {
                agent: A,
                instance: I,
                attempt: 1
            }]
        );
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn early_exit_after_restart_is_a_crash_loop() {
        let mut s = adopted(SupervisorPolicy::default());
        exit(&mut s, 3_600_000);
        let _ = drain(&mut s);
        exit(&mut s, 3_605_000);
        assert_eq!(
            drain(&mut s),
            vec![SupervisorCommand::Escalate {
                agent: A,
                instance: I,
                reason: EscalationReason::CrashLoop
            }]
        );
    }

    #[test]
    fn budget_counts_restarts_within_the_period_then_escalates() {
        let policy = SupervisorPolicy {
            crash_loop_exits: 100,
            ..SupervisorPolicy::default()
        };
        let mut s = adopted(policy.clone());
        let mut at = 100_000;
        for _ in 0..policy.restart_intensity {
            exit(&mut s, at);
            at += 10_000;
            s.handle_timeout(Millis(at)).unwrap();
            assert!(matches!(
                drain(&mut s).as_slice(),
                [SupervisorCommand::Restart { .. }]
            ));
        }
        exit(&mut s, at);
        assert_eq!(
            drain(&mut s),
            vec![SupervisorCommand::Escalate {
                agent: A,
                instance: I,
                reason: EscalationReason::BudgetExhausted
            }]
        );
    }

    #[test]
    fn restarts_outside_the_period_do_not_count() {
        let policy = SupervisorPolicy::default();
        let mut s = adopted(policy.clone());
        let mut at = 100_000;
        for _ in 0..10 {
            exit(&mut s, at);
            assert!(matches!(
                drain(&mut s).as_slice(),
                [SupervisorCommand::Restart { .. }]
            ));
            at += 1_000;
            s.handle(
                Millis(at),
                SupervisorInput::ProbeSucceeded {
                    agent: A,
                    instance: I,
                },
            )
            .unwrap();
            at += policy.restart_period_ms;
        }
    }

    #[test]
    fn backoff_grows_but_never_beyond_its_ceiling() {
        let policy = SupervisorPolicy::default();
        let delays: Vec<u64> = (1..40).map(|a| backoff_ms(&policy, a)).collect();
        assert_eq!(delays[0], 0);
        assert_eq!(delays[1], policy.backoff_initial_ms);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), policy.backoff_max_ms);
    }

    #[test]
    fn hang_escalates_after_consecutive_probe_failures_only() {
        let policy = SupervisorPolicy::default();
        let mut s = adopted(policy.clone());
        let probe = |s: &mut Supervisor, at, ok| {
            let input = if ok {
                SupervisorInput::ProbeSucceeded {
                    agent: A,
                    instance: I,
                }
            } else {
                SupervisorInput::ProbeFailed {
                    agent: A,
                    instance: I,
                }
            };
            s.handle(Millis(at), input).unwrap();
        };
        for round in 0..3u64 {
            for k in 1..policy.hang_probe_failures as u64 {
                probe(&mut s, 20_000 + round * 100_000 + k * 1000, false);
            }
            probe(&mut s, 20_000 + round * 100_000 + 50_000, true);
        }
        assert!(drain(&mut s).is_empty());
        for k in 0..policy.hang_probe_failures as u64 {
            probe(&mut s, 900_000 + k * 1000, false);
        }
        assert_eq!(
            drain(&mut s),
            vec![SupervisorCommand::Escalate {
                agent: A,
                instance: I,
                reason: EscalationReason::Hung
            }]
        );
    }

    #[test]
    fn stale_instances_and_time_travel_are_handled() {
        let mut s = adopted(SupervisorPolicy::default());
        s.handle(
            Millis(20_000),
            SupervisorInput::Exited {
                agent: A,
                instance: Instance(0),
                code: 1,
            },
        )
        .unwrap();
        assert!(drain(&mut s).is_empty());
        assert_eq!(
            s.handle(
                Millis(1),
                SupervisorInput::ProbeFailed {
                    agent: A,
                    instance: I
                }
            ),
            Err(SupervisorError::TimeWentBackwards {
                now: Millis(20_000),
                got: Millis(1)
            })
        );
        assert_eq!(
            s.handle(
                Millis(20_000),
                SupervisorInput::ProbeFailed {
                    agent: AgentId(9),
                    instance: I
                }
            ),
            Err(SupervisorError::UnknownAgent(AgentId(9)))
        );
    }
}
