//! `carapace serve` keeping three real OpenClaw gateways alive: one killed with SIGKILL
//! (rung 1), one hung after a real agent turn (rung 2: recreated with its session), one whose
//! config was truncated (rung 3: `openclaw config validate` refuses it, the known-good
//! version comes back). A local mock of an OpenAI-compatible API stands in for the paid LLM
//! behind the agent turn; it is the only test double here.

use crate::common::Scratch;
use crate::serve::{Served, alive, signal};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// OpenClaw boots in ~13 s alone and ~30 s when three start at once on two cores: the
/// deadlines below leave room for a slow CI machine, never for a lucky one.
pub(crate) const BOOT: Duration = Duration::from_secs(300);

pub(crate) const PODS: &str = r#"
startup_probe_interval = "500ms"
probe_interval = "1s"
probe_timeout = "3s"
memory_interval = "5s"
grace = "5s"
"#;

/// Gateways boot one at a time — the engine's own storm control: three ~1 GB Node.js boots at
/// once on two loaded cores can outlast OpenClaw's own startup deadline.
pub(crate) const POLICY: &str = r#"
[policy.storm]
max_concurrent_starts = 1

[policy.supervisor]
hang_probe_failures = 4

[policy.recovery]
known_good_dwell_ms = 5000
relapse_window_ms = 1000
restart_deadline_ms = 300000
start_deadline_ms = 300000
snapshot_interval_ms = 3600000
"#;

#[test]
fn three_openclaw_gateways_recover_from_a_kill_a_hang_and_a_broken_config() {
    let (openclaw, node_bin) = crate::supervise::openclaw();
    let scratch = Scratch::new("serve-openclaw");
    let mock = MockLlm::start();
    let ports = crate::ports::SERVE;
    ports.assert_free();
    let pods = format!("{}{PODS}", ports.pods_table());
    let served = Served::start_with(&scratch, ports.api, &pods, POLICY);
    let body = |name: &str| gateway(name, &openclaw, &node_bin, mock.port);
    for name in ["claw-a", "claw-b", "claw-c"] {
        served.api("POST", "/v1/agents", Some(&body(name)));
    }
    for name in ["claw-a", "claw-b", "claw-c"] {
        served.wait_agent(name, BOOT, "running", |v| {
            v["status"] == "running" && v["instance"] == 1
        });
    }
    assert_eq!(
        gateways(&served).len(),
        3,
        "three gateways, one process tree each"
    );

    // A real agent turn against the mock LLM: session state worth keeping.
    let session = agent_turn(&served, "claw-a", &openclaw, &node_bin);
    assert!(mock.requests() >= 1, "the turn reached the mock LLM");

    // Rung 1: kill -9 → restarted in place, same instance.
    let b = served.agent("claw-b");
    let b_pid = gateway_pid(&served, &b);
    signal(b_pid, nix::sys::signal::Signal::SIGKILL);
    served.wait_agent("claw-b", BOOT, "restarted in place", |v| {
        v["status"] == "running"
            && v["instance"] == 1
            && v["rung"] == "restart_in_place"
            && gateway_pid(&served, v) != b_pid
    });

    // Rung 2: a hang → recreated from a snapshot, the session intact.
    let a = served.agent("claw-a");
    let a_pid = gateway_pid(&served, &a);
    signal(a_pid, nix::sys::signal::Signal::SIGSTOP);
    let a = served.wait_agent("claw-a", BOOT, "recreated", |v| {
        v["status"] == "running" && v["instance"] == 2
    });
    assert_eq!(a["rung"], "recreate", "{a}");
    assert!(!alive(a_pid), "the hung gateway is gone");
    assert!(
        tree_contains(&served.pod_dir(&a).join("state"), session.as_bytes()),
        "the recreated gateway's state holds session {session}"
    );

    // Rung 3: a truncated config (as users report: 3,641 → 423 bytes), then a crash: the
    // next start validates it with `openclaw config validate` and refuses; the known-good
    // version is restored.
    let c = served.wait_agent("claw-c", BOOT, "known-good", |v| !v["known_good"].is_null());
    let config = served.pod_dir(&c).join("config.json");
    let text = std::fs::read_to_string(&config).expect("the gateway's config");
    std::fs::write(&config, &text[..text.len() / 8]).expect("truncate the config");
    signal(gateway_pid(&served, &c), nix::sys::signal::Signal::SIGKILL);
    let c = served.wait_agent("claw-c", BOOT, "restored", |v| {
        v["status"] == "running" && v["instance"] == 2
    });
    assert_eq!(
        c["rung"],
        "restore_known_good",
        "{c}; {:?}",
        served.events()
    );
    let restored = std::fs::read_to_string(served.pod_dir(&c).join("config.json")).expect("config");
    assert_eq!(
        without_instance_values(&restored),
        without_instance_values(&text),
        "the known-good config is back (with the new instance's token and paths)"
    );

    let live = gateways(&served);
    assert_eq!(live.len(), 3, "no agent lost and none duplicated: {live:?}");
    assert_eq!(served.api("GET", "/v1/alerts", None)["alerts"], json!([]));
}

/// The API body of one OpenClaw gateway agent: isolated dirs inside its pod, its own port
/// (OPENCLAW_GATEWAY_PORT, read by the gateway and by the CLI alike) and a fresh token.
pub(crate) fn gateway(name: &str, openclaw: &Path, node_bin: &Path, llm_port: u16) -> Value {
    let openclaw = openclaw.display().to_string();
    let path = format!(
        "{}:{}",
        node_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    json!({
        "name": name,
        "memory_limit": "3GiB",
        "memory_request": "1GiB",
        "command": [openclaw, "gateway", "run"],
        "env": {
            "PATH": path,
            "HOME": "{pod}/home",
            "OPENCLAW_STATE_DIR": "{state}",
            "OPENCLAW_CONFIG_PATH": "{config}",
            "TMPDIR": "{state}/tmp",
            "OPENCLAW_GATEWAY_PORT": "{port}",
            "CI": "true"
        },
        "probe": "http://127.0.0.1:{port}/readyz",
        "validate": [openclaw, "config", "validate", "--json"],
        "config": {
            // Derived ports (up to +110) are computed from this one: each gateway its own.
            "gateway": { "mode": "local", "bind": "loopback", "port": "{port}",
                         "auth": { "mode": "token", "token": "{token}" },
                         "controlUi": { "enabled": false } },
            "update": { "checkOnStart": false },
            "models": {
                "catalogRefresh": { "enabled": false },
                "providers": { "mock": {
                    "baseUrl": format!("http://127.0.0.1:{llm_port}/v1"),
                    "apiKey": "mock-key", "api": "openai-completions",
                    "models": [{ "id": "mock-1", "name": "Mock 1", "reasoning": false,
                                 "input": ["text"], "contextWindow": 128_000, "maxTokens": 4096,
                                 "cost": { "input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0 } }]
                } }
            },
            "discovery": { "mdns": { "mode": "off" } },
            "agents": { "defaults": { "heartbeat": { "every": "0m" },
                                      "model": { "primary": "mock/mock-1" } } },
            "logging": { "file": "{pod}/openclaw.log" }
        }
    })
}

/// Runs `openclaw agent` against the gateway of `name`, as its operator would; returns the
/// session id the turn created.
fn agent_turn(served: &Served, name: &str, openclaw: &Path, node_bin: &Path) -> String {
    let view = served.agent(name);
    let pod = served.pod_dir(&view);
    let port = served.port_of(name);
    let path = format!(
        "{}:{}",
        node_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = std::process::Command::new(openclaw)
        .args([
            "agent",
            "--agent",
            "main",
            "--message",
            "hello from carapace",
            "--json",
        ])
        .env("PATH", path)
        .env("HOME", pod.join("home"))
        .env("OPENCLAW_STATE_DIR", pod.join("state"))
        .env("OPENCLAW_CONFIG_PATH", pod.join("config.json"))
        .env("TMPDIR", pod.join("state/tmp"))
        .env("OPENCLAW_GATEWAY_PORT", port.to_string())
        .env("CI", "true")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run openclaw agent");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll openclaw agent") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("openclaw agent did not finish within 180 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = reader.join().expect("the reader thread");
    assert!(status.success(), "openclaw agent failed: {text}");
    let reply: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(reply["status"], "ok", "{reply}");
    reply["result"]["meta"]["agentMeta"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no session id in {reply}"))
        .to_owned()
}

/// The gateway process of an agent's current pod: the last one its supervisor spawned.
fn gateway_pid(served: &Served, view: &Value) -> u32 {
    let events = std::fs::read_to_string(served.pod_dir(view).join("events.jsonl"))
        .expect("the pod's events");
    events
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["event"]["event"] == "spawned")
        .filter_map(|e| e["event"]["pid"].as_u64())
        .next_back()
        .expect("a spawned gateway") as u32
}

/// Gateway processes (they retitle themselves `openclaw-gateway`) in this daemon's pods.
fn gateways(served: &Served) -> Vec<u32> {
    served
        .pod_processes()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with("openclaw-gateway"))
        })
        .collect()
}

/// A rendered config less what each instance gets afresh: its token, port and pod's paths.
fn without_instance_values(text: &str) -> Value {
    let mut config: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    config["gateway"]["auth"]["token"] = Value::Null;
    config["gateway"]["port"] = Value::Null;
    config["logging"]["file"] = Value::Null;
    config
}

fn tree_contains(root: &Path, needle: &[u8]) -> bool {
    let mut stack: Vec<PathBuf> = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                return true;
            }
        }
    }
    false
}

/// A local stand-in for an OpenAI-compatible LLM API: `GET /v1/models`, and
/// `POST /v1/chat/completions` answered as a server-sent event stream.
pub(crate) struct MockLlm {
    pub(crate) port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl MockLlm {
    pub(crate) fn start() -> MockLlm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mock LLM");
        let port = listener.local_addr().expect("its address").port();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counter = counter.clone();
                std::thread::spawn(move || serve_llm(stream, &counter));
            }
        });
        MockLlm { port, requests }
    }

    fn requests(&self) -> u32 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn serve_llm(stream: TcpStream, counter: &std::sync::atomic::AtomicU32) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (content_type, payload) = if request_line.starts_with("GET") {
            (
                "application/json",
                json!({"object": "list", "data": [{"id": "mock-1", "object": "model"}]})
                    .to_string(),
            )
        } else {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let chunk = |delta: Value, finish: Value| {
                format!(
                    "data: {}\n\n",
                    json!({"id": "c1", "object": "chat.completion.chunk", "created": 0,
                           "model": "mock-1",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                )
            };
            (
                "text/event-stream",
                chunk(json!({"role": "assistant", "content": "pong"}), Value::Null)
                    + &chunk(json!({}), json!("stop"))
                    + "data: [DONE]\n\n",
            )
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{payload}",
            payload.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A warm pool of one real OpenClaw gateway: the standby boots on a config without the LLM
/// provider; a new agent adopts it — its config, with its own token, the mock provider and
/// the default model, is hot-applied by the running gateway — and completes a real agent turn
/// without the gateway ever restarting. The pool refills, and a daemon killed with SIGKILL
/// comes back to the same agents and the same standby.
#[test]
fn an_openclaw_standby_is_adopted_by_hot_reload_and_survives_a_daemon_kill() {
    let (openclaw, node_bin) = crate::supervise::openclaw();
    let scratch = Scratch::new("serve-openclaw-warm");
    let mock = MockLlm::start();
    let ports = crate::ports::WARM;
    ports.assert_free();
    let pods = format!("{}{PODS}", ports.pods_table());
    let body = |name: &str| gateway(name, &openclaw, &node_bin, mock.port);
    let mut template = body("template");
    let object = template.as_object_mut().expect("an object");
    for key in ["name", "memory_request"] {
        object.remove(key);
    }
    object.insert(
        "adopt_probe".into(),
        json!("http://127.0.0.1:{port}/tools/invoke"),
    );
    let config = object["config"].as_object_mut().expect("a config");
    config["models"]
        .as_object_mut()
        .expect("models")
        .remove("providers");
    config["agents"]["defaults"]
        .as_object_mut()
        .expect("agent defaults")
        .remove("model");
    let template_file = scratch.file("warm.json", &template.to_string());
    let policy = format!(
        "{POLICY}\n[policy.placement]\nwarm_pool_per_node = 1\n\n[warm_pool]\ntemplate_file = \"{}\"\n",
        template_file.display()
    );
    let mut served = Served::start_with(&scratch, ports.api, &pods, &policy);

    let began = Instant::now();
    served.api("POST", "/v1/agents", Some(&body("claw-1")));
    served.wait_agent("claw-1", BOOT, "running", |v| v["status"] == "running");
    let cold = began.elapsed();
    wait_standbys(&served, 1, BOOT);
    let standby = standby_gateway(&served);

    let began = Instant::now();
    served.api("POST", "/v1/agents", Some(&body("claw-2")));
    let view = served.wait_agent("claw-2", BOOT, "running", |v| v["status"] == "running");
    let warm = began.elapsed();
    eprintln!("OpenClaw provisioning: cold {cold:?}, warm {warm:?}");
    assert!(
        warm < cold / 2,
        "adopted, not booted: warm {warm:?}, cold {cold:?}"
    );
    assert_eq!(
        gateway_pid(&served, &view),
        standby,
        "the standby's gateway process itself"
    );
    let pod = served.pod_dir(&view);
    let text = std::fs::read_to_string(pod.join("config.json")).expect("the config");
    let adopted: Value = serde_json::from_str(&text).expect("json");
    let token = adopted["gateway"]["auth"]["token"]
        .as_str()
        .expect("a token");
    let port = served.port_of("claw-2");
    assert_ne!(invoke_status(port, token), 401, "the agent's token is live");
    assert_eq!(invoke_status(port, "not-the-token"), 401);
    // The provider and model were not in the standby's config: a turn needs them live.
    agent_turn(&served, "claw-2", &openclaw, &node_bin);
    assert!(mock.requests() >= 1, "the turn reached the mock LLM");
    assert_eq!(
        gateway_pid(&served, &served.agent("claw-2")),
        standby,
        "never restarted"
    );

    wait_standbys(&served, 1, BOOT);
    let refill = standby_gateway(&served);
    assert_eq!(gateways(&served).len(), 3, "two agents and one standby");

    served.kill_daemon();
    served.launch();
    for name in ["claw-1", "claw-2"] {
        served.wait_agent(name, BOOT, "running", |v| {
            v["status"] == "running" && v["instance"] == 1
        });
    }
    wait_standbys(&served, 1, BOOT);
    assert_eq!(standby_gateway(&served), refill, "the same standby");
    assert_eq!(gateways(&served).len(), 3, "no gateway lost or duplicated");
    assert_eq!(served.api("GET", "/v1/alerts", None)["alerts"], json!([]));
}

fn wait_standbys(served: &Served, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let metrics = served.request("GET", "/metrics", None, None).1;
        let ready = metrics.as_str().and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("carapace_warm_standbys_ready "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        });
        if ready == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} standby ready within {within:?}: {ready:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The gateway of the one standby not adopted yet.
fn standby_gateway(served: &Served) -> u32 {
    let adopted: Vec<PathBuf> = std::fs::read_dir(served.data_dir().join("pods"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|agent| std::fs::read_dir(agent.path()).ok())
        .flatten()
        .flatten()
        .filter_map(|pod| std::fs::read_link(pod.path()).ok())
        .collect();
    let standbys: Vec<u32> = std::fs::read_dir(served.data_dir().join("pods/warm"))
        .expect("standbys")
        .flatten()
        .filter(|slot| !adopted.contains(&slot.path()))
        .filter_map(|slot| {
            let events = std::fs::read_to_string(slot.path().join("events.jsonl")).ok()?;
            events
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|e| e["event"]["event"] == "spawned")
                .filter_map(|e| e["event"]["pid"].as_u64())
                .next_back()
                .map(|pid| pid as u32)
        })
        .collect();
    assert_eq!(standbys.len(), 1, "one standby: {standbys:?}");
    standbys[0]
}

/// `POST /tools/invoke` of a tool that does not exist, with a bearer token: the status
/// (401 for a token the gateway does not take, 404 for one it does).
fn invoke_status(port: u16, token: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    agent
        .post(&format!("http://127.0.0.1:{port}/tools/invoke"))
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(json!({"tool": "no-such-tool", "args": {}}))
        .expect("POST /tools/invoke")
        .status()
        .as_u16()
}
