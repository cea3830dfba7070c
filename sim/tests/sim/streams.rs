//! Per-component random streams: adding a fault type leaves every other draw unchanged.

use crate::common::{run_with, smoke};
use carapace_engine::{AgentId, Millis};
use carapace_sim::Simulation;
use carapace_sim::report::Report;
use carapace_sim::scenario::Scenario;

/// Smoke without churn, hangs set to `hangs_per_day` in every class. Churn stays off because
/// which agent churn removes depends on the engine's state, and a removed agent's fault stream
/// rightly stops.
fn smoke_with_hangs(hangs_per_day: f64) -> Scenario {
    let mut scenario = smoke();
    scenario.churn.creates_per_hour = 0.0;
    for class in &mut scenario.fleet.classes {
        class.faults.hangs_per_day = hangs_per_day;
    }
    scenario
}

fn record(scenario: Scenario) -> Simulation {
    run_with(scenario, Vec::new(), |sim| sim.record_fault_arrivals(true))
}

/// The arrivals of one kind, in (time, agent) order: same-millisecond arrivals of different
/// agents may be processed in either order without any draw changing.
fn arrivals(sim: &Simulation, kind: &str) -> Vec<(Millis, AgentId)> {
    let mut out: Vec<(Millis, AgentId)> = sim
        .fault_arrivals()
        .iter()
        .filter(|(_, _, k)| *k == kind)
        .map(|&(at, agent, _)| (at, agent))
        .collect();
    out.sort();
    out
}

#[test]
fn adding_hangs_leaves_crash_spike_and_corruption_arrivals_unchanged() {
    let without = record(smoke_with_hangs(0.0));
    let with = record(smoke_with_hangs(6.0));
    assert!(
        arrivals(&without, "hang").is_empty(),
        "hangs_per_day = 0 yet hangs arrived"
    );
    assert!(
        arrivals(&with, "hang").len() > 20,
        "too few hangs to perturb anything: {}",
        arrivals(&with, "hang").len()
    );
    assert_ne!(
        Report::of(&without).summary.command_stream_hash,
        Report::of(&with).summary.command_stream_hash,
        "the hangs changed nothing the engine saw, so this test proves nothing"
    );
    for kind in ["crash", "spike", "config_corruption"] {
        let (a, b) = (arrivals(&without, kind), arrivals(&with, kind));
        assert!(!a.is_empty(), "smoke has {kind} arrivals");
        assert_eq!(a, b, "{kind} arrivals moved when hangs were added");
    }
}

#[test]
fn recording_is_off_by_default() {
    let sim = run_with(smoke_with_hangs(1.0), Vec::new(), |_| {});
    assert!(sim.fault_arrivals().is_empty());
}
