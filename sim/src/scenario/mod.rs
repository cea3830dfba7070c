//! Scenario files: the fleet, its workload and faults, the driver's latencies, the engine's
//! policy and the SLOs a run is judged by. Parsed once into types that cannot hold an invalid
//! value; everything downstream trusts them.

pub mod knob;
mod load;
mod units;

pub use load::{ScenarioError, ScenarioProblem, load_file, parse_str};
pub use units::{Bytes, Span};

use carapace_engine::EngineConfig;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One simulation scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Names the report directory.
    pub name: String,
    /// Seeds every random draw of the run (the engine's policy seed is derived from it).
    pub seed: u64,
    /// Virtual time simulated.
    pub duration: Span,
    /// Measures ignore incidents that start before this, so the fleet's first boot is not
    /// counted as an outage.
    #[serde(default = "defaults::warmup")]
    pub warmup: Span,
    pub fleet: Fleet,
    #[serde(default)]
    pub node_faults: NodeFaults,
    /// Failures of the leading controller (`serve --etcd`): no decision is made until a
    /// standby leads. Off by default (one controller that never fails).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_faults: Option<ControllerFaults>,
    #[serde(default)]
    pub latency: Latency,
    #[serde(default)]
    pub probes: Probes,
    /// Engine policy: exactly the engine's config, so what was tuned here is what ships.
    #[serde(default)]
    #[schemars(with = "serde_json::Value")]
    pub policy: EngineConfig,
    #[serde(default)]
    pub slo: Slo,
    /// Agents created and removed while the run goes, to measure provisioning.
    #[serde(default)]
    pub churn: Churn,
    #[serde(default)]
    pub rollouts: Vec<RolloutPlan>,
    /// Faults replayed at fixed times from a CSV event trace (path relative to the scenario
    /// file), on top of the seeded fault processes.
    #[serde(default)]
    pub event_trace: Option<String>,
    #[serde(default)]
    pub report: ReportOptions,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub nodes: u32,
    /// Zones the nodes are spread over, round-robin.
    #[serde(default = "defaults::one")]
    pub zones: u32,
    #[serde(default = "defaults::one")]
    pub regions: u32,
    /// Physical memory per node available to agents.
    pub node_memory: Bytes,
    /// Memory of one idle warm-pool instance (see `policy.placement.warm_pool_per_node`).
    #[serde(default = "defaults::warm_instance_memory")]
    pub warm_instance_memory: Bytes,
    pub tenants: u32,
    pub classes: Vec<AgentClass>,
}

/// Agents that share a memory model, fault rates and client load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentClass {
    pub name: String,
    pub agents: u32,
    #[serde(default)]
    pub priority: u8,
    pub memory_limit: Bytes,
    /// What the operator expects it to use: the placement's starting reservation.
    pub memory_request: Bytes,
    pub memory: MemoryModel,
    #[serde(default)]
    pub faults: AgentFaults,
    #[serde(default)]
    pub clients: Clients,
}

/// Memory of one agent: baseline + growth since start + spikes, or a replayed trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryModel {
    /// Right after boot.
    pub baseline: Bytes,
    /// Baselines vary per agent by up to ± this fraction (seeded).
    #[serde(default)]
    pub baseline_jitter: f64,
    /// Slow growth (leaks, session history) per day of uptime; a restart resets it.
    #[serde(default)]
    pub growth_per_day: Bytes,
    /// Spikes per agent per day (Poisson).
    #[serde(default)]
    pub spikes_per_day: f64,
    #[serde(default)]
    pub spike_size: Bytes,
    #[serde(default = "defaults::spike_duration")]
    pub spike_duration: Span,
    /// A spike builds up over this long (a large task loading, a context growing) rather
    /// than landing in one step.
    #[serde(default = "defaults::spike_ramp")]
    pub spike_ramp: Span,
    /// Replay a memory trace instead of the model's spikes and growth.
    #[serde(default)]
    pub trace: Option<MemoryTrace>,
}

/// A memory trace mapped onto this class's agents by seeded assignment and phase offset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryTrace {
    /// Path, relative to the scenario file.
    pub path: String,
    pub format: TraceFormat,
    /// For traces of fractions of a limit: the limit the fractions are of (default: the
    /// class's memory_limit).
    #[serde(default)]
    pub scale_to: Option<Bytes>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TraceFormat {
    /// `time_ms,series,memory_bytes`.
    Csv,
    /// Alibaba GenTD26 `pod_memory_util_anon.csv` (or the .tar.gz holding it): fraction of the
    /// limit per pod, 57 s cadence.
    AlibabaGentd26,
    /// Bitbrains GWA-T-12 VM file: absolute memory in KB, 5 min cadence.
    Bitbrains,
}

/// Fault rates per agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AgentFaults {
    /// Process crashes per day (Poisson).
    pub crashes_per_day: f64,
    /// Hangs per day: the process lives, its probe fails.
    pub hangs_per_day: f64,
    /// Config truncations per day (the agent rewrites its own config and restarts).
    pub config_corruptions_per_day: f64,
    /// Chance that a crash leaves the session state poisoned: every start from it crashes
    /// right after resuming, until a known-good state is restored.
    pub crash_poisons_state: f64,
}

/// Client requests per agent, to tell whether an outage was noticed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Clients {
    pub requests_per_hour: f64,
    /// A request waits this long for an answer before its client notices.
    pub timeout: Span,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            requests_per_hour: 12.0,
            timeout: Span(carapace_engine::Millis(30_000)),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct NodeFaults {
    /// Machine failures per node per day (Poisson).
    pub failures_per_node_per_day: f64,
    /// How long a failed machine stays away before it rejoins.
    pub repair_time: Span,
    /// Node losses at fixed times, by node index.
    pub scheduled: Vec<ScheduledNodeLoss>,
    /// Nodes hold etcd leases (`carapace node`): a failed node is lost when its lease
    /// expires, not after `policy.recovery.heartbeat_timeout_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<NodeLease>,
}

/// A node's etcd lease, as `carapace node`'s `[lease]` sets it. A node fails at a time
/// independent of its renewals, so its last renewal was a uniform part of `renew_every` before;
/// etcd expires the lease `ttl` after that renewal, at its next expiry check (every
/// `expiry_check`, 500 ms in etcd 3.4). Detection is `ttl − U·renew_every + V·expiry_check`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeLease {
    pub ttl: Span,
    pub renew_every: Span,
    #[serde(default = "defaults::expiry_check")]
    pub expiry_check: Span,
}

/// The leading controller fails (Poisson, and at fixed times); a standby leads once etcd
/// expires the leader's lease — `leader_ttl` after its last renewal, a uniform part of
/// `renew_every` before the failure — and has rebuilt the engine from the journal
/// (`rebuild`). Takeover is `leader_ttl − U·renew_every + rebuild`. Meanwhile pods keep
/// running and restarting in place (rung 1 is the nodes'); what the controller would have
/// learned waits for the new leader, which learns it all at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControllerFaults {
    #[serde(default)]
    pub failures_per_day: f64,
    #[serde(default)]
    pub scheduled: Vec<Span>,
    pub leader_ttl: Span,
    pub renew_every: Span,
    #[serde(default)]
    pub rebuild: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduledNodeLoss {
    pub at: Span,
    pub node: u32,
}

/// A latency distribution.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum Dist {
    Constant {
        value: Span,
    },
    Uniform {
        min: Span,
        max: Span,
    },
    /// Log-normal, given by its median and 90th percentile.
    LogNormal {
        median: Span,
        p90: Span,
    },
    /// As observed: the minimum, the nine deciles and the maximum, ascending, drawn by linear
    /// interpolation between neighbours. For a phase no two-parameter shape fits, such as a
    /// boot that a probe sees at one of two ticks.
    Deciles {
        deciles: [Span; 11],
    },
}

/// The driver's latencies; defaults calibrated on real OpenClaw gateways on 2-core machines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Latency {
    /// Controller decision to the node acting on it.
    pub schedule: Dist,
    /// Fetching a version a node has not run before.
    pub version_pull: Dist,
    /// Process start to ready, fresh.
    pub boot: Dist,
    /// Process start to ready after a crash (stale locks are reclaimed first).
    pub boot_after_crash: Dist,
    pub snapshot_restore: Dist,
    /// A new agent taking a warm-pool instance: loading its config, up to ready.
    pub warm_attach: Dist,
    /// SIGTERM to exit, plus snapshot when asked.
    pub stop: Dist,
    /// Config validation before start.
    pub validate: Dist,
    /// A hung process does not act on SIGTERM (a stopped or wedged gateway), so its stop
    /// lasts this much longer than `stop`: the pod's grace before SIGKILL (`[pods] grace` of
    /// carapace.toml). 0 by default.
    #[serde(skip_serializing_if = "is_zero")]
    pub hung_stop_grace: Span,
    /// A process's death to the engine hearing of it: the pod supervisor reaps it and tells
    /// the node agent. Instant by default; worth its milliseconds only beside boots that
    /// take as few.
    #[serde(skip_serializing_if = "Dist::is_zero")]
    pub exit_notice: Dist,
    /// A pod supervisor's death to the node agent noticing it (its socket closes). Instant
    /// by default.
    #[serde(skip_serializing_if = "Dist::is_zero")]
    pub supervisor_loss_notice: Dist,
    /// An exit seen to the process spawned again in place (a config unchanged since it was
    /// last validated is not validated again). Instant by default.
    #[serde(skip_serializing_if = "Dist::is_zero")]
    pub restart: Dist,
    /// Stopping a pod whose supervisor died: there is no process to signal and no one to
    /// snapshot it, only the pod to clear. As `stop` when not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_stop: Option<Dist>,
    /// A death whose config changed since it was last validated, to the engine hearing of it:
    /// the pod supervisor validates the changed config before it restarts in place, and the
    /// exit and the validator's refusal arrive together. As `exit_notice` when not given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_reject_notice: Option<Dist>,
    /// A startup probe's tick to the engine hearing the agent is ready: the probe's own
    /// request and its report. Instant by default.
    #[serde(skip_serializing_if = "Dist::is_zero")]
    pub ready_notice: Dist,
}

fn is_zero(span: &Span) -> bool {
    span.ms() == 0
}

impl Dist {
    /// Always 0 ms: the default of the lags that scenarios written before them do not have.
    pub const ZERO: Dist = Dist::Constant {
        value: Span(carapace_engine::Millis(0)),
    };

    pub fn is_zero(&self) -> bool {
        *self == Dist::ZERO
    }
}

impl Default for Latency {
    fn default() -> Self {
        let ms = |v| Span(carapace_engine::Millis(v));
        Latency {
            schedule: Dist::Uniform {
                min: ms(50),
                max: ms(400),
            },
            version_pull: Dist::LogNormal {
                median: ms(6_000),
                p90: ms(12_000),
            },
            boot: Dist::LogNormal {
                median: ms(13_300),
                p90: ms(15_000),
            },
            boot_after_crash: Dist::LogNormal {
                median: ms(17_000),
                p90: ms(19_500),
            },
            snapshot_restore: Dist::LogNormal {
                median: ms(600),
                p90: ms(1_500),
            },
            warm_attach: Dist::Uniform {
                min: ms(1_000),
                max: ms(2_500),
            },
            stop: Dist::Uniform {
                min: ms(1_500),
                max: ms(3_000),
            },
            validate: Dist::Uniform {
                min: ms(1_200),
                max: ms(1_800),
            },
            hung_stop_grace: ms(0),
            exit_notice: Dist::ZERO,
            ready_notice: Dist::ZERO,
            supervisor_loss_notice: Dist::ZERO,
            restart: Dist::ZERO,
            lost_stop: None,
            config_reject_notice: None,
        }
    }
}

/// How the node-side driver probes agents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Probes {
    /// Readiness probe period while an instance boots.
    pub startup_interval: Span,
    /// Liveness probe period once healthy.
    pub interval: Span,
    /// A probe that gets no answer fails after this long, and the next one starts no sooner:
    /// a hung agent's failures come `max(interval, timeout)` apart, each `timeout` after its
    /// probe began. Zero: a hang fails its probe at once.
    pub timeout: Span,
    /// Memory sampling period.
    pub memory_interval: Span,
    /// A sample is forwarded to the engine only when it moved by this fraction since the last
    /// one forwarded, as metric pipelines do.
    pub memory_deadband: f64,
    /// A sample is forwarded at least this often, moved or not, as a metrics pipeline's
    /// heartbeat. Long by default: placement reads current usage, and a waiting agent's
    /// reservation decays with time, so quiet agents need no samples (forwarding one every
    /// 10 min cost a third of a fleet-11k run for the same decisions).
    pub memory_max_silence: Span,
}

impl Default for Probes {
    fn default() -> Self {
        let ms = |v| Span(carapace_engine::Millis(v));
        Probes {
            startup_interval: ms(1_000),
            interval: ms(5_000),
            timeout: ms(0),
            memory_interval: ms(30_000),
            memory_deadband: 0.03,
            memory_max_silence: ms(6 * 3_600_000),
        }
    }
}

/// Service-level objectives a run is judged by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Slo {
    /// 90th percentile of fault → healthy again.
    pub recovery_p90: Span,
    /// Worst recovery of an incident resolved without an alert.
    pub recovery_max: Option<Span>,
    /// 90th percentile of create accepted → first healthy probe.
    pub provisioning_p90: Span,
    /// Fraction of incidents no client noticed.
    pub unnoticed_min: f64,
    /// Node out-of-memory events allowed.
    pub node_oom_max: u64,
    /// Collateral kills (an agent killed for a neighbour's spike) allowed.
    pub collateral_kills_max: u64,
    /// Critical alerts allowed.
    pub alerts_max: Option<u64>,
    /// Density ratio to reach.
    pub density_min: f64,
}

impl Default for Slo {
    fn default() -> Self {
        Slo {
            recovery_p90: Span(carapace_engine::Millis(60_000)),
            recovery_max: None,
            provisioning_p90: Span(carapace_engine::Millis(18_000)),
            unnoticed_min: 0.90,
            node_oom_max: 0,
            collateral_kills_max: 0,
            alerts_max: None,
            density_min: 0.0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// New agents per hour (each in a random class and tenant); as many old ones are removed.
    pub creates_per_hour: f64,
}

/// A version change to roll out during the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    pub at: Span,
    /// Class whose agents change.
    pub class: String,
    /// New config version number.
    pub config_version: u32,
    pub wave_size: u32,
    /// The new config is broken: every start at it fails validation.
    #[serde(default)]
    pub broken: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReportOptions {
    /// Time-series bucket.
    pub bucket: Span,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            bucket: Span(carapace_engine::Millis(3_600_000)),
        }
    }
}

mod defaults {
    use super::Span;
    pub(super) fn one() -> u32 {
        1
    }
    pub(super) fn warmup() -> Span {
        Span(carapace_engine::Millis(600_000))
    }
    pub(super) fn warm_instance_memory() -> super::Bytes {
        super::Bytes(750 << 20)
    }
    pub(super) fn spike_ramp() -> Span {
        Span(carapace_engine::Millis(60_000))
    }
    pub(super) fn spike_duration() -> Span {
        Span(carapace_engine::Millis(300_000))
    }
    pub(super) fn expiry_check() -> Span {
        Span(carapace_engine::Millis(500))
    }
}

impl Scenario {
    pub fn agent_count(&self) -> u64 {
        self.fleet.classes.iter().map(|c| u64::from(c.agents)).sum()
    }
}

/// The JSON Schema of scenario files, pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Scenario);
    serde_json::to_string_pretty(&schema).expect("a schema serialises")
}
