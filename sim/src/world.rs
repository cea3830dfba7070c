//! The simulated world: machines, pods, processes and their memory. No decisions live here;
//! the engine makes them all.

use crate::scenario::{AgentClass, Scenario};
use carapace_engine::{AgentId, Instance, Millis, NodeId, Supervisor, SupervisorPolicy, Version};

#[derive(Debug)]
pub struct SimNode {
    pub up: bool,
    pub capacity_bytes: u64,
    /// Agents with a pod here, sorted. Changed only through [`SimNode::add_pod`],
    /// [`SimNode::remove_pod`] and [`SimNode::clear_pods`], which keep `hot` beside it.
    pub pods: Vec<AgentId>,
    /// What the memory tick reads of each agent in `pods`, at the same index: a node's
    /// agents side by side, so a tick walks one array instead of the whole fleet's.
    pub hot: Vec<PodHot>,
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
            hot: Vec::new(),
            versions: Vec::new(),
            supervisor: Supervisor::new(policy),
            supervisor_wake: None,
            failures: 0,
            warm: 0,
        }
    }

    /// Lists `agent` here (if it is not yet) and sets its hot copy.
    pub fn add_pod(&mut self, agent: AgentId, hot: PodHot) {
        match self.pods.binary_search(&agent) {
            Ok(i) => self.hot[i] = hot,
            Err(i) => {
                self.pods.insert(i, agent);
                self.hot.insert(i, hot);
            }
        }
    }

    pub fn remove_pod(&mut self, agent: AgentId) {
        if let Ok(i) = self.pods.binary_search(&agent) {
            self.pods.remove(i);
            self.hot.remove(i);
        }
    }

    /// Takes every pod off this node (it was lost), returning the agents it listed.
    pub fn clear_pods(&mut self) -> Vec<AgentId> {
        self.hot.clear();
        std::mem::take(&mut self.pods)
    }

    /// The hot copy of `agent`, if it is listed here.
    pub fn hot_mut(&mut self, agent: AgentId) -> Option<&mut PodHot> {
        let i = self.pods.binary_search(&agent).ok()?;
        Some(&mut self.hot[i])
    }
}

/// A copy of the fields of an agent that the memory tick reads, kept beside its node's other
/// agents. The [`SimAgent`] stays the truth: this copy is rewritten from it (see
/// [`PodHot::of`]) whenever one of these fields changes, and an agent that the plain memory
/// model does not cover (a replayed trace, a throttle, a pod listed on a node its agent has
/// left) is marked `slow`, which sends the tick back to the agent itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodHot {
    pub baseline_bytes: u64,
    /// The process's start (meaningless without `live`).
    pub started_at: Millis,
    pub spike_until: Millis,
    /// Memory values the deadband certainly swallows while the last sample is recent: within
    /// `skip_lo..=skip_hi`, a sample need not be forwarded (empty when `skip_lo > skip_hi`).
    /// Only a sure subset of the deadband: anything outside is checked exactly on the agent.
    pub skip_lo: u64,
    pub skip_hi: u64,
    pub last_fed_at: Millis,
    pub class: u16,
    /// The agent has a process.
    pub live: bool,
    /// Read the agent, not this copy: its memory is not `baseline + growth (+ spike)`, or this
    /// node is not (any more) where its pod is.
    pub slow: bool,
}

impl PodHot {
    /// The hot copy of `agent`, for the node its pod is on, under the forwarding `deadband`
    /// (a fraction of the last value forwarded).
    pub fn of(agent: &SimAgent, deadband: f64) -> PodHot {
        let (skip_lo, skip_hi) = skip_band(agent.last_fed_bytes, deadband);
        PodHot {
            baseline_bytes: agent.baseline_bytes,
            started_at: agent.process.map_or(Millis::ZERO, |p| p.started_at),
            spike_until: agent.spike_until,
            skip_lo,
            skip_hi,
            last_fed_at: agent.last_fed_at,
            class: agent.class,
            live: agent.process.is_some(),
            slow: agent.trace.is_some() || agent.process.is_some_and(|p| p.memory_high.is_some()),
        }
    }

    /// Memory of the process at `now`, when neither `slow` nor spiking (`now >= spike_until`):
    /// exactly [`modelled_memory`] in that case.
    pub fn steady_memory(&self, class: &ClassModel, now: Millis) -> u64 {
        let uptime = now.saturating_since(self.started_at).0;
        self.baseline_bytes + mul_div(class.growth_bytes_per_day, uptime, 86_400_000)
    }
}

/// Memory values `m` for which the tick's deadband test, `last != 0 &&
/// (m.abs_diff(last) as f64) < deadband * last as f64`, certainly holds, as `(lo, hi)` (empty
/// when `lo > hi`). A subset, not necessarily all of them: `u64 -> f64` is monotone, so every
/// difference up to one that passes passes too.
pub fn skip_band(last: u64, deadband: f64) -> (u64, u64) {
    const EMPTY: (u64, u64) = (1, 0);
    let threshold = deadband * last as f64;
    // Beyond 2^53 conversions round; leave such values to the exact test.
    let in_range = threshold > 0.0 && threshold < 9_007_199_254_740_992.0; // false for NaN
    if last == 0 || !in_range {
        return EMPTY;
    }
    let mut d = threshold as u64;
    while d > 0 && (d as f64) >= threshold {
        d -= 1;
    }
    if (d as f64) >= threshold {
        return EMPTY;
    }
    (last.saturating_sub(d), last.saturating_add(d))
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
    use super::{mul_div, skip_band};

    #[test]
    fn skip_band_holds_only_values_the_deadband_swallows() {
        let exact = |m: u64, last: u64, deadband: f64| {
            last != 0 && (m.abs_diff(last) as f64) < deadband * last as f64
        };
        for (last, deadband) in [
            (0, 0.05),
            (1, 0.05),
            (20, 0.05),
            (100, 0.05),
            (786_432_000, 0.05),
            (786_432_000, 0.0),
            (786_432_000, -1.0),
            (786_432_000, f64::NAN),
            (3 << 30, 0.1),
            (u64::MAX, 0.5),
            (1 << 52, 1.5),
        ] {
            let (lo, hi) = skip_band(last, deadband);
            if lo > hi {
                continue;
            }
            let inside = [lo, hi, lo.saturating_add(1), hi.saturating_sub(1), last];
            for m in inside.into_iter().filter(|m| (lo..=hi).contains(m)) {
                assert!(
                    exact(m, last, deadband),
                    "{m} in the band of {last}, {deadband}"
                );
            }
            // The band is as wide as the test allows, where conversions are exact.
            if hi < u64::MAX && last < 1 << 52 {
                assert!(
                    !exact(hi + 1, last, deadband),
                    "{} past the band of {last}",
                    hi + 1
                );
            }
        }
    }

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
