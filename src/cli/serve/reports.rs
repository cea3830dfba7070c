//! What pods and the driver's tasks report, turned into engine inputs.

use super::agents::RUNTIME;
use super::daemon::{ApplyError, CURSORS, Cursor, Daemon};
use super::driver::Report;
use super::feed::{FeedKind, observation};
use carapace_drivers::supervise::Event;
use carapace_engine::{AgentId, Input, Instance, Outcome, Version};
use carapace_store::Batch;

impl Daemon {
    /// Turns what a pod or a command's task reported into engine inputs.
    pub fn on_report(&mut self, report: Report) {
        let result = match report {
            Report::Finished { command, outcome } => {
                self.apply(Input::FinishCommand { command, outcome }, Batch::new())
            }
            Report::SupervisorLost { agent, instance } => {
                self.push_feed(
                    self.clock.now(),
                    Some(agent),
                    Some(instance),
                    FeedKind::Observation,
                    "supervisor_lost",
                    format!("supervisor of {instance} lost"),
                );
                self.input_for_current(
                    agent,
                    instance,
                    Input::Escalate {
                        agent,
                        instance,
                        reason: carapace_engine::EscalationReason::SupervisorLost,
                    },
                )
            }
            Report::Event {
                agent,
                instance,
                numbered,
            } => self.on_pod_event(agent, instance, numbered.seq, numbered.event),
            Report::Adopted {
                agent,
                instance,
                after,
            } => {
                self.driver.watch(agent, instance, after);
                Ok(())
            }
            Report::WarmUpDue { command } => {
                self.driver.boot_standby(command);
                Ok(())
            }
            Report::AdoptionFailed {
                command,
                agent,
                instance,
            } => {
                self.driver.abandon_adoption(command, agent, instance);
                self.start_cold(command);
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "a report the engine did not take");
        }
    }

    pub(super) fn on_pod_event(
        &mut self,
        agent: AgentId,
        instance: Instance,
        seq: u64,
        event: Event,
    ) -> Result<(), ApplyError> {
        let mut batch = Batch::new();
        let cursor = Cursor { instance, seq };
        batch.put_desired(CURSORS, u64::from(agent.0), &cursor);
        self.cursors.insert(agent, cursor);
        let pending = self.pending_starts.get(&(agent, instance)).copied();
        if let Some((name, what)) = observation(&event) {
            let mut entry = self.feed_entry(
                self.clock.now(),
                Some(agent),
                Some(instance),
                FeedKind::Observation,
                name,
                format!("{instance} {what}"),
            );
            entry.pod_ms = Some(event.at_ms());
            self.publish(entry);
        }
        if let Event::Spawned { pid, .. } = event {
            self.agent_pids.insert(agent, (instance, pid));
        }
        let inputs: Vec<Input> = match event {
            Event::Spawned { .. } => match pending {
                Some(command) => vec![
                    Input::AgentStarted { agent, instance },
                    Input::FinishCommand {
                        command,
                        outcome: Outcome::Succeeded,
                    },
                ],
                None => Vec::new(),
            },
            Event::Ready { .. } => vec![Input::ProbeSucceeded { agent, instance }],
            Event::ProbeFailed { .. } => vec![Input::ProbeFailed { agent, instance }],
            Event::Exited { code, .. } => {
                let oom_killed = code == 137
                    && self
                        .driver
                        .oom_kills(agent, instance)
                        .is_some_and(|n| n > 0);
                vec![Input::AgentExited {
                    agent,
                    instance,
                    code,
                    oom_killed,
                }]
            }
            Event::Memory { rss_bytes, .. } => {
                self.memory
                    .record(agent, self.clock.now(), instance.0, rss_bytes);
                vec![Input::SampleMemory {
                    agent,
                    instance,
                    memory_bytes: rss_bytes,
                }]
            }
            Event::Escalated { reason, .. } => vec![Input::Escalate {
                agent,
                instance,
                reason,
            }],
            Event::ConfigRejected { .. } => {
                let version = self
                    .controller
                    .agent(agent)
                    .map_or(Version::new(RUNTIME, 1), |v| v.version);
                let mut inputs = vec![Input::RejectConfig {
                    agent,
                    instance,
                    version,
                }];
                if let Some(command) = pending {
                    inputs.push(Input::FinishCommand {
                        command,
                        outcome: Outcome::Failed,
                    });
                }
                inputs
            }
            Event::SpawnFailed { .. } => match pending {
                Some(command) => vec![Input::FinishCommand {
                    command,
                    outcome: Outcome::Failed,
                }],
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        if inputs.is_empty() {
            // Only the cursor moves.
            self.commit_or_stop(batch);
            return Ok(());
        }
        let mut first = Some(batch);
        for input in inputs {
            let batch = first.take().unwrap_or_default();
            if let Err(error) = self.apply(input, batch) {
                tracing::debug!(%agent, %instance, %error, "a pod event the engine did not take");
            }
        }
        if let Some(batch) = first {
            self.commit_or_stop(batch);
        }
        Ok(())
    }

    pub(super) fn input_for_current(
        &mut self,
        agent: AgentId,
        instance: Instance,
        input: Input,
    ) -> Result<(), ApplyError> {
        if self
            .controller
            .agent(agent)
            .is_some_and(|v| v.instance == instance)
        {
            self.apply(input, Batch::new())
        } else {
            Ok(())
        }
    }
}
