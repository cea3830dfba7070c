//! The `carapace` binary, run as a user runs it: one test binary, one module per subcommand.

// Real processes run in real time, as in `serve`.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/chaos.rs"]
mod chaos;
#[path = "cli/check.rs"]
mod check;
// A real etcd cluster, real nodes, real controllers, in real time.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/cluster.rs"]
mod cluster;
#[path = "cli/common.rs"]
mod common;
// A real daemon and a real browser, in real time.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/dashboard.rs"]
mod dashboard;
#[path = "cli/explore.rs"]
mod explore;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/fidelity.rs"]
mod fidelity;
#[path = "cli/help.rs"]
mod help;
// A real etcd cluster and real pods, in real time.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/node.rs"]
mod node;
#[path = "cli/ports.rs"]
mod ports;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/replay.rs"]
mod replay;
#[path = "cli/schema.rs"]
mod schema;
#[path = "cli/sim.rs"]
mod sim;
// Real processes run in real time: deadlines are wall-clock, and a thread reads the stream.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/supervise.rs"]
mod supervise;
// The daemon and its pods run in real time, like `supervise`.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/serve.rs"]
mod serve;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/serve_openclaw.rs"]
mod serve_openclaw;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/serve_warm.rs"]
mod serve_warm;
// Rollouts on real test agents, in real time.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
#[path = "cli/serve_rollout.rs"]
mod serve_rollout;
#[path = "cli/tune.rs"]
mod tune;
#[path = "cli/validate.rs"]
mod validate;
