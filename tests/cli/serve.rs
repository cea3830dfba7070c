//! `carapace serve` on real processes: the daemon, its pods (`carapace supervise --pod`) in
//! real memory cgroups, and `carapace-test-agent` as the agent — crashed, hung, stripped of
//! its config, starved of memory, orphaned of its supervisor, and the daemon itself killed
//! with SIGKILL. Every wait is a poll against a deadline.

use crate::common::{Scratch, workspace};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// Policy for tests: the engine's timers scaled down so that every rung is reached in
/// seconds. Probes every 200 ms, a hang after 3 failed probes, known-good after 1.5 s.
pub(crate) const TEST_PODS: &str = r#"
startup_probe_interval = "100ms"
probe_interval = "200ms"
probe_timeout = "300ms"
memory_interval = "200ms"
grace = "1s"
"#;

pub(crate) const TEST_POLICY: &str = r#"
[policy.supervisor]
hang_probe_failures = 3

[policy.recovery]
known_good_dwell_ms = 1500
relapse_window_ms = 500
restart_deadline_ms = 20000
start_deadline_ms = 30000
snapshot_interval_ms = 600000
"#;

/// The `[pods]` table of a test daemon whose API listens on `api_port`: its pods take the
/// ports right after it, one each.
pub(crate) fn test_pods(api_port: u16) -> String {
    format!(
        "port_base = {}\nport_stride = 1\nmax_pods = 30\n{TEST_PODS}",
        api_port + 1
    )
}

/// Every test daemon gets ports of its own: tests run in parallel.
pub(crate) fn port_block() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Below 30,000: the OpenClaw tests take blocks of 120 ports from 30,000 up.
    let base = 20_000 + (std::process::id() % 6) as u16 * 1_600;
    assert!(
        n < 40,
        "each test process has forty blocks of 40 ports; add more"
    );
    base + n * 40
}

/// A running `carapace serve` with its own data directory, cgroup parent and ports.
pub(crate) struct Served {
    child: Option<Child>,
    config: PathBuf,
    data: PathBuf,
    cgroup_parent: String,
    pub(crate) base_url: String,
    pub(crate) token: String,
    lines: Receiver<String>,
    agent_bin: PathBuf,
    /// Where the daemon's stdout and stderr are copied, when they are kept.
    transcript: Option<PathBuf>,
}

impl Served {
    pub(crate) fn start(scratch: &Scratch) -> Served {
        let ports = port_block();
        let pods = test_pods(ports);
        Served::start_with(scratch, ports, &pods, TEST_POLICY)
    }

    /// A daemon whose API listens on `api_port`, with `pods` as its `[pods]` table and
    /// `policy` for its `[policy.*]` tables.
    pub(crate) fn start_with(scratch: &Scratch, api_port: u16, pods: &str, policy: &str) -> Served {
        Served::start_full(scratch, api_port, "", pods, policy)
    }

    /// As [`start_with`](Self::start_with), with more lines for the `[api]` table.
    fn start_full(scratch: &Scratch, api_port: u16, api: &str, pods: &str, policy: &str) -> Served {
        let parent = format!("carapace-serve-test-{}-{api_port}", std::process::id());
        Served::start_in(scratch, api_port, api, pods, policy, &parent)
    }

    /// As [`start_full`](Self::start_full), with pods' cgroups under `cgroup_parent`.
    fn start_in(
        scratch: &Scratch,
        api_port: u16,
        api: &str,
        pods: &str,
        policy: &str,
        cgroup_parent: &str,
    ) -> Served {
        let ports = api_port;
        let cgroup_parent = cgroup_parent.to_owned();
        let config = scratch.file(
            "carapace.toml",
            &format!(
                "data_dir = \"data\"\n\
                 [api]\nlisten = \"127.0.0.1:{ports}\"\n{api}\n\
                 [node]\ncgroup_parent = \"{cgroup_parent}\"\n\
                 [pods]\n{pods}\n{policy}\n",
            ),
        );
        let data = scratch.path().join("data");
        let mut served = Served {
            child: None,
            config,
            data,
            cgroup_parent,
            base_url: format!("http://127.0.0.1:{ports}"),
            token: String::new(),
            lines: channel().1,
            agent_bin: test_agent(),
            transcript: None,
        };
        served.launch();
        served
    }

    /// From now on (the next launch), the daemon's stdout and stderr are appended to `path`.
    pub(crate) fn keep_output(&mut self, path: PathBuf) {
        self.transcript = Some(path);
    }

    /// Starts (or restarts) the daemon and waits until its API answers.
    pub(crate) fn launch(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_carapace"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            // A transcript keeps everything the daemon says, to be searched.
            .env(
                "RUST_LOG",
                if self.transcript.is_some() {
                    "debug"
                } else {
                    "warn"
                },
            )
            .stdout(Stdio::piped())
            .stderr(match &self.transcript {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("open the transcript"),
                ),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("start carapace serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = channel();
        let transcript = self.transcript.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(path) = &transcript {
                    use std::io::Write as _;
                    if let Ok(mut file) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                    {
                        let _ = writeln!(file, "{line}");
                    }
                }
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        self.lines = lines;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => break,
                Ok(_) => {}
                Err(_) => panic!("carapace serve did not start listening within 30 s"),
            }
        }
        self.token = std::fs::read_to_string(self.data.join("token"))
            .expect("the daemon wrote its token")
            .trim()
            .to_owned();
    }

    pub(crate) fn config_file(&self) -> &Path {
        &self.config
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data
    }

    pub(crate) fn kill_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub(crate) fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let url = format!("{}{path}", self.base_url);
        let auth = format!("Bearer {}", token.unwrap_or(&self.token));
        let response = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            ("POST", Some(body)) => agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(body),
            ("PUT", Some(body)) => agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(body),
            _ => panic!("unsupported request {method} {path}"),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub(crate) fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.request(method, path, body, None);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }

    /// Creates a test agent named `name` and waits until its first instance runs.
    pub(crate) fn create_running(&self, name: &str) -> Value {
        self.api(
            "POST",
            "/v1/agents",
            Some(&self.agent_body(name, json!({}))),
        );
        self.wait_running(name, 1)
    }

    /// An agent that runs `carapace-test-agent` with its state in the pod.
    pub(crate) fn agent_body(&self, name: &str, extra: Value) -> Value {
        let bin = self.agent_bin.display().to_string();
        let mut body = json!({
            "name": name,
            "memory_limit": "256MiB",
            "command": [bin, "--state", "{state}", "--config", "{config}", "--port", "{port}"],
            "probe": "http://127.0.0.1:{port}/readyz",
            "config": {"port": 1, "boot_ms": 200, "greeting": "v1"},
            "validate": [bin, "--validate", "--config", "{config}"],
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            for (key, value) in extra {
                body.insert(key.clone(), value.clone());
            }
        }
        body
    }

    pub(crate) fn agent(&self, name: &str) -> Value {
        self.api("GET", &format!("/v1/agents/{name}"), None)
    }

    /// Waits until the agent's view satisfies `ready`, polling every 50 ms.
    pub(crate) fn wait_agent(
        &self,
        name: &str,
        within: Duration,
        what: &str,
        ready: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let view = self.agent(name);
            if ready(&view) {
                return view;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name}: not {what} within {within:?}; last view {view}; events {}",
                    self.api("GET", "/v1/events", None)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn wait_running(&self, name: &str, instance: u64) -> Value {
        self.wait_agent(
            name,
            Duration::from_secs(60),
            &format!("running as #{instance}"),
            |v| v["status"] == "running" && v["instance"] == instance,
        )
    }

    /// The port of an agent's current pod, from the pod directory.
    pub(crate) fn port_of(&self, name: &str) -> u16 {
        let view = self.agent(name);
        let dir = self.pod_dir(&view);
        std::fs::read_to_string(dir.join("port"))
            .expect("the pod's port file")
            .trim()
            .parse()
            .expect("a port")
    }

    pub(crate) fn pod_dir(&self, view: &Value) -> PathBuf {
        self.data
            .join("pods")
            .join(view["id"].to_string())
            .join(view["instance"].to_string())
    }

    /// The agent's own HTTP API, as a client of the agent would use it.
    pub(crate) fn agent_call(&self, name: &str, method: &str, path: &str) -> Value {
        call_port(self.port_of(name), method, path)
    }

    /// Every live process of every pod of this daemon (agents and supervisors), from the
    /// pods' cgroups.
    pub(crate) fn pod_processes(&self) -> Vec<u32> {
        let Ok(cgroups) = carapace_drivers::cgroup::MemoryCgroups::detect(&self.cgroup_parent)
        else {
            return Vec::new();
        };
        let mut pids = Vec::new();
        for name in cgroups.list() {
            if let Some(cgroup) = cgroups.open(&name) {
                pids.extend(cgroup.pids().unwrap_or_default());
            }
        }
        pids.sort_unstable();
        pids
    }

    /// Supervisors and the agents they spawned, from the pod directories' pid file and event
    /// logs: what runs for this daemon even where no cgroup holds it.
    fn pod_dir_processes(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(agents) = std::fs::read_dir(self.data.join("pods")) else {
            return pids;
        };
        for instance in agents
            .flatten()
            .filter_map(|a| std::fs::read_dir(a.path()).ok())
            .flatten()
            .flatten()
        {
            let dir = instance.path();
            if let Some(pid) = std::fs::read_to_string(dir.join("supervise.pid"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                pids.push(pid);
            }
            let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap_or_default();
            pids.extend(
                events
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|e| e["event"]["event"] == "spawned")
                    .filter_map(|e| e["event"]["pid"].as_u64().map(|p| p as u32)),
            );
        }
        pids.retain(|pid| alive(*pid));
        pids
    }

    /// Agent processes (not supervisors) running for this daemon.
    pub(crate) fn agent_processes(&self) -> Vec<u32> {
        self.pod_processes()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.contains("carapace-test-agent") && !c.contains("--validate"))
            })
            .collect()
    }

    pub(crate) fn events(&self) -> Vec<String> {
        self.api("GET", "/v1/events", None)["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["agent"].as_str().unwrap_or("-"),
                    e["what"].as_str().unwrap_or("")
                )
            })
            .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill_daemon();
        // A daemon someone else restarted (chaos's kill-daemon) is found by its own record.
        if let Some(pid) = std::fs::read_to_string(self.data.join("serve.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .and_then(|about| about["pid"].as_u64())
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("serve"))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // A pod the daemon launched just before it died may still be joining its cgroup or
        // writing its pid: sweep until two sweeps in a row find nothing (bounded).
        let mut quiet = 0;
        for _ in 0..100 {
            let found = self.sweep_pods();
            quiet = if found == 0 { quiet + 1 } else { 0 };
            if quiet == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(cgroups) = carapace_drivers::cgroup::MemoryCgroups::detect(&self.cgroup_parent) {
            for name in cgroups.list() {
                if let Some(cgroup) = cgroups.open(&name) {
                    let _ = cgroup.remove_when_empty(Duration::from_secs(5));
                }
            }
            let _ = std::fs::remove_dir(cgroups.root());
        }
    }
}

impl Served {
    /// Kills every process of this daemon's pods it can find, in their cgroups and through
    /// their directories (pods without cgroups); how many it found.
    fn sweep_pods(&self) -> usize {
        let mut found = 0;
        for pid in self.pod_dir_processes() {
            found += 1;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Ok(cgroups) = carapace_drivers::cgroup::MemoryCgroups::detect(&self.cgroup_parent) {
            for name in cgroups.list() {
                if let Some(cgroup) = cgroups.open(&name) {
                    found += cgroup.kill_all().unwrap_or(0);
                }
            }
        }
        found
    }
}

/// Sets the secret LLM_API_KEY of `agent`; the status and body of the answer.
fn put_to(served: &Served, agent: &str, value: &str) -> (u16, String) {
    let client: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = client
        .put(&format!(
            "{}/v1/agents/{agent}/secrets/LLM_API_KEY",
            served.base_url
        ))
        .header("Authorization", &format!("Bearer {}", served.token))
        .send(value)
        .expect("PUT a secret");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// A test agent's own HTTP API, as a client of the agent would use it.
fn call_port(port: u16, method: &str, path: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut response = match method {
        "GET" => agent.get(&url).call(),
        _ => agent.post(&url).send_empty(),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let text = response.body_mut().read_to_string().unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::String(text))
}

/// The test agent binary, built beside `carapace` by the workspace build.
pub(crate) fn test_agent() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_carapace")).with_file_name("carapace-test-agent");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

pub(crate) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

pub(crate) fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .expect("signal a process");
}

#[test]
fn a_crashed_agent_is_restarted_in_place_and_a_hung_one_recreated_with_its_state() {
    let scratch = Scratch::new("serve-ladder");
    let served = Served::start(&scratch);
    served.create_running("alpha");
    assert_eq!(served.agent_call("alpha", "POST", "/turn")["turns"], 1);
    let first_pid = served.agent_call("alpha", "GET", "/state")["pid"]
        .as_u64()
        .unwrap();

    // Rung 1: the pod's supervisor restarts it where it is; same instance, new process.
    served.agent_call("alpha", "POST", "/crash?code=3");
    let deadline = Instant::now() + Duration::from_secs(30);
    let second_pid = loop {
        let pid = std::panic::catch_unwind(|| {
            served.agent_call("alpha", "GET", "/state")["pid"].as_u64()
        })
        .ok()
        .flatten();
        if let Some(pid) = pid.filter(|p| *p != first_pid) {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the crashed agent was not restarted within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(second_pid, first_pid);
    let view = served.wait_running("alpha", 1);
    assert_eq!(view["rung"], "restart_in_place", "{view}");
    assert_eq!(
        served.agent_call("alpha", "GET", "/state")["turns"],
        1,
        "rung 1 keeps the state where it is"
    );

    // Rung 2: a hang (alive, probe failing) is recreated from a snapshot, state intact.
    signal(second_pid as u32, nix::sys::signal::Signal::SIGSTOP);
    let view = served.wait_running("alpha", 2);
    assert!(!alive(second_pid as u32), "the hung process is gone");
    assert_eq!(view["rung"], "recreate", "{view}");
    assert_eq!(
        served.agent_call("alpha", "GET", "/state")["turns"],
        1,
        "the recreated agent has its state; events {:?}",
        served.events()
    );
    assert_eq!(
        served.agent_processes().len(),
        1,
        "one live copy of the agent"
    );
}

#[test]
fn a_daemon_killed_with_sigkill_readopts_its_pods_without_duplicates() {
    let scratch = Scratch::new("serve-readopt");
    let mut served = Served::start(&scratch);
    for name in ["a", "b", "c"] {
        served.api(
            "POST",
            "/v1/agents",
            Some(&served.agent_body(name, json!({}))),
        );
    }
    for name in ["a", "b", "c"] {
        served.wait_running(name, 1);
    }
    let before = served.agent_processes();
    assert_eq!(before.len(), 3, "three agents, three processes");

    let port_b = served.port_of("b");
    served.kill_daemon();
    // While no daemon runs, rung 1 still does: the pod restarts its agent by itself.
    let pid_b = call_port(port_b, "GET", "/state")["pid"].as_u64().unwrap() as u32;
    call_port(port_b, "POST", "/crash?code=9");
    let deadline = Instant::now() + Duration::from_secs(30);
    while served.agent_processes().len() != 3 || served.agent_processes().contains(&pid_b) {
        assert!(
            Instant::now() < deadline,
            "the pod did not restart its agent without a daemon"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    served.launch();
    for name in ["a", "b", "c"] {
        let view = served.wait_running(name, 1);
        assert_eq!(
            view["instance"], 1,
            "{name} was adopted, not recreated: {view}"
        );
    }
    let after = served.agent_processes();
    assert_eq!(after.len(), 3, "no duplicates after the restart: {after:?}");
    assert!(before.contains(&after[0]) || before.contains(&after[1]) || before.contains(&after[2]));
    for name in ["a", "c"] {
        let pid = served.agent_call(name, "GET", "/state")["pid"]
            .as_u64()
            .unwrap() as u32;
        assert!(
            before.contains(&pid),
            "{name} kept its process through the daemon's restart"
        );
    }
    // b's pod reports the crash it handled alone once the new daemon watches it, so b can
    // pass through `restarting` after it was first seen running: wait for the fleet to settle.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = served.request("GET", "/metrics", None, None).1;
        let metrics = metrics.as_str().expect("metrics text").to_owned();
        assert!(
            metrics.contains("carapace_journal_replay_divergences 0"),
            "{metrics}"
        );
        if metrics.contains("carapace_agents{status=\"running\"} 3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all three running again: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_truncated_config_is_rolled_back_to_the_known_good_version() {
    let scratch = Scratch::new("serve-config");
    let served = Served::start(&scratch);
    served.create_running("cfg");
    served.agent_call("cfg", "POST", "/turn");
    // Healthy for the dwell: the engine marks the version known-good and snapshots it.
    served.wait_agent("cfg", Duration::from_secs(30), "known-good", |v| {
        !v["known_good"].is_null()
    });
    let view = served.agent("cfg");
    let config = served.pod_dir(&view).join("config.json");
    let text = std::fs::read_to_string(&config).expect("the pod's config");
    std::fs::write(&config, &text[..text.len() / 3]).expect("truncate the config");
    // A running gateway ignores its config file; the next start validates it and refuses.
    served.agent_call("cfg", "POST", "/crash?code=1");
    let view = served.wait_running("cfg", 2);
    assert_eq!(
        view["rung"],
        "restore_known_good",
        "{view}; events {:?}",
        served.events()
    );
    let restored =
        std::fs::read_to_string(served.pod_dir(&view).join("config.json")).expect("config");
    assert_eq!(
        restored.trim(),
        text.trim(),
        "the known-good config is back"
    );
    assert_eq!(
        served.agent_call("cfg", "GET", "/state")["turns"],
        1,
        "with the known-good state"
    );
    let versions = served.api("GET", "/v1/agents/cfg/versions", None);
    assert_eq!(versions["config_versions"], json!([1]), "{versions}");
    assert!(
        versions["snapshots"][0]["bytes"].as_u64().unwrap() > 0,
        "{versions}"
    );
    assert!(
        !versions.to_string().contains("greeting"),
        "config texts stay in the store: {versions}"
    );
}

#[test]
fn a_killed_supervisor_takes_its_agent_down_and_the_agent_is_recreated() {
    let scratch = Scratch::new("serve-supervisor");
    let served = Served::start(&scratch);
    served.api(
        "POST",
        "/v1/agents",
        Some(&served.agent_body("orphan", json!({}))),
    );
    let view = served.wait_running("orphan", 1);
    let agent_pid = served.agent_call("orphan", "GET", "/state")["pid"]
        .as_u64()
        .unwrap() as u32;
    let supervisor: u32 = std::fs::read_to_string(served.pod_dir(&view).join("supervise.pid"))
        .expect("the supervisor's pid")
        .trim()
        .parse()
        .expect("a pid");
    signal(supervisor, nix::sys::signal::Signal::SIGKILL);
    let view = served.wait_running("orphan", 2);
    assert_eq!(view["rung"], "recreate", "{view}");
    assert!(
        !alive(agent_pid),
        "the orphaned agent was killed with its pod"
    );
    assert_eq!(served.agent_processes().len(), 1);
}

#[test]
fn an_agent_over_its_memory_limit_is_oom_killed_by_its_cgroup_and_restarted() {
    let scratch = Scratch::new("serve-oom");
    let served = Served::start(&scratch);
    served.api(
        "POST",
        "/v1/agents",
        Some(&served.agent_body("hungry", json!({"memory_limit": "96MiB"}))),
    );
    served.wait_running("hungry", 1);
    let pid = served.agent_call("hungry", "GET", "/state")["pid"]
        .as_u64()
        .unwrap() as u32;
    // The spike kills the agent mid-request: no answer is expected.
    let port = served.port_of("hungry");
    let _ = ureq::post(&format!("http://127.0.0.1:{port}/spike?bytes=200000000")).send_empty();
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "the agent outlived its memory limit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let view = served.wait_agent("hungry", Duration::from_secs(30), "restarted", |v| {
        v["status"] == "running" && v["rung"] == "restart_in_place"
    });
    assert_eq!(view["instance"], 1);
    let post_mortem_free = served.api("GET", "/v1/alerts", None);
    assert_eq!(
        post_mortem_free["alerts"],
        json!([]),
        "no alert for a rung-1 recovery"
    );
}

#[test]
fn the_api_refuses_bad_requests_with_the_field_and_changes_nothing() {
    let scratch = Scratch::new("serve-api");
    let served = Served::start(&scratch);
    let (status, body) = served.request("GET", "/v1/agents", None, Some("wrong-token"));
    assert_eq!(status, 401, "{body}");
    let (status, _) = served.request("GET", "/healthz", None, Some(""));
    assert_eq!(status, 200, "liveness needs no token");

    let mut unknown = served.agent_body("x", json!({}));
    unknown["memroy_limit"] = json!("1GiB");
    let (status, body) = served.request("POST", "/v1/agents", Some(&unknown), None);
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("memroy_limit"),
        "{body}"
    );

    let bad_size = served.agent_body("x", json!({"memory_limit": "lots"}));
    let (status, body) = served.request("POST", "/v1/agents", Some(&bad_size), None);
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("memory_limit"),
        "{body}"
    );

    let bad_name = served.agent_body("no/slashes", json!({}));
    let (status, body) = served.request("POST", "/v1/agents", Some(&bad_name), None);
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().starts_with("name"),
        "{body}"
    );

    assert_eq!(
        served.api("GET", "/v1/agents", None)["agents"],
        json!([]),
        "nothing half-applied"
    );
    let (status, _) = served.request("GET", "/v1/agents/nobody", None, None);
    assert_eq!(status, 404);

    served.api(
        "POST",
        "/v1/agents",
        Some(&served.agent_body("once", json!({}))),
    );
    let (status, _) = served.request(
        "POST",
        "/v1/agents",
        Some(&served.agent_body("once", json!({}))),
        None,
    );
    assert_eq!(status, 409);

    let openapi = served.api("GET", "/openapi.json", None);
    for path in [
        "/v1/agents/{name}/versions",
        "/v1/agents",
        "/v1/rollouts",
        "/v1/rollouts/{id}",
        "/v1/agents/{name}",
        "/v1/events",
        "/v1/alerts",
        "/v1/nodes",
        "/metrics",
        "/healthz",
    ] {
        assert!(openapi["paths"].get(path).is_some(), "{path} is documented");
    }
    let nodes = served.api("GET", "/v1/nodes", None);
    assert!(
        nodes["nodes"][0]["memory"]["capacity_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );

    served.api("DELETE", "/v1/agents/once", None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !served.agent_processes().is_empty() {
        assert!(
            Instant::now() < deadline,
            "a removed agent's pod kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_refuses_a_bad_config_file_naming_the_field_and_a_public_address() {
    let scratch = Scratch::new("serve-config-errors");
    let bad = scratch.file(
        "bad.toml",
        "data_dir = \"d\"\n[pods]\nprobe_intervall = \"1s\"\n",
    );
    let run = crate::common::carapace(["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("bad.toml") && run.stderr.contains("probe_intervall"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("line 3"), "{}", run.stderr);

    let public = scratch.file(
        "public.toml",
        "data_dir = \"d\"\n[api]\nlisten = \"0.0.0.0:7878\"\n",
    );
    let run = crate::common::carapace(["serve", "--config", public.to_str().unwrap()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("loopback"), "{}", run.stderr);
    assert!(
        !scratch.path().join("d").exists(),
        "a refused config creates nothing"
    );
    let _ = workspace();
}

#[test]
fn an_agent_that_never_starts_is_parked_with_a_post_mortem_in_the_api_the_file_and_the_webhook() {
    let scratch = Scratch::new("serve-alert");
    let hook = std::net::TcpListener::bind("127.0.0.1:0").expect("a webhook listener");
    let hook_port = hook.local_addr().expect("its address").port();
    let (posted, received) = channel();
    std::thread::spawn(move || {
        for stream in hook.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0usize;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let mut stream = stream;
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 204 No Content\r\n\r\n");
            let _ = posted.send(body);
        }
    });
    let ports = port_block();
    let pods = test_pods(ports);
    let api = format!("alert_webhook = \"http://127.0.0.1:{hook_port}/alerts\"");
    let served = Served::start_full(&scratch, ports, &api, &pods, TEST_POLICY);
    let body = served.agent_body(
        "doomed",
        json!({"command": ["sh", "-c", "exit 3"], "validate": null}),
    );
    served.api("POST", "/v1/agents", Some(&body));
    let view = served.wait_agent("doomed", Duration::from_secs(60), "parked", |v| {
        v["status"] == "parked"
    });
    assert_eq!(view["rung"], "alert", "{view}");
    let alerts = served.api("GET", "/v1/alerts", None);
    let post_mortem = &alerts["alerts"][0];
    assert_eq!(post_mortem["agent"], view["id"], "{alerts}");
    assert!(
        post_mortem["timeline"].to_string().contains("exited"),
        "the post-mortem tells the story: {post_mortem}"
    );
    let replay = post_mortem["replay_command"]
        .as_str()
        .expect("a replay command");
    assert!(
        replay.starts_with("carapace replay ") && replay.contains("carapace.redb --until "),
        "{replay}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let file = served.data_dir().join("alerts.jsonl");
    while !file.exists() {
        assert!(Instant::now() < deadline, "no alerts file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = std::fs::read_to_string(&file).expect("the alerts file");
    let written: Value = serde_json::from_str(line.lines().next().expect("a line")).expect("JSON");
    assert_eq!(&written, post_mortem);
    let body = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the webhook got the post-mortem");
    let hooked: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(&hooked, post_mortem);
}

#[test]
fn a_daemon_killed_right_after_each_kind_of_change_loses_and_duplicates_nothing() {
    let scratch = Scratch::new("serve-midcommand");
    let mut served = Served::start(&scratch);
    // Killed right after a create: the start is journaled; its pod may or may not exist yet.
    for name in ["m1", "m2", "m3"] {
        served.api(
            "POST",
            "/v1/agents",
            Some(&served.agent_body(name, json!({}))),
        );
        served.kill_daemon();
        served.launch();
    }
    for name in ["m1", "m2", "m3"] {
        served.wait_running(name, 1);
    }
    assert_eq!(served.agent_processes().len(), 3);

    // Killed right after a delete: the stop is in flight.
    served.api("DELETE", "/v1/agents/m2", None);
    served.kill_daemon();
    served.launch();
    let (status, _) = served.request("GET", "/v1/agents/m2", None, None);
    assert_eq!(status, 404, "a removed agent stays removed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while served.agent_processes().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "m2's pod was not stopped after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Killed right after a config change: stop and restart at the new version in flight.
    let mut changed = served.agent_body("m3", json!({}));
    changed["config"]["greeting"] = json!("v2");
    served.api("PUT", "/v1/agents/m3", Some(&changed));
    served.kill_daemon();
    served.launch();
    let view = served.wait_agent("m3", Duration::from_secs(60), "running v2", |v| {
        v["status"] == "running" && v["running_version"]["config"] == 2
    });
    assert_eq!(
        served.agent_call("m3", "GET", "/state")["greeting"],
        "v2",
        "{view}"
    );
    served.wait_running("m1", 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served.agent_processes().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "two agents, two processes: {:?}",
            served.agent_processes()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = served.request("GET", "/metrics", None, None).1;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("carapace_journal_replay_divergences 0")),
        "{metrics}"
    );
}

#[test]
fn without_a_writable_cgroup_serve_runs_agents_and_says_limits_are_not_enforced() {
    let scratch = Scratch::new("serve-unenforced");
    let ports = port_block();
    let pods = test_pods(ports);
    // A parent no cgroup can be made under: stands in for a machine without writable cgroups.
    let served = Served::start_in(&scratch, ports, "", &pods, TEST_POLICY, "no/such/../parent");
    served.api(
        "POST",
        "/v1/agents",
        Some(&served.agent_body("free", json!({}))),
    );
    let view = served.wait_running("free", 1);
    assert!(served.pod_dir(&view).join("pod.json").exists());
    let metrics = served.request("GET", "/metrics", None, None).1;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("carapace_memory_limits_enforced 0")),
        "{metrics}"
    );
}

#[test]
fn a_tenant_sees_its_own_agents_only_and_a_foreign_one_answers_as_missing() {
    let scratch = Scratch::new("serve-tenants");
    let served = Served::start(&scratch);
    let mut tokens = Vec::new();
    for (id, name) in [(1, "acme"), (2, "globex")] {
        let (status, created) = served.request(
            "POST",
            "/v1/tenants",
            Some(&json!({"id": id, "name": name})),
            None,
        );
        assert_eq!(status, 201, "{created}");
        tokens.push(created["token"].as_str().expect("a token, once").to_owned());
    }
    let (acme, globex) = (tokens[0].as_str(), tokens[1].as_str());
    let stored = std::fs::read(served.data_dir().join("carapace.redb")).expect("the store");
    for token in [acme, globex] {
        assert!(
            !stored.windows(token.len()).any(|w| w == token.as_bytes()),
            "the store keeps hashes, not tokens"
        );
    }
    // acme's agent, created with acme's token: its tenant is acme's whatever the body says.
    let body = served.agent_body("shared-name", json!({"tenant": 2}));
    let (status, view) = served.request("POST", "/v1/agents", Some(&body), Some(acme));
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["tenant"], 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while served
        .request("GET", "/v1/agents/shared-name", None, Some(acme))
        .1["status"]
        != "running"
    {
        assert!(Instant::now() < deadline, "acme's agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Every route, as globex, on acme's agent and on a name nobody has: the same answer.
    let update = served.agent_body("shared-name", json!({}));
    let missing_update = served.agent_body("nobody", json!({}));
    for (method, path, body, missing_path, missing_body) in [
        (
            "GET",
            "/v1/agents/shared-name",
            None,
            "/v1/agents/nobody",
            None,
        ),
        (
            "GET",
            "/v1/agents/shared-name/versions",
            None,
            "/v1/agents/nobody/versions",
            None,
        ),
        (
            "PUT",
            "/v1/agents/shared-name",
            Some(&update),
            "/v1/agents/nobody",
            Some(&missing_update),
        ),
        (
            "DELETE",
            "/v1/agents/shared-name",
            None,
            "/v1/agents/nobody",
            None,
        ),
        (
            "GET",
            "/v1/agents/shared-name?tenant=1",
            None,
            "/v1/agents/nobody?tenant=1",
            None,
        ),
        (
            "GET",
            "/v1/agents/shared-name/secrets",
            None,
            "/v1/agents/nobody/secrets",
            None,
        ),
        (
            "DELETE",
            "/v1/agents/shared-name/secrets/LLM_API_KEY",
            None,
            "/v1/agents/nobody/secrets/LLM_API_KEY",
            None,
        ),
    ] {
        let foreign = served.request(method, path, body, Some(globex));
        let missing = served.request(method, missing_path, missing_body, Some(globex));
        assert_eq!(foreign.0, 404, "{method} {path}: {}", foreign.1);
        assert_eq!(
            foreign.1.to_string().replace("shared-name", "NAME"),
            missing.1.to_string().replace("nobody", "NAME"),
            "{method} {path}: a foreign agent answers exactly as a missing one"
        );
    }
    let metrics = served.request("GET", "/metrics", None, Some(globex)).1;
    let metrics = metrics.as_str().expect("metrics text");
    assert!(
        !metrics.contains("tenant=\"1\"") && !metrics.contains("shared-name"),
        "a tenant's metrics hold only its own series: {metrics}"
    );
    assert!(!metrics.contains("carapace_journal_records"), "{metrics}");
    let acme_metrics = served.request("GET", "/metrics", None, Some(acme)).1;
    assert!(
        acme_metrics
            .as_str()
            .is_some_and(|m| m.contains("carapace_agent_up{tenant=\"1\",agent=\"shared-name\"} 1")),
        "{acme_metrics}"
    );
    let put_secret = |name: &str| {
        let client: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = client
            .put(&format!(
                "{}/v1/agents/{name}/secrets/LLM_API_KEY",
                served.base_url
            ))
            .header("Authorization", &format!("Bearer {globex}"))
            .send("stolen")
            .expect("a response");
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        (status, body.replace(name, "NAME"))
    };
    let (foreign, missing) = (put_secret("shared-name"), put_secret("nobody"));
    assert_eq!(foreign.0, 404, "{foreign:?}");
    assert_eq!(
        foreign, missing,
        "setting a foreign agent's secret answers as a missing agent"
    );
    for path in ["/v1/nodes", "/v1/tenants"] {
        let (status, body) = served.request("GET", path, None, Some(globex));
        let (_, fallback) = served.request("GET", "/no/such/route", None, Some(globex));
        assert_eq!(status, 404, "{path}");
        assert_eq!(body, fallback, "{path} does not exist for a tenant");
    }
    let listed = served.request("GET", "/v1/agents", None, Some(globex)).1;
    assert_eq!(listed["agents"], json!([]), "{listed}");
    let events = served.request("GET", "/v1/events", None, Some(globex)).1;
    assert_eq!(events["events"], json!([]), "{events}");
    let alerts = served.request("GET", "/v1/alerts", None, Some(globex)).1;
    assert_eq!(alerts["alerts"], json!([]), "{alerts}");

    // globex may use the same name in its own namespace; acme's agent is untouched.
    let (status, view) = served.request(
        "POST",
        "/v1/agents",
        Some(&served.agent_body("shared-name", json!({}))),
        Some(globex),
    );
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["tenant"], 2);
    let acme_view = served
        .request("GET", "/v1/agents/shared-name", None, Some(acme))
        .1;
    assert_eq!(acme_view["tenant"], 1, "{acme_view}");
    let acme_events = served.request("GET", "/v1/events", None, Some(acme)).1;
    assert!(
        acme_events["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant"] == 1),
        "{acme_events}"
    );
    let all = served.api("GET", "/v1/agents", None);
    assert_eq!(
        all["agents"].as_array().unwrap().len(),
        2,
        "the admin sees both"
    );
    let (status, _) = served.request("GET", "/v1/agents", None, Some("not-a-token-at-all"));
    assert_eq!(status, 401);
}

#[test]
fn a_secret_reaches_its_agent_only_and_no_byte_written_anywhere_else_holds_it() {
    let scratch = Scratch::new("serve-secrets");
    let mut served = Served::start(&scratch);
    let canary = format!("canary-{}-{}", std::process::id(), port_block());
    // Everything the daemon prints, kept to be searched: it runs with debug logging.
    served.keep_output(scratch.path().join("serve-output.log"));
    served.kill_daemon();
    served.launch();
    served.create_running("keyed");
    served.agent_call("keyed", "POST", "/turn");
    let mut bodies = Vec::new();
    let put = |served: &Served, value: &str| put_to(served, "keyed", value);
    let (status, body) = put(&served, &canary);
    assert_eq!(status, 200, "{body}");
    bodies.push(body);
    // Set, the secret moves the agent to a new version: restarted from a snapshot.
    let view = served.wait_agent("keyed", Duration::from_secs(60), "restarted with it", |v| {
        v["status"] == "running" && v["running_version"]["config"] == 2
    });
    let pid = view["pod"]["agent_pid"].as_u64().expect("the agent's pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the agent's environment");
    let wanted = format!("LLM_API_KEY={canary}");
    assert!(
        environ.split(|b| *b == 0).any(|kv| kv == wanted.as_bytes()),
        "the agent has its secret in its environment"
    );
    assert_eq!(
        served.agent_call("keyed", "GET", "/state")["turns"],
        1,
        "state intact"
    );
    let names = served.api("GET", "/v1/agents/keyed/secrets", None);
    assert_eq!(names["secrets"], json!(["LLM_API_KEY"]));
    let (status, body) = put(&served, "bad\u{0}");
    bodies.push(body);
    assert_eq!(
        status, 400,
        "an environment variable cannot hold a NUL: {}",
        bodies[1]
    );
    let rotated = format!("{canary}-rotated");
    let (status, body) = put(&served, &rotated);
    assert_eq!(status, 200, "{body}");
    bodies.push(body);
    served.wait_agent("keyed", Duration::from_secs(60), "rotated", |v| {
        v["status"] == "running" && v["running_version"]["config"] == 3 && v["rung"].is_null()
    });
    assert_eq!(
        served.agent_call("keyed", "GET", "/state")["turns"],
        1,
        "rotated, state intact"
    );
    let (status, body) =
        served.request("DELETE", "/v1/agents/keyed/secrets/not_a_NAME", None, None);
    assert_eq!(status, 400, "{body}");

    // Everything an operator and a tool can read, after the faults chaos injects and a
    // post-mortem of an agent that holds the secret too.
    served.agent_call("keyed", "POST", "/crash?code=2");
    served.wait_agent("keyed", Duration::from_secs(60), "back", |v| {
        v["status"] == "running" && v["rung"].is_null()
    });
    let out = scratch.path().join("chaos-out");
    let chaos = crate::common::carapace([
        "chaos",
        "--data",
        served.data_dir().to_str().unwrap(),
        "--agent",
        "keyed",
        "--fault",
        "hang",
        "--settle",
        "200ms",
        "--timeout",
        "60s",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(chaos.code, Some(0), "{chaos:?}");
    bodies.push(chaos.stdout + &chaos.stderr);
    let doomed = served.agent_body(
        "doomed",
        json!({"command": ["sh", "-c", "exit 3"], "validate": null}),
    );
    served.api("POST", "/v1/agents", Some(&doomed));
    let (status, body) = put_to(&served, "doomed", &canary);
    assert_eq!(status, 200, "{body}");
    served.wait_agent("doomed", Duration::from_secs(60), "parked", |v| {
        v["status"] == "parked"
    });
    let alerts = served.api("GET", "/v1/alerts", None);
    assert!(
        !alerts["alerts"].as_array().unwrap().is_empty(),
        "a post-mortem: {alerts}"
    );
    for path in [
        "/v1/agents",
        "/v1/agents/keyed",
        "/v1/agents/keyed/versions",
        "/v1/agents/keyed/secrets",
        "/v1/events",
        "/v1/alerts",
        "/v1/nodes",
        "/metrics",
    ] {
        bodies.push(served.request("GET", path, None, None).1.to_string());
    }
    served.kill_daemon();
    let store = served
        .data_dir()
        .join("carapace.redb")
        .display()
        .to_string();
    let replay = crate::common::carapace(["replay", &store, "--json"]);
    assert_eq!(replay.code, Some(0), "{replay:?}");
    bodies.push(replay.stdout + &replay.stderr);
    for body in &bodies {
        assert!(
            !body.contains(&canary),
            "a response holds the secret: {body}"
        );
    }
    // Every byte written under the scratch directory, but the one file that hands secrets
    // to a pod (mode 0600, removed with the pod).
    let mut stack = vec![scratch.path().to_owned()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a directory").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.file_name().is_some_and(|n| n == "secrets.json") {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = std::fs::metadata(&path)
                    .expect("its mode")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{}", path.display());
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
                "{} holds the secret",
                path.display()
            );
        }
    }
    assert!(
        files > 10,
        "the search covered the store, pods, snapshots and logs ({files} files)"
    );
    let transcript =
        std::fs::read_to_string(scratch.path().join("serve-output.log")).unwrap_or_default();
    assert!(
        transcript.contains("listening on"),
        "the daemon's output was kept"
    );
    assert!(
        !transcript.contains(&served.token),
        "nor is the admin token logged"
    );
    served.launch();
}

#[test]
fn a_tenant_over_its_rate_or_its_quota_gets_429_with_retry_after_and_no_other_tenant_waits() {
    let scratch = Scratch::new("serve-limits");
    let ports = port_block();
    let pods = test_pods(ports);
    let api = "tenant_requests_per_second = 2.0\ntenant_burst = 5";
    let served = Served::start_full(&scratch, ports, api, &pods, TEST_POLICY);
    let tenant = |id: u32, quota: Value| {
        let body = json!({"id": id, "name": format!("t{id}"), "quota": quota});
        let (status, created) = served.request("POST", "/v1/tenants", Some(&body), None);
        assert_eq!(status, 201, "{created}");
        created["token"].as_str().expect("a token").to_owned()
    };
    let busy = tenant(1, json!({"max_agents": 1, "max_memory_bytes": 300_000_000}));
    let calm = tenant(2, json!({}));

    let statuses: Vec<u16> = (0..12)
        .map(|_| served.request("GET", "/v1/agents", None, Some(&busy)).0)
        .collect();
    assert!(
        statuses[..5].iter().all(|s| *s == 200),
        "the burst passes: {statuses:?}"
    );
    assert!(statuses.contains(&429), "then the rate binds: {statuses:?}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let response = agent
        .get(&format!("{}/v1/agents", served.base_url))
        .header("Authorization", &format!("Bearer {busy}"))
        .call()
        .expect("a response");
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=5).contains(&retry), "{retry}");
    for _ in 0..5 {
        assert_eq!(
            served.request("GET", "/v1/agents", None, Some(&calm)).0,
            200,
            "another tenant is not slowed by the busy one"
        );
    }
    for _ in 0..20 {
        assert_eq!(
            served.request("GET", "/v1/agents", None, None).0,
            200,
            "the admin is not limited"
        );
    }

    // Quotas, as the admin acts for the busy tenant (the rate binds tenants' tokens only).
    let create = |name: &str, limit: &str| {
        let body = served.agent_body(name, json!({"tenant": 1, "memory_limit": limit}));
        served.request("POST", "/v1/agents", Some(&body), None)
    };
    let (status, body) = create("big", "400MiB");
    assert_eq!(status, 429, "over the memory quota: {body}");
    assert!(body["error"].as_str().unwrap().contains("quota"), "{body}");
    let (status, body) = create("one", "128MiB");
    assert_eq!(status, 201, "{body}");
    let (status, body) = create("two", "16MiB");
    assert_eq!(status, 429, "over the agent quota: {body}");
    let listed = served.api("GET", "/v1/agents?tenant=1", None);
    assert_eq!(
        listed["agents"].as_array().unwrap().len(),
        1,
        "nothing half-applied"
    );
}

#[test]
fn a_tenant_streams_its_own_events_live_and_none_of_another_tenant() {
    use std::io::{Read, Write};
    let scratch = Scratch::new("serve-stream");
    let served = Served::start(&scratch);
    let token = |id: u32| {
        let body = json!({"id": id, "name": format!("t{id}")});
        served.request("POST", "/v1/tenants", Some(&body), None).1["token"]
            .as_str()
            .expect("a token")
            .to_owned()
    };
    let (acme, globex) = (token(1), token(2));
    let address = served.base_url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).expect("connect");
    write!(
        stream,
        "GET /v1/events/stream HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {acme}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send the request");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("a read timeout");
    let create = |name: &str, token: &str| {
        let body = served.agent_body(name, json!({}));
        let (status, view) = served.request("POST", "/v1/agents", Some(&body), Some(token));
        assert_eq!(status, 201, "{view}");
    };
    create("globex-agent", &globex);
    create("acme-agent", &acme);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !(seen.contains("event: ready") && seen.contains("acme-agent")) {
        assert!(
            Instant::now() < deadline,
            "acme's agent's readiness never streamed: {seen}"
        );
        match stream.read(&mut buffer) {
            Ok(0) => panic!("the stream closed: {seen}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buffer[..n])),
            Err(_) => {}
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(
        seen.contains("event: start"),
        "decisions stream too: {seen}"
    );
    assert!(
        !seen.contains("globex-agent"),
        "another tenant's events never stream: {seen}"
    );
}

#[test]
fn a_damaged_journal_tail_is_set_aside_and_what_follows_is_never_lost() {
    let scratch = Scratch::new("serve-damaged");
    let mut served = Served::start(&scratch);
    served.create_running("before");
    served.kill_daemon();
    // An unreadable record at the journal's end, as a damaged disk might leave.
    let path = served.data_dir().join("carapace.redb");
    {
        let store = carapace_store::Store::open(&path, 0).expect("open the store");
        let next = store.last_seq() + 1;
        store.close().expect("close it");
        let db = redb::Database::open(&path).expect("the file as a database");
        let txn = db.begin_write().expect("a write");
        {
            let journal: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("journal");
            let mut table = txn.open_table(journal).expect("the journal table");
            table
                .insert(next, b"\x00 not a record".as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }
    served.launch();
    served.wait_running("before", 1);
    // Appended after the damage: must replay on the next start.
    served.create_running("after");
    served.kill_daemon();
    served.launch();
    for name in ["before", "after"] {
        served.wait_running(name, 1);
    }
    let metrics = served.request("GET", "/metrics", None, None).1;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("carapace_journal_replay_divergences 0")),
        "{metrics}"
    );
    assert_eq!(served.agent_processes().len(), 2);
    served.kill_daemon();
    let copy = scratch.path().join("copy.redb");
    std::fs::copy(&path, &copy).expect("copy");
    let run = crate::common::carapace(["replay", copy.to_str().unwrap(), "--json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    served.launch();
}

#[test]
fn hostile_bodies_are_refused_naming_the_field_and_the_daemon_keeps_answering() {
    let scratch = Scratch::new("serve-hostile");
    let served = Served::start(&scratch);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |body: &str| {
        let mut response = agent
            .post(&format!("{}/v1/agents", served.base_url))
            .header("Authorization", &format!("Bearer {}", served.token))
            .header("Content-Type", "application/json")
            .send(body)
            .expect("a response");
        let status = response.status().as_u16();
        (
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        )
    };
    // An oversized body is refused once the limit is passed: the rest is never read.
    {
        use std::io::{Read, Write};
        let address = served.base_url.trim_start_matches("http://").to_owned();
        let mut stream = std::net::TcpStream::connect(&address).expect("connect");
        let length = 8 << 20;
        write!(
            stream,
            "POST /v1/agents HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
            served.token,
        )
        .expect("send the head");
        let mut writer = stream.try_clone().expect("clone the stream");
        // The server may stop reading, and close, before all of it is sent.
        let sender = std::thread::spawn(move || {
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..(length / chunk.len()) {
                if writer.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a timeout");
        let mut answer = [0u8; 64];
        let n = stream.read(&mut answer).expect("an answer");
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        drop(stream);
        let _ = sender.join();
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = post(&deep);
    assert_eq!(status, 400, "deep nesting: {body}");
    let valid = served.agent_body("x", json!({}));
    for (field, value, named) in [
        ("memory_limit", json!(-1), "memory_limit"),
        ("memory_limit", json!(1e30), "memory_limit"),
        ("memory_limit", json!("9999999 PiB"), "memory_limit"),
        ("tenant", json!(1u64 << 40), "tenant"),
        ("priority", json!(300), "priority"),
        ("command", json!("not a list"), "command"),
    ] {
        let mut body = valid.clone();
        body[field] = value.clone();
        let (status, answer) = post(&body.to_string());
        assert_eq!(status, 400, "{field}={value}: {answer}");
        assert!(answer.contains(named), "{field}={value}: {answer}");
    }
    let (status, answer) = post("{\"name\": \"x\", ");
    assert_eq!(status, 400, "a truncated body: {answer}");
    assert_eq!(
        served.api("GET", "/v1/agents", None)["agents"],
        json!([]),
        "nothing half-applied"
    );
    assert_eq!(
        served.request("GET", "/healthz", None, None).0,
        200,
        "still answering"
    );
}

#[test]
fn the_api_keeps_answering_tenants_under_load_while_chaos_runs_and_nothing_is_lost() {
    let scratch = Scratch::new("serve-load");
    let served = Served::start(&scratch);
    let mut tokens = Vec::new();
    for id in 1..=3u32 {
        let body = json!({"id": id, "name": format!("t{id}")});
        let created = served.request("POST", "/v1/tenants", Some(&body), None).1;
        let token = created["token"].as_str().expect("a token").to_owned();
        let agent = served.agent_body(&format!("load-{id}"), json!({}));
        let (status, view) = served.request("POST", "/v1/agents", Some(&agent), Some(&token));
        assert_eq!(status, 201, "{view}");
        tokens.push(token);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while served.agent_processes().len() != 3 {
        assert!(Instant::now() < deadline, "three agents did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Bounded: three tenants, 20 requests/s each, for 5 s, on loopback only.
    let base = served.base_url.clone();
    let load: Vec<_> = tokens
        .iter()
        .cloned()
        .map(|token| {
            let base = base.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let mut latencies = Vec::new();
                let mut failures = 0u32;
                for _ in 0..100 {
                    let started = Instant::now();
                    let answered = agent
                        .get(&format!("{base}/v1/agents"))
                        .header("Authorization", &format!("Bearer {token}"))
                        .call();
                    match answered {
                        Ok(response) if matches!(response.status().as_u16(), 200 | 429) => {
                            latencies.push(started.elapsed());
                        }
                        _ => failures += 1,
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                (latencies, failures)
            })
        })
        .collect();
    // Chaos meanwhile: the first tenant's agent killed, the second's hung.
    let admin_view = |name: &str| {
        served.api(
            "GET",
            &format!("/v1/agents/{name}?tenant={}", &name[5..]),
            None,
        )
    };
    let pid = admin_view("load-1")["pod"]["agent_pid"]
        .as_u64()
        .expect("a pid") as u32;
    signal(pid, nix::sys::signal::Signal::SIGKILL);
    let pid = admin_view("load-2")["pod"]["agent_pid"]
        .as_u64()
        .expect("a pid") as u32;
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let mut all = Vec::new();
    for thread in load {
        let (latencies, failures) = thread.join().expect("a load thread");
        assert_eq!(failures, 0, "every request was answered");
        all.extend(latencies);
    }
    all.sort();
    let p99 = all[all.len() * 99 / 100];
    println!(
        "API under load: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        all.len(),
        all[all.len() / 2],
        p99,
        all[all.len() - 1]
    );
    for (id, name) in [(1, "load-1"), (2, "load-2"), (3, "load-3")] {
        let path = format!("/v1/agents/{name}?tenant={id}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while served.api("GET", &path, None)["status"] != "running" {
            assert!(Instant::now() < deadline, "{name} was lost");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(
        served.agent_processes().len(),
        3,
        "none lost, none duplicated"
    );
}

#[test]
fn a_changed_policy_is_refused_at_restart_naming_the_field_and_the_journal_is_untouched() {
    let scratch = Scratch::new("serve-policy");
    let mut served = Served::start(&scratch);
    served.create_running("steady");
    served.kill_daemon();
    let store = served.data_dir().join("carapace.redb");
    let journal = |path: &Path| {
        let store = carapace_store::Store::open(path, 0).expect("open the store");
        let read = store.read_journal(1, usize::MAX).expect("read the journal");
        store.close().expect("close the store");
        read.records
    };
    let before = journal(&store);
    let text = std::fs::read_to_string(served.config_file()).expect("the config");
    let changed = text.replace("known_good_dwell_ms = 1500", "known_good_dwell_ms = 1600");
    assert_ne!(changed, text);
    let config = scratch.file("changed.toml", &changed);
    let run = crate::common::carapace(["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("changed.toml") && run.stderr.contains("field `policy`"),
        "{}",
        run.stderr
    );
    assert!(journal(&store) == before, "the journal is untouched");
    served.launch();
    served.wait_running("steady", 1);
}
