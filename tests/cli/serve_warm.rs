//! `carapace serve` with a warm pool on real processes: standby pods of the test agent booted
//! ahead of need, adopted by new agents through a config reload (no restart), the pool
//! refilled, and the standbys re-adopted by a daemon restarted after kill -9.

use crate::common::Scratch;
use crate::serve::{Served, TEST_POLICY, port_block, test_agent, test_pods};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// A boot long enough to tell an adoption (a config reload, milliseconds) from a cold start.
const BOOT_MS: u64 = 3_000;

/// The warm pool's template: the test agent's launch as `agent_body` declares it.
fn template(bin: &Path, boot_ms: u64) -> Value {
    let bin = bin.display().to_string();
    json!({
        "command": [bin, "--state", "{state}", "--config", "{config}", "--port", "{port}"],
        "probe": "http://127.0.0.1:{port}/readyz",
        "validate": [bin, "--validate", "--config", "{config}"],
        "config": {"port": 1, "boot_ms": boot_ms, "greeting": "standby"},
        "memory_limit": "256MiB",
        "adopt_probe": "http://127.0.0.1:{port}/auth"
    })
}

/// An agent that fits the template: its config carries its own token and greeting.
fn fitting(served: &Served, name: &str) -> Value {
    served.agent_body(
        name,
        json!({"config": {"port": 1, "boot_ms": BOOT_MS, "greeting": format!("hello from {name}"),
                          "token": "{token}"}}),
    )
}

fn warm_daemon(scratch: &Scratch, boot_ms: u64, policy: &str) -> Served {
    let template_file = scratch.file(
        "warm.json",
        &serde_json::to_string_pretty(&template(&test_agent(), boot_ms)).expect("json"),
    );
    let ports = port_block();
    let policy = format!(
        "{policy}\n[policy.placement]\nwarm_pool_per_node = 1\nwarm_instance_bytes = 268435456\n\n\
         [warm_pool]\ntemplate_file = \"{}\"\n",
        template_file.display()
    );
    Served::start_with(scratch, ports, &test_pods(ports), &policy)
}

fn standbys_ready(served: &Served) -> u64 {
    let metrics = served.request("GET", "/metrics", None, None).1;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("carapace_warm_standbys_ready "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no carapace_warm_standbys_ready in {text}"))
}

fn wait_standbys(served: &Served, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    while standbys_ready(served) != n {
        assert!(
            Instant::now() < deadline,
            "not {n} standby ready within {within:?}; events {:?}",
            served.events()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The standby pods on disk, by slot, with their agent's pid (the last one spawned).
fn standby_pids(served: &Served) -> Vec<(String, u64)> {
    let warm = served.data_dir().join("pods/warm");
    let mut found: Vec<(String, u64)> = std::fs::read_dir(warm)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|slot| {
            let events = std::fs::read_to_string(slot.path().join("events.jsonl")).ok()?;
            let pid = events
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|e| e["event"]["event"] == "spawned")
                .filter_map(|e| e["event"]["pid"].as_u64())
                .next_back()?;
            Some((slot.file_name().to_string_lossy().into_owned(), pid))
        })
        .collect();
    found.sort();
    found
}

/// POST → running, timed by the client.
fn create_timed(served: &Served, body: &Value) -> Duration {
    let name = body["name"].as_str().expect("a name").to_owned();
    let began = Instant::now();
    served.api("POST", "/v1/agents", Some(body));
    served.wait_agent(&name, Duration::from_secs(60), "running", |v| {
        v["status"] == "running" && v["instance"] == 1
    });
    began.elapsed()
}

#[test]
fn a_warm_pool_standby_is_adopted_by_a_new_agent_refilled_and_kept_across_a_daemon_kill() {
    let scratch = Scratch::new("serve-warm");
    let mut served = warm_daemon(&scratch, BOOT_MS, TEST_POLICY);
    assert_eq!(
        standbys_ready(&served),
        0,
        "nothing warms before the fleet's runtime is known"
    );

    // The first agent tells the engine the fleet's runtime: it boots cold, the pool fills.
    let cold = create_timed(&served, &fitting(&served, "first"));
    assert!(
        cold >= Duration::from_millis(BOOT_MS),
        "a cold start waits for the boot: {cold:?}"
    );
    wait_standbys(&served, 1, Duration::from_secs(30));
    let before = standby_pids(&served);
    assert_eq!(before.len(), 1, "one standby: {before:?}");

    // A new agent adopts the standby: same process, its own config live, no boot waited.
    let warm = create_timed(&served, &fitting(&served, "second"));
    eprintln!("provisioning: cold {cold:?}, warm {warm:?}");
    assert!(
        warm < Duration::from_millis(BOOT_MS / 2),
        "adopted, not booted: {warm:?}"
    );
    let view = served.agent("second");
    let pod = served.pod_dir(&view);
    let target = std::fs::read_link(&pod).expect("an adopted pod links to its standby");
    assert!(
        target.ends_with(format!("warm/{}", before[0].0)),
        "{target:?}"
    );
    let state = served.agent_call("second", "GET", "/state");
    assert_eq!(state["greeting"], "hello from second", "{state}");
    assert_eq!(state["pid"], before[0].1, "the standby's process itself");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(pod.join("config.json")).expect("config"))
            .expect("json");
    let token = config["token"]
        .as_str()
        .expect("a rendered token")
        .to_owned();
    assert_eq!(
        auth(served.port_of("second"), &token),
        200,
        "the agent's token is live"
    );
    assert_eq!(auth(served.port_of("second"), "wrong"), 401);

    // Refilled: a new standby in a new slot; two agents and one standby, nothing more.
    wait_standbys(&served, 1, Duration::from_secs(30));
    let refilled = standby_pids(&served);
    assert_eq!(
        refilled.len(),
        2,
        "the adopted standby and its refill: {refilled:?}"
    );
    assert_eq!(served.agent_processes().len(), 3, "two agents, one standby");

    // kill -9 the daemon: the restarted one re-adopts the agents and the standby as they run.
    served.kill_daemon();
    served.launch();
    for name in ["first", "second"] {
        served.wait_running(name, 1);
    }
    wait_standbys(&served, 1, Duration::from_secs(30));
    assert_eq!(
        standby_pids(&served),
        refilled,
        "the same standby, not a new one"
    );
    assert_eq!(
        served.agent_processes().len(),
        3,
        "no duplicate after the restart"
    );

    // The re-adopted standby serves the next agent; an agent that does not fit the
    // template (another environment) starts cold and leaves the standby alone.
    let third = create_timed(&served, &fitting(&served, "third"));
    assert!(
        third < Duration::from_millis(BOOT_MS / 2),
        "adopted: {third:?}"
    );
    wait_standbys(&served, 1, Duration::from_secs(30));
    let mut other = fitting(&served, "other");
    other["env"] = json!({"SOMETHING": "else"});
    let spare = standby_pids(&served);
    let cold_again = create_timed(&served, &other);
    assert!(
        cold_again >= Duration::from_millis(BOOT_MS),
        "cold: {cold_again:?}"
    );
    assert_eq!(
        standby_pids(&served),
        spare,
        "the standby stays for a fitting agent"
    );
    wait_standbys(&served, 1, Duration::from_secs(30));
    assert_eq!(
        served.agent_processes().len(),
        5,
        "four agents, one standby"
    );

    // Removing an adopted agent removes its pod: the link and the standby's directory.
    served.api("DELETE", "/v1/agents/second", None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod.symlink_metadata().is_ok() || target.exists() {
        assert!(Instant::now() < deadline, "the adopted pod is still there");
        std::thread::sleep(Duration::from_millis(50));
    }
    let live = served.agent_processes().len();
    assert_eq!(live, 4, "three agents and one standby");
    assert_eq!(served.api("GET", "/v1/alerts", None)["alerts"], json!([]));
}

/// A standby killed while it waits is restarted in place by its supervisor; a create meanwhile
/// starts cold, and the refill it causes is served by that standby once it is back: the pool
/// does not grow past its size.
#[test]
fn a_create_while_the_standby_restarts_starts_cold_and_the_pool_stays_one() {
    let scratch = Scratch::new("serve-warm-restarting");
    let served = warm_daemon(&scratch, BOOT_MS, TEST_POLICY);
    served.api("POST", "/v1/agents", Some(&fitting(&served, "first")));
    served.wait_running("first", 1);
    wait_standbys(&served, 1, Duration::from_secs(30));
    let standby = standby_pids(&served);
    assert_eq!(standby.len(), 1, "{standby:?}");
    crate::serve::signal(standby[0].1 as u32, nix::sys::signal::Signal::SIGKILL);
    wait_standbys(&served, 0, Duration::from_secs(10));
    let cold = create_timed(&served, &fitting(&served, "meanwhile"));
    assert!(
        cold >= Duration::from_millis(BOOT_MS),
        "no standby was ready: {cold:?}"
    );
    wait_standbys(&served, 1, Duration::from_secs(30));
    let after = standby_pids(&served);
    assert_eq!(
        after.len(),
        1,
        "the restarted standby, and no second one: {after:?}"
    );
    assert_eq!(after[0].0, standby[0].0, "the same slot");
    assert_ne!(after[0].1, standby[0].1, "restarted in place");
    assert_eq!(served.agent_processes().len(), 3, "two agents, one standby");
}

/// A standby booted from a template that changed while the daemon was down is not adopted:
/// the restarted daemon discards it, the next create starts cold, and the pool refills from
/// the new template.
#[test]
fn a_standby_of_a_changed_template_is_discarded_not_adopted() {
    let scratch = Scratch::new("serve-warm-template-changed");
    let mut served = warm_daemon(&scratch, 300, TEST_POLICY);
    served.api(
        "POST",
        "/v1/agents",
        Some(&fitting_boot(&served, "first", 300)),
    );
    served.wait_running("first", 1);
    wait_standbys(&served, 1, Duration::from_secs(30));
    let old = standby_pids(&served);
    served.kill_daemon();
    let mut changed = template(&test_agent(), 300);
    changed["config"]["greeting"] = json!("standby, second edition");
    scratch.file("warm.json", &changed.to_string());
    served.launch();
    served.wait_running("first", 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::serve::alive(old[0].1 as u32) || !standby_pids(&served).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the stale standby is still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(standbys_ready(&served), 0, "nothing adoptable left");
    let cold = create_timed(&served, &fitting_boot(&served, "second", 300));
    assert!(cold >= Duration::from_millis(300), "cold: {cold:?}");
    wait_standbys(&served, 1, Duration::from_secs(30));
    let new = standby_pids(&served);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_ne!(new[0], old[0]);
    let config = std::fs::read_to_string(
        served
            .data_dir()
            .join("pods/warm")
            .join(&new[0].0)
            .join("config.json"),
    )
    .expect("the new standby's config");
    assert!(config.contains("second edition"), "{config}");
    assert_eq!(served.agent_processes().len(), 3, "two agents, one standby");
}

/// A config the running agent refuses to reload (a wrong type) never makes the adopted
/// standby ready: its new token is never accepted, the start deadline passes, and the cold
/// instance that replaces it is refused by the validator (rung 3), never run.
#[test]
fn an_adopted_config_the_agent_refuses_is_never_reported_ready() {
    let scratch = Scratch::new("serve-warm-refused-config");
    let policy = TEST_POLICY.replace("start_deadline_ms = 30000", "start_deadline_ms = 2000");
    let served = warm_daemon(&scratch, 300, &policy);
    served.api(
        "POST",
        "/v1/agents",
        Some(&fitting_boot(&served, "first", 300)),
    );
    served.wait_running("first", 1);
    wait_standbys(&served, 1, Duration::from_secs(30));
    let mut broken = fitting_boot(&served, "broken", 300);
    broken["config"]["greeting"] = json!(5);
    served.api("POST", "/v1/agents", Some(&broken));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = served.agent("broken");
        assert_ne!(view["status"], "running", "a refused config runs: {view}");
        let events = served.api("GET", "/v1/events", None)["events"].clone();
        let rejected = events
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["agent"] == "broken" && e["event"] == "config_rejected");
        if rejected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no config_rejected for broken: {events}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = served.api("GET", "/v1/events", None)["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["agent"] == "broken" && e["event"] == "ready")
        .count();
    assert_eq!(ready, 0, "never ready");
}

fn fitting_boot(served: &Served, name: &str, boot_ms: u64) -> Value {
    served.agent_body(
        name,
        json!({"config": {"port": 1, "boot_ms": boot_ms, "greeting": format!("hello from {name}"),
                          "token": "{token}"}}),
    )
}

/// `GET /auth` with a bearer token: the status.
fn auth(port: u16, token: &str) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent
        .get(&format!("http://127.0.0.1:{port}/auth"))
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .expect("GET /auth")
        .status()
        .as_u16()
}

#[test]
fn a_warm_pool_without_a_usable_template_is_refused_naming_the_field() {
    let scratch = Scratch::new("serve-warm-refused");
    let mut per_agent = template(&test_agent(), BOOT_MS);
    per_agent["env"] = json!({"TOKEN": "{token}"});
    let mut no_probe = template(&test_agent(), BOOT_MS);
    no_probe
        .as_object_mut()
        .expect("an object")
        .remove("adopt_probe");
    let cases = [
        ("", "policy.placement.warm_pool_per_node"),
        (
            "[warm_pool]\ntemplate_file = \"missing.json\"\n",
            "warm_pool.template_file",
        ),
        (
            "[warm_pool]\ntemplate_file = \"per-agent.json\"\n",
            "`{token}` differs",
        ),
        (
            "[warm_pool]\ntemplate_file = \"no-probe.json\"\n",
            "adopt_probe",
        ),
    ];
    scratch.file("per-agent.json", &per_agent.to_string());
    scratch.file("no-probe.json", &no_probe.to_string());
    for (table, named) in cases {
        let config = scratch.file(
            "carapace.toml",
            &format!("data_dir = \"data\"\n[policy.placement]\nwarm_pool_per_node = 1\n{table}"),
        );
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_carapace"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .expect("run carapace serve");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(named), "{named}: {stderr}");
        assert!(!scratch.path().join("data").exists(), "nothing created");
    }
}
