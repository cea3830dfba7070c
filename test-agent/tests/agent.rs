//! `carapace-test-agent` as a real process: started, probed over real TCP, crashed, hung,
//! signalled. Every wait polls a condition against a deadline; none is a sleep that passes by
//! luck.

// Real processes on real time: the determinism lints bind the engine and the simulator.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// Generous, for a loaded 2-core machine; a passing test never waits this long.
const PATIENCE: Duration = Duration::from_secs(10);
/// Between two polls of a condition that has no event to wait on.
const POLL: Duration = Duration::from_millis(20);
const MIB: u64 = 1024 * 1024;

/// A directory of its own for one test, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("carapace-test-agent-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write a scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A running agent; killed on drop if a test leaves it running.
struct Agent {
    child: Child,
    port: u16,
    stdout: Receiver<String>,
}

impl Agent {
    /// Starts the agent on `port` with `args` after `--port`.
    fn start(port: u16, args: &[&str]) -> Agent {
        Agent::start_with(port, &[&["--port", &port.to_string()], args].concat())
    }

    /// Starts the agent with exactly `args`, serving (it is expected) on `port`.
    fn start_with(port: u16, args: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_carapace-test-agent"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start carapace-test-agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Agent {
            child,
            port,
            stdout: lines,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn get(&self, target: &str) -> io::Result<(u16, Value)> {
        request(self.port, "GET", target, PATIENCE)
    }

    fn post(&self, target: &str) -> (u16, Value) {
        request(self.port, "POST", target, PATIENCE)
            .unwrap_or_else(|e| panic!("POST {target}: {e}"))
    }

    /// Waits until `/readyz` answers 200.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while !matches!(self.get("/readyz"), Ok((200, _))) {
            self.assert_running();
            assert!(Instant::now() < deadline, "not ready within {PATIENCE:?}");
            std::thread::sleep(POLL);
        }
    }

    /// The next line on stdout, waiting at most [`PATIENCE`].
    fn next_line(&self) -> String {
        self.stdout
            .recv_timeout(PATIENCE)
            .expect("a line on stdout")
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the agent") {
            panic!("the agent exited with {status}: {}", self.stderr());
        }
    }

    fn terminate(&self) {
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("a pid"));
        kill(pid, Signal::SIGTERM).expect("send SIGTERM");
    }

    /// Waits for the agent to exit, at most [`PATIENCE`].
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the agent") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {PATIENCE:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Everything the agent wrote to stderr; call once it has exited.
    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One blocking HTTP/1.1 request; the agent closes the connection after its reply.
fn request(port: u16, method: &str, target: &str, timeout: Duration) -> io::Result<(u16, Value)> {
    let reply = exchange(
        port,
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"),
        timeout,
    )?;
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, reply.clone());
    let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(malformed)?;
    Ok((status, serde_json::from_str(body)?))
}

/// Sends `raw` and returns everything the agent sends back before it closes.
fn exchange(port: u16, raw: String, timeout: Duration) -> io::Result<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(raw.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

/// Resident memory of `pid`, measured from outside the agent.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[test]
fn readiness_comes_boot_ms_after_start_and_liveness_at_once() {
    let scratch = Scratch::new("ready");
    let port = free_port();
    let boot = Duration::from_millis(2000);
    let config = scratch.file(
        "config.json",
        &format!(
            r#"{{"port": {port}, "boot_ms": {}, "greeting": "v2"}}"#,
            boot.as_millis()
        ),
    );
    let state = scratch.path("state");
    let spawned = Instant::now();
    let mut agent = Agent::start_with(
        port,
        &[
            "--state",
            state.to_str().expect("a UTF-8 path"),
            "--config",
            config.to_str().expect("a UTF-8 path"),
        ],
    );
    assert_eq!(agent.next_line(), format!("listening on 127.0.0.1:{port}"));

    let mut answers = Vec::new();
    loop {
        let answer = agent.get("/readyz");
        let at = spawned.elapsed();
        if let Ok((status, _)) = answer {
            answers.push((at, status));
            if status == 200 {
                // The agent started after `spawned`, so it cannot be ready before this.
                assert!(at >= boot, "ready after {at:?}, before boot_ms");
                break;
            }
            assert_eq!(status, 503, "{answers:?}");
            assert_eq!(agent.get("/healthz").expect("alive").0, 200);
        }
        agent.assert_running();
        assert!(at < boot + PATIENCE, "never ready: {answers:?}");
        std::thread::sleep(POLL);
    }
    assert_eq!(answers[0].1, 503, "503 while booting: {answers:?}");
    assert_eq!(agent.next_line(), "ready");

    let (status, state) = agent.get("/state").expect("state");
    assert_eq!(status, 200);
    assert_eq!(state["turns"], 0);
    assert_eq!(state["pid"], agent.pid());
    assert_eq!(state["greeting"], "v2", "the config in use");
}

#[test]
fn turns_are_saved_and_survive_a_restart() {
    let scratch = Scratch::new("turns");
    let state = scratch.path("state");
    let state_arg = state.to_str().expect("a UTF-8 path");
    let port = free_port();

    let mut first = Agent::start(port, &["--state", state_arg, "--boot-ms", "0"]);
    first.wait_ready();
    for expected in 1..=3 {
        let (status, body) = first.post("/turn");
        assert_eq!((status, &body["turns"]), (200, &Value::from(expected)));
    }
    let saved = std::fs::read_to_string(state.join("session.json")).expect("session.json");
    assert_eq!(
        serde_json::from_str::<Value>(&saved).expect("JSON")["turns"],
        3
    );
    first.terminate();
    assert_eq!(first.wait_exit().code(), Some(0));

    let mut second = Agent::start(port, &["--state", state_arg, "--boot-ms", "0"]);
    second.wait_ready();
    let (_, body) = second.get("/state").expect("state");
    assert_eq!(body["turns"], 3, "the session is resumed");
    assert_eq!(body["pid"], second.pid());
    assert_ne!(first.pid(), second.pid());
    assert_eq!(second.post("/turn").1["turns"], 4);
}

#[test]
fn crash_replies_then_exits_with_the_code_asked_for() {
    let scratch = Scratch::new("crash");
    let state = scratch.path("state");
    let state_arg = state.to_str().expect("a UTF-8 path");

    let mut agent = Agent::start(free_port(), &["--state", state_arg, "--boot-ms", "0"]);
    agent.wait_ready();
    let (status, body) = agent.post("/crash?code=7");
    assert_eq!((status, &body["exiting"]), (200, &Value::from(7)));
    assert_eq!(agent.wait_exit().code(), Some(7));

    let mut agent = Agent::start(free_port(), &["--state", state_arg, "--boot-ms", "0"]);
    agent.wait_ready();
    assert_eq!(agent.post("/crash?code=256").0, 400, "not an exit code");
    assert_eq!(agent.post("/crash").0, 200);
    assert_eq!(agent.wait_exit().code(), Some(1), "the default code");
}

#[test]
fn a_hung_agent_stays_alive_but_stops_answering() {
    let scratch = Scratch::new("hang");
    let state = scratch.path("state");
    let mut agent = Agent::start(
        free_port(),
        &[
            "--state",
            state.to_str().expect("a UTF-8 path"),
            "--boot-ms",
            "0",
        ],
    );
    agent.wait_ready();
    assert_eq!(agent.post("/hang").0, 200);

    // The connection is accepted by the kernel, then nothing: a timeout, not a refusal.
    let probe = request(agent.port, "GET", "/healthz", Duration::from_millis(500));
    let error = probe.expect_err("a hung agent does not answer");
    assert!(
        matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ),
        "{error}"
    );
    agent.assert_running();
    assert!(request(agent.port, "GET", "/healthz", Duration::from_millis(200)).is_err());

    // Hung, but a supervisor can still stop it cleanly.
    agent.terminate();
    assert_eq!(agent.wait_exit().code(), Some(0));
}

#[test]
fn sigterm_exits_0_at_once_even_while_booting() {
    let scratch = Scratch::new("sigterm");
    let state = scratch.path("state");
    let mut agent = Agent::start(
        free_port(),
        &[
            "--state",
            state.to_str().expect("a UTF-8 path"),
            "--boot-ms",
            "600000",
        ],
    );
    assert!(agent.next_line().starts_with("listening on"));
    assert_eq!(agent.get("/readyz").expect("answers").0, 503);
    agent.terminate();
    assert_eq!(agent.wait_exit().code(), Some(0));
}

#[test]
fn a_broken_config_exits_78_naming_the_file_and_no_secret() {
    let scratch = Scratch::new("broken");
    let state = scratch.path("state");
    let port = free_port();
    let cases: [(&str, Option<&str>, &str); 6] = [
        ("missing.json", None, "cannot read"),
        ("empty.json", Some(""), "empty"),
        (
            "truncated.json",
            Some(r#"{"port": 1234, "boot"#),
            "line 1 column",
        ),
        ("toml.json", Some("port = 1234\n"), "line 1 column 1"),
        (
            "unknown.json",
            Some(r#"{"port": 1234, "api_key": "hunter2"}"#),
            "api_key: unknown field",
        ),
        (
            "wrong-type.json",
            Some(r#"{"port": "hunter2"}"#),
            "port: invalid type: string, expected u16 at line 1 column 18",
        ),
    ];
    for (name, contents, problem) in cases {
        let config = match contents {
            Some(text) => scratch.file(name, text),
            None => scratch.path(name),
        };
        let config_arg = config.to_str().expect("a UTF-8 path");
        let state_arg = state.to_str().expect("a UTF-8 path");
        let mut agent = Agent::start_with(port, &["--state", state_arg, "--config", config_arg]);
        assert_eq!(agent.wait_exit().code(), Some(78), "{name}");
        let stderr = agent.stderr();
        assert_eq!(stderr.lines().count(), 1, "one line for {name}: {stderr}");
        assert!(stderr.contains(config_arg), "{name}: {stderr}");
        assert!(stderr.contains(problem), "{name}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "{name} leaks a value: {stderr}"
        );
    }
    assert!(
        !state.exists(),
        "a broken config stops the agent before it touches its state"
    );
}

#[test]
fn validate_reports_valid_or_the_issue_as_json() {
    let scratch = Scratch::new("validate");
    let validate = |config: &Path| {
        let output = Command::new(env!("CARGO_BIN_EXE_carapace-test-agent"))
            .arg("--validate")
            .arg("--config")
            .arg(config)
            .output()
            .expect("run --validate");
        let verdict: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
        (output.status.code(), verdict)
    };

    let good = scratch.file("good.json", r#"{"port": 8080, "boot_ms": 10}"#);
    assert_eq!(
        validate(&good),
        (Some(0), serde_json::json!({ "valid": true }))
    );

    let typo = scratch.file(
        "typo.json",
        "{\n  \"port\": 8080,\n  \"gretting\": \"hi\"\n}",
    );
    let (code, verdict) = validate(&typo);
    assert_eq!(code, Some(1));
    assert_eq!(verdict["valid"], false);
    assert_eq!(verdict["issues"][0]["path"], "gretting");
    let message = verdict["issues"][0]["message"].as_str().expect("a message");
    assert!(message.starts_with("unknown field"), "{message}");
    assert!(message.ends_with("at line 3 column 12"), "{message}");

    let wrong = scratch.file("wrong.json", r#"{"port": 8080, "boot_ms": "soon"}"#);
    let (code, verdict) = validate(&wrong);
    assert_eq!(code, Some(1));
    assert_eq!(verdict["issues"][0]["path"], "boot_ms");

    let (code, verdict) = validate(&scratch.path("absent.json"));
    assert_eq!(code, Some(1));
    assert_eq!(verdict["issues"][0]["path"], "");
}

#[test]
fn a_poisoned_state_crashes_on_resume_before_ready() {
    let scratch = Scratch::new("poison");
    let state = scratch.path("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("poison"), "").expect("poison");
    // With boot_ms 0 a healthy agent would be ready at once.
    let mut agent = Agent::start(
        free_port(),
        &[
            "--state",
            state.to_str().expect("a UTF-8 path"),
            "--boot-ms",
            "0",
        ],
    );
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Ok((code, _)) = agent.get("/readyz") {
            assert_eq!(code, 503, "a poisoned agent is never ready");
        }
        if let Some(status) = agent.child.try_wait().expect("poll the agent") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after {PATIENCE:?}"
        );
        std::thread::sleep(POLL);
    };
    assert_eq!(status.code(), Some(1));
    assert!(agent.stderr().contains("poisoned"));
}

#[test]
fn an_unreadable_session_exits_1() {
    let scratch = Scratch::new("garbage");
    let state = scratch.path("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("session.json"), "{\"turns\":").expect("garbage");
    let mut agent = Agent::start(
        free_port(),
        &["--state", state.to_str().expect("a UTF-8 path")],
    );
    assert_eq!(agent.wait_exit().code(), Some(1));
    assert!(agent.stderr().contains("session.json"));
}

#[test]
fn a_spike_grows_resident_memory_and_a_release_gives_it_back() {
    let scratch = Scratch::new("spike");
    let state = scratch.path("state");
    let mut agent = Agent::start(
        free_port(),
        &[
            "--state",
            state.to_str().expect("a UTF-8 path"),
            "--boot-ms",
            "0",
        ],
    );
    agent.wait_ready();
    let before = rss_of(agent.pid());

    let (status, body) = agent.post(&format!("/spike?bytes={}", 64 * MIB));
    assert_eq!(status, 200);
    assert_eq!(body["held_bytes"], 64 * MIB);
    let during = rss_of(agent.pid());
    assert!(during >= before + 60 * MIB, "RSS {before} -> {during}");
    let reported = body["rss_bytes"].as_u64().expect("rss_bytes");
    assert!(reported >= 60 * MIB, "reported RSS {reported}");

    let (status, body) = agent.post("/release");
    assert_eq!((status, &body["held_bytes"]), (200, &Value::from(0)));
    let after = rss_of(agent.pid());
    assert!(
        after + 60 * MIB <= during,
        "RSS {during} -> {after} after release"
    );

    assert_eq!(agent.post("/spike").0, 400);
    assert_eq!(agent.post("/spike?bytes=lots").0, 400);
}

#[test]
fn a_second_agent_on_a_taken_port_exits_1() {
    let scratch = Scratch::new("port");
    let port = free_port();
    let first_state = scratch.path("first");
    let mut first = Agent::start(
        port,
        &[
            "--state",
            first_state.to_str().expect("a UTF-8 path"),
            "--boot-ms",
            "0",
        ],
    );
    first.wait_ready();
    let second_state = scratch.path("second");
    let mut second = Agent::start(
        port,
        &["--state", second_state.to_str().expect("a UTF-8 path")],
    );
    assert_eq!(second.wait_exit().code(), Some(1));
    let stderr = second.stderr();
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} is already in use")),
        "{stderr}"
    );
    assert_eq!(
        first.get("/healthz").expect("the first still serves").0,
        200
    );
}

#[test]
fn bad_requests_get_400_and_unknown_ones_404() {
    let scratch = Scratch::new("http");
    let state = scratch.path("state");
    let mut agent = Agent::start(
        free_port(),
        &[
            "--state",
            state.to_str().expect("a UTF-8 path"),
            "--boot-ms",
            "0",
        ],
    );
    agent.wait_ready();
    let reply = exchange(agent.port, "NONSENSE\r\n\r\n".to_owned(), PATIENCE).expect("a reply");
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert_eq!(agent.get("/nowhere").expect("a reply").0, 404);
    assert_eq!(
        agent.get("/turn").expect("a reply").0,
        404,
        "GET is not a turn"
    );
    assert_eq!(
        agent.get("/healthz").expect("a reply"),
        (200, serde_json::json!({ "ok": true }))
    );
    assert!(agent.next_line().starts_with("listening on 127.0.0.1:"));
    assert_eq!(agent.next_line(), "ready");
}
