//! Carapace's discrete-event simulator.
//!
//! It replays crash, hang, config-corruption and memory-spike processes (seeded, or from real
//! traces) against a simulated fleet, and drives the very engine production runs through its
//! public API: the simulator owns time, the world and the faults; the engine owns every
//! decision. The same scenario and seed give a byte-identical report.

mod class_name;
mod dist;
pub mod explore;
mod measures;
mod queue;
pub mod report;
mod rng;
pub mod scenario;
mod sim;
pub mod trace;
mod world;

pub use class_name::ClassName;
pub use measures::{Bucket, Fault, IncidentLog, IncidentRecord, Measures};
pub use queue::EventQueue;
pub use rng::{Component, Streams};
pub use sim::{EVENT_KINDS, RunStats, Simulation};
pub use world::naive_agents_per_node;
