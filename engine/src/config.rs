//! Policy: every knob the engine's decisions depend on, with defaults that hold the recovery
//! SLOs on real OpenClaw timings (~13 s cold boot, ~19 s after kill -9, ~1 GB RSS).
//!
//! Ratios are `f64` for the operator's sake; the engine turns them into integer byte caps once,
//! when a node joins, so that hot paths compare integers.

use serde::{Deserialize, Serialize};

/// Everything the [`Controller`](crate::Controller) and [`Supervisor`](crate::Supervisor) need.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Seeds every random choice the engine makes (restart jitter).
    pub seed: u64,
    pub limits: Limits,
    pub supervisor: SupervisorPolicy,
    pub recovery: RecoveryPolicy,
    pub placement: PlacementPolicy,
    pub density: DensityPolicy,
    pub storm: StormPolicy,
}

/// Bounds on everything the engine stores; input beyond them is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Agent ids must be below this.
    pub max_agents: u32,
    /// Node ids must be below this.
    pub max_nodes: u32,
    /// Entries kept in one agent's incident timeline; older ones are dropped and counted.
    pub timeline_entries: u16,
    /// Direct dependencies one agent may name.
    pub max_dependencies: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_agents: 4_000_000,
            max_nodes: 100_000,
            timeline_entries: 48,
            max_dependencies: 64,
        }
    }
}

/// Rung 1: the node-side supervisor's restart budget, in the manner of OTP supervisors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorPolicy {
    /// Restarts allowed within `restart_period_ms` before escalating.
    pub restart_intensity: u32,
    pub restart_period_ms: u64,
    /// Delay before the second restart in a row; doubles per restart. The first is immediate.
    pub backoff_initial_ms: u64,
    /// Ceiling on the backoff. Kept far below the recovery SLO: a five-minute back-off (as in
    /// Kubernetes' CrashLoopBackOff) alone would break a 60 s target.
    pub backoff_max_ms: u64,
    /// An exit this soon after becoming healthy (or before ever becoming healthy) is "early".
    pub early_exit_ms: u64,
    /// Early exits in a row, after a restart, that make a crash loop: restarting the same
    /// state will not help. One by default: a gateway that dies again right after resuming its
    /// session has bad state, and each extra attempt costs a ~15 s boot of the recovery SLO.
    pub crash_loop_exits: u32,
    /// Failed probes in a row, process alive, that make a hang.
    pub hang_probe_failures: u32,
}

impl Default for SupervisorPolicy {
    fn default() -> Self {
        SupervisorPolicy {
            restart_intensity: 3,
            restart_period_ms: 300_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 4_000,
            early_exit_ms: 30_000,
            crash_loop_exits: 1,
            hang_probe_failures: 3,
        }
    }
}

/// Rungs 2–4 and the timers that keep every desired agent under a deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryPolicy {
    /// Rung 1 must bring the agent back (probe ok) within this, or rung 2 takes over.
    pub restart_deadline_ms: u64,
    /// A started instance (provision, recreate, restore, migration) must be healthy within this.
    pub start_deadline_ms: u64,
    /// An agent waiting for capacity or budget is alerted after this.
    pub queue_deadline_ms: u64,
    /// Healthy this long after a start marks the version known-good and closes the incident.
    pub known_good_dwell_ms: u64,
    /// A failure this soon after the agent was healthy again means the last rung did not
    /// work, and the ladder climbs; a later one (still within the dwell) starts afresh.
    pub relapse_window_ms: u64,
    /// A node silent this long after its last heartbeat is lost. Only applies to nodes that
    /// have sent a heartbeat.
    pub heartbeat_timeout_ms: u64,
    /// Snapshot period of a running agent's state directory.
    pub snapshot_interval_ms: u64,
    /// Waiting for a stop to complete; after this the stop is assumed done (the node fences).
    pub stop_deadline_ms: u64,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        RecoveryPolicy {
            restart_deadline_ms: 45_000,
            start_deadline_ms: 90_000,
            queue_deadline_ms: 600_000,
            known_good_dwell_ms: 120_000,
            relapse_window_ms: 60_000,
            heartbeat_timeout_ms: 15_000,
            snapshot_interval_ms: 3_600_000,
            stop_deadline_ms: 30_000,
        }
    }
}

/// Where new instances go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementPolicy {
    /// Sum of memory limits on a node ≤ this × its capacity.
    pub overcommit_ratio: f64,
    /// Safety margin added to observed usage in the learned reservation.
    pub reservation_margin: f64,
    /// Half-life of the reservation's decay towards observed usage.
    pub reservation_half_life_ms: u64,
    /// Concurrent starts one node accepts (booting gateways compete for CPU).
    pub max_starts_per_node: u16,
    /// Score weights. Headroom is in permille of capacity; penalties are per agent.
    pub weight_headroom: i64,
    pub penalty_same_tenant_node: i64,
    pub penalty_same_tenant_zone: i64,
    pub bonus_version_cached: i64,
    pub penalty_avoided_node: i64,
    /// Blast-radius limit: no zone holds more than this share of a tenant's agents while
    /// another zone has room. Past it a zone is scored so low that it is only used when
    /// nothing else fits: losing a zone should never take most of a tenant with it.
    pub max_tenant_share_per_zone: f64,
    pub penalty_over_blast_radius: i64,
    /// Blank gateways kept booted on every node, so a new agent attaches to one in a second or
    /// two instead of booting for ~13 s. Each holds `warm_instance_bytes`. 0 turns it off.
    pub warm_pool_per_node: u16,
    pub warm_instance_bytes: u64,
    pub bonus_warm_instance: i64,
    /// Agents of a draining node on the move at once: a drain empties the node without
    /// taking all of its agents down together.
    pub drain_concurrency: u16,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        PlacementPolicy {
            overcommit_ratio: 3.0,
            reservation_margin: 0.15,
            reservation_half_life_ms: 3_600_000,
            max_starts_per_node: 4,
            weight_headroom: 1,
            penalty_same_tenant_node: 150,
            penalty_same_tenant_zone: 10,
            bonus_version_cached: 40,
            penalty_avoided_node: 400,
            max_tenant_share_per_zone: 0.5,
            penalty_over_blast_radius: 100_000,
            warm_pool_per_node: 0,
            warm_instance_bytes: 1 << 30,
            bonus_warm_instance: 60,
            drain_concurrency: 2,
        }
    }
}

/// Active protection of nodes against memory spikes, as fractions of physical capacity.
///
/// Defaults: an OpenClaw gateway grows ~25% in its first half minute and a replacement needs
/// ~15–20 s to boot elsewhere, so action must start well before the kernel's OOM killer would.
/// At 80% no new work lands; at 88% the fastest-rising agent moves away (or is throttled); at
/// 94% the lowest-priority agent is evicted, leaving ~6% for the spike still in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DensityPolicy {
    pub watermark_stop_placing: f64,
    pub watermark_migrate: f64,
    pub watermark_evict: f64,
    /// A node that was relieved is left alone this long, so one spike causes one move.
    pub relief_cooldown_ms: u64,
    /// A throttled agent's memory.high, as a fraction of its usage when throttled (≥ 1).
    pub throttle_headroom: f64,
}

impl Default for DensityPolicy {
    fn default() -> Self {
        DensityPolicy {
            watermark_stop_placing: 0.80,
            watermark_migrate: 0.88,
            watermark_evict: 0.94,
            relief_cooldown_ms: 20_000,
            throttle_headroom: 1.02,
        }
    }
}

/// A fleet-wide brake on starts so that a mass failure does not stampede nodes or APIs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StormPolicy {
    /// Instances booting at once, fleet-wide.
    pub max_concurrent_starts: u32,
    /// Sustained starts per second (token bucket rate).
    pub starts_per_second: f64,
    /// Bucket depth: starts allowed in a burst.
    pub burst: u32,
    /// Random delay added when the bucket runs dry, so queued work does not retry in lockstep.
    pub jitter_ms: u64,
    /// How often agents that found no room are offered placement again.
    pub placement_retry_ms: u64,
}

impl Default for StormPolicy {
    fn default() -> Self {
        StormPolicy {
            max_concurrent_starts: 2_000,
            starts_per_second: 200.0,
            burst: 400,
            jitter_ms: 200,
            placement_retry_ms: 5_000,
        }
    }
}

impl EngineConfig {
    /// Checks the relations between knobs; each error names the field.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        use crate::ConfigError as E;
        let p = &self.placement;
        let d = &self.density;
        let s = &self.storm;
        let finite_positive = |v: f64| v.is_finite() && v > 0.0;
        if !(finite_positive(p.overcommit_ratio) && p.overcommit_ratio <= 100.0) {
            return Err(E::new("placement.overcommit_ratio", "must be in (0, 100]"));
        }
        if !(p.reservation_margin.is_finite() && (0.0..=10.0).contains(&p.reservation_margin)) {
            return Err(E::new("placement.reservation_margin", "must be in [0, 10]"));
        }
        if !(p.max_tenant_share_per_zone > 0.0 && p.max_tenant_share_per_zone <= 1.0) {
            return Err(E::new(
                "placement.max_tenant_share_per_zone",
                "must be in (0, 1]",
            ));
        }
        if p.drain_concurrency == 0 {
            return Err(E::new("placement.drain_concurrency", "must be at least 1"));
        }
        if p.warm_pool_per_node > 64 {
            return Err(E::new("placement.warm_pool_per_node", "must be at most 64"));
        }
        if p.max_starts_per_node == 0 {
            return Err(E::new(
                "placement.max_starts_per_node",
                "must be at least 1",
            ));
        }
        let ordered = 0.0 < d.watermark_stop_placing
            && d.watermark_stop_placing <= d.watermark_migrate
            && d.watermark_migrate <= d.watermark_evict
            && d.watermark_evict <= 1.0;
        if !ordered {
            return Err(E::new(
                "density",
                "watermarks must satisfy 0 < stop_placing <= migrate <= evict <= 1",
            ));
        }
        if !(d.throttle_headroom.is_finite() && (1.0..=4.0).contains(&d.throttle_headroom)) {
            return Err(E::new("density.throttle_headroom", "must be in [1, 4]"));
        }
        if s.max_concurrent_starts == 0 || s.burst == 0 {
            return Err(E::new(
                "storm",
                "max_concurrent_starts and burst must be at least 1",
            ));
        }
        if !(finite_positive(s.starts_per_second) && s.starts_per_second <= 1e6) {
            return Err(E::new("storm.starts_per_second", "must be in (0, 1e6]"));
        }
        if s.placement_retry_ms == 0 {
            return Err(E::new("storm.placement_retry_ms", "must be at least 1"));
        }
        let sup = &self.supervisor;
        if sup.restart_intensity == 0 || sup.restart_intensity > 1000 {
            return Err(E::new(
                "supervisor.restart_intensity",
                "must be in [1, 1000]",
            ));
        }
        if sup.crash_loop_exits == 0 || sup.hang_probe_failures == 0 {
            return Err(E::new(
                "supervisor",
                "crash_loop_exits and hang_probe_failures must be at least 1",
            ));
        }
        if sup.backoff_initial_ms > sup.backoff_max_ms {
            return Err(E::new(
                "supervisor.backoff_initial_ms",
                "must not exceed backoff_max_ms",
            ));
        }
        let r = &self.recovery;
        if r.snapshot_interval_ms == 0 || r.known_good_dwell_ms == 0 {
            return Err(E::new(
                "recovery",
                "snapshot_interval_ms and known_good_dwell_ms must be at least 1",
            ));
        }
        if self.limits.timeline_entries == 0 {
            return Err(E::new("limits.timeline_entries", "must be at least 1"));
        }
        Ok(())
    }
}
