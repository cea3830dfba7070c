//! The engine's one integration-test binary: every module below drives the real `Controller`
//! and per-node `Supervisor`s through the virtual-time `Fleet` harness.

#[path = "harness/mod.rs"]
mod harness;

/// Rungs 1–4 of the recovery ladder, one scenario per rung.
#[path = "engine/ladder.rs"]
mod ladder;

/// Placement rules: node loss, overcommit cap, tenant spread, version cache, drain, zones.
#[path = "engine/placement.rs"]
mod placement;

/// Memory watermarks: migrate or throttle the fastest riser, evict the lowest priority.
#[path = "engine/density.rs"]
mod density;

/// Rollouts in waves behind a health gate, and automatic rollback.
#[path = "engine/rollout.rs"]
mod rollout;

/// Dependency order (coordinator before workers) and cycle refusal.
#[path = "engine/dependencies.rs"]
mod dependencies;

/// Restart-storm control after a mass node loss.
#[path = "engine/storm.rs"]
mod storm;

/// Bad input returns a typed error and changes nothing.
#[path = "engine/refusals.rs"]
mod refusals;

/// Random input streams: determinism, safety and liveness, by proptest.
#[path = "engine/properties.rs"]
mod properties;
