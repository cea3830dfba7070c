//! Desired-state changes during a run: agents created and removed (churn) and rollouts.

use super::*;

impl Simulation {
    pub(super) fn schedule_churn(&mut self) {
        let per_day = self.scenario.churn.creates_per_hour * 24.0;
        let draw = self.churn_counter.next(Component::Churn);
        let u = self.streams.unit(Component::Churn, 0, draw);
        if let Some(gap) = exponential_gap(per_day, u) {
            let at = self.now.max(self.scenario.warmup.0) + gap;
            if at <= self.end {
                self.queue.push(at, Event::Churn);
            }
        }
    }

    pub(super) fn churn(&mut self) {
        self.retire_departed();
        self.schedule_churn();
        let draw = self.churn_counter.next(Component::Churn);
        let pick = self.streams.u64(Component::Churn, 1, draw);
        let total: u64 = self
            .scenario
            .fleet
            .classes
            .iter()
            .map(|c| u64::from(c.agents))
            .sum();
        let mut point = pick % total.max(1);
        let mut class = 0u16;
        for (i, c) in self.scenario.fleet.classes.iter().enumerate() {
            if point < u64::from(c.agents) {
                class = i as u16;
                break;
            }
            point -= u64::from(c.agents);
        }
        let id = self.agents.next_id();
        let tenant = (pick >> 32) as u32 % self.scenario.fleet.tenants;
        self.create_agent(id, class, tenant);
        // Remove one old agent, so the fleet keeps its size.
        let victim_draw = self.churn_counter.next(Component::Churn);
        let start = self.streams.u64(Component::Churn, 2, victim_draw) % u64::from(id.0).max(1);
        for offset in 0..64u64 {
            let candidate = AgentId(((start + offset) % u64::from(id.0).max(1)) as u32);
            if self.agents[candidate].desired && self.controller.agent(candidate).is_some() {
                self.remove_agent(candidate);
                break;
            }
        }
    }

    /// The agent a replayed trace row names by `target`.
    pub(super) fn trace_agent(&self, target: u32) -> AgentId {
        self.recreated
            .get(&target)
            .copied()
            .unwrap_or(AgentId(target))
    }

    /// A replayed `recreate`: the agent the trace names is removed and a new one of its class
    /// and tenant takes its place, and its name in the rest of the trace. Removed first, as
    /// an operator's delete is answered before their create is sent.
    pub(super) fn recreate(&mut self, target: u32) {
        let old = self.trace_agent(target);
        let Some(view) = self.controller.agent(old) else {
            return;
        };
        let Some(class) = self.agents.get(old).filter(|a| a.desired).map(|a| a.class) else {
            return;
        };
        self.remove_agent(old);
        let id = self.agents.next_id();
        self.create_agent(id, class, view.tenant.0);
        self.recreated.insert(target, id);
    }

    pub(super) fn remove_agent(&mut self, id: AgentId) {
        self.leaving.push(id);
        self.feed(Input::RemoveAgent { agent: id });
        if self.controller.agent(id).is_none() {
            // Removed at once (it held no node).
            self.agents[id].desired = false;
            self.measures.forget(id);
        }
    }

    /// Frees the slots of removed agents the engine has forgotten and whose pod and process
    /// are gone; the others wait for a later churn.
    fn retire_departed(&mut self) {
        let mut leaving = std::mem::take(&mut self.leaving);
        leaving.retain(|&id| {
            let agent = &self.agents[id];
            let at_rest = !agent.desired
                && agent.pod.is_none()
                && agent.process.is_none()
                && self.controller.agent(id).is_none();
            if at_rest && self.agents.get(id).is_some() {
                self.agents.retire(id);
            }
            !at_rest
        });
        self.leaving = leaving;
    }

    pub(super) fn start_rollout(&mut self, index: u32) {
        let plan = self.scenario.rollouts[index as usize].clone();
        let Some(class) = self
            .scenario
            .fleet
            .classes
            .iter()
            .position(|c| c.name == plan.class)
        else {
            return;
        };
        let version = Version::new(INITIAL_VERSION.runtime, plan.config_version);
        if plan.broken {
            self.broken_versions.insert(version);
        }
        let agents: Vec<AgentId> = self
            .agents
            .ids()
            .filter(|id| {
                let a = &self.agents[*id];
                a.desired && usize::from(a.class) == class && self.controller.agent(*id).is_some()
            })
            .collect();
        self.feed(Input::StartRollout(RolloutSpec {
            id: RolloutId(index),
            agents,
            version,
            wave_size: plan.wave_size,
        }));
    }
}
