//! `carapace chaos --data DIR --agent NAME --fault FAULT`: the simulator's faults, for real,
//! against a running `carapace serve` — and the simulator's measures of them.
//!
//! Each repetition waits for the agent to run, injects the fault into its real pod, and
//! follows the daemon's event feed until the agent is healthy again (or alerted). Times are
//! the engine's (`now_ms` of the API), so detection and recovery are measured on the clock
//! the decisions were made on. The incidents go through the simulator's own `Measures`, so
//! detection, recovery, the ladder and "unnoticed" mean here exactly what they mean in a
//! simulated report; a real client polls the agent throughout to tell when a request would
//! first have hit the outage.

use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use carapace_engine::{AgentId, Millis, Rung};
use carapace_sim::report::Percentiles;
use carapace_sim::{Fault, IncidentRecord, Measures};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bounds on one chaos run.
const MAX_REPEAT: u32 = 1_000;

#[derive(Debug, clap::Args)]
pub struct ChaosArgs {
    /// The daemon's data directory (its `serve.json` and `token` are read from there).
    #[arg(long)]
    data: PathBuf,
    /// The agent to break.
    #[arg(long)]
    agent: String,
    #[arg(long, value_enum)]
    fault: FaultKind,
    /// Times to inject the fault, one after the other.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Healthy time between repetitions (lets the known-good dwell pass).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Give up on one repetition after this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Bytes a `spike` allocates inside the agent's cgroup.
    #[arg(long, default_value_t = 1 << 30)]
    spike_bytes: u64,
    /// The modelled client: a request this often, failing after this timeout.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    client_interval: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    client_timeout: Duration,
    /// Where to write incidents.csv, metrics.json and summary.md.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The daemon's config, to start it again after `kill-daemon`.
    #[arg(long)]
    restart_with: Option<PathBuf>,
    /// A recovery slower than this fails the run (exit 1).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    recovery_slo: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FaultKind {
    /// kill -9 the agent's process.
    Kill,
    /// SIGSTOP the agent: alive, answering nothing.
    Hang,
    /// Truncate the agent's config file (to an eighth), then kill it: the next start must
    /// refuse the config.
    TruncateConfig,
    /// Allocate `--spike-bytes` inside the agent's memory cgroup.
    Spike,
    /// kill -9 the pod's supervisor.
    KillSupervisor,
    /// kill -9 the pod's supervisor, then kill -9 the daemon as soon as it decides what to do
    /// about it (mid-command), and start it again with `--restart-with`.
    KillDaemon,
}

impl FaultKind {
    fn fault(self) -> Fault {
        match self {
            FaultKind::Kill | FaultKind::KillSupervisor | FaultKind::KillDaemon => Fault::Crash,
            FaultKind::Hang => Fault::Hang,
            FaultKind::TruncateConfig => Fault::ConfigCorruption,
            FaultKind::Spike => Fault::OomKilled,
        }
    }
}

pub fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    if args.repeat == 0 || args.repeat > MAX_REPEAT {
        eprintln!("carapace chaos: --repeat must be 1 to {MAX_REPEAT}");
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let daemon = match Daemon::find(&args.data) {
        Ok(daemon) => daemon,
        Err(message) => {
            eprintln!("carapace chaos: {message}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let first = daemon.agent(&args.agent)?;
    let Some(id) = first["id"].as_u64() else {
        eprintln!("carapace chaos: no agent named `{}`", args.agent);
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    };
    let agent = AgentId(u32::try_from(id)?);
    let class = format!("class-{}", first["class"]);
    let client = Client::start(
        &daemon,
        &args.agent,
        args.client_interval,
        args.client_timeout,
    );
    let mut measures = Measures::new(Millis::ZERO);
    let mut failures = Vec::new();
    let mut absorbed = 0u32;
    let mut phases = super::calibrate::Phases::default();
    for round in 0..args.repeat {
        match one_round(
            &daemon,
            &args,
            agent,
            &class,
            &client,
            &mut measures,
            &mut phases,
        ) {
            Ok(Round::Absorbed) => absorbed += 1,
            Ok(Round::Recovered | Round::Alerted) => {}
            Err(error) => {
                eprintln!("carapace chaos: round {}: {error:#}", round + 1);
                failures.push(format!("round {}: {error:#}", round + 1));
            }
        }
    }
    client.stop();
    let summary = summarise(&measures, &args, &failures, absorbed);
    println!("{}", summary_table(&summary));
    if let Some(out) = &args.out {
        write_report(out, &measures.incidents, &summary)?;
        let mut csv = csv::Writer::from_path(out.join("latencies.csv"))?;
        csv.write_record(["phase", "ms"])?;
        for (phase, ms) in &phases.samples {
            csv.write_record([*phase, &ms.to_string()])?;
        }
        csv.flush()?;
    }
    let passed = summary["passed"].as_bool().unwrap_or(false);
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

fn one_round(
    daemon: &Daemon,
    args: &ChaosArgs,
    agent: AgentId,
    class: &str,
    client: &Client,
    measures: &mut Measures,
    phases: &mut super::calibrate::Phases,
) -> anyhow::Result<Round> {
    // Running, and the last incident closed (known-good again): otherwise a new fault would
    // count as a relapse of the old one and climb the ladder.
    let settled = |v: &Value| v["status"] == "running" && v["rung"].is_null();
    daemon.wait(&args.agent, args.timeout, settled)?;
    std::thread::sleep(args.settle);
    let view = daemon.wait(&args.agent, args.timeout, settled)?;
    // A snapshot pauses the agent and resumes it: a hang injected meanwhile would be undone.
    daemon.wait_for_snapshots(&args.agent, SNAPSHOT_WAIT)?;
    let after = daemon.feed_tail()?;
    let injected_at = inject(args, &view)?;
    let mut seen = after;

    // A spike's victim is the kernel's choice: when it is the spiking process itself, the
    // agent never stops serving and there is no incident. Every other fault stops it.
    let mut open = args.fault != FaultKind::Spike;
    if open {
        measures.fault(agent, args.fault.fault(), injected_at);
    }
    let mut detected = false;
    if args.fault == FaultKind::KillDaemon {
        if let Some(at) = kill_daemon_mid_command(daemon, args, seen)? {
            measures.observed(agent, at);
            detected = true;
        }
        // The restarted daemon's feed starts afresh (its decisions replayed from the journal).
        seen = 0;
    }
    let deadline = Instant::now() + args.timeout;
    let absorbed_after = Instant::now() + SPIKE_WINDOW;
    loop {
        let feed = daemon.events(seen)?;
        for event in feed["events"].as_array().into_iter().flatten() {
            seen = event["seq"].as_u64().unwrap_or(seen);
            if event["agent"] != args.agent.as_str() {
                continue;
            }
            phases.see(event);
            let at = Millis(event["at_ms"].as_u64().unwrap_or(0));
            let name = event["event"].as_str().unwrap_or("");
            let failure = event["kind"] == "observation" && FAILURES.contains(&name);
            if failure && !open {
                measures.fault(agent, args.fault.fault(), injected_at);
                open = true;
            }
            if failure && !detected {
                measures.observed(agent, at);
                detected = true;
            }
            if open && name == "ready" && at >= injected_at {
                let current = daemon.agent(&args.agent)?;
                let rung = rung_of(&current["rung"]);
                let first_request = client.first_request_after(injected_at).unwrap_or(at);
                let timeout = Millis(args.client_timeout.as_millis() as u64);
                measures.healthy(agent, class, at, rung, first_request, timeout);
                return Ok(Round::Recovered);
            }
            if name == "alert" {
                measures.alerted(agent, class, at);
                return Ok(Round::Alerted);
            }
        }
        if !open && Instant::now() > absorbed_after {
            return Ok(Round::Absorbed);
        }
        if Instant::now() > deadline {
            anyhow::bail!("not healthy again within {:?}", args.timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How one repetition ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    Recovered,
    Alerted,
    /// The fault did not stop the agent (a spike whose victim was the spiking process).
    Absorbed,
}

/// Observations that show the agent stopped serving.
const FAILURES: &[&str] = &[
    "exited",
    "probe_failed",
    "escalated",
    "config_rejected",
    "spawn_failed",
    "supervisor_lost",
];

/// How long to let a snapshot under way finish before injecting anyway.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// A spike that has not stopped the agent by then was absorbed by its pod.
const SPIKE_WINDOW: Duration = Duration::from_secs(15);

/// Injects the fault into the agent's pod; returns the engine time it happened at.
fn inject(args: &ChaosArgs, view: &Value) -> anyhow::Result<Millis> {
    let pod = &view["pod"];
    let pid = |field: &str| -> anyhow::Result<i32> {
        pod[field]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| anyhow::anyhow!("the agent's pod reports no {field}: {pod}"))
    };
    let dir = PathBuf::from(pod["dir"].as_str().unwrap_or_default());
    // The engine time of the view, plus what passed since it was read.
    let read_at = Instant::now();
    let now_ms = view["now_ms"].as_u64().unwrap_or(0);
    let kill = |pid: i32, signal| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .map_err(|e| anyhow::anyhow!("signal {pid}: {e}"))
    };
    match args.fault {
        FaultKind::Kill => kill(pid("agent_pid")?, nix::sys::signal::Signal::SIGKILL)?,
        FaultKind::Hang => kill(pid("agent_pid")?, nix::sys::signal::Signal::SIGSTOP)?,
        FaultKind::KillSupervisor | FaultKind::KillDaemon => {
            kill(pid("supervisor_pid")?, nix::sys::signal::Signal::SIGKILL)?
        }
        FaultKind::TruncateConfig => {
            let config = dir.join("config.json");
            let length = std::fs::metadata(&config)?.len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&config)?
                .set_len(length / 8)?;
            kill(pid("agent_pid")?, nix::sys::signal::Signal::SIGKILL)?;
        }
        FaultKind::Spike => spike(&dir, args.spike_bytes)?,
    }
    Ok(Millis(now_ms + read_at.elapsed().as_millis() as u64))
}

/// Kills the daemon with SIGKILL at its first decision about the agent after `after` (a
/// command journaled and under way), then starts it again and waits for its API. Returns when
/// the daemon had observed the fault, if it had.
fn kill_daemon_mid_command(
    daemon: &Daemon,
    args: &ChaosArgs,
    after: u64,
) -> anyhow::Result<Option<Millis>> {
    let config = args
        .restart_with
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--fault kill-daemon needs --restart-with CONFIG"))?;
    let deadline = Instant::now() + args.timeout;
    let mut observed = None;
    'decided: loop {
        let feed = daemon.events(after)?;
        for event in feed["events"].as_array().into_iter().flatten() {
            if event["agent"] != args.agent.as_str() {
                continue;
            }
            let name = event["event"].as_str().unwrap_or("");
            if observed.is_none() && event["kind"] == "observation" && FAILURES.contains(&name) {
                observed = event["at_ms"].as_u64().map(Millis);
            }
            if event["kind"] == "decision" {
                break 'decided;
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the daemon decided nothing about {} within {:?}",
                args.agent,
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = i32::try_from(daemon.pid)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| anyhow::anyhow!("kill -9 the daemon ({pid}): {e}"))?;
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.data.join("serve.log"))?;
    std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    while daemon.get("/v1/nodes").is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("the daemon did not come back within {:?}", args.timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(observed)
}

/// Starts a process inside the pod's memory cgroup that allocates `bytes` and holds them: the
/// kernel's OOM killer then picks a victim inside the pod, as it would for a real spike.
fn spike(dir: &Path, bytes: u64) -> anyhow::Result<()> {
    let spec: Value = serde_json::from_slice(&std::fs::read(dir.join("pod.json"))?)?;
    let cgroup = spec["cgroup"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the pod has no memory cgroup: limits are not enforced"))?;
    let mut hog = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, time\nsys.stdin.readline()\nb = bytearray(int(sys.argv[1]))\ntime.sleep(600)",
            &bytes.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    std::fs::write(Path::new(cgroup).join("cgroup.procs"), hog.id().to_string())?;
    use std::io::Write as _;
    hog.stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("the hog's stdin"))?
        .write_all(b"go\n")?;
    // Reaped later; it dies to the OOM killer or with the pod.
    std::thread::spawn(move || {
        let _ = hog.wait();
    });
    Ok(())
}

fn rung_of(value: &Value) -> Option<Rung> {
    Some(match value.as_str()? {
        "restart_in_place" => Rung::RestartInPlace,
        "recreate" => Rung::Recreate,
        "restore_known_good" => Rung::RestoreKnownGood,
        "alert" => Rung::Alert,
        _ => return None,
    })
}

fn summarise(measures: &Measures, args: &ChaosArgs, failures: &[String], absorbed: u32) -> Value {
    let recovery = Percentiles::of(&measures.recovery);
    let detection = Percentiles::of(&measures.detection);
    let resolved = measures.noticed + measures.unnoticed;
    let unnoticed = if resolved == 0 {
        0.0
    } else {
        measures.unnoticed as f64 / resolved as f64
    };
    let slo_ms = args.recovery_slo.as_millis() as u64;
    // Every incident resolved by a rung (none alerted) within the SLO.
    let resolved_by_rungs = measures.ladder[..3].iter().sum::<u64>();
    let recovered_in_time = resolved_by_rungs == measures.incidents.len() as u64
        && (recovery.count == 0 || recovery.max <= slo_ms);
    json!({
        "agent": args.agent,
        "fault": args.fault.fault().name(),
        "rounds": args.repeat,
        "incidents": measures.incidents.len(),
        "absorbed": absorbed,
        "detection_ms": detection,
        "recovery_ms": recovery,
        "unnoticed_fraction": (unnoticed * 10_000.0).round() / 10_000.0,
        "ladder": measures.ladder,
        "recovery_slo_ms": slo_ms,
        "failures": failures,
        "passed": failures.is_empty() && recovered_in_time,
    })
}

fn summary_table(summary: &Value) -> String {
    let p = |v: &Value| {
        format!(
            "p50 {} ms, p90 {} ms, max {} ms (n={})",
            v["p50"], v["p90"], v["max"], v["count"]
        )
    };
    format!(
        "| measure | value |\n|---|---|\n| fault | {} × {} on {} |\n| detection | {} |\n| recovery | {} |\n| ladder (rung 1, 2, 3, alert) | {} |\n| absorbed (no incident) | {} |\n| unnoticed | {} |\n| recovery within {} ms | {} |",
        summary["fault"].as_str().unwrap_or(""),
        summary["rounds"],
        summary["agent"].as_str().unwrap_or(""),
        p(&summary["detection_ms"]),
        p(&summary["recovery_ms"]),
        summary["ladder"],
        summary["absorbed"],
        summary["unnoticed_fraction"],
        summary["recovery_slo_ms"],
        if summary["passed"].as_bool().unwrap_or(false) {
            "pass"
        } else {
            "FAIL"
        },
    )
}

fn write_report(out: &Path, incidents: &[IncidentRecord], summary: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let mut csv = csv::Writer::from_path(out.join("incidents.csv"))?;
    for incident in incidents {
        csv.serialize(incident)?;
    }
    csv.flush()?;
    std::fs::write(
        out.join("metrics.json"),
        serde_json::to_vec_pretty(summary)?,
    )?;
    std::fs::write(
        out.join("summary.md"),
        format!(
            "# Chaos: {}\n\n{}\n",
            summary["fault"].as_str().unwrap_or(""),
            summary_table(summary)
        ),
    )?;
    Ok(())
}

/// A running daemon, found through its data directory.
#[derive(Debug)]
struct Daemon {
    url: String,
    token: String,
    pid: u32,
    /// One client, so that polling reuses its connections instead of opening one a call.
    http: ureq::Agent,
}

impl Daemon {
    fn find(data: &Path) -> Result<Daemon, String> {
        let about = data.join("serve.json");
        let text = std::fs::read_to_string(&about).map_err(|e| {
            format!(
                "{}: {e} (is carapace serve running on this data dir?)",
                about.display()
            )
        })?;
        let about: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", about.display()))?;
        let token_path = data.join("token");
        let token = std::fs::read_to_string(&token_path)
            .map_err(|e| format!("{}: {e}", token_path.display()))?
            .trim()
            .to_owned();
        let pid = about["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        let url = about["url"].as_str().unwrap_or_default().to_owned();
        Ok(Daemon::new(url, token, pid))
    }

    fn new(url: String, token: String, pid: u32) -> Daemon {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        Daemon {
            url,
            token,
            pid,
            http,
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut response = self
            .http
            .get(&format!("{}{path}", self.url))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()?;
        let text = response.body_mut().read_to_string()?;
        Ok(serde_json::from_str(&text)?)
    }

    fn agent(&self, name: &str) -> anyhow::Result<Value> {
        self.get(&format!("/v1/agents/{name}"))
    }

    fn events(&self, after: u64) -> anyhow::Result<Value> {
        self.get(&format!("/v1/events?after={after}"))
    }

    /// The seq of the newest event in the feed.
    fn feed_tail(&self) -> anyhow::Result<u64> {
        let feed = self.events(0)?;
        Ok(feed["events"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or(0))
    }

    /// Waits (at most `within`) until every snapshot the engine asked of the agent was taken.
    fn wait_for_snapshots(&self, name: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let feed = self.events(0)?;
            let mut pending = 0i64;
            for event in feed["events"].as_array().into_iter().flatten() {
                if event["agent"] != name {
                    continue;
                }
                match event["event"].as_str() {
                    Some("snapshot") => pending += 1,
                    Some("snapshotted") => pending -= 1,
                    _ => {}
                }
            }
            if pending <= 0 || Instant::now() > deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait(
        &self,
        name: &str,
        within: Duration,
        ready: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let view = self.agent(name)?;
            if ready(&view) {
                return Ok(view);
            }
            if Instant::now() > deadline {
                anyhow::bail!("{name} is not running within {within:?}: {view}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The modelled client, for real: a request to the agent every interval, on the port of
/// whichever pod runs it now. Remembers when each request was sent, in engine time.
#[derive(Debug)]
struct Client {
    sent: Arc<Mutex<Vec<Millis>>>,
    running: Arc<AtomicBool>,
}

impl Client {
    fn start(daemon: &Daemon, name: &str, interval: Duration, timeout: Duration) -> Client {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicBool::new(true));
        let (url, token, name) = (daemon.url.clone(), daemon.token.clone(), name.to_owned());
        let (log, alive) = (sent.clone(), running.clone());
        std::thread::spawn(move || {
            let daemon = Daemon::new(url, token, 0);
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .build()
                .into();
            while alive.load(Ordering::Relaxed) {
                if let Ok(view) = daemon.agent(&name)
                    && let (Some(port), Some(now)) =
                        (view["pod"]["port"].as_u64(), view["now_ms"].as_u64())
                {
                    log.lock().expect("client log").push(Millis(now));
                    let _ = agent
                        .get(&format!("http://127.0.0.1:{port}/healthz"))
                        .call();
                }
                std::thread::sleep(interval);
            }
        });
        Client { sent, running }
    }

    fn first_request_after(&self, at: Millis) -> Option<Millis> {
        self.sent
            .lock()
            .expect("client log")
            .iter()
            .copied()
            .find(|t| *t >= at)
    }

    fn stop(&self) {
        self.running.store(false, Ordering::Relaxed);
    }
}
