//! The discrete-event loop. It owns virtual time, the world and the faults; every decision
//! comes from the engine's Controller and Supervisors, driven through their public API exactly
//! as the production driver drives them.

mod checks;
mod desired;
mod driver;
mod engine_io;
mod failover;
mod faults;
mod memory;
mod processes;

use crate::dist::{exponential_gap, sample};
use crate::measures::{Fault, Measures};
use crate::queue::EventQueue;
use crate::rng::{Component, Counters, Streams};
use crate::scenario::{Dist, Scenario};
use crate::trace::{MemorySeries, Replays, TraceEvent, TraceEventKind};
use crate::world::{
    AgentTable, ClassModel, Pod, PodHot, Process, ProcessState, SimAgent, SimNode, modelled_memory,
};
use carapace_engine::command_map::CommandMap;
use carapace_engine::{
    AgentId, AgentSpec, Command, CommandId, Controller, EngineError, Input, Instance, Millis,
    NodeId, NodeSpec, Outcome, Priority, RegionId, RolloutId, RolloutSpec, SnapshotId, StartReason,
    StopReason, SupervisorCommand, SupervisorInput, TenantId, Version, ZoneId,
};
use std::collections::{BTreeMap, BTreeSet};

/// Events of the world. Small and `Copy`: millions of them pass through the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    NodeTick(NodeId),
    Bucket,
    Fault(AgentId, FaultKind),
    NodeFail(NodeId),
    NodeLostDetected(NodeId),
    NodeRepaired(NodeId),
    Ready {
        agent: AgentId,
        life: u32,
    },
    ProbeOk {
        agent: AgentId,
        life: u32,
    },
    ProbeFail {
        agent: AgentId,
        life: u32,
    },
    ResumeCrash {
        agent: AgentId,
        life: u32,
    },
    StartDone(CommandId),
    StopDone(CommandId),
    SnapshotDone(CommandId),
    ControllerWake,
    SupervisorWake(NodeId),
    Churn,
    Rollout(u32),
    WarmDone(CommandId),
    /// The n-th fault of the replayed event trace.
    Replay(u32),
    /// The leading controller fails; a standby leads at `ControllerBack`.
    ControllerFail {
        scheduled: bool,
    },
    ControllerBack,
    /// A death reaches the engine after its notice lag (see `Simulation::notices`).
    Noticed(AgentId),
}

/// Names of the event kinds, in the order of [`RunStats::events_by_kind`].
pub const EVENT_KINDS: [&str; 22] = [
    "node_tick",
    "bucket",
    "fault",
    "node_fail",
    "node_lost_detected",
    "node_repaired",
    "ready",
    "probe_ok",
    "probe_fail",
    "resume_crash",
    "start_done",
    "stop_done",
    "snapshot_done",
    "controller_wake",
    "supervisor_wake",
    "churn",
    "rollout",
    "warm_done",
    "replay",
    "controller_fail",
    "controller_back",
    "noticed",
];

impl Event {
    /// The index of this event's kind in [`EVENT_KINDS`].
    const fn kind(&self) -> usize {
        match self {
            Event::NodeTick(_) => 0,
            Event::Bucket => 1,
            Event::Fault(..) => 2,
            Event::NodeFail(_) => 3,
            Event::NodeLostDetected(_) => 4,
            Event::NodeRepaired(_) => 5,
            Event::Ready { .. } => 6,
            Event::ProbeOk { .. } => 7,
            Event::ProbeFail { .. } => 8,
            Event::ResumeCrash { .. } => 9,
            Event::StartDone(_) => 10,
            Event::StopDone(_) => 11,
            Event::SnapshotDone(_) => 12,
            Event::ControllerWake => 13,
            Event::SupervisorWake(_) => 14,
            Event::Churn => 15,
            Event::WarmDone(_) => 17,
            Event::Replay(_) => 18,
            Event::ControllerFail { .. } => 19,
            Event::ControllerBack => 20,
            Event::Noticed(_) => 21,
            Event::Rollout(_) => 16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FaultKind {
    Crash,
    Hang,
    ConfigCorruption,
    Spike,
}

/// A command the simulated driver is carrying out.
#[derive(Clone, Copy, Debug)]
enum Order {
    Start {
        agent: AgentId,
        instance: Instance,
        node: NodeId,
        version: Version,
        snapshot: Option<SnapshotId>,
        reason: StartReason,
        /// Attach to an idle instance of the node's warm pool instead of booting.
        warm: bool,
    },
    WarmUp {
        node: NodeId,
    },
    Stop {
        agent: AgentId,
        instance: Instance,
        node: NodeId,
        snapshot: Option<SnapshotId>,
        reason: StopReason,
    },
    Snapshot {
        agent: AgentId,
        instance: Instance,
        node: NodeId,
        snapshot: SnapshotId,
        /// The process the snapshot reads; if it dies meanwhile the snapshot is not consistent.
        life: Option<u32>,
    },
}

/// Totals about the run itself (not the fleet).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunStats {
    pub events: u64,
    /// Events processed, by kind (indexed as [`EVENT_KINDS`]); for the whole-run bench.
    pub events_by_kind: [u64; EVENT_KINDS.len()],
    pub engine_inputs: u64,
    pub engine_commands: u64,
    /// Failures of the leading controller, and the time no controller led.
    pub controller_failovers: u64,
    pub controller_down_ms: u64,
    /// Inputs the engine refused; a correct driver causes none but late reports of removed agents.
    pub engine_errors: u64,
    pub first_engine_error: Option<String>,
    /// The first refusal other than a late report about a removed agent: a driver bug or an
    /// engine bug, never expected (explore fails a run on it).
    pub first_unexpected_engine_error: Option<String>,
    pub rejects: u64,
    pub memory_samples_fed: u64,
    pub command_stream_hash: u64,
    pub alerts: u64,
    pub rollout_events: Vec<(u64, u32, String)>,
    /// The first post-mortems of the run (bounded by [`MAX_POST_MORTEMS`]).
    pub post_mortems: Vec<carapace_engine::PostMortem>,
    pub invariant_violation: Option<String>,
}

/// One simulation run.
#[derive(Debug)]
pub struct Simulation {
    pub(crate) scenario: Scenario,
    pub(crate) controller: Controller,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) agents: AgentTable,
    pub(crate) classes: Vec<ClassModel>,
    pub(crate) measures: Measures,
    pub(crate) stats: RunStats,
    queue: EventQueue<Event>,
    streams: Streams,
    now: Millis,
    end: Millis,
    controller_wake: Option<Millis>,
    /// The leading controller's failures: what it was not told while none led.
    failover: failover::Failover,
    orders: CommandMap<Order>,
    /// Starts still being carried out, by the instance they create: a stop of that instance
    /// cancels its start, as a real node serialises operations on one pod.
    pending_starts: BTreeMap<(AgentId, Instance), CommandId>,
    poisoned_snapshots: BTreeSet<(AgentId, SnapshotId)>,
    broken_versions: BTreeSet<Version>,
    node_counters: Vec<Counters>,
    churn_counter: Counters,
    series: Vec<MemorySeries>,
    /// Faults replayed at fixed times (see [`crate::trace::load_all`]).
    replayed: Vec<TraceEvent>,
    /// The agent each trace target a replayed `recreate` replaced now names (targets not in
    /// it name the agent of their own index).
    recreated: BTreeMap<u32, AgentId>,
    /// Removed agents not yet retired from `agents`: retired once the engine has forgotten
    /// them and their pod and process are gone.
    leaving: Vec<AgentId>,
    /// The node tick's scratch buffers, kept so that a tick allocates nothing.
    tick_usage: Vec<(AgentId, u64)>,
    tick_killed: Vec<(AgentId, bool)>,
    tick_forward: Vec<u32>,
    /// Trace index per class, when the class replays one.
    class_trace: Vec<Option<usize>>,
    serving: u32,
    check_invariants_every: u64,
    /// Test hook: every fault arrival as it comes due, when recording is on (see
    /// [`Simulation::record_fault_arrivals`]).
    fault_arrivals: Option<Vec<(Millis, AgentId, &'static str)>>,
    /// No fault, node failure or churn arrives after this (see [`Simulation::stop_faults_at`]).
    faults_end: Millis,
    /// Explore hook: the first commands of the run, when recording (see
    /// [`Simulation::record_commands`]).
    command_log: Option<CommandLog>,
    /// Agents the engine raised an alert about, at any time of the run.
    alerted: BTreeSet<AgentId>,
    /// Agents whose process started or stopped serving after `faults_end` (kept only when
    /// faults stop before the end): they served in the quiet tail, so a stop there is the
    /// engine's own recent decision, not a recovery that never finished.
    served_in_tail: BTreeSet<AgentId>,
    /// Deaths the engine has yet to hear of, each due at its `Event::Noticed`; empty unless
    /// the scenario gives a notice lag.
    notices: BTreeMap<AgentId, processes::Notice>,
}

/// The first commands of a run, bounded, as `(time, agent, Debug text)`.
#[derive(Debug, Default)]
struct CommandLog {
    limit: usize,
    entries: Vec<(Millis, Option<AgentId>, String)>,
}

const INITIAL_VERSION: Version = Version::new(1, 1);

/// Post-mortems kept for the report; alerts beyond are counted only.
pub const MAX_POST_MORTEMS: usize = 200;

impl Simulation {
    /// Builds the world of `scenario`; `series` are the loaded memory traces, one entry per class
    /// that replays one (see [`crate::trace::load_for`]).
    pub fn new(scenario: Scenario, replays: impl Into<Replays>) -> Result<Simulation, EngineError> {
        let Replays {
            memory: series,
            events,
        } = replays.into();
        let mut policy = scenario.policy.clone();
        policy.seed = scenario.seed;
        let controller = Controller::new(policy.clone()).map_err(|e| EngineError::InvalidSpec {
            subject: "policy".into(),
            field: e.field,
            problem: e.problem.into(),
        })?;
        let classes: Vec<ClassModel> = scenario.fleet.classes.iter().map(ClassModel::new).collect();
        let mut class_trace = vec![None; classes.len()];
        let mut loaded = Vec::new();
        for (class, s) in series {
            class_trace[class] = Some(loaded.len());
            loaded.push(s);
        }
        let nodes = (0..scenario.fleet.nodes)
            .map(|_| {
                SimNode::new(
                    scenario.fleet.node_memory.0,
                    policy.supervisor.clone(),
                    &classes,
                    scenario.probes.memory_max_silence.0,
                )
            })
            .collect();
        let end = scenario.duration.0;
        let mut sim = Simulation {
            measures: Measures::new(scenario.warmup.0),
            streams: Streams::new(scenario.seed),
            node_counters: vec![Counters::default(); scenario.fleet.nodes as usize],
            scenario,
            controller,
            nodes,
            agents: AgentTable::default(),
            classes,
            stats: RunStats::default(),
            queue: EventQueue::default(),
            now: Millis::ZERO,
            end,
            controller_wake: None,
            failover: failover::Failover::default(),
            orders: CommandMap::default(),
            pending_starts: BTreeMap::new(),
            poisoned_snapshots: BTreeSet::new(),
            broken_versions: BTreeSet::new(),
            churn_counter: Counters::default(),
            series: loaded,
            replayed: events,
            recreated: BTreeMap::new(),
            leaving: Vec::new(),
            tick_usage: Vec::new(),
            tick_killed: Vec::new(),
            tick_forward: Vec::new(),
            class_trace,
            serving: 0,
            check_invariants_every: 0,
            fault_arrivals: None,
            faults_end: end,
            command_log: None,
            alerted: BTreeSet::new(),
            served_in_tail: BTreeSet::new(),
            notices: BTreeMap::new(),
        };
        sim.populate()?;
        Ok(sim)
    }

    /// Checks the engine's invariants every `n` events (0: never). Costs O(fleet) per check.
    pub fn check_invariants_every(&mut self, n: u64) {
        self.check_invariants_every = n;
    }

    /// Test hook: record every fault arrival (time, agent, kind) as it comes due, before any
    /// check of the agent's state, so tests can compare fault streams across scenarios. Off by
    /// default; turning it off drops what was recorded.
    pub fn record_fault_arrivals(&mut self, on: bool) {
        self.fault_arrivals = on.then(Vec::new);
    }

    /// The fault arrivals recorded so far, in the order they came due (empty unless recording).
    pub fn fault_arrivals(&self) -> &[(Millis, AgentId, &'static str)] {
        self.fault_arrivals.as_deref().unwrap_or_default()
    }

    /// Explore hook: no new agent fault, node failure or churn arrives after `at`; what is in
    /// flight (a spike, a failed node's repair, a recovery, a rollout) runs its course. With
    /// the faults over, every recoverable agent must run again before the end: the liveness
    /// check of `explore`. By default faults arrive until the end.
    pub fn stop_faults_at(&mut self, at: Millis) {
        self.faults_end = at;
    }

    /// Explore hook: keep the first `limit` commands the engine emits (time, agent, `Debug`
    /// text), to name the first difference between two runs or an agent's timeline. Off by
    /// default (`limit` 0); recording costs an allocation per command.
    pub fn record_commands(&mut self, limit: usize) {
        self.command_log = (limit > 0).then(|| CommandLog {
            limit,
            entries: Vec::new(),
        });
    }

    /// The commands recorded so far (empty unless recording).
    pub fn commands(&self) -> &[(Millis, Option<AgentId>, String)] {
        self.command_log
            .as_ref()
            .map_or(&[], |log| log.entries.as_slice())
    }

    /// The engine, for read-only checks of its view (agent status, invariants).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Totals about the run: events, engine errors, the command-stream hash, violations.
    /// The measures so far: every incident and the raw histograms.
    pub fn measures(&self) -> &Measures {
        &self.measures
    }

    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// Whether `agent` served after faults stopped (see [`Simulation::stop_faults_at`]): its
    /// process serves now, or started or stopped serving since. Always false when faults
    /// run until the end.
    pub fn served_after_faults(&self, agent: AgentId) -> bool {
        if self.faults_end >= self.end {
            return false;
        }
        let serving_now = self.agents[agent]
            .process
            .as_ref()
            .is_some_and(|process| process.state == ProcessState::Serving);
        serving_now || self.served_in_tail.contains(&agent)
    }

    /// Whether the engine ever raised an alert about `agent` (paged a human) in this run.
    pub fn was_alerted(&self, agent: AgentId) -> bool {
        self.alerted.contains(&agent)
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn end(&self) -> Millis {
        self.end
    }

    /// Events waiting in the queue (one-off and periodic), for the whole-run bench: after
    /// [`Simulation::new`] it is the occupancy the run starts with.
    pub fn pending_events(&self) -> usize {
        self.queue.len()
    }

    /// Runs to the end, calling `progress(now)` every so often.
    pub fn run(&mut self, mut progress: impl FnMut(Millis)) {
        let mut next_progress = 0u64;
        while let Some(at) = self.queue.peek_time() {
            if at > self.end {
                break;
            }
            let (at, event) = self.queue.pop().expect("peeked");
            self.now = at;
            self.stats.events += 1;
            self.stats.events_by_kind[event.kind()] += 1;
            self.dispatch(event);
            if self.stats.events >= next_progress {
                next_progress = self.stats.events + 65_536;
                progress(self.now);
            }
            if self.check_invariants_every > 0
                && self
                    .stats
                    .events
                    .is_multiple_of(self.check_invariants_every)
                && self.stats.invariant_violation.is_none()
            {
                self.check_world();
            }
        }
        self.now = self.end;
        progress(self.end);
        self.check_world();
    }

    fn populate(&mut self) -> Result<(), EngineError> {
        let fleet = self.scenario.fleet.clone();
        let fleet_faults = self.scenario.node_faults.clone();
        for index in 0..fleet.nodes {
            let zone = index % fleet.zones;
            let region = zone % fleet.regions;
            self.feed(Input::JoinNode(NodeSpec {
                id: NodeId(index),
                region: RegionId(region),
                zone: ZoneId(zone),
                memory_bytes_capacity: fleet.node_memory.0,
            }));
            // Stagger the ticks so nodes do not all sample at the same millisecond.
            let period = self.scenario.probes.memory_interval.ms();
            let offset = u64::from(index) * period / u64::from(fleet.nodes);
            self.queue
                .push_periodic(Millis(offset), Event::NodeTick(NodeId(index)));
            self.schedule_node_failure(NodeId(index), Millis::ZERO);
        }
        self.schedule_controller_faults();
        for loss in &fleet_faults.scheduled {
            self.queue
                .push(loss.at.0, Event::NodeFail(NodeId(loss.node)));
        }
        // Ids are dense and never reused: room for the initial fleet and the creates churn is
        // expected to make (its mean, plus 5%), so that a large fleet does not grow its
        // per-agent arrays by an eighth for a few hundred new agents.
        let churn_hours = self.end.saturating_since(self.scenario.warmup.0).0 as f64 / 3_600_000.0;
        let churn = (self.scenario.churn.creates_per_hour * churn_hours * 1.05).ceil();
        let expected = self.scenario.agent_count() as f64 + churn.clamp(0.0, 1e9) + 16.0;
        // Slots for the initial fleet and the removed agents not yet retired (a handful).
        let slots = self.scenario.agent_count() as usize + 64;
        self.agents.reserve(expected as usize, slots);
        let mut id = 0u32;
        for (class, spec) in fleet.classes.iter().enumerate() {
            for _ in 0..spec.agents {
                let tenant = id % fleet.tenants;
                self.create_agent(AgentId(id), class as u16, tenant);
                id += 1;
            }
        }
        self.queue
            .push(self.scenario.report.bucket.0, Event::Bucket);
        self.schedule_churn();
        for (i, event) in self.replayed.iter().enumerate() {
            if Millis(event.at_ms) <= self.end {
                self.queue
                    .push(Millis(event.at_ms), Event::Replay(i as u32));
            }
        }
        for (i, rollout) in self.scenario.rollouts.iter().enumerate() {
            self.queue.push(rollout.at.0, Event::Rollout(i as u32));
        }
        Ok(())
    }

    fn create_agent(&mut self, id: AgentId, class: u16, tenant: u32) {
        let model = &self.scenario.fleet.classes[usize::from(class)];
        let mut counters = Counters::default();
        let jitter = model.memory.baseline_jitter;
        let u = self.streams.unit(
            Component::Baseline,
            id.0,
            counters.next(Component::Baseline),
        );
        let baseline = (model.memory.baseline.0 as f64 * (1.0 + jitter * (2.0 * u - 1.0))) as u64;
        let trace = self.class_trace[usize::from(class)].map(|t| {
            let series = &self.series[t];
            let pick = self.streams.u64(Component::TraceAssignment, id.0, 0);
            let phase =
                self.streams.u64(Component::TraceAssignment, id.0, 1) % series.period_ms().max(1);
            ((pick % series.len() as u64) as u32, phase)
        });
        let agent = SimAgent::desired(class, baseline, trace);
        self.agents.insert(id, agent, counters);
        let class_model = &self.classes[usize::from(class)];
        let spec = AgentSpec {
            id,
            tenant: TenantId(tenant),
            class,
            priority: Priority(class_model.priority),
            memory_bytes_limit: class_model.limit_bytes,
            memory_bytes_request: class_model.request_bytes,
            version: INITIAL_VERSION,
            depends_on: Vec::new(),
            allowed_zones: Vec::new(),
        };
        self.measures.provisioning_started(id, self.now);
        self.feed(Input::CreateAgent(spec));
        for kind in [
            FaultKind::Crash,
            FaultKind::Hang,
            FaultKind::ConfigCorruption,
            FaultKind::Spike,
        ] {
            self.schedule_fault(id, kind);
        }
    }

    fn draw_unit(&mut self, agent: AgentId, component: Component) -> f64 {
        let draw = self.agents.draws_mut(agent).next(component);
        self.streams.unit(component, agent.0, draw)
    }

    fn latency(&mut self, agent: AgentId, dist: Dist) -> Millis {
        let u1 = self.draw_unit(agent, Component::Latency);
        let u2 = self.draw_unit(agent, Component::Latency);
        sample(&dist, u1, u2)
    }

    /// A latency that draws nothing when it is constant: the lags added after the others
    /// (`exit_notice`, `supervisor_loss_notice`, `restart`, `config_reject_notice`,
    /// `ready_notice`) leave
    /// every draw of a scenario without them where it was.
    fn lag(&mut self, agent: AgentId, dist: Dist) -> Millis {
        match dist {
            Dist::Constant { value } => value.0,
            _ => self.latency(agent, dist),
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            // Past `stop_faults_at`, arrivals are dropped, and with them their successors.
            Event::Fault(..) | Event::NodeFail(_) | Event::Churn | Event::ControllerFail { .. }
                if self.now > self.faults_end => {}
            // No controller learns the loss until one leads again.
            Event::NodeLostDetected(node) if self.failover.is_down() => {
                self.queue
                    .push(self.failover.back_at(), Event::NodeLostDetected(node));
            }
            Event::ControllerFail { scheduled } => self.controller_fail(scheduled),
            Event::ControllerBack => self.controller_back(),
            Event::NodeTick(node) => self.node_tick(node),
            Event::Bucket => self.close_bucket(),
            Event::Fault(agent, kind) => self.on_fault(agent, kind),
            Event::NodeFail(node) => self.node_fail(node),
            Event::NodeLostDetected(node) => self.node_lost_detected(node),
            Event::NodeRepaired(node) => self.node_repaired(node),
            Event::Ready { agent, life } => self.on_ready(agent, life),
            Event::ProbeOk { agent, life } => self.on_probe_ok(agent, life),
            Event::ProbeFail { agent, life } => self.on_probe_fail(agent, life),
            Event::ResumeCrash { agent, life } => {
                if self.agents[agent].process.is_some_and(|p| p.life == life) {
                    self.measures.fault(agent, Fault::Crash, self.now);
                    self.exit_process(agent, 1, false);
                }
            }
            Event::StartDone(command) => self.start_done(command),
            Event::StopDone(command) => self.stop_done(command),
            Event::SnapshotDone(command) => self.snapshot_done(command),
            Event::ControllerWake => {
                if self.controller_wake == Some(self.now) && !self.failover.is_down() {
                    self.controller_wake = None;
                    if let Err(error) = self.controller.handle_timeout(self.now) {
                        self.note_engine_error(error);
                    }
                    self.drain_controller();
                }
            }
            Event::SupervisorWake(node) => {
                if self.nodes[node.index()].supervisor_wake == Some(self.now) {
                    self.nodes[node.index()].supervisor_wake = None;
                    let _ = self.nodes[node.index()].supervisor.handle_timeout(self.now);
                    self.drain_supervisor(node);
                }
            }
            Event::Churn => self.churn(),
            Event::WarmDone(command) => self.warm_done(command),
            Event::Replay(index) => self.replay(index),
            Event::Rollout(index) => self.start_rollout(index),
            Event::Noticed(agent) => self.on_noticed(agent),
        }
    }

    pub fn serving(&self) -> u32 {
        self.serving
    }
}

/// An agent slot with no agent in it (ids are dense; churn may leave gaps while it fills).
const fn ms(value: u64) -> crate::scenario::Span {
    crate::scenario::Span(Millis(value))
}
