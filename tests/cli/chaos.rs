//! `carapace chaos` against a real `carapace serve`: each fault class injected into a real
//! pod, measured with the simulator's definitions, written as incidents.csv and metrics.json.

use crate::common::{Scratch, carapace};
use crate::serve::Served;
use serde_json::{Value, json};

fn chaos(served: &Served, agent: &str, fault: &str, out: &std::path::Path) -> crate::common::Run {
    let data = served.data_dir().display().to_string();
    let out = out.display().to_string();
    let config = served.config_file().display().to_string();
    carapace([
        "chaos",
        "--restart-with",
        &config,
        "--data",
        &data,
        "--agent",
        agent,
        "--fault",
        fault,
        "--settle",
        "200ms",
        "--timeout",
        "60s",
        "--spike-bytes",
        "300000000",
        "--client-interval",
        "100ms",
        "--out",
        &out,
    ])
}

fn metrics(out: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("metrics.json")).expect("metrics.json"))
        .expect("metrics.json is JSON")
}

#[test]
fn every_fault_class_is_injected_for_real_and_resolved_by_the_rung_it_calls_for() {
    let scratch = Scratch::new("chaos");
    let served = Served::start(&scratch);
    // One agent per fault: a fault right after another would count as a relapse.
    let faults = [
        ("kill", 1, "crash"),
        ("hang", 2, "hang"),
        ("kill-supervisor", 2, "crash"),
        ("truncate-config", 3, "config_corruption"),
        // Last: the daemon it restarts is no longer the harness's child.
        ("kill-daemon", 2, "crash"),
    ];
    for (fault, _, _) in faults {
        served.api(
            "POST",
            "/v1/agents",
            Some(&served.agent_body(fault, json!({}))),
        );
    }
    served.api(
        "POST",
        "/v1/agents",
        Some(&served.agent_body("spike", json!({"memory_limit": "128MiB"}))),
    );
    for (fault, rung, fault_name) in faults {
        served.wait_running(fault, 1);
        let out = scratch.path().join(format!("out-{fault}"));
        let run = chaos(&served, fault, fault, &out);
        assert_eq!(run.code, Some(0), "{fault}: {run:?}");
        let m = metrics(&out);
        assert_eq!(m["fault"], fault_name, "{m}");
        assert_eq!(m["incidents"], 1, "{fault}: {m}");
        let mut ladder = [0u64; 4];
        ladder[rung - 1] = 1;
        assert_eq!(
            m["ladder"],
            json!(ladder),
            "{fault} is resolved by rung {rung}: {m}"
        );
        assert!(m["detection_ms"]["count"] == 1, "{fault}: detected: {m}");
        let recovery = m["recovery_ms"]["max"].as_u64().unwrap();
        assert!(recovery > 0 && recovery < 60_000, "{fault}: {m}");
        let csv = std::fs::read_to_string(out.join("incidents.csv")).expect("incidents.csv");
        assert!(
            csv.starts_with("agent,class,fault,start_ms,detection_ms,recovery_ms,rung,noticed"),
            "the simulator's incident columns: {csv}"
        );
        assert_eq!(csv.lines().count(), 2, "{csv}");
    }
    // A spike in the pod's cgroup: the kernel kills the spiking process, not the agent.
    served.wait_running("spike", 1);
    let out = scratch.path().join("out-spike");
    let run = chaos(&served, "spike", "spike", &out);
    assert_eq!(run.code, Some(0), "{run:?}");
    let m = metrics(&out);
    assert_eq!(m["absorbed"], 1, "{m}");
    assert_eq!(m["incidents"], 0, "{m}");
}

#[test]
fn chaos_without_a_daemon_is_bad_input() {
    let scratch = Scratch::new("chaos-nodaemon");
    let data = scratch.path().display().to_string();
    let run = carapace(["chaos", "--data", &data, "--agent", "x", "--fault", "kill"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("serve.json"), "{}", run.stderr);
}
