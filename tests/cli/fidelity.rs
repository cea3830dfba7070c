//! `carapace fidelity`: one fault schedule on a real `carapace serve` and in the simulator with
//! the latencies fitted to the real run; the rung per fault must agree.

use crate::common::{Scratch, carapace};
use crate::serve::Served;
use serde_json::Value;
use std::path::Path;

/// A fidelity file for `agents` test agents through `faults` (TOML `[[fault]]` tables).
fn spec(scratch: &Scratch, served: &Served, agents: u32, faults: &str) -> std::path::PathBuf {
    let body = served.agent_body("fid", serde_json::json!({}));
    let words = |value: &Value| {
        value
            .as_array()
            .expect("a list of words")
            .iter()
            .map(|w| format!("{w}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    scratch.file(
        "fidelity.toml",
        &format!(
            "agents = {agents}\nsettle = \"200ms\"\ntimeout = \"60s\"\n\n\
             [client]\ninterval = \"100ms\"\n\n\
             [sim]\nseeds = 5\n\n\
             [agent]\nname = \"fid\"\nmemory_limit = \"256MiB\"\n\
             command = [{}]\nprobe = {}\nvalidate = [{}]\n\
             config = {{ port = 1, boot_ms = 200, greeting = \"v1\" }}\n\n{faults}",
            words(&body["command"]),
            body["probe"],
            words(&body["validate"]),
        ),
    )
}

fn report(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("fidelity.json")).expect("fidelity.json"))
        .expect("fidelity.json is JSON")
}

#[test]
fn every_fault_is_resolved_by_the_same_rung_for_real_and_in_the_simulator() {
    let scratch = Scratch::new("fidelity");
    let served = Served::start(&scratch);
    let spec = spec(
        &scratch,
        &served,
        2,
        "[[fault]]\nkind = \"kill\"\nrepeat = 3\n\n[[fault]]\nkind = \"hang\"\n\n\
         [[fault]]\nkind = \"truncate-config\"\n",
    );
    let out = scratch.path().join("report");
    let config = served.config_file().display().to_string();
    let run = carapace([
        "fidelity",
        &spec.display().to_string(),
        "--config",
        &config,
        "--out",
        &out.display().to_string(),
    ]);
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
    ];
    assert_eq!(
        real,
        expected.map(|(f, r)| (f.to_owned(), r)),
        "{}",
        run.stdout
    );
    for round in rounds {
        assert_eq!(
            round["same_rung"], true,
            "the simulator chose another rung: {round}\n{}",
            run.stdout
        );
    }
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    // Provisioning of both agents was measured on both sides.
    let provisioning = report["distributions"]
        .as_array()
        .expect("distributions")
        .iter()
        .find(|d| d["measure"] == "provisioning")
        .expect("a provisioning row")
        .clone();
    assert_eq!(provisioning["real_n"], 2, "{provisioning}");
    assert_eq!(
        provisioning["sim_n"], 10,
        "two agents × five seeds: {provisioning}"
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
    // The simulated side is a scenario `carapace sim` accepts as it is.
    let validated = carapace(["validate", &out.join("scenario.toml").display().to_string()]);
    assert_eq!(validated.code, Some(0), "{}", validated.stderr);
    // The agents fidelity created are gone again.
    assert_eq!(
        served.api("GET", "/v1/agents", None)["agents"],
        serde_json::json!([])
    );
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
