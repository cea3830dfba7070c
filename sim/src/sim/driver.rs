//! The simulated driver: carries out the controller's commands with the scenario's latencies
//! and reports how each ended.

use super::*;

impl Simulation {
    pub(super) fn execute(&mut self, command: Command) {
        match command {
            Command::Start {
                id,
                agent,
                instance,
                node,
                version,
                snapshot,
                reason,
                warm,
            } => {
                let mut latency = self.latency(agent, self.scenario.latency.schedule);
                // A warm instance already runs the version: only its config is applied.
                if !warm && !self.nodes[node.index()].versions.contains(&version) {
                    latency = latency + self.latency(agent, self.scenario.latency.version_pull);
                }
                if snapshot.is_some() {
                    latency = latency + self.latency(agent, self.scenario.latency.snapshot_restore);
                }
                latency = latency + self.latency(agent, self.scenario.latency.validate);
                self.pending_starts.insert((agent, instance), id);
                self.orders.insert(
                    id,
                    Order::Start {
                        agent,
                        instance,
                        node,
                        version,
                        snapshot,
                        reason,
                        warm,
                    },
                );
                self.queue.push(self.now + latency, Event::StartDone(id));
            }
            Command::WarmUp { id, node, .. } => {
                let boot = self.node_latency(node, self.scenario.latency.boot);
                let latency = self.node_latency(node, self.scenario.latency.schedule) + boot;
                self.orders.insert(id, Order::WarmUp { node });
                self.queue.push(self.now + latency, Event::WarmDone(id));
            }
            Command::Stop {
                id,
                agent,
                instance,
                node,
                snapshot,
                reason,
            } => {
                let a = &self.agents[agent];
                let hung = a.process.is_some_and(|p| p.state == ProcessState::Hung);
                let lost = a.supervisor_lost && a.pod.is_some_and(|p| p.instance == instance);
                let stop = match self.scenario.latency.lost_stop {
                    Some(lost_stop) if lost => lost_stop,
                    _ => self.scenario.latency.stop,
                };
                self.feed_supervisor(node, SupervisorInput::Release { agent, instance });
                let mut latency =
                    self.latency(agent, self.scenario.latency.schedule) + self.latency(agent, stop);
                if hung {
                    latency = latency + self.scenario.latency.hung_stop_grace.0;
                }
                self.orders.insert(
                    id,
                    Order::Stop {
                        agent,
                        instance,
                        node,
                        snapshot,
                        reason,
                    },
                );
                self.queue.push(self.now + latency, Event::StopDone(id));
            }
            Command::TakeSnapshot {
                id,
                agent,
                instance,
                node,
                snapshot,
                ..
            } => {
                let life = self.agents[agent].process.map(|p| p.life);
                self.orders.insert(
                    id,
                    Order::Snapshot {
                        agent,
                        instance,
                        node,
                        snapshot,
                        life,
                    },
                );
                self.queue
                    .push(self.now + Millis(500), Event::SnapshotDone(id));
            }
            Command::Throttle {
                agent,
                instance,
                memory_bytes_high,
                ..
            } => {
                let a = &mut self.agents[agent];
                if a.pod.is_some_and(|p| p.instance == instance)
                    && let Some(process) = a.process.as_mut()
                {
                    process.memory_high = memory_bytes_high;
                    self.sync_hot(agent);
                }
            }
            Command::Alert(post_mortem) => {
                self.stats.alerts += 1;
                self.alerted.insert(post_mortem.agent);
                if self.stats.post_mortems.len() < MAX_POST_MORTEMS {
                    self.stats.post_mortems.push((*post_mortem).clone());
                }
                let class = self.classes[usize::from(self.agents[post_mortem.agent].class)]
                    .name
                    .clone();
                self.measures.alerted(post_mortem.agent, &class, self.now);
            }
            Command::ReportRollout { rollout, state } => {
                self.stats
                    .rollout_events
                    .push((self.now.0, rollout.0, format!("{state:?}")));
            }
            Command::Reject { .. } => self.stats.rejects += 1,
            _ => self.stats.rejects += 1,
        }
    }

    pub(super) fn finish(&mut self, command: CommandId, outcome: Outcome) {
        self.feed(Input::FinishCommand { command, outcome });
    }

    pub(super) fn start_done(&mut self, command: CommandId) {
        let Some(Order::Start {
            agent: id,
            instance,
            node,
            version,
            snapshot,
            reason,
            warm,
        }) = self.orders.remove(command)
        else {
            return;
        };
        self.pending_starts.remove(&(id, instance));
        if !self.nodes[node.index()].up || !self.agents[id].desired {
            self.finish(command, Outcome::Failed);
            return;
        }
        let sim_node = &mut self.nodes[node.index()];
        if !sim_node.versions.contains(&version) {
            sim_node.versions.push(version);
        }
        let agent = &mut self.agents[id];
        if let Some(old) = agent.pod {
            if self.nodes[old.node.index()].up {
                self.stats
                    .invariant_violation
                    .get_or_insert(format!("at {}: two live copies of {id}", self.now));
            }
            // A node that still lists the agent is no longer where its pod is: its tick reads
            // the agent itself from now on.
            if old.node != node {
                self.nodes[old.node.index()].mark_stale(id, self.now);
            }
        }
        let agent = &mut self.agents[id];
        agent.pod = Some(Pod { node, instance });
        agent.supervisor_lost = false;
        agent.poisoned = snapshot.is_some_and(|s| self.poisoned_snapshots.contains(&(id, s)));
        if reason == StartReason::RestoreKnownGood {
            agent.config_broken = false;
        }
        let hot = PodHot::of(agent, self.scenario.probes.memory_deadband);
        let config_broken = agent.config_broken;
        self.nodes[node.index()].set_pod(id, hot, self.now);
        if config_broken || self.broken_versions.contains(&version) {
            if !self.measures.is_open(id) && self.broken_versions.contains(&version) {
                self.measures.fault(id, Fault::BrokenRelease, self.now);
            }
            self.measures.observed(id, self.now);
            self.feed(Input::RejectConfig {
                agent: id,
                instance,
                version,
            });
            self.finish(command, Outcome::Failed);
            return;
        }
        // The warm instance becomes the agent's: it only loads the agent's config.
        let from_pool = warm && self.nodes[node.index()].warm > 0;
        let boot = if from_pool {
            self.nodes[node.index()].warm -= 1;
            self.scenario.latency.warm_attach
        } else {
            self.scenario.latency.boot
        };
        self.spawn(id, boot);
        self.feed_supervisor(
            node,
            SupervisorInput::Adopt {
                agent: id,
                instance,
            },
        );
        self.feed(Input::AgentStarted {
            agent: id,
            instance,
        });
        self.finish(command, Outcome::Succeeded);
    }

    pub(super) fn warm_done(&mut self, command: CommandId) {
        let Some(Order::WarmUp { node }) = self.orders.remove(command) else {
            return;
        };
        let up = self.nodes[node.index()].up;
        if up {
            self.nodes[node.index()].warm += 1;
        }
        self.finish(
            command,
            if up {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
        );
    }

    /// A latency drawn for work of the node itself (not of one agent).
    fn node_latency(&mut self, node: NodeId, dist: Dist) -> Millis {
        let counters = &mut self.node_counters[node.index()];
        let (d1, d2) = (
            counters.next(Component::WarmUp),
            counters.next(Component::WarmUp),
        );
        let u1 = self.streams.unit(Component::WarmUp, node.0, d1);
        let u2 = self.streams.unit(Component::WarmUp, node.0, d2);
        crate::dist::sample(&dist, u1, u2)
    }

    pub(super) fn stop_done(&mut self, command: CommandId) {
        let Some(Order::Stop {
            agent: id,
            instance,
            node,
            snapshot,
            reason,
        }) = self.orders.remove(command)
        else {
            return;
        };
        if !self.nodes[node.index()].up {
            self.finish(command, Outcome::Failed);
            return;
        }
        if let Some(start) = self.pending_starts.remove(&(id, instance)) {
            // The pod was still being created: the stop cancels it and it never runs.
            self.orders.remove(start);
            self.finish(start, Outcome::Failed);
        }
        let agent = &self.agents[id];
        if agent.pod == Some(Pod { node, instance }) {
            if agent.serving() {
                match reason {
                    StopReason::Evict => self.measures.fault(id, Fault::Evicted, self.now),
                    StopReason::Migrate | StopReason::Rollout => {
                        self.measures.planned_disruptions += 1
                    }
                    _ => {}
                }
            }
            if let Some(snapshot) = snapshot
                && self.agents[id].poisoned
            {
                self.poisoned_snapshots.insert((id, snapshot));
            }
            self.kill_process(id);
            self.agents[id].pod = None;
            self.nodes[node.index()].remove_pod(id);
        }
        if reason == StopReason::Remove {
            self.agents[id].desired = false;
            self.measures.forget(id);
        }
        self.finish(command, Outcome::Succeeded);
    }

    pub(super) fn snapshot_done(&mut self, command: CommandId) {
        let Some(Order::Snapshot {
            agent: id,
            instance,
            node,
            snapshot,
            life,
        }) = self.orders.remove(command)
        else {
            return;
        };
        let agent = &self.agents[id];
        let ok = self.nodes[node.index()].up
            && agent.pod == Some(Pod { node, instance })
            && life.is_some()
            && agent.process.map(|p| p.life) == life;
        if ok && agent.poisoned {
            self.poisoned_snapshots.insert((id, snapshot));
        }
        self.finish(
            command,
            if ok {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
        );
    }
}
