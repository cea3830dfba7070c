//! `carapace.toml`: how `carapace serve` runs on this machine. The `[policy]` table is the
//! engine's own configuration, exactly as scenario files carry it, so a policy tuned in
//! simulation ships unchanged.

use carapace_engine::EngineConfig;
use carapace_sim::scenario::{Bytes, Span};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Where the store, pods and snapshots live. Relative paths are relative to the file.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub pods: PodsConfig,
    #[serde(default = "default_policy")]
    pub policy: EngineConfig,
    /// What a blank instance of the warm pool runs (`policy.placement.warm_pool_per_node`).
    #[serde(default)]
    pub warm_pool: Option<WarmPoolConfig>,
    /// Set to run as one of a cluster's controller replicas (`serve --etcd`): the store is
    /// etcd, the pods run on `carapace node` machines, and only the elected leader decides.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The etcd members' client URLs (`http://HOST:PORT`); `--etcd` sets them.
    pub etcd: Vec<String>,
    /// The cluster's root in etcd's keyspace: the nodes' `key_root`.
    pub key_root: String,
    /// The leadership lease: a leader that dies is replaced this long after its last renewal.
    pub leader_ttl: Span,
    /// How long one etcd call may take before the next member is tried.
    pub call_timeout: Span,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            etcd: Vec::new(),
            key_root: "/carapace/".to_owned(),
            leader_ttl: Span(carapace_engine::Millis(10_000)),
            call_timeout: Span(carapace_engine::Millis(2_000)),
        }
    }
}

impl ClusterConfig {
    /// Checks the cluster table; the error names the field under `cluster.`.
    pub(crate) fn check(&self) -> Result<(), String> {
        check_etcd_urls(&self.etcd).map_err(|e| format!("field `cluster.etcd`: {e}"))?;
        carapace_cluster::keys::Keyspace::new(&self.key_root)
            .map_err(|e| format!("field `cluster.key_root`: {e}"))?;
        let ttl = self.leader_ttl.0.0;
        if ttl == 0 || !ttl.is_multiple_of(1_000) {
            return Err(
                "field `cluster.leader_ttl`: etcd counts leases in whole seconds: use e.g. \"10s\""
                    .into(),
            );
        }
        if self.call_timeout.0.0 == 0 || self.call_timeout.0.0 * 3 > ttl {
            return Err(
                "field `cluster.call_timeout`: must be above 0 and at most a third of \
                 cluster.leader_ttl, so that a renewal can be tried again before the lease ends"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Checks the `[cluster]` table, if there is one, and what cluster mode rules out.
pub(crate) fn check_cluster(config: &ServeConfig) -> Result<(), String> {
    let Some(cluster) = &config.cluster else {
        return Ok(());
    };
    cluster.check()?;
    if config.warm_pool.is_some() || config.policy.placement.warm_pool_per_node != 0 {
        return Err(
            "field `warm_pool`: the nodes of a cluster keep no warm pool yet; remove \
             [warm_pool] and policy.placement.warm_pool_per_node"
                .into(),
        );
    }
    Ok(())
}

/// etcd client URLs: at least one, each `http://HOST:PORT`.
pub(crate) fn check_etcd_urls(urls: &[String]) -> Result<(), String> {
    if urls.is_empty() {
        return Err("no etcd endpoint: list them here or pass --etcd".into());
    }
    match urls.iter().find(|url| !url.starts_with("http://")) {
        Some(bad) => Err(format!("`{bad}`: expected http://HOST:PORT")),
        None => Ok(()),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmPoolConfig {
    /// A JSON file holding the [`WarmTemplate`]. Relative to this file.
    pub template_file: PathBuf,
    /// Read from `template_file` by [`parse`].
    #[serde(skip)]
    pub template: Option<super::warm::WarmTemplate>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Loopback by default: the API holds the keys to every agent.
    pub listen: SocketAddr,
    /// File holding the bearer token (created, mode 0600, when missing). Relative to data_dir.
    pub token_file: PathBuf,
    /// Post-mortems are appended here as JSON lines. Relative to data_dir.
    pub alerts_file: PathBuf,
    /// Each post-mortem is also POSTed here as JSON (`http://` only; the URL is never logged,
    /// as it often carries a secret).
    pub alert_webhook: Option<String>,
    /// The key secrets are sealed with (32 bytes, mode 0600; created when missing). Relative
    /// to data_dir.
    pub secrets_key_file: PathBuf,
    /// Serve on a non-loopback address although the API has no TLS. A risky knob, named as
    /// such: tokens and secrets then cross the network in clear.
    pub risk_serving_tokens_in_clear_on_a_public_address: bool,
    /// Requests per second each tenant may make (a token bucket of `tenant_burst`); beyond
    /// it, 429 with Retry-After. The admin is not limited.
    pub tenant_requests_per_second: f64,
    pub tenant_burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            token_file: PathBuf::from("token"),
            alerts_file: PathBuf::from("alerts.jsonl"),
            alert_webhook: None,
            secrets_key_file: PathBuf::from("secrets.key"),
            risk_serving_tokens_in_clear_on_a_public_address: false,
            tenant_requests_per_second: 50.0,
            tenant_burst: 100,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Memory for pods on this machine; the machine's total when not set.
    pub memory: Option<Bytes>,
    /// Name of the parent memory cgroup pods are created under.
    pub cgroup_parent: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            memory: None,
            cgroup_parent: "carapace".to_owned(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodsConfig {
    /// Each pod gets `port_stride` ports from here on (an OpenClaw gateway derives ports up
    /// to base + 110 from its own).
    pub port_base: u16,
    pub port_stride: u16,
    /// At most this many pods at once (ports are reserved for each).
    pub max_pods: u16,
    pub startup_probe_interval: Span,
    pub probe_interval: Span,
    pub probe_timeout: Span,
    pub memory_interval: Span,
    /// SIGTERM to SIGKILL when a pod is stopped.
    pub grace: Span,
    /// Directories every machine mounts (a network filesystem), each given a copy of every
    /// snapshot before it counts as taken, and where a machine finds a snapshot another one
    /// took. A cluster wants two at least, so that a snapshot outlives the loss of its node
    /// and of one copy. Relative to the config file.
    pub snapshot_replicas: Vec<PathBuf>,
}

impl Default for PodsConfig {
    fn default() -> Self {
        PodsConfig {
            port_base: 28_800,
            port_stride: 120,
            max_pods: 256,
            startup_probe_interval: Span(carapace_engine::Millis(500)),
            probe_interval: Span(carapace_engine::Millis(5_000)),
            probe_timeout: Span(carapace_engine::Millis(2_000)),
            memory_interval: Span(carapace_engine::Millis(10_000)),
            grace: Span(carapace_engine::Millis(10_000)),
            snapshot_replicas: Vec::new(),
        }
    }
}

/// The engine's defaults, less the warm pool, which needs a template to boot: opt-in.
fn default_policy() -> EngineConfig {
    let mut policy = EngineConfig::default();
    policy.placement.warm_pool_per_node = 0;
    policy
}

/// Reads and checks a config file; errors name the file, line, column and field.
/// Reads and checks a config file; `etcd` (the `--etcd` flag: comma-separated URLs) turns
/// cluster mode on, or replaces the file's `cluster.etcd`.
pub fn load(path: &Path, etcd: Option<&str>) -> Result<ServeConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_with(&text, path, etcd)
}

/// Parses and checks config text; `path` names it in errors and anchors relative paths.
#[cfg(test)]
pub fn parse(text: &str, path: &Path) -> Result<ServeConfig, String> {
    parse_with(text, path, None)
}

fn parse_with(text: &str, path: &Path, etcd: Option<&str>) -> Result<ServeConfig, String> {
    let mut config: ServeConfig = deserialize_toml(text, path)?;
    if let Some(list) = etcd {
        config
            .cluster
            .get_or_insert_with(ClusterConfig::default)
            .etcd = list.split(',').map(|s| s.trim().to_owned()).collect();
    }
    if config.policy.placement.warm_pool_per_node != 0 && config.warm_pool.is_none() {
        return Err(format!(
            "{}: field `policy.placement.warm_pool_per_node`: a warm pool needs a [warm_pool] \
             template_file saying what its standby pods run",
            path.display()
        ));
    }
    config
        .policy
        .validate()
        .map_err(|e| format!("{}: field `policy`: {e}", path.display()))?;
    let rate = config.api.tenant_requests_per_second;
    if !(rate.is_finite() && rate > 0.0 && rate <= 1e6) || config.api.tenant_burst == 0 {
        return Err(format!(
            "{}: field `api.tenant_requests_per_second`: must be above 0 and at most 1e6, with \
             tenant_burst at least 1",
            path.display()
        ));
    }
    config
        .pods
        .check()
        .map_err(|e| format!("{}: field `pods`: {e}", path.display()))?;
    if let Some(url) = &config.api.alert_webhook
        && !url.starts_with("http://")
    {
        return Err(format!(
            "{}: field `api.alert_webhook`: must be an http:// URL",
            path.display()
        ));
    }
    check_cluster(&config).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = directory_of(path);
    config.pods.anchor(&base);
    if config.data_dir.is_relative() {
        config.data_dir = base.join(&config.data_dir);
    }
    if let Some(warm) = &mut config.warm_pool {
        if warm.template_file.is_relative() {
            warm.template_file = base.join(&warm.template_file);
        }
        let file = &warm.template_file;
        let text = std::fs::read_to_string(file).map_err(|e| {
            format!(
                "{}: field `warm_pool.template_file`: {}: {e}",
                path.display(),
                file.display()
            )
        })?;
        let template = super::warm::WarmTemplate::parse(&text).map_err(|e| {
            format!(
                "{}: field `warm_pool.template_file`: {}: {e}",
                path.display(),
                file.display()
            )
        })?;
        warm.template = Some(template);
    }
    for file in [
        &mut config.api.token_file,
        &mut config.api.alerts_file,
        &mut config.api.secrets_key_file,
    ] {
        if file.is_relative() {
            *file = config.data_dir.join(&*file);
        }
    }
    Ok(config)
}

impl PodsConfig {
    /// Makes the replica directories absolute, relative to the config file's directory.
    pub(crate) fn anchor(&mut self, base: &Path) {
        for dir in &mut self.snapshot_replicas {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
    }

    /// The settings' replica directories as the driver takes them.
    pub(crate) fn replicas(&self) -> carapace_drivers::snapshot::Replicas {
        carapace_drivers::snapshot::Replicas::new(self.snapshot_replicas.clone())
    }

    /// Checks the port plan; the error says which part is wrong.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.port_stride == 0 || self.max_pods == 0 {
            return Err("port_stride and max_pods must be at least 1".into());
        }
        let last_port =
            u32::from(self.port_base) + u32::from(self.port_stride) * u32::from(self.max_pods);
        if last_port > u32::from(u16::MAX) {
            return Err(format!(
                "port_base + port_stride × max_pods ({last_port}) passes 65535"
            ));
        }
        Ok(())
    }
}

/// The absolute directory of a config file, which its relative paths are relative to. Absolute
/// because pods run their agents and validators in their own directories, where a path
/// relative to the daemon's working directory would name nothing.
pub(crate) fn directory_of(path: &Path) -> PathBuf {
    let base = path.parent().unwrap_or(Path::new("."));
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(base),
        Err(_) => base.to_owned(),
    }
}

/// Deserializes TOML text into `T`; the error names the file, line, column and field.
pub(crate) fn deserialize_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, String> {
    let document = toml::de::DeTable::parse(text).map_err(|e| located(path, text, &e))?;
    let deserializer = toml::de::Deserializer::from(document);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = e.path().to_string();
        format!(
            "{}: field `{field}`: {}",
            path.display(),
            located_inner(text, e.inner())
        )
    })
}

fn located(path: &Path, text: &str, error: &toml::de::Error) -> String {
    format!("{}: {}", path.display(), located_inner(text, error))
}

/// "line L, column C: message" when the error has a position.
fn located_inner(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().to_owned();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(text: &str) -> (PathBuf, PathBuf) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("carapace-config-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch dir");
        let path = dir.join("carapace.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn a_config_named_by_a_relative_path_gets_an_absolute_data_dir() {
        let config = parse("data_dir = \"data\"\n", Path::new("carapace.toml")).expect("parses");
        assert!(config.data_dir.is_absolute(), "{:?}", config.data_dir);
        assert!(config.api.token_file.is_absolute());
    }

    #[test]
    fn a_minimal_file_gets_loopback_and_paths_under_the_data_dir() {
        let (dir, path) = write("data_dir = \"data\"\n");
        let config = load(&path, None).expect("loads");
        assert!(config.api.listen.ip().is_loopback());
        assert_eq!(config.data_dir, dir.join("data"));
        assert_eq!(config.api.token_file, dir.join("data/token"));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_field() {
        let (dir, path) = write("data_dir = \"d\"\n[pods]\nprobe_interval = \"5 fortnights\"\n");
        let error = load(&path, None).expect_err("a bad duration");
        assert!(error.contains("carapace.toml"), "{error}");
        assert!(error.contains("pods.probe_interval"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        let (dir2, path) = write("data_dir = \"d\"\n[policy.recovery]\nknown_good_dwel_ms = 5\n");
        let error = load(&path, None).expect_err("an unknown field");
        assert!(error.contains("known_good_dwel_ms"), "{error}");
        let (dir3, path) = write("data_dir = \"d\"\n[pods]\nport_base = 65000\nmax_pods = 100\n");
        let error = load(&path, None).expect_err("ports past 65535");
        assert!(error.contains("65535"), "{error}");
        for dir in [dir, dir2, dir3] {
            std::fs::remove_dir_all(dir).ok();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_text_loads_or_is_refused_naming_the_file(text in "\\PC{0,200}") {
            let (dir, path) = write(&text);
            if let Err(error) = load(&path, None) {
                prop_assert!(error.contains("carapace.toml"), "{}", error);
            }
            std::fs::remove_dir_all(dir).ok();
        }

        #[test]
        fn mangled_valid_files_never_panic(
            cut in 0usize..400,
            junk in "[\\[\\]=\"a-z0-9._ \n]{0,20}",
        ) {
            let valid = "data_dir = \"d\"\n[api]\nlisten = \"127.0.0.1:7878\"\n[pods]\nport_base = 28800\nprobe_interval = \"1s\"\n[policy.recovery]\nknown_good_dwell_ms = 1000\n";
            let cut = cut.min(valid.len());
            let (dir, path) = write(&format!("{}{junk}", &valid[..cut]));
            let _ = load(&path, None);
            std::fs::remove_dir_all(dir).ok();
        }
    }
}
