//! Pods on this machine: one `carapace supervise --pod DIR` process and the agent it keeps
//! alive, in a directory of their own.
//!
//! The pod directory is the contract between the daemon (`carapace serve`) and a pod's
//! supervisor, and it outlives both: the daemon writes `pod.json` and starts the supervisor;
//! the supervisor appends every event to `events.jsonl` and answers on `supervise.sock`. A
//! daemon killed at any moment finds its pods again by their directories, reconnects and asks
//! for the events it has not seen yet, so an agent keeps running — and restarting in place —
//! while no daemon is there to watch it.
//!
//! ```text
//! pods/<agent>/<instance>/
//!   pod.json          PodSpec (mode 0600: the agent's environment may hold secrets)
//!   events.jsonl      {"seq":N,"event":{...}} lines, appended by the supervisor
//!   supervise.sock    the supervisor's control socket (PodRequest / PodReply lines)
//!   supervise.log     the supervisor's own stderr
//!   agent.log         the agent's stdout and stderr
//!   config.json       the agent's config, written by the daemon from its versioned copy
//!   secrets.json      the agent's secrets (mode 0600), added to its environment
//!   state/            the agent's state directory: what snapshots hold
//! ```

use crate::supervise::Event;
use carapace_engine::{AgentId, Instance, SupervisorPolicy};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything a pod's supervisor needs, written by the daemon before it starts the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    pub agent: AgentId,
    pub instance: Instance,
    pub program: String,
    pub args: Vec<String>,
    /// The agent's environment. Values may be secrets: never logged or echoed.
    pub env: Vec<(String, String)>,
    /// A probe as `carapace supervise --probe` takes it: http://, tcp:// or cmd:.
    pub probe: String,
    pub startup_probe_interval_ms: u64,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub memory_interval_ms: u64,
    pub grace_ms: u64,
    pub policy: SupervisorPolicy,
    /// Run before every start, in the pod directory with the agent's environment: exit 0
    /// means the config is valid. A gateway with a broken config is not started at all.
    pub validate: Option<Vec<String>>,
    /// The cgroup directory the supervisor joins before it starts the agent, so that the
    /// agent and all it spawns inherit the pod's memory limit.
    pub cgroup: Option<PathBuf>,
    /// A node's fence file (see [`fence`]): once the deadline in it passes, the supervisor
    /// stops the agent as if told to. Pods of `carapace serve` have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<PathBuf>,
}

/// The layout of one pod directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDir {
    root: PathBuf,
}

impl PodDir {
    pub fn new(root: impl Into<PathBuf>) -> PodDir {
        PodDir { root: root.into() }
    }

    /// `pods/<agent>/<instance>` under the daemon's data directory.
    pub fn for_instance(pods: &Path, agent: AgentId, instance: Instance) -> PodDir {
        PodDir::new(pods.join(agent.0.to_string()).join(instance.0.to_string()))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn spec(&self) -> PathBuf {
        self.root.join("pod.json")
    }

    pub fn events(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("supervise.sock")
    }

    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervise.log")
    }

    pub fn agent_log(&self) -> PathBuf {
        self.root.join("agent.log")
    }

    /// The agent's secrets, `[[name, value], ...]` (mode 0600), added to its environment.
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets.json")
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn state(&self) -> PathBuf {
        self.root.join("state")
    }

    /// A new owner's config, staged beside the live one until an `adopt` moves it in place.
    pub fn adopted_config(&self) -> PathBuf {
        self.root.join("config.adopt.json")
    }

    /// The supervisor's pid, written once it runs.
    pub fn pid(&self) -> PathBuf {
        self.root.join("supervise.pid")
    }
}

/// One line of `events.jsonl` and of a watch stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Numbered {
    /// From 1, dense per pod.
    pub seq: u64,
    pub event: Event,
}

/// A request on the supervisor's socket: one JSON line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum PodRequest {
    /// Every event after `after`, then each new one as it happens, until either side closes.
    Watch {
        after: u64,
    },
    /// Stop the agent (SIGTERM, SIGKILL after `grace_ms`); the supervisor exits after replying.
    Stop {
        grace_ms: u64,
    },
    /// Snapshot the state directory consistently: the agent's process group is paused
    /// (SIGSTOP) for the copy, so SQLite's db, WAL and shm files are copied as of one instant.
    Snapshot {
        store: PathBuf,
        version: u32,
    },
    Status,
    /// Adopt the running agent (a warm pool's standby) for a new owner: the config staged at
    /// `config.adopt.json` replaces the config file, and the agent counts as ready again once
    /// `probe` (an `http://` URL, sent `POST` with `Authorization: Bearer {token}`) is
    /// answered with neither 401, 403 nor a 5xx.
    Adopt {
        probe: String,
        token: String,
    },
}

/// A reply on the supervisor's socket: one JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum PodReply {
    Event(Numbered),
    Stopped {
        code: Option<i32>,
    },
    Snapshotted {
        files: u32,
        bytes: u64,
    },
    /// The new owner's events begin after `after`.
    Adopted {
        after: u64,
    },
    Status {
        supervisor_pid: u32,
        agent_pid: Option<u32>,
        healthy: bool,
        last_seq: u64,
    },
    Error {
        message: String,
    },
}

/// Reads a pod's spec. Errors name the file.
pub fn read_spec(dir: &PodDir) -> Result<PodSpec, String> {
    let path = dir.spec();
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes a pod's spec, readable by its owner only (the environment may hold secrets).
pub fn write_spec(dir: &PodDir, spec: &PodSpec) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir.root())?;
    let path = dir.spec();
    let temporary = dir.root().join("pod.json.tmp");
    let json = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(&json)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)
}

mod client;
pub mod fence;
mod server;

pub use client::{PodClient, PodClientError};
pub use server::{PodServerError, run_pod};
