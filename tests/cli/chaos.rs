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

#[test]
fn chaos_runs_calibrate_the_simulators_latency_model_into_a_valid_scenario() {
    let scratch = Scratch::new("calibrate");
    // Kills in quick succession are restarts in place, not a crash loop: an exit counts as
    // "early" only within 300 ms of readiness here.
    let ports = crate::serve::port_block();
    let pods = crate::serve::test_pods(ports);
    let policy = crate::serve::TEST_POLICY.replace(
        "[policy.supervisor]\n",
        "[policy.supervisor]\nearly_exit_ms = 300\n",
    );
    assert!(policy.contains("early_exit_ms"), "{policy}");
    let served = Served::start_with(&scratch, ports, &pods, &policy);
    for name in ["crashy", "hangy"] {
        served.api(
            "POST",
            "/v1/agents",
            Some(&served.agent_body(name, json!({}))),
        );
        served.wait_running(name, 1);
    }
    let data = served.data_dir().display().to_string();
    let mut dirs = Vec::new();
    for (agent, fault, repeat) in [("crashy", "kill", "4"), ("hangy", "hang", "3")] {
        let out = scratch.path().join(format!("run-{fault}"));
        let run = carapace([
            "chaos",
            "--data",
            &data,
            "--agent",
            agent,
            "--fault",
            fault,
            "--repeat",
            repeat,
            "--settle",
            "200ms",
            "--timeout",
            "60s",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(run.code, Some(0), "{run:?}");
        let latencies = std::fs::read_to_string(out.join("latencies.csv")).expect("latencies.csv");
        assert!(latencies.starts_with("phase,ms\n"), "{latencies}");
        dirs.push(out.display().to_string());
    }
    let fragment = scratch.path().join("latency.toml");
    let mut args = vec!["calibrate".to_owned()];
    args.extend(dirs.iter().cloned());
    args.extend(["--out".to_owned(), fragment.display().to_string()]);
    let run = carapace(&args);
    assert_eq!(run.code, Some(0), "{run:?}");
    let text = std::fs::read_to_string(&fragment).expect("the fragment");
    let parsed: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let latency = parsed["latency"].as_table().expect("a [latency] table");
    // The hang rounds' stops are a hung agent's (it does not act on SIGTERM): kept apart from
    // `stop`, as `stop_hung`, so they do not stretch every other stop's fit.
    let hung_stops = std::fs::read_to_string(scratch.path().join("run-hang/latencies.csv"))
        .expect("the hang run's latencies")
        .lines()
        .filter(|line| line.starts_with("stop_hung,"))
        .count();
    assert!(hung_stops >= 3, "{hung_stops} hung stops: {text}");
    assert!(text.contains("hung_stop_grace"), "{text}");
    for field in ["boot_after_crash", "boot", "validate"] {
        let fitted = latency
            .get(field)
            .unwrap_or_else(|| panic!("{field} fitted: {text}"));
        // A log-normal, or the observed deciles where it fits badly (a boot seen at one of
        // two probe ticks), said so in the comment.
        match fitted["kind"].as_str() {
            Some("log_normal") => {}
            Some("deciles") => assert!(text.contains("fits badly"), "{text}"),
            other => panic!("{field} fitted as {other:?}: {text}"),
        }
    }
    assert!(text.contains("KS distance"), "{text}");
    // The fragment is a scenario's: the simulator takes it as it is.
    let scenario = scratch.file(
        "calibrated.toml",
        &(crate::common::smoke_text() + "\n" + &text),
    );
    let run = carapace(["validate", scenario.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let missing = scratch.path().join("nothing-here").display().to_string();
    assert_eq!(carapace(["calibrate", &missing]).code, Some(2));
}
