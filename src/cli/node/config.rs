//! `node.toml`: how `carapace node` joins a cluster and runs pods on its machine. The `[node]`
//! and `[pods]` tables are `carapace serve`'s own, so a machine moves between the embedded and
//! the cluster mode without rewriting them.

use crate::cli::serve::config::{NodeConfig, PodsConfig, deserialize_toml, directory_of};
use carapace_cluster::fencing::FencingRule;
use carapace_cluster::keys::{Keyspace, check_name};
use carapace_engine::SupervisorPolicy;
use carapace_sim::scenario::Span;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// This machine's name in the cluster: unique, `[A-Za-z0-9._-]`.
    pub name: String,
    /// The etcd members' client URLs (`http://HOST:PORT`); `--etcd` overrides them.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// Where pods and snapshots live. Relative paths are relative to the file.
    pub data_dir: PathBuf,
    /// The cluster's root in etcd's keyspace.
    #[serde(default = "default_root")]
    pub key_root: String,
    /// The failure domain this machine is in, for spreading replicas.
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub pods: PodsConfig,
    #[serde(default)]
    pub lease: LeaseConfig,
    #[serde(default)]
    pub reports: ReportsConfig,
    /// Rung 1 inside each pod: the same table as the controller's `[policy.supervisor]`.
    #[serde(default)]
    pub supervisor: SupervisorPolicy,
}

/// Which memory samples are written to etcd (see `deadband`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// A sample is written when it moved by this fraction of the last one written…
    pub memory_relative_change: f64,
    /// …or when this long has passed since.
    pub memory_refresh: Span,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            memory_relative_change: 0.05,
            memory_refresh: span(600_000),
        }
    }
}

/// The node's lease and its self-fencing timings (see `carapace_cluster::fencing`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// What the controller waits, after the node's last renewal, before it recreates the
    /// node's agents elsewhere. Whole seconds.
    pub ttl: Span,
    pub renew_every: Span,
    /// Bound on one call to one etcd member.
    pub call_timeout: Span,
    /// Clock-rate difference and kill latency allowance.
    pub margin: Span,
    /// While the etcd members this node reaches all say they know of no leader, no lease can
    /// expire: keep the agents running instead of fencing. Turn off where a node and an etcd
    /// member can be cut off together from the rest (see `carapace_cluster::fencing`).
    pub trust_leaderless_members: bool,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl: span(15_000),
            renew_every: span(2_000),
            call_timeout: span(1_000),
            margin: span(1_000),
            trust_leaderless_members: true,
        }
    }
}

fn span(ms: u64) -> Span {
    Span(carapace_engine::Millis(ms))
}

fn default_root() -> String {
    "/carapace/".into()
}

/// A checked node file.
#[derive(Clone, Debug)]
pub struct NodeConfigChecked {
    pub file: NodeFile,
    pub keys: Keyspace,
    pub fencing: FencingRule,
}

/// Reads and checks `path`; errors name the file, line and field. `etcd` (from the command
/// line) replaces the file's list when given.
pub fn load(path: &Path, etcd: Option<&str>) -> Result<NodeConfigChecked, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text, path, etcd)
}

pub fn parse(text: &str, path: &Path, etcd: Option<&str>) -> Result<NodeConfigChecked, String> {
    let mut file: NodeFile = deserialize_toml(text, path)?;
    let field =
        |name: &str, message: String| format!("{}: field `{name}`: {message}", path.display());
    check_name(&file.name).map_err(|e| field("name", e))?;
    if let Some(list) = etcd {
        file.etcd = list.split(',').map(|s| s.trim().to_owned()).collect();
    }
    crate::cli::serve::config::check_etcd_urls(&file.etcd).map_err(|e| field("etcd", e))?;
    let keys = Keyspace::new(&file.key_root).map_err(|e| field("key_root", e))?;
    if !file.lease.ttl.0.0.is_multiple_of(1_000) || file.lease.ttl.0.0 == 0 {
        return Err(field(
            "lease.ttl",
            "etcd counts leases in whole seconds: use e.g. \"15s\"".into(),
        ));
    }
    let ms = |s: Span| Duration::from_millis(s.0.0);
    let fencing = FencingRule {
        ttl: ms(file.lease.ttl),
        renew_every: ms(file.lease.renew_every),
        call_timeout: ms(file.lease.call_timeout),
        stop_grace: ms(file.pods.grace),
        margin: ms(file.lease.margin),
    };
    fencing.check().map_err(|e| field("lease", e))?;
    let change = file.reports.memory_relative_change;
    if !(change.is_finite() && (0.0..=1.0).contains(&change)) {
        return Err(field(
            "reports.memory_relative_change",
            format!("{change}: a fraction from 0 (every sample) to 1"),
        ));
    }
    file.pods.check().map_err(|e| field("pods", e))?;
    file.pods.anchor(&directory_of(path));
    if file.data_dir.is_relative() {
        file.data_dir = directory_of(path).join(&file.data_dir);
    }
    Ok(NodeConfigChecked {
        file,
        keys,
        fencing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "n1"
etcd = ["http://127.0.0.1:2379"]
data_dir = "/tmp/carapace-node-config-test"
[pods]
grace = "2s"
[lease]
ttl = "10s"
"#;

    #[test]
    fn a_good_file_gives_its_fencing_rule() {
        let checked = parse(GOOD, Path::new("node.toml"), None).unwrap();
        assert_eq!(checked.fencing.ttl, Duration::from_secs(10));
        assert_eq!(checked.fencing.stop_grace, Duration::from_secs(2));
        assert_eq!(checked.keys.node("n1"), "/carapace/nodes/n1");
        let overridden =
            parse(GOOD, Path::new("node.toml"), Some("http://a:1, http://b:2")).unwrap();
        assert_eq!(overridden.file.etcd, ["http://a:1", "http://b:2"]);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        for (text, field) in [
            (GOOD.replace("\"n1\"", "\"a/b\""), "`name`"),
            (
                GOOD.replace("ttl = \"10s\"", "ttl = \"1500ms\""),
                "`lease.ttl`",
            ),
            (GOOD.replace("ttl = \"10s\"", "ttl = \"3s\""), "`lease`"),
            (
                GOOD.replace("http://127.0.0.1:2379", "127.0.0.1:2379"),
                "`etcd`",
            ),
            (GOOD.replace("[lease]", "[lease]\nttll = 1"), "ttll"),
            (
                format!("{GOOD}[reports]\nmemory_relative_change = 1.5\n"),
                "`reports.memory_relative_change`",
            ),
        ] {
            let error = parse(&text, Path::new("node.toml"), None).unwrap_err();
            assert!(
                error.contains("node.toml") && error.contains(field),
                "{error}"
            );
        }
    }
}
