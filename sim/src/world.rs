//! The simulated world: machines, pods, processes and their memory. No decisions live here;
//! the engine makes them all.

use crate::scenario::{AgentClass, Scenario};
use carapace_engine::growth::GrowGently;
use carapace_engine::{AgentId, Instance, Millis, NodeId, Supervisor, SupervisorPolicy, Version};

mod agents;
mod steady;

pub use agents::AgentTable;
use steady::SteadySum;

#[derive(Debug)]
pub struct SimNode {
    pub up: bool,
    pub capacity_bytes: u64,
    /// Agents with a pod here, sorted, and beside each at the same index the hot copy of what
    /// the memory tick reads of it: a node's agents side by side, so a tick walks one array
    /// instead of the whole fleet's. Changed only through the methods below, which keep
    /// `steady` and `next_attention` true to them.
    pods: Vec<AgentId>,
    hot: Vec<PodHot>,
    /// Per class, the exact memory total of the pods whose copy is `summed`.
    steady: Vec<SteadySum>,
    /// Per class, the memory limit (an attention bound: a pod at its limit is killed).
    limits: Vec<u64>,
    /// The deadband's silence bound: a sample this old is forwarded whatever its value.
    max_silence: Millis,
    /// No pod needs attention before this (a lower bound: never later than the earliest
    /// `attention_at`).
    next_attention: Millis,
    /// Versions pulled onto this machine (a short list: fleets run a few versions at once).
    pub versions: Vec<Version>,
    pub supervisor: Supervisor,
    pub supervisor_wake: Option<Millis>,
    pub failures: u32,
    /// Blank instances booted and idle in the node's warm pool.
    pub warm: u32,
}

impl SimNode {
    pub fn new(
        capacity_bytes: u64,
        policy: SupervisorPolicy,
        classes: &[ClassModel],
        max_silence: Millis,
    ) -> SimNode {
        SimNode {
            up: true,
            capacity_bytes,
            pods: Vec::new(),
            hot: Vec::new(),
            steady: classes
                .iter()
                .map(|c| SteadySum::new(c.growth_bytes_per_day))
                .collect(),
            limits: classes.iter().map(|c| c.limit_bytes).collect(),
            max_silence,
            next_attention: Millis(u64::MAX),
            versions: Vec::new(),
            supervisor: Supervisor::new(policy),
            supervisor_wake: None,
            failures: 0,
            warm: 0,
        }
    }

    /// The agents listed here, sorted.
    pub fn pods(&self) -> &[AgentId] {
        &self.pods
    }

    /// The hot copies, at the indices of [`SimNode::pods`].
    pub fn hot(&self) -> &[PodHot] {
        &self.hot
    }

    /// No pod needs the tick's attention before this.
    pub fn next_attention(&self) -> Millis {
        self.next_attention
    }

    /// Lists `agent` here (if it is not yet) and sets its hot copy, as of `now`.
    pub fn set_pod(&mut self, agent: AgentId, mut hot: PodHot, now: Millis) {
        hot.summed = false;
        let i = match self.pods.binary_search(&agent) {
            Ok(i) => {
                self.unsum(i);
                i
            }
            Err(i) => {
                // Every node's lists hover around its share of the fleet: doubling would leave
                // a third of them empty.
                self.pods.grow_gently();
                self.hot.grow_gently();
                self.pods.insert(i, agent);
                self.hot.insert(i, hot);
                i
            }
        };
        self.hot[i] = hot;
        self.classify(i, now);
    }

    /// Rewrites the hot copy of `agent`, if it is listed here.
    pub fn update_pod(&mut self, agent: AgentId, hot: PodHot, now: Millis) {
        if self.pods.binary_search(&agent).is_ok() {
            self.set_pod(agent, hot, now);
        }
    }

    /// This node is no longer where `agent`'s pod is: its tick reads the agent itself.
    pub fn mark_stale(&mut self, agent: AgentId, now: Millis) {
        if let Ok(i) = self.pods.binary_search(&agent) {
            self.unsum(i);
            self.hot[i].slow = true;
            self.classify(i, now);
        }
    }

    pub fn remove_pod(&mut self, agent: AgentId) {
        if let Ok(i) = self.pods.binary_search(&agent) {
            self.unsum(i);
            self.pods.remove(i);
            self.hot.remove(i);
        }
    }

    /// Takes every pod off this node (it was lost), returning the agents it listed.
    pub fn clear_pods(&mut self) -> Vec<AgentId> {
        self.hot.clear();
        for sum in &mut self.steady {
            *sum = SteadySum::new(sum.growth_bytes_per_day());
        }
        self.next_attention = Millis(u64::MAX);
        std::mem::take(&mut self.pods)
    }

    /// The exact memory total at `now` of the pods whose copies are `summed`.
    pub fn steady_total(&self, now: Millis) -> u64 {
        self.steady
            .iter()
            .fold(0u64, |total, sum| total.wrapping_add(sum.total(now)))
    }

    /// Before a tick at `now` that needs attention: pods whose spike has ended join the
    /// steady sums, and `next_attention` becomes the earliest `attention_at` again.
    pub fn settle(&mut self, now: Millis) {
        let mut next = Millis(u64::MAX);
        for i in 0..self.hot.len() {
            let hot = self.hot[i];
            if hot.live && !hot.slow && !hot.summed && now >= hot.spike_until {
                self.classify(i, now);
            }
            next = next.min(self.hot[i].attention_at);
        }
        self.next_attention = next;
    }

    /// Takes pod `i` out of its class's sum, if it is in it.
    fn unsum(&mut self, i: usize) {
        let hot = &mut self.hot[i];
        if hot.summed {
            hot.summed = false;
            self.steady[usize::from(hot.class)].remove(hot.baseline_bytes, hot.started_at);
        }
    }

    /// Sets `summed` and `attention_at` of pod `i` (not summed yet) from its copy, as of `now`.
    ///
    /// A steady pod's memory only grows until its copy is rewritten, so until `attention_at`
    /// the tick knows, without evaluating it, that its sample stays inside the deadband's sure
    /// band, under its limit and within the silence bound: swallowed, nothing to do. A pod
    /// that is not live uses nothing and never needs attention; any other (spiking, slow, or
    /// whose band is empty or already left) is evaluated at every tick.
    fn classify(&mut self, i: usize, now: Millis) {
        let hot = &mut self.hot[i];
        debug_assert!(!hot.summed, "classified twice");
        if !hot.live {
            hot.attention_at = Millis(u64::MAX);
            return;
        }
        // A process whose restart lag has not passed yet has no uptime to sum (the sum is
        // asked for at times after every member's start): evaluated alone until it starts.
        if hot.slow || now < hot.spike_until || now < hot.started_at {
            hot.attention_at = Millis::ZERO;
            self.next_attention = Millis::ZERO;
            return;
        }
        let class = usize::from(hot.class);
        let sum = &mut self.steady[class];
        sum.insert(hot.baseline_bytes, hot.started_at);
        hot.summed = true;
        let growth = sum.growth_bytes_per_day();
        let memory = hot.steady_memory(growth, now);
        hot.attention_at = if hot.skip_lo > hot.skip_hi || memory < hot.skip_lo {
            Millis::ZERO
        } else {
            // The first value that needs attention: past the band, or at the limit.
            let bound = hot.skip_hi.saturating_add(1).min(self.limits[class]);
            let leaves = hot.first_reaching(growth, bound);
            let silent = Millis(hot.last_fed_at.0.saturating_add(self.max_silence.0));
            leaves.min(silent)
        };
        self.next_attention = self.next_attention.min(hot.attention_at);
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
    /// Set by the node ([`SimNode::set_pod`]): the first tick time at which this pod must be
    /// evaluated; before it, its sample is certainly swallowed.
    pub attention_at: Millis,
    pub class: u16,
    /// The agent has a process.
    pub live: bool,
    /// Read the agent, not this copy: its memory is not `baseline + growth (+ spike)`, or this
    /// node is not (any more) where its pod is.
    pub slow: bool,
    /// Set by the node: this pod's memory is in its class's steady sum.
    pub summed: bool,
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
            attention_at: Millis::ZERO,
            class: agent.class,
            live: agent.process.is_some(),
            slow: agent.trace().is_some() || agent.process.is_some_and(|p| p.throttled()),
            summed: false,
        }
    }

    /// Memory of the process at `now`, when neither `slow` nor spiking (`now >= spike_until`):
    /// exactly [`modelled_memory`] in that case.
    pub fn steady_memory(&self, growth_bytes_per_day: u64, now: Millis) -> u64 {
        let uptime = now.saturating_since(self.started_at).0;
        self.baseline_bytes + mul_div(growth_bytes_per_day, uptime, 86_400_000)
    }

    /// The first time at which [`PodHot::steady_memory`] reaches `bound` (never: `u64::MAX`),
    /// for a `bound` above the baseline.
    fn first_reaching(&self, growth_bytes_per_day: u64, bound: u64) -> Millis {
        let needed = u128::from(bound.saturating_sub(self.baseline_bytes));
        if needed == 0 {
            return self.started_at;
        }
        if growth_bytes_per_day == 0 {
            return Millis(u64::MAX);
        }
        // ⌊g × t / DAY⌋ ≥ k  ⟺  g × t ≥ k × DAY  ⟺  t ≥ ⌈k × DAY / g⌉.
        let uptime = (needed * 86_400_000).div_ceil(u128::from(growth_bytes_per_day));
        let at = u128::from(self.started_at.0) + uptime;
        Millis(u64::try_from(at).unwrap_or(u64::MAX))
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

impl Process {
    /// `memory.high` of a process nobody throttled.
    pub const UNTHROTTLED: u64 = u64::MAX;

    pub fn throttled(&self) -> bool {
        self.memory_high != Process::UNTHROTTLED
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
    /// The cgroup's `memory.high` set by a throttle: memory is held at or below it.
    /// [`Process::UNTHROTTLED`] (the kernel's "max") until then; a plain `u64`, not an
    /// `Option`, to keep 8 bytes off every agent.
    pub memory_high: u64,
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
    /// The pod's supervisor died: stopping the pod only clears it.
    pub supervisor_lost: bool,
    pub spike_from: Millis,
    pub spike_until: Millis,
    pub spike_bytes: u64,
    pub pod: Option<Pod>,
    pub process: Option<Process>,
    pub lives: u32,
    /// Last memory value forwarded to the engine.
    pub last_fed_bytes: u64,
    pub last_fed_at: Millis,
    /// Index of the replayed memory series ([`SimAgent::NO_TRACE`] when the class replays
    /// none) and its phase offset: two fields rather than an `Option` of a pair, which would
    /// take 8 bytes more in every agent.
    trace_series: u32,
    trace_phase: u64,
}

impl SimAgent {
    /// What an agent never created, or retired, reads as: not desired, no pod, no process.
    pub const ABSENT: SimAgent = SimAgent {
        class: 0,
        desired: false,
        baseline_bytes: 0,
        poisoned: false,
        config_broken: false,
        supervisor_lost: false,
        spike_from: Millis::ZERO,
        spike_until: Millis::ZERO,
        spike_bytes: 0,
        pod: None,
        process: None,
        lives: 0,
        last_fed_bytes: 0,
        last_fed_at: Millis::ZERO,
        trace_series: SimAgent::NO_TRACE,
        trace_phase: 0,
    };

    const NO_TRACE: u32 = u32::MAX;

    /// An agent of `class` whose memory starts from `baseline_bytes`, replaying series
    /// `trace.0` at phase `trace.1` if it has a trace.
    pub fn desired(class: u16, baseline_bytes: u64, trace: Option<(u32, u64)>) -> SimAgent {
        if let Some((series, _)) = trace {
            assert_ne!(
                series,
                SimAgent::NO_TRACE,
                "a trace holds fewer than 2^32 - 1 series"
            );
        }
        let (trace_series, trace_phase) = trace.unwrap_or((SimAgent::NO_TRACE, 0));
        SimAgent {
            class,
            desired: true,
            baseline_bytes,
            trace_series,
            trace_phase,
            ..SimAgent::ABSENT
        }
    }

    /// The replayed memory series and phase offset, when the class replays one.
    pub fn trace(&self) -> Option<(u32, u64)> {
        (self.trace_series != SimAgent::NO_TRACE).then_some((self.trace_series, self.trace_phase))
    }

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
    memory.min(process.memory_high)
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
    use super::{Process, SimAgent, mul_div, skip_band};

    #[test]
    fn an_agent_takes_120_bytes() {
        // Every agent of a fleet holds one: a field that grows it should be worth it.
        assert_eq!(std::mem::size_of::<SimAgent>(), 120);
        assert_eq!(std::mem::size_of::<Option<Process>>(), 32);
    }

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
