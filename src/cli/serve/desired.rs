//! Desired state, from the API: each change checked, stored and fed to the engine in one
//! step, or refused with nothing changed.

use super::agents::{AgentRecord, AgentRequest, RUNTIME, next_version};
use super::daemon::{AGENTS, ApiError, CONFIGS, Daemon, config_key};
use carapace_engine::{AgentId, Input, Version};
use carapace_store::Batch;

impl Daemon {
    // Desired state, from the API.

    pub fn create(&mut self, request: AgentRequest) -> Result<AgentRecord, ApiError> {
        request.check().map_err(ApiError::BadRequest)?;
        if self
            .names
            .contains_key(&(request.tenant, request.name.clone()))
        {
            return Err(ApiError::Conflict(format!(
                "an agent named `{}` exists",
                request.name
            )));
        }
        self.check_quota(&request)?;
        let id = AgentId(self.next_agent);
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
        self.next_agent = id.0 + 1;
        Ok(record)
    }

    /// Puts a record into the in-memory desired state; returns what it replaced.
    pub(super) fn remember(&mut self, record: &AgentRecord) -> Option<AgentRecord> {
        if let Some(text) = record.config_text() {
            self.configs
                .insert((record.id, record.version.config), text);
        }
        self.names.insert(
            (record.request.tenant, record.request.name.clone()),
            record.id,
        );
        self.agents.insert(record.id, record.clone())
    }

    /// Undoes [`remember`](Self::remember) after the engine refused the change.
    pub(super) fn forget(&mut self, record: &AgentRecord, previous: Option<AgentRecord>) {
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
                self.names
                    .remove(&(record.request.tenant, record.request.name.clone()));
                self.agents.remove(&record.id);
            }
        }
    }

    pub fn update(
        &mut self,
        tenant: u32,
        name: &str,
        request: AgentRequest,
    ) -> Result<AgentRecord, ApiError> {
        request.check().map_err(ApiError::BadRequest)?;
        let id = self.id_of(tenant, name)?;
        if request.tenant != tenant {
            return Err(ApiError::BadRequest("tenant: cannot be changed".into()));
        }
        if request.name != name {
            return Err(ApiError::BadRequest("name: cannot be changed".into()));
        }
        let old = &self.agents[&id];
        let record = AgentRecord {
            id,
            version: next_version(old, &request, self.next_config_version(id)),
            request,
        };
        self.commit_update(record)
    }

    /// Journals a changed agent (its record and its config text) with the engine's update, as
    /// one step; on refusal, the desired state is as it was.
    pub(super) fn commit_update(&mut self, record: AgentRecord) -> Result<AgentRecord, ApiError> {
        let id = record.id;
        self.refuse_in_rollout(id)?;
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

    pub fn remove(&mut self, tenant: u32, name: &str) -> Result<(), ApiError> {
        let id = self.id_of(tenant, name)?;
        self.refuse_in_rollout(id)?;
        let mut batch = Batch::new();
        batch.remove_desired(AGENTS, u64::from(id.0));
        batch.remove_desired(super::secrets::SECRETS, u64::from(id.0));
        self.apply(Input::RemoveAgent { agent: id }, batch)
            .map_err(ApiError::from)?;
        self.names.remove(&(tenant, name.to_owned()));
        self.agents.remove(&id);
        self.secrets.remove(&id);
        self.memory.forget(id);
        Ok(())
    }

    /// The command that replays the journal up to `until_ms`, where `carapace replay` can read
    /// it (a redb file; not yet a cluster's journal in etcd).
    pub fn replay_command(&self, until_ms: u64) -> Option<String> {
        let path = self.store.replay_path()?;
        Some(format!(
            "carapace replay {} --until {until_ms}",
            path.display()
        ))
    }

    /// The agent `name` in `tenant`'s namespace. Another tenant's agent of that name is not
    /// found, with exactly the answer of an agent that does not exist.
    pub fn id_of(&self, tenant: u32, name: &str) -> Result<AgentId, ApiError> {
        self.names
            .get(&(tenant, name.to_owned()))
            .copied()
            .ok_or_else(|| ApiError::NotFound(format!("no agent named `{name}`")))
    }

    /// Adds a tenant with a fresh token, returned once; the store keeps only its hash.
    pub fn create_tenant(
        &mut self,
        request: super::tenants::TenantRequest,
    ) -> Result<(super::tenants::TenantRecord, String), ApiError> {
        request.check().map_err(ApiError::BadRequest)?;
        if self.tenants.contains_key(&request.id) {
            return Err(ApiError::Conflict(format!("tenant {} exists", request.id)));
        }
        if self.tenants.len() >= super::tenants::MAX_TENANTS {
            return Err(ApiError::BadRequest(format!(
                "id: at most {} tenants",
                super::tenants::MAX_TENANTS
            )));
        }
        let token = super::agents::fresh_token() + &super::agents::fresh_token();
        let record = super::tenants::TenantRecord {
            id: request.id,
            name: request.name,
            token_blake3: super::tenants::hash(&token),
            quota: request.quota,
        };
        let mut batch = Batch::new();
        batch.put_desired(super::tenants::TENANTS, u64::from(record.id), &record);
        self.store
            .commit(batch)
            .map_err(|e| ApiError::Refused(e.to_string()))?;
        self.keys.insert(&record);
        self.tenants.insert(record.id, record.clone());
        Ok((record, token))
    }

    /// The config versions kept for an agent, ascending.
    pub fn config_versions(&self, id: AgentId) -> Vec<u32> {
        self.configs
            .range((id, 0)..=(id, u32::MAX))
            .map(|((_, version), _)| *version)
            .collect()
    }

    /// Sets (or, with `None`, deletes) one secret of an agent. The agent then moves to a new
    /// config version — restarted from a snapshot, its state intact — so the change reaches
    /// its environment.
    pub fn set_secret(
        &mut self,
        tenant: u32,
        name: &str,
        secret: &str,
        value: Option<&str>,
    ) -> Result<(), ApiError> {
        use super::secrets::{MAX_SECRET_BYTES, MAX_SECRETS, SECRETS, check_name};
        if self.cluster.is_some() {
            // Assignments travel through etcd in clear: a secret must not, and nodes cannot
            // open sealed ones yet. Refused rather than kept from the agent in silence.
            return Err(ApiError::BadRequest(
                "secrets: not available in cluster mode yet (serve --etcd): nodes cannot \
                 receive them sealed"
                    .into(),
            ));
        }
        let id = self.id_of(tenant, name)?;
        self.refuse_in_rollout(id)?;
        check_name(secret).map_err(ApiError::BadRequest)?;
        let mut sealed = self.secrets.get(&id).cloned().unwrap_or_default();
        match value {
            Some(value) => {
                if value.contains('\0') {
                    // An environment variable cannot hold one: the agent would not start.
                    return Err(ApiError::BadRequest(
                        "secret value: must not contain a NUL character".into(),
                    ));
                }
                if value.len() > MAX_SECRET_BYTES {
                    return Err(ApiError::BadRequest(format!(
                        "secret value: at most {MAX_SECRET_BYTES} bytes"
                    )));
                }
                if !sealed.contains_key(secret) && sealed.len() >= MAX_SECRETS {
                    return Err(ApiError::BadRequest(format!(
                        "secret name: at most {MAX_SECRETS} secrets per agent"
                    )));
                }
                sealed.insert(
                    secret.to_owned(),
                    self.vault.seal(id, secret, value.as_bytes()),
                );
            }
            None => {
                if sealed.remove(secret).is_none() {
                    return Err(ApiError::NotFound(format!("no secret named `{secret}`")));
                }
            }
        }
        let old = self.agents[&id].clone();
        let record = AgentRecord {
            version: Version::new(old.version.runtime, self.next_config_version(id)),
            ..old
        };
        let mut batch = Batch::new();
        batch.put_desired(SECRETS, u64::from(id.0), &sealed);
        batch.put_desired(AGENTS, u64::from(id.0), &record);
        if let Some(text) = record.config_text() {
            batch.put_desired(CONFIGS, config_key(id, record.version.config), &text);
        }
        let previous_secrets = self.secrets.insert(id, sealed);
        let previous = self.remember(&record);
        if let Err(error) = self.apply(Input::UpdateAgent(record.spec()), batch) {
            self.forget(&record, previous);
            match previous_secrets {
                Some(secrets) => self.secrets.insert(id, secrets),
                None => self.secrets.remove(&id),
            };
            return Err(error.into());
        }
        Ok(())
    }

    /// The names of an agent's secrets; never their values.
    pub fn secret_names(&self, tenant: u32, name: &str) -> Result<Vec<String>, ApiError> {
        let id = self.id_of(tenant, name)?;
        Ok(self
            .secrets
            .get(&id)
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// A new agent must fit its tenant's quota.
    fn check_quota(&self, request: &AgentRequest) -> Result<(), ApiError> {
        let Some(quota) = self.tenants.get(&request.tenant).map(|t| t.quota) else {
            return Ok(());
        };
        let own = || {
            self.agents
                .values()
                .filter(|a| a.request.tenant == request.tenant)
        };
        let over = |message: String| ApiError::TooMany {
            message,
            // Nothing but a removal frees a quota: a retry waits for an operator.
            retry_after_s: 60,
        };
        if let Some(max) = quota.max_agents
            && own().count() as u64 >= u64::from(max)
        {
            return Err(over(format!(
                "quota: tenant {} may hold {max} agents",
                request.tenant
            )));
        }
        if let Some(max) = quota.max_memory_bytes {
            let held: u64 = own().map(|a| a.request.memory_limit.0).sum();
            if held.saturating_add(request.memory_limit.0) > max {
                return Err(over(format!(
                    "quota: tenant {} may hold {max} bytes of memory limits ({held} held)",
                    request.tenant
                )));
            }
        }
        Ok(())
    }
}
