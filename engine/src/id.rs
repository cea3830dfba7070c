//! Identifiers. Dense integers so that state lives in `Vec`s indexed by id: iteration order is
//! defined, lookups are cheap and memory per agent stays small.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! dense_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u32);

        impl $name {
            /// The id as an index into a dense table.
            pub const fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

dense_id!(
    /// One desired agent (an OpenClaw gateway), stable across restarts and recreations.
    AgentId,
    "agent-"
);
dense_id!(
    /// One machine that runs pods.
    NodeId,
    "node-"
);
dense_id!(
    /// The customer an agent belongs to; placement spreads each tenant.
    TenantId,
    "tenant-"
);
dense_id!(
    /// A failure domain below a region, above nodes.
    ZoneId,
    "zone-"
);
dense_id!(
    /// The largest failure domain.
    RegionId,
    "region-"
);
dense_id!(
    /// A staged version change across many agents.
    RolloutId,
    "rollout-"
);
dense_id!(
    /// A version of one agent's state directory, numbered per agent by the engine. The driver
    /// maps it to a content-addressed manifest.
    SnapshotId,
    "snapshot-"
);

/// One incarnation of an agent: bumped each time the controller starts a new copy. Every
/// observation names the instance it is about, so a late report from a replaced copy can never
/// be mistaken for the current one.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Instance(pub u32);

impl Instance {
    pub const fn next(self) -> Instance {
        Instance(self.0 + 1)
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Names one command so that its completion can be reported back.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct CommandId(pub u64);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cmd-{}", self.0)
    }
}

/// An agent's resolved version: the runtime (OpenClaw release) and its config revision.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub runtime: u32,
    pub config: u32,
}

impl Version {
    pub const fn new(runtime: u32, config: u32) -> Version {
        Version { runtime, config }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}c{}", self.runtime, self.config)
    }
}
