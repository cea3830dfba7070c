//! Swarm testing with shrinking, as FoundationDB's simulation and TigerBeetle's VOPR do.
//!
//! Each seed picks its own variant of a scenario: some fault classes off entirely, the others
//! scaled, node failures on or off, the engine's knobs moved within bounds ([`swarm`]). A run
//! is judged by safety (the engine's invariants and the world's "never two live copies",
//! checked continuously), liveness (faults stop a quiet tail before the end; by then every
//! recoverable agent must run again, or be in a move the engine began after it served in the
//! tail) and the engine's refusals ([`check`]). A failing run is
//! made small while it still fails the same way ([`shrink`]), and a seed run twice must give
//! the same command stream ([`check_determinism`]).
//!
//! Everything here is deterministic: the same base scenario and seed give the same variant,
//! verdict and minimal scenario on every machine.

mod check;
mod shrink;
mod swarm;

pub use check::{
    Checks, Divergence, Failure, FailureKind, TimelineEntry, Verdict, check, check_determinism,
    timeline,
};
pub use shrink::{Shrunk, shrink};
pub use swarm::swarm;
