//! The measures, with exactly the definitions of DESIGN.md, kept from the world's ground truth:
//! - incident: a span in which a desired agent does not serve; starts at the fault;
//! - detection: fault → first observation that shows it to the engine;
//! - recovery: fault → healthy probe;
//! - provisioning: create accepted → first healthy probe;
//! - unnoticed: no client request hit the outage for longer than the client's timeout.

mod incident_log;

pub use incident_log::IncidentLog;

use crate::class_name::ClassName;
use carapace_engine::{AgentId, Millis, Rung};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// Ground truth: what actually happened to the agent (the engine may see it differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    Crash,
    Hang,
    OomKilled,
    NodeOomVictim,
    ConfigCorruption,
    NodeFailure,
    Evicted,
    BrokenRelease,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::Crash,
        Fault::Hang,
        Fault::OomKilled,
        Fault::NodeOomVictim,
        Fault::ConfigCorruption,
        Fault::NodeFailure,
        Fault::Evicted,
        Fault::BrokenRelease,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Hang => "hang",
            Fault::OomKilled => "oom_killed",
            Fault::NodeOomVictim => "node_oom_victim",
            Fault::ConfigCorruption => "config_corruption",
            Fault::NodeFailure => "node_failure",
            Fault::Evicted => "evicted",
            Fault::BrokenRelease => "broken_release",
        }
    }
}

/// One incident, as written to incidents.csv.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentRecord {
    pub agent: u32,
    /// Shared by every incident of the class: a run keeps tens of thousands of these.
    pub class: ClassName,
    pub fault: Fault,
    pub start_ms: u64,
    pub detection_ms: Option<u64>,
    pub recovery_ms: Option<u64>,
    /// The rung that resolved it; 4 when it ended in an alert; 0 while unresolved at the end.
    pub rung: u8,
    pub noticed: bool,
}

#[derive(Clone, Copy, Debug)]
struct Open {
    fault: Fault,
    start: Millis,
    detected: Option<Millis>,
    counted: bool,
}

/// A time-series bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Bucket {
    pub end_ms: u64,
    pub agents_desired: u32,
    pub agents_down: u32,
    pub agents_down_max: u32,
    pub nodes_up: u32,
    pub node_memory_utilisation_mean: f64,
    pub node_memory_utilisation_max: f64,
    pub agents_per_up_node: f64,
    /// Learned reservations over physical memory, mean over up nodes.
    pub node_reserved_mean: f64,
    /// Committed limits over the overcommit cap, mean over up nodes.
    pub node_committed_mean: f64,
    /// Agents waiting for a node at the bucket's end.
    pub agents_queued: u32,
}

/// Node-level load gathered at a bucket's end.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeLoad {
    pub reserved_mean: f64,
    pub committed_mean: f64,
    pub placed: u32,
    pub queued: u32,
}

#[derive(Debug)]
pub struct Measures {
    warmup: Millis,
    /// Only agents out of service or still provisioning have an entry: a few hundred at a
    /// time in a fleet of thousands, so maps rather than slots for every agent id ever used.
    open: BTreeMap<AgentId, Open>,
    provisioning_started: BTreeMap<AgentId, Millis>,
    /// `u32` counts: no bucket of a run sees four billion samples, and each histogram spans
    /// tens of thousands of buckets.
    pub detection: Histogram<u32>,
    pub recovery: Histogram<u32>,
    pub provisioning: Histogram<u32>,
    pub incidents: IncidentLog,
    pub ladder: [u64; 4],
    pub noticed: u64,
    pub unnoticed: u64,
    pub node_oom_events: u64,
    pub collateral_kills: u64,
    pub cgroup_oom_kills: u64,
    pub planned_disruptions: u64,
    pub buckets: Vec<Bucket>,
    utilisation_sum: f64,
    utilisation_samples: u64,
    utilisation_max: f64,
    down_max: u32,
}

fn histogram() -> Histogram<u32> {
    // Milliseconds up to ~11 days at 3 significant digits.
    Histogram::new_with_bounds(1, 1 << 40, 3).expect("static histogram bounds are valid")
}

impl Measures {
    pub fn new(warmup: Millis) -> Measures {
        Measures {
            warmup,
            open: BTreeMap::new(),
            provisioning_started: BTreeMap::new(),
            detection: histogram(),
            recovery: histogram(),
            provisioning: histogram(),
            incidents: IncidentLog::default(),
            ladder: [0; 4],
            noticed: 0,
            unnoticed: 0,
            node_oom_events: 0,
            collateral_kills: 0,
            cgroup_oom_kills: 0,
            planned_disruptions: 0,
            buckets: Vec::new(),
            utilisation_sum: 0.0,
            utilisation_samples: 0,
            utilisation_max: 0.0,
            down_max: 0,
        }
    }

    /// The agent stopped serving because of `fault`; merges into an incident already open.
    pub fn fault(&mut self, agent: AgentId, fault: Fault, now: Millis) {
        let counted = now >= self.warmup;
        self.open.entry(agent).or_insert(Open {
            fault,
            start: now,
            detected: None,
            counted,
        });
    }

    /// When the agent's open incident started.
    pub fn open_start(&self, agent: AgentId) -> Option<Millis> {
        self.open.get(&agent).map(|o| o.start)
    }

    pub fn is_open(&self, agent: AgentId) -> bool {
        self.open.contains_key(&agent)
    }

    /// An input showing the fault reached the engine.
    pub fn observed(&mut self, agent: AgentId, now: Millis) {
        if let Some(open) = self.open.get_mut(&agent) {
            open.detected.get_or_insert(now);
        }
    }

    /// The agent answered its probe again. `noticed_at` is when the first client request
    /// arrived after the fault.
    pub fn healthy(
        &mut self,
        agent: AgentId,
        class: &str,
        now: Millis,
        rung: Option<Rung>,
        first_request: Millis,
        timeout: Millis,
    ) {
        if let Some(started) = self.provisioning_started.remove(&agent) {
            let _ = self
                .provisioning
                .record(now.saturating_since(started).0.max(1));
        }
        let Some(open) = self.open.remove(&agent) else {
            return;
        };
        let rung = rung.map_or(1, Rung::number);
        self.close(agent, class, open, Some(now), rung, first_request, timeout);
    }

    /// The incident ended in a critical alert.
    pub fn alerted(&mut self, agent: AgentId, class: &str, now: Millis) {
        let Some(open) = self.open.remove(&agent) else {
            return;
        };
        // Nobody serves the client until a human acts: the outage is noticed.
        self.close(agent, class, open, None, 4, now, Millis(0));
    }

    #[allow(clippy::too_many_arguments)]
    fn close(
        &mut self,
        agent: AgentId,
        class: &str,
        open: Open,
        end: Option<Millis>,
        rung: u8,
        first_request: Millis,
        timeout: Millis,
    ) {
        if !open.counted {
            return;
        }
        let recovery = end.map(|end| end.saturating_since(open.start).0);
        let detection = open.detected.map(|d| d.saturating_since(open.start).0);
        let noticed = match end {
            Some(end) => first_request + timeout <= end,
            None => true,
        };
        if let Some(recovery) = recovery {
            let _ = self.recovery.record(recovery.max(1));
        }
        if let Some(detection) = detection {
            let _ = self.detection.record(detection.max(1));
        }
        if noticed {
            self.noticed += 1;
        } else {
            self.unnoticed += 1;
        }
        self.ladder[usize::from(rung.clamp(1, 4)) - 1] += 1;
        let class = self.incidents.class_name(class);
        self.incidents.push(IncidentRecord {
            agent: agent.0,
            class,
            fault: open.fault,
            start_ms: open.start.0,
            detection_ms: detection,
            recovery_ms: recovery,
            rung,
            noticed,
        });
    }

    /// The agent was forgotten (removed); an open incident ends without a verdict.
    pub fn forget(&mut self, agent: AgentId) {
        self.open.remove(&agent);
        self.provisioning_started.remove(&agent);
    }

    pub fn provisioning_started(&mut self, agent: AgentId, now: Millis) {
        if now >= self.warmup {
            self.provisioning_started.insert(agent, now);
        }
    }

    /// Incidents still open when the run ended (counted ones only), by agent id.
    pub fn unresolved(&self) -> impl Iterator<Item = (AgentId, Fault, Millis)> + '_ {
        self.open
            .iter()
            .filter(|(_, o)| o.counted)
            .map(|(&agent, o)| (agent, o.fault, o.start))
    }

    pub fn node_utilisation(&mut self, utilisation: f64) {
        self.utilisation_sum += utilisation;
        self.utilisation_samples += 1;
        self.utilisation_max = self.utilisation_max.max(utilisation);
    }

    pub fn agents_down(&mut self, down: u32) {
        self.down_max = self.down_max.max(down);
    }

    pub fn close_bucket(
        &mut self,
        end: Millis,
        desired: u32,
        down: u32,
        nodes_up: u32,
        load: NodeLoad,
    ) {
        let placed = load.placed;
        let mean = if self.utilisation_samples == 0 {
            0.0
        } else {
            self.utilisation_sum / self.utilisation_samples as f64
        };
        self.buckets.push(Bucket {
            end_ms: end.0,
            agents_desired: desired,
            agents_down: down,
            agents_down_max: self.down_max.max(down),
            nodes_up,
            node_memory_utilisation_mean: round4(mean),
            node_memory_utilisation_max: round4(self.utilisation_max),
            agents_per_up_node: if nodes_up == 0 {
                0.0
            } else {
                round4(f64::from(placed) / f64::from(nodes_up))
            },
            node_reserved_mean: round4(load.reserved_mean),
            node_committed_mean: round4(load.committed_mean),
            agents_queued: load.queued,
        });
        self.utilisation_sum = 0.0;
        self.utilisation_samples = 0;
        self.utilisation_max = 0.0;
        self.down_max = down;
    }
}

/// Four decimals: enough for a report, and stable when printed.
pub fn round4(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}
