//! `carapace node --config node.toml [--etcd URLS]`: one per machine of a cluster. It
//! registers the machine in etcd under a lease (renewing it is the heartbeat), runs the pods
//! the leader assigns to it with the process driver that `carapace serve` uses, and writes the
//! pods' reports back to etcd. Rung 1 is the pods' own, so agents keep restarting through a
//! controller or etcd outage.
//!
//! A node that cannot renew its lease stops every pod before the lease can expire (the rule
//! is in `carapace_cluster::fencing`), registers again once etcd answers, and from then on is a
//! new node: what was assigned to its old registration is the leader's to move.

mod config;
mod deadband;
pub(crate) mod protocol;
mod reconcile;
mod session;

use super::EXIT_BAD_INPUT;
use super::serve::driver::{PodSettings, ProcessDriver, Report};
use carapace_cluster::Client;
use carapace_cluster::etcd::WatchEvent;
use carapace_cluster::fencing::Watchdog;
use carapace_drivers::clock::Clock;
use carapace_engine::{AgentId, CommandId, Instance, Millis, Outcome, SnapshotId};
use config::NodeConfigChecked;
use protocol::{Assignment, NodeReport, Registration};
use reconcile::{Action, Pod};
use session::{AssignmentNews, JoinError, LeaseNews, Membership, Session};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The node's config file (TOML): name, etcd, data_dir, [node], [pods], [lease].
    #[arg(long)]
    config: PathBuf,
    /// etcd members' client URLs, comma-separated (replaces the file's `etcd`).
    #[arg(long)]
    etcd: Option<String>,
}

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(&args.config, args.etcd.as_deref()) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("carapace node: {message}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(node(config))?;
    Ok(ExitCode::SUCCESS)
}

/// Why a session ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The node fenced itself: its lease may expire (or has), its pods are gone.
    Fenced,
    /// Asked to stop: pods stopped, lease revoked.
    Shutdown,
}

/// The node's pods and what it knows of its assignments; lives across sessions.
struct Node {
    driver: ProcessDriver,
    reports: mpsc::Receiver<Report>,
    pods: BTreeMap<AgentId, Pod>,
    assigned: BTreeMap<AgentId, Assignment>,
    /// Stops in flight: the command answering each and the pod it stops.
    stops: BTreeMap<CommandId, (AgentId, Instance)>,
    /// Instances whose supervisor ended on its own (lost, or escalated and stopped): not
    /// started again under the same assignment; the leader decides what follows.
    ended: BTreeMap<AgentId, Instance>,
    /// Snapshot orders carried out (or under way), answered once each.
    taken: std::collections::BTreeSet<CommandId>,
    next_local_command: u64,
    memory: deadband::MemoryFilter,
    band: deadband::Deadband,
}

async fn node(config: NodeConfigChecked) -> anyhow::Result<()> {
    let file = &config.file;
    std::fs::create_dir_all(&file.data_dir)?;
    let (reports_tx, reports) = mpsc::channel(1024);
    let ms = |s: carapace_sim::scenario::Span| Duration::from_millis(s.0.0);
    let settings = PodSettings {
        startup_probe_interval: ms(file.pods.startup_probe_interval),
        probe_interval: ms(file.pods.probe_interval),
        probe_timeout: ms(file.pods.probe_timeout),
        memory_interval: ms(file.pods.memory_interval),
        grace: ms(file.pods.grace),
        policy: file.supervisor.clone(),
        port_base: file.pods.port_base,
        port_stride: file.pods.port_stride,
        max_pods: file.pods.max_pods,
        fence: Some(file.data_dir.join(FENCE_FILE)),
        replicas: file.pods.replicas(),
    };
    let driver = ProcessDriver::new(
        file.data_dir.clone(),
        &file.node.cgroup_parent,
        settings,
        reports_tx,
    )?;
    let enforcement = driver.enforcement();
    if !enforcement.is_enforced() {
        eprintln!("carapace node: WARNING: {enforcement}");
    }
    let memory_bytes = match file.node.memory {
        Some(bytes) => bytes.0,
        None => super::serve::machine_memory_bytes()?,
    };
    let client = Arc::new(Client::new(&file.etcd, config.fencing.call_timeout)?);
    let membership = Membership {
        client: client.clone(),
        keys: config.keys.clone(),
        registration: Registration {
            name: file.name.clone(),
            zone: file.zone.clone(),
            memory_bytes,
            limits_enforced: enforcement.is_enforced(),
            carapace_version: env!("CARGO_PKG_VERSION").into(),
        },
        ttl: config.fencing.ttl,
        renew_every: config.fencing.renew_every,
        trust_leaderless_members: file.lease.trust_leaderless_members,
        data_dir: file.data_dir.clone(),
        clock: Clock::start(),
    };
    let mut node = Node {
        driver,
        reports,
        pods: BTreeMap::new(),
        assigned: BTreeMap::new(),
        stops: BTreeMap::new(),
        ended: BTreeMap::new(),
        taken: std::collections::BTreeSet::new(),
        next_local_command: 0,
        memory: deadband::MemoryFilter::default(),
        band: deadband::Deadband {
            relative: file.reports.memory_relative_change,
            refresh_ms: file.reports.memory_refresh.0.0,
        },
    };
    node.adopt_pods_on_disk();
    let shutdown = crate::cli::shutdown_signal()?;
    tokio::pin!(shutdown);
    let mut fenced: Option<NodeReport> = None;
    loop {
        let joined = {
            let membership = membership.clone();
            tokio::task::spawn_blocking(move || Session::join(&membership)).await?
        };
        let mut session = match joined {
            Ok(session) => session,
            Err(error) => {
                match &error {
                    JoinError::NameTaken(_) => tracing::warn!(%error, "waiting to register"),
                    JoinError::Etcd(_) => tracing::warn!(%error, "etcd does not answer yet"),
                }
                tokio::select! {
                    () = &mut shutdown => {
                        node.stop_every_pod(ms(file.pods.grace)).await;
                        return Ok(());
                    }
                    () = tokio::time::sleep(config.fencing.renew_every) => continue,
                }
            }
        };
        // Tests and scripts wait for this line.
        println!(
            "carapace node: {} registered (epoch {})",
            file.name, session.epoch
        );
        if let Some(report) = fenced.take() {
            session.publish(report);
        }
        let mut watchdog = Watchdog::new(config.fencing, session.granted_sent_ms);
        let clock = membership.clock;
        let fence_file = file.data_dir.join(FENCE_FILE);
        // Before any pod of this session starts: a pod finding a passed fence stops at once.
        push_fence(&fence_file, &watchdog, clock);
        let mut leaderless_since: Option<u64> = None;
        let ended = loop {
            let fence_at = clock.instant(Millis(watchdog.fence_at()));
            tokio::select! {
                () = &mut shutdown => break Ended::Shutdown,
                () = tokio::time::sleep_until(fence_at.into()) => break Ended::Fenced,
                Some(news) = session.lease_news.recv() => match news {
                    LeaseNews::Renewed { sent_ms } => {
                        watchdog.acknowledged(sent_ms);
                        push_fence(&fence_file, &watchdog, clock);
                        if let Some(since) = leaderless_since.take() {
                            eprintln!(
                                "carapace node: {} renewed its lease after {} ms without an etcd leader",
                                file.name,
                                sent_ms.saturating_sub(since)
                            );
                        }
                    }
                    LeaseNews::Leaderless { asked_ms } => {
                        watchdog.acknowledged(asked_ms);
                        push_fence(&fence_file, &watchdog, clock);
                        if leaderless_since.is_none() {
                            leaderless_since = Some(asked_ms);
                            eprintln!(
                                "carapace node: {}: etcd has no leader, so no lease can expire; \
                                 agents keep running",
                                file.name
                            );
                        }
                    }
                    LeaseNews::Expired => break Ended::Fenced,
                },
                Some(news) = session.assignment_news.recv() => {
                    node.take_assignments(&config, news);
                    node.reconcile(session.epoch);
                }
                Some(report) = node.reports.recv() => {
                    if let Some(report) = node.on_report(report) {
                        session.publish(report);
                    }
                    node.reconcile(session.epoch);
                }
            }
        };
        match ended {
            Ended::Shutdown => {
                node.stop_every_pod(ms(file.pods.grace)).await;
                let client = client.clone();
                tokio::task::spawn_blocking(move || session.leave(&client)).await?;
                eprintln!(
                    "carapace node: {} left the cluster; its pods are stopped",
                    file.name
                );
                return Ok(());
            }
            Ended::Fenced => {
                let last_renewal_sent = watchdog.last_acknowledged_sent_ms();
                let pods = node.stop_every_pod(config.fencing.stop_grace).await;
                let stopped_after_ms = clock.now().0.saturating_sub(last_renewal_sent);
                eprintln!(
                    "carapace node: {} fenced: {pods} pods stopped {stopped_after_ms} ms after \
                     the last renewal etcd acknowledged (lease ttl {} ms)",
                    file.name,
                    config.fencing.ttl.as_millis()
                );
                fenced = Some(NodeReport::Fenced {
                    stopped_after_ms,
                    pods,
                });
                session.end();
                node.assigned.clear();
            }
        }
    }
}

/// The node's fence file in its data directory, which every pod of the node watches.
const FENCE_FILE: &str = "fence";

/// Moves the pods' fence to the node's own: if this daemon dies, its pods stop themselves when
/// it would have fenced them.
fn push_fence(path: &std::path::Path, watchdog: &Watchdog, clock: Clock) {
    let left = watchdog.fence_at().saturating_sub(clock.now().0);
    let deadline = carapace_drivers::pod::fence::monotonic_ms() + left;
    if let Err(error) = carapace_drivers::pod::fence::write_deadline(path, deadline) {
        // The pods keep the older deadline: they stop sooner, never later.
        tracing::error!(%error, path = %path.display(), "cannot move the pods' fence");
    }
}

impl Node {
    /// Pods a previous run of the node left running: watched again (a dead one reports its
    /// supervisor lost), kept until the assignments say otherwise.
    fn adopt_pods_on_disk(&mut self) {
        for (agent, instance) in self.driver.pods_on_disk() {
            self.driver.adopt_port(agent, instance);
            self.driver.watch(agent, instance, 0);
            self.pods.insert(
                agent,
                Pod {
                    instance,
                    stopping: false,
                },
            );
        }
    }

    fn take_assignments(&mut self, config: &NodeConfigChecked, news: AssignmentNews) {
        let name = &config.file.name;
        let take = |assigned: &mut BTreeMap<AgentId, Assignment>, key: &str, value: &[u8]| {
            let Some(agent) = config.keys.agent_of_assignment(name, key) else {
                return;
            };
            match serde_json::from_slice::<Assignment>(value) {
                Ok(assignment) if assignment.record.id.0 == agent => {
                    assigned.insert(AgentId(agent), assignment);
                }
                Ok(_) => tracing::error!(key, "an assignment names another agent than its key"),
                Err(error) => tracing::error!(key, %error, "an assignment that does not decode"),
            }
        };
        match news {
            AssignmentNews::Listed(kvs) => {
                self.assigned.clear();
                for kv in kvs {
                    take(&mut self.assigned, kv.key_str(), &kv.value);
                }
            }
            AssignmentNews::Changed(events) => {
                for event in events {
                    match event {
                        WatchEvent::Put(kv) => take(&mut self.assigned, kv.key_str(), &kv.value),
                        WatchEvent::Delete(kv) => {
                            if let Some(agent) = config.keys.agent_of_assignment(name, kv.key_str())
                            {
                                self.assigned.remove(&AgentId(agent));
                            }
                        }
                    }
                }
            }
        }
    }

    fn reconcile(&mut self, epoch: carapace_cluster::Revision) {
        // An ended instance matters only while it is still the one assigned.
        self.ended.retain(|agent, instance| {
            self.assigned
                .get(agent)
                .is_some_and(|a| a.instance == *instance)
        });
        for action in reconcile::reconcile(epoch, &self.assigned, &self.ended, &self.pods) {
            match action {
                Action::Start(assignment) => {
                    let agent = assignment.record.id;
                    tracing::info!(%agent, instance = %assignment.instance, "starting an assigned pod");
                    self.pods.insert(
                        agent,
                        Pod {
                            instance: assignment.instance,
                            stopping: false,
                        },
                    );
                    self.driver.start(
                        assignment.start_command,
                        &assignment.record,
                        assignment.instance,
                        assignment.config_text.clone(),
                        assignment.snapshot,
                        Vec::new(),
                    );
                }
                Action::Stop {
                    agent,
                    instance,
                    command,
                    snapshot,
                } => {
                    let command = command.unwrap_or_else(|| self.local_command());
                    self.stop(command, agent, instance, snapshot);
                }
            }
        }
        // An order no assignment carries any more cannot come again.
        let ordered: std::collections::BTreeSet<CommandId> = self
            .assigned
            .values()
            .filter_map(|a| a.take_snapshot.map(|o| o.command))
            .collect();
        self.taken.retain(|command| ordered.contains(command));
        for (agent, instance, order) in
            reconcile::snapshots_due(epoch, &self.assigned, &self.pods, &self.taken)
        {
            tracing::info!(%agent, %instance, snapshot = order.snapshot.0, "taking a snapshot");
            self.taken.insert(order.command);
            self.driver
                .snapshot(order.command, agent, instance, order.snapshot);
        }
    }

    fn stop(
        &mut self,
        command: CommandId,
        agent: AgentId,
        instance: Instance,
        snapshot: Option<SnapshotId>,
    ) {
        tracing::info!(%agent, %instance, "stopping a pod");
        if let Some(pod) = self.pods.get_mut(&agent) {
            pod.stopping = true;
        }
        self.stops.insert(command, (agent, instance));
        self.driver.stop(command, agent, instance, snapshot);
    }

    /// Commands the node issues itself count down from the top, far from the engine's.
    fn local_command(&mut self) -> CommandId {
        self.next_local_command += 1;
        CommandId(u64::MAX - self.next_local_command)
    }

    /// Keeps the node's books on a driver report; answers what to publish.
    fn on_report(&mut self, report: Report) -> Option<NodeReport> {
        match report {
            Report::Finished { command, outcome } => {
                if let Some((agent, instance)) = self.stops.remove(&command) {
                    self.driver.release_port(agent, instance);
                    self.memory.forget(agent);
                    if self
                        .pods
                        .get(&agent)
                        .is_some_and(|p| p.instance == instance)
                    {
                        self.pods.remove(&agent);
                    }
                } else if outcome == Outcome::Failed {
                    // A start that could not run: the leader sees it fail and decides.
                    self.retire(command);
                }
                let local = command.0 > u64::MAX / 2;
                (!local).then_some(NodeReport::Finished { command, outcome })
            }
            // A node's driver keeps no warm pool (the leader does not warm nodes yet), so it
            // never adopts a standby.
            report @ (Report::Adopted { .. }
            | Report::WarmUpDue { .. }
            | Report::AdoptionFailed { .. }) => {
                tracing::warn!(?report, "a warm-pool report on a node without a warm pool");
                None
            }
            Report::SupervisorLost { agent, instance } => {
                self.ended.insert(agent, instance);
                if self
                    .pods
                    .get(&agent)
                    .is_some_and(|p| p.instance == instance)
                {
                    self.pods.remove(&agent);
                }
                Some(NodeReport::SupervisorLost { agent, instance })
            }
            Report::Event {
                agent,
                instance,
                numbered,
            } => {
                if let carapace_drivers::supervise::Event::Memory {
                    at_ms, rss_bytes, ..
                } = numbered.event
                    && !self
                        .memory
                        .admit(self.band, agent, instance, at_ms, rss_bytes)
                {
                    return None;
                }
                if matches!(
                    numbered.event,
                    carapace_drivers::supervise::Event::Stopped { .. }
                ) && self
                    .pods
                    .get(&agent)
                    .is_some_and(|p| p.instance == instance && !p.stopping)
                {
                    // The supervisor gave the agent up (escalated): the pod is done.
                    self.ended.insert(agent, instance);
                }
                Some(NodeReport::Event {
                    agent,
                    instance,
                    numbered,
                })
            }
        }
    }

    fn retire(&mut self, start_command: CommandId) {
        let failed: Vec<(AgentId, Instance)> = self
            .assigned
            .values()
            .filter(|a| a.start_command == start_command)
            .map(|a| (a.record.id, a.instance))
            .collect();
        for (agent, instance) in failed {
            self.ended.insert(agent, instance);
            self.pods.remove(&agent);
        }
    }

    /// Stops every pod and waits (up to `grace` and a little more) for them to be gone;
    /// answers how many there were.
    async fn stop_every_pod(&mut self, grace: Duration) -> u32 {
        let running: Vec<(AgentId, Instance)> = self
            .pods
            .iter()
            .filter(|(_, pod)| !pod.stopping)
            .map(|(agent, pod)| (*agent, pod.instance))
            .collect();
        let count = u32::try_from(self.pods.len()).unwrap_or(u32::MAX);
        for (agent, instance) in running {
            let command = self.local_command();
            self.stop(command, agent, instance, None);
        }
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(5);
        while !self.stops.is_empty() {
            tokio::select! {
                Some(report) = self.reports.recv() => {
                    let _ = self.on_report(report);
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::error!(left = self.stops.len(), "pods did not stop in time");
                    break;
                }
            }
        }
        self.pods.clear();
        count
    }
}
