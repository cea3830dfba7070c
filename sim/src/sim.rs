//! The discrete-event loop. It owns virtual time, the world and the faults; every decision
//! comes from the engine's Controller and Supervisors, driven through their public API exactly
//! as the production driver drives them.

use crate::dist::{exponential_gap, sample};
use crate::measures::{Fault, Measures};
use crate::queue::EventQueue;
use crate::rng::{Component, Counters, Streams};
use crate::scenario::{Dist, Scenario};
use crate::trace::MemorySeries;
use crate::world::{ClassModel, Pod, Process, ProcessState, SimAgent, SimNode, modelled_memory};
use carapace_engine::{
    AgentId, AgentSpec, Command, CommandId, Controller, EngineError, Input, Instance, Millis,
    NodeId, NodeSpec, Outcome, Priority, RegionId, RolloutId, RolloutSpec, SnapshotId, StartReason,
    StopReason, SupervisorCommand, SupervisorInput, TenantId, Version, ZoneId,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Events of the world. Small and `Copy`: millions of them pass through the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    NodeTick(NodeId),
    Bucket,
    Fault(AgentId, FaultKind),
    NodeFail(NodeId),
    NodeLostDetected(NodeId),
    NodeRepaired(NodeId),
    Ready { agent: AgentId, life: u32 },
    ProbeOk { agent: AgentId, life: u32 },
    ProbeFail { agent: AgentId, life: u32 },
    ResumeCrash { agent: AgentId, life: u32 },
    StartDone(CommandId),
    StopDone(CommandId),
    SnapshotDone(CommandId),
    ControllerWake,
    SupervisorWake(NodeId),
    Churn,
    Rollout(u32),
}

/// Names of the event kinds, in the order of [`RunStats::events_by_kind`].
pub const EVENT_KINDS: [&str; 17] = [
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
    pub(crate) agents: Vec<SimAgent>,
    pub(crate) classes: Vec<ClassModel>,
    pub(crate) measures: Measures,
    pub(crate) stats: RunStats,
    queue: EventQueue<Event>,
    streams: Streams,
    now: Millis,
    end: Millis,
    controller_wake: Option<Millis>,
    orders: BTreeMap<CommandId, Order>,
    /// Starts still being carried out, by the instance they create: a stop of that instance
    /// cancels its start, as a real node serialises operations on one pod.
    pending_starts: BTreeMap<(AgentId, Instance), CommandId>,
    poisoned_snapshots: BTreeSet<(AgentId, SnapshotId)>,
    broken_versions: BTreeSet<Version>,
    node_counters: Vec<Counters>,
    churn_counter: Counters,
    series: Vec<MemorySeries>,
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
    pub fn new(
        scenario: Scenario,
        series: Vec<(usize, MemorySeries)>,
    ) -> Result<Simulation, EngineError> {
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
            .map(|_| SimNode::new(scenario.fleet.node_memory.0, policy.supervisor.clone()))
            .collect();
        let end = scenario.duration.0;
        let mut sim = Simulation {
            measures: Measures::new(scenario.warmup.0),
            streams: Streams::new(scenario.seed),
            node_counters: vec![Counters::default(); scenario.fleet.nodes as usize],
            scenario,
            controller,
            nodes,
            agents: Vec::new(),
            classes,
            stats: RunStats::default(),
            queue: EventQueue::default(),
            now: Millis::ZERO,
            end,
            controller_wake: None,
            orders: BTreeMap::new(),
            pending_starts: BTreeMap::new(),
            poisoned_snapshots: BTreeSet::new(),
            broken_versions: BTreeSet::new(),
            churn_counter: Counters::default(),
            series: loaded,
            class_trace,
            serving: 0,
            check_invariants_every: 0,
            fault_arrivals: None,
            faults_end: end,
            command_log: None,
            alerted: BTreeSet::new(),
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
    pub fn stats(&self) -> &RunStats {
        &self.stats
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
        for (i, loss) in self
            .scenario
            .node_faults
            .scheduled
            .clone()
            .into_iter()
            .enumerate()
        {
            let _ = i;
            self.queue
                .push(loss.at.0, Event::NodeFail(NodeId(loss.node)));
        }
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
        let agent = SimAgent {
            class,
            desired: true,
            counters,
            baseline_bytes: baseline,
            poisoned: false,
            config_broken: false,
            spike_until: Millis::ZERO,
            spike_bytes: 0,
            pod: None,
            process: None,
            lives: 0,
            last_fed_bytes: 0,
            last_fed_at: Millis::ZERO,
            trace,
        };
        if self.agents.len() <= id.index() {
            self.agents.resize_with(id.index() + 1, placeholder_agent);
        }
        self.agents[id.index()] = agent;
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

    // Randomness.

    fn draw_unit(&mut self, agent: AgentId, component: Component) -> f64 {
        let draw = self.agents[agent.index()].counters.next(component);
        self.streams.unit(component, agent.0, draw)
    }

    fn latency(&mut self, agent: AgentId, dist: Dist) -> Millis {
        let u1 = self.draw_unit(agent, Component::Latency);
        let u2 = self.draw_unit(agent, Component::Latency);
        sample(&dist, u1, u2)
    }

    fn schedule_fault(&mut self, agent: AgentId, kind: FaultKind) {
        let class = &self.scenario.fleet.classes[usize::from(self.agents[agent.index()].class)];
        let (rate, component) = match kind {
            FaultKind::Crash => (class.faults.crashes_per_day, Component::Crash),
            FaultKind::Hang => (class.faults.hangs_per_day, Component::Hang),
            FaultKind::ConfigCorruption => (
                class.faults.config_corruptions_per_day,
                Component::ConfigCorruption,
            ),
            FaultKind::Spike if self.agents[agent.index()].trace.is_some() => {
                (0.0, Component::Spike)
            }
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

    fn schedule_node_failure(&mut self, node: NodeId, from: Millis) {
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

    fn schedule_churn(&mut self) {
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

    // The engine, driven through its public API.

    pub(crate) fn feed(&mut self, input: Input) {
        self.stats.engine_inputs += 1;
        if let Err(error) = self.controller.handle(self.now, input) {
            self.note_engine_error(error);
        }
        self.drain_controller();
    }

    fn note_engine_error(&mut self, error: EngineError) {
        self.stats.engine_errors += 1;
        if self.stats.first_engine_error.is_none() {
            self.stats.first_engine_error = Some(format!("at {}: {error}", self.now));
        }
        if !matches!(error, EngineError::UnknownAgent(_))
            && self.stats.first_unexpected_engine_error.is_none()
        {
            self.stats.first_unexpected_engine_error = Some(format!("at {}: {error}", self.now));
        }
    }

    fn drain_controller(&mut self) {
        while let Some(command) = self.controller.poll_command() {
            self.stats.engine_commands += 1;
            self.hash_command(&command);
            if let Some(log) = self.command_log.as_mut()
                && log.entries.len() < log.limit
            {
                log.entries
                    .push((self.now, command.agent(), format!("{command:?}")));
            }
            self.execute(command);
        }
        if let Some(at) = self.controller.next_deadline()
            && self.controller_wake.is_none_or(|wake| at < wake)
        {
            self.controller_wake = Some(at);
            self.queue.push(at.max(self.now), Event::ControllerWake);
        }
    }

    fn hash_command(&mut self, command: &Command) {
        let mut hasher = Fnv(self.stats.command_stream_hash ^ self.now.0);
        let _ = write!(hasher, "{command:?}");
        self.stats.command_stream_hash = hasher.0;
    }

    fn feed_supervisor(&mut self, node: NodeId, input: SupervisorInput) {
        let supervisor = &mut self.nodes[node.index()].supervisor;
        // A pod the supervisor never adopted (its config failed validation) has nothing to release.
        let _ = supervisor.handle(self.now, input);
        self.drain_supervisor(node);
    }

    fn drain_supervisor(&mut self, node: NodeId) {
        while let Some(command) = self.nodes[node.index()].supervisor.poll_command() {
            match command {
                SupervisorCommand::Restart {
                    agent, instance, ..
                } => self.restart_in_place(node, agent, instance),
                SupervisorCommand::Escalate {
                    agent,
                    instance,
                    reason,
                } => {
                    self.feed(Input::Escalate {
                        agent,
                        instance,
                        reason,
                    });
                }
            }
        }
        let next = self.nodes[node.index()].supervisor.next_deadline();
        let sim_node = &mut self.nodes[node.index()];
        if let Some(at) = next
            && sim_node.supervisor_wake.is_none_or(|wake| at < wake)
        {
            sim_node.supervisor_wake = Some(at);
            self.queue
                .push(at.max(self.now), Event::SupervisorWake(node));
        }
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            // Past `stop_faults_at`, arrivals are dropped, and with them their successors.
            Event::Fault(..) | Event::NodeFail(_) | Event::Churn if self.now > self.faults_end => {}
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
                if self.agents[agent.index()]
                    .process
                    .is_some_and(|p| p.life == life)
                {
                    self.measures.fault(agent, Fault::Crash, self.now);
                    self.exit_process(agent, 1, false);
                }
            }
            Event::StartDone(command) => self.start_done(command),
            Event::StopDone(command) => self.stop_done(command),
            Event::SnapshotDone(command) => self.snapshot_done(command),
            Event::ControllerWake => {
                if self.controller_wake == Some(self.now) {
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
            Event::Rollout(index) => self.start_rollout(index),
        }
    }

    // Faults.

    fn on_fault(&mut self, id: AgentId, kind: FaultKind) {
        if let Some(arrivals) = self.fault_arrivals.as_mut() {
            let name = match kind {
                FaultKind::Crash => "crash",
                FaultKind::Hang => "hang",
                FaultKind::ConfigCorruption => "config_corruption",
                FaultKind::Spike => "spike",
            };
            arrivals.push((self.now, id, name));
        }
        if !self.agents[id.index()].desired {
            return;
        }
        self.schedule_fault(id, kind);
        let agent = &self.agents[id.index()];
        let Some(process) = agent.process else { return };
        match kind {
            FaultKind::Crash if process.state != ProcessState::Hung => {
                let poison = self.scenario.fleet.classes[usize::from(agent.class)]
                    .faults
                    .crash_poisons_state;
                if self.draw_unit(id, Component::Poison) < poison {
                    self.agents[id.index()].poisoned = true;
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
                    next_probe,
                    Event::ProbeFail {
                        agent: id,
                        life: process.life,
                    },
                );
            }
            FaultKind::ConfigCorruption if process.state == ProcessState::Serving => {
                // The agent rewrote its own config (truncated) and restarts itself to load it.
                self.measures.fault(id, Fault::ConfigCorruption, self.now);
                self.agents[id.index()].config_broken = true;
                self.exit_process(id, 0, false);
            }
            FaultKind::Spike => {
                let memory = &self.scenario.fleet.classes[usize::from(agent.class)].memory;
                let (size, duration) = (memory.spike_size.0, memory.spike_duration.0);
                let u = self.draw_unit(id, Component::Spike);
                let agent = &mut self.agents[id.index()];
                agent.spike_bytes = (size as f64 * (0.5 + u)) as u64;
                agent.spike_until = self.now + duration;
            }
            _ => {}
        }
    }

    fn set_process_state(&mut self, id: AgentId, state: ProcessState) {
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
    fn exit_process(&mut self, id: AgentId, code: i32, oom_killed: bool) {
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
    fn kill_process(&mut self, id: AgentId) {
        self.set_process_state(id, ProcessState::Booting);
        let agent = &mut self.agents[id.index()];
        agent.process = None;
        // The work that spiked died with the process.
        agent.spike_until = Millis::ZERO;
    }

    /// The pod of process `life` of `id`, if that process still lives in `state` on an up node:
    /// a probe result about any other process is stale.
    fn probed_pod(&self, id: AgentId, life: u32, state: ProcessState) -> Option<Pod> {
        let agent = &self.agents[id.index()];
        let (process, pod) = (agent.process?, agent.pod?);
        let current =
            process.life == life && process.state == state && self.nodes[pod.node.index()].up;
        current.then_some(pod)
    }

    fn on_probe_fail(&mut self, id: AgentId, life: u32) {
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
        let interval = self.scenario.probes.interval.0;
        self.queue
            .push(self.now + interval, Event::ProbeFail { agent: id, life });
    }

    // Processes.

    fn spawn(&mut self, id: AgentId, boot: Dist) {
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
        self.queue
            .push(self.now + boot, Event::Ready { agent: id, life });
    }

    fn restart_in_place(&mut self, node: NodeId, id: AgentId, instance: Instance) {
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

    fn agents_version(&self, id: AgentId) -> Version {
        self.controller
            .agent(id)
            .map_or(INITIAL_VERSION, |a| a.version)
    }

    fn on_ready(&mut self, id: AgentId, life: u32) {
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

    fn on_probe_ok(&mut self, id: AgentId, life: u32) {
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

    fn measures_start(&self, id: AgentId) -> Millis {
        self.measures.open_start(id).unwrap_or(self.now)
    }

    // Nodes.

    fn node_fail(&mut self, node: NodeId) {
        let sim_node = &mut self.nodes[node.index()];
        if !sim_node.up {
            return;
        }
        sim_node.up = false;
        sim_node.failures += 1;
        for id in sim_node.pods.clone() {
            if self.agents[id.index()].process.is_some() {
                self.measures.fault(id, Fault::NodeFailure, self.now);
                self.kill_process(id);
            }
        }
        let detect = Millis(self.scenario.policy.recovery.heartbeat_timeout_ms);
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

    fn node_lost_detected(&mut self, node: NodeId) {
        let pods = std::mem::take(&mut self.nodes[node.index()].pods);
        for &id in &pods {
            self.measures.observed(id, self.now);
            let agent = &mut self.agents[id.index()];
            if agent.pod.is_some_and(|p| p.node == node) {
                agent.pod = None;
            }
        }
        let policy = self.scenario.policy.supervisor.clone();
        let sim_node = &mut self.nodes[node.index()];
        sim_node.supervisor = carapace_engine::Supervisor::new(policy);
        sim_node.supervisor_wake = None;
        self.feed(Input::LoseNode { node });
    }

    fn node_repaired(&mut self, node: NodeId) {
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

    /// Samples memory, plays the kernel's OOM killer, forwards samples past the deadband.
    fn node_tick(&mut self, node: NodeId) {
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
        let mut usage: Vec<(AgentId, u64)> = Vec::with_capacity(pods.len());
        for &id in &pods {
            let Some(memory) = self.memory_of(id) else {
                continue;
            };
            let limit = self.classes[usize::from(self.agents[id.index()].class)].limit_bytes;
            if memory >= limit {
                // The pod's own cgroup limit: the kernel kills this agent, nobody else.
                self.measures.cgroup_oom_kills += 1;
                self.measures.fault(id, Fault::OomKilled, self.now);
                usage.push((id, u64::MAX));
                continue;
            }
            usage.push((id, memory));
        }
        self.nodes[node.index()].pods = pods;
        let mut killed: Vec<(AgentId, bool)> = usage
            .iter()
            .filter(|(_, m)| *m == u64::MAX)
            .map(|(id, _)| (*id, true))
            .collect();
        usage.retain(|(_, m)| *m != u64::MAX);
        let mut total: u64 = usage.iter().map(|(_, m)| m).sum();
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
        for (id, oom) in killed {
            self.exit_process(id, 137, oom);
        }
        let deadband = self.scenario.probes.memory_deadband;
        let max_silence = self.scenario.probes.memory_max_silence.0;
        for (id, memory) in usage {
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
    }

    fn memory_of(&self, id: AgentId) -> Option<u64> {
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

    // Commands.

    fn execute(&mut self, command: Command) {
        match command {
            Command::Start {
                id,
                agent,
                instance,
                node,
                version,
                snapshot,
                reason,
            } => {
                let mut latency = self.latency(agent, self.scenario.latency.schedule);
                if !self.nodes[node.index()].versions.contains(&version) {
                    latency = latency + self.latency(agent, self.scenario.latency.version_pull);
                }
                if snapshot.is_some() {
                    latency = latency + self.latency(agent, self.scenario.latency.snapshot_restore);
                }
                latency = latency + self.latency(agent, self.scenario.latency.validate);
                self.pending_starts.insert((agent, instance), id);
                self.orders.insert(
                    id,
                    Order::Start {
                        agent,
                        instance,
                        node,
                        version,
                        snapshot,
                        reason,
                    },
                );
                self.queue.push(self.now + latency, Event::StartDone(id));
            }
            Command::Stop {
                id,
                agent,
                instance,
                node,
                snapshot,
                reason,
            } => {
                self.feed_supervisor(node, SupervisorInput::Release { agent, instance });
                let latency = self.latency(agent, self.scenario.latency.schedule)
                    + self.latency(agent, self.scenario.latency.stop);
                self.orders.insert(
                    id,
                    Order::Stop {
                        agent,
                        instance,
                        node,
                        snapshot,
                        reason,
                    },
                );
                self.queue.push(self.now + latency, Event::StopDone(id));
            }
            Command::TakeSnapshot {
                id,
                agent,
                instance,
                node,
                snapshot,
                ..
            } => {
                let life = self.agents[agent.index()].process.map(|p| p.life);
                self.orders.insert(
                    id,
                    Order::Snapshot {
                        agent,
                        instance,
                        node,
                        snapshot,
                        life,
                    },
                );
                self.queue
                    .push(self.now + Millis(500), Event::SnapshotDone(id));
            }
            Command::Throttle {
                agent,
                instance,
                memory_bytes_high,
                ..
            } => {
                let a = &mut self.agents[agent.index()];
                if a.pod.is_some_and(|p| p.instance == instance)
                    && let Some(process) = a.process.as_mut()
                {
                    process.memory_high = Some(memory_bytes_high);
                }
            }
            Command::Alert(post_mortem) => {
                self.stats.alerts += 1;
                self.alerted.insert(post_mortem.agent);
                if self.stats.post_mortems.len() < MAX_POST_MORTEMS {
                    self.stats.post_mortems.push((*post_mortem).clone());
                }
                let class = self.classes[usize::from(self.agents[post_mortem.agent.index()].class)]
                    .name
                    .clone();
                self.measures.alerted(post_mortem.agent, &class, self.now);
            }
            Command::ReportRollout { rollout, state } => {
                self.stats
                    .rollout_events
                    .push((self.now.0, rollout.0, format!("{state:?}")));
            }
            Command::Reject { .. } => self.stats.rejects += 1,
            _ => self.stats.rejects += 1,
        }
    }

    fn finish(&mut self, command: CommandId, outcome: Outcome) {
        self.feed(Input::FinishCommand { command, outcome });
    }

    fn start_done(&mut self, command: CommandId) {
        let Some(Order::Start {
            agent: id,
            instance,
            node,
            version,
            snapshot,
            reason,
        }) = self.orders.remove(&command)
        else {
            return;
        };
        self.pending_starts.remove(&(id, instance));
        if !self.nodes[node.index()].up || !self.agents[id.index()].desired {
            self.finish(command, Outcome::Failed);
            return;
        }
        let sim_node = &mut self.nodes[node.index()];
        if !sim_node.versions.contains(&version) {
            sim_node.versions.push(version);
        }
        sim_node.add_pod(id);
        let agent = &mut self.agents[id.index()];
        if let Some(old) = agent.pod
            && self.nodes[old.node.index()].up
        {
            self.stats
                .invariant_violation
                .get_or_insert(format!("at {}: two live copies of {id}", self.now));
        }
        let agent = &mut self.agents[id.index()];
        agent.pod = Some(Pod { node, instance });
        agent.poisoned = snapshot.is_some_and(|s| self.poisoned_snapshots.contains(&(id, s)));
        if reason == StartReason::RestoreKnownGood {
            agent.config_broken = false;
        }
        if agent.config_broken || self.broken_versions.contains(&version) {
            if !self.measures.is_open(id) && self.broken_versions.contains(&version) {
                self.measures.fault(id, Fault::BrokenRelease, self.now);
            }
            self.measures.observed(id, self.now);
            self.feed(Input::RejectConfig {
                agent: id,
                instance,
                version,
            });
            self.finish(command, Outcome::Failed);
            return;
        }
        let boot = self.scenario.latency.boot;
        self.spawn(id, boot);
        self.feed_supervisor(
            node,
            SupervisorInput::Adopt {
                agent: id,
                instance,
            },
        );
        self.feed(Input::AgentStarted {
            agent: id,
            instance,
        });
        self.finish(command, Outcome::Succeeded);
    }

    fn stop_done(&mut self, command: CommandId) {
        let Some(Order::Stop {
            agent: id,
            instance,
            node,
            snapshot,
            reason,
        }) = self.orders.remove(&command)
        else {
            return;
        };
        if !self.nodes[node.index()].up {
            self.finish(command, Outcome::Failed);
            return;
        }
        if let Some(start) = self.pending_starts.remove(&(id, instance)) {
            // The pod was still being created: the stop cancels it and it never runs.
            self.orders.remove(&start);
            self.finish(start, Outcome::Failed);
        }
        let agent = &self.agents[id.index()];
        if agent.pod == Some(Pod { node, instance }) {
            if agent.serving() {
                match reason {
                    StopReason::Evict => self.measures.fault(id, Fault::Evicted, self.now),
                    StopReason::Migrate | StopReason::Rollout => {
                        self.measures.planned_disruptions += 1
                    }
                    _ => {}
                }
            }
            if let Some(snapshot) = snapshot
                && self.agents[id.index()].poisoned
            {
                self.poisoned_snapshots.insert((id, snapshot));
            }
            self.kill_process(id);
            self.agents[id.index()].pod = None;
            self.nodes[node.index()].remove_pod(id);
        }
        if reason == StopReason::Remove {
            self.agents[id.index()].desired = false;
            self.measures.forget(id);
        }
        self.finish(command, Outcome::Succeeded);
    }

    fn snapshot_done(&mut self, command: CommandId) {
        let Some(Order::Snapshot {
            agent: id,
            instance,
            node,
            snapshot,
            life,
        }) = self.orders.remove(&command)
        else {
            return;
        };
        let agent = &self.agents[id.index()];
        let ok = self.nodes[node.index()].up
            && agent.pod == Some(Pod { node, instance })
            && life.is_some()
            && agent.process.map(|p| p.life) == life;
        if ok && agent.poisoned {
            self.poisoned_snapshots.insert((id, snapshot));
        }
        self.finish(
            command,
            if ok {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
        );
    }

    // Desired-state changes during the run.

    fn churn(&mut self) {
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
        let id = AgentId(self.agents.len() as u32);
        let tenant = (pick >> 32) as u32 % self.scenario.fleet.tenants;
        self.create_agent(id, class, tenant);
        // Remove one old agent, so the fleet keeps its size.
        let victim_draw = self.churn_counter.next(Component::Churn);
        let start = self.streams.u64(Component::Churn, 2, victim_draw) % u64::from(id.0).max(1);
        for offset in 0..64u64 {
            let candidate = AgentId(((start + offset) % u64::from(id.0).max(1)) as u32);
            if self.agents[candidate.index()].desired && self.controller.agent(candidate).is_some()
            {
                self.remove_agent(candidate);
                break;
            }
        }
    }

    fn remove_agent(&mut self, id: AgentId) {
        self.feed(Input::RemoveAgent { agent: id });
        if self.controller.agent(id).is_none() {
            // Removed at once (it held no node).
            self.agents[id.index()].desired = false;
            self.measures.forget(id);
        }
    }

    fn start_rollout(&mut self, index: u32) {
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
        let agents: Vec<AgentId> = (0..self.agents.len() as u32)
            .map(AgentId)
            .filter(|id| {
                let a = &self.agents[id.index()];
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

    // Reporting.

    fn close_bucket(&mut self) {
        let bucket = self.scenario.report.bucket.0;
        if self.now + bucket <= self.end {
            self.queue.push(self.now + bucket, Event::Bucket);
        }
        let desired = self.controller.agent_count();
        let down = desired.saturating_sub(self.serving);
        let nodes_up = self.nodes.iter().filter(|n| n.up).count() as u32;
        let mut load = crate::measures::NodeLoad::default();
        let mut up = 0u32;
        for node in self.controller.node_ids() {
            let Some(view) = self.controller.node(node).filter(|v| !v.lost) else {
                continue;
            };
            up += 1;
            load.placed += view.agents;
            load.reserved_mean += view.reserved_bytes as f64 / view.capacity_bytes as f64;
            load.committed_mean += view.committed_bytes as f64 / view.cap_bytes.max(1) as f64;
        }
        if up > 0 {
            load.reserved_mean /= f64::from(up);
            load.committed_mean /= f64::from(up);
        }
        load.queued = self.controller.queued_agents();
        self.measures.agents_down(down);
        self.measures
            .close_bucket(self.now, desired, down, nodes_up, load);
    }

    /// Safety checks over the whole world: the engine's invariants, and never two live copies.
    fn check_world(&mut self) {
        if let Err(violation) = self.controller.check_invariants() {
            self.stats
                .invariant_violation
                .get_or_insert(format!("at {}: {violation}", self.now));
            return;
        }
        let mut seen = BTreeSet::new();
        for node in self.nodes.iter().filter(|n| n.up) {
            for &id in &node.pods {
                if !seen.insert(id) {
                    self.stats
                        .invariant_violation
                        .get_or_insert(format!("at {}: two live copies of {id}", self.now));
                    return;
                }
            }
        }
    }

    pub fn serving(&self) -> u32 {
        self.serving
    }
}

fn placeholder_agent() -> SimAgent {
    SimAgent {
        class: 0,
        desired: false,
        counters: Counters::default(),
        baseline_bytes: 0,
        poisoned: false,
        config_broken: false,
        spike_until: Millis::ZERO,
        spike_bytes: 0,
        pod: None,
        process: None,
        lives: 0,
        last_fed_bytes: 0,
        last_fed_at: Millis::ZERO,
        trace: None,
    }
}

const fn ms(value: u64) -> crate::scenario::Span {
    crate::scenario::Span(Millis(value))
}

/// FNV-1a, fed through `fmt::Write` so hashing a command allocates nothing.
struct Fnv(u64);

impl std::fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for byte in s.bytes() {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        Ok(())
    }
}
