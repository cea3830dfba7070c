//! `carapace node` against a real 3-member etcd cluster on loopback, with the test agent as the
//! agent in real pods. The test plays the leader's part in etcd (it writes the assignments a
//! leader would, through the same client), and cuts the node off by killing every etcd
//! member. Every wait has a deadline.

use super::common::{Scratch, carapace};
use carapace_cluster::etcd::Client;
use carapace_cluster::keys::Keyspace;
use carapace_cluster::local::LocalEtcd;
use carapace_cluster::netns::TestNet;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(6);

/// A running `carapace node`, its output lines on a channel; killed (with its pods) on drop.
pub(crate) struct RunningNode {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    cgroup_parent: String,
}

impl RunningNode {
    pub(crate) fn start(config: &Path, cgroup_parent: &str) -> RunningNode {
        RunningNode::start_with(
            Command::new(env!("CARGO_BIN_EXE_carapace")),
            config,
            cgroup_parent,
        )
    }

    /// `carapace` is `program` (e.g. `ip netns exec HOST carapace`).
    pub(crate) fn start_with(
        mut program: Command,
        config: &Path,
        cgroup_parent: &str,
    ) -> RunningNode {
        let mut child = program
            .args(["node", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start carapace node");
        let lines = super::common::output_lines(&mut child);
        RunningNode {
            child,
            lines,
            cgroup_parent: cgroup_parent.to_owned(),
        }
    }

    /// Waits for an output line containing `needle`; answers it.
    pub(crate) fn wait_line(&self, needle: &str, within: Duration) -> String {
        super::common::wait_for_line(&self.lines, "the node", needle, within)
    }

    pub(crate) fn wait_registered(&self, within: Duration) -> i64 {
        let line = self.wait_line("registered (epoch", within);
        line.rsplit("epoch ")
            .next()
            .and_then(|t| t.trim_end_matches(')').parse().ok())
            .unwrap_or_else(|| panic!("no epoch in `{line}`"))
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(cgroups) = carapace_drivers::cgroup::MemoryCgroups::detect(&self.cgroup_parent) {
            for name in cgroups.list() {
                if let Some(cgroup) = cgroups.open(&name) {
                    let _ = cgroup.kill_all();
                    let _ = cgroup.remove_when_empty(Duration::from_secs(5));
                }
            }
            let _ = std::fs::remove_dir(cgroups.root());
        }
    }
}

fn test_agent() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_carapace")).with_file_name("carapace-test-agent");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace",
        bin.display()
    );
    bin
}

/// An assignment as the leader writes it.
fn assignment(epoch: i64, agent: u32, instance: u32, start_command: u64) -> Value {
    let bin = test_agent().display().to_string();
    json!({
        "epoch": epoch,
        "record": {
            "id": agent,
            "request": {
                "name": format!("agent-{agent}"),
                "memory_limit": "256MiB",
                "command": [bin, "--state", "{state}", "--config", "{config}", "--port", "{port}"],
                "probe": "http://127.0.0.1:{port}/readyz",
                "validate": [bin, "--validate", "--config", "{config}"],
            },
            "version": {"runtime": 1, "config": 1},
        },
        "instance": instance,
        "start_command": start_command,
        "config_text": json!({"port": 1, "boot_ms": 200, "greeting": "v1"}).to_string(),
    })
}

fn put(client: &Client, key: &str, value: &Value) {
    client.put(key, value.to_string().as_bytes(), None).unwrap();
}

/// Every report the node has written under `epoch`, in order.
fn reports(client: &Client, keys: &Keyspace, epoch: i64) -> Vec<Value> {
    let prefix = format!("{}reports/n1/{epoch:020}/", keys.root());
    let (listed, _) = client.list(&prefix).unwrap();
    listed
        .iter()
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
        .collect()
}

fn wait_report(
    client: &Client,
    keys: &Keyspace,
    epoch: i64,
    within: Duration,
    what: &str,
    found: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let all = reports(client, keys, epoch);
        if let Some(report) = all.iter().find(|r| found(r)) {
            return report.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no report {what} within {within:?}; reports: {all:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Assigns agent `agent` (instance 1) to the node's registration `epoch` as a leader would,
/// waits until the node reports it spawned and ready, and answers its pid.
fn run_assigned(client: &Client, keys: &Keyspace, epoch: i64, agent: u32) -> u64 {
    let start_command = u64::from(agent) * 10;
    put(
        client,
        &keys.assignment("n1", agent),
        &assignment(epoch, agent, 1, start_command),
    );
    let within = Duration::from_secs(30);
    let spawned = wait_report(
        client,
        keys,
        epoch,
        within,
        "spawned",
        event_of(agent, "spawned"),
    );
    wait_report(
        client,
        keys,
        epoch,
        within,
        "ready",
        event_of(agent, "ready"),
    );
    spawned["numbered"]["event"]["pid"]
        .as_u64()
        .expect("a spawned event names its pid")
}

fn event_of(agent: u32, event: &'static str) -> impl Fn(&Value) -> bool {
    move |r: &Value| {
        r["kind"] == "event" && r["agent"] == agent && r["numbered"]["event"]["event"] == event
    }
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[test]
fn a_node_runs_its_assignments_fences_itself_when_cut_off_and_rejoins_as_a_new_node() {
    // Bound in this order so that they drop in the reverse: the node, etcd, the scratch dir.
    let Loopback {
        scratch: _scratch,
        mut etcd,
        client,
        keys,
        epoch,
        node,
    } = Loopback::start("node", 13200, 13500);
    let registration: Value =
        serde_json::from_slice(&client.get(&keys.node("n1")).unwrap().unwrap().value).unwrap();
    assert_eq!(registration["memory_bytes"], 4u64 << 30);

    // An assignment runs: the pod's events come back through etcd.
    let pid = run_assigned(&client, &keys, epoch, 1);

    // Rung 1 is the pod's own: a crash is restarted in place without any controller.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_report(
        &client,
        &keys,
        epoch,
        Duration::from_secs(30),
        "exited",
        event_of(1, "exited"),
    );
    let respawned = wait_report(
        &client,
        &keys,
        epoch,
        Duration::from_secs(30),
        "a second spawn",
        |r| event_of(1, "spawned")(r) && r["numbered"]["event"]["pid"].as_u64() != Some(pid),
    );
    let pid = respawned["numbered"]["event"]["pid"].as_u64().unwrap();
    let ready_again =
        |r: &Value| event_of(1, "ready")(r) && r["numbered"]["event"]["pid"].as_u64() == Some(pid);
    wait_report(
        &client,
        &keys,
        epoch,
        Duration::from_secs(30),
        "ready again",
        ready_again,
    );
    assert!(alive(pid));

    // Two of three members down: etcd has no quorum, so no lease can expire and no decision
    // can be made; the node keeps its agent running past a whole TTL, then renews the same
    // lease once the members are back (the same registration: no new epoch).
    let outage = Instant::now();
    etcd.kill(0);
    etcd.kill(1);
    node.wait_line("etcd has no leader", TTL);
    while outage.elapsed() < TTL + Duration::from_secs(2) {
        assert!(alive(pid), "the agent was stopped during an etcd outage");
        std::thread::sleep(Duration::from_millis(200));
    }
    etcd.restart(0).unwrap();
    etcd.restart(1).unwrap();
    etcd.wait_for_quorum(Duration::from_secs(30)).unwrap();
    node.wait_line("renewed its lease after", Duration::from_secs(20));
    assert!(alive(pid));
    let registered = client.get(&keys.node("n1")).unwrap().unwrap();
    assert_eq!(
        registered.create_revision, epoch,
        "the node registered again"
    );

    // Cut off: no member answers. The node stops its agent before its lease could expire: by
    // its own clock, a margin (1 s) before one TTL has passed since the last renewal etcd
    // acknowledged. (The netns test checks the same against etcd's own expiry.)
    for member in 0..3 {
        etcd.kill(member);
    }
    let fenced = node.wait_line("fenced:", TTL + Duration::from_secs(10));
    assert!(!alive(pid), "the agent outlived the fence: {fenced}");
    let stopped_after_ms: u64 = fenced
        .split(" ms after")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no stop time in `{fenced}`"));
    assert!(
        stopped_after_ms + 1_000 <= TTL.as_millis() as u64,
        "the fence ended too late: {fenced}"
    );

    // etcd back: the old registration expires (a new etcd leader grants every lease a full
    // TTL again first), and the node registers as a new node.
    for member in 0..3 {
        etcd.restart(member).unwrap();
    }
    etcd.wait_for_quorum(Duration::from_secs(30)).unwrap();
    let new_epoch = node.wait_registered(TTL * 3 + Duration::from_secs(10));
    assert!(new_epoch > epoch);
    let fence_report = wait_report(
        &client,
        &keys,
        new_epoch,
        Duration::from_secs(10),
        "fenced",
        |r| r["kind"] == "fenced",
    );
    assert_eq!(fence_report["pods"], 1);

    // What was assigned to its old self stays stopped; a new assignment runs. The node lists
    // every assignment before it sees agent 2's, so once agent 2 is ready, agent 1's was read.
    put(
        &client,
        &keys.assignment("n1", 2),
        &assignment(new_epoch, 2, 1, 20),
    );
    wait_report(
        &client,
        &keys,
        new_epoch,
        Duration::from_secs(30),
        "agent 2 ready",
        event_of(2, "ready"),
    );
    let stale: Vec<Value> = reports(&client, &keys, new_epoch)
        .into_iter()
        .filter(|r| r["agent"] == 1)
        .collect();
    assert!(
        stale.is_empty(),
        "the old registration's agent ran again: {stale:#?}"
    );

    // A stop order is carried out and answered with its command.
    let mut stop = assignment(new_epoch, 2, 1, 20);
    stop["stop"] = json!({"command": 21});
    put(&client, &keys.assignment("n1", 2), &stop);
    let finished = wait_report(
        &client,
        &keys,
        new_epoch,
        Duration::from_secs(30),
        "the stop finished",
        |r| r["kind"] == "finished" && r["command"] == 21,
    );
    assert_eq!(finished["outcome"], "succeeded");

    // Asked to stop, the node leaves: its registration goes at once, not after a TTL.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(node.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    node.wait_line("left the cluster", Duration::from_secs(20));
    assert!(client.get(&keys.node("n1")).unwrap().is_none());
}

/// A 3-member etcd on loopback and a node registered with it. As a whole it drops the node
/// (and its pods) first, then etcd, then the scratch directory.
struct Loopback {
    node: RunningNode,
    etcd: LocalEtcd,
    client: Client,
    keys: Keyspace,
    /// The node's registration.
    epoch: i64,
    scratch: Scratch,
}

impl Loopback {
    /// etcd members on `etcd_port + 1..`, pods from `pod_port`; the cgroups under a parent
    /// named after `label`.
    fn start(label: &str, etcd_port: u16, pod_port: u16) -> Loopback {
        let scratch = Scratch::new(label);
        let etcd = LocalEtcd::start(
            &scratch.path().join("etcd"),
            3,
            etcd_port,
            Duration::from_secs(30),
        )
        .expect("a local etcd cluster (scripts/install-etcd installs etcd)");
        let client = etcd.client(Duration::from_secs(1));
        let cgroup_parent = format!("carapace-test-{label}-{}", std::process::id());
        let config = scratch.file(
            "node.toml",
            &node_file(&etcd.endpoints(), &cgroup_parent, pod_port),
        );
        let node = RunningNode::start(&config, &cgroup_parent);
        let epoch = node.wait_registered(Duration::from_secs(20));
        Loopback {
            node,
            etcd,
            client,
            keys: Keyspace::default(),
            epoch,
            scratch,
        }
    }
}

fn node_file(endpoints: &[String], cgroup_parent: &str, port_base: u16) -> String {
    named_node_file("n1", endpoints, cgroup_parent, port_base)
}

/// A node's config file: 4 GiB for pods, 8 pods from `port_base`, a 6 s lease.
pub(crate) fn named_node_file(
    name: &str,
    endpoints: &[String],
    cgroup_parent: &str,
    port_base: u16,
) -> String {
    let endpoints = endpoints.join("\", \"");
    format!(
        "name = \"{name}\"\netcd = [\"{endpoints}\"]\ndata_dir = \"data\"\n\
         [node]\nmemory = \"4GiB\"\ncgroup_parent = \"{cgroup_parent}\"\n\
         [pods]\nport_base = {port_base}\nport_stride = 10\nmax_pods = 8\n\
         startup_probe_interval = \"50ms\"\nprobe_interval = \"500ms\"\ngrace = \"1s\"\n\
         [lease]\nttl = \"6s\"\nrenew_every = \"1s\"\ncall_timeout = \"500ms\"\nmargin = \"1s\"\n"
    )
}

/// A real partition: the node's machine is a network namespace whose only cable (a veth to
/// the hub where etcd runs) is taken down. The node must have stopped its agent before etcd
/// expires its lease — before the registration disappears, which is when a controller would
/// recreate the agent elsewhere. Then the machine dies whole, and its lease goes within a TTL.
#[test]
fn a_node_whose_cable_is_cut_stops_its_agent_before_its_lease_expires() {
    let scratch = Scratch::new("node-netns");
    let tag = format!("n{}", std::process::id() % 100_000);
    let mut net = TestNet::new(&tag, [213, (std::process::id() % 250) as u8 + 1])
        .expect("network namespaces (root, iproute2)");
    let etcd = LocalEtcd::start_on(
        &scratch.path().join("etcd"),
        3,
        13700,
        &net.hub_address(),
        Some(&net.hub()),
        Duration::from_secs(30),
    )
    .expect("a local etcd cluster in the hub namespace");
    let client = etcd.client(Duration::from_secs(1));
    let keys = Keyspace::default();
    let host = net.add_host().unwrap();
    let cgroup_parent = format!("carapace-test-node-netns-{}", std::process::id());
    let config = scratch.file(
        "node.toml",
        &node_file(&etcd.endpoints(), &cgroup_parent, 13900),
    );
    let node = RunningNode::start_with(
        TestNet::command_in(&host, env!("CARGO_BIN_EXE_carapace")),
        &config,
        &cgroup_parent,
    );
    let epoch = node.wait_registered(Duration::from_secs(20));
    let pid = run_assigned(&client, &keys, epoch, 1);

    net.set_connected(0, false).unwrap();
    let deadline = Instant::now() + TTL * 3;
    while client.get(&keys.node("n1")).unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the cut node's lease did not expire"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(pid),
        "the agent still ran when the node's lease expired"
    );
    node.wait_line("fenced:", Duration::from_secs(5));

    // Plugged back, it registers as a new node.
    net.set_connected(0, true).unwrap();
    let new_epoch = node.wait_registered(TTL * 2);
    assert!(new_epoch > epoch);

    // The machine dies whole (the node and every pod): its registration goes within a TTL.
    put(
        &client,
        &keys.assignment("n1", 2),
        &assignment(new_epoch, 2, 1, 20),
    );
    wait_report(
        &client,
        &keys,
        new_epoch,
        Duration::from_secs(30),
        "agent 2 ready",
        event_of(2, "ready"),
    );
    let killed = Instant::now();
    TestNet::kill_everything_in(&host).unwrap();
    while client.get(&keys.node("n1")).unwrap().is_some() {
        assert!(
            killed.elapsed() < TTL + Duration::from_secs(3),
            "a dead machine stayed registered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(node);
    drop(etcd);
    drop(net);
}

/// The node daemon killed alone (SIGKILL: nothing of it runs on) while its machine and pods
/// live: the pods watch the node's fence file, which only a live node moves on, and stop their
/// agents before etcd expires the node's lease.
#[test]
fn pods_stop_their_agents_before_the_lease_expires_when_their_node_daemon_dies() {
    let Loopback {
        scratch: _scratch,
        etcd: _etcd,
        client,
        keys,
        epoch,
        mut node,
    } = Loopback::start("node-killed", 14200, 14400);
    let pid = run_assigned(&client, &keys, epoch, 1);
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    // The pod outlives its daemon (rung 1 is local) until the fence...
    assert!(
        alive(pid),
        "the agent died with the node daemon, not by its fence"
    );
    // ...and is gone by the time etcd expires the lease.
    let deadline = Instant::now() + TTL * 3;
    while client.get(&keys.node("n1")).unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the dead node's lease did not expire"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(pid),
        "the agent still ran when its node's lease expired"
    );
}

#[test]
fn a_bad_node_file_is_refused_naming_the_field() {
    let scratch = Scratch::new("node-bad");
    let config = scratch.file(
        "node.toml",
        "name = \"n1\"\netcd = [\"http://127.0.0.1:1\"]\ndata_dir = \"data\"\n[lease]\nttl = \"2s\"\n",
    );
    let run = carapace(["node", "--config", config.to_str().unwrap()]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("node.toml") && run.stderr.contains("`lease`"),
        "{}",
        run.stderr
    );
    assert!(
        !scratch.path().join("data").exists(),
        "a refused file changed nothing"
    );
}
