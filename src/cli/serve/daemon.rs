//! The daemon's state and its one loop: the engine's Controller, fed every observation with
//! its time, every decision journaled before it is carried out.
//!
//! Write-ahead: an input and the commands it produced are committed to the store in one
//! transaction, then the commands run. A daemon killed at any moment restarts by replaying
//! the journal through a fresh Controller — the engine is deterministic, so it arrives at
//! exactly the state it had — then redoes the commands that had not finished and reattaches
//! to the pods that kept running.

use super::agents::AgentRecord;
use super::clock::DaemonClock;
use super::driver::ProcessDriver;
use super::durable::Durable;
use super::feed::{FeedEntry, FeedKind, describe};
use crate::cli::journal::{command_kind, recorded_policy};
use carapace_engine::{
    AgentId, Command, CommandId, Controller, EngineConfig, EngineError, Input, Instance, Millis,
    NodeId, NodeSpec, Outcome, PostMortem, RegionId, RolloutState, ZoneId,
};
use carapace_store::{Batch, JournalEntry, JournalRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The one machine this daemon runs pods on.
pub const LOCAL_NODE: NodeId = NodeId(0);
/// Desired-state kinds in the store.
pub(super) const AGENTS: &str = "agent";
pub(super) const CONFIGS: &str = "config";
pub(super) const CURSORS: &str = "cursor";
/// Bounds on what the daemon keeps in memory for the API.
pub(super) const MAX_ALERTS: usize = 1_000;
pub(super) const MAX_EVENTS: usize = 10_000;
/// Entries a slow event-stream client may fall behind by before it is told it lagged.
const FEED_STREAM_BACKLOG: usize = 1_024;

/// How far the daemon has read one pod's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Cursor {
    pub(super) instance: Instance,
    pub(super) seq: u64,
}

/// What the journal replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    pub records: u64,
    /// Commands the replayed engine issued differently from the journal (0 when the engine
    /// is the one that wrote it).
    pub divergences: u64,
    pub dropped: Option<String>,
}

#[derive(Debug)]
pub struct Daemon {
    pub controller: Controller,
    pub(super) store: Durable,
    /// Set in cluster mode (`serve --etcd`): the nodes and the link to them.
    pub(super) cluster: Option<super::cluster::Cluster>,
    pub clock: DaemonClock,
    pub driver: ProcessDriver,
    pub agents: BTreeMap<AgentId, AgentRecord>,
    /// Agent names, per tenant: each tenant has a namespace of its own.
    pub(super) names: BTreeMap<(u32, String), AgentId>,
    /// Tenants' token hashes, shared with the HTTP layer.
    pub keys: super::tenants::Keys,
    pub(super) tenants: BTreeMap<u32, super::tenants::TenantRecord>,
    pub(super) vault: super::secrets::Vault,
    /// Each agent's secrets, sealed.
    pub(super) secrets: BTreeMap<AgentId, super::secrets::AgentSecrets>,
    pub(super) configs: BTreeMap<(AgentId, u32), String>,
    pub(super) cursors: BTreeMap<AgentId, Cursor>,
    /// Commands issued and not finished, by id: redone after a restart.
    pub(super) in_flight: BTreeMap<CommandId, Command>,
    /// The start command each new instance's first event finishes.
    pub(super) pending_starts: BTreeMap<(AgentId, Instance), CommandId>,
    pub alerts: VecDeque<PostMortem>,
    /// The last process each agent's pod spawned, for operators and chaos.
    pub agent_pids: BTreeMap<AgentId, (Instance, u32)>,
    pub feed: VecDeque<FeedEntry>,
    /// Each agent's recent memory samples, for the dashboard.
    pub(super) memory: super::memory::MemoryHistory,
    /// Each new feed entry, for the API's event streams.
    pub feed_live: tokio::sync::broadcast::Sender<FeedEntry>,
    pub(super) feed_seq: u64,
    /// The id the next agent gets: kept in the store's metadata, written by this daemon only.
    pub(super) next_agent: u32,
    pub replayed: Replayed,
    pub journal_records: u64,
    /// Rollouts started through the API, with what the engine reported of them.
    pub(super) rollouts: super::rollouts::Rollouts,
}

impl Daemon {
    /// Opens the store and replays its journal. On one machine (`local_node_memory_bytes`
    /// given) the machine joins as the engine's one node; in a cluster (`cluster` given) the
    /// nodes are the registrations etcd holds.
    pub fn open(
        store: Durable,
        policy: EngineConfig,
        local_node_memory_bytes: Option<u64>,
        driver: ProcessDriver,
        vault: super::secrets::Vault,
        cluster: Option<super::cluster::Cluster>,
    ) -> anyhow::Result<Daemon> {
        let recorded = recorded_policy(&store)?;
        if let Some(recorded) = &recorded
            && recorded != &policy
        {
            return Err(PolicyChanged.into());
        }
        let controller = Controller::new(policy.clone())?;
        let clock = DaemonClock::new(store.epoch_unix_ms(), Millis::ZERO);
        let mut daemon = Daemon {
            controller,
            store,
            clock,
            driver,
            cluster,
            agents: BTreeMap::new(),
            names: BTreeMap::new(),
            keys: super::tenants::Keys::default(),
            tenants: BTreeMap::new(),
            vault,
            secrets: BTreeMap::new(),
            configs: BTreeMap::new(),
            cursors: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            pending_starts: BTreeMap::new(),
            alerts: VecDeque::new(),
            agent_pids: BTreeMap::new(),
            feed: VecDeque::new(),
            memory: super::memory::MemoryHistory::default(),
            feed_live: tokio::sync::broadcast::channel(FEED_STREAM_BACKLOG).0,
            feed_seq: 0,
            next_agent: 0,
            replayed: Replayed::default(),
            journal_records: 0,
            rollouts: super::rollouts::Rollouts::default(),
        };
        daemon.load_desired()?;
        daemon.replay()?;
        daemon.follow_engine_versions();
        if let Some(cluster) = &mut daemon.cluster {
            cluster.replaying = false;
        }
        daemon.clock = DaemonClock::new(daemon.store.epoch_unix_ms(), daemon.controller.now());
        if recorded.is_none() {
            let mut batch = Batch::new();
            batch.put_meta("policy", &serde_json::to_vec(&policy)?);
            daemon.store.commit(batch)?;
        }
        if let Some(memory) = local_node_memory_bytes
            && daemon.controller.node(LOCAL_NODE).is_none()
        {
            let spec = NodeSpec {
                id: LOCAL_NODE,
                region: RegionId(0),
                zone: ZoneId(0),
                memory_bytes_capacity: memory,
            };
            daemon.apply(Input::JoinNode(spec), Batch::new())?;
        }
        Ok(daemon)
    }

    pub(super) fn load_desired(&mut self) -> anyhow::Result<()> {
        for (_, record) in self.store.desired::<AgentRecord>(AGENTS)? {
            self.names.insert(
                (record.request.tenant, record.request.name.clone()),
                record.id,
            );
            self.agents.insert(record.id, record);
        }
        for (_, tenant) in self
            .store
            .desired::<super::tenants::TenantRecord>(super::tenants::TENANTS)?
        {
            self.keys.insert(&tenant);
            self.tenants.insert(tenant.id, tenant);
        }
        for (key, text) in self.store.desired::<String>(CONFIGS)? {
            self.configs
                .insert((AgentId((key >> 32) as u32), key as u32), text);
        }
        for (id, sealed) in self
            .store
            .desired::<super::secrets::AgentSecrets>(super::secrets::SECRETS)?
        {
            self.secrets.insert(AgentId(id as u32), sealed);
        }
        for (id, cursor) in self.store.desired::<Cursor>(CURSORS)? {
            self.cursors.insert(AgentId(id as u32), cursor);
        }
        self.load_rollouts()?;
        self.next_agent = self
            .store
            .meta("next_agent")?
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        self.load_members()
    }

    // The engine.

    /// Feeds one input now; journals it with the commands it produced and `batch`'s
    /// desired-state changes in one transaction; then carries the commands out. A refused
    /// input changes nothing, in the engine or in the store.
    pub fn apply(&mut self, input: Input, mut batch: Batch) -> Result<(), ApplyError> {
        let now = self.clock.now();
        self.controller.handle(now, input.clone())?;
        self.note_finished(&input);
        batch.append(&JournalRecord::new(now, JournalEntry::Input(input)));
        self.commit_and_execute(now, batch)
    }

    /// Fires the engine's timers when due.
    pub fn tick(&mut self) -> Result<(), ApplyError> {
        let now = self.clock.now();
        if self.controller.next_deadline().is_none_or(|at| at > now) {
            return Ok(());
        }
        self.controller.handle_timeout(now)?;
        let mut batch = Batch::new();
        batch.append(&JournalRecord::new(now, JournalEntry::Timeout));
        self.commit_and_execute(now, batch)
    }

    pub(super) fn commit_and_execute(
        &mut self,
        now: Millis,
        mut batch: Batch,
    ) -> Result<(), ApplyError> {
        let commands: Vec<Command> =
            std::iter::from_fn(|| self.controller.poll_command()).collect();
        for command in &commands {
            batch.append(&JournalRecord::new(
                now,
                JournalEntry::Command(command.clone()),
            ));
        }
        let records = batch.journal_records() as u64;
        self.commit_or_stop(batch);
        self.journal_records += records;
        for command in commands {
            self.note_issued(now, &command);
            self.execute(command);
        }
        Ok(())
    }

    /// Commits a step the engine has taken. The engine has moved on: a journal that cannot
    /// be written is a broken invariant of this daemon, which must stop rather than act on
    /// decisions it cannot replay; and a controller that no longer leads stops deciding —
    /// the next leader replays the journal as it stands in etcd.
    pub(super) fn commit_or_stop(&mut self, batch: Batch) {
        match self.store.commit(batch) {
            Ok(_) => {}
            Err(error) if error.deposed() => {
                eprintln!("carapace serve: {error}; stopping (a restart campaigns again)");
                std::process::exit(i32::from(crate::cli::EXIT_DEPOSED));
            }
            Err(error) => panic!("invariant: the journal accepts every step: {error}"),
        }
    }

    /// Bookkeeping of a command, live or replayed.
    pub(super) fn note_issued(&mut self, at: Millis, command: &Command) {
        self.note_placed(command);
        if let Command::ReportRollout { rollout, state } = command {
            self.note_rollout(*rollout, *state);
        }
        if let Some(id) = command.id() {
            self.in_flight.insert(id, command.clone());
        }
        if let Command::Start {
            id,
            agent,
            instance,
            ..
        } = command
        {
            self.pending_starts.insert((*agent, *instance), *id);
        }
        let what = describe(command);
        self.push_feed(
            at,
            command.agent(),
            command_instance(command),
            FeedKind::Decision,
            command_kind(command),
            what,
        );
        if let Command::Alert(post_mortem) = command {
            if self.alerts.len() == MAX_ALERTS {
                self.alerts.pop_front();
            }
            self.alerts.push_back((**post_mortem).clone());
        }
    }

    pub(super) fn note_finished(&mut self, input: &Input) {
        let Input::FinishCommand { command, .. } = input else {
            return;
        };
        match self.in_flight.remove(command) {
            Some(Command::Start {
                agent, instance, ..
            }) => {
                self.pending_starts.remove(&(agent, instance));
            }
            Some(Command::Stop {
                agent, instance, ..
            }) => {
                self.driver.release_port(agent, instance);
                self.note_unplaced(agent, instance);
            }
            _ => {}
        }
    }

    pub(super) fn push_feed(
        &mut self,
        at: Millis,
        agent: Option<AgentId>,
        instance: Option<Instance>,
        kind: FeedKind,
        event: &'static str,
        what: String,
    ) {
        let entry = self.feed_entry(at, agent, instance, kind, event, what);
        self.publish(entry);
    }

    /// A feed entry, its seq still to be given by [`Daemon::publish`].
    pub(super) fn feed_entry(
        &self,
        at: Millis,
        agent: Option<AgentId>,
        instance: Option<Instance>,
        kind: FeedKind,
        event: &'static str,
        what: String,
    ) -> FeedEntry {
        let record = agent.and_then(|a| self.agents.get(&a));
        let tenant = record.map(|r| r.request.tenant);
        let agent = agent.map(|a| record.map_or_else(|| a.to_string(), |r| r.request.name.clone()));
        FeedEntry {
            seq: 0,
            at_ms: at.0,
            agent,
            instance: instance.map(|i| i.0),
            tenant,
            kind,
            event,
            what,
            pod_ms: None,
        }
    }

    /// Numbers `entry` and puts it on the feed and its live stream.
    pub(super) fn publish(&mut self, mut entry: FeedEntry) {
        self.feed_seq += 1;
        entry.seq = self.feed_seq;
        if self.feed.len() == MAX_EVENTS {
            self.feed.pop_front();
        }
        // No subscriber is no error: streams come and go.
        let _ = self.feed_live.send(entry.clone());
        self.feed.push_back(entry);
    }

    /// Carries one command out: through this machine's process driver, or as assignments to
    /// the cluster's nodes.
    pub(super) fn execute(&mut self, command: Command) {
        if let Command::ReportRollout {
            state: RolloutState::RolledBack { .. },
            ..
        } = command
        {
            self.follow_engine_versions();
        }
        if self.cluster.is_some() {
            self.execute_on_cluster(command);
        } else {
            self.execute_local(command);
        }
    }

    /// Carries one command out through this machine's process driver.
    pub(super) fn execute_local(&mut self, command: Command) {
        match command {
            Command::Start {
                id,
                agent,
                instance,
                version,
                snapshot,
                warm,
                ..
            } => {
                let Some(record) = self.agents.get(&agent).cloned() else {
                    self.driver_finished(id, Outcome::Failed);
                    return;
                };
                let config = self.configs.get(&(agent, version.config)).cloned();
                let secrets = self.opened_secrets(agent);
                if warm {
                    // Secrets go into the environment and a snapshot into the state
                    // directory, neither of which a running standby can take.
                    let fits = secrets.is_empty() && snapshot.is_none();
                    let taken =
                        self.driver
                            .take_standby(id, &record, instance, config.as_deref(), fits);
                    if let super::warm::Taken::Adopting = taken {
                        return;
                    }
                }
                self.driver
                    .start(id, &record, instance, config, snapshot, secrets);
            }
            Command::Stop {
                id,
                agent,
                instance,
                snapshot,
                ..
            } => self.driver.stop(id, agent, instance, snapshot),
            Command::TakeSnapshot {
                id,
                agent,
                instance,
                snapshot,
                ..
            } => self.driver.snapshot(id, agent, instance, snapshot),
            Command::Throttle {
                agent,
                instance,
                memory_bytes_high,
                ..
            } => self.driver.throttle(agent, instance, memory_bytes_high),
            Command::WarmUp { id, .. } => self.driver.warm_up(id),
            Command::Alert(post_mortem) => {
                tracing::error!(agent = %post_mortem.agent, cause = ?post_mortem.cause, "critical alert: the agent is parked");
            }
            Command::ReportRollout { rollout, state } => {
                tracing::info!(%rollout, ?state, "rollout");
            }
            Command::Reject { reason } => tracing::warn!(%reason, "the engine refused an input"),
            other => tracing::warn!(command = ?other, "a command this driver does not know"),
        }
    }

    /// A standby could not be adopted: the start it served goes on as a cold one.
    pub(super) fn start_cold(&mut self, command: CommandId) {
        let Some(Command::Start {
            id,
            agent,
            instance,
            version,
            snapshot,
            ..
        }) = self.in_flight.get(&command).cloned()
        else {
            return;
        };
        let Some(record) = self.agents.get(&agent).cloned() else {
            self.driver_finished(id, Outcome::Failed);
            return;
        };
        let config = self.configs.get(&(agent, version.config)).cloned();
        let secrets = self.opened_secrets(agent);
        self.driver
            .start(id, &record, instance, config, snapshot, secrets);
    }

    /// An agent's secrets, opened to hand to its pod. One that does not open (another key)
    /// is left out and logged by name: the agent starts without it rather than not at all.
    pub(super) fn opened_secrets(&self, agent: AgentId) -> Vec<(String, String)> {
        let Some(sealed) = self.secrets.get(&agent) else {
            return Vec::new();
        };
        sealed
            .iter()
            .filter_map(
                |(name, sealed)| match self.vault.open(agent, name, sealed) {
                    Ok(bytes) => String::from_utf8(bytes).ok().map(|v| (name.clone(), v)),
                    Err(error) => {
                        tracing::error!(%error, "a secret was left out");
                        None
                    }
                },
            )
            .collect()
    }

    /// Reported through the driver's channel, not applied here: `execute` runs inside a
    /// step, and a step does not nest.
    pub(super) fn driver_finished(&mut self, command: CommandId, outcome: Outcome) {
        self.driver.report_finished(command, outcome);
    }
}

/// The instance a command acts on, if it acts on one.
fn command_instance(command: &Command) -> Option<Instance> {
    match command {
        Command::Start { instance, .. }
        | Command::Stop { instance, .. }
        | Command::TakeSnapshot { instance, .. }
        | Command::Throttle { instance, .. } => Some(*instance),
        _ => None,
    }
}

pub(super) fn config_key(agent: AgentId, config_version: u32) -> u64 {
    (u64::from(agent.0) << 32) | u64::from(config_version)
}

/// The config's `[policy]` is not the one the journal was recorded under: bad input, which
/// changes nothing.
#[derive(Debug, thiserror::Error)]
#[error(
    "field `policy`: the [policy] table differs from the one this store's journal was \
     recorded under; the journal replays only under its own policy (start with the old policy, \
     or with a new data_dir)"
)]
pub struct PolicyChanged;

/// Why an input was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// An API request that could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the engine refused: {0}")]
    Refused(String),
    /// Over a quota or a rate: 429, with when to try again.
    #[error("{message}")]
    TooMany { message: String, retry_after_s: u64 },
}

impl From<ApplyError> for ApiError {
    fn from(error: ApplyError) -> ApiError {
        ApiError::Refused(error.to_string())
    }
}
