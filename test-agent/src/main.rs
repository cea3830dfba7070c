//! `carapace-test-agent`: a small, real agent process for Carapace's real-process tests.
//!
//! It stands in for an OpenClaw gateway where OpenClaw cannot show a fault on demand. Like a
//! gateway it has a strict JSON config (a broken one exits 78), a session kept in a state
//! directory, liveness and readiness probes, a boot time, and a clean exit on SIGTERM. Unlike a
//! gateway it takes requests to misbehave: crash with a given code, hang while staying alive,
//! grow its resident memory, or crash on resume from a poisoned state directory.
//!
//! ```text
//! carapace-test-agent --state DIR [--config FILE] [--port P] [--boot-ms N]
//! carapace-test-agent --validate --config FILE
//! ```
//!
//! HTTP on 127.0.0.1:P, JSON replies: `GET /healthz`, `GET /readyz`, `GET /state`,
//! `POST /turn`, `POST /spike?bytes=N`, `POST /release`, `POST /crash?code=N`, `POST /hang`,
//! and `GET`/`POST /auth` (200 with `Authorization: Bearer TOKEN` of the config's `token`, else
//! 401). `greeting` and `token` are reloaded from the config file while the agent runs.
//!
//! Exit codes: 0 on SIGTERM or SIGINT (and for a valid `--validate`); 1 for a failure at
//! start (unreadable session, port in use), a poisoned state, or an invalid `--validate`;
//! 2 for a bad command line; 78 for a broken config; N after `/crash?code=N`.

// The agent is a real process: it reads the clock, sleeps and starts threads. The determinism
// lints bind the engine and the simulator, not this crate.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod agent;
mod cli;
mod config;
mod http;
mod memory;
mod server;
mod session;

use agent::{Agent, Live};
use cli::{Command, RunArgs};
use nix::sys::signal::{SigSet, Signal};
use std::convert::Infallible;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const EXIT_FAILURE: i32 = 1;
const EXIT_USAGE: i32 = 2;
/// What OpenClaw exits with when its config is broken (`EX_CONFIG` of sysexits.h).
const EXIT_CONFIG: i32 = 78;

/// How long after starting a poisoned agent dies: long enough to be seen running, far shorter
/// than any boot, so it is never ready.
const CRASH_ON_RESUME: Duration = Duration::from_millis(100);

/// Why the agent stops without serving, and with which exit code.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

fn main() {
    // Boot time counts from here, as close to the process's start as the agent can see.
    let started = Instant::now();
    let code = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            say(cli::USAGE);
            0
        }
        Ok(Command::Validate { config }) => validate(&config),
        Ok(Command::Run(args)) => match run(args, started) {
            Ok(never) => match never {},
            Err(failure) => {
                eprintln!("carapace-test-agent: {}", failure.message);
                failure.code
            }
        },
        Err(problem) => {
            eprintln!("carapace-test-agent: {problem}\n{}", cli::USAGE);
            EXIT_USAGE
        }
    };
    std::process::exit(code);
}

/// `--validate`: the verdict as JSON on stdout, like `openclaw config validate --json`.
fn validate(file: &Path) -> i32 {
    let (verdict, code) = match config::load(file) {
        Ok(_) => (serde_json::json!({ "valid": true }), 0),
        Err(issue) => (
            serde_json::json!({ "valid": false, "issues": [issue] }),
            EXIT_FAILURE,
        ),
    };
    say(&verdict.to_string());
    code
}

/// Starts the agent and serves until the process exits; returns only if it cannot start.
fn run(args: RunArgs, started: Instant) -> Result<Infallible, Failure> {
    // First, while this is the only thread: every thread started later inherits the mask, so
    // SIGTERM is only ever taken by the waiting thread, never delivered asynchronously.
    let signals = block_termination_signals()?;
    let config = match &args.config {
        Some(file) => Some(config::load(file).map_err(|issue| {
            Failure::new(
                EXIT_CONFIG,
                format!("broken config {}: {issue}", file.display()),
            )
        })?),
        None => None,
    };
    let port = args
        .port
        .or(config.as_ref().map(|c| c.port))
        .ok_or_else(|| Failure::new(EXIT_USAGE, "no port: give --port or a --config with one"))?;
    let boot = Duration::from_millis(
        args.boot_ms
            .or(config.as_ref().map(|c| c.boot_ms))
            .unwrap_or(config::DEFAULT_BOOT_MS),
    );
    let session = session::Session::open(&args.state).map_err(|m| Failure::new(EXIT_FAILURE, m))?;
    let poisoned = session::poisoned(&args.state);
    let listener = server::bind(port).map_err(|m| Failure::new(EXIT_FAILURE, m))?;
    let address = listener
        .local_addr()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot read the bound address: {e}")))?;
    say(&format!("listening on {address}"));

    let live = config.map_or_else(Live::default, |c| Live {
        greeting: c.greeting,
        token: c.token,
    });
    let agent = Arc::new(Agent::new(session, live));
    start_thread("signals", move || wait_for_termination(&signals))?;
    if let Some(file) = args.config.clone() {
        let agent = Arc::clone(&agent);
        start_thread("reload", move || watch_config(&agent, &file))?;
    }
    if poisoned {
        let state = args.state.clone();
        start_thread("resume", move || crash_on_resume(&state, started))?;
    } else {
        let agent = Arc::clone(&agent);
        start_thread("boot", move || finish_booting(&agent, started, boot))?;
    }
    server::serve(listener, agent)
}

fn block_termination_signals() -> Result<SigSet, Failure> {
    let signals: SigSet = [Signal::SIGTERM, Signal::SIGINT].into_iter().collect();
    signals
        .thread_block()
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot block SIGTERM: {e}")))?;
    Ok(signals)
}

/// Exits 0 on SIGTERM or SIGINT, at once: the agent has nothing unsaved, as every turn is on
/// disk before it is acknowledged.
fn wait_for_termination(signals: &SigSet) {
    match signals.wait() {
        Ok(signal) => {
            eprintln!("carapace-test-agent: {signal}, exiting");
            std::process::exit(0);
        }
        // Failing loudly beats living on with SIGTERM blocked and no one to take it.
        Err(e) => {
            eprintln!("carapace-test-agent: cannot wait for signals: {e}");
            std::process::exit(EXIT_FAILURE);
        }
    }
}

/// A gateway's hot reload: the config file is read again whenever its content changes; a
/// valid one replaces the live settings (`greeting`, `token`), an invalid one is ignored and
/// the old settings stay, as OpenClaw keeps its old config on an invalid edit. A changed port
/// needs a restart.
fn watch_config(agent: &Agent, file: &Path) -> ! {
    let mut last = std::fs::read(file).ok();
    loop {
        thread::sleep(RELOAD_POLL);
        let now = std::fs::read(file).ok();
        if now == last {
            continue;
        }
        if let Some(config) = now.as_deref().and_then(|bytes| config::parse(bytes).ok()) {
            agent.reload(Live {
                greeting: config.greeting,
                token: config.token,
            });
            say("config reloaded");
        }
        last = now;
    }
}

/// How often the config file is looked at for a change.
const RELOAD_POLL: Duration = Duration::from_millis(20);

/// The boot time stands for a gateway loading its plugins and channels: until it has passed
/// the agent is live (`/healthz`) but not ready (`/readyz`).
fn finish_booting(agent: &Agent, started: Instant, boot: Duration) {
    thread::sleep(boot.saturating_sub(started.elapsed()));
    agent.mark_ready();
    say("ready");
}

/// A gateway whose restored session kills it at boot: it is seen running, then dies with 1
/// before it is ever ready — the case a recovery ladder must not restart forever.
fn crash_on_resume(state: &Path, started: Instant) {
    thread::sleep(CRASH_ON_RESUME.saturating_sub(started.elapsed()));
    eprintln!(
        "carapace-test-agent: the session in {} is poisoned; crashing on resume",
        state.display()
    );
    std::process::exit(EXIT_FAILURE);
}

fn start_thread(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), Failure> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map(drop)
        .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot start the {name} thread: {e}")))
}

/// One line on stdout. A closed stdout must not take the agent down, so errors are ignored.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}
