//! The warm pool on the process driver: standby pods booted ahead of need from the
//! `[warm_pool]` template, each in its own directory, port and memory cgroup, and adopted by
//! a new agent instead of booting one.
//!
//! Adoption changes nothing the running process was started with: its command, environment,
//! pod directory and port stay the standby's. Only the config file changes — the agent's own
//! config, rendered with the standby's port and paths, is moved over the standby's and the
//! agent reloads it itself (an OpenClaw gateway hot-applies a new `gateway.auth.token`,
//! `models` and `agents` in about a second). The standby counts as the agent's once the
//! template's `adopt_probe`, sent with the new instance's token, is accepted: the new config
//! is then live. An agent whose launch differs from the template's (command, environment,
//! probe, validator), or which has secrets (they go into the environment), or whose config
//! carries no `{token}` (nothing would tell that its config took effect) is started cold, and
//! the standby stays in the pool.
//!
//! On disk a standby is `DATA/pods/warm/<slot>/`; adopted, `DATA/pods/<agent>/<instance>` is a
//! symbolic link to it, so everything that finds a pod by agent and instance finds it.

use super::agents::{AgentRecord, AgentRequest, RUNTIME, Rendered};
use super::driver::{ProcessDriver, Report, supervisor_alive};
use carapace_drivers::pod::{PodClient, PodDir};
use carapace_engine::{AgentId, CommandId, Instance, Outcome, Version};
use carapace_sim::scenario::Bytes;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// The port key of standby pods (no agent has this id).
pub(super) const STANDBY: AgentId = AgentId(u32::MAX);
/// A standby not ready by then is given up (its warm-up fails).
const WARM_UP_DEADLINE: Duration = Duration::from_secs(600);
/// Files in a standby's directory: the warm-up command that booted it, and once adopted the
/// seq after which its events are its new owner's.
const WARM_UP_FILE: &str = "warm_up";
const ADOPTED_AFTER_FILE: &str = "adopted_after";
/// The fingerprint of the template a standby was booted from.
const TEMPLATE_FILE: &str = "template";
/// The name of the pod's memory cgroup when it is not `pod-<agent>-<instance>`.
pub(super) const CGROUP_NAME_FILE: &str = "cgroup_name";

/// What a blank instance of the warm pool runs: an agent request without a name, plus the
/// probe that tells an adopted config has taken effect.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmTemplate {
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub probe: String,
    /// The standby's config until it is adopted (placeholders as for agents).
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub validate: Option<Vec<String>>,
    /// The standby's cgroup limit until it is adopted; then the agent's.
    pub memory_limit: Bytes,
    /// `http://IP:PORT/PATH`, sent `POST` with `Authorization: Bearer <the agent's token>`;
    /// any answer but 401, 403 or a 5xx means the adopted config is live. OpenClaw:
    /// `http://127.0.0.1:{port}/tools/invoke`.
    pub adopt_probe: String,
}

impl WarmTemplate {
    /// Parses and checks a template; the error names the field.
    pub fn parse(text: &str) -> Result<WarmTemplate, String> {
        let mut parser = serde_json::Deserializer::from_str(text);
        let template: WarmTemplate = serde_path_to_error::deserialize(&mut parser)
            .map_err(|e| format!("field `{}`: {}", e.path(), e.inner()))?;
        template.request().check()?;
        if !template.adopt_probe.starts_with("http://") {
            return Err("adopt_probe: must be an http://IP:PORT/PATH URL".into());
        }
        let launch = template
            .command
            .iter()
            .chain(template.env.values())
            .chain(std::iter::once(&template.probe))
            .chain(template.validate.iter().flatten());
        for word in launch {
            if let Some(key) = ["{token}", "{agent}", "{instance}"]
                .into_iter()
                .find(|key| word.contains(key))
            {
                return Err(format!(
                    "command, env, probe, validate: `{key}` differs from agent to agent, and a \
                     standby's process is started before its agent is known; use it in `config`"
                ));
            }
        }
        Ok(template)
    }

    /// blake3 of what a standby is booted with: a standby of another template is not reused.
    fn fingerprint(&self) -> String {
        let launch = serde_json::json!([
            self.command,
            self.env,
            self.probe,
            self.config,
            self.validate,
            self.memory_limit.0,
        ]);
        blake3::hash(launch.to_string().as_bytes())
            .to_hex()
            .to_string()
    }

    fn request(&self) -> AgentRequest {
        AgentRequest {
            name: "warm-pool".into(),
            tenant: 0,
            class: 0,
            priority: 0,
            memory_limit: self.memory_limit,
            memory_request: None,
            command: self.command.clone(),
            env: self.env.clone(),
            probe: self.probe.clone(),
            config: self.config.clone(),
            validate: self.validate.clone(),
        }
    }

    /// Whether a standby can become this agent by a new config file alone.
    fn fits(&self, request: &AgentRequest) -> bool {
        request.command == self.command
            && request.env == self.env
            && request.probe == self.probe
            && request.validate == self.validate
            && request
                .config
                .as_ref()
                .is_some_and(|c| c.to_string().contains("{token}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standby {
    /// Not ready yet: its warm-up has not finished.
    Booting,
    Ready,
    /// Was ready (the engine counts it warm), and is being restarted in place.
    Restarting,
}

/// The driver's standby pods.
#[derive(Debug)]
pub(super) struct WarmPool {
    template: WarmTemplate,
    per_node: usize,
    /// Live standbys by slot; a standby leaves when it is adopted or lost.
    standbys: Arc<Mutex<BTreeMap<u32, Standby>>>,
    /// Standbys kept when an agent that does not fit the template took the engine's warm
    /// instance: the next warm-ups are served from them.
    uncounted: u32,
}

impl WarmPool {
    pub(super) fn new(template: WarmTemplate, per_node: u16) -> WarmPool {
        WarmPool {
            template,
            per_node: usize::from(per_node),
            standbys: Arc::default(),
            uncounted: 0,
        }
    }
}

/// How a warm start went.
pub(super) enum Taken {
    /// A standby is being adopted; its end comes as a report.
    Adopting,
    /// No standby fits or is ready: start cold.
    Cold,
}

impl ProcessDriver {
    fn warm_dir(&self) -> PathBuf {
        self.pods_dir().join("warm")
    }

    fn standby_dir(&self, slot: u32) -> PodDir {
        PodDir::new(self.warm_dir().join(slot.to_string()))
    }

    /// Slots on disk, ascending.
    fn standby_slots_on_disk(&self) -> Vec<u32> {
        let mut slots: Vec<u32> = std::fs::read_dir(self.warm_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        slots.sort_unstable();
        slots
    }

    /// Standby directories some agent's pod links to.
    fn adopted_slots(&self) -> std::collections::BTreeSet<u32> {
        self.pods_on_disk()
            .into_iter()
            .filter_map(|(agent, instance)| {
                let link = std::fs::read_link(self.pod_dir(agent, instance).root()).ok()?;
                link.file_name()?.to_str()?.parse().ok()
            })
            .collect()
    }

    /// The engine's `WarmUp`: carried out once the commands issued with it have run (see
    /// [`ProcessDriver::boot_standby`]).
    pub(super) fn warm_up(&self, command: CommandId) {
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let _ = reports.send(Report::WarmUpDue { command }).await;
        });
    }

    /// Boots a standby for a `WarmUp`; finishes when it is ready. The engine issues a
    /// warm-up to refill the pool before the start that took from it: deferred to here, it
    /// can use the standby that start left when its agent did not fit the template. Redone
    /// after a restart of the daemon, it follows the standby that command booted.
    pub(super) fn boot_standby(&mut self, command: CommandId) {
        let Some(pool) = self.warm.as_mut() else {
            self.report_finished(command, Outcome::Failed);
            return;
        };
        if pool.uncounted > 0 {
            pool.uncounted -= 1;
            self.report_finished(command, Outcome::Succeeded);
            return;
        }
        let fingerprint = pool.template.fingerprint();
        let on_disk = self.standby_slots_on_disk();
        let booted_by_it = on_disk.iter().copied().find(|slot| {
            std::fs::read_to_string(self.standby_dir(*slot).root().join(WARM_UP_FILE))
                .is_ok_and(|text| text.trim() == command.0.to_string())
        });
        // One booted from another template (the file changed across a restart) goes.
        let stale = booted_by_it.filter(|slot| {
            !std::fs::read_to_string(self.standby_dir(*slot).root().join(TEMPLATE_FILE))
                .is_ok_and(|t| t.trim() == fingerprint)
        });
        if let Some(slot) = stale {
            self.discard_standby(slot);
        }
        let booted_by_it = booted_by_it.filter(|_| stale.is_none());
        let slot = booted_by_it.unwrap_or_else(|| on_disk.last().map_or(0, |s| s + 1));
        let dir = self.standby_dir(slot);
        if booted_by_it.is_none()
            && let Err(error) = self.lay_out_standby(&dir, slot, command)
        {
            tracing::error!(slot, %error, "cannot lay out a standby pod");
            let _ = std::fs::remove_dir_all(dir.root());
            self.report_finished(command, Outcome::Failed);
            return;
        }
        if let Err(error) = self.launch(&dir) {
            tracing::error!(slot, %error, "cannot start a standby's supervisor");
            self.report_finished(command, Outcome::Failed);
            return;
        }
        self.follow_standby(slot, Some(command));
    }

    fn lay_out_standby(
        &mut self,
        dir: &PodDir,
        slot: u32,
        command: CommandId,
    ) -> anyhow::Result<()> {
        let template = &self.warm.as_ref().expect("a warm pool").template;
        let fingerprint = template.fingerprint();
        let record = AgentRecord {
            id: STANDBY,
            request: template.request(),
            version: Version::new(RUNTIME, 0),
        };
        let port = self
            .port_for(STANDBY, Instance(slot))
            .ok_or_else(|| anyhow::anyhow!("no free port slot for a standby"))?;
        std::fs::create_dir_all(dir.root())?;
        std::fs::write(dir.root().join(WARM_UP_FILE), command.0.to_string())?;
        std::fs::write(dir.root().join(CGROUP_NAME_FILE), standby_cgroup(slot))?;
        std::fs::write(dir.root().join(TEMPLATE_FILE), fingerprint)?;
        let config = record.config_text();
        self.lay_out(dir, &record, Instance(slot), port, config, None)
    }

    /// Follows a standby's events until it is adopted or lost: ready finishes its warm-up;
    /// a supervisor that gives up or goes away takes the standby out of the pool.
    fn follow_standby(&self, slot: u32, command: Option<CommandId>) {
        let Some(pool) = &self.warm else {
            return;
        };
        let standbys = pool.standbys.clone();
        standbys
            .lock()
            .expect("the standbys' lock")
            .insert(slot, Standby::Booting);
        let dir = self.standby_dir(slot);
        let reports = self.reports.clone();
        let cgroup = self
            .cgroups
            .as_ref()
            .ok()
            .and_then(|c| c.open(&standby_cgroup(slot)));
        tokio::spawn(async move {
            let Followed::Lost { reported } =
                follow(&dir, &standbys, slot, command, &reports).await
            else {
                return;
            };
            // Lost or never ready: out of the pool, and gone.
            standbys.lock().expect("the standbys' lock").remove(&slot);
            tracing::warn!(slot, "a standby pod was lost");
            if let Some(command) = command.filter(|_| !reported) {
                let _ = reports
                    .send(Report::Finished {
                        command,
                        outcome: Outcome::Failed,
                    })
                    .await;
            }
            let _ = PodClient::new(dir.clone())
                .stop(Duration::from_secs(5))
                .await;
            if let Some(cgroup) = cgroup {
                let _ = cgroup.kill_all();
                let _ = tokio::task::spawn_blocking(move || {
                    cgroup.remove_when_empty(Duration::from_secs(5))
                })
                .await;
            }
            let _ = std::fs::remove_dir_all(dir.root());
        });
    }

    /// A new agent's start on a warm instance: adopts a ready standby when the agent fits
    /// the template, else says to start cold.
    pub(super) fn take_standby(
        &mut self,
        command: CommandId,
        record: &AgentRecord,
        instance: Instance,
        config_text: Option<&str>,
        fits_otherwise: bool,
    ) -> Taken {
        let dir = self.pod_dir(record.id, instance);
        if std::fs::symlink_metadata(dir.root()).is_ok() {
            return self.retake_standby(command, record, instance);
        }
        let Some(pool) = self.warm.as_mut() else {
            return Taken::Cold;
        };
        let ready = pool
            .standbys
            .lock()
            .expect("the standbys' lock")
            .iter()
            .find(|(_, s)| **s == Standby::Ready)
            .map(|(slot, _)| *slot);
        let Some(slot) = ready else {
            // A standby the engine counted is restarting: once ready again it serves the
            // refill this take makes the engine ask for.
            let restarting = pool
                .standbys
                .lock()
                .expect("the standbys' lock")
                .values()
                .filter(|s| **s == Standby::Restarting)
                .count();
            if (pool.uncounted as usize) < restarting {
                pool.uncounted += 1;
            }
            tracing::info!(agent = %record.id, "no standby ready: a cold start");
            return Taken::Cold;
        };
        let (Some(text), true) = (
            config_text,
            fits_otherwise && pool.template.fits(&record.request),
        ) else {
            // The engine counted a warm instance taken; the standby serves its refill.
            pool.uncounted += 1;
            tracing::info!(agent = %record.id, "the agent does not fit the warm pool's template: a cold start");
            return Taken::Cold;
        };
        let probe_template = pool.template.adopt_probe.clone();
        match self.adopt(command, record, instance, slot, text, &probe_template) {
            Ok(()) => Taken::Adopting,
            Err(error) => {
                tracing::warn!(agent = %record.id, slot, %error, "cannot adopt a standby: a cold start");
                Taken::Cold
            }
        }
    }

    fn adopt(
        &mut self,
        command: CommandId,
        record: &AgentRecord,
        instance: Instance,
        slot: u32,
        config_text: &str,
        probe_template: &str,
    ) -> anyhow::Result<()> {
        let standby = self.standby_dir(slot);
        let port = self
            .ports
            .get(&(STANDBY, Instance(slot)))
            .copied()
            .ok_or_else(|| anyhow::anyhow!("the standby holds no port"))?;
        if let Some(cgroup) = self
            .cgroups
            .as_ref()
            .ok()
            .and_then(|c| c.open(&standby_cgroup(slot)))
        {
            cgroup.set_limit(record.spec().memory_bytes_limit)?;
        }
        let rendered = Rendered::new(record, instance, port, &standby);
        write_private(&standby.adopted_config(), &rendered.config(config_text))?;
        let link = self.pod_dir(record.id, instance);
        std::fs::create_dir_all(link.root().parent().expect("a pod dir has a parent"))?;
        std::os::unix::fs::symlink(standby.root(), link.root())?;
        // From here the standby is the agent's pod.
        self.warm
            .as_ref()
            .expect("a warm pool")
            .standbys
            .lock()
            .expect("the standbys' lock")
            .remove(&slot);
        self.ports.remove(&(STANDBY, Instance(slot)));
        self.ports.insert((record.id, instance), port);
        let probe = rendered.text(probe_template);
        let token = rendered.token().to_owned();
        let reports = self.reports.clone();
        let agent = record.id;
        tokio::spawn(async move {
            let report = match PodClient::new(standby.clone()).adopt(probe, token).await {
                Ok(after) => {
                    match std::fs::write(standby.root().join(ADOPTED_AFTER_FILE), after.to_string())
                    {
                        Ok(()) => Report::Adopted {
                            agent,
                            instance,
                            after,
                        },
                        Err(_) => Report::AdoptionFailed {
                            command,
                            agent,
                            instance,
                        },
                    }
                }
                Err(error) => {
                    tracing::warn!(%agent, %instance, %error, "the standby refused adoption");
                    Report::AdoptionFailed {
                        command,
                        agent,
                        instance,
                    }
                }
            };
            let _ = reports.send(report).await;
        });
        Ok(())
    }

    /// A warm start redone after a restart of the daemon: the adoption finished (follow the
    /// pod from where its events became the agent's), or it did not (undo it, start cold).
    fn retake_standby(
        &mut self,
        command: CommandId,
        record: &AgentRecord,
        instance: Instance,
    ) -> Taken {
        let dir = self.pod_dir(record.id, instance);
        let after = std::fs::read_to_string(dir.root().join(ADOPTED_AFTER_FILE))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        if let Some(after) = after {
            self.adopt_port(record.id, instance);
            self.watch(record.id, instance, after);
            return Taken::Adopting;
        }
        self.abandon_adoption(command, record.id, instance);
        Taken::Cold
    }

    /// Undoes an adoption that did not finish: the agent's link goes, the standby is stopped.
    pub(super) fn abandon_adoption(
        &mut self,
        command: CommandId,
        agent: AgentId,
        instance: Instance,
    ) {
        let link = self.pod_dir(agent, instance);
        let target = std::fs::read_link(link.root()).ok();
        let _ = std::fs::remove_file(link.root());
        self.ports.remove(&(agent, instance));
        tracing::info!(%agent, %instance, %command, "an adoption was abandoned: a cold start");
        if let Some(target) = target {
            self.discard_dir(PodDir::new(target), standby_cgroup_of(&link));
        }
    }

    /// After a restart of the daemon: standbys' ports are claimed before anything starts.
    pub(super) fn claim_standby_ports(&mut self) {
        let adopted = self.adopted_slots();
        for slot in self.standby_slots_on_disk() {
            if adopted.contains(&slot) {
                continue;
            }
            if let Some(port) = std::fs::read_to_string(self.standby_dir(slot).root().join("port"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                self.ports.insert((STANDBY, Instance(slot)), port);
            }
        }
    }

    /// After a restart of the daemon: live standbys rejoin the pool, dead ones and any beyond
    /// the pool's size go. Those booted by a warm-up still `in_flight` are left to its redo.
    pub(super) fn reattach_standbys(&mut self, in_flight: &std::collections::BTreeSet<CommandId>) {
        let mut skipped = self.adopted_slots();
        for slot in self.standby_slots_on_disk() {
            let booted_by =
                std::fs::read_to_string(self.standby_dir(slot).root().join(WARM_UP_FILE))
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .map(CommandId);
            if booted_by.is_some_and(|c| in_flight.contains(&c)) {
                skipped.insert(slot);
            }
        }
        let Some(pool) = &self.warm else {
            for slot in self.standby_slots_on_disk() {
                if !skipped.contains(&slot) {
                    self.discard_standby(slot);
                }
            }
            return;
        };
        let per_node = pool.per_node;
        let fingerprint = pool.template.fingerprint();
        let followed: Vec<u32> = pool
            .standbys
            .lock()
            .expect("the standbys' lock")
            .keys()
            .copied()
            .collect();
        let mut kept = followed.len();
        for slot in self.standby_slots_on_disk() {
            if skipped.contains(&slot) || followed.contains(&slot) {
                continue;
            }
            let dir = self.standby_dir(slot);
            let same_template = std::fs::read_to_string(dir.root().join(TEMPLATE_FILE))
                .is_ok_and(|t| t.trim() == fingerprint);
            if kept < per_node && same_template && supervisor_alive(&dir) {
                kept += 1;
                self.follow_standby(slot, None);
            } else {
                self.discard_standby(slot);
            }
        }
    }

    fn discard_standby(&mut self, slot: u32) {
        self.ports.remove(&(STANDBY, Instance(slot)));
        self.discard_dir(self.standby_dir(slot), Some(standby_cgroup(slot)));
    }

    /// Kills what is left of a pod directory and removes it.
    fn discard_dir(&self, dir: PodDir, cgroup: Option<String>) {
        let cgroup = cgroup.and_then(|name| self.cgroups.as_ref().ok()?.open(&name));
        super::driver::tear_down(dir, cgroup);
    }

    /// Frees the port slots of standbys that are gone (lost while they waited).
    pub(super) fn prune_standby_ports(&mut self) {
        let warm = self.warm_dir();
        self.ports.retain(|(agent, instance), _| {
            *agent != STANDBY || warm.join(instance.0.to_string()).exists()
        });
    }

    /// Ready standbys now (for `/metrics`).
    pub fn standbys_ready(&self) -> usize {
        self.warm.as_ref().map_or(0, |pool| {
            pool.standbys
                .lock()
                .expect("the standbys' lock")
                .values()
                .filter(|s| **s == Standby::Ready)
                .count()
        })
    }
}

/// How following a standby ended.
enum Followed {
    /// It left the pool for an agent.
    Adopted,
    /// Its supervisor gave up or went away, or it was not ready in time; `reported`: its
    /// warm-up had finished already.
    Lost { reported: bool },
}

enum Step {
    Go,
    Ready,
    Adopted,
    Lost,
}

/// Follows one standby's events: its first ready finishes its warm-up; then it is watched
/// while it waits, until it is adopted or lost.
async fn follow(
    dir: &PodDir,
    standbys: &Mutex<BTreeMap<u32, Standby>>,
    slot: u32,
    command: Option<CommandId>,
    reports: &mpsc::Sender<Report>,
) -> Followed {
    use carapace_drivers::supervise::Event;
    let mut after = 0;
    let mut reported = false;
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    let boot_deadline = tokio::time::Instant::now() + WARM_UP_DEADLINE;
    let far = boot_deadline + Duration::from_secs(86_400 * 365);
    loop {
        let (events, mut received) = mpsc::channel(64);
        let client = PodClient::new(dir.clone());
        let streaming = tokio::spawn(async move { client.watch(after, events).await });
        loop {
            let deadline = if reported || command.is_none() {
                far
            } else {
                boot_deadline
            };
            let Ok(next) = tokio::time::timeout_at(deadline, received.recv()).await else {
                streaming.abort();
                return Followed::Lost { reported };
            };
            let Some(numbered) = next else {
                break;
            };
            after = numbered.seq;
            unreachable_since = None;
            let step = {
                let mut standbys = standbys.lock().expect("the standbys' lock");
                match standbys.get_mut(&slot) {
                    None => Step::Adopted,
                    Some(state) => match numbered.event {
                        Event::Ready { .. } => {
                            *state = Standby::Ready;
                            Step::Ready
                        }
                        // A failed liveness probe alone is no restart: the process keeps
                        // its healthy state (no `ready` follows), and a hang is escalated by
                        // its supervisor, which ends the standby.
                        Event::Exited { .. } => {
                            if *state == Standby::Ready {
                                *state = Standby::Restarting;
                            }
                            Step::Go
                        }
                        Event::Escalated { .. }
                        | Event::ConfigRejected { .. }
                        | Event::Stopped { .. } => Step::Lost,
                        _ => Step::Go,
                    },
                }
            };
            match step {
                Step::Adopted => {
                    streaming.abort();
                    return Followed::Adopted;
                }
                Step::Lost => {
                    streaming.abort();
                    return Followed::Lost { reported };
                }
                Step::Ready if !reported => {
                    if let Some(command) = command {
                        reported = true;
                        let _ = reports
                            .send(Report::Finished {
                                command,
                                outcome: Outcome::Succeeded,
                            })
                            .await;
                    }
                }
                Step::Ready | Step::Go => {}
            }
        }
        let _ = streaming.await;
        if !standbys
            .lock()
            .expect("the standbys' lock")
            .contains_key(&slot)
        {
            return Followed::Adopted;
        }
        let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
        let started = super::driver::supervisor_pid(dir).is_some();
        if (started || since.elapsed() > Duration::from_secs(5)) && !supervisor_alive(dir) {
            return Followed::Lost { reported };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn standby_cgroup(slot: u32) -> String {
    format!("warm-{slot}")
}

/// The cgroup name a pod directory records, if it is not the default one.
pub(super) fn standby_cgroup_of(dir: &PodDir) -> Option<String> {
    std::fs::read_to_string(dir.root().join(CGROUP_NAME_FILE))
        .ok()
        .map(|name| name.trim().to_owned())
}

/// Writes a file only its owner reads (a config holds the agent's token).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
