//! Carapace's engine: the deterministic, sans-IO core that decides placement, density and
//! recovery for a fleet of long-running agents (OpenClaw gateways).
//!
//! Two state machines, both pure:
//! - [`Supervisor`] runs beside the agents (rung 1): restarts an exited process in place within
//!   a restart budget and escalates when that cannot help.
//! - [`Controller`] runs for the cluster (rungs 2–4): recreates from snapshots, restores the
//!   known-good version, parks and alerts with a post-mortem; places by learned memory under
//!   an overcommit cap; protects nodes with memory watermarks; rolls versions out in waves.
//!
//! Neither reads a clock, spawns a thread, does IO or draws ambient randomness: time is an
//! input ([`Millis`]), randomness comes from a ChaCha stream seeded by [`EngineConfig::seed`],
//! and every collection that is iterated has a defined order. The same inputs at the same times
//! produce the same commands on every machine, which is what lets the simulator validate the
//! very logic production runs, and lets production journals be replayed.

mod command;
pub mod command_map;
mod config;
mod controller;
mod digest;
mod error;
pub mod growth;
mod id;
mod input;
mod postmortem;
mod sorted_map;
mod spec;
mod supervisor;
mod time;
mod timer;

pub use command::{Command, RolloutState, StartReason, StopReason};
pub use config::{
    DensityPolicy, EngineConfig, Limits, PlacementPolicy, RecoveryPolicy, StormPolicy,
    SupervisorPolicy,
};
pub use controller::{
    AgentStatus, AgentView, CONTROLLER_RNG_STREAM, Controller, ControllerStats, Domain,
    InvariantViolation, NodeView,
};
pub use error::{ConfigError, EngineError};
pub use id::{
    AgentId, CommandId, Instance, NodeId, RegionId, RolloutId, SnapshotId, TenantId, Version,
    ZoneId,
};
pub use input::{EscalationReason, Input, Outcome};
pub use postmortem::{
    Candidate, Cause, MemoryPoint, PostMortem, Rung, Timeline, TimelineEntry, TimelineEvent,
};
pub use spec::{AgentSpec, NodeSpec, Priority, RolloutSpec};
pub use supervisor::{Supervisor, SupervisorCommand, SupervisorError, SupervisorInput};
pub use time::Millis;
