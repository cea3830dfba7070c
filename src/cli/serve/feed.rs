//! The daemon's event feed: every decision the engine made and every observation a pod
//! reported, one line each, for `GET /v1/events`, chaos and operators.

use carapace_drivers::supervise::Event;
use carapace_engine::{Command, RolloutState};
use serde::Serialize;

/// One entry of the daemon's event feed (`GET /v1/events`).
#[derive(Clone, Debug, Serialize)]
pub struct FeedEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub agent: Option<String>,
    /// The instance an observation came from or a decision acts on.
    pub instance: Option<u32>,
    /// The agent's tenant: a tenant's token sees its own entries only.
    pub tenant: Option<u32>,
    /// `observation` (what a pod reported) or `decision` (a command of the engine).
    pub kind: FeedKind,
    /// A short machine-readable name: `exited`, `ready`, `start`, `stop`, `alert`, ...
    pub event: &'static str,
    pub what: String,
    /// A pod's observation on its pod's own clock. `at_ms` is when the daemon heard of it,
    /// some milliseconds later and not always as many: the span between two observations
    /// of one pod is exact on this clock (and only between those: each pod has its own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedKind {
    Observation,
    Decision,
}

/// What a pod event tells an operator, if it is worth a line: its name and a description.
pub(super) fn observation(event: &Event) -> Option<(&'static str, String)> {
    Some(match event {
        Event::Spawned { pid, attempt, .. } => (
            "spawned",
            format!("process {pid} spawned (attempt {attempt})"),
        ),
        Event::Ready { after_ms, .. } => ("ready", format!("ready after {after_ms} ms")),
        Event::ProbeFailed { reason, .. } => ("probe_failed", format!("probe failed: {reason}")),
        Event::Exited { code, .. } => ("exited", format!("exited with code {code}")),
        Event::Escalated { reason, .. } => ("escalated", format!("escalated: {reason:?}")),
        Event::ConfigRejected { code, .. } => (
            "config_rejected",
            format!("config refused by its validator (exit {code})"),
        ),
        Event::SpawnFailed { error, .. } => ("spawn_failed", format!("could not spawn: {error}")),
        Event::Snapshotted {
            version,
            files,
            bytes,
            ..
        } => (
            "snapshotted",
            format!("snapshot {version} taken: {files} files, {bytes} bytes"),
        ),
        _ => return None,
    })
}

/// A one-line account of a decision, for the event feed.
pub(super) fn describe(command: &Command) -> String {
    match command {
        Command::Start {
            instance,
            version,
            snapshot,
            reason,
            ..
        } => format!(
            "start {instance} at {version} ({reason:?}){}",
            snapshot.map_or(String::new(), |s| format!(" from {s}"))
        ),
        Command::Stop {
            instance,
            snapshot,
            reason,
            ..
        } => format!(
            "stop {instance} ({reason:?}){}",
            snapshot.map_or(String::new(), |s| format!(", snapshot {s}"))
        ),
        Command::TakeSnapshot {
            instance,
            snapshot,
            known_good,
            ..
        } => format!(
            "snapshot {instance} as {snapshot}{}",
            if *known_good { " (known-good)" } else { "" }
        ),
        Command::Throttle {
            instance,
            memory_bytes_high,
            ..
        } => format!("throttle {instance} to {memory_bytes_high} bytes"),
        Command::Alert(post_mortem) => {
            format!("critical alert: {:?}, parked", post_mortem.cause)
        }
        Command::WarmUp { .. } => "warm up".to_owned(),
        Command::ReportRollout { rollout, state } => match state {
            RolloutState::WaveStarted { wave, agents } => {
                format!("{rollout}: wave {wave} started ({agents} agents)")
            }
            RolloutState::Completed => format!("{rollout}: completed"),
            RolloutState::RolledBack { failed_agent } => {
                format!("{rollout}: rolled back, {failed_agent} failed on the new version")
            }
        },
        Command::Reject { reason } => format!("refused: {reason}"),
        other => format!("{other:?}"),
    }
}
