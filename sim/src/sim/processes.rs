//! Agent processes: spawning, booting, probes, exits. What a node-side agent would observe
//! and report, and nothing it would decide.

use super::*;

impl Simulation {
    pub(super) fn set_process_state(&mut self, id: AgentId, state: ProcessState) {
        let agent = &mut self.agents[id.index()];
        let Some(process) = agent.process.as_mut() else {
            return;
        };
        let was_serving = process.state == ProcessState::Serving;
        process.state = state;
        let is_serving = state == ProcessState::Serving;
        match (was_serving, is_serving) {
            (false, true) => self.serving += 1,
            (true, false) => self.serving -= 1,
            _ => {}
        }
    }

    /// The process died (crash, OOM kill, self-restart). The pod stays; its supervisor and the
    /// controller are told, as a real node agent would tell them.
    pub(super) fn exit_process(&mut self, id: AgentId, code: i32, oom_killed: bool) {
        self.kill_process(id);
        let Some(pod) = self.agents[id.index()].pod else {
            return;
        };
        if !self.nodes[pod.node.index()].up {
            return;
        }
        self.measures.observed(id, self.now);
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

    /// Removes the process without telling anyone (a stop, a node failure).
    pub(super) fn kill_process(&mut self, id: AgentId) {
        self.set_process_state(id, ProcessState::Booting);
        let agent = &mut self.agents[id.index()];
        agent.process = None;
        // The work that spiked died with the process.
        agent.spike_until = Millis::ZERO;
        self.sync_hot(id);
    }

    /// The pod of process `life` of `id`, if that process still lives in `state` on an up node:
    /// a probe result about any other process is stale.
    pub(super) fn probed_pod(&self, id: AgentId, life: u32, state: ProcessState) -> Option<Pod> {
        let agent = &self.agents[id.index()];
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
        let boot = self.latency(id, boot);
        let agent = &mut self.agents[id.index()];
        agent.lives += 1;
        agent.last_fed_bytes = 0;
        let life = agent.lives;
        agent.process = Some(Process {
            life,
            state: ProcessState::Booting,
            started_at: self.now,
            ready_at: Millis::MAX,
            memory_high: None,
        });
        self.sync_hot(id);
        self.queue
            .push(self.now + boot, Event::Ready { agent: id, life });
    }

    pub(super) fn restart_in_place(&mut self, node: NodeId, id: AgentId, instance: Instance) {
        let agent = &self.agents[id.index()];
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
        self.spawn(id, self.scenario.latency.boot_after_crash);
    }

    pub(super) fn agents_version(&self, id: AgentId) -> Version {
        self.controller
            .agent(id)
            .map_or(INITIAL_VERSION, |a| a.version)
    }

    pub(super) fn on_ready(&mut self, id: AgentId, life: u32) {
        let Some(process) = self.agents[id.index()].process else {
            return;
        };
        if process.life != life || process.state != ProcessState::Booting {
            return;
        }
        self.set_process_state(id, ProcessState::Serving);
        let poisoned = self.agents[id.index()].poisoned;
        let process = self.agents[id.index()]
            .process
            .as_mut()
            .expect("checked above");
        process.ready_at = self.now;
        let started = process.started_at;
        let interval = self.scenario.probes.startup_interval.ms();
        let waited = self.now.saturating_since(started).0;
        let probe_at = started + Millis(waited.div_ceil(interval) * interval);
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
        let class = usize::from(self.agents[id.index()].class);
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
