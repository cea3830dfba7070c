//! The simulated world: machines, pods, processes and their memory. No decisions live here;
//! the engine makes them all.

use crate::scenario::{AgentClass, Scenario};
use carapace_engine::{AgentId, Instance, Millis, NodeId, Supervisor, SupervisorPolicy, Version};

#[derive(Debug)]
pub struct SimNode {
    pub up: bool,
    pub capacity_bytes: u64,
    /// Agents with a pod here, sorted.
    pub pods: Vec<AgentId>,
    /// Versions pulled onto this machine (a short list: fleets run a few versions at once).
    pub versions: Vec<Version>,
    pub supervisor: Supervisor,
    pub supervisor_wake: Option<Millis>,
    pub failures: u32,
    /// Blank instances booted and idle in the node's warm pool.
    pub warm: u32,
}

impl SimNode {
    pub fn new(capacity_bytes: u64, policy: SupervisorPolicy) -> SimNode {
        SimNode {
            up: true,
            capacity_bytes,
            pods: Vec::new(),
            versions: Vec::new(),
            supervisor: Supervisor::new(policy),
            supervisor_wake: None,
            failures: 0,
            warm: 0,
        }
    }

    pub fn add_pod(&mut self, agent: AgentId) {
        if let Err(i) = self.pods.binary_search(&agent) {
            self.pods.insert(i, agent);
        }
    }

    pub fn remove_pod(&mut self, agent: AgentId) {
        if let Ok(i) = self.pods.binary_search(&agent) {
            self.pods.remove(i);
        }
    }
}

/// A pod the engine started: one instance of an agent on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pod {
    pub node: NodeId,
    pub instance: Instance,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    Booting,
    Serving,
    /// Alive, but its probe fails.
    Hung,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    /// Bumped at every spawn, so events of an earlier process are recognised as stale.
    pub life: u32,
    pub state: ProcessState,
    pub started_at: Millis,
    pub ready_at: Millis,
    pub memory_high: Option<u64>,
}

#[derive(Debug)]
pub struct SimAgent {
    pub class: u16,
    pub desired: bool,
    pub baseline_bytes: u64,
    /// The session state makes every start crash right after resuming.
    pub poisoned: bool,
    /// The config on disk is truncated: validation before start fails.
    pub config_broken: bool,
    pub spike_from: Millis,
    pub spike_until: Millis,
    pub spike_bytes: u64,
    pub pod: Option<Pod>,
    pub process: Option<Process>,
    pub lives: u32,
    /// Last memory value forwarded to the engine.
    pub last_fed_bytes: u64,
    pub last_fed_at: Millis,
    /// Index of the replayed memory series and its phase offset, when the class replays one.
    pub trace: Option<(u32, u64)>,
}

impl SimAgent {
    pub fn serving(&self) -> bool {
        self.process
            .is_some_and(|p| p.state == ProcessState::Serving)
    }
}

/// A class's parameters in the units the hot loop wants.
#[derive(Debug)]
pub struct ClassModel {
    pub name: String,
    pub limit_bytes: u64,
    pub request_bytes: u64,
    pub priority: u8,
    pub growth_bytes_per_day: u64,
    pub spike_ramp_ms: u64,
}

impl ClassModel {
    pub fn new(class: &AgentClass) -> ClassModel {
        ClassModel {
            name: class.name.clone(),
            limit_bytes: class.memory_limit.0,
            request_bytes: class.memory_request.0,
            priority: class.priority,
            growth_bytes_per_day: class.memory.growth_per_day.0,
            spike_ramp_ms: class.memory.spike_ramp.ms(),
        }
    }
}

/// Memory of a process at `now` under the class's model.
pub fn modelled_memory(
    agent: &SimAgent,
    class: &ClassModel,
    process: &Process,
    now: Millis,
) -> u64 {
    let uptime = now.saturating_since(process.started_at).0;
    let growth = mul_div(class.growth_bytes_per_day, uptime, 86_400_000);
    let spike = if now < agent.spike_until {
        let grown = now.saturating_since(agent.spike_from).0;
        if grown >= class.spike_ramp_ms {
            agent.spike_bytes
        } else {
            mul_div(agent.spike_bytes, grown, class.spike_ramp_ms.max(1))
        }
    } else {
        0
    };
    let memory = agent.baseline_bytes + growth + spike;
    process.memory_high.map_or(memory, |high| memory.min(high))
}

/// `a * b / c` rounded down, exactly as computed in `u128` (truncated to `u64`). In 64 bits
/// when the product fits, as it does for every realistic size and time: a 128-bit division is
/// a call into compiler builtins, and this runs for every agent at every memory tick.
fn mul_div(a: u64, b: u64, c: u64) -> u64 {
    match a.checked_mul(b) {
        Some(product) => product / c,
        None => (u128::from(a) * u128::from(b) / u128::from(c)) as u64,
    }
}

/// The naive baseline's agents per node: every agent reserves its full limit.
pub fn naive_agents_per_node(scenario: &Scenario) -> f64 {
    let agents = scenario.agent_count() as f64;
    let limits: f64 = scenario
        .fleet
        .classes
        .iter()
        .map(|c| c.memory_limit.0 as f64 * f64::from(c.agents))
        .sum();
    let mean_limit = limits / agents.max(1.0);
    (scenario.fleet.node_memory.0 as f64 / mean_limit).floor()
}

#[cfg(test)]
mod tests {
    use super::mul_div;

    #[test]
    fn mul_div_matches_the_128_bit_computation() {
        let wide = |a: u64, b: u64, c: u64| (u128::from(a) * u128::from(b) / u128::from(c)) as u64;
        for (a, b, c) in [
            (0, 5, 7),
            (400 << 20, 604_800_000, 86_400_000),
            (u64::MAX, 1, 3),
            (u64::MAX, u64::MAX, u64::MAX),
            (1 << 40, 1 << 40, 86_400_000),
            (900 << 20, 59_999, 60_000),
        ] {
            assert_eq!(mul_div(a, b, c), wide(a, b, c), "{a} * {b} / {c}");
        }
    }
}
