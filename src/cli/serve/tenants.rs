//! Tenants and who is calling: the admin token, and one token per tenant, kept as blake3
//! hashes so that the store never holds a token that works.
//!
//! Every request runs as a [`Caller`]. A tenant's token sees its own agents only: another
//! tenant's agent answers exactly as an agent that does not exist (the same 404, the same
//! body), so a refusal reveals nothing. Fleet-wide routes (nodes, metrics, tenants) are the
//! admin's; to a tenant they do not exist either.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Desired-state kind of tenant records in the store.
pub const TENANTS: &str = "tenant";
/// Bounds on the tenant table.
pub const MAX_TENANTS: usize = 100_000;
const MAX_TENANT_NAME: usize = 128;

/// Who a request runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(u32),
}

impl Caller {
    /// The tenant a request is scoped to: a tenant's own, or the one an admin names
    /// (tenant 0 when it names none).
    pub fn scope(self, asked: Option<u32>) -> u32 {
        match self {
            Caller::Admin => asked.unwrap_or(0),
            Caller::Tenant(tenant) => tenant,
        }
    }

    /// Whether this caller may see what belongs to `tenant`.
    pub fn sees(self, tenant: u32) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(own) => own == tenant,
        }
    }
}

/// One tenant as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: u32,
    pub name: String,
    /// blake3 of the token, hex.
    pub token_blake3: String,
    #[serde(default)]
    pub quota: Quota,
}

/// What one tenant may hold; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default)]
    pub max_agents: Option<u32>,
    /// The sum of the agents' memory limits.
    #[serde(default)]
    pub max_memory_bytes: Option<u64>,
}

/// The body of `POST /v1/tenants`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRequest {
    pub id: u32,
    pub name: String,
    #[serde(default)]
    pub quota: Quota,
}

impl TenantRequest {
    pub fn check(&self) -> Result<(), String> {
        let ok = !self.name.is_empty()
            && self.name.len() <= MAX_TENANT_NAME
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(())
        } else {
            Err(format!(
                "name: must be 1-{MAX_TENANT_NAME} characters of A-Z, a-z, 0-9, '-', '_', '.'"
            ))
        }
    }
}

/// Token hashes to tenants, shared by the daemon (which adds tenants) and the HTTP layer
/// (which authenticates).
#[derive(Clone, Debug, Default)]
pub struct Keys {
    by_hash: Arc<RwLock<BTreeMap<String, u32>>>,
}

impl Keys {
    pub fn insert(&self, record: &TenantRecord) {
        self.by_hash
            .write()
            .expect("the key table's lock")
            .insert(record.token_blake3.clone(), record.id);
    }

    /// The tenant a presented token belongs to. The lookup is by hash: comparing hashes
    /// tells nothing about the token that a timing could exploit.
    pub fn tenant_of(&self, token: &str) -> Option<u32> {
        self.by_hash
            .read()
            .expect("the key table's lock")
            .get(&hash(token))
            .copied()
    }
}

pub fn hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Per-tenant token buckets: a tenant over its rate gets 429 at once, and no other tenant
/// waits for it.
#[derive(Clone, Debug)]
pub struct RateLimits {
    per_second: f64,
    burst: f64,
    buckets: Arc<std::sync::Mutex<BTreeMap<u32, (f64, std::time::Instant)>>>,
}

impl RateLimits {
    pub fn new(per_second: f64, burst: u32) -> RateLimits {
        RateLimits {
            per_second,
            burst: f64::from(burst),
            buckets: Arc::default(),
        }
    }

    /// Takes one request's token; when none is left, the whole seconds until one is.
    pub fn take(&self, tenant: u32) -> Result<(), u64> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().expect("the rate table's lock");
        let (tokens, last) = buckets.entry(tenant).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        Err(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
    }
}
