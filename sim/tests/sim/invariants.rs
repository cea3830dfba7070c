//! The engine's invariants hold after every single event of the smoke scenario.

use crate::common::{run_with, smoke};
use carapace_sim::report::Report;

#[test]
fn smoke_holds_every_invariant_after_every_event() {
    let sim = run_with(smoke(), Vec::new(), |sim| sim.check_invariants_every(1));
    let summary = Report::of(&sim).summary;
    assert_eq!(summary.invariant_violation, None);
    assert!(summary.events > 5_000, "{} events", summary.events);
    assert!(
        summary.incidents > 50,
        "smoke exercises recovery: {} incidents",
        summary.incidents
    );
}

/// Every rung of the ladder is exercised by smoke, so the check above covers all of them.
#[test]
fn smoke_exercises_every_rung() {
    let summary = Report::of(&run_with(smoke(), Vec::new(), |_| {})).summary;
    assert!(
        summary.ladder[..3].iter().all(|&n| n > 0),
        "ladder {:?}",
        summary.ladder
    );
}
