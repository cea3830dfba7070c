//! A whole cluster on one machine: a real 3-member etcd on loopback, two `carapace node`
//! daemons running the test agent in real pods, and two `carapace serve --etcd` controller
//! replicas, of which etcd's election makes one the leader. Every wait has a deadline.
//!
//! Loopback ports are in 10,000–19,999: below the serve tests' blocks (20,000 up), the
//! OpenClaw gateway tests' (30,000 up) and Linux's ephemeral range (32,768 up).

use super::common::Scratch;
use super::node::{RunningNode, named_node_file};
use super::serve::{TEST_PODS, TEST_POLICY, test_agent};
use carapace_cluster::etcd::Client;
use carapace_cluster::keys::Keyspace;
use carapace_cluster::local::LocalEtcd;
use serde_json::{Value, json};
use std::collections::BTreeMap;
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
        let lines = super::common::output_lines(&mut child);
        Controller {
            child,
            lines,
            base_url: format!("http://127.0.0.1:{port}"),
            token: token.to_owned(),
        }
    }

    fn wait_line(&self, needle: &str, within: Duration) -> String {
        super::common::wait_for_line(&self.lines, "the controller", needle, within)
    }

    /// Waits until this replica leads and its API answers.
    fn wait_leading(&self, within: Duration) {
        self.wait_line("leading", within);
        self.wait_line("listening on", Duration::from_secs(20));
    }

    fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.try_api(method, path, body, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A request that may fail (an error or no answer within `timeout`); a non-2xx answer
    /// still fails the test.
    fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, ureq::Error> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
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
        let mut response = response?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        Ok(value)
    }

    fn create(&self, name: &str) {
        self.api("POST", "/v1/agents", Some(&agent_body(name)));
    }
}

/// A test agent with its state in the pod.
fn agent_body(name: &str) -> Value {
    let bin = test_agent().display().to_string();
    json!({
            "name": name,
            "memory_limit": "256MiB",
            "command": [bin, "--state", "{state}", "--config", "{config}", "--port", "{port}"],
            "probe": "http://127.0.0.1:{port}/readyz",
            "config": {"port": 1, "boot_ms": 200, "greeting": "v1"},
            "validate": [bin, "--validate", "--config", "{config}"],
    })
}

impl Controller {
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

/// A directory every replica and node reaches: the replicas' shared API token (mode 0600, as
/// `serve` requires) and the snapshot replicas.
fn shared_dir(scratch: &Scratch, token: &str) -> PathBuf {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let shared = scratch.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(shared.join("token"))
        .unwrap();
    file.write_all(token.as_bytes()).unwrap();
    shared
}

/// Two controller replicas, APIs on `port` and `port + 1`: the first started leads, the
/// second waits as a standby.
fn leader_and_standby(
    scratch: &Scratch,
    shared: &Path,
    endpoints: &[String],
    token: &str,
    port: u16,
) -> (Controller, Controller) {
    let start = |name: &str, port: u16| {
        let config = controller_file(scratch, name, port, shared);
        Controller::start(&config, endpoints, port, token)
    };
    let leader = start("c1", port);
    leader.wait_leading(Duration::from_secs(20));
    let standby = start("c2", port + 1);
    standby.wait_line("standby", Duration::from_secs(20));
    (leader, standby)
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
        14500,
        Duration::from_secs(30),
    )
    .expect("a local etcd cluster (scripts/install-etcd installs etcd)");
    let endpoints = etcd.endpoints();
    let client = etcd.client(Duration::from_secs(1));
    let keys = Keyspace::default();

    // The replicas share the API token and the key secrets are sealed with, as replicas of
    // one service do.
    let token = "cluster-test-token-0123456789abcdef";
    let shared = shared_dir(&scratch, token);

    let mut nodes: BTreeMap<String, RunningNode> = BTreeMap::new();
    for (name, ports) in [("n1", 14700), ("n2", 14800)] {
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

    let (first, second) = leader_and_standby(&scratch, &shared, &endpoints, token, 14900);

    // Agents placed across both nodes, each running once.
    let names = ["a1", "a2", "a3", "a4"];
    for name in names {
        first.create(name);
    }
    let views = first.wait_all(&names, Duration::from_secs(60), "running", |_| true);
    let placed = assignments(&client, &keys);
    assert_eq!(placed.len(), names.len(), "{placed:?}");
    assert!(placed.values().all(|nodes| nodes.len() == 1), "{placed:?}");
    // Secrets would cross etcd in clear: refused, naming why, rather than dropped.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut refused = agent
        .put(&format!(
            "{}/v1/agents/a1/secrets/LLM_API_KEY",
            first.base_url
        ))
        .header("Authorization", &format!("Bearer {token}"))
        .send("sk-never-stored")
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let why = refused.body_mut().read_to_string().unwrap();
    assert!(why.contains("cluster mode"), "{why}");
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
    let (journal, _) = client.list(&format!("{}journal/", keys.root())).unwrap();
    let journal_bytes: usize = journal.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
    eprintln!(
        "cluster figures: node loss → agents running {} ms (node lease {} s); leader takeover \
         {} ms (leadership lease {} s); journal {} commits, {} B ({} B per commit)",
        node_loss_to_running.as_millis(),
        NODE_TTL.as_secs(),
        takeover.as_millis(),
        LEADER_TTL.as_secs(),
        journal.len(),
        journal_bytes,
        journal_bytes / journal.len().max(1)
    );
    drop(second);
    drop(nodes);
    drop(etcd);
}

/// Agents' pids as the leader last heard them, by name.
fn agent_pids(views: &BTreeMap<String, Value>) -> BTreeMap<String, u32> {
    views
        .iter()
        .map(|(name, view)| {
            let pid = view["agent_pid"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: no agent pid in {view}"));
            (name.clone(), pid as u32)
        })
        .collect()
}

/// Three node hosts in network namespaces on a bridge to etcd's. A cut cable fences the
/// node, its agents run elsewhere, and once plugged back it rejoins as a new node with its
/// old copies stopped. Then etcd loses members: one changes nothing; two stop every decision
/// while agents keep running; restored, the decision that waited is made.
#[test]
fn a_cut_off_node_fences_and_rejoins_clean_and_etcd_member_losses_stop_only_decisions() {
    let scratch = Scratch::new("cluster-netns");
    let tag = format!("c{}", std::process::id() % 100_000);
    let mut net =
        carapace_cluster::netns::TestNet::new(&tag, [214, (std::process::id() % 250) as u8 + 1])
            .expect("network namespaces (root, iproute2)");
    let mut etcd = LocalEtcd::start_on(
        &scratch.path().join("etcd"),
        3,
        15000,
        &net.hub_address(),
        Some(&net.hub()),
        Duration::from_secs(30),
    )
    .expect("a local etcd cluster in the hub namespace");
    let endpoints = etcd.endpoints();
    let token = "cluster-netns-token-0123456789abcdef";
    let shared = shared_dir(&scratch, token);
    let mut hosts = Vec::new();
    let mut nodes: BTreeMap<String, RunningNode> = BTreeMap::new();
    for index in 0..3 {
        let name = format!("h{index}");
        let host = net.add_host().unwrap();
        let parent = format!("carapace-test-cluster-netns-{name}-{}", std::process::id());
        let dir = scratch.path().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("node.toml");
        std::fs::write(&config, named_node_file(&name, &endpoints, &parent, 15400)).unwrap();
        let node = RunningNode::start_with(
            carapace_cluster::netns::TestNet::command_in(&host, env!("CARGO_BIN_EXE_carapace")),
            &config,
            &parent,
        );
        node.wait_registered(Duration::from_secs(20));
        nodes.insert(name, node);
        hosts.push(host);
    }
    let (leader, standby) = leader_and_standby(&scratch, &shared, &endpoints, token, 15300);

    let names = ["a1", "a2", "a3"];
    for name in names {
        leader.create(name);
    }
    let views = leader.wait_all(&names, Duration::from_secs(60), "running", |v| {
        v.values().all(|v| v["agent_pid"].is_u64())
    });

    // The cable of a1's host is cut.
    let victim = views["a1"]["node_name"].as_str().unwrap().to_owned();
    let index: usize = victim[1..].parse().unwrap();
    let stranded: Vec<u32> = views
        .iter()
        .filter(|(_, v)| v["node_name"] == victim.as_str())
        .map(|(_, v)| v["agent_pid"].as_u64().unwrap() as u32)
        .collect();
    net.set_connected(index, false).unwrap();
    nodes[&victim].wait_line("fenced:", NODE_TTL + Duration::from_secs(5));
    let moved = leader.wait_all(
        &names,
        NODE_TTL + Duration::from_secs(40),
        "running off the cut node",
        |v| {
            v.values()
                .all(|v| v["node_name"] != victim.as_str() && v["agent_pid"].is_u64())
        },
    );
    for pid in &stranded {
        assert!(
            !super::serve::alive(*pid),
            "a copy on the cut node still runs"
        );
    }

    // Plugged back: a new registration, the old copies still stopped, nothing moves back.
    net.set_connected(index, true).unwrap();
    nodes[&victim].wait_registered(NODE_TTL * 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed = leader.api("GET", "/v1/nodes", None);
        let members = listed["nodes"].as_array().unwrap();
        let of_victim: Vec<&Value> = members
            .iter()
            .filter(|m| m["name"] == victim.as_str())
            .collect();
        if of_victim.len() == 2 && of_victim.iter().filter(|m| m["lost"] == false).count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not rejoin as a new member: {listed}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for pid in &stranded {
        assert!(!super::serve::alive(*pid), "an old copy came back");
    }
    let still = leader.wait_all(&names, Duration::from_secs(5), "running", |_| true);
    for name in names {
        assert_eq!(
            still[name]["instance"], moved[name]["instance"],
            "{name} moved again"
        );
    }

    // One etcd member down: nothing changes, decisions go on.
    etcd.kill(0);
    leader.create("a4");
    let all = ["a1", "a2", "a3", "a4"];
    let running = leader.wait_all(&all, Duration::from_secs(60), "running", |v| {
        v.values().all(|v| v["agent_pid"].is_u64())
    });
    let pids = agent_pids(&running);

    // Two down: no quorum, so no decision is made (a create waits, unanswered) — and no
    // lease can expire, so every agent keeps running.
    etcd.kill(1);
    let outage = Instant::now();
    let waited = leader.try_api(
        "POST",
        "/v1/agents",
        Some(&agent_body("a5")),
        Duration::from_secs(3),
    );
    assert!(
        waited.is_err(),
        "a decision was made without a quorum: {waited:?}"
    );
    while outage.elapsed() < NODE_TTL + Duration::from_secs(2) {
        for (name, pid) in &pids {
            assert!(
                super::serve::alive(*pid),
                "{name} stopped during the etcd outage"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Restored: the create that waited is made, and nothing else changed.
    etcd.restart(0).unwrap();
    etcd.restart(1).unwrap();
    etcd.wait_for_quorum(Duration::from_secs(30)).unwrap();
    let after = leader.wait_all(
        &["a1", "a2", "a3", "a4", "a5"],
        Duration::from_secs(60),
        "running",
        |_| true,
    );
    for name in all {
        assert_eq!(
            after[name]["instance"], running[name]["instance"],
            "{name} was restarted"
        );
    }
    for (name, pid) in &pids {
        assert!(super::serve::alive(*pid), "{name} stopped after the outage");
    }
    let client = etcd.client(Duration::from_secs(1));
    let placed = assignments(&client, &Keyspace::default());
    assert_eq!(placed.len(), 5, "{placed:?}");
    assert!(placed.values().all(|nodes| nodes.len() == 1), "{placed:?}");
    drop(standby);
    drop(leader);
    drop(nodes);
    drop(etcd);
    drop(net);
}
