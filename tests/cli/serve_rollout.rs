//! Rollouts through the API, on real test agents: a config change staged in waves until every
//! agent runs it, and a bad one that fails on its first agent and is rolled back, the rest
//! untouched; both as they were after a kill -9 of the daemon.

use crate::common::Scratch;
use crate::serve::Served;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const AGENTS: [&str; 3] = ["r1", "r2", "r3"];

/// Polls a rollout until `done` holds, or fails with its last view and the events.
fn wait_rollout(served: &Served, id: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let view = served.api("GET", &format!("/v1/rollouts/{id}"), None);
        if done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "rollout {id} not {what} within 90 s: {view}; events {}",
            served.api("GET", "/v1/events", None)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `what` of every rollout report in the event feed.
fn rollout_reports(served: &Served) -> Vec<String> {
    served.api("GET", "/v1/events", None)["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "rollout")
        .filter_map(|e| e["what"].as_str().map(str::to_owned))
        .collect()
}

fn running_config(served: &Served, name: &str) -> Value {
    served.agent(name)["running_version"]["config"].clone()
}

#[test]
fn a_rollout_moves_every_agent_wave_by_wave_and_a_failing_one_rolls_back() {
    let scratch = Scratch::new("serve-rollout");
    let mut served = Served::start(&scratch);
    for name in AGENTS {
        served.create_running(name);
    }

    // A good change, one agent at a time.
    let (status, started) = served.request(
        "POST",
        "/v1/rollouts",
        Some(&json!({"agents": AGENTS, "wave_size": 1, "config_patch": {"greeting": "v2"}})),
        None,
    );
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["config_version"], 2, "{started}");
    let id = started["id"].as_u64().expect("an id");
    // Mid-rollout, its agents take no other change.
    let (status, refused) = served.request(
        "PUT",
        "/v1/agents/r3",
        Some(&served.agent_body("r3", json!({"config": {"port": 1, "greeting": "x"}}))),
        None,
    );
    assert_eq!(status, 409, "{refused}");
    let (status, refused) = served.request(
        "POST",
        "/v1/rollouts",
        Some(&json!({"agents": ["r3"], "config_patch": {"greeting": "x"}})),
        None,
    );
    assert_eq!(status, 409, "{refused}");
    let done = wait_rollout(&served, id, "completed", |v| v["state"] == "completed");
    assert_eq!(done["failed_agent"], Value::Null, "{done}");
    let waves = rollout_reports(&served)
        .iter()
        .filter(|w| w.starts_with(&format!("rollout-{id}: wave")))
        .count();
    assert_eq!(
        waves,
        3,
        "one wave per agent: {:?}",
        rollout_reports(&served)
    );
    for name in AGENTS {
        let view = served.wait_agent(name, Duration::from_secs(30), "on config 2", |v| {
            v["status"] == "running" && v["running_version"]["config"] == 2
        });
        assert_eq!(view["version"]["config"], 2, "{view}");
        assert_eq!(
            served.agent_call(name, "GET", "/state")["greeting"],
            "v2",
            "{name} runs the patched config"
        );
    }

    // A bad change: the agents' strict config refuses an unknown key, so the first wave's agent
    // fails to start on it; every changed agent goes back, and the others are never touched.
    let instances: Vec<Value> = AGENTS
        .iter()
        .map(|n| served.agent(n)["instance"].clone())
        .collect();
    let (status, bad) = served.request(
        "POST",
        "/v1/rollouts",
        Some(&json!({"agents": AGENTS, "config_patch": {"no_such_key": true}})),
        None,
    );
    assert_eq!(status, 201, "{bad}");
    assert_eq!(bad["config_version"], 3, "{bad}");
    let bad_id = bad["id"].as_u64().expect("an id");
    let rolled = wait_rollout(&served, bad_id, "rolled back", |v| {
        v["state"] == "rolled_back"
    });
    assert_eq!(rolled["failed_agent"], "r1", "{rolled}");
    let r1 = served.wait_agent("r1", Duration::from_secs(60), "back on config 2", |v| {
        v["status"] == "running" && v["running_version"]["config"] == 2
    });
    assert_eq!(
        r1["version"]["config"], 2,
        "the record follows the rollback: {r1}"
    );
    assert_eq!(served.agent_call("r1", "GET", "/state")["greeting"], "v2");
    for (name, instance) in AGENTS.iter().zip(&instances).skip(1) {
        let view = served.agent(name);
        assert_eq!(
            &view["instance"], instance,
            "{name} was never changed: {view}"
        );
        assert_eq!(running_config(&served, name), 2, "{view}");
    }

    // After a kill -9 the daemon knows both rollouts as they ended, and the next change of r1
    // takes a version past the rolled-back one.
    served.kill_daemon();
    served.launch();
    let listed = served.api("GET", "/v1/rollouts", None);
    let states: Vec<(u64, &str)> = listed["rollouts"]
        .as_array()
        .expect("rollouts")
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        vec![(bad_id, "rolled_back"), (id, "completed")],
        "{listed}"
    );
    assert_eq!(served.agent("r1")["version"]["config"], 2);
    let mut changed = served.agent_body("r1", json!({}));
    changed["config"]["greeting"] = json!("v4");
    let view = served.api("PUT", "/v1/agents/r1", Some(&changed));
    assert_eq!(view["version"]["config"], 4, "{view}");
    served.wait_agent("r1", Duration::from_secs(60), "on config 4", |v| {
        v["status"] == "running" && v["running_version"]["config"] == 4
    });
    assert_eq!(served.agent_call("r1", "GET", "/state")["greeting"], "v4");
    assert_eq!(
        served.agent_processes().len(),
        3,
        "no agent lost or doubled"
    );
}

#[test]
fn a_bad_rollout_request_is_refused_naming_the_field_and_another_tenant_sees_no_rollout() {
    let scratch = Scratch::new("serve-rollout-bad");
    let served = Served::start(&scratch);
    served.create_running("only");
    let refusals = [
        (json!({"agents": [], "config_patch": {}}), 400, "agents"),
        (
            json!({"agents": ["only"], "wave_size": 0, "config_patch": {}}),
            400,
            "wave_size",
        ),
        (
            json!({"agents": ["only"], "config_patch": [1]}),
            400,
            "config_patch",
        ),
        (
            json!({"agents": ["only", "only"], "config_patch": {}}),
            400,
            "agents",
        ),
        (
            json!({"agents": ["only"], "config_patch": {}, "extra": 1}),
            400,
            "extra",
        ),
        (
            json!({"agents": ["only", "ghost"], "config_patch": {}}),
            404,
            "ghost",
        ),
        // A patch that leaves an invalid agent: the config would exceed its bound.
        (
            json!({"agents": ["only"], "config_patch": {"pad": "x".repeat(1 << 20)}}),
            400,
            "config",
        ),
    ];
    for (body, status, field) in refusals {
        let (got, answer) = served.request("POST", "/v1/rollouts", Some(&body), None);
        assert_eq!(got, status, "{answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{field} not named: {message}");
    }
    let listed = served.api("GET", "/v1/rollouts", None);
    assert_eq!(listed["rollouts"], json!([]), "nothing was started");
    let versions = served.api("GET", "/v1/agents/only/versions", None);
    assert_eq!(
        served.agent("only")["version"]["config"],
        1,
        "no version was made: {versions}"
    );
    let (status, _) = served.request("GET", "/v1/rollouts/7", None, None);
    assert_eq!(status, 404);

    // Another tenant neither sees this tenant's rollouts nor reaches its agents.
    let started = served.api(
        "POST",
        "/v1/rollouts",
        Some(&json!({"agents": ["only"], "config_patch": {"greeting": "v2"}})),
    );
    let id = started["id"].as_u64().expect("an id");
    let tenant = served.api(
        "POST",
        "/v1/tenants",
        Some(&json!({"id": 1, "name": "other"})),
    );
    let token = tenant["token"].as_str().expect("a tenant token");
    let (status, listed) = served.request("GET", "/v1/rollouts", None, Some(token));
    assert_eq!((status, &listed["rollouts"]), (200, &json!([])), "{listed}");
    let (status, _) = served.request("GET", &format!("/v1/rollouts/{id}"), None, Some(token));
    assert_eq!(status, 404, "a foreign rollout answers as a missing one");
    let (status, answer) = served.request(
        "POST",
        "/v1/rollouts",
        Some(&json!({"agents": ["only"], "config_patch": {}})),
        Some(token),
    );
    assert_eq!(status, 404, "{answer}");
    let (status, mine) = served.request("GET", &format!("/v1/rollouts/{id}"), None, None);
    assert_eq!(status, 200, "{mine}");
}
