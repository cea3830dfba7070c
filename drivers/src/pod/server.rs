//! The supervisor's side of a pod: `carapace supervise --pod DIR`.
//!
//! Runs [`supervise`](crate::supervise::supervise) on the pod's spec, appends every event to
//! `events.jsonl`, and serves the control socket. After an escalation the supervisor stays up,
//! agent stopped, until the controller stops the pod: the pod directory then still answers
//! for the instance the controller is replacing.

use super::{Numbered, PodDir, PodReply, PodRequest, PodSpec, read_spec};
use crate::probe::Probe;
use crate::process::ProcessSpec;
use crate::supervise::{Control, Event, Outcome, SuperviseConfig, supervise};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Events kept in memory for watchers that reconnect; older ones are read from the file.
const BACKLOG_EVENTS: usize = 4096;
/// A request line longer than this is refused: the socket is local, but still bounded.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Why a pod could not be run.
#[derive(Debug, thiserror::Error)]
pub enum PodServerError {
    #[error("{0}")]
    Spec(String),
    #[error("pod {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error(transparent)]
    Supervise(#[from] crate::supervise::SuperviseError),
}

/// Runs the pod in `dir` until the controller stops it (or a signal does). Returns how
/// supervision ended.
pub async fn run_pod(
    dir: PodDir,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<Outcome, PodServerError> {
    let spec = read_spec(&dir).map_err(PodServerError::Spec)?;
    let io = |source| PodServerError::Io {
        dir: dir.root().display().to_string(),
        source,
    };
    // One supervisor per pod, ever at once: a daemon that restarts between launching a pod
    // and seeing its supervisor's pid may launch it again, and the second must step aside.
    let Some(_ownership) = own(&dir).map_err(io)? else {
        return Ok(Outcome::Stopped);
    };
    if let Some(cgroup) = &spec.cgroup {
        // Joined before the agent exists, so everything the agent spawns inherits the limit.
        std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string()).map_err(io)?;
    }
    // Written whole and renamed into place: a reader never sees an empty pid file, which it
    // would take for a supervisor that died.
    let pid_tmp = dir.root().join("supervise.pid.tmp");
    std::fs::write(&pid_tmp, std::process::id().to_string()).map_err(io)?;
    std::fs::rename(&pid_tmp, dir.pid()).map_err(io)?;
    std::fs::create_dir_all(dir.state()).map_err(io)?;
    let log = Arc::new(Mutex::new(EventLog::open(&dir).map_err(io)?));
    let _ = std::fs::remove_file(dir.socket());
    let listener = UnixListener::bind(dir.socket()).map_err(io)?;
    let (control, requests) = mpsc::channel(16);
    let accept = tokio::spawn(serve_socket(
        listener,
        dir.clone(),
        log.clone(),
        control.clone(),
    ));
    let config = supervise_config(&spec, &dir)?;
    let emit = {
        let log = log.clone();
        move |event| log.lock().expect("event log lock").append(event)
    };
    // A node's pod also stops once its node's fence passes (the node is gone or cut off).
    let fence = spec.fence.clone();
    let shutdown = async move {
        match fence {
            Some(path) => tokio::select! {
                () = shutdown => {}
                () = super::fence::passed(&path, FENCE_CHECK) => {
                    tracing::warn!("the node's fence passed: stopping the agent");
                }
            },
            None => shutdown.await,
        }
    };
    tokio::pin!(shutdown);
    let supervised = supervise(config, emit, requests);
    tokio::pin!(supervised);
    let outcome = tokio::select! {
        outcome = &mut supervised => outcome?,
        () = &mut shutdown => {
            let (reply, _) = oneshot::channel();
            let _ = control.send(Control::Stop { grace: Duration::from_millis(spec.grace_ms), reply }).await;
            supervised.await?
        }
    };
    if let Outcome::Escalated(_) = outcome {
        linger(&log, &mut shutdown).await;
    }
    accept.abort();
    let _ = std::fs::remove_file(dir.socket());
    Ok(outcome)
}

/// How often a pod looks at its node's fence: a small part of any lease's margin.
const FENCE_CHECK: Duration = Duration::from_millis(100);

/// Takes the pod's lock for as long as the returned guard lives; `None` when another
/// supervisor holds it.
fn own(dir: &PodDir) -> std::io::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.root().join("supervise.lock"))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(guard) => Ok(Some(guard)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(std::io::Error::from(errno)),
    }
}

/// After an escalation: the agent is down; answer on the socket until a stop (or a signal).
async fn linger(
    log: &Arc<Mutex<EventLog>>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) {
    let (stopped, mut requests) = mpsc::channel(16);
    log.lock().expect("event log lock").redirect(stopped);
    loop {
        tokio::select! {
            () = shutdown.as_mut() => return,
            request = requests.recv() => match request {
                None => return,
                Some(Control::Stop { reply, .. }) => {
                    let _ = reply.send(None);
                    return;
                }
                Some(Control::Snapshot { reply, .. }) => {
                    let _ = reply.send(Err("the agent is stopped after an escalation".into()));
                }
                Some(Control::Status { reply }) => {
                    let _ = reply.send(crate::supervise::Status { agent_pid: None, healthy: false });
                }
                Some(Control::Adopt { reply, .. }) => {
                    let _ = reply.send(Err("the agent is stopped after an escalation".into()));
                }
            }
        }
    }
}

fn supervise_config(spec: &PodSpec, dir: &PodDir) -> Result<SuperviseConfig, PodServerError> {
    let probe: Probe = spec
        .probe
        .parse()
        .map_err(|e| PodServerError::Spec(format!("{}: probe: {e}", dir.spec().display())))?;
    let mut env = spec.env.clone();
    env.extend(read_secrets(dir)?);
    let process = ProcessSpec {
        program: spec.program.clone(),
        args: spec.args.clone(),
        env: env.clone(),
        dir: Some(dir.root().to_owned()),
        log: Some(dir.agent_log()),
    };
    let validate = spec.validate.as_ref().and_then(|words| {
        let (program, args) = words.split_first()?;
        Some(ProcessSpec {
            program: program.clone(),
            args: args.to_vec(),
            env: env.clone(),
            dir: Some(dir.root().to_owned()),
            log: Some(dir.agent_log()),
        })
    });
    Ok(SuperviseConfig {
        process,
        probe,
        startup_probe_interval: Duration::from_millis(spec.startup_probe_interval_ms),
        probe_interval: Duration::from_millis(spec.probe_interval_ms),
        probe_timeout: Duration::from_millis(spec.probe_timeout_ms),
        memory_interval: Duration::from_millis(spec.memory_interval_ms),
        grace: Duration::from_millis(spec.grace_ms),
        policy: spec.policy.clone(),
        validate,
        config_file: Some(dir.config()),
        state: Some(dir.state()),
        cgroup: spec
            .cgroup
            .as_ref()
            .and_then(|path| crate::cgroup::PodCgroup::at(path.clone())),
    })
}

/// The secrets the daemon handed the pod, if any. Errors name the file, never a value.
fn read_secrets(dir: &PodDir) -> Result<Vec<(String, String)>, PodServerError> {
    let path = dir.secrets();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| {
            PodServerError::Spec(format!(
                "{}: not a list of [name, value] pairs",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(PodServerError::Io {
            dir: dir.root().display().to_string(),
            source,
        }),
    }
}

/// The pod's numbered events: appended to the file, kept in a bounded backlog, broadcast to
/// watchers.
struct EventLog {
    file: std::fs::File,
    path: std::path::PathBuf,
    last_seq: u64,
    backlog: std::collections::VecDeque<Numbered>,
    live: broadcast::Sender<Numbered>,
    /// Where control requests go once supervision has ended (after an escalation).
    redirect: Option<mpsc::Sender<Control>>,
}

impl EventLog {
    fn open(dir: &PodDir) -> std::io::Result<EventLog> {
        let path = dir.events();
        // A supervisor restarted on the same pod continues the numbering.
        let last_seq = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| serde_json::from_str::<Numbered>(l).ok())
                .map(|n| n.seq)
                .max()
                .unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let (live, _) = broadcast::channel(BACKLOG_EVENTS);
        Ok(EventLog {
            file,
            path,
            last_seq,
            backlog: std::collections::VecDeque::new(),
            live,
            redirect: None,
        })
    }

    fn append(&mut self, event: Event) {
        self.last_seq += 1;
        let numbered = Numbered {
            seq: self.last_seq,
            event,
        };
        let mut line = serde_json::to_vec(&numbered).expect("an event serialises");
        line.push(b'\n');
        // A full disk must not stop supervision: the agent matters more than its log.
        if let Err(error) = self.file.write_all(&line) {
            tracing::warn!(path = %self.path.display(), %error, "cannot append a pod event");
        }
        if self.backlog.len() == BACKLOG_EVENTS {
            self.backlog.pop_front();
        }
        self.backlog.push_back(numbered.clone());
        let _ = self.live.send(numbered);
    }

    fn redirect(&mut self, to: mpsc::Sender<Control>) {
        self.redirect = Some(to);
    }

    /// Events after `after`, from the backlog or, when it no longer reaches back, the file.
    fn since(&self, after: u64) -> Vec<Numbered> {
        let backlog_starts = self.backlog.front().map_or(self.last_seq + 1, |n| n.seq);
        if after + 1 >= backlog_starts {
            return self
                .backlog
                .iter()
                .filter(|n| n.seq > after)
                .cloned()
                .collect();
        }
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Numbered>(l).ok())
            .filter(|n| n.seq > after)
            .collect()
    }
}

async fn serve_socket(
    listener: UnixListener,
    dir: PodDir,
    log: Arc<Mutex<EventLog>>,
    control: mpsc::Sender<Control>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            dir.clone(),
            log.clone(),
            control.clone(),
        ));
    }
}

async fn serve_connection(
    stream: UnixStream,
    dir: PodDir,
    log: Arc<Mutex<EventLog>>,
    control: mpsc::Sender<Control>,
) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.len() > MAX_REQUEST_BYTES {
            let _ = send(&mut write, &error("request too long")).await;
            return;
        }
        let request: PodRequest = match serde_json::from_str(&line) {
            Ok(request) => request,
            Err(e) => {
                let _ = send(&mut write, &error(&format!("bad request: {e}"))).await;
                continue;
            }
        };
        let reply = match request {
            PodRequest::Watch { after } => {
                watch(&mut write, &log, after).await;
                return;
            }
            PodRequest::Stop { grace_ms } => {
                let (reply, answer) = oneshot::channel();
                let grace = Duration::from_millis(grace_ms);
                ask(&log, &control, Control::Stop { grace, reply }).await;
                match answer.await {
                    Ok(code) => PodReply::Stopped { code },
                    // Supervision already ended: the agent is down.
                    Err(_) => PodReply::Stopped { code: None },
                }
            }
            PodRequest::Snapshot { store, version } => {
                let (reply, answer) = oneshot::channel();
                ask(
                    &log,
                    &control,
                    Control::Snapshot {
                        store,
                        version,
                        reply,
                    },
                )
                .await;
                match answer.await {
                    Ok(Ok((files, bytes))) => PodReply::Snapshotted { files, bytes },
                    Ok(Err(message)) => PodReply::Error { message },
                    Err(_) => error("the supervisor ended before the snapshot"),
                }
            }
            PodRequest::Adopt { probe, token } => {
                match Probe::authorized(&probe, token) {
                    Err(message) => PodReply::Error { message },
                    Ok(probe) => {
                        let staged = dir.adopted_config();
                        let staged = staged.exists().then_some(staged);
                        let (reply, answer) = oneshot::channel();
                        // Events up to here are the standby's; the new owner reads from here.
                        let after = log.lock().expect("event log lock").last_seq;
                        ask(
                            &log,
                            &control,
                            Control::Adopt {
                                staged,
                                probe,
                                reply,
                            },
                        )
                        .await;
                        match answer.await {
                            Ok(Ok(())) => PodReply::Adopted { after },
                            Ok(Err(message)) => PodReply::Error { message },
                            Err(_) => error("the supervisor is ending"),
                        }
                    }
                }
            }
            PodRequest::Status => {
                let (reply, answer) = oneshot::channel();
                ask(&log, &control, Control::Status { reply }).await;
                let last_seq = log.lock().expect("event log lock").last_seq;
                match answer.await {
                    Ok(status) => PodReply::Status {
                        supervisor_pid: std::process::id(),
                        agent_pid: status.agent_pid,
                        healthy: status.healthy,
                        last_seq,
                    },
                    Err(_) => error("the supervisor is ending"),
                }
            }
        };
        if send(&mut write, &reply).await.is_err() {
            return;
        }
    }
}

/// Sends a control request to whoever handles them now: the supervision loop, or the
/// lingering loop after an escalation.
async fn ask(log: &Arc<Mutex<EventLog>>, control: &mpsc::Sender<Control>, request: Control) {
    let redirect = log.lock().expect("event log lock").redirect.clone();
    let target = redirect.as_ref().unwrap_or(control);
    let _ = target.send(request).await;
}

async fn watch(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    log: &Arc<Mutex<EventLog>>,
    after: u64,
) {
    // Subscribe before reading the backlog, so no event falls between the two.
    let (mut live, backlog) = {
        let log = log.lock().expect("event log lock");
        (log.live.subscribe(), log.since(after))
    };
    let mut sent = after;
    for numbered in backlog {
        sent = numbered.seq;
        if send(write, &PodReply::Event(numbered)).await.is_err() {
            return;
        }
    }
    loop {
        match live.recv().await {
            Ok(numbered) if numbered.seq <= sent => {}
            Ok(numbered) => {
                sent = numbered.seq;
                if send(write, &PodReply::Event(numbered)).await.is_err() {
                    return;
                }
            }
            // A watcher too slow to keep up is cut off; it reconnects from its last seq.
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn error(message: &str) -> PodReply {
    PodReply::Error {
        message: message.to_owned(),
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    reply: &PodReply,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("a reply serialises");
    line.push(b'\n');
    write.write_all(&line).await
}
