//! The process driver: carries the engine's commands out as pods on this machine — a
//! `carapace supervise --pod DIR` per instance, in its own memory cgroup — and reports back
//! what the pods say. Every command runs in a task of its own; results come back to the
//! daemon's loop as [`Report`]s, which the loop turns into engine inputs.

use super::agents::{AgentRecord, Rendered};
use carapace_drivers::cgroup::{Enforcement, MemoryCgroups};
use carapace_drivers::pod::{Numbered, PodClient, PodDir, PodSpec, write_spec};
use carapace_drivers::snapshot::{Replicas, Store as SnapshotStore};
use carapace_drivers::supervise::SNAPSHOT_EXCLUDES;
use carapace_engine::{AgentId, CommandId, Instance, Outcome, SnapshotId, SupervisorPolicy};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// What a pod or a command's task has to tell the daemon.
#[derive(Debug)]
pub enum Report {
    /// An event from a pod's supervisor, in order.
    Event {
        agent: AgentId,
        instance: Instance,
        numbered: Numbered,
    },
    /// The pod's supervisor no longer answers and was not asked to stop: what was left of the
    /// pod has been killed.
    SupervisorLost { agent: AgentId, instance: Instance },
    Finished {
        command: CommandId,
        outcome: Outcome,
    },
    /// A standby took the agent's config: its events from `after` on are the agent's.
    Adopted {
        agent: AgentId,
        instance: Instance,
        after: u64,
    },
    /// A warm-up to carry out now (see `boot_standby`).
    WarmUpDue { command: CommandId },
    /// A standby could not be adopted (undone): the start goes on cold.
    AdoptionFailed {
        command: CommandId,
        agent: AgentId,
        instance: Instance,
    },
}

/// Pod-level settings the driver applies to every pod.
#[derive(Clone, Debug)]
pub struct PodSettings {
    pub startup_probe_interval: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub memory_interval: Duration,
    pub grace: Duration,
    pub policy: SupervisorPolicy,
    pub port_base: u16,
    pub port_stride: u16,
    pub max_pods: u16,
    /// The node's fence file every pod watches (`carapace node`); `None` under `serve`.
    pub fence: Option<PathBuf>,
    /// Where every snapshot is copied once taken, and looked for when this machine lacks it.
    pub replicas: Replicas,
}

/// Runs pods on this machine.
#[derive(Debug)]
pub struct ProcessDriver {
    data: PathBuf,
    supervise_exe: PathBuf,
    pub(super) cgroups: Result<MemoryCgroups, String>,
    settings: PodSettings,
    pub(super) reports: mpsc::Sender<Report>,
    /// Port slot of each live pod (standbys under [`super::warm::STANDBY`]).
    pub(super) ports: BTreeMap<(AgentId, Instance), u16>,
    pub(super) warm: Option<super::warm::WarmPool>,
    /// Pods being stopped on purpose: their supervisors' ends are not losses.
    stopping: std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<(AgentId, Instance)>>>,
}

impl ProcessDriver {
    pub fn new(
        data: PathBuf,
        cgroup_parent: &str,
        settings: PodSettings,
        reports: mpsc::Sender<Report>,
    ) -> anyhow::Result<ProcessDriver> {
        std::fs::create_dir_all(data.join("pods"))?;
        std::fs::create_dir_all(data.join("snapshots"))?;
        let cgroups = MemoryCgroups::detect(cgroup_parent).map_err(|e| e.to_string());
        Ok(ProcessDriver {
            data,
            supervise_exe: std::env::current_exe()?,
            cgroups,
            settings,
            reports,
            ports: BTreeMap::new(),
            warm: None,
            stopping: Default::default(),
        })
    }

    /// Keeps `per_node` standby pods of `template` for the engine's warm pool.
    pub fn with_warm_pool(mut self, template: super::warm::WarmTemplate, per_node: u16) -> Self {
        self.warm = Some(super::warm::WarmPool::new(template, per_node));
        self
    }

    pub fn enforcement(&self) -> Enforcement {
        match &self.cgroups {
            Ok(cgroups) => cgroups.enforcement(),
            Err(reason) => Enforcement::Unenforced {
                reason: reason.clone(),
            },
        }
    }

    pub fn pods_dir(&self) -> PathBuf {
        self.data.join("pods")
    }

    pub fn pod_dir(&self, agent: AgentId, instance: Instance) -> PodDir {
        PodDir::for_instance(&self.pods_dir(), agent, instance)
    }

    pub fn snapshots(&self, agent: AgentId) -> PathBuf {
        self.data.join("snapshots").join(agent.0.to_string())
    }

    /// Every pod directory on disk: (agent, instance), ascending.
    pub fn pods_on_disk(&self) -> Vec<(AgentId, Instance)> {
        let mut found = Vec::new();
        let Ok(agents) = std::fs::read_dir(self.pods_dir()) else {
            return found;
        };
        for agent in agents.flatten() {
            let Some(agent_id) = number(&agent.path()) else {
                continue;
            };
            let Ok(instances) = std::fs::read_dir(agent.path()) else {
                continue;
            };
            for instance in instances.flatten() {
                if let Some(instance_id) = number(&instance.path()) {
                    found.push((AgentId(agent_id), Instance(instance_id)));
                }
            }
        }
        found.sort();
        found
    }

    /// Starts a pod for `instance`, or reattaches to it when its supervisor already runs (a
    /// restarted daemon redoing a start it had journaled).
    pub fn start(
        &mut self,
        command: CommandId,
        record: &AgentRecord,
        instance: Instance,
        config_text: Option<String>,
        snapshot: Option<SnapshotId>,
        secrets: Vec<(String, String)>,
    ) {
        let dir = self.pod_dir(record.id, instance);
        let port = match self.port_for(record.id, instance) {
            Some(port) => port,
            None => {
                tracing::error!(agent = %record.id, "no free port slot for a new pod");
                self.finish(command, Outcome::Failed);
                return;
            }
        };
        let laid_out = self
            .lay_out(&dir, record, instance, port, config_text, snapshot)
            .and_then(|()| write_secrets(&dir, &secrets));
        match laid_out {
            Ok(()) => {}
            Err(error) => {
                tracing::error!(agent = %record.id, %instance, %error, "cannot lay out the pod");
                self.finish(command, Outcome::Failed);
                return;
            }
        }
        if let Err(error) = self.launch(&dir) {
            tracing::error!(agent = %record.id, %instance, %error, "cannot start the pod's supervisor");
            self.finish(command, Outcome::Failed);
            return;
        }
        self.watch(record.id, instance, 0);
    }

    pub(super) fn lay_out(
        &self,
        dir: &PodDir,
        record: &AgentRecord,
        instance: Instance,
        port: u16,
        config_text: Option<String>,
        snapshot: Option<SnapshotId>,
    ) -> anyhow::Result<()> {
        if dir.spec().exists() {
            // Laid out before a restart of the daemon: keep what the pod has.
            return Ok(());
        }
        std::fs::create_dir_all(dir.state())?;
        restrict(dir.root())?;
        if let Some(snapshot) = snapshot {
            let store = SnapshotStore::open(self.snapshots(record.id))?;
            // Taken on another machine (or this one's copy lost): fetched from a replica.
            if !self
                .settings
                .replicas
                .pull(&store, record.id.0, snapshot.0)?
            {
                anyhow::bail!(
                    "snapshot {} of agent {} is neither here nor in any replica",
                    snapshot.0,
                    record.id
                );
            }
            store.restore(snapshot.0, &dir.state())?;
        }
        let rendered = Rendered::new(record, instance, port, dir);
        if let Some(text) = config_text {
            std::fs::write(dir.config(), rendered.config(&text))?;
        }
        let cgroup_name = super::warm::standby_cgroup_of(dir)
            .unwrap_or_else(|| pod_cgroup_name(record.id, instance));
        let cgroup = match &self.cgroups {
            Ok(cgroups) => {
                let cgroup = cgroups.create(&cgroup_name)?;
                cgroup.set_limit(record.spec().memory_bytes_limit)?;
                Some(cgroup.path().to_owned())
            }
            Err(_) => None,
        };
        let spec = PodSpec {
            agent: record.id,
            instance,
            program: rendered.text(&record.request.command[0]),
            args: record.request.command[1..]
                .iter()
                .map(|a| rendered.text(a))
                .collect(),
            env: record
                .request
                .env
                .iter()
                .map(|(k, v)| (k.clone(), rendered.text(v)))
                .collect(),
            probe: rendered.text(&record.request.probe),
            startup_probe_interval_ms: millis(self.settings.startup_probe_interval),
            probe_interval_ms: millis(self.settings.probe_interval),
            probe_timeout_ms: millis(self.settings.probe_timeout),
            memory_interval_ms: millis(self.settings.memory_interval),
            grace_ms: millis(self.settings.grace),
            policy: self.settings.policy.clone(),
            validate: record
                .request
                .validate
                .as_ref()
                .map(|words| words.iter().map(|w| rendered.text(w)).collect()),
            cgroup,
            fence: self.settings.fence.clone(),
        };
        std::fs::write(dir.root().join("port"), port.to_string())?;
        write_spec(dir, &spec)?;
        Ok(())
    }

    /// Starts the pod's supervisor detached from the daemon (its own session), so the pod
    /// outlives a daemon that is killed.
    pub(super) fn launch(&self, dir: &PodDir) -> anyhow::Result<()> {
        if supervisor_alive(dir) {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.supervisor_log())?;
        let mut command = tokio::process::Command::new(&self.supervise_exe);
        command
            .arg("supervise")
            .arg("--pod")
            .arg(dir.root())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group and no kill on drop: the pod outlives the daemon.
            .process_group(0)
            .kill_on_drop(false);
        let mut child = command.spawn()?;
        // Reaped by the runtime, not by a thread per pod: the daemon does not wait on pods,
        // their sockets say how they are.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// Follows a pod's events from `after` on; reconnects while the supervisor lives.
    pub fn watch(&self, agent: AgentId, instance: Instance, after: u64) {
        let client = PodClient::new(self.pod_dir(agent, instance));
        let reports = self.reports.clone();
        let cgroup = self.cgroup_of(agent, instance);
        let stopping = self.stopping.clone();
        tokio::spawn(async move {
            let mut after = after;
            let mut unreachable_since: Option<tokio::time::Instant> = None;
            let mut retry = Duration::from_millis(2);
            loop {
                let (events, mut received) = mpsc::channel::<Numbered>(64);
                let forward = {
                    let reports = reports.clone();
                    tokio::spawn(async move {
                        let mut last = None;
                        while let Some(numbered) = received.recv().await {
                            last = Some(numbered.seq);
                            let stopped = matches!(
                                numbered.event,
                                carapace_drivers::supervise::Event::Stopped { .. }
                            );
                            let report = Report::Event {
                                agent,
                                instance,
                                numbered,
                            };
                            if reports.send(report).await.is_err() || stopped {
                                return (last, true);
                            }
                        }
                        (last, false)
                    })
                };
                let result = client.watch(after, events).await;
                let (last, done) = forward.await.unwrap_or((None, true));
                if let Some(last) = last {
                    after = last;
                    unreachable_since = None;
                    retry = Duration::from_millis(2);
                }
                if done {
                    return;
                }
                if result.is_err() || !client.dir().root().exists() {
                    // Not there yet (just launched) or gone: give a new supervisor a moment
                    // to open its socket before calling it lost.
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if !client.dir().root().exists() {
                        return;
                    }
                    // A supervisor that recorded its pid and is gone is lost now; one that
                    // has not written it yet may still be starting.
                    // Written but maybe not yet filled in: only a pid that reads counts.
                    let started = supervisor_pid(client.dir()).is_some();
                    let waited = since.elapsed() > SUPERVISOR_START_GRACE;
                    let stopped = stopping
                        .lock()
                        .expect("the stopping set's lock")
                        .contains(&(agent, instance));
                    if stopped {
                        return;
                    }
                    if (started || waited) && !supervisor_alive(client.dir()) {
                        if let Some(cgroup) = &cgroup {
                            let _ = cgroup.kill_all();
                        }
                        let _ = reports
                            .send(Report::SupervisorLost { agent, instance })
                            .await;
                        return;
                    }
                }
                // A new pod opens its socket within milliseconds: look again soon, then less
                // often.
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_millis(50));
            }
        });
    }

    /// Stops a pod, snapshots its state when asked, removes it.
    pub fn stop(
        &mut self,
        command: CommandId,
        agent: AgentId,
        instance: Instance,
        snapshot: Option<SnapshotId>,
    ) {
        let dir = self.pod_dir(agent, instance);
        let store = self.snapshots(agent);
        let cgroup = self.cgroup_of(agent, instance);
        let reports = self.reports.clone();
        let grace = self.settings.grace;
        let replicas = self.settings.replicas.clone();
        let stopping = self.stopping.clone();
        stopping
            .lock()
            .expect("the stopping set's lock")
            .insert((agent, instance));
        // The port stays the pod's until the stop has finished: see `release_port`.
        tokio::spawn(async move {
            if dir.root().exists() {
                let client = PodClient::new(dir.clone());
                if client.stop(grace).await.is_err() {
                    // No supervisor answers: whatever is left of the pod goes.
                    kill_supervisor(&dir);
                }
                if let Some(cgroup) = &cgroup {
                    let _ = cgroup.kill_all();
                }
            }
            let mut outcome = Outcome::Succeeded;
            if let Some(snapshot) = snapshot {
                let state = dir.state();
                let taken = tokio::task::spawn_blocking(move || {
                    take_snapshot(&store, &state, snapshot)?;
                    match replicate(&replicas, &store, agent, snapshot) {
                        Outcome::Succeeded => Ok(()),
                        _ => Err("not every replica took it".to_owned()),
                    }
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                if let Err(error) = taken {
                    tracing::warn!(%agent, %instance, %error, "the stopped pod's snapshot failed");
                    outcome = Outcome::SnapshotFailed;
                }
            }
            if let Some(cgroup) = cgroup {
                let _ = tokio::task::spawn_blocking(move || {
                    cgroup.remove_when_empty(Duration::from_secs(5))
                })
                .await;
            }
            remove_pod_dir(dir.root());
            stopping
                .lock()
                .expect("the stopping set's lock")
                .remove(&(agent, instance));
            let _ = reports.send(Report::Finished { command, outcome }).await;
        });
    }

    /// A consistent snapshot of a running pod's state directory.
    pub fn snapshot(
        &self,
        command: CommandId,
        agent: AgentId,
        instance: Instance,
        snapshot: SnapshotId,
    ) {
        let client = PodClient::new(self.pod_dir(agent, instance));
        let store = self.snapshots(agent);
        let reports = self.reports.clone();
        let replicas = self.settings.replicas.clone();
        tokio::spawn(async move {
            let outcome = match client
                .snapshot(store.clone(), snapshot.0, Duration::from_secs(120))
                .await
            {
                Ok(_) => tokio::task::spawn_blocking(move || {
                    replicate(&replicas, &store, agent, snapshot)
                })
                .await
                .unwrap_or(Outcome::Failed),
                // Taken before a restart of the daemon: the version is there already.
                Err(carapace_drivers::pod::PodClientError::Refused { message, .. })
                    if message.contains("exists") =>
                {
                    Outcome::Succeeded
                }
                Err(error) => {
                    tracing::warn!(%agent, %instance, %error, "snapshot failed");
                    Outcome::Failed
                }
            };
            let _ = reports.send(Report::Finished { command, outcome }).await;
        });
    }

    /// Caps a spiking pod's memory below its limit.
    pub fn throttle(&self, agent: AgentId, instance: Instance, memory_bytes_high: u64) {
        if let Some(cgroup) = self.cgroup_of(agent, instance)
            && let Err(error) = cgroup.set_high(Some(memory_bytes_high))
        {
            tracing::warn!(%agent, %instance, %error, "cannot throttle the pod");
        }
    }

    /// OOM kills the kernel counted in a pod's cgroup so far.
    pub fn oom_kills(&self, agent: AgentId, instance: Instance) -> Option<u64> {
        self.cgroup_of(agent, instance)?.oom_kills().ok().flatten()
    }

    /// Kills a pod nobody wants (an instance the engine replaced while the daemon was down).
    pub fn discard(&mut self, agent: AgentId, instance: Instance) {
        let dir = self.pod_dir(agent, instance);
        let cgroup = self.cgroup_of(agent, instance);
        self.ports.remove(&(agent, instance));
        tear_down(dir, cgroup);
    }

    /// Frees a stopped pod's port slot for the next pod.
    pub fn release_port(&mut self, agent: AgentId, instance: Instance) {
        self.ports.remove(&(agent, instance));
    }

    /// Claims the port slot a pod on disk already holds (after a restart of the daemon).
    pub fn adopt_port(&mut self, agent: AgentId, instance: Instance) {
        let dir = self.pod_dir(agent, instance);
        if let Some(port) = std::fs::read_to_string(dir.root().join("port"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            self.ports.insert((agent, instance), port);
        }
    }

    pub(super) fn port_for(&mut self, agent: AgentId, instance: Instance) -> Option<u16> {
        if let Some(&port) = self.ports.get(&(agent, instance)) {
            return Some(port);
        }
        self.adopt_port(agent, instance);
        if let Some(&port) = self.ports.get(&(agent, instance)) {
            return Some(port);
        }
        self.prune_standby_ports();
        let taken: std::collections::BTreeSet<u16> = self.ports.values().copied().collect();
        let port = (0..self.settings.max_pods)
            .map(|slot| self.settings.port_base + slot * self.settings.port_stride)
            .find(|port| !taken.contains(port))?;
        self.ports.insert((agent, instance), port);
        Some(port)
    }

    fn cgroup_of(
        &self,
        agent: AgentId,
        instance: Instance,
    ) -> Option<carapace_drivers::cgroup::PodCgroup> {
        let name = super::warm::standby_cgroup_of(&self.pod_dir(agent, instance))
            .unwrap_or_else(|| pod_cgroup_name(agent, instance));
        self.cgroups.as_ref().ok()?.open(&name)
    }

    /// Reports a command's end on the driver's channel, as its tasks do.
    pub fn report_finished(&self, command: CommandId, outcome: Outcome) {
        self.finish(command, outcome);
    }

    fn finish(&self, command: CommandId, outcome: Outcome) {
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let _ = reports.send(Report::Finished { command, outcome }).await;
        });
    }
}

/// Stops what is left of a pod nobody wants (its supervisor, else its processes), then removes
/// its cgroup and directory; in a task of its own.
pub(super) fn tear_down(dir: PodDir, cgroup: Option<carapace_drivers::cgroup::PodCgroup>) {
    tokio::spawn(async move {
        if PodClient::new(dir.clone())
            .stop(Duration::from_secs(5))
            .await
            .is_err()
        {
            kill_supervisor(&dir);
        }
        if let Some(cgroup) = cgroup {
            let _ = cgroup.kill_all();
            let _ = tokio::task::spawn_blocking(move || {
                cgroup.remove_when_empty(Duration::from_secs(5))
            })
            .await;
        }
        remove_pod_dir(dir.root());
    });
}

/// A new supervisor has this long to open its socket before it counts as lost.
const SUPERVISOR_START_GRACE: Duration = Duration::from_secs(5);

fn pod_cgroup_name(agent: AgentId, instance: Instance) -> String {
    format!("pod-{}-{}", agent.0, instance.0)
}

/// Copies a snapshot just taken to every replica: it succeeded only once all of them hold it.
fn replicate(replicas: &Replicas, store: &Path, agent: AgentId, snapshot: SnapshotId) -> Outcome {
    if replicas.is_empty() {
        return Outcome::Succeeded;
    }
    let pushed =
        SnapshotStore::open(store).and_then(|local| replicas.push(&local, agent.0, snapshot.0));
    match pushed {
        Ok(()) => Outcome::Succeeded,
        Err(error) => {
            tracing::warn!(%agent, snapshot = snapshot.0, %error, "a snapshot did not reach every replica");
            Outcome::Failed
        }
    }
}

fn take_snapshot(store: &Path, state: &Path, snapshot: SnapshotId) -> Result<(), String> {
    let store = SnapshotStore::open(store).map_err(|e| e.to_string())?;
    match store.take(state, snapshot.0, SNAPSHOT_EXCLUDES) {
        Ok(_) => Ok(()),
        Err(carapace_drivers::snapshot::SnapshotError::VersionExists(_)) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Removes a pod directory; an adopted standby's link goes with the directory it names.
pub(super) fn remove_pod_dir(root: &Path) {
    match std::fs::read_link(root) {
        Ok(target) => {
            let _ = std::fs::remove_dir_all(target);
            let _ = std::fs::remove_file(root);
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// Whether the supervisor whose pid the pod recorded still runs.
pub(super) fn supervisor_alive(dir: &PodDir) -> bool {
    supervisor_pid(dir).is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.contains("supervise"))
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')))
    })
}

pub(super) fn supervisor_pid(dir: &PodDir) -> Option<i32> {
    std::fs::read_to_string(dir.pid()).ok()?.trim().parse().ok()
}

pub(super) fn kill_supervisor(dir: &PodDir) {
    if supervisor_alive(dir)
        && let Some(pid) = supervisor_pid(dir)
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Hands the agent's secrets to its pod in a file only the owner reads, which the pod's
/// supervisor adds to the agent's environment; it goes with the pod.
fn write_secrets(dir: &PodDir, secrets: &[(String, String)]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.secrets();
    if secrets.is_empty() {
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(&serde_json::to_vec(secrets)?)?;
    file.sync_all()?;
    Ok(())
}

/// Pod directories hold the agent's secrets and state: owner only.
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

fn number(path: &Path) -> Option<u32> {
    path.file_name()?.to_str()?.parse().ok()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
