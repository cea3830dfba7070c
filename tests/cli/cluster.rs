//! A whole cluster on one machine: a real 3-member etcd on loopback, two `carapace node`
//! daemons running the test agent in real pods, and two `carapace serve --etcd` controller
//! replicas, of which etcd's election makes one the leader. Every wait has a deadline.

use super::common::Scratch;
use super::node::{RunningNode, named_node_file};
use super::serve::{TEST_PODS, TEST_POLICY, test_agent};
use carapace_cluster::etcd::Client;
use carapace_cluster::keys::Keyspace;
use carapace_cluster::local::LocalEtcd;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The nodes' lease (see `named_node_file`).
const NODE_TTL: Duration = Duration::from_secs(6);
/// The controllers' leadership lease.
const LEADER_TTL: Duration = Duration::from_secs(3);

/// A running `carapace serve --etcd`; killed on drop.
struct Controller {
    child: Child,
    lines: mpsc::Receiver<String>,
    base_url: String,
    token: String,
}

impl Controller {
    fn start(config: &Path, etcd: &[String], port: u16, token: &str) -> Controller {
        let mut child = Command::new(env!("CARGO_BIN_EXE_carapace"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--etcd", &etcd.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start carapace serve --etcd");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Controller {
            child,
            lines,
            base_url: format!("http://127.0.0.1:{port}"),
            token: token.to_owned(),
        }
    }

    fn wait_line(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "no line with `{needle}` within {within:?}; the controller said:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    /// Waits until this replica leads and its API answers.
    fn wait_leading(&self, within: Duration) {
        self.wait_line("leading", within);
        self.wait_line("listening on", Duration::from_secs(20));
    }

    fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let url = format!("{}{path}", self.base_url);
        let auth = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("POST", Some(body)) => agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body),
            _ => panic!("unsupported request {method} {path}"),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }

    fn create(&self, name: &str) {
        let bin = test_agent().display().to_string();
        let body = json!({
            "name": name,
            "memory_limit": "256MiB",
            "command": [bin, "--state", "{state}", "--config", "{config}", "--port", "{port}"],
            "probe": "http://127.0.0.1:{port}/readyz",
            "config": {"port": 1, "boot_ms": 200, "greeting": "v1"},
            "validate": [bin, "--validate", "--config", "{config}"],
        });
        self.api("POST", "/v1/agents", Some(&body));
    }

    /// Waits until every agent in `names` is running and `ready` holds for the views.
    fn wait_all(
        &self,
        names: &[&str],
        within: Duration,
        what: &str,
        ready: impl Fn(&BTreeMap<String, Value>) -> bool,
    ) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + within;
        loop {
            let views: BTreeMap<String, Value> = names
                .iter()
                .map(|name| {
                    (
                        (*name).to_owned(),
                        self.api("GET", &format!("/v1/agents/{name}"), None),
                    )
                })
                .collect();
            if views.values().all(|v| v["status"] == "running") && ready(&views) {
                return views;
            }
            assert!(
                Instant::now() < deadline,
                "not {what} within {within:?}: {views:#?}\nevents: {}",
                self.api("GET", "/v1/events", None)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller_file(scratch: &Scratch, name: &str, port: u16, shared: &Path) -> PathBuf {
    let shared = shared.display();
    scratch.file(
        &format!("{name}.toml"),
        &format!(
            "data_dir = \"{name}\"\n\
             [api]\nlisten = \"127.0.0.1:{port}\"\n\
             token_file = \"{shared}/token\"\nsecrets_key_file = \"{shared}/secrets.key\"\n\
             [cluster]\nleader_ttl = \"{}s\"\ncall_timeout = \"1s\"\n\
             [pods]\n{TEST_PODS}\n{policy}\n",
            LEADER_TTL.as_secs(),
            // Snapshots every 2 s, so that one is taken soon after the agent's state changes.
            policy = TEST_POLICY.replace(
                "snapshot_interval_ms = 600000",
                "snapshot_interval_ms = 2000"
            ),
        ),
    )
}

/// Where each agent is assigned, read from etcd: agent id → node names.
fn assignments(client: &Client, keys: &Keyspace) -> BTreeMap<u64, Vec<String>> {
    let prefix = format!("{}assign/", keys.root());
    let (listed, _) = client.list(&prefix).unwrap();
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for kv in listed {
        let value: Value = serde_json::from_slice(&kv.value).unwrap();
        if !value["stop"].is_null() {
            continue;
        }
        let node = kv.key_str()[prefix.len()..]
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        out.entry(value["record"]["id"].as_u64().unwrap())
            .or_default()
            .push(node);
    }
    out
}

/// A test agent's own HTTP API, on node `node`'s pod of `view`'s instance.
fn call_agent(scratch: &Scratch, node: &str, view: &Value, method: &str, path: &str) -> Value {
    let pod = scratch
        .path()
        .join(node)
        .join("data/pods")
        .join(view["id"].as_u64().unwrap().to_string())
        .join(view["instance"].as_u64().unwrap().to_string());
    let port = std::fs::read_to_string(pod.join("port"))
        .unwrap_or_else(|e| panic!("{}: {e}", pod.display()));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{}{path}", port.trim());
    let mut response = match method {
        "GET" => agent.get(&url).call(),
        _ => agent.post(&url).send_empty(),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

/// Kills a node's daemon and every pod it ran, as a machine dying does.
fn kill_host(node: RunningNode) {
    drop(node);
}

#[test]
fn a_lost_node_s_agents_run_elsewhere_and_a_standby_controller_takes_over_without_duplicates() {
    let scratch = Scratch::new("cluster");
    let etcd = LocalEtcd::start(
        &scratch.path().join("etcd"),
        3,
        34500,
        Duration::from_secs(30),
    )
    .expect("a local etcd cluster (scripts/install-etcd installs etcd)");
    let endpoints = etcd.endpoints();
    let client = etcd.client(Duration::from_secs(1));
    let keys = Keyspace::default();

    // The replicas share the API token and the key secrets are sealed with, as replicas of
    // one service do.
    let shared = scratch.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let token = "cluster-test-token-0123456789abcdef";
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(shared.join("token"))
            .unwrap();
        file.write_all(token.as_bytes()).unwrap();
    }

    let mut nodes: BTreeMap<String, RunningNode> = BTreeMap::new();
    for (name, ports) in [("n1", 34700), ("n2", 34800)] {
        let parent = format!("carapace-test-cluster-{name}-{}", std::process::id());
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("node.toml");
        // Two replica directories every node reaches (as two network mounts would be).
        let replicas = format!(
            "snapshot_replicas = [\"{0}/replica-a\", \"{0}/replica-b\"]\n[lease]",
            shared.display()
        );
        let text = named_node_file(name, &endpoints, &parent, ports).replace("[lease]", &replicas);
        std::fs::write(&config, text).unwrap();
        let node = RunningNode::start(&config, &parent);
        node.wait_registered(Duration::from_secs(20));
        nodes.insert(name.to_owned(), node);
    }

    let first = Controller::start(
        &controller_file(&scratch, "c1", 34900, &shared),
        &endpoints,
        34900,
        token,
    );
    first.wait_leading(Duration::from_secs(20));
    let second = Controller::start(
        &controller_file(&scratch, "c2", 34901, &shared),
        &endpoints,
        34901,
        token,
    );
    second.wait_line("standby", Duration::from_secs(20));

    // Agents placed across both nodes, each running once.
    let names = ["a1", "a2", "a3", "a4"];
    for name in names {
        first.create(name);
    }
    let views = first.wait_all(&names, Duration::from_secs(60), "running", |_| true);
    let placed = assignments(&client, &keys);
    assert_eq!(placed.len(), names.len(), "{placed:?}");
    assert!(placed.values().all(|nodes| nodes.len() == 1), "{placed:?}");
    let nodes_view = first.api("GET", "/v1/nodes", None);
    assert_eq!(
        nodes_view["nodes"].as_array().unwrap().len(),
        2,
        "{nodes_view}"
    );

    // a1's state changes, and a snapshot is taken after the change (and copied to both
    // replicas before it counts as taken).
    let victim = views["a1"]["node_name"].as_str().unwrap().to_owned();
    let before = first.api("GET", "/v1/agents/a1", None)["latest_snapshot"].as_u64();
    assert_eq!(
        call_agent(&scratch, &victim, &views["a1"], "POST", "/turn")["turns"],
        1
    );
    let snapshotted = first.wait_all(&["a1"], Duration::from_secs(20), "snapshotted", |v| {
        v["a1"]["latest_snapshot"].as_u64() > before
    });
    let snapshot = snapshotted["a1"]["latest_snapshot"].as_u64().unwrap();
    for replica in ["replica-a", "replica-b"] {
        let manifest = shared
            .join(replica)
            .join(views["a1"]["id"].to_string())
            .join(format!("manifests/{snapshot}.json"));
        assert!(manifest.exists(), "{} is missing", manifest.display());
    }

    // A node host dies: its lease expires, the engine loses the node, and its agents run
    // again on the other one.
    let survivor = if victim == "n1" { "n2" } else { "n1" };
    let on_victim: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| views[*n]["node_name"] == victim)
        .collect();
    let killed = Instant::now();
    kill_host(nodes.remove(&victim).unwrap());
    let moved = first.wait_all(
        &names,
        NODE_TTL + Duration::from_secs(40),
        "running on the surviving node",
        |views| views.values().all(|v| v["node_name"] == survivor),
    );
    let node_loss_to_running = killed.elapsed();
    for name in &on_victim {
        assert!(
            moved[*name]["instance"].as_u64() > views[*name]["instance"].as_u64(),
            "{name} was not recreated: {}",
            moved[*name]
        );
    }
    // State intact: the snapshot taken on the lost node came from a replica.
    assert_eq!(
        call_agent(&scratch, survivor, &moved["a1"], "GET", "/state")["turns"],
        1,
        "a1 lost its state with its node"
    );
    let placed = assignments(&client, &keys);
    assert!(
        placed.values().all(|nodes| nodes == &[survivor.to_owned()]),
        "an agent is assigned twice or to the lost node: {placed:?}"
    );

    // The leader dies: the standby leads once the leadership lease expires, rebuilds the
    // engine from the journal in etcd, and finds every agent where it was — nothing is
    // restarted, nothing duplicated.
    let deposed = Instant::now();
    drop(first);
    second.wait_leading(LEADER_TTL + Duration::from_secs(20));
    let takeover = deposed.elapsed();
    let after = second.wait_all(&names, Duration::from_secs(30), "running", |_| true);
    for name in names {
        assert_eq!(
            after[name]["instance"], moved[name]["instance"],
            "{name} was restarted by the takeover"
        );
    }
    // The new leader decides: a new agent runs.
    second.create("a5");
    second.wait_all(&["a5"], Duration::from_secs(60), "running", |_| true);
    let placed = assignments(&client, &keys);
    assert_eq!(placed.len(), 5, "{placed:?}");
    assert!(placed.values().all(|nodes| nodes.len() == 1), "{placed:?}");
    eprintln!(
        "cluster figures: node loss → agents running {} ms (node lease {} s); leader takeover \
         {} ms (leadership lease {} s)",
        node_loss_to_running.as_millis(),
        NODE_TTL.as_secs(),
        takeover.as_millis(),
        LEADER_TTL.as_secs()
    );
    drop(second);
    drop(nodes);
    drop(etcd);
}
