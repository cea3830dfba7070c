//! `explore` finds real bugs: with the engine's planted bug (feature `planted-bug`, run by
//! `scripts/test`) a handful of swarm seeds of smoke find two live copies of an agent and
//! shrink them to a few agents; without it the very same seeds pass, deterministically.

use carapace_engine::Millis;
use carapace_sim::Simulation;
use carapace_sim::explore::{self, Checks, Failure};
use carapace_sim::scenario::{self, Scenario};
use std::path::Path;

/// The seeds the planted bug must be found within.
const SEEDS: std::ops::Range<u64> = 0..20;

fn smoke() -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/smoke.toml");
    scenario::load_file(&path).expect("scenarios/smoke.toml is valid")
}

/// The first seed of [`SEEDS`] whose swarm variant fails, with its failure.
fn first_failure(base: &Scenario) -> Option<(Scenario, Failure)> {
    SEEDS.into_iter().find_map(|seed| {
        let variant = explore::swarm(base, seed);
        let checks = Checks::for_scenario(&variant);
        let verdict = explore::check(&variant, &[], &checks).expect("smoke runs");
        verdict.failure.map(|failure| (variant, failure))
    })
}

#[cfg(feature = "planted-bug")]
#[test]
fn explore_finds_the_planted_bug_and_shrinks_it_to_a_handful_of_agents() {
    let base = smoke();
    let (variant, failure) =
        first_failure(&base).expect("the planted bug is found within 20 seeds");
    assert_eq!(failure.kind, explore::FailureKind::Safety, "{failure}");
    assert!(failure.message.contains("two live copies"), "{failure}");
    let checks = Checks::for_scenario(&variant);
    let shrunk = explore::shrink(&variant, &failure, &[], &checks, 400);
    let minimal = &shrunk.scenario;
    println!(
        "seed {}: {failure}; shrunk in {} runs to {} agents, {} nodes, {}: {}",
        variant.seed,
        shrunk.runs,
        minimal.agent_count(),
        minimal.fleet.nodes,
        minimal.duration,
        shrunk.failure
    );
    assert!(
        minimal.agent_count() <= 5,
        "shrunk to {} agents on {} nodes in {} runs",
        minimal.agent_count(),
        minimal.fleet.nodes,
        shrunk.runs
    );
    assert!(minimal.fleet.nodes < base.fleet.nodes && minimal.duration <= variant.duration);
    // The minimal scenario, written and read back, fails the same way on its own.
    let text = toml::to_string(minimal).unwrap();
    let reread = scenario::parse_str(&text, "min.toml").unwrap();
    let again = explore::check(&reread, &[], &checks).unwrap();
    assert_eq!(again.failure.map(|f| f.shape()), Some(failure.shape()));
    let agent = shrunk
        .failure
        .agent
        .expect("two live copies name their agent");
    let timeline = explore::timeline(&reread, &[], &checks, agent).unwrap();
    assert!(
        timeline
            .iter()
            .filter(|e| e.what.starts_with("Start"))
            .count()
            >= 2,
        "the agent's timeline shows both starts: {timeline:#?}"
    );
}

#[cfg(not(feature = "planted-bug"))]
#[test]
fn the_seeds_that_find_the_planted_bug_pass_without_it() {
    if let Some((variant, failure)) = first_failure(&smoke()) {
        panic!(
            "seed {} fails without the planted bug: {failure}",
            variant.seed
        );
    }
}

#[test]
fn a_seed_run_twice_gives_the_same_command_stream() {
    let base = smoke();
    for seed in [3, 11] {
        let variant = explore::swarm(&base, seed);
        let checks = Checks::for_scenario(&variant);
        let (verdict, divergence) = explore::check_determinism(&variant, &[], &checks).unwrap();
        assert_eq!(divergence, None);
        assert!(verdict.events > 1_000);
    }
}

#[test]
fn no_fault_arrives_after_faults_stop() {
    let mut base = smoke();
    base.node_faults.failures_per_node_per_day = 4.0;
    let mut sim = Simulation::new(base, Vec::new()).unwrap();
    let stop = Millis(3 * 3_600_000);
    sim.stop_faults_at(stop);
    sim.record_fault_arrivals(true);
    sim.run(|_| {});
    let arrivals = sim.fault_arrivals();
    assert!(arrivals.len() > 50, "{} arrivals", arrivals.len());
    assert!(arrivals.iter().all(|(at, _, _)| *at <= stop));
    assert!(
        arrivals
            .iter()
            .any(|(at, _, _)| *at > Millis(2 * 3_600_000))
    );
}

// The planted bug fails these runs on safety first: they judge the real engine's liveness.
#[cfg(not(feature = "planted-bug"))]
#[test]
fn a_quiet_tail_shorter_than_recovery_fails_liveness() {
    // Config corruptions until the last millisecond: at the end of some seeds an agent is
    // still past rung 1 (out of Running as the controller sees it), not having served in the
    // one-millisecond "tail", and is reported. (A plain crash is restarted in its pod while the
    // controller still counts it Running; too many faults would get every agent alerted
    // about, which excuses it.)
    let mut base = smoke();
    for class in &mut base.fleet.classes {
        class.faults.config_corruptions_per_day = 12.0;
    }
    let checks = Checks {
        quiet_tail: Millis(1),
        ..Checks::for_scenario(&base)
    };
    let failures: Vec<Failure> = (0..10)
        .filter_map(|seed| {
            let scenario = Scenario {
                seed,
                ..base.clone()
            };
            explore::check(&scenario, &[], &checks).unwrap().failure
        })
        .collect();
    assert!(
        !failures.is_empty(),
        "no seed ends with an agent mid-recovery"
    );
    for failure in failures {
        assert_eq!(failure.kind, explore::FailureKind::Liveness, "{failure}");
        assert!(failure.message.contains("never alerted"), "{failure}");
    }
}

/// A density move the engine starts in the quiet tail (memory keeps growing after the
/// faults stop) is in flight at the end, not a liveness failure: swarm seed 143 of
/// trace-replay stops agent-620 for a migration in the run's last millisecond.
#[cfg(not(feature = "planted-bug"))]
#[test]
fn a_move_started_in_the_quiet_tail_is_in_flight_not_stuck() {
    use carapace_engine::AgentStatus;
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/raw");
    assert!(
        shared.is_dir(),
        "{} holds the public trace samples",
        shared.display()
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/trace-replay.toml");
    let base = scenario::load_file(&path).expect("scenarios/trace-replay.toml is valid");
    let series = carapace_sim::trace::load_all(&base, path.parent().unwrap())
        .expect("the traces load")
        .memory;
    let variant = explore::swarm(&base, 143);
    let checks = Checks::for_scenario(&variant);

    // The situation itself: at the end some agent is neither running, parked nor alerted,
    // yet it served in the tail and its deadline is still to come.
    let mut sim = Simulation::new(variant.clone(), series.clone()).unwrap();
    sim.stop_faults_at(sim.end().saturating_since(checks.quiet_tail));
    sim.run(|_| {});
    let controller = sim.controller();
    let in_flight: Vec<_> = controller
        .agent_ids()
        .filter(|&id| {
            let view = controller.agent(id).unwrap();
            !matches!(view.status, AgentStatus::Running | AgentStatus::Parked)
                && !sim.was_alerted(id)
        })
        .collect();
    assert!(!in_flight.is_empty(), "no agent is in flight at the end");
    for id in in_flight {
        let view = controller.agent(id).unwrap();
        assert!(sim.served_after_faults(id), "{id} never served in the tail");
        assert!(
            view.deadline.is_some_and(|d| d > sim.now()),
            "{id}: {view:?}"
        );
    }

    if let Some(failure) = explore::check(&variant, &series, &checks).unwrap().failure {
        panic!("seed 143: {failure}");
    }
}
