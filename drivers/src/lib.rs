//! Carapace's real drivers: what carries the engine's decisions out on a machine.
//!
//! The engine is pure; this crate owns the clock, processes, probes and `/proc`. The first
//! driver is the in-pod supervisor (`carapace supervise`): one agent process kept alive by the
//! engine's [`Supervisor`](carapace_engine::Supervisor) state machine — rung 1 of the ladder,
//! local, so an agent keeps restarting through a controller outage.

// Drivers measure real time and spawn real processes: the determinism lints bind the engine
// and the simulator, not this crate.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod cgroup;
pub mod clock;
pub mod pod;
pub mod probe;
pub mod process;
pub mod snapshot;
pub mod supervise;
