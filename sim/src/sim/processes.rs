//! Agent processes: spawning, booting, probes, exits. What a node-side agent would observe
//! and report, and nothing it would decide.

use super::*;

/// A death the engine has yet to hear of.
#[derive(Clone, Copy, Debug)]
pub(super) struct Notice {
    pod: Pod,
    death: Death,
    /// When it is told: a notice replaced by a later one (the pod was replaced and its
    /// successor died too) leaves its event to find a later due time, and does nothing.
    due: Millis,
}

#[derive(Clone, Copy, Debug)]
enum Death {
    Exited {
        code: i32,
        oom_killed: bool,
    },
    /// The pod supervisor died, and its agent with it.
    SupervisorLost,
}

impl Simulation {
    pub(super) fn set_process_state(&mut self, id: AgentId, state: ProcessState) {
        let agent = &mut self.agents[id];
        let Some(process) = agent.process.as_mut() else {
            return;
        };
        let was_serving = process.state == ProcessState::Serving;
        process.state = state;
        let is_serving = state == ProcessState::Serving;
        match (was_serving, is_serving) {
            (false, true) => self.serving += 1,
            (true, false) => self.serving -= 1,
            _ => return,
        }
        if self.now >= self.faults_end && self.faults_end < self.end {
            self.served_in_tail.insert(id);
        }
    }

    /// The process died (crash, OOM kill, self-restart). The pod stays; its supervisor and the
    /// controller are told, as a real node agent would tell them.
    pub(super) fn exit_process(&mut self, id: AgentId, code: i32, oom_killed: bool) {
        self.kill_process(id);
        let Some(pod) = self.agents[id].pod else {
            return;
        };
        if !self.nodes[pod.node.index()].up {
            return;
        }
        self.notice(id, pod, Death::Exited { code, oom_killed });
    }

    /// The pod supervisor of `id` died and took its agent with it, unseen by the node's
    /// supervisor state machine; the node driver tells the controller when the supervisor's
    /// socket closes.
    pub(super) fn lose_supervisor(&mut self, id: AgentId) {
        let agent = &self.agents[id];
        let (Some(_), Some(pod)) = (agent.process, agent.pod) else {
            return;
        };
        if !self.nodes[pod.node.index()].up {
            return;
        }
        self.measures.fault(id, Fault::Crash, self.now);
        self.kill_process(id);
        self.agents[id].supervisor_lost = true;
        self.notice(id, pod, Death::SupervisorLost);
    }

    /// Tells the engine of a death at once, or after the scenario's notice lag.
    fn notice(&mut self, id: AgentId, pod: Pod, death: Death) {
        let latency = &self.scenario.latency;
        let lag = match death {
            // Its restart in place validates the changed config first (and refuses it).
            Death::Exited { .. } if self.agents[id].config_broken => {
                latency.config_reject_notice.unwrap_or(latency.exit_notice)
            }
            Death::Exited { .. } => latency.exit_notice,
            Death::SupervisorLost => latency.supervisor_loss_notice,
        };
        let lag = self.lag(id, lag);
        if lag == Millis::ZERO {
            self.tell_death(id, pod, death);
            return;
        }
        let due = self.now + lag;
        self.notices.insert(id, Notice { pod, death, due });
        self.queue.push(due, Event::Noticed(id));
    }

    pub(super) fn on_noticed(&mut self, id: AgentId) {
        let Some(&notice) = self.notices.get(&id) else {
            return;
        };
        if notice.due != self.now {
            return;
        }
        self.notices.remove(&id);
        // A pod stopped or lost meanwhile was reported gone by its stop or its node.
        if self.agents[id].pod == Some(notice.pod) && self.nodes[notice.pod.node.index()].up {
            self.tell_death(id, notice.pod, notice.death);
        }
    }

    fn tell_death(&mut self, id: AgentId, pod: Pod, death: Death) {
        self.measures.observed(id, self.now);
        match death {
            Death::Exited { code, oom_killed } => {
                self.feed(Input::AgentExited {
                    agent: id,
                    instance: pod.instance,
                    code,
                    oom_killed,
                });
                self.feed_supervisor(
                    pod.node,
                    SupervisorInput::Exited {
                        agent: id,
                        instance: pod.instance,
                        code,
                    },
                );
            }
            Death::SupervisorLost => {
                self.feed_supervisor(
                    pod.node,
                    SupervisorInput::Release {
                        agent: id,
                        instance: pod.instance,
                    },
                );
                self.feed(Input::Escalate {
                    agent: id,
                    instance: pod.instance,
                    reason: carapace_engine::EscalationReason::SupervisorLost,
                });
            }
        }
    }

    /// Removes the process without telling anyone (a stop, a node failure).
    pub(super) fn kill_process(&mut self, id: AgentId) {
        self.set_process_state(id, ProcessState::Booting);
        let agent = &mut self.agents[id];
        agent.process = None;
        // The work that spiked died with the process.
        agent.spike_until = Millis::ZERO;
        self.sync_hot(id);
    }

    /// The pod of process `life` of `id`, if that process still lives in `state` on an up node:
    /// a probe result about any other process is stale.
    pub(super) fn probed_pod(&self, id: AgentId, life: u32, state: ProcessState) -> Option<Pod> {
        let agent = &self.agents[id];
        let (process, pod) = (agent.process?, agent.pod?);
        let current =
            process.life == life && process.state == state && self.nodes[pod.node.index()].up;
        current.then_some(pod)
    }

    pub(super) fn on_probe_fail(&mut self, id: AgentId, life: u32) {
        let Some(pod) = self.probed_pod(id, life, ProcessState::Hung) else {
            return;
        };
        self.measures.observed(id, self.now);
        self.feed(Input::ProbeFailed {
            agent: id,
            instance: pod.instance,
        });
        self.feed_supervisor(
            pod.node,
            SupervisorInput::ProbeFailed {
                agent: id,
                instance: pod.instance,
            },
        );
        let probes = &self.scenario.probes;
        let period = probes.interval.0.max(probes.timeout.0);
        self.queue
            .push(self.now + period, Event::ProbeFail { agent: id, life });
    }

    pub(super) fn spawn(&mut self, id: AgentId, boot: Dist) {
        self.spawn_after(id, boot, Millis::ZERO);
    }

    /// Spawns a process that starts `delay` from now; it is the pod's process (booting) from
    /// now on.
    fn spawn_after(&mut self, id: AgentId, boot: Dist, delay: Millis) {
        let boot = self.latency(id, boot);
        let started_at = self.now + delay;
        let agent = &mut self.agents[id];
        agent.lives += 1;
        agent.last_fed_bytes = 0;
        let life = agent.lives;
        agent.process = Some(Process {
            life,
            state: ProcessState::Booting,
            started_at,
            ready_at: Millis::MAX,
            memory_high: Process::UNTHROTTLED,
        });
        self.sync_hot(id);
        self.queue
            .push(started_at + boot, Event::Ready { agent: id, life });
    }

    pub(super) fn restart_in_place(&mut self, node: NodeId, id: AgentId, instance: Instance) {
        let agent = &self.agents[id];
        if agent.pod != Some(Pod { node, instance })
            || agent.process.is_some()
            || !self.nodes[node.index()].up
        {
            return;
        }
        if agent.config_broken {
            // The node agent validates the config before every start.
            self.measures.observed(id, self.now);
            self.feed(Input::RejectConfig {
                agent: id,
                instance,
                version: self.agents_version(id),
            });
            return;
        }
        let delay = self.lag(id, self.scenario.latency.restart);
        self.spawn_after(id, self.scenario.latency.boot_after_crash, delay);
    }

    pub(super) fn agents_version(&self, id: AgentId) -> Version {
        self.controller
            .agent(id)
            .map_or(INITIAL_VERSION, |a| a.version)
    }

    pub(super) fn on_ready(&mut self, id: AgentId, life: u32) {
        let Some(process) = self.agents[id].process else {
            return;
        };
        if process.life != life || process.state != ProcessState::Booting {
            return;
        }
        self.set_process_state(id, ProcessState::Serving);
        let poisoned = self.agents[id].poisoned;
        let process = self.agents[id].process.as_mut().expect("checked above");
        process.ready_at = self.now;
        let started = process.started_at;
        let interval = self.scenario.probes.startup_interval.ms();
        let waited = self.now.saturating_since(started).0;
        let tick = started + Millis(waited.div_ceil(interval) * interval);
        let probe_at = tick + self.lag(id, self.scenario.latency.ready_notice);
        self.queue
            .push(probe_at, Event::ProbeOk { agent: id, life });
        if poisoned {
            let delay = self.latency(
                id,
                Dist::Uniform {
                    min: ms(1_000),
                    max: ms(6_000),
                },
            );
            self.queue
                .push(self.now + delay, Event::ResumeCrash { agent: id, life });
        }
    }

    pub(super) fn on_probe_ok(&mut self, id: AgentId, life: u32) {
        let Some(pod) = self.probed_pod(id, life, ProcessState::Serving) else {
            return;
        };
        self.feed_supervisor(
            pod.node,
            SupervisorInput::ProbeSucceeded {
                agent: id,
                instance: pod.instance,
            },
        );
        self.feed(Input::ProbeSucceeded {
            agent: id,
            instance: pod.instance,
        });
        let rung = self.controller.agent(id).and_then(|a| a.rung);
        let class = usize::from(self.agents[id].class);
        let clients = &self.scenario.fleet.classes[class].clients;
        let (rate, timeout) = (clients.requests_per_hour * 24.0, clients.timeout.0);
        let first_request = if self.measures.is_open(id) {
            let u = self.draw_unit(id, Component::Clients);
            exponential_gap(rate, u).map_or(Millis::MAX, |gap| self.measures_start(id) + gap)
        } else {
            Millis::MAX
        };
        let name = self.classes[class].name.clone();
        self.measures
            .healthy(id, &name, self.now, rung, first_request, timeout);
    }

    pub(super) fn measures_start(&self, id: AgentId) -> Millis {
        self.measures.open_start(id).unwrap_or(self.now)
    }
}
