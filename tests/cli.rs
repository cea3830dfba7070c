//! The `carapace` binary, run as a user runs it: one test binary, one module per subcommand.

#[path = "cli/common.rs"]
mod common;
#[path = "cli/help.rs"]
mod help;
#[path = "cli/schema.rs"]
mod schema;
#[path = "cli/sim.rs"]
mod sim;
#[path = "cli/validate.rs"]
mod validate;
