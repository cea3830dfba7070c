//! Memory: the node tick samples every process, plays the kernel's OOM killer and forwards
//! samples past the deadband to the engine.

use super::*;

impl Simulation {
    /// Samples memory, plays the kernel's OOM killer, forwards samples past the deadband.
    ///
    /// The node's steady pods (see [`crate::world::SimNode::set_pod`]) are summed exactly
    /// without visiting them; the tick visits only the pods that need attention (spiking,
    /// slow, near the edge of their deadband or limit, silent too long), and those in the
    /// node's hot copies ([`crate::world::PodHot`]), side by side. An agent itself is read
    /// only when its copy cannot settle it: a sample that may have to be forwarded, a kill, an
    /// agent whose memory the copy does not model. Every pod it does not visit is one whose
    /// sample the deadband swallows, so the outcome is that of evaluating every pod.
    #[inline(never)]
    pub(super) fn node_tick(&mut self, node: NodeId) {
        let period = self.scenario.probes.memory_interval.0;
        if self.now + period <= self.end {
            self.queue
                .push_periodic(self.now + period, Event::NodeTick(node));
        }
        if !self.nodes[node.index()].up {
            return;
        }
        let now = self.now;
        let capacity = self.nodes[node.index()].capacity_bytes;
        let max_silence = self.scenario.probes.memory_max_silence.0;
        // Scratch buffers live on between ticks: a tick allocates nothing. `usage` holds
        // the (agent, memory) of every pod visited and not killed; `forward`, the indices in
        // `usage` of the samples the deadband may not swallow.
        let mut usage = std::mem::take(&mut self.tick_usage);
        let mut killed = std::mem::take(&mut self.tick_killed);
        let mut forward = std::mem::take(&mut self.tick_forward);
        usage.clear();
        killed.clear();
        forward.clear();
        // Memory of the visited pods that are not in the steady sums, and of the summed ones
        // that were killed (to take back out).
        let mut unsummed: u64 = 0;
        let mut summed_killed: u64 = 0;
        if self.nodes[node.index()].next_attention() <= now {
            self.nodes[node.index()].settle(now);
            // Nothing here changes the node's pods.
            let sim_node = &self.nodes[node.index()];
            for (&id, hot) in sim_node.pods().iter().zip(sim_node.hot()) {
                if hot.attention_at > now {
                    continue;
                }
                let Some((memory, exact)) = self.sample(id, hot, now) else {
                    continue;
                };
                let limit = self.classes[usize::from(hot.class)].limit_bytes;
                if memory >= limit {
                    if hot.summed {
                        summed_killed += memory;
                    }
                    cgroup_oom_kill(&mut self.measures, id, now, &mut killed);
                    continue;
                }
                if !hot.summed {
                    unsummed += memory;
                }
                let swallowed = !exact
                    && now.saturating_since(hot.last_fed_at) < max_silence
                    && (hot.skip_lo..=hot.skip_hi).contains(&memory);
                if !swallowed {
                    forward.push(usage.len() as u32);
                }
                usage.push((id, memory));
            }
        }
        let steady = self.nodes[node.index()].steady_total(now);
        let sum = steady - summed_killed + unsummed;
        let warm_memory = self.scenario.fleet.warm_instance_memory.0;
        let warm = u64::from(self.nodes[node.index()].warm) * warm_memory;
        let mut total: u64 = warm + sum;
        // Idle warm instances go first: they hold no agent's work. A start expecting one then
        // boots cold.
        while total > capacity && self.nodes[node.index()].warm > 0 {
            self.nodes[node.index()].warm -= 1;
            total -= warm_memory;
        }
        if total > capacity {
            // The kernel picks among every process: sample them all (those killed at their
            // limit above are already in `killed`).
            usage.clear();
            let sim_node = &self.nodes[node.index()];
            for (&id, hot) in sim_node.pods().iter().zip(sim_node.hot()) {
                if let Some((memory, _)) = self.sample(id, hot, now)
                    && memory < self.classes[usize::from(hot.class)].limit_bytes
                {
                    usage.push((id, memory));
                }
            }
            debug_assert_eq!(
                usage.iter().map(|&(_, m)| m).sum::<u64>(),
                sum,
                "the steady sums agree with the pods"
            );
            self.measures.node_oom_events += 1;
            let spiking = usage
                .iter()
                .any(|(id, _)| self.agents[*id].spike_until > now);
            // The kernel's choice: the largest resident set (oom_score follows RSS).
            usage.sort_by_key(|&(id, m)| (std::cmp::Reverse(m), id));
            while total > capacity && !usage.is_empty() {
                let (victim, memory) = usage.remove(0);
                total -= memory;
                if spiking && self.agents[victim].spike_until <= now {
                    self.measures.collateral_kills += 1;
                }
                self.measures.fault(victim, Fault::NodeOomVictim, now);
                killed.push((victim, true));
            }
            // The survivors, in the kernel's order, each checked on the agent.
            forward.clear();
            forward.extend(0..usage.len() as u32);
        }
        self.measures
            .node_utilisation(total as f64 / capacity as f64);
        for &(id, oom) in &killed {
            self.exit_process(id, 137, oom);
        }
        let deadband = self.scenario.probes.memory_deadband;
        for &index in &forward {
            let (id, memory) = usage[index as usize];
            let agent = &self.agents[id];
            let (Some(pod), true) = (agent.pod, agent.process.is_some()) else {
                continue;
            };
            let last = agent.last_fed_bytes;
            let quiet = now.saturating_since(agent.last_fed_at) < max_silence;
            if last != 0 && quiet && (memory.abs_diff(last) as f64) < deadband * last as f64 {
                continue;
            }
            let agent = &mut self.agents[id];
            agent.last_fed_bytes = memory;
            agent.last_fed_at = now;
            self.sync_hot(id);
            self.stats.memory_samples_fed += 1;
            self.feed(Input::SampleMemory {
                agent: id,
                instance: pod.instance,
                memory_bytes: memory,
            });
        }
        self.tick_usage = usage;
        self.tick_killed = killed;
        self.tick_forward = forward;
    }

    /// The memory of the pod of `id` whose hot copy is `hot`, and whether it was read on the
    /// agent (exactly) rather than from the copy; `None` when it has no process.
    fn sample(&self, id: AgentId, hot: &PodHot, now: Millis) -> Option<(u64, bool)> {
        if hot.slow || (hot.live && now < hot.spike_until) {
            self.memory_of(id).map(|memory| (memory, true))
        } else if hot.live {
            let growth = self.classes[usize::from(hot.class)].growth_bytes_per_day;
            Some((hot.steady_memory(growth, now), false))
        } else {
            None
        }
    }

    /// Rewrites the hot copy of `id` on the node its pod is on, after a field it copies changed.
    pub(super) fn sync_hot(&mut self, id: AgentId) {
        let agent = &self.agents[id];
        let Some(pod) = agent.pod else {
            return;
        };
        let hot = PodHot::of(agent, self.scenario.probes.memory_deadband);
        self.nodes[pod.node.index()].update_pod(id, hot, self.now);
    }

    pub(super) fn memory_of(&self, id: AgentId) -> Option<u64> {
        let agent = &self.agents[id];
        let process = agent.process.as_ref()?;
        let class = &self.classes[usize::from(agent.class)];
        Some(match agent.trace() {
            Some((series, phase)) => {
                let trace = &self.series[self.class_trace[usize::from(agent.class)]
                    .expect("trace index set with the agent")];
                let value = trace.value_at(series as usize, self.now.0 + phase, class.limit_bytes);
                value.min(process.memory_high)
            }
            None => modelled_memory(agent, class, process, self.now),
        })
    }
}

/// The pod's own cgroup limit: the kernel kills this agent, nobody else.
#[cold]
fn cgroup_oom_kill(
    measures: &mut Measures,
    id: AgentId,
    now: Millis,
    killed: &mut Vec<(AgentId, bool)>,
) {
    measures.cgroup_oom_kills += 1;
    measures.fault(id, Fault::OomKilled, now);
    killed.push((id, true));
}
