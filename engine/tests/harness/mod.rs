//! A virtual-time test world in the manner of quinn-proto's `Pair`: one [`Controller`], one
//! [`Supervisor`] per node, and a tiny driver that carries their commands out the way a real
//! one would, on a clock the test owns.
//!
//! The driver keeps the ground truth the engine only hears about: which pods exist, on which
//! node, and what their processes are doing. That is what lets a test assert "never two live
//! copies of one agent" against reality rather than against the engine's own bookkeeping.
//!
//! Everything is deterministic: events are ordered by (time, sequence), maps are `BTreeMap`s
//! and nothing reads a clock or draws ambient randomness.

#![allow(dead_code)] // Each test module uses a different part of the harness.

use carapace_engine::{
    AgentId, AgentSpec, AgentStatus, Command, CommandId, Controller, EngineConfig, EngineError,
    Input, Instance, Millis, NodeId, NodeSpec, Outcome, Priority, RegionId, Supervisor,
    SupervisorCommand, SupervisorInput, TenantId, Version, ZoneId,
};
use std::collections::{BTreeMap, BTreeSet};

pub const GIB: u64 = 1 << 30;
pub const MIB: u64 = 1 << 20;
pub const MINUTE: u64 = 60_000;

/// How long the simulated driver takes to do things.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Start command → pod created and process spawned (`AgentStarted`).
    pub spawn_ms: u64,
    /// Process spawned → first probe succeeds.
    pub boot_ms: u64,
    /// Supervisor restart → probe succeeds again.
    pub restart_boot_ms: u64,
    /// Stop command → pod gone (`FinishCommand`).
    pub stop_ms: u64,
    /// Snapshot command → done.
    pub snapshot_ms: u64,
    /// How often a hung process fails its probe.
    pub probe_interval_ms: u64,
    /// A process of a broken agent dies this long after it was spawned.
    pub crash_after_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        // Real OpenClaw orders of magnitude: ~13 s cold boot, a second or two for the rest.
        Timing {
            spawn_ms: 500,
            boot_ms: 13_000,
            restart_boot_ms: 2_000,
            stop_ms: 1_000,
            snapshot_ms: 2_000,
            probe_interval_ms: 5_000,
            crash_after_ms: 1_000,
        }
    }
}

/// What a pod's process is doing, as only the driver knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// The pod is being created; no process yet.
    Spawning,
    /// Spawned, not yet answering its probe.
    Booting,
    Healthy,
    /// Alive but its probe fails.
    Hung,
    /// Exited; the supervisor may restart it.
    Down,
    /// The config was refused: the pod exists, no process runs.
    ConfigRejected,
}

/// A pod the driver created and has not yet removed.
#[derive(Clone, Debug)]
pub struct Pod {
    pub node: NodeId,
    pub version: Version,
    pub process: Process,
    /// Bumped on every (re)spawn, so a boot event of an older process is void.
    pub epoch: u32,
    pub memory_bytes: u64,
    pub stopping: bool,
    start_command: CommandId,
    adopted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Spawned {
        agent: AgentId,
        instance: Instance,
    },
    Ready {
        agent: AgentId,
        instance: Instance,
        epoch: u32,
    },
    Crash {
        agent: AgentId,
        instance: Instance,
        epoch: u32,
    },
    StopDone {
        agent: AgentId,
        instance: Instance,
        command: CommandId,
    },
    SnapshotDone {
        node: NodeId,
        command: CommandId,
    },
    ProbeTick,
}

/// The test world.
#[derive(Debug)]
pub struct Fleet {
    pub controller: Controller,
    pub timing: Timing,
    now: Millis,
    supervisors: BTreeMap<NodeId, Supervisor>,
    node_specs: BTreeMap<NodeId, NodeSpec>,
    lost: BTreeSet<NodeId>,
    pods: BTreeMap<(AgentId, Instance), Pod>,
    events: BTreeMap<(Millis, u64), Event>,
    sequence: u64,
    probe_tick_armed: bool,
    /// Agents whose processes die soon after spawning; `Some(v)` only at version `v`.
    broken: BTreeMap<AgentId, Option<Version>>,
    invalid_configs: BTreeSet<(AgentId, Version)>,
    log: Vec<(Millis, Command)>,
    supervisor_log: Vec<(Millis, NodeId, SupervisorCommand)>,
    /// Check the engine's invariants and the driver's after every step.
    pub check_every_step: bool,
    /// The most pods that were starting (spawning or booting for the first time) at once.
    pub peak_starting: usize,
    steps: u64,
}

impl Fleet {
    pub fn new(config: EngineConfig) -> Fleet {
        Fleet::with_timing(config, Timing::default())
    }

    pub fn with_timing(config: EngineConfig, timing: Timing) -> Fleet {
        Fleet {
            controller: Controller::new(config).expect("test configs are valid"),
            timing,
            now: Millis::ZERO,
            supervisors: BTreeMap::new(),
            node_specs: BTreeMap::new(),
            lost: BTreeSet::new(),
            pods: BTreeMap::new(),
            events: BTreeMap::new(),
            sequence: 0,
            probe_tick_armed: false,
            broken: BTreeMap::new(),
            invalid_configs: BTreeSet::new(),
            log: Vec::new(),
            supervisor_log: Vec::new(),
            check_every_step: true,
            peak_starting: 0,
            steps: 0,
        }
    }

    // Getters.

    pub fn now(&self) -> Millis {
        self.now
    }

    /// Every controller command so far, with the time it was polled.
    pub fn commands(&self) -> &[(Millis, Command)] {
        &self.log
    }

    pub fn supervisor_commands(&self) -> &[(Millis, NodeId, SupervisorCommand)] {
        &self.supervisor_log
    }

    /// Commands logged since index `from` (use `commands().len()` as a mark).
    pub fn commands_since(&self, from: usize) -> impl Iterator<Item = &Command> {
        self.log[from..].iter().map(|(_, c)| c)
    }

    pub fn status(&self, agent: AgentId) -> Option<AgentStatus> {
        self.controller.agent(agent).map(|a| a.status)
    }

    /// Pods of `agent` that exist on nodes that are not lost.
    pub fn live_pods(&self, agent: AgentId) -> Vec<(Instance, &Pod)> {
        self.pods
            .range((agent, Instance(0))..=(agent, Instance(u32::MAX)))
            .filter(|(_, pod)| !self.lost.contains(&pod.node))
            .map(|((_, instance), pod)| (*instance, pod))
            .collect()
    }

    /// Agents with a pod on `node`.
    pub fn agents_on(&self, node: NodeId) -> Vec<AgentId> {
        let mut agents: Vec<AgentId> = self
            .pods
            .iter()
            .filter(|(_, pod)| pod.node == node)
            .map(|((agent, _), _)| *agent)
            .collect();
        agents.dedup();
        agents
    }

    pub fn starts(&self) -> impl Iterator<Item = (Millis, &Command)> {
        self.log
            .iter()
            .filter(|(_, c)| matches!(c, Command::Start { .. }))
            .map(|(t, c)| (*t, c))
    }

    pub fn alerts(&self) -> impl Iterator<Item = &carapace_engine::PostMortem> {
        self.log.iter().filter_map(|(_, c)| match c {
            Command::Alert(post_mortem) => Some(post_mortem.as_ref()),
            _ => None,
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    // Desired state and faults, all applied at the current time.

    /// Feeds one input to the controller and carries out what it decides.
    pub fn input(&mut self, input: Input) -> Result<(), EngineError> {
        let result = self.controller.handle(self.now, input);
        self.drain_controller();
        result
    }

    pub fn join(&mut self, spec: NodeSpec) {
        // The node's supervisor is up before the controller hears of the node, which may
        // place work on it at once.
        let id = spec.id;
        self.node_specs.insert(id, spec.clone());
        self.lost.remove(&id);
        self.supervisors.insert(
            id,
            Supervisor::new(self.controller.config().supervisor.clone()),
        );
        self.input(Input::JoinNode(spec))
            .expect("test nodes are valid");
    }

    /// A lost node comes back, empty.
    pub fn rejoin(&mut self, node: NodeId) {
        let spec = self.node_specs[&node].clone();
        self.join(spec);
    }

    pub fn create(&mut self, spec: AgentSpec) {
        let id = spec.id;
        self.input(Input::CreateAgent(spec))
            .unwrap_or_else(|e| panic!("creating {id}: {e}"));
    }

    /// The node dies with every process on it and is fenced; the controller is told.
    pub fn lose_node(&mut self, node: NodeId) {
        self.lost.insert(node);
        self.supervisors.remove(&node);
        self.pods.retain(|_, pod| pod.node != node);
        self.input(Input::LoseNode { node })
            .expect("lost nodes joined");
    }

    /// Kills the agent's live process (exit code 1). Returns whether there was one.
    pub fn crash(&mut self, agent: AgentId) -> bool {
        self.exit(agent, 1, false)
    }

    /// The kernel kills the agent's live process for memory.
    pub fn oom_kill(&mut self, agent: AgentId) -> bool {
        self.exit(agent, 137, true)
    }

    /// The agent's live process stops answering its probe (and stays alive).
    pub fn hang(&mut self, agent: AgentId) -> bool {
        let Some(key) = self.live_process(agent) else {
            return false;
        };
        self.pods.get_mut(&key).expect("just found").process = Process::Hung;
        self.arm_probe_tick();
        true
    }

    /// Reports `bytes` of memory used by the agent's live process.
    pub fn spike(&mut self, agent: AgentId, bytes: u64) -> bool {
        let Some((agent, instance)) = self.live_process(agent) else {
            return false;
        };
        self.pods
            .get_mut(&(agent, instance))
            .expect("just found")
            .memory_bytes = bytes;
        self.input(Input::SampleMemory {
            agent,
            instance,
            memory_bytes: bytes,
        })
        .expect("samples of live processes are accepted");
        true
    }

    /// The current instance's config is reported invalid (on reload).
    pub fn reject_config(&mut self, agent: AgentId) -> bool {
        let Some((agent, instance)) = self.live_pod(agent) else {
            return false;
        };
        let version = self.pods[&(agent, instance)].version;
        self.input(Input::RejectConfig {
            agent,
            instance,
            version,
        })
        .expect("reports about live pods are accepted");
        true
    }

    /// Every process of `agent` started from now on (at `version` only, when given) dies
    /// `crash_after_ms` after spawning. `None` clears the fault.
    pub fn set_broken(&mut self, agent: AgentId, broken: Option<Option<Version>>) {
        match broken {
            Some(version) => self.broken.insert(agent, version),
            None => self.broken.remove(&agent),
        };
    }

    /// Pods of `agent` at `version` have their config refused when they are created.
    pub fn set_config_invalid(&mut self, agent: AgentId, version: Version) {
        self.invalid_configs.insert((agent, version));
    }

    pub fn clear_faults(&mut self) {
        self.broken.clear();
        self.invalid_configs.clear();
    }

    // Running the clock.

    /// The time of the next thing that will happen, if anything will.
    pub fn next_time(&self) -> Option<Millis> {
        let event = self.events.keys().next().map(|(at, _)| *at);
        let supervisors = self
            .supervisors
            .values()
            .filter_map(Supervisor::next_deadline)
            .min();
        [event, self.controller.next_deadline(), supervisors]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does the next thing. Returns `false` when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let Some(at) = self.next_time() else {
            return false;
        };
        self.now = self.now.max(at);
        self.steps += 1;
        let now = self.now;
        if self.controller.next_deadline().is_some_and(|d| d <= now) {
            self.controller
                .handle_timeout(now)
                .expect("the harness clock never goes back");
            self.drain_controller();
        }
        let due: Vec<NodeId> = self
            .supervisors
            .iter()
            .filter(|(_, s)| s.next_deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for node in due {
            if let Some(supervisor) = self.supervisors.get_mut(&node) {
                supervisor
                    .handle_timeout(now)
                    .expect("the harness clock never goes back");
                self.drain_supervisor(node);
            }
        }
        if let Some(entry) = self.events.first_entry()
            && entry.key().0 <= now
        {
            let event = entry.remove();
            self.handle_event(event);
        }
        if self.check_every_step {
            self.check();
        }
        true
    }

    /// Runs everything due up to and including `until`, then sets the clock to `until`.
    pub fn run_until(&mut self, until: Millis) {
        while self.next_time().is_some_and(|t| t <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Runs for `ms` of virtual time.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now + Millis(ms));
    }

    /// Runs until `done` holds (checked after each step) or `limit_ms` of virtual time pass.
    /// Returns whether `done` held.
    pub fn run_while_not(&mut self, limit_ms: u64, mut done: impl FnMut(&Fleet) -> bool) -> bool {
        let until = self.now + Millis(limit_ms);
        loop {
            if done(self) {
                return true;
            }
            match self.next_time() {
                Some(t) if t <= until => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(until);
                    return done(self);
                }
            }
        }
    }

    /// The engine's invariants and the driver's ground truth: never two live copies of one
    /// agent, never more on a node than its overcommit cap allows.
    pub fn check(&self) {
        if let Err(violation) = self.controller.check_invariants() {
            panic!("at {}: engine invariant broken: {violation}", self.now);
        }
        let mut previous: Option<AgentId> = None;
        for ((agent, instance), pod) in &self.pods {
            assert!(
                !self.lost.contains(&pod.node),
                "pods of lost nodes are gone"
            );
            assert!(
                previous != Some(*agent),
                "at {}: two live copies of {agent} (the second is {instance})",
                self.now
            );
            previous = Some(*agent);
        }
        for node in self.controller.node_ids() {
            let view = self.controller.node(node).expect("listed");
            assert!(
                view.committed_bytes <= view.cap_bytes,
                "{node} over its overcommit cap"
            );
        }
    }

    // The driver.

    fn schedule(&mut self, after_ms: u64, event: Event) {
        self.sequence += 1;
        self.events
            .insert((self.now + Millis(after_ms), self.sequence), event);
    }

    fn arm_probe_tick(&mut self) {
        if !self.probe_tick_armed {
            self.probe_tick_armed = true;
            self.schedule(self.timing.probe_interval_ms, Event::ProbeTick);
        }
    }

    /// The agent's pod whose process is up (booting, healthy or hung).
    fn live_process(&self, agent: AgentId) -> Option<(AgentId, Instance)> {
        self.live_pods(agent)
            .into_iter()
            .find(|(_, pod)| {
                !pod.stopping
                    && matches!(
                        pod.process,
                        Process::Booting | Process::Healthy | Process::Hung
                    )
            })
            .map(|(instance, _)| (agent, instance))
    }

    fn live_pod(&self, agent: AgentId) -> Option<(AgentId, Instance)> {
        self.live_pods(agent)
            .into_iter()
            .find(|(_, pod)| !pod.stopping && pod.process != Process::Spawning)
            .map(|(instance, _)| (agent, instance))
    }

    fn feed(&mut self, input: Input) {
        let description = format!("{input:?}");
        self.controller
            .handle(self.now, input)
            .unwrap_or_else(|e| panic!("the controller refused the driver's {description}: {e}"));
        self.drain_controller();
    }

    fn feed_supervisor(&mut self, node: NodeId, input: SupervisorInput) {
        let Some(supervisor) = self.supervisors.get_mut(&node) else {
            return;
        };
        supervisor
            .handle(self.now, input)
            .unwrap_or_else(|e| panic!("{node}'s supervisor refused {input:?}: {e}"));
        self.drain_supervisor(node);
    }

    fn exit(&mut self, agent: AgentId, code: i32, oom_killed: bool) -> bool {
        let Some(key @ (agent, instance)) = self.live_process(agent) else {
            return false;
        };
        let pod = self.pods.get_mut(&key).expect("just found");
        pod.process = Process::Down;
        let (node, adopted) = (pod.node, pod.adopted);
        if adopted {
            self.feed_supervisor(
                node,
                SupervisorInput::Exited {
                    agent,
                    instance,
                    code,
                },
            );
        }
        self.feed(Input::AgentExited {
            agent,
            instance,
            code,
            oom_killed,
        });
        true
    }

    fn drain_controller(&mut self) {
        while let Some(command) = self.controller.poll_command() {
            self.log.push((self.now, command.clone()));
            self.carry_out(command);
        }
        let starting = self
            .pods
            .values()
            .filter(|p| p.epoch == 0 && matches!(p.process, Process::Spawning | Process::Booting))
            .count();
        self.peak_starting = self.peak_starting.max(starting);
    }

    fn drain_supervisor(&mut self, node: NodeId) {
        loop {
            let Some(supervisor) = self.supervisors.get_mut(&node) else {
                return;
            };
            let Some(command) = supervisor.poll_command() else {
                return;
            };
            self.supervisor_log.push((self.now, node, command));
            match command {
                SupervisorCommand::Restart {
                    agent, instance, ..
                } => self.respawn(agent, instance),
                SupervisorCommand::Escalate {
                    agent,
                    instance,
                    reason,
                } => self.feed(Input::Escalate {
                    agent,
                    instance,
                    reason,
                }),
            }
        }
    }

    fn carry_out(&mut self, command: Command) {
        match command {
            Command::Start {
                id,
                agent,
                instance,
                node,
                version,
                ..
            } => {
                assert!(
                    !self.lost.contains(&node) && self.supervisors.contains_key(&node),
                    "{agent} placed on {node}, which is lost or never joined"
                );
                assert!(
                    self.live_pods(agent).is_empty(),
                    "at {}: never two live copies: {agent} started as {instance} on {node} \
                     while {:?} still exists",
                    self.now,
                    self.live_pods(agent)
                );
                self.pods.insert(
                    (agent, instance),
                    Pod {
                        node,
                        version,
                        process: Process::Spawning,
                        epoch: 0,
                        memory_bytes: 0,
                        stopping: false,
                        start_command: id,
                        adopted: false,
                    },
                );
                self.schedule(self.timing.spawn_ms, Event::Spawned { agent, instance });
            }
            Command::Stop {
                id,
                agent,
                instance,
                node,
                ..
            } => {
                if let Some(pod) = self.pods.get_mut(&(agent, instance)) {
                    assert_eq!(pod.node, node, "a stop names the pod's node");
                    pod.stopping = true;
                    if pod.adopted {
                        pod.adopted = false;
                        self.feed_supervisor(node, SupervisorInput::Release { agent, instance });
                    }
                }
                if !self.lost.contains(&node) {
                    self.schedule(
                        self.timing.stop_ms,
                        Event::StopDone {
                            agent,
                            instance,
                            command: id,
                        },
                    );
                }
            }
            Command::TakeSnapshot { id, node, .. } => {
                self.schedule(
                    self.timing.snapshot_ms,
                    Event::SnapshotDone { node, command: id },
                );
            }
            Command::WarmUp { id, node, .. } => {
                // A blank instance boots like any other; its end is reported like a snapshot's.
                self.schedule(
                    self.timing.boot_ms,
                    Event::SnapshotDone { node, command: id },
                );
            }
            Command::Throttle { .. }
            | Command::Alert(_)
            | Command::ReportRollout { .. }
            | Command::Reject { .. } => {}
            other => panic!("the harness does not know {other:?}"),
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Spawned { agent, instance } => self.spawned(agent, instance),
            Event::Ready {
                agent,
                instance,
                epoch,
            } => {
                let Some(pod) = self.pods.get_mut(&(agent, instance)) else {
                    return;
                };
                if pod.epoch != epoch || pod.stopping || pod.process != Process::Booting {
                    return;
                }
                pod.process = Process::Healthy;
                let node = pod.node;
                self.feed_supervisor(node, SupervisorInput::ProbeSucceeded { agent, instance });
                self.feed(Input::ProbeSucceeded { agent, instance });
            }
            Event::Crash {
                agent,
                instance,
                epoch,
            } => {
                let current = self.pods.get(&(agent, instance)).is_some_and(|pod| {
                    pod.epoch == epoch
                        && matches!(
                            pod.process,
                            Process::Booting | Process::Healthy | Process::Hung
                        )
                });
                if current && self.live_process(agent) == Some((agent, instance)) {
                    self.exit(agent, 1, false);
                }
            }
            Event::StopDone {
                agent,
                instance,
                command,
            } => {
                // A pod on a node lost since is already gone, and so is its driver.
                let Some(pod) = self.pods.remove(&(agent, instance)) else {
                    return;
                };
                if self.lost.contains(&pod.node) {
                    return;
                }
                self.feed(Input::FinishCommand {
                    command,
                    outcome: Outcome::Succeeded,
                });
            }
            Event::SnapshotDone { node, command } => {
                if !self.lost.contains(&node) {
                    self.feed(Input::FinishCommand {
                        command,
                        outcome: Outcome::Succeeded,
                    });
                }
            }
            Event::ProbeTick => {
                self.probe_tick_armed = false;
                let hung: Vec<(AgentId, Instance, NodeId)> = self
                    .pods
                    .iter()
                    .filter(|(_, p)| p.process == Process::Hung && !p.stopping)
                    .map(|((a, i), p)| (*a, *i, p.node))
                    .collect();
                if hung.is_empty() {
                    return;
                }
                for (agent, instance, node) in hung {
                    if self.pods.get(&(agent, instance)).is_none_or(|p| p.stopping) {
                        continue;
                    }
                    self.feed_supervisor(node, SupervisorInput::ProbeFailed { agent, instance });
                    self.feed(Input::ProbeFailed { agent, instance });
                }
                self.arm_probe_tick();
            }
        }
    }

    fn spawned(&mut self, agent: AgentId, instance: Instance) {
        let Some(pod) = self.pods.get_mut(&(agent, instance)) else {
            return;
        };
        if pod.stopping {
            return;
        }
        let (node, version, command) = (pod.node, pod.version, pod.start_command);
        let config_invalid = self.invalid_configs.contains(&(agent, version));
        pod.process = if config_invalid {
            Process::ConfigRejected
        } else {
            pod.adopted = true;
            Process::Booting
        };
        self.feed(Input::FinishCommand {
            command,
            outcome: Outcome::Succeeded,
        });
        if config_invalid {
            self.feed(Input::RejectConfig {
                agent,
                instance,
                version,
            });
            return;
        }
        self.feed_supervisor(node, SupervisorInput::Adopt { agent, instance });
        self.feed(Input::AgentStarted { agent, instance });
        self.boot(agent, instance, self.timing.boot_ms);
    }

    fn respawn(&mut self, agent: AgentId, instance: Instance) {
        let Some(pod) = self.pods.get_mut(&(agent, instance)) else {
            return;
        };
        if pod.stopping {
            return;
        }
        pod.process = Process::Booting;
        pod.epoch += 1;
        self.boot(agent, instance, self.timing.restart_boot_ms);
    }

    fn boot(&mut self, agent: AgentId, instance: Instance, boot_ms: u64) {
        let pod = &self.pods[&(agent, instance)];
        let epoch = pod.epoch;
        let broken = self
            .broken
            .get(&agent)
            .is_some_and(|only| only.is_none_or(|v| v == pod.version));
        if broken {
            self.schedule(
                self.timing.crash_after_ms,
                Event::Crash {
                    agent,
                    instance,
                    epoch,
                },
            );
        } else {
            self.schedule(
                boot_ms,
                Event::Ready {
                    agent,
                    instance,
                    epoch,
                },
            );
        }
    }
}

// Builders.

pub const V1: Version = Version::new(1, 1);
pub const V2: Version = Version::new(2, 1);

/// An agent of 2 GiB limit, 1 GiB request, priority 5, at [`V1`].
pub fn agent(id: u32, tenant: u32) -> AgentSpec {
    AgentSpec {
        id: AgentId(id),
        tenant: TenantId(tenant),
        class: 0,
        priority: Priority(5),
        memory_bytes_limit: 2 * GIB,
        memory_bytes_request: GIB,
        version: V1,
        depends_on: Vec::new(),
        allowed_zones: Vec::new(),
    }
}

/// A node of `capacity_gib` GiB in `zone` (region 0).
pub fn node(id: u32, zone: u32, capacity_gib: u64) -> NodeSpec {
    NodeSpec {
        id: NodeId(id),
        region: RegionId(0),
        zone: ZoneId(zone),
        memory_bytes_capacity: capacity_gib * GIB,
    }
}

/// A fleet of `nodes` nodes of 16 GiB, spread over `zones` zones (node `n` in zone `n % zones`).
pub fn fleet_with_nodes(config: EngineConfig, nodes: u32, zones: u32) -> Fleet {
    let mut fleet = Fleet::new(config);
    for n in 0..nodes {
        fleet.join(node(n, n % zones, 16));
    }
    fleet
}

/// Runs until every listed agent is `Running`, or panics after `limit_ms`.
pub fn settle(fleet: &mut Fleet, agents: &[AgentId], limit_ms: u64) {
    let ok = fleet.run_while_not(limit_ms, |f| {
        agents
            .iter()
            .all(|a| f.status(*a) == Some(AgentStatus::Running))
    });
    assert!(
        ok,
        "agents not running after {limit_ms} ms: {:?}",
        agents
            .iter()
            .map(|a| (a, fleet.status(*a)))
            .collect::<Vec<_>>()
    );
}

/// Every agent's public view, for "a refused input changed nothing" comparisons.
pub fn views(controller: &Controller) -> String {
    let agents: Vec<_> = controller
        .agent_ids()
        .map(|id| (id, controller.agent(id)))
        .collect();
    let nodes: Vec<_> = controller
        .node_ids()
        .map(|id| (id, controller.node(id)))
        .collect();
    format!(
        "{agents:?}\n{nodes:?}\nnext_deadline={:?}\ntimers={}",
        controller.next_deadline(),
        controller.pending_timers()
    )
}
