//! Memory: the node tick samples every process, plays the kernel's OOM killer and forwards
//! samples past the deadband to the engine.

use super::*;

impl Simulation {
    /// Samples memory, plays the kernel's OOM killer, forwards samples past the deadband.
    pub(super) fn node_tick(&mut self, node: NodeId) {
        let period = self.scenario.probes.memory_interval.0;
        if self.now + period <= self.end {
            self.queue
                .push_periodic(self.now + period, Event::NodeTick(node));
        }
        if !self.nodes[node.index()].up {
            return;
        }
        let capacity = self.nodes[node.index()].capacity_bytes;
        let pods = std::mem::take(&mut self.nodes[node.index()].pods);
        // Scratch buffers live on between ticks: a tick allocates nothing.
        let mut usage = std::mem::take(&mut self.tick_usage);
        let mut killed = std::mem::take(&mut self.tick_killed);
        usage.clear();
        killed.clear();
        for &id in &pods {
            let Some(memory) = self.memory_of(id) else {
                continue;
            };
            let limit = self.classes[usize::from(self.agents[id.index()].class)].limit_bytes;
            if memory >= limit {
                // The pod's own cgroup limit: the kernel kills this agent, nobody else.
                self.measures.cgroup_oom_kills += 1;
                self.measures.fault(id, Fault::OomKilled, self.now);
                killed.push((id, true));
                continue;
            }
            usage.push((id, memory));
        }
        self.nodes[node.index()].pods = pods;
        let warm_memory = self.scenario.fleet.warm_instance_memory.0;
        let warm = u64::from(self.nodes[node.index()].warm) * warm_memory;
        let mut total: u64 = warm + usage.iter().map(|(_, m)| m).sum::<u64>();
        // Idle warm instances go first: they hold no agent's work. A start expecting one then
        // boots cold.
        while total > capacity && self.nodes[node.index()].warm > 0 {
            self.nodes[node.index()].warm -= 1;
            total -= warm_memory;
        }
        if total > capacity {
            self.measures.node_oom_events += 1;
            let spiking = usage
                .iter()
                .any(|(id, _)| self.agents[id.index()].spike_until > self.now);
            // The kernel's choice: the largest resident set (oom_score follows RSS).
            usage.sort_by_key(|&(id, m)| (std::cmp::Reverse(m), id));
            while total > capacity && !usage.is_empty() {
                let (victim, memory) = usage.remove(0);
                total -= memory;
                if spiking && self.agents[victim.index()].spike_until <= self.now {
                    self.measures.collateral_kills += 1;
                }
                self.measures.fault(victim, Fault::NodeOomVictim, self.now);
                killed.push((victim, true));
            }
        }
        self.measures
            .node_utilisation(total as f64 / capacity as f64);
        for &(id, oom) in &killed {
            self.exit_process(id, 137, oom);
        }
        let deadband = self.scenario.probes.memory_deadband;
        let max_silence = self.scenario.probes.memory_max_silence.0;
        for &(id, memory) in &usage {
            let agent = &self.agents[id.index()];
            let (Some(pod), true) = (agent.pod, agent.process.is_some()) else {
                continue;
            };
            let last = agent.last_fed_bytes;
            let quiet = self.now.saturating_since(agent.last_fed_at) < max_silence;
            if last != 0 && quiet && (memory.abs_diff(last) as f64) < deadband * last as f64 {
                continue;
            }
            self.agents[id.index()].last_fed_bytes = memory;
            self.agents[id.index()].last_fed_at = self.now;
            self.stats.memory_samples_fed += 1;
            self.feed(Input::SampleMemory {
                agent: id,
                instance: pod.instance,
                memory_bytes: memory,
            });
        }
        self.tick_usage = usage;
        self.tick_killed = killed;
    }

    pub(super) fn memory_of(&self, id: AgentId) -> Option<u64> {
        let agent = &self.agents[id.index()];
        let process = agent.process.as_ref()?;
        let class = &self.classes[usize::from(agent.class)];
        Some(match agent.trace {
            Some((series, phase)) => {
                let trace = &self.series[self.class_trace[usize::from(agent.class)]
                    .expect("trace index set with the agent")];
                let value = trace.value_at(series as usize, self.now.0 + phase, class.limit_bytes);
                process.memory_high.map_or(value, |high| value.min(high))
            }
            None => modelled_memory(agent, class, process, self.now),
        })
    }
}
