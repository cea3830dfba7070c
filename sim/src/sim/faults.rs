//! Faults arriving from outside: agent crashes, hangs, config corruption and memory spikes
//! (seeded Poisson processes per agent), and machines that fail and come back.

use super::*;

impl Simulation {
    pub(super) fn schedule_fault(&mut self, agent: AgentId, kind: FaultKind) {
        let class = &self.scenario.fleet.classes[usize::from(self.agents[agent].class)];
        let (rate, component) = match kind {
            FaultKind::Crash => (class.faults.crashes_per_day, Component::Crash),
            FaultKind::Hang => (class.faults.hangs_per_day, Component::Hang),
            FaultKind::ConfigCorruption => (
                class.faults.config_corruptions_per_day,
                Component::ConfigCorruption,
            ),
            FaultKind::Spike if self.agents[agent].trace().is_some() => (0.0, Component::Spike),
            FaultKind::Spike => (class.memory.spikes_per_day, Component::Spike),
        };
        let u = self.draw_unit(agent, component);
        if let Some(gap) = exponential_gap(rate, u) {
            let at = self.now + gap;
            if at <= self.end {
                self.queue.push(at, Event::Fault(agent, kind));
            }
        }
    }

    pub(super) fn schedule_node_failure(&mut self, node: NodeId, from: Millis) {
        let rate = self.scenario.node_faults.failures_per_node_per_day;
        let draw = self.node_counters[node.index()].next(Component::NodeFailure);
        let u = self.streams.unit(Component::NodeFailure, node.0, draw);
        if let Some(gap) = exponential_gap(rate, u) {
            let at = from + gap;
            if at <= self.end {
                self.queue.push(at, Event::NodeFail(node));
            }
        }
    }

    pub(super) fn on_fault(&mut self, id: AgentId, kind: FaultKind) {
        if let Some(arrivals) = self.fault_arrivals.as_mut() {
            let name = match kind {
                FaultKind::Crash => "crash",
                FaultKind::Hang => "hang",
                FaultKind::ConfigCorruption => "config_corruption",
                FaultKind::Spike => "spike",
            };
            arrivals.push((self.now, id, name));
        }
        if !self.agents[id].desired {
            return;
        }
        self.schedule_fault(id, kind);
        self.apply_fault(id, kind, None);
    }

    /// What a fault does to the agent's process, whether it came from the seeded processes or
    /// from a replayed trace (which may give a spike's size and length).
    pub(super) fn apply_fault(
        &mut self,
        id: AgentId,
        kind: FaultKind,
        spike: Option<(u64, Millis)>,
    ) {
        let agent = &self.agents[id];
        let Some(process) = agent.process else { return };
        match kind {
            FaultKind::Crash if process.state != ProcessState::Hung => {
                let poison = self.scenario.fleet.classes[usize::from(agent.class)]
                    .faults
                    .crash_poisons_state;
                if self.draw_unit(id, Component::Poison) < poison {
                    self.agents[id].poisoned = true;
                }
                self.measures.fault(id, Fault::Crash, self.now);
                self.exit_process(id, 1, false);
            }
            FaultKind::Hang if process.state == ProcessState::Serving => {
                self.measures.fault(id, Fault::Hang, self.now);
                self.set_process_state(id, ProcessState::Hung);
                let interval = self.scenario.probes.interval.ms();
                let since_ready = self.now.saturating_since(process.ready_at).0;
                let next_probe = process.ready_at + Millis((since_ready / interval + 1) * interval);
                self.queue.push(
                    next_probe + self.scenario.probes.timeout.0,
                    Event::ProbeFail {
                        agent: id,
                        life: process.life,
                    },
                );
            }
            FaultKind::ConfigCorruption if process.state == ProcessState::Serving => {
                // The agent rewrote its own config (truncated) and restarts itself to load it.
                self.measures.fault(id, Fault::ConfigCorruption, self.now);
                self.agents[id].config_broken = true;
                self.exit_process(id, 0, false);
            }
            FaultKind::Spike => {
                let (bytes, duration) = match spike {
                    Some(given) => given,
                    None => {
                        let memory = &self.scenario.fleet.classes[usize::from(agent.class)].memory;
                        let (size, duration) = (memory.spike_size.0, memory.spike_duration.0);
                        let u = self.draw_unit(id, Component::Spike);
                        ((size as f64 * (0.5 + u)) as u64, duration)
                    }
                };
                let agent = &mut self.agents[id];
                agent.spike_bytes = bytes;
                agent.spike_from = self.now;
                agent.spike_until = self.now + duration;
                self.sync_hot(id);
            }
            _ => {}
        }
    }

    pub(super) fn node_fail(&mut self, node: NodeId) {
        let sim_node = &mut self.nodes[node.index()];
        if !sim_node.up {
            return;
        }
        sim_node.up = false;
        sim_node.failures += 1;
        sim_node.warm = 0;
        for id in sim_node.pods().to_vec() {
            if self.agents[id].process.is_some() {
                self.measures.fault(id, Fault::NodeFailure, self.now);
                self.kill_process(id);
            }
        }
        let detect = self.node_loss_detection(node);
        let repair = self
            .scenario
            .node_faults
            .repair_time
            .0
            .max(detect + Millis(1));
        self.queue
            .push(self.now + detect, Event::NodeLostDetected(node));
        self.queue
            .push(self.now + repair, Event::NodeRepaired(node));
    }

    /// How long after a node fails the controller learns it: its lease's expiry when nodes
    /// hold leases, else the heartbeat timeout.
    fn node_loss_detection(&mut self, node: NodeId) -> Millis {
        let Some(lease) = &self.scenario.node_faults.lease else {
            return Millis(self.scenario.policy.recovery.heartbeat_timeout_ms);
        };
        let (ttl, renew, check) = (lease.ttl.0.0, lease.renew_every.0.0, lease.expiry_check.0.0);
        // The n-th failure of the node draws the n-th pair: no counter needed.
        let draw = self.nodes[node.index()].failures;
        let since_renewal = self.streams.unit(Component::NodeLease, node.0, draw * 2);
        let to_check = self
            .streams
            .unit(Component::NodeLease, node.0, draw * 2 + 1);
        let expiry = ttl - (since_renewal * renew as f64) as u64;
        Millis((expiry + (to_check * check as f64) as u64).max(1))
    }

    pub(super) fn node_lost_detected(&mut self, node: NodeId) {
        let pods = self.nodes[node.index()].clear_pods();
        for &id in &pods {
            self.measures.observed(id, self.now);
            // A down node may still list a pod of an agent removed and retired since.
            if let Some(agent) = self.agents.get_mut(id)
                && agent.pod.is_some_and(|p| p.node == node)
            {
                agent.pod = None;
            }
        }
        let policy = self.scenario.policy.supervisor.clone();
        let sim_node = &mut self.nodes[node.index()];
        sim_node.supervisor = carapace_engine::Supervisor::new(policy);
        sim_node.supervisor_wake = None;
        self.feed(Input::LoseNode { node });
    }

    pub(super) fn node_repaired(&mut self, node: NodeId) {
        let fleet = &self.scenario.fleet;
        let zone = node.0 % fleet.zones;
        let spec = NodeSpec {
            id: node,
            region: RegionId(zone % fleet.regions),
            zone: ZoneId(zone),
            memory_bytes_capacity: fleet.node_memory.0,
        };
        self.nodes[node.index()].up = true;
        self.feed(Input::JoinNode(spec));
        self.schedule_node_failure(node, self.now);
    }

    /// A fault of the event trace comes due. Replayed faults obey the same quiet tail as the
    /// seeded ones and reach only agents that are still desired.
    pub(super) fn replay(&mut self, index: u32) {
        let event = self.replayed[index as usize];
        if self.now > self.faults_end {
            return;
        }
        let kind = match event.kind {
            TraceEventKind::NodeFailure => {
                self.node_fail(NodeId(event.target));
                return;
            }
            TraceEventKind::Recreate => {
                self.recreate(event.target);
                return;
            }
            TraceEventKind::SupervisorLoss => None,
            TraceEventKind::Crash => Some(FaultKind::Crash),
            TraceEventKind::Hang => Some(FaultKind::Hang),
            TraceEventKind::ConfigCorruption => Some(FaultKind::ConfigCorruption),
            TraceEventKind::Spike => Some(FaultKind::Spike),
        };
        let id = self.trace_agent(event.target);
        if !self.agents.get(id).is_some_and(|a| a.desired) {
            return;
        }
        match kind {
            Some(kind) => {
                self.apply_fault(id, kind, Some((event.value, Millis(event.duration_ms))))
            }
            None => self.lose_supervisor(id),
        }
    }
}
