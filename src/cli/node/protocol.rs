//! What a node and the controller say to each other through etcd: the node's registration,
//! the assignments the leader writes for it, and the reports the node writes back. JSON
//! values; the keys are `carapace_cluster::keys`.

use crate::cli::serve::agents::AgentRecord;
use carapace_cluster::Revision;
use carapace_drivers::pod::Numbered;
use carapace_engine::{AgentId, CommandId, Instance, Outcome, SnapshotId};
use serde::{Deserialize, Serialize};

/// A node's registration, under its lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub name: String,
    pub zone: Option<String>,
    /// Memory for pods on the machine.
    pub memory_bytes: u64,
    /// Whether pods run under enforced memory limits there.
    pub limits_enforced: bool,
    pub carapace_version: String,
}

/// One pod the leader wants on a node. Written by the leader only, in a transaction fenced by
/// its leadership; read by the node it names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The node registration (its key's creation revision) this is for. A node that registered
    /// again since is another node for this purpose and does not run it.
    pub epoch: Revision,
    pub record: AgentRecord,
    pub instance: Instance,
    /// The engine's start command, answered by the pod's reports.
    pub start_command: CommandId,
    /// The config text to write before every start (it may hold credentials: etcd must be
    /// reachable by Carapace's machines only).
    #[serde(default)]
    pub config_text: Option<String>,
    /// The snapshot to restore the state directory from before the first start.
    #[serde(default)]
    pub snapshot: Option<SnapshotId>,
    /// Set when the leader wants the pod stopped (and snapshotted).
    #[serde(default)]
    pub stop: Option<StopOrder>,
    /// Set when the leader wants a snapshot of the running pod; answered once, by command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take_snapshot: Option<SnapshotOrder>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotOrder {
    pub command: CommandId,
    pub snapshot: SnapshotId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopOrder {
    pub command: CommandId,
    #[serde(default)]
    pub snapshot: Option<SnapshotId>,
}

/// What a node reports, in order, under its lease: the process driver's own reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeReport {
    Event {
        agent: AgentId,
        instance: Instance,
        numbered: Numbered,
    },
    SupervisorLost {
        agent: AgentId,
        instance: Instance,
    },
    Finished {
        command: CommandId,
        outcome: Outcome,
    },
    /// The node stopped every pod because it could not renew its lease in time.
    Fenced {
        /// Milliseconds on the node's clock between the last renewal etcd acknowledged (its
        /// sending) and the moment the last pod was gone.
        stopped_after_ms: u64,
        pods: u32,
    },
}
