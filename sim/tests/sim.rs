//! The simulator's integration tests: one binary (it links once), one module per behaviour.

#[path = "sim/common.rs"]
mod common;
#[path = "sim/determinism.rs"]
mod determinism;
#[path = "sim/events.rs"]
mod events;
#[path = "sim/fuzz.rs"]
mod fuzz;
#[path = "sim/invariants.rs"]
mod invariants;
#[path = "sim/parsing.rs"]
mod parsing;
#[path = "sim/streams.rs"]
mod streams;
#[path = "sim/traces.rs"]
mod traces;
#[path = "sim/validity.rs"]
mod validity;
