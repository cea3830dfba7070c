//! The `carapace` command line.

fn main() {}
