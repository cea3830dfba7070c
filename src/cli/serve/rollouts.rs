//! Rollouts from the API: one config change — a JSON merge patch (RFC 7396) — staged across a
//! set of agents. The engine decides everything else: the waves, each gated on the previous
//! one running known-good on the new version, and the rollback of every changed agent when one
//! fails on it. The daemon only writes each agent's new config version and keeps, for the API,
//! what the engine reported.
//!
//! Every agent of a rollout moves to the same config version number (one past the highest any
//! of them has used), because the engine stages one version across the set. An agent's config
//! versions therefore skip numbers; they still only go forward.

use super::agents::{AgentRecord, RUNTIME};
use super::daemon::{AGENTS, ApiError, CONFIGS, Daemon, config_key};
use carapace_engine::{AgentId, Input, RolloutId, RolloutSpec, RolloutState, Version};
use carapace_store::Batch;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Desired-state kind of a rollout in the store.
pub(super) const ROLLOUTS: &str = "rollout";
/// Bounds on one request (every input has a limit).
const MAX_AGENTS: usize = 10_000;
/// Rollouts kept for the API; the oldest finished ones go first.
const MAX_KEPT: usize = 1_000;

/// The body of `POST /v1/rollouts`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// Agents by name, in the caller's tenant.
    pub agents: Vec<String>,
    /// Agents changed at once; the next wave waits for this one to run known-good.
    #[serde(default = "one")]
    pub wave_size: u32,
    /// Merged into each agent's config: an object's keys replace, `null` removes a key.
    pub config_patch: Value,
}

fn one() -> u32 {
    1
}

impl RolloutRequest {
    pub(super) fn check(&self) -> Result<(), String> {
        if self.agents.is_empty() {
            return Err("agents: name at least one agent".into());
        }
        if self.agents.len() > MAX_AGENTS {
            return Err(format!("agents: at most {MAX_AGENTS}"));
        }
        let mut seen = BTreeSet::new();
        if let Some(twice) = self.agents.iter().find(|name| !seen.insert(name.as_str())) {
            return Err(format!("agents: `{twice}` is named twice"));
        }
        if self.wave_size == 0 {
            return Err("wave_size: must be at least 1".into());
        }
        if !self.config_patch.is_object() {
            return Err("config_patch: must be a JSON object (a merge patch, RFC 7396)".into());
        }
        Ok(())
    }
}

/// A rollout as the store keeps it: what was asked, resolved to ids and the version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct RolloutRecord {
    pub id: u32,
    pub tenant: u32,
    pub agents: Vec<AgentId>,
    pub wave_size: u32,
    pub config_version: u32,
}

/// Where a rollout stands, from the engine's reports (live, or replayed after a restart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Progress {
    #[default]
    Started,
    Wave {
        wave: u32,
    },
    Completed,
    RolledBack {
        failed_agent: AgentId,
    },
}

impl Progress {
    fn finished(self) -> bool {
        matches!(self, Progress::Completed | Progress::RolledBack { .. })
    }
}

/// A rollout the daemon keeps, and where the engine's reports say it stands.
#[derive(Debug)]
struct Kept {
    record: RolloutRecord,
    progress: Progress,
}

/// The daemon's rollouts.
#[derive(Debug, Default)]
pub(super) struct Rollouts {
    kept: BTreeMap<u32, Kept>,
    /// Agents in a rollout that has not finished, with it: an index over `kept`.
    active: BTreeMap<AgentId, u32>,
    next: u32,
}

impl Rollouts {
    fn insert(&mut self, record: RolloutRecord) {
        for &agent in &record.agents {
            self.active.insert(agent, record.id);
        }
        self.next = self.next.max(record.id + 1);
        let progress = Progress::default();
        self.kept.insert(record.id, Kept { record, progress });
    }

    fn forget(&mut self, id: u32) {
        self.kept.remove(&id);
        self.active.retain(|_, active| *active != id);
    }

    /// Takes an engine report. A rollout let go of (the journal replays its reports) is not
    /// kept again.
    fn report(&mut self, rollout: RolloutId, state: RolloutState) {
        let Some(kept) = self.kept.get_mut(&rollout.0) else {
            return;
        };
        kept.progress = match state {
            RolloutState::WaveStarted { wave, .. } => Progress::Wave { wave },
            RolloutState::Completed => Progress::Completed,
            RolloutState::RolledBack { failed_agent } => Progress::RolledBack { failed_agent },
        };
        if kept.progress.finished() {
            self.active.retain(|_, active| *active != rollout.0);
        }
    }

    /// Finished rollouts, oldest first, to let go so that the API keeps at most `MAX_KEPT`
    /// once `adding` more are kept.
    fn surplus(&self, adding: usize) -> Vec<u32> {
        let over = (self.kept.len() + adding).saturating_sub(MAX_KEPT);
        self.kept
            .iter()
            .filter(|(_, kept)| kept.progress.finished())
            .take(over)
            .map(|(&id, _)| id)
            .collect()
    }
}

/// RFC 7396: an object merges key by key, `null` removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(object) = target else {
        unreachable!("made an object above");
    };
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

impl Daemon {
    pub(super) fn load_rollouts(&mut self) -> anyhow::Result<()> {
        for (_, record) in self.store.desired::<RolloutRecord>(ROLLOUTS)? {
            self.rollouts.insert(record);
        }
        Ok(())
    }

    /// Stages `request` across its agents: each agent's patched config becomes a new version,
    /// journaled with the engine's rollout in one step; refused whole, with nothing changed.
    pub fn start_rollout(
        &mut self,
        tenant: u32,
        request: RolloutRequest,
    ) -> Result<Value, ApiError> {
        request.check().map_err(ApiError::BadRequest)?;
        let mut ids = Vec::with_capacity(request.agents.len());
        for name in &request.agents {
            let id = self.id_of(tenant, name)?;
            self.refuse_in_rollout(id)?;
            ids.push(id);
        }
        let config_version = ids
            .iter()
            .map(|&id| self.next_config_version(id))
            .max()
            .expect("at least one agent");
        let version = Version::new(RUNTIME, config_version);
        let mut records = Vec::with_capacity(ids.len());
        for &id in &ids {
            let mut record = self.agents[&id].clone();
            let Some(config) = record.request.config.as_mut() else {
                return Err(ApiError::BadRequest(format!(
                    "agents: `{}` has no config to patch",
                    record.request.name
                )));
            };
            merge_patch(config, &request.config_patch);
            record.request.check().map_err(|problem| {
                ApiError::BadRequest(format!(
                    "config_patch: for `{}`: {problem}",
                    record.request.name
                ))
            })?;
            record.version = version;
            records.push(record);
        }
        let rollout = RolloutRecord {
            id: self.rollouts.next,
            tenant,
            agents: ids.clone(),
            wave_size: request.wave_size,
            config_version,
        };
        let mut batch = Batch::new();
        for record in &records {
            batch.put_desired(AGENTS, u64::from(record.id.0), record);
            let text = record.config_text().expect("a patched config");
            batch.put_desired(CONFIGS, config_key(record.id, config_version), &text);
        }
        batch.put_desired(ROLLOUTS, u64::from(rollout.id), &rollout);
        let let_go = self.rollouts.surplus(1);
        for &old in &let_go {
            batch.remove_desired(ROLLOUTS, u64::from(old));
        }
        let previous: Vec<(AgentRecord, Option<AgentRecord>)> = records
            .into_iter()
            .map(|record| {
                let old = self.remember(&record);
                (record, old)
            })
            .collect();
        let spec = RolloutSpec {
            id: RolloutId(rollout.id),
            agents: ids,
            version,
            wave_size: request.wave_size,
        };
        // The engine reports the first wave within `apply`: the rollout must be known.
        self.rollouts.insert(rollout.clone());
        if let Err(error) = self.apply(Input::StartRollout(spec), batch) {
            for (record, old) in previous {
                self.forget(&record, old);
            }
            self.rollouts.forget(rollout.id);
            return Err(error.into());
        }
        for old in let_go {
            self.rollouts.forget(old);
        }
        Ok(self
            .rollout_view(rollout.id, |_| true)
            .expect("just started"))
    }

    /// A rollout as the API shows it, if the daemon keeps it and `visible` lets the caller
    /// see its tenant's.
    pub fn rollout_view(&self, id: u32, visible: impl Fn(u32) -> bool) -> Option<Value> {
        let Kept { record, progress } = self.rollouts.kept.get(&id)?;
        if !visible(record.tenant) {
            return None;
        }
        let name = |agent: &AgentId| {
            self.agents
                .get(agent)
                .map_or_else(|| agent.to_string(), |r| r.request.name.clone())
        };
        let (state, wave, failed) = match *progress {
            Progress::Started => ("started", None, None),
            Progress::Wave { wave } => ("in_progress", Some(wave), None),
            Progress::Completed => ("completed", None, None),
            Progress::RolledBack { failed_agent } => {
                ("rolled_back", None, Some(name(&failed_agent)))
            }
        };
        Some(json!({
            "id": id,
            "tenant": record.tenant,
            "agents": record.agents.iter().map(name).collect::<Vec<_>>(),
            "wave_size": record.wave_size,
            "config_version": record.config_version,
            "state": state,
            "wave": wave,
            "failed_agent": failed,
        }))
    }

    /// The rollouts `visible` lets a caller see, newest first.
    pub fn rollout_views(&self, visible: impl Fn(u32) -> bool) -> Vec<Value> {
        self.rollouts
            .kept
            .keys()
            .rev()
            .filter_map(|&id| self.rollout_view(id, &visible))
            .collect()
    }

    /// An agent in a rollout under way takes no other change: the engine stages its version
    /// and would wait forever for a wave whose version was changed under it.
    pub(super) fn refuse_in_rollout(&self, id: AgentId) -> Result<(), ApiError> {
        match self.rollouts.active.get(&id) {
            Some(rollout) => Err(ApiError::Conflict(format!(
                "agent `{}` is in rollout {rollout}, which has not finished",
                self.agents[&id].request.name
            ))),
            None => Ok(()),
        }
    }

    /// The next config version an agent may take: past every one it has used.
    pub(super) fn next_config_version(&self, id: AgentId) -> u32 {
        let stored = self.config_versions(id).last().copied().unwrap_or(0);
        stored.max(self.agents[&id].version.config) + 1
    }

    /// Bookkeeping of an engine report, live or replayed.
    pub(super) fn note_rollout(&mut self, rollout: RolloutId, state: RolloutState) {
        self.rollouts.report(rollout, state);
    }

    /// After a rollback (live, or found by the replay), an agent's record follows the engine
    /// back to the version it runs again, so the API and the next change start from it. Only
    /// a rollout moves the engine's desired version away from the record (ahead, wave by wave,
    /// or back): outside one they must agree.
    pub(super) fn follow_engine_versions(&mut self) {
        let outside: Vec<AgentId> = self
            .agents
            .keys()
            .filter(|agent| !self.rollouts.active.contains_key(agent))
            .copied()
            .collect();
        for agent in outside {
            let Some(desired) = self.controller.agent(agent).map(|v| v.desired_version) else {
                continue;
            };
            let config = self.configs.get(&(agent, desired.config)).cloned();
            let Some(record) = self.agents.get_mut(&agent) else {
                continue;
            };
            if record.version == desired {
                continue;
            }
            record.version = desired;
            if let Some(text) = config {
                record.request.config = serde_json::from_str(&text).ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_merge_patch_replaces_adds_and_removes_keys() {
        let mut config = json!({"port": 1, "greeting": "old", "nested": {"a": 1, "b": 2}});
        merge_patch(
            &mut config,
            &json!({"greeting": "new", "nested": {"b": null, "c": 3}, "extra": [1]}),
        );
        assert_eq!(
            config,
            json!({"port": 1, "greeting": "new", "nested": {"a": 1, "c": 3}, "extra": [1]})
        );
    }

    #[test]
    fn a_request_is_checked_field_by_field() {
        let request = |body: Value| serde_json::from_value::<RolloutRequest>(body);
        let bad = [
            (json!({"agents": [], "config_patch": {}}), "agents"),
            (json!({"agents": ["a", "a"], "config_patch": {}}), "agents"),
            (
                json!({"agents": ["a"], "wave_size": 0, "config_patch": {}}),
                "wave_size",
            ),
            (json!({"agents": ["a"], "config_patch": 3}), "config_patch"),
        ];
        for (body, field) in bad {
            let problem = request(body).expect("parses").check().expect_err("refused");
            assert!(problem.starts_with(field), "{problem}");
        }
        assert!(request(json!({"agents": ["a"], "config_patch": {}, "x": 1})).is_err());
        let good = request(json!({"agents": ["a"], "config_patch": {}})).expect("parses");
        assert_eq!(good.wave_size, 1);
        good.check().expect("valid");
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop::collection::btree_map("[a-d]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    proptest! {
        /// Applying a patch twice changes nothing more, and every key the patch sets to a
        /// non-object value holds exactly that value.
        #[test]
        fn a_merge_patch_is_idempotent_and_lands(target in json_value(), patch in json_value()) {
            let mut once = target.clone();
            merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(&once, &twice);
            if let Value::Object(patch) = &patch {
                for (key, value) in patch {
                    match value {
                        Value::Null => prop_assert!(once.get(key).is_none()),
                        Value::Object(_) => prop_assert!(once.get(key).is_some_and(Value::is_object)),
                        _ => prop_assert_eq!(once.get(key), Some(value)),
                    }
                }
            }
        }
    }
}
