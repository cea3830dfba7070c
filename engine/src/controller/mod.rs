//! The cluster-side state machine: rungs 2–4 of the recovery ladder, placement, density,
//! versions and rollouts.

mod density;
mod dependencies;
mod desired;
mod invariants;
mod lifecycle;
mod nodes;
mod observations;
mod placement;
mod recovery;
mod rollout;
mod state;
mod storm;
mod tenants;
mod topology;

pub use invariants::InvariantViolation;
pub use topology::Domain;

use crate::command::Command;
use crate::command_map::CommandMap;
use crate::config::EngineConfig;
use crate::error::{ConfigError, EngineError};
use crate::id::{AgentId, CommandId, Instance, NodeId, RolloutId, SnapshotId};
use crate::input::Input;
use crate::time::Millis;
use crate::timer::Timers;
use dependencies::Dependencies;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rollout::Rollout;
use serde::{Deserialize, Serialize};
use state::{Agent, Node};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use storm::{StartQueue, TokenBucket};
use tenants::Tenants;
use topology::Topology;

/// The RNG stream the controller draws from; other components of a run use other streams of
/// the same seed, so adding one never shifts another's draws.
pub const CONTROLLER_RNG_STREAM: u64 = 1;

/// Decides placement, density and recovery for a fleet. Pure: no IO, no clock, no threads.
///
/// # Driving it
/// The caller owns time and IO; the controller owns decisions.
/// 1. Feed each observation or desired-state change with [`handle`](Self::handle), in the order
///    they happened, never with an earlier time than the last call.
/// 2. Drain [`poll_command`](Self::poll_command) until it returns `None`, and carry each command
///    out. Commands that take time report back with [`Input::FinishCommand`].
/// 3. When [`next_deadline`](Self::next_deadline) passes, call
///    [`handle_timeout`](Self::handle_timeout) (spurious calls are no-ops), then drain again.
///
/// The same config and the same inputs at the same times produce the same commands, on any
/// machine: every map iterates in key order and randomness comes from a seeded ChaCha stream.
#[derive(Debug)]
pub struct Controller {
    config: EngineConfig,
    now: Millis,
    /// Dense by agent id, boxed: ids are never reused, so a long-lived fleet with churn holds
    /// many empty slots, and a slot of a removed agent (or of the growth slack) should cost a
    /// pointer, not a whole `Agent` (hundreds of bytes).
    agents: Vec<Option<Box<Agent>>>,
    agent_count: u32,
    /// Dense by node id.
    nodes: Vec<Option<Node>>,
    tenants: Tenants,
    topology: Topology,
    dependencies: Dependencies,
    timers: Timers<Timer>,
    commands: VecDeque<Command>,
    last_command: u64,
    in_flight: CommandMap<InFlight>,
    queue: StartQueue,
    /// Agents that found no node, offered placement again on a timer.
    unplaced: BTreeSet<AgentId>,
    /// Agents waiting for a dependency to run.
    awaiting_dependencies: BTreeSet<AgentId>,
    retry_armed: bool,
    pump_armed_at: Option<Millis>,
    bucket: TokenBucket,
    starting: u32,
    rollouts: BTreeMap<RolloutId, Rollout>,
    /// The runtime warm pools are booted with: the first agent's.
    warm_runtime: Option<u32>,
    /// Warm-ups under way, by command.
    warming: BTreeMap<CommandId, NodeId>,
    rng: ChaCha8Rng,
    /// Reused by placement so that scoring allocates nothing.
    scores: Vec<i64>,
    zone_penalties: Vec<i64>,
    stats: ControllerStats,
}

/// Running totals, for reports and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStats {
    pub inputs: u64,
    pub stale_inputs: u64,
    pub commands: u64,
    pub placements: u64,
    pub placement_failures: u64,
    pub migrations: u64,
    pub throttles: u64,
    pub evictions: u64,
    pub alerts: u64,
    pub known_good_marks: u64,
    /// Incidents closed by each rung (index 0 is rung 1).
    pub resolved_by_rung: [u64; 3],
}

/// A public, coarse view of an agent's phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Queued,
    Starting,
    Running,
    Restarting,
    Stopping,
    Parked,
}

/// A public view of one agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    pub status: AgentStatus,
    pub tenant: crate::TenantId,
    pub instance: Instance,
    pub node: Option<NodeId>,
    /// The version the agent runs (or is starting at).
    pub version: crate::Version,
    /// The version it should run: ahead of `version` while a change or a rollout's wave is
    /// under way, back to the old one after a rollback.
    pub desired_version: crate::Version,
    pub known_good: Option<crate::Version>,
    pub latest_snapshot: Option<SnapshotId>,
    pub rung: Option<crate::Rung>,
    pub reservation_bytes: u64,
    pub deadline: Option<Millis>,
}

/// A public view of one node's memory accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub capacity_bytes: u64,
    pub cap_bytes: u64,
    pub committed_bytes: u64,
    pub reserved_bytes: u64,
    pub used_bytes: u64,
    pub agents: u32,
    pub lost: bool,
    pub draining: bool,
    /// Blank instances idle in the node's warm pool.
    pub warm: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The agent's phase deadline.
    Deadline {
        agent: AgentId,
        generation: u32,
    },
    /// Healthy long enough to be known-good.
    Dwell {
        agent: AgentId,
        generation: u32,
    },
    Snapshot {
        agent: AgentId,
        generation: u32,
    },
    Heartbeat {
        node: NodeId,
    },
    /// The start queue may be pumped again (token bucket refilled).
    Pump,
    /// Offer unplaced agents a node again.
    RetryPlacement,
    /// A failed stop is tried again.
    /// Move the next agents off a draining node.
    Drain {
        node: NodeId,
    },
    RetryStop {
        agent: AgentId,
        generation: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    agent: AgentId,
    instance: Instance,
    kind: InFlightKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InFlightKind {
    Start,
    Stop {
        snapshot: Option<SnapshotId>,
    },
    Snapshot {
        snapshot: SnapshotId,
        known_good: bool,
    },
}

impl Controller {
    /// A controller with no nodes and no agents.
    pub fn new(config: EngineConfig) -> Result<Controller, ConfigError> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(CONTROLLER_RNG_STREAM);
        let bucket = TokenBucket::new(&config.storm);
        Ok(Controller {
            config,
            now: Millis::ZERO,
            agents: Vec::new(),
            agent_count: 0,
            nodes: Vec::new(),
            tenants: Tenants::default(),
            topology: Topology::default(),
            dependencies: Dependencies::default(),
            timers: Timers::default(),
            commands: VecDeque::new(),
            last_command: 0,
            in_flight: CommandMap::default(),
            queue: StartQueue::default(),
            unplaced: BTreeSet::new(),
            awaiting_dependencies: BTreeSet::new(),
            retry_armed: false,
            pump_armed_at: None,
            bucket,
            starting: 0,
            rollouts: BTreeMap::new(),
            warm_runtime: None,
            warming: BTreeMap::new(),
            rng,
            scores: Vec::new(),
            zone_penalties: Vec::new(),
            stats: ControllerStats::default(),
        })
    }

    // Getters.

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn stats(&self) -> &ControllerStats {
        &self.stats
    }

    pub fn agent_count(&self) -> u32 {
        self.agent_count
    }

    /// Ids of every desired agent, ascending.
    pub fn agent_ids(&self) -> impl Iterator<Item = AgentId> + '_ {
        self.agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.is_some())
            .map(|(i, _)| AgentId(i as u32))
    }

    pub fn agent(&self, id: AgentId) -> Option<AgentView> {
        let agent = self.agents.get(id.index())?.as_ref()?;
        Some(AgentView {
            status: match agent.phase {
                state::Phase::Queued { .. } => AgentStatus::Queued,
                state::Phase::Starting { .. } => AgentStatus::Starting,
                state::Phase::Running => AgentStatus::Running,
                state::Phase::Restarting => AgentStatus::Restarting,
                state::Phase::Stopping { .. } => AgentStatus::Stopping,
                state::Phase::Parked => AgentStatus::Parked,
            },
            tenant: agent.spec.tenant,
            instance: agent.instance,
            node: agent.node,
            version: agent.version,
            desired_version: agent.spec.version,
            known_good: agent.snapshots.known_good.map(|(v, _)| v),
            latest_snapshot: agent.snapshots.latest,
            rung: agent.incident.map(|i| i.rung),
            reservation_bytes: agent.reservation_bytes,
            deadline: agent.deadline,
        })
    }

    /// Ids of every node that joined (lost ones included), ascending.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_some())
            .map(|(i, _)| NodeId(i as u32))
    }

    pub fn node(&self, id: NodeId) -> Option<NodeView> {
        let node = self.nodes.get(id.index())?.as_ref()?;
        Some(NodeView {
            capacity_bytes: node.spec.memory_bytes_capacity,
            cap_bytes: node.cap_bytes,
            committed_bytes: node.committed_bytes,
            reserved_bytes: node.reserved_bytes,
            used_bytes: node.used_bytes,
            agents: node.agents.len() as u32,
            warm: node.warm,
            lost: node.state == state::NodeState::Lost,
            draining: node.state == state::NodeState::Draining,
        })
    }

    /// The blast radius of a failure domain: the agents whose pods are on its nodes,
    /// ascending.
    pub fn blast_radius(&self, domain: Domain) -> Vec<AgentId> {
        let mut agents: Vec<AgentId> = self
            .topology
            .nodes_in(domain)
            .into_iter()
            .filter_map(|n| self.nodes.get(n.index()).and_then(Option::as_ref))
            .flat_map(|n| n.agents.iter().copied())
            .collect();
        agents.sort_unstable();
        agents
    }

    /// Agents waiting for a node (in line, without room, or for a dependency).
    pub fn queued_agents(&self) -> u32 {
        self.agents
            .iter()
            .flatten()
            .filter(|a| matches!(a.phase, state::Phase::Queued { .. }))
            .count() as u32
    }

    /// Timers pending (stale ones included): a measure of the controller's own cost.
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    // Handlers.

    /// Feeds one input at time `now`. A refused input changes nothing.
    pub fn handle(&mut self, now: Millis, input: Input) -> Result<(), EngineError> {
        if now < self.now {
            return Err(EngineError::TimeWentBackwards {
                now: self.now,
                got: now,
            });
        }
        // A refused input must change nothing, the clock included: otherwise it would pump
        // the start queue at its time, and a journal replayed without it would decide
        // differently. Handlers refuse before they mutate, so restoring the clock suffices.
        let before = self.now;
        self.now = now;
        self.stats.inputs += 1;
        let result = self.dispatch(input);
        if result.is_err() {
            self.now = before;
            return result;
        }
        self.pump_queue();
        result
    }

    /// The next decision, if any. Drain until `None` after every `handle*` call.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called, if ever.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.next_deadline()
    }

    /// Fires every timer due at or before `now`. Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Millis) -> Result<(), EngineError> {
        if now < self.now {
            return Err(EngineError::TimeWentBackwards {
                now: self.now,
                got: now,
            });
        }
        self.now = now;
        while let Some(timer) = self.timers.pop_due(now) {
            self.fire(timer);
        }
        self.pump_queue();
        Ok(())
    }

    fn dispatch(&mut self, input: Input) -> Result<(), EngineError> {
        match input {
            Input::CreateAgent(spec) => self.create_agent(spec),
            Input::UpdateAgent(spec) => self.update_agent(spec),
            Input::RemoveAgent { agent } => self.remove_agent(agent),
            Input::StartRollout(spec) => self.start_rollout(spec),
            Input::JoinNode(spec) => self.join_node(spec),
            Input::DrainNode { node } => self.drain_node(node),
            Input::HeartbeatNode { node } => self.heartbeat_node(node),
            Input::LoseNode { node } => self.lose_node(node),
            Input::AgentStarted { agent, instance } => {
                self.current(agent, instance)?;
                Ok(())
            }
            Input::AgentExited {
                agent,
                instance,
                code,
                oom_killed,
            } => self.on_exited(agent, instance, code, oom_killed),
            Input::ProbeSucceeded { agent, instance } => self.on_healthy(agent, instance),
            Input::ProbeFailed { agent, instance } => self.on_probe_failed(agent, instance),
            Input::SampleMemory {
                agent,
                instance,
                memory_bytes,
            } => self.on_memory(agent, instance, memory_bytes),
            Input::RejectConfig {
                agent,
                instance,
                version,
            } => self.on_config_rejected(agent, instance, version),
            Input::Escalate {
                agent,
                instance,
                reason,
            } => self.on_escalated(agent, instance, reason),
            Input::FinishCommand { command, outcome } => {
                self.on_finished(command, outcome);
                Ok(())
            }
        }
    }

    fn fire(&mut self, timer: Timer) {
        match timer {
            Timer::Deadline { agent, generation } => {
                if self.generation_matches(agent, generation) {
                    self.on_deadline(agent);
                }
            }
            Timer::Dwell { agent, generation } => {
                if self.generation_matches(agent, generation) {
                    self.on_dwell(agent);
                }
            }
            Timer::Snapshot { agent, generation } => {
                if self.generation_matches(agent, generation) {
                    self.on_snapshot_due(agent);
                }
            }
            Timer::RetryStop { agent, generation } => {
                if self.generation_matches(agent, generation) {
                    self.retry_stop(agent);
                }
            }
            Timer::Heartbeat { node } => self.check_heartbeat(node),
            Timer::Pump => self.pump_armed_at = None,
            Timer::Drain { node } => self.continue_drain(node),
            Timer::RetryPlacement => {
                self.retry_armed = false;
                let unplaced = std::mem::take(&mut self.unplaced);
                for agent in unplaced {
                    self.requeue(agent);
                }
            }
        }
    }

    fn generation_matches(&self, agent: AgentId, generation: u32) -> bool {
        self.agent_ref(agent)
            .is_some_and(|a| a.generation == generation)
    }

    fn agent_ref(&self, id: AgentId) -> Option<&Agent> {
        self.agents.get(id.index())?.as_deref()
    }

    fn agent_mut(&mut self, id: AgentId) -> Option<&mut Agent> {
        self.agents.get_mut(id.index())?.as_deref_mut()
    }

    /// Agents are looked up by callers that just checked they exist.
    fn agent_expect(&mut self, id: AgentId) -> &mut Agent {
        self.agent_mut(id)
            .unwrap_or_else(|| panic!("invariant: {id} is desired while the controller acts on it"))
    }

    fn node_expect(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .unwrap_or_else(|| panic!("invariant: {id} joined before anything was placed on it"))
    }

    /// `Ok(true)` when `instance` is the agent's current one; `Ok(false)` for a stale report.
    fn current(&mut self, agent: AgentId, instance: Instance) -> Result<bool, EngineError> {
        let a = self
            .agent_ref(agent)
            .ok_or(EngineError::UnknownAgent(agent))?;
        let current = a.instance == instance && a.holds_node();
        if !current {
            self.stats.stale_inputs += 1;
        }
        Ok(current)
    }

    fn next_command_id(&mut self) -> CommandId {
        self.last_command += 1;
        CommandId(self.last_command)
    }

    fn emit(&mut self, command: Command) {
        self.stats.commands += 1;
        self.commands.push_back(command);
    }

    fn arm_agent_timer(&mut self, at: Millis, make: impl FnOnce(u32) -> Timer, agent: AgentId) {
        let generation = self.agent_expect(agent).generation;
        self.timers.set(at, make(generation));
    }

    /// An agent's next snapshot, one snapshot interval from now: set in deadline order, so it
    /// rides the timers' FIFO lane.
    fn arm_snapshot_timer(&mut self, at: Millis, agent: AgentId) {
        let generation = self.agent_expect(agent).generation;
        self.timers
            .set_in_order(at, Timer::Snapshot { agent, generation });
    }
}
