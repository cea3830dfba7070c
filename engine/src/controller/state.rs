//! What the controller remembers about each agent and node.

use crate::command::{StartReason, StopReason};
use crate::id::{
    AgentId, CommandId, Instance, NodeId, RolloutId, SnapshotId, TenantId, Version, ZoneId,
};
use crate::postmortem::{Cause, MemoryPoint, Rung, Timeline};
use crate::spec::{AgentSpec, NodeSpec, Priority};
use crate::time::Millis;

/// Memory samples kept per agent for post-mortems.
pub(crate) const MEMORY_HISTORY: usize = 8;
/// Versions a node remembers having pulled, most recent first.
pub(crate) const VERSION_CACHE: usize = 4;

#[derive(Debug)]
pub(crate) struct Agent {
    pub spec: StoredSpec,
    /// Longest dependency chain below this agent; lower depths start first.
    pub depth: u16,
    pub phase: Phase,
    /// The newest instance issued (live or not).
    pub instance: Instance,
    /// The node holding the current instance's pod, while it holds one.
    pub node: Option<NodeId>,
    /// The limit charged to `node`'s committed memory: the spec's limit when the pod was
    /// placed, or when a later update still fitted under the node's cap. A bigger limit that
    /// does not fit is charged only where the agent is placed next.
    pub committed_bytes: u64,
    /// Version the current instance runs.
    pub version: Version,
    pub incident: Option<Incident>,
    pub reservation_bytes: u64,
    pub reservation_updated_at: Millis,
    /// What the reservation decays towards: the last sample plus the margin.
    pub reservation_target_bytes: u64,
    pub memory: MemoryTrack,
    pub snapshots: Snapshots,
    pub healthy_since: Option<Millis>,
    /// The deadline the current phase must be left by (recovery under a deadline).
    pub deadline: Option<Millis>,
    /// Bumped on each phase change; a timer from an older phase is void.
    pub generation: u32,
    pub timeline: Option<Box<Timeline>>,
    pub history: MemoryHistory,
    pub throttled: bool,
    /// Holds one of the fleet's and its node's start slots.
    pub counted_starting: bool,
    pub rollout: Option<RolloutId>,
}

/// An [`AgentSpec`] as the controller keeps it: the fields it reads after creation (not the
/// class, nor the request, which only seeds the reservation), with the two lists that most
/// agents leave empty (dependencies, allowed zones) behind one optional pointer.
#[derive(Debug)]
pub(crate) struct StoredSpec {
    pub id: AgentId,
    pub tenant: TenantId,
    pub priority: Priority,
    pub memory_bytes_limit: u64,
    pub version: Version,
    constraints: Option<Box<Constraints>>,
}

#[derive(Debug)]
struct Constraints {
    depends_on: Box<[AgentId]>,
    allowed_zones: Box<[ZoneId]>,
}

impl StoredSpec {
    /// Agents that must run before this one starts.
    pub(crate) fn depends_on(&self) -> &[AgentId] {
        self.constraints.as_ref().map_or(&[], |c| &c.depends_on)
    }

    /// Zones this agent may run in; empty means any.
    pub(crate) fn allowed_zones(&self) -> &[ZoneId] {
        self.constraints.as_ref().map_or(&[], |c| &c.allowed_zones)
    }
}

impl From<AgentSpec> for StoredSpec {
    fn from(spec: AgentSpec) -> StoredSpec {
        let AgentSpec {
            id,
            tenant,
            class: _,
            priority,
            memory_bytes_limit,
            memory_bytes_request: _,
            version,
            depends_on,
            allowed_zones,
        } = spec;
        let constraints = (!depends_on.is_empty() || !allowed_zones.is_empty()).then(|| {
            Box::new(Constraints {
                depends_on: depends_on.into_boxed_slice(),
                allowed_zones: allowed_zones.into_boxed_slice(),
            })
        });
        StoredSpec {
            id,
            tenant,
            priority,
            memory_bytes_limit,
            version,
            constraints,
        }
    }
}

/// Where the agent is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a node, a dependency or the start budget.
    Queued {
        launch: Launch,
        sequence: u64,
    },
    /// A start was issued; waiting for the first healthy probe.
    Starting {
        command: CommandId,
    },
    Running,
    /// Rung 1: the node-side supervisor is restarting it in place.
    Restarting,
    /// A stop was issued; `then` follows once it completes.
    Stopping {
        command: CommandId,
        then: AfterStop,
        /// Why, so a retried stop says the same.
        reason: StopReason,
    },
    /// Given up on; a critical alert was raised.
    Parked,
}

/// How the next instance will be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Launch {
    pub reason: StartReason,
    pub version: Version,
    pub source: SnapshotSource,
    /// A node to keep away from if any other will do.
    pub avoid: Option<NodeId>,
}

/// Which state directory the next instance starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SnapshotSource {
    /// A fresh agent: nothing to restore.
    Empty,
    /// The newest snapshot: state intact.
    Latest,
    /// The snapshot taken when the known-good version was marked.
    KnownGood,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AfterStop {
    Launch(Launch),
    Park,
    Remove,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Incident {
    pub opened_at: Millis,
    pub cause: Cause,
    pub rung: Rung,
    /// Bit `n` set when rung `n` was tried.
    pub rungs_tried: u8,
    /// A critical alert was raised while the agent keeps waiting (no node has room for it).
    pub alerted: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemoryTrack {
    pub used_bytes: u64,
    pub sampled_at: Millis,
    /// Smoothed growth, bytes per minute; the fastest riser is moved first.
    pub slope_bytes_per_min: i64,
    /// Until this instance's first sample, its node counts its reservation as in use.
    pub unsampled_charge_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshots {
    /// The last id handed out.
    pub issued: u32,
    pub latest: Option<SnapshotId>,
    pub known_good: Option<(Version, Option<SnapshotId>)>,
}

impl Snapshots {
    pub(crate) fn allocate(&mut self) -> SnapshotId {
        self.issued += 1;
        SnapshotId(self.issued)
    }
}

/// A ring of recent memory samples: the last [`MEMORY_HISTORY`], none taken more than
/// `u32::MAX` ms (49.7 days) before the newest.
///
/// Each sample's time is kept as its age before the newest one, in 32 bits: 24 bytes less in
/// every agent than full times. A sample that would age past the bound is dropped; an agent
/// sampled so rarely has nothing in its last eight samples a post-mortem could use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct MemoryHistory {
    newest_at: Millis,
    /// Per slot, how long before `newest_at` its sample was taken, in ms.
    ages: [u32; MEMORY_HISTORY],
    bytes: [u64; MEMORY_HISTORY],
    next: u8,
    len: u8,
}

impl MemoryHistory {
    /// Adds a sample taken at `at`, no earlier than the newest one.
    pub(crate) fn push(&mut self, at: Millis, memory_bytes: u64) {
        debug_assert!(
            self.len == 0 || at >= self.newest_at,
            "samples arrive in time order"
        );
        let shift = at.saturating_since(self.newest_at).0;
        // Oldest first: ages only fall from there, so the samples that age out are the oldest.
        let mut kept = usize::from(self.len);
        for k in 0..usize::from(self.len) {
            let slot = self.slot(k);
            match u32::try_from(u64::from(self.ages[slot]) + shift) {
                Ok(age) => self.ages[slot] = age,
                Err(_) => kept -= 1,
            }
        }
        let next = usize::from(self.next);
        self.ages[next] = 0;
        self.bytes[next] = memory_bytes;
        self.newest_at = at;
        self.next = ((next + 1) % MEMORY_HISTORY) as u8;
        self.len = (kept + 1).min(MEMORY_HISTORY) as u8;
    }

    /// The slot of the `k`-th kept sample, oldest first.
    fn slot(&self, k: usize) -> usize {
        let len = usize::from(self.len);
        (usize::from(self.next) + MEMORY_HISTORY - len + k) % MEMORY_HISTORY
    }

    /// The kept samples, oldest first.
    pub(crate) fn to_vec(self) -> Vec<MemoryPoint> {
        (0..usize::from(self.len))
            .map(|k| {
                let slot = self.slot(k);
                MemoryPoint {
                    at: Millis(self.newest_at.0 - u64::from(self.ages[slot])),
                    memory_bytes: self.bytes[slot],
                }
            })
            .collect()
    }
}

impl Agent {
    pub(crate) fn new(spec: AgentSpec, depth: u16, now: Millis) -> Agent {
        let reservation_bytes = spec.memory_bytes_request.min(spec.memory_bytes_limit);
        Agent {
            version: spec.version,
            spec: spec.into(),
            depth,
            phase: Phase::Parked,
            instance: Instance(0),
            node: None,
            committed_bytes: 0,
            incident: None,
            reservation_bytes,
            reservation_updated_at: now,
            reservation_target_bytes: reservation_bytes,
            memory: MemoryTrack::default(),
            snapshots: Snapshots::default(),
            healthy_since: None,
            deadline: None,
            generation: 0,
            timeline: None,
            history: MemoryHistory::default(),
            throttled: false,
            counted_starting: false,
            rollout: None,
        }
    }

    /// Alive or on its way up on a node: it holds that node's memory.
    pub(crate) fn holds_node(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting { .. } | Phase::Running | Phase::Restarting | Phase::Stopping { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeState {
    Ready,
    Draining,
    Lost,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub spec: NodeSpec,
    pub state: NodeState,
    /// Sum of limits may not exceed this (capacity × overcommit ratio).
    pub cap_bytes: u64,
    /// Reservations and observed usage above this stop placement.
    pub stop_placing_bytes: u64,
    pub migrate_bytes: u64,
    pub evict_bytes: u64,
    pub committed_bytes: u64,
    pub reserved_bytes: u64,
    pub used_bytes: u64,
    /// Reservations of agents placed here that have not reported memory yet: usage on its way.
    pub unsampled_bytes: u64,
    pub starting: u16,
    /// Blank instances booted and idle (the warm pool), and those booting.
    pub warm: u16,
    pub warming: u16,
    /// Agents stopped to drain this node and not yet running elsewhere.
    pub moving: Vec<AgentId>,
    /// Agents whose pods are here, sorted by id.
    pub agents: Vec<AgentId>,
    pub versions: [Option<Version>; VERSION_CACHE],
    pub last_heartbeat: Option<Millis>,
    pub relieved_until: Millis,
}

impl Node {
    pub(crate) fn has_version(&self, version: Version) -> bool {
        self.versions.contains(&Some(version))
    }

    pub(crate) fn remember_version(&mut self, version: Version) {
        let position = self
            .versions
            .iter()
            .position(|v| *v == Some(version))
            .unwrap_or(VERSION_CACHE - 1);
        self.versions.copy_within(0..position, 1);
        self.versions[0] = Some(version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_takes_368_bytes() {
        // Every agent of a fleet holds one: a field that grows it should be worth it.
        assert_eq!(std::mem::size_of::<StoredSpec>(), 40);
        assert_eq!(std::mem::size_of::<MemoryHistory>(), 112);
        assert_eq!(std::mem::size_of::<Agent>(), 368);
    }

    fn points(history: MemoryHistory) -> Vec<(u64, u64)> {
        history
            .to_vec()
            .into_iter()
            .map(|p| (p.at.0, p.memory_bytes))
            .collect()
    }

    #[test]
    fn the_history_keeps_the_last_samples_exactly() {
        let mut history = MemoryHistory::default();
        assert!(points(history).is_empty());
        let mut all = Vec::new();
        let mut at = 5_u64;
        for k in 0..20_u64 {
            at += k * 7_919 + 1;
            let bytes = (k + 1) * 1_000_000_007;
            history.push(Millis(at), bytes);
            all.push((at, bytes));
            let expected = &all[all.len().saturating_sub(MEMORY_HISTORY)..];
            assert_eq!(points(history), expected);
        }
        // Two samples at the same time are both kept.
        history.push(Millis(at), 1);
        assert_eq!(points(history).last(), Some(&(at, 1)));
        assert_eq!(
            points(history)[MEMORY_HISTORY - 2],
            (at, 20 * 1_000_000_007)
        );
    }

    #[test]
    fn a_sample_older_than_the_age_bound_is_dropped() {
        let mut history = MemoryHistory::default();
        let bound = u64::from(u32::MAX);
        history.push(Millis(1_000), 10);
        history.push(Millis(2_000), 20);
        // The first sample is exactly at the bound: kept.
        history.push(Millis(1_000 + bound), 30);
        assert_eq!(
            points(history),
            [(1_000, 10), (2_000, 20), (1_000 + bound, 30)]
        );
        // Now it is one past it, the second one still within.
        history.push(Millis(1_001 + bound), 40);
        assert_eq!(
            points(history),
            [(2_000, 20), (1_000 + bound, 30), (1_001 + bound, 40)]
        );
        // A gap longer than the bound leaves the new sample alone.
        history.push(Millis(10 * bound), 50);
        assert_eq!(points(history), [(10 * bound, 50)]);
    }
}
