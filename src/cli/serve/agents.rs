//! Agents as the API takes them: the engine's spec plus how to run the agent on a machine —
//! its command, environment, probe and config, with `{placeholders}` each pod fills in.

use carapace_drivers::pod::PodDir;
use carapace_engine::{AgentId, AgentSpec, Instance, Priority, TenantId, Version};
use carapace_sim::scenario::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The runtime version every agent runs until rollouts of runtimes exist in the API.
pub const RUNTIME: u32 = 1;
/// Bounds on what one request may carry (TigerStyle: every input has a limit).
const MAX_NAME: usize = 128;
const MAX_WORDS: usize = 256;
const MAX_ENV: usize = 256;
const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The body of `POST /v1/agents` and `PUT /v1/agents/{name}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRequest {
    pub name: String,
    #[serde(default)]
    pub tenant: u32,
    #[serde(default)]
    pub class: u16,
    #[serde(default)]
    pub priority: u8,
    /// The pod's hard memory limit (cgroup).
    pub memory_limit: Bytes,
    /// What it is expected to use; half the limit when not given.
    #[serde(default)]
    pub memory_request: Option<Bytes>,
    /// Program and arguments. Placeholders: `{port}`, `{pod}`, `{state}`, `{config}`,
    /// `{agent}`, `{instance}`, `{token}` (a fresh secret per instance).
    pub command: Vec<String>,
    /// Environment; values may be secrets and are never returned by the API.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The health probe: `http://127.0.0.1:{port}/readyz`, `tcp://…` or `cmd:…`.
    pub probe: String,
    /// The agent's config file, written to `{config}` before every start. Each change is a
    /// new config version; the last one that ran healthy is the known-good one.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Validates the config before every start (exit 0: valid), e.g.
    /// `["openclaw", "config", "validate", "--json"]`.
    #[serde(default)]
    pub validate: Option<Vec<String>>,
}

/// A desired agent as the daemon keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub id: AgentId,
    pub request: AgentRequest,
    pub version: Version,
}

impl AgentRequest {
    /// Checks the request; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "name: must be 1-{MAX_NAME} characters of A-Z, a-z, 0-9, '-', '_', '.'"
            ));
        }
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err("command: needs a program".into());
        }
        if self.command.len() > MAX_WORDS {
            return Err(format!("command: at most {MAX_WORDS} words"));
        }
        if self.env.len() > MAX_ENV {
            return Err(format!("env: at most {MAX_ENV} variables"));
        }
        if let Some(key) = self
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(format!("env: `{key}` is not a variable name"));
        }
        if let Some(key) = self
            .env
            .iter()
            .find(|(_, v)| v.contains('\0'))
            .map(|(k, _)| k)
        {
            return Err(format!("env: the value of `{key}` holds a NUL character"));
        }
        if self.command.iter().any(|w| w.contains('\0')) {
            return Err("command: a word holds a NUL character".into());
        }
        if self.memory_limit.0 == 0 {
            return Err("memory_limit: must be above zero".into());
        }
        if self
            .memory_request
            .is_some_and(|r| r.0 > self.memory_limit.0)
        {
            return Err("memory_request: must not exceed memory_limit".into());
        }
        if self.probe.is_empty() {
            return Err("probe: needs a probe".into());
        }
        if let Some(config) = &self.config
            && serde_json::to_vec(config).map_or(true, |v| v.len() > MAX_CONFIG_BYTES)
        {
            return Err(format!("config: at most {MAX_CONFIG_BYTES} bytes"));
        }
        if self
            .validate
            .as_ref()
            .is_some_and(|v| v.is_empty() || v.len() > MAX_WORDS)
        {
            return Err("validate: needs a program".into());
        }
        Ok(())
    }
}

impl AgentRecord {
    pub fn spec(&self) -> AgentSpec {
        let limit = self.request.memory_limit.0;
        AgentSpec {
            id: self.id,
            tenant: TenantId(self.request.tenant),
            class: self.request.class,
            priority: Priority(self.request.priority),
            memory_bytes_limit: limit,
            memory_bytes_request: self.request.memory_request.map_or(limit / 2, |r| r.0),
            version: self.version,
            depends_on: Vec::new(),
            allowed_zones: Vec::new(),
        }
    }

    /// The config text, exactly as stored for a version.
    pub fn config_text(&self) -> Option<String> {
        self.request
            .config
            .as_ref()
            .map(|c| serde_json::to_string_pretty(c).expect("a JSON value serialises"))
    }

    /// What the API shows: everything but the environment's values.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.request.name,
            "id": self.id.0,
            "tenant": self.request.tenant,
            "class": self.request.class,
            "priority": self.request.priority,
            "memory_limit_bytes": self.request.memory_limit.0,
            "version": {"runtime": self.version.runtime, "config": self.version.config},
            "command": self.request.command,
            "env": self.request.env.keys().collect::<Vec<_>>(),
            "probe": self.request.probe,
        })
    }
}

/// Placeholders filled in for one pod.
#[derive(Debug)]
pub struct Rendered {
    values: Vec<(&'static str, String)>,
}

impl Rendered {
    pub fn new(record: &AgentRecord, instance: Instance, port: u16, dir: &PodDir) -> Rendered {
        Rendered {
            values: vec![
                ("{port}", port.to_string()),
                ("{pod}", dir.root().display().to_string()),
                ("{state}", dir.state().display().to_string()),
                ("{config}", dir.config().display().to_string()),
                ("{agent}", record.id.0.to_string()),
                ("{instance}", instance.0.to_string()),
                ("{token}", fresh_token()),
            ],
        }
    }

    /// The config file's text: placeholders filled in inside every string, and a string that
    /// is exactly `"{port}"` made the port number (configs want a number there).
    pub fn config(&self, text: &str) -> String {
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else {
            return self.text(text);
        };
        self.fill(&mut value);
        serde_json::to_string_pretty(&value).expect("a JSON value serialises")
    }

    fn fill(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) if text == "{port}" => {
                let port = self
                    .values
                    .iter()
                    .find(|(key, _)| *key == "{port}")
                    .and_then(|(_, port)| port.parse::<u16>().ok())
                    .expect("a port is always rendered");
                *value = serde_json::Value::from(port);
            }
            serde_json::Value::String(text) => *text = self.text(text),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|item| self.fill(item)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|item| self.fill(item)),
            _ => {}
        }
    }

    /// This pod's `{token}`.
    pub fn token(&self) -> &str {
        self.values
            .iter()
            .find(|(key, _)| *key == "{token}")
            .map(|(_, token)| token.as_str())
            .expect("a token is always rendered")
    }

    pub fn text(&self, template: &str) -> String {
        let mut text = template.to_owned();
        for (key, value) in &self.values {
            if text.contains(key) {
                text = text.replace(key, value);
            }
        }
        text
    }
}

/// 128 random bits from the kernel, as hex: a per-instance gateway token.
pub fn fresh_token() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("the kernel's random source is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new version for a changed request: the config revision moves (to `next_config`, past
/// every one the agent has used) when the config does.
pub fn next_version(old: &AgentRecord, new: &AgentRequest, next_config: u32) -> Version {
    if old.request.config == new.config {
        old.version
    } else {
        Version::new(RUNTIME, next_config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "name": "a-1", "memory_limit": "1GiB", "command": ["agent", "--port", "{port}"],
            "probe": "http://127.0.0.1:{port}/readyz", "env": {"KEY": "secret-value"},
        })
    }

    #[test]
    fn the_view_never_shows_environment_values() {
        let request: AgentRequest = serde_json::from_value(valid()).expect("valid");
        request.check().expect("valid");
        let record = AgentRecord {
            id: AgentId(3),
            request,
            version: Version::new(RUNTIME, 1),
        };
        let view = record.view().to_string();
        assert!(
            view.contains("KEY") && !view.contains("secret-value"),
            "{view}"
        );
    }

    #[test]
    fn checks_name_the_field() {
        for (field, value, named) in [
            ("name", serde_json::json!("a/b"), "name"),
            ("name", serde_json::json!(""), "name"),
            ("command", serde_json::json!([]), "command"),
            ("memory_limit", serde_json::json!(0), "memory_limit"),
            (
                "memory_request",
                serde_json::json!("2GiB"),
                "memory_request",
            ),
            ("probe", serde_json::json!(""), "probe"),
            ("env", serde_json::json!({"A=B": "x"}), "env"),
            ("env", serde_json::json!({"A": "x\0y"}), "env"),
            ("command", serde_json::json!(["a\0b"]), "command"),
        ] {
            let mut body = valid();
            body[field] = value;
            let request: AgentRequest = serde_json::from_value(body).expect("parses");
            let error = request.check().expect_err(field);
            assert!(error.starts_with(named), "{field}: {error}");
        }
    }

    #[test]
    fn placeholders_are_filled_in_once() {
        let request: AgentRequest = serde_json::from_value(valid()).expect("valid");
        let record = AgentRecord {
            id: AgentId(7),
            request,
            version: Version::new(RUNTIME, 1),
        };
        let dir = PodDir::new("/pods/7/2");
        let rendered = Rendered::new(&record, Instance(2), 28_800, &dir);
        assert_eq!(rendered.text("{agent}/{instance}:{port}"), "7/2:28800");
        assert_eq!(rendered.text("{state}"), "/pods/7/2/state");
        let config =
            rendered.config(r#"{"port": "{port}", "log": "{pod}/x.log", "n": ["{agent}", 3]}"#);
        let config: serde_json::Value = serde_json::from_str(&config).expect("JSON");
        assert_eq!(
            config,
            serde_json::json!({"port": 28_800, "log": "/pods/7/2/x.log", "n": ["7", 3]})
        );
        let token = rendered.text("{token}");
        assert_eq!(token.len(), 32);
        assert_eq!(rendered.text("{token}"), token, "one token per instance");
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map("[a-z_]{1,14}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_json_body_parses_and_checks_without_panicking(body in json_value()) {
            if let Ok(request) = serde_json::from_value::<AgentRequest>(body) {
                let _ = request.check();
            }
        }

        #[test]
        fn a_valid_body_with_one_field_replaced_never_panics(
            field in prop::sample::select(vec!["name", "tenant", "memory_limit", "memory_request", "command", "env", "probe", "config", "validate", "priority"]),
            value in json_value(),
        ) {
            let mut body = valid();
            body[field] = value;
            if let Ok(request) = serde_json::from_value::<AgentRequest>(body) {
                let _ = request.check();
            }
        }
    }
}
