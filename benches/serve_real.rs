//! Real-process benchmarks of `carapace serve` (work in progress).
fn main() {}
