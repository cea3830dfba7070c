//! `carapace fidelity`: one fault schedule on a real `carapace serve` and in the simulator with
//! the latencies fitted to the real run; the rung per fault must agree.

use crate::common::{Scratch, carapace};
use crate::serve::Served;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// A fidelity file: `agents` agents made from `body` (an API create body), put through
/// `faults` (`[[fault]]` tables as JSON), with `timing` (settle, timeout, client, sim).
fn spec(scratch: &Scratch, agents: u32, body: Value, faults: Value, timing: Value) -> PathBuf {
    let mut spec = json!({ "agents": agents, "agent": body, "fault": faults });
    for (key, value) in timing.as_object().expect("timing is an object") {
        spec[key] = value.clone();
    }
    scratch.file(
        "fidelity.toml",
        &toml::to_string(&spec).expect("a fidelity file serialises as TOML"),
    )
}

fn fidelity(spec: &Path, served: &Served, out: &Path) -> crate::common::Run {
    carapace([
        "fidelity",
        &spec.display().to_string(),
        "--config",
        &served.config_file().display().to_string(),
        "--out",
        &out.display().to_string(),
    ])
}

/// Every round the simulator resolved by another rung than the real daemon did.
fn different_rungs(report: &Value) -> Vec<Value> {
    report["rounds"]
        .as_array()
        .expect("rounds")
        .iter()
        .filter(|r| r["same_rung"] != true)
        .cloned()
        .collect()
}

fn report(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("fidelity.json")).expect("fidelity.json"))
        .expect("fidelity.json is JSON")
}

#[test]
fn every_fault_is_resolved_by_the_same_rung_for_real_and_in_the_simulator() {
    let scratch = Scratch::new("fidelity");
    let served = Served::start(&scratch);
    let body = served.agent_body("fid", json!({}));
    let faults = json!([
        {"kind": "kill", "repeat": 3},
        {"kind": "hang"},
        {"kind": "truncate-config"},
        {"kind": "kill-supervisor"},
    ]);
    let timing = json!({"settle": "200ms", "timeout": "60s", "client": {"interval": "100ms"}, "sim": {"seeds": 5}, "recreates": 3});
    let spec = spec(&scratch, 2, body, faults, timing);
    let out = scratch.path().join("report");
    let run = fidelity(&spec, &served, &out);
    let report = report(&out);
    let rounds = report["rounds"].as_array().expect("rounds");
    let real: Vec<(String, u64)> = rounds
        .iter()
        .map(|r| {
            (
                r["fault"].as_str().unwrap_or("").to_owned(),
                r["real_rung"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // The real ladder itself: what the engine does with each cause. The third round kills
    // agent 0 again seconds after its restart: an early exit after a restart is a crash loop.
    let expected = [
        ("kill", 1),
        ("kill", 1),
        ("kill", 3),
        ("hang", 2),
        ("truncate-config", 3),
        ("kill-supervisor", 2),
    ];
    assert_eq!(
        real,
        expected.map(|(f, r)| (f.to_owned(), r)),
        "{}",
        run.stdout
    );
    assert_eq!(
        different_rungs(&report),
        Vec::<Value>::new(),
        "the simulator chose another rung\n{}",
        run.stdout
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    // Provisioning of both agents and of the three recreates was measured on both sides.
    let provisioning = report["distributions"]
        .as_array()
        .expect("distributions")
        .iter()
        .find(|d| d["measure"] == "provisioning")
        .expect("a provisioning row")
        .clone();
    assert_eq!(provisioning["real_n"], 5, "{provisioning}");
    assert_eq!(
        provisioning["sim_n"], 25,
        "five creates × five seeds: {provisioning}"
    );
    assert_eq!(report["recreated"], 3, "{}", run.stdout);
    // Five real samples say little: the distance one distribution's samples of these sizes
    // exceed one time in twenty is 0.66.
    assert!(
        provisioning["ks_noise"].as_f64().is_some_and(|d| d > 0.6),
        "{provisioning}"
    );
    for file in [
        "summary.md",
        "rounds.csv",
        "cdf-recovery-kill.svg",
        "cdf-provisioning.svg",
        "scenario.toml",
        "schedule.csv",
    ] {
        assert!(out.join(file).exists(), "{file} is missing");
    }
    // The simulated side recreates the agents the real one did (agent 0, 1, then 0 again),
    // and the feed follows each new name.
    let schedule = std::fs::read_to_string(out.join("schedule.csv")).expect("schedule.csv");
    let recreated: Vec<&str> = schedule
        .lines()
        .filter(|l| l.contains(",recreate,"))
        .map(|l| l.split(',').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(recreated, ["0", "1", "0"], "{schedule}");
    let feed = std::fs::read_to_string(out.join("feed.jsonl")).expect("feed.jsonl");
    for name in ["fid-1.2", "fid-2.2", "fid-1.3"] {
        assert!(
            feed.contains(&format!("\"agent\":\"{name}\"")),
            "{name} in the feed"
        );
    }
    // The simulated side is a scenario `carapace sim` accepts as it is.
    let validated = carapace(["validate", &out.join("scenario.toml").display().to_string()]);
    assert_eq!(validated.code, Some(0), "{}", validated.stderr);
    // The agents fidelity created are gone again.
    assert_eq!(served.api("GET", "/v1/agents", None)["agents"], json!([]));
}

#[test]
fn a_bad_fidelity_file_or_a_missing_daemon_is_bad_input() {
    let scratch = Scratch::new("fidelity-bad");
    let file = scratch.file(
        "fidelity.toml",
        "agents = 1\n[agent]\nname = \"x\"\nmemory_limit = \"1GiB\"\ncommand = [\"/bin/true\"]\nprobe = \"tcp://127.0.0.1:{port}\"\n\n[[fault]]\nkind = \"spike\"\n",
    );
    let config = scratch.file("carapace.toml", "data_dir = \"data\"\n");
    let run = carapace([
        "fidelity",
        &file.display().to_string(),
        "--config",
        &config.display().to_string(),
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("fidelity.toml: field `fault[0].kind`"),
        "{}",
        run.stderr
    );
    let file = scratch.file(
        "fidelity.toml",
        "agents = 1\n[agent]\nname = \"x\"\nmemory_limit = \"1GiB\"\ncommand = [\"/bin/true\"]\nprobe = \"tcp://127.0.0.1:{port}\"\n\n[[fault]]\nkind = \"kill\"\n",
    );
    let run = carapace([
        "fidelity",
        &file.display().to_string(),
        "--config",
        &config.display().to_string(),
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("no daemon has run"), "{}", run.stderr);
}

/// The CI fidelity check on real gateways: three OpenClaw gateways, a kill, a hang, a
/// truncated config and a killed supervisor, each resolved by the same rung in the simulator
/// as for real.
#[test]
fn real_openclaw_gateways_and_the_simulator_resolve_every_fault_by_the_same_rung() {
    use crate::serve_openclaw::{BOOT, MockLlm, PODS, POLICY, gateway};
    let (openclaw, node_bin) = crate::supervise::openclaw();
    let scratch = Scratch::new("fidelity-openclaw");
    let mock = MockLlm::start();
    let ports = crate::ports::FIDELITY;
    ports.assert_free();
    let pods = format!("{}{PODS}", ports.pods_table());
    // A gateway booting under load sometimes exits once before it is ready (OpenClaw's own
    // startup deadline) and is restarted in place; a kill within early_exit_ms of that restart
    // is, for real, a crash loop — from a boot the schedule does not hold. Settling past
    // early_exit_ms keeps every round about its own fault.
    let policy = POLICY.replace(
        "hang_probe_failures = 4",
        "hang_probe_failures = 4\nearly_exit_ms = 10000",
    );
    assert_ne!(policy, POLICY, "the policy names hang_probe_failures");
    let served = Served::start_with(&scratch, ports.api, &pods, &policy);
    let faults = json!([
        {"kind": "kill"},
        {"kind": "hang"},
        {"kind": "truncate-config"},
        {"kind": "kill-supervisor"},
    ]);
    let timing = json!({
        "settle": "11s",
        "timeout": format!("{}s", BOOT.as_secs()),
        "sim": {"seeds": 5},
        "recreates": 1,
    });
    let body = gateway("claw", &openclaw, &node_bin, mock.port);
    let spec = spec(&scratch, 3, body, faults, timing);
    let out = scratch.path().join("report");
    let run = fidelity(&spec, &served, &out);
    // The comparison, for `--nocapture` readers: the figures benches/README.md quotes.
    eprintln!("{}", run.stdout);
    let report = report(&out);
    let real: Vec<u64> = report["rounds"]
        .as_array()
        .expect("rounds")
        .iter()
        .map(|r| r["real_rung"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(real, [1, 2, 3, 2], "{}\n{}", run.stdout, run.stderr);
    // A gateway removed and created again is provisioned anew, on both sides.
    assert_eq!(report["recreated"], 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        different_rungs(&report),
        Vec::<Value>::new(),
        "the simulator chose another rung\n{}",
        run.stdout
    );
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
}
