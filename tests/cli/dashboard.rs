//! The dashboard of `carapace serve`: its routes and actions through the API, and the whole
//! operator's flow in a real browser (Debian's chromium driven by playwright-core, in
//! tests/browser/dashboard.js) against a real daemon and real agents.

use crate::common::{Scratch, carapace, workspace};
use crate::serve::Served;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Boot time of the agent the browser watches: long enough that "recovering" is on screen
/// for over a second after a kill, whatever the machine's load.
const BOOT_MS: u64 = 1_500;

#[test]
fn an_operator_watches_a_kill_recover_live_and_restores_a_version_in_a_browser() {
    let browser = Browser::find();
    let scratch = Scratch::new("dashboard-browser");
    let served = Served::start(&scratch);
    let tenant_token = create_tenant(&served, 7, "acme");

    // The admin's agent (tenant 0, where `carapace chaos` looks), at config version 2 so that
    // version 1 can be restored.
    let body = served.agent_body(
        "web-1",
        json!({"config": {"port": 1, "boot_ms": BOOT_MS, "greeting": "v1"}}),
    );
    served.api("POST", "/v1/agents", Some(&body));
    served.wait_running("web-1", 1);
    let mut update = body.clone();
    update["config"]["greeting"] = json!("v2");
    served.api("PUT", "/v1/agents/web-1", Some(&update));
    served.wait_agent(
        "web-1",
        Duration::from_secs(60),
        "known-good at config 2",
        |v| v["status"] == "running" && v["known_good"]["config"] == 2,
    );
    // Tenant 7's own agent.
    let (status, answer) = served.request(
        "POST",
        "/v1/agents",
        Some(&served.agent_body("own-1", json!({}))),
        Some(&tenant_token),
    );
    assert_eq!(status, 201, "{answer}");

    let reports = sim_reports(&scratch);
    let shots = workspace().join("target/dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("the screenshots directory");

    let started = Instant::now();
    let mut child = Command::new(&browser.node)
        .arg(workspace().join("tests/browser/dashboard.js"))
        .env("PLAYWRIGHT_NODE_MODULES", &browser.node_modules)
        .env("DASHBOARD_URL", &served.base_url)
        .env("ADMIN_TOKEN", &served.token)
        .env("TENANT_TOKEN", &tenant_token)
        .env("AGENT", "web-1")
        .env("TENANT_AGENT", "own-1")
        .env("CARAPACE_BIN", env!("CARGO_BIN_EXE_carapace"))
        .env("DATA_DIR", served.data_dir())
        .env("REPORT_A", &reports[0])
        .env("REPORT_B", &reports[1])
        .env("SCREENSHOTS", &shots)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let status = wait_with_deadline(&mut child, Duration::from_secs(240));
    assert!(
        status.success(),
        "the browser test failed ({status}); screenshots in {}",
        shots.display()
    );
    eprintln!("browser flow: {:.1} s", started.elapsed().as_secs_f64());

    // What the browser did, as the daemon saw it: version 1's config restored as version 3,
    // and the agent serving it.
    let view = served.wait_running("web-1", 3);
    assert_eq!(view["version"]["config"], 3, "{view}");
    let state = served.agent_call("web-1", "GET", "/state");
    assert_eq!(state["greeting"], "v1", "{state}");
    for name in [
        "fleet",
        "agent",
        "agent-recovering",
        "incidents",
        "post-mortem",
        "agent-restored",
        "fleet-phone",
        "simulations",
        "tenant-fleet",
    ] {
        assert!(
            shots.join(format!("{name}.png")).is_file(),
            "the {name} screenshot was kept"
        );
    }
}

#[test]
fn dashboard_routes_and_actions_answer_as_the_api_does() {
    let scratch = Scratch::new("dashboard-api");
    let served = Served::start(&scratch);
    let tenant_token = create_tenant(&served, 7, "acme");
    served.create_running("a-1");

    // The page is served without a token, holds none, and may load nothing from elsewhere.
    let (status, headers, page) = fetch(&served, "/dashboard/");
    assert_eq!(status, 200);
    assert!(!page.contains(&served.token) && !page.contains(&tenant_token));
    let csp = headers
        .iter()
        .find(|(name, _)| name == "content-security-policy")
        .map(|(_, value)| value.clone())
        .expect("a content security policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    for asset in [
        "/dashboard/app.js",
        "/dashboard/style.css",
        "/dashboard/icon.svg",
    ] {
        assert_eq!(fetch(&served, asset).0, 200, "{asset}");
    }
    // Data still needs the token.
    assert_eq!(fetch(&served, "/v1/incidents").0, 401);

    // Bad input names the field.
    let bad = |path: &str, body: Value, token: Option<&str>| {
        served.request("POST", path, Some(&body), token)
    };
    let (status, answer) = bad(
        "/v1/agents/a-1/restore",
        json!({"config_version": "one"}),
        None,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("config_version"),
        "{answer}"
    );
    let (status, answer) = bad("/v1/agents/a-1/restore", json!({"config_version": 9}), None);
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("config_version: `a-1` has no config version 9"),
        "{answer}"
    );
    let (status, answer) = bad("/v1/nodes/zero/drain", json!({}), None);
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("node: must be a node id (a number)"))
    );
    let (status, answer) = bad("/v1/nodes/0/drain", json!({}), None);
    assert_eq!(status, 409, "a one-node daemon is not drained: {answer}");

    // Another tenant's agent answers as a missing one, to every action; drain is the admin's.
    let missing = served.request("GET", "/v1/agents/nobody", None, None).1;
    for action in ["restart", "recreate", "restore"] {
        let (status, answer) = bad(
            &format!("/v1/agents/a-1/{action}"),
            json!({"config_version": 1}),
            Some(&tenant_token),
        );
        assert_eq!(status, 404, "{action}: {answer}");
        assert_eq!(
            answer["error"].as_str().map(|e| e.replace("a-1", "nobody")),
            missing["error"].as_str().map(str::to_owned)
        );
    }
    assert_eq!(
        bad("/v1/nodes/0/drain", json!({}), Some(&tenant_token)).0,
        404
    );
    let (status, answer) =
        served.request("GET", "/v1/agents/a-1/memory", None, Some(&tenant_token));
    assert_eq!(status, 404, "{answer}");

    // A restart is a rung-1 incident, listed with its replay command; a recreation a new
    // instance; the memory history fills in.
    let before = served.agent("a-1");
    let answer = served.api("POST", "/v1/agents/a-1/restart", Some(&json!({})));
    assert_eq!(answer["done"]["restarted"], before["instance"], "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let incident = loop {
        let incidents = served.api("GET", "/v1/incidents", None);
        if let Some(closed) = incidents["incidents"].as_array().and_then(|list| {
            list.iter()
                .find(|i| i["agent"] == "a-1" && i["recovery_ms"].is_u64())
        }) {
            break closed.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no recovered incident: {incidents}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (incident["cause"].as_str(), incident["rung"].as_u64()),
        (Some("exited"), Some(1)),
        "{incident}"
    );
    assert!(
        incident["replay_command"]
            .as_str()
            .unwrap()
            .starts_with("carapace replay "),
        "{incident}"
    );
    let theirs = served
        .request("GET", "/v1/incidents", None, Some(&tenant_token))
        .1;
    assert_eq!(
        theirs["incidents"],
        json!([]),
        "a tenant sees no other tenant's incidents"
    );

    let answer = served.api("POST", "/v1/agents/a-1/recreate", Some(&json!({})));
    assert_eq!(answer["done"]["config_version"], 2, "{answer}");
    served.wait_running("a-1", before["instance"].as_u64().unwrap() + 1);
    let memory = served.api("GET", "/v1/agents/a-1/memory", None);
    assert!(
        memory["points"].as_array().is_some_and(|p| !p.is_empty()),
        "{memory}"
    );
    assert_eq!(memory["memory_limit_bytes"], 256 << 20);
}

/// Adds a tenant; its token.
fn create_tenant(served: &Served, id: u32, name: &str) -> String {
    let answer = served.api(
        "POST",
        "/v1/tenants",
        Some(&json!({"id": id, "name": name})),
    );
    answer["token"]
        .as_str()
        .expect("the tenant's token")
        .to_owned()
}

/// Two simulator reports (one scenario, two seeds) for the simulations page.
fn sim_reports(scratch: &Scratch) -> [PathBuf; 2] {
    let scenario = workspace().join("scenarios/ci/smoke.toml");
    ["42", "7"].map(|seed| {
        let out = scratch.path().join(format!("report-{seed}"));
        let run = carapace([
            "sim".as_ref(),
            scenario.as_os_str(),
            "--seed".as_ref(),
            seed.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ]);
        assert!(
            out.join("metrics.json").is_file(),
            "carapace sim wrote a report: {run:?}"
        );
        out
    })
}

/// A GET without a token: its status, headers and body.
fn fetch(served: &Served, path: &str) -> (u16, Vec<(String, String)>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut response = agent
        .get(&format!("{}{path}", served.base_url))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let status = response.status().as_u16();
    (
        status,
        headers,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

fn wait_with_deadline(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser test did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the browser test runs on: node, playwright-core's directory and Debian's chromium.
struct Browser {
    node: PathBuf,
    node_modules: PathBuf,
}

impl Browser {
    /// Finds them (scripts/test installs them); a missing one fails the test, saying how to
    /// install it: a browser test that skips itself would pass without testing anything.
    fn find() -> Browser {
        let node_modules = std::env::var_os("PLAYWRIGHT_NODE_MODULES")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace().join("target/browser/node_modules"));
        let node =
            std::env::var_os("DASHBOARD_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
        let missing = [
            (!node_modules.join("playwright-core").is_dir())
                .then(|| format!("playwright-core in {}", node_modules.display())),
            (!std::path::Path::new("/usr/bin/chromium").is_file())
                .then(|| "/usr/bin/chromium".to_owned()),
            Command::new(&node)
                .arg("--version")
                .output()
                .is_err()
                .then(|| format!("node ({})", node.display())),
        ];
        let missing: Vec<String> = missing.into_iter().flatten().collect();
        assert!(
            missing.is_empty(),
            "the dashboard's browser test needs {}: run scripts/install-browser (scripts/test does) \
             and export PLAYWRIGHT_NODE_MODULES=$PWD/target/browser/node_modules",
            missing.join(", ")
        );
        Browser { node, node_modules }
    }
}
