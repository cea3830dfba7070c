//! The daemon's state and its one loop: the engine's Controller, fed every observation with
//! its time, every decision journaled before it is carried out.
//!
//! Write-ahead: an input and the commands it produced are committed to the store in one
//! transaction, then the commands run. A daemon killed at any moment restarts by replaying
//! the journal through a fresh Controller — the engine is deterministic, so it arrives at
//! exactly the state it had — then redoes the commands that had not finished and reattaches
//! to the pods that kept running.

use super::agents::{AgentRecord, AgentRequest, RUNTIME, next_version};
use super::driver::{ProcessDriver, Report};
use crate::cli::journal::{Replayer, Step, command_kind, for_each_record, recorded_policy};
use carapace_drivers::supervise::Event;
use carapace_engine::{
    AgentId, AgentStatus, Command, CommandId, Controller, EngineConfig, EngineError, Input,
    Instance, Millis, NodeId, NodeSpec, Outcome, PostMortem, RegionId, Version, ZoneId,
};
use carapace_store::{Batch, JournalEntry, JournalRecord, Store};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// The one machine this daemon runs pods on.
pub const LOCAL_NODE: NodeId = NodeId(0);
/// Desired-state kinds in the store.
const AGENTS: &str = "agent";
const CONFIGS: &str = "config";
const CURSORS: &str = "cursor";
/// Bounds on what the daemon keeps in memory for the API.
const MAX_ALERTS: usize = 1_000;
const MAX_EVENTS: usize = 10_000;

/// How far the daemon has read one pod's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    instance: Instance,
    seq: u64,
}

/// One entry of the daemon's event feed (`GET /v1/events`).
#[derive(Clone, Debug, Serialize)]
pub struct FeedEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub agent: Option<String>,
    /// `observation` (what a pod reported) or `decision` (a command of the engine).
    pub kind: FeedKind,
    /// A short machine-readable name: `exited`, `ready`, `start`, `stop`, `alert`, ...
    pub event: &'static str,
    pub what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedKind {
    Observation,
    Decision,
}

/// The daemon's clock: engine time since the store's epoch, never going backwards across
/// restarts.
#[derive(Debug)]
pub struct DaemonClock {
    started: std::time::Instant,
    base: Millis,
}

impl DaemonClock {
    fn new(epoch_unix_ms: u64, at_least: Millis) -> DaemonClock {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        DaemonClock {
            started: std::time::Instant::now(),
            base: Millis(unix_ms.saturating_sub(epoch_unix_ms)).max(at_least),
        }
    }

    pub fn now(&self) -> Millis {
        self.base + Millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(0))
    }

    /// The instant `at` stands for, to sleep until it.
    pub fn instant(&self, at: Millis) -> std::time::Instant {
        self.started + std::time::Duration::from_millis(at.0.saturating_sub(self.base.0))
    }
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
    store: Store,
    pub clock: DaemonClock,
    pub driver: ProcessDriver,
    pub agents: BTreeMap<AgentId, AgentRecord>,
    names: BTreeMap<String, AgentId>,
    configs: BTreeMap<(AgentId, u32), String>,
    cursors: BTreeMap<AgentId, Cursor>,
    /// Commands issued and not finished, by id: redone after a restart.
    in_flight: BTreeMap<CommandId, Command>,
    /// The start command each new instance's first event finishes.
    pending_starts: BTreeMap<(AgentId, Instance), CommandId>,
    pub alerts: VecDeque<PostMortem>,
    /// The last process each agent's pod spawned, for operators and chaos.
    pub agent_pids: BTreeMap<AgentId, (Instance, u32)>,
    pub feed: VecDeque<FeedEntry>,
    feed_seq: u64,
    pub replayed: Replayed,
    pub journal_records: u64,
}

impl Daemon {
    /// Opens the store, replays its journal, and joins this machine as the engine's node.
    pub fn open(
        store: Store,
        policy: EngineConfig,
        node_memory_bytes: u64,
        driver: ProcessDriver,
    ) -> anyhow::Result<Daemon> {
        let recorded = recorded_policy(&store)?;
        if let Some(recorded) = &recorded
            && recorded != &policy
        {
            anyhow::bail!(
                "the [policy] table differs from the one this store's journal was recorded \
                 under; the journal replays only under its own policy (start with the old \
                 policy, or with a new data_dir)"
            );
        }
        let controller = Controller::new(policy.clone())?;
        let clock = DaemonClock::new(store.epoch_unix_ms(), Millis::ZERO);
        let mut daemon = Daemon {
            controller,
            store,
            clock,
            driver,
            agents: BTreeMap::new(),
            names: BTreeMap::new(),
            configs: BTreeMap::new(),
            cursors: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            pending_starts: BTreeMap::new(),
            alerts: VecDeque::new(),
            agent_pids: BTreeMap::new(),
            feed: VecDeque::new(),
            feed_seq: 0,
            replayed: Replayed::default(),
            journal_records: 0,
        };
        daemon.load_desired()?;
        daemon.replay()?;
        daemon.clock = DaemonClock::new(daemon.store.epoch_unix_ms(), daemon.controller.now());
        if recorded.is_none() {
            let mut batch = Batch::new();
            batch.put_meta("policy", &serde_json::to_vec(&policy)?);
            daemon.store.commit(batch)?;
        }
        if daemon.controller.node(LOCAL_NODE).is_none() {
            let spec = NodeSpec {
                id: LOCAL_NODE,
                region: RegionId(0),
                zone: ZoneId(0),
                memory_bytes_capacity: node_memory_bytes,
            };
            daemon.apply(Input::JoinNode(spec), Batch::new())?;
        }
        Ok(daemon)
    }

    fn load_desired(&mut self) -> anyhow::Result<()> {
        for (_, record) in self.store.desired::<AgentRecord>(AGENTS)? {
            self.names.insert(record.request.name.clone(), record.id);
            self.agents.insert(record.id, record);
        }
        for (key, text) in self.store.desired::<String>(CONFIGS)? {
            self.configs
                .insert((AgentId((key >> 32) as u32), key as u32), text);
        }
        for (id, cursor) in self.store.desired::<Cursor>(CURSORS)? {
            self.cursors.insert(AgentId(id as u32), cursor);
        }
        Ok(())
    }

    /// Rebuilds the engine from the journal, checking each recorded command against the one
    /// the engine issues now.
    fn replay(&mut self) -> anyhow::Result<()> {
        let mut replayer = Replayer::new(self.controller.config().clone())?;
        let mut steps = Vec::new();
        let dropped = for_each_record(&self.store, |_, record| {
            let step = replayer.step(&record);
            steps.push((record, step));
            // Bookkeeping happens after, outside the borrow of the store.
            true
        })?;
        for (record, step) in steps {
            self.replayed.records += 1;
            if let JournalEntry::Input(input) = &record.entry {
                self.note_finished(input);
            }
            match step {
                Step::Applied => {}
                Step::Matched(command) => self.note_issued(record.at, &command),
                Step::Diverged { recorded, .. } => {
                    self.replayed.divergences += 1;
                    self.note_issued(record.at, &recorded);
                }
                Step::Refused(_) | Step::Unknown => self.replayed.divergences += 1,
            }
        }
        self.replayed.divergences += replayer.unrecorded() as u64;
        self.replayed.dropped = dropped;
        self.controller = replayer.controller;
        self.journal_records = self.replayed.records;
        if self.replayed.divergences > 0 {
            tracing::error!(
                divergences = self.replayed.divergences,
                "the journal replayed with divergent commands"
            );
        }
        Ok(())
    }

    /// After a restart: redo unfinished commands, reattach to running pods, discard the rest.
    pub fn reconcile(&mut self) -> anyhow::Result<()> {
        // Every pod on disk holds its ports until it is gone: claimed before any start is
        // redone, so a redone start cannot be handed a port a running pod still listens on.
        for (agent, instance) in self.driver.pods_on_disk() {
            self.driver.adopt_port(agent, instance);
        }
        let redo: Vec<Command> = self.in_flight.values().cloned().collect();
        let mut touched = std::collections::BTreeSet::new();
        for command in redo {
            if let Some(agent) = command.agent()
                && let Command::Start { instance, .. } | Command::Stop { instance, .. } = &command
            {
                touched.insert((agent, *instance));
            }
            self.execute(command);
        }
        for (agent, instance) in self.driver.pods_on_disk() {
            if touched.contains(&(agent, instance)) {
                continue;
            }
            let current = self.controller.agent(agent).is_some_and(|view| {
                view.instance == instance
                    && !matches!(view.status, AgentStatus::Queued | AgentStatus::Parked)
            });
            if current {
                self.driver.adopt_port(agent, instance);
                let after = self
                    .cursors
                    .get(&agent)
                    .filter(|c| c.instance == instance)
                    .map_or(0, |c| c.seq);
                self.driver.watch(agent, instance, after);
            } else {
                tracing::info!(%agent, %instance, "discarding a pod the engine no longer wants");
                self.driver.discard(agent, instance);
            }
        }
        Ok(())
    }

    // Desired state, from the API.

    pub fn create(&mut self, request: AgentRequest) -> Result<AgentRecord, ApiError> {
        request.check().map_err(ApiError::BadRequest)?;
        if self.names.contains_key(&request.name) {
            return Err(ApiError::Conflict(format!(
                "an agent named `{}` exists",
                request.name
            )));
        }
        let id = self.next_agent_id();
        let record = AgentRecord {
            id,
            version: Version::new(RUNTIME, 1),
            request,
        };
        let mut batch = Batch::new();
        batch.put_desired(AGENTS, u64::from(id.0), &record);
        if let Some(text) = record.config_text() {
            batch.put_desired(CONFIGS, config_key(id, record.version.config), &text);
        }
        batch.put_meta("next_agent", &(id.0 + 1).to_le_bytes());
        // The start the engine decides runs within `apply`: it must find the agent.
        let previous = self.remember(&record);
        if let Err(error) = self.apply(Input::CreateAgent(record.spec()), batch) {
            self.forget(&record, previous);
            return Err(error.into());
        }
        Ok(record)
    }

    /// Puts a record into the in-memory desired state; returns what it replaced.
    fn remember(&mut self, record: &AgentRecord) -> Option<AgentRecord> {
        if let Some(text) = record.config_text() {
            self.configs
                .insert((record.id, record.version.config), text);
        }
        self.names.insert(record.request.name.clone(), record.id);
        self.agents.insert(record.id, record.clone())
    }

    /// Undoes [`remember`](Self::remember) after the engine refused the change.
    fn forget(&mut self, record: &AgentRecord, previous: Option<AgentRecord>) {
        match previous {
            Some(previous) => {
                let stale = self
                    .configs
                    .contains_key(&(record.id, record.version.config))
                    && previous.version.config != record.version.config;
                if stale {
                    self.configs.remove(&(record.id, record.version.config));
                }
                self.agents.insert(record.id, previous);
            }
            None => {
                self.configs.remove(&(record.id, record.version.config));
                self.names.remove(&record.request.name);
                self.agents.remove(&record.id);
            }
        }
    }

    pub fn update(&mut self, name: &str, request: AgentRequest) -> Result<AgentRecord, ApiError> {
        request.check().map_err(ApiError::BadRequest)?;
        let id = self.id_of(name)?;
        if request.name != name {
            return Err(ApiError::BadRequest("name: cannot be changed".into()));
        }
        let old = &self.agents[&id];
        let record = AgentRecord {
            id,
            version: next_version(old, &request),
            request,
        };
        let mut batch = Batch::new();
        batch.put_desired(AGENTS, u64::from(id.0), &record);
        if let Some(text) = record.config_text() {
            batch.put_desired(CONFIGS, config_key(id, record.version.config), &text);
        }
        let previous = self.remember(&record);
        if let Err(error) = self.apply(Input::UpdateAgent(record.spec()), batch) {
            self.forget(&record, previous);
            return Err(error.into());
        }
        Ok(record)
    }

    pub fn remove(&mut self, name: &str) -> Result<(), ApiError> {
        let id = self.id_of(name)?;
        let mut batch = Batch::new();
        batch.remove_desired(AGENTS, u64::from(id.0));
        self.apply(Input::RemoveAgent { agent: id }, batch)
            .map_err(ApiError::from)?;
        self.names.remove(name);
        self.agents.remove(&id);
        Ok(())
    }

    /// The store file, as `carapace replay` takes it.
    pub fn store_path(&self) -> &std::path::Path {
        self.store.path()
    }

    pub fn id_of(&self, name: &str) -> Result<AgentId, ApiError> {
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| ApiError::NotFound(format!("no agent named `{name}`")))
    }

    fn next_agent_id(&self) -> AgentId {
        let stored = self
            .store
            .meta("next_agent")
            .ok()
            .flatten()
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        AgentId(stored)
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

    fn commit_and_execute(&mut self, now: Millis, mut batch: Batch) -> Result<(), ApplyError> {
        let commands: Vec<Command> =
            std::iter::from_fn(|| self.controller.poll_command()).collect();
        for command in &commands {
            batch.append(&JournalRecord::new(
                now,
                JournalEntry::Command(command.clone()),
            ));
        }
        let records = batch.journal_records() as u64;
        // The engine has moved on: a journal that cannot be written is a broken invariant
        // of this daemon, which must stop rather than act on decisions it cannot replay.
        self.store
            .commit(batch)
            .unwrap_or_else(|e| panic!("invariant: the journal accepts every step: {e}"));
        self.journal_records += records;
        for command in commands {
            self.note_issued(now, &command);
            self.execute(command);
        }
        Ok(())
    }

    /// Bookkeeping of a command, live or replayed.
    fn note_issued(&mut self, at: Millis, command: &Command) {
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

    fn note_finished(&mut self, input: &Input) {
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
            }) => self.driver.release_port(agent, instance),
            _ => {}
        }
    }

    fn push_feed(
        &mut self,
        at: Millis,
        agent: Option<AgentId>,
        kind: FeedKind,
        event: &'static str,
        what: String,
    ) {
        self.feed_seq += 1;
        if self.feed.len() == MAX_EVENTS {
            self.feed.pop_front();
        }
        let agent = agent.map(|a| {
            self.agents
                .get(&a)
                .map_or_else(|| a.to_string(), |r| r.request.name.clone())
        });
        self.feed.push_back(FeedEntry {
            seq: self.feed_seq,
            at_ms: at.0,
            agent,
            kind,
            event,
            what,
        });
    }

    /// Carries one command out through the driver.
    fn execute(&mut self, command: Command) {
        match command {
            Command::Start {
                id,
                agent,
                instance,
                version,
                snapshot,
                ..
            } => {
                let Some(record) = self.agents.get(&agent).cloned() else {
                    self.driver_finished(id, Outcome::Failed);
                    return;
                };
                let config = self.configs.get(&(agent, version.config)).cloned();
                self.driver.start(id, &record, instance, config, snapshot);
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
            Command::WarmUp { id, .. } => self.driver_finished(id, Outcome::Failed),
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

    /// Reported through the driver's channel, not applied here: `execute` runs inside a
    /// step, and a step does not nest.
    fn driver_finished(&mut self, command: CommandId, outcome: Outcome) {
        self.driver.report_finished(command, outcome);
    }

    /// Turns what a pod or a command's task reported into engine inputs.
    pub fn on_report(&mut self, report: Report) {
        let result = match report {
            Report::Finished { command, outcome } => {
                self.apply(Input::FinishCommand { command, outcome }, Batch::new())
            }
            Report::SupervisorLost { agent, instance } => {
                self.push_feed(
                    self.clock.now(),
                    Some(agent),
                    FeedKind::Observation,
                    "supervisor_lost",
                    format!("supervisor of {instance} lost"),
                );
                self.input_for_current(
                    agent,
                    instance,
                    Input::Escalate {
                        agent,
                        instance,
                        reason: carapace_engine::EscalationReason::SupervisorLost,
                    },
                )
            }
            Report::Event {
                agent,
                instance,
                numbered,
            } => self.on_pod_event(agent, instance, numbered.seq, numbered.event),
        };
        if let Err(error) = result {
            tracing::debug!(%error, "a report the engine did not take");
        }
    }

    fn on_pod_event(
        &mut self,
        agent: AgentId,
        instance: Instance,
        seq: u64,
        event: Event,
    ) -> Result<(), ApplyError> {
        let mut batch = Batch::new();
        let cursor = Cursor { instance, seq };
        batch.put_desired(CURSORS, u64::from(agent.0), &cursor);
        self.cursors.insert(agent, cursor);
        let pending = self.pending_starts.get(&(agent, instance)).copied();
        if let Some((name, what)) = observation(&event) {
            self.push_feed(
                self.clock.now(),
                Some(agent),
                FeedKind::Observation,
                name,
                format!("{instance} {what}"),
            );
        }
        if let Event::Spawned { pid, .. } = event {
            self.agent_pids.insert(agent, (instance, pid));
        }
        let inputs: Vec<Input> = match event {
            Event::Spawned { .. } => match pending {
                Some(command) => vec![
                    Input::AgentStarted { agent, instance },
                    Input::FinishCommand {
                        command,
                        outcome: Outcome::Succeeded,
                    },
                ],
                None => Vec::new(),
            },
            Event::Ready { .. } => vec![Input::ProbeSucceeded { agent, instance }],
            Event::ProbeFailed { .. } => vec![Input::ProbeFailed { agent, instance }],
            Event::Exited { code, .. } => {
                let oom_killed = code == 137
                    && self
                        .driver
                        .oom_kills(agent, instance)
                        .is_some_and(|n| n > 0);
                vec![Input::AgentExited {
                    agent,
                    instance,
                    code,
                    oom_killed,
                }]
            }
            Event::Memory { rss_bytes, .. } => vec![Input::SampleMemory {
                agent,
                instance,
                memory_bytes: rss_bytes,
            }],
            Event::Escalated { reason, .. } => vec![Input::Escalate {
                agent,
                instance,
                reason,
            }],
            Event::ConfigRejected { .. } => {
                let version = self
                    .controller
                    .agent(agent)
                    .map_or(Version::new(RUNTIME, 1), |v| v.version);
                let mut inputs = vec![Input::RejectConfig {
                    agent,
                    instance,
                    version,
                }];
                if let Some(command) = pending {
                    inputs.push(Input::FinishCommand {
                        command,
                        outcome: Outcome::Failed,
                    });
                }
                inputs
            }
            Event::SpawnFailed { .. } => match pending {
                Some(command) => vec![Input::FinishCommand {
                    command,
                    outcome: Outcome::Failed,
                }],
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        if inputs.is_empty() {
            // Only the cursor moves.
            self.store
                .commit(batch)
                .unwrap_or_else(|e| panic!("invariant: the store accepts a cursor: {e}"));
            return Ok(());
        }
        let mut first = Some(batch);
        for input in inputs {
            let batch = first.take().unwrap_or_default();
            if let Err(error) = self.apply(input, batch) {
                tracing::debug!(%agent, %instance, %error, "a pod event the engine did not take");
            }
        }
        if let Some(batch) = first {
            self.store
                .commit(batch)
                .unwrap_or_else(|e| panic!("invariant: the store accepts a cursor: {e}"));
        }
        Ok(())
    }

    fn input_for_current(
        &mut self,
        agent: AgentId,
        instance: Instance,
        input: Input,
    ) -> Result<(), ApplyError> {
        if self
            .controller
            .agent(agent)
            .is_some_and(|v| v.instance == instance)
        {
            self.apply(input, Batch::new())
        } else {
            Ok(())
        }
    }
}

fn config_key(agent: AgentId, config_version: u32) -> u64 {
    (u64::from(agent.0) << 32) | u64::from(config_version)
}

/// What a pod event tells an operator, if it is worth a line: its name and a description.
fn observation(event: &Event) -> Option<(&'static str, String)> {
    Some(match event {
        Event::Spawned { pid, attempt, .. } => (
            "spawned",
            format!("process {pid} spawned (attempt {attempt})"),
        ),
        Event::Ready { after_ms, .. } => ("ready", format!("ready after {after_ms} ms")),
        Event::ProbeFailed { reason, .. } => ("probe_failed", format!("probe failed: {reason}")),
        Event::Exited { code, .. } => ("exited", format!("exited with code {code}")),
        Event::Escalated { reason, .. } => ("escalated", format!("escalated: {reason:?}")),
        Event::ConfigRejected { code, .. } => (
            "config_rejected",
            format!("config refused by its validator (exit {code})"),
        ),
        Event::SpawnFailed { error, .. } => ("spawn_failed", format!("could not spawn: {error}")),
        _ => return None,
    })
}

/// A one-line account of a decision, for the event feed.
fn describe(command: &Command) -> String {
    match command {
        Command::Start {
            instance,
            version,
            snapshot,
            reason,
            ..
        } => format!(
            "start {instance} at {version} ({reason:?}){}",
            snapshot.map_or(String::new(), |s| format!(" from {s}"))
        ),
        Command::Stop {
            instance,
            snapshot,
            reason,
            ..
        } => format!(
            "stop {instance} ({reason:?}){}",
            snapshot.map_or(String::new(), |s| format!(", snapshot {s}"))
        ),
        Command::TakeSnapshot {
            instance,
            snapshot,
            known_good,
            ..
        } => format!(
            "snapshot {instance} as {snapshot}{}",
            if *known_good { " (known-good)" } else { "" }
        ),
        Command::Throttle {
            instance,
            memory_bytes_high,
            ..
        } => format!("throttle {instance} to {memory_bytes_high} bytes"),
        Command::Alert(post_mortem) => {
            format!("critical alert: {:?}, parked", post_mortem.cause)
        }
        Command::WarmUp { .. } => "warm up".to_owned(),
        Command::ReportRollout { rollout, state } => format!("{rollout}: {state:?}"),
        Command::Reject { reason } => format!("refused: {reason}"),
        other => format!("{other:?}"),
    }
}

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
}

impl From<ApplyError> for ApiError {
    fn from(error: ApplyError) -> ApiError {
        ApiError::Refused(error.to_string())
    }
}
