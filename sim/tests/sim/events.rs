//! Replayed fault events: each one happens to the agent it names at the time it names, and
//! nothing else happens when the seeded fault processes are off.

use crate::common::{Scratch, parse};
use carapace_engine::{AgentId, AgentStatus};
use carapace_sim::Simulation;
use carapace_sim::report::Report;
use carapace_sim::trace;

const SCENARIO: &str = r#"
name = "replayed"
seed = 1
duration = "2h"
warmup = "10m"
event_trace = "events.csv"

[fleet]
nodes = 4
node_memory = "16GiB"
tenants = 2

[[fleet.classes]]
name = "gateway"
agents = 10
memory_limit = "3GiB"
memory_request = "1GiB"
memory = { baseline = "800MiB" }
clients = { requests_per_hour = 0.0 }
"#;

const EVENTS: &str = "time_ms,agent,kind,value,duration_ms
1800000,3,crash,,
2400000,7,hang,,
3000000,5,config_corruption,,
3600000,2,node_failure,,
";

#[test]
fn every_replayed_fault_happens_where_and_when_the_trace_says() {
    let dir = Scratch::new("events");
    std::fs::write(dir.path().join("events.csv"), EVENTS).unwrap();
    let scenario = parse(SCENARIO);
    let replays = trace::load_all(&scenario, dir.path()).expect("the trace loads");
    assert_eq!(replays.events.len(), 4);
    let mut sim = Simulation::new(scenario, replays).unwrap();
    sim.check_invariants_every(1);
    sim.run(|_| {});
    let report = Report::of(&sim);
    assert_eq!(report.summary.invariant_violation, None);
    let mut faults: Vec<(u64, u32, &str)> = report
        .incidents
        .iter()
        .filter(|i| i.fault.name() != "node_failure")
        .map(|i| (i.start_ms, i.agent, i.fault.name()))
        .collect();
    faults.sort();
    assert_eq!(
        faults,
        vec![
            (1_800_000, 3, "crash"),
            (2_400_000, 7, "hang"),
            (3_000_000, 5, "config_corruption")
        ]
    );
    let node_failures: Vec<u64> = report
        .incidents
        .iter()
        .filter(|i| i.fault.name() == "node_failure")
        .map(|i| i.start_ms)
        .collect();
    assert!(
        !node_failures.is_empty(),
        "node 2 held agents when it failed"
    );
    assert!(node_failures.iter().all(|&t| t == 3_600_000));
    assert!(
        report.incidents.iter().all(|i| i.recovery_ms.is_some()),
        "every replayed fault was recovered"
    );
}

#[test]
fn a_trace_naming_an_agent_the_fleet_lacks_is_refused_with_its_file() {
    let dir = Scratch::new("events-bad");
    std::fs::write(
        dir.path().join("events.csv"),
        "time_ms,agent,kind\n1000,10,crash\n",
    )
    .unwrap();
    let error = trace::load_all(&parse(SCENARIO), dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("events.csv") && error.contains("agent 10") && error.contains("10 agents"),
        "{error}"
    );
}

#[test]
fn a_lost_supervisor_is_escalated_at_once_and_its_agent_recreated() {
    let incidents = incidents_of(
        parse(SCENARIO),
        "time_ms,agent,kind\n1800000,4,supervisor_loss\n",
    );
    // Rung 1 cannot help without the supervisor: the controller recreates the pod (rung 2),
    // and the loss is seen the moment it happens.
    let [(1_800_000, 4, "crash", Some(0), Some(_), 2)] = incidents[..] else {
        panic!("one recovered incident, seen at once, by rung 2: {incidents:?}");
    };
}

#[test]
fn a_recreated_agent_is_provisioned_anew_and_takes_its_place_in_the_rest_of_the_trace() {
    let run = |events: &str| {
        let dir = Scratch::new("events-recreate");
        std::fs::write(dir.path().join("events.csv"), events).unwrap();
        let scenario = parse(SCENARIO);
        let replays = trace::load_all(&scenario, dir.path()).expect("the trace loads");
        let mut sim = Simulation::new(scenario, replays).unwrap();
        sim.check_invariants_every(1);
        sim.run(|_| {});
        sim
    };
    let plain = run("time_ms,agent,kind\n2400000,3,crash\n");
    let recreated = run("time_ms,agent,kind\n1800000,3,recreate\n2400000,3,crash\n");
    let report = Report::of(&recreated);
    assert_eq!(report.summary.invariant_violation, None);
    let controller = recreated.controller();
    assert!(
        controller.agent(AgentId(3)).is_none(),
        "the old agent is gone"
    );
    let new = controller
        .agent(AgentId(10))
        .expect("the new agent takes the next id");
    assert_eq!(new.status, AgentStatus::Running);
    assert_eq!(
        new.tenant,
        plain.controller().agent(AgentId(3)).unwrap().tenant,
        "it keeps the tenant of the agent it replaces"
    );
    // One provisioning more than without the recreate: the new agent's create.
    assert_eq!(
        recreated.measures().provisioning.len(),
        plain.measures().provisioning.len() + 1
    );
    // The crash the trace gives agent 3 after the recreate reaches the agent in its place.
    let crashes: Vec<(u64, u32)> = report
        .incidents
        .iter()
        .map(|i| (i.start_ms, i.agent))
        .collect();
    assert_eq!(crashes, [(2_400_000, 10)]);
}

/// The scenario with `latency` lines added (a `[latency]` table).
fn with_latency(latency: &str) -> carapace_sim::scenario::Scenario {
    parse(&format!("{SCENARIO}\n[latency]\n{latency}\n"))
}

/// Start, agent, fault, detection, recovery and rung of one incident.
type Incident = (u64, u32, &'static str, Option<u64>, Option<u64>, u8);

fn incidents_of(scenario: carapace_sim::scenario::Scenario, events: &str) -> Vec<Incident> {
    let dir = Scratch::new("events-notice");
    std::fs::write(dir.path().join("events.csv"), events).unwrap();
    let replays = trace::load_all(&scenario, dir.path()).expect("the trace loads");
    let mut sim = Simulation::new(scenario, replays).unwrap();
    sim.check_invariants_every(1);
    sim.run(|_| {});
    let report = Report::of(&sim);
    assert_eq!(report.summary.invariant_violation, None);
    report
        .incidents
        .iter()
        .map(|i| {
            (
                i.start_ms,
                i.agent,
                i.fault.name(),
                i.detection_ms,
                i.recovery_ms,
                i.rung,
            )
        })
        .collect()
}

/// Agent, fault, detection and rung of each incident.
fn detections(incidents: &[Incident]) -> Vec<(u32, &'static str, Option<u64>, u8)> {
    incidents.iter().map(|i| (i.1, i.2, i.3, i.5)).collect()
}

#[test]
fn a_death_reaches_the_engine_after_its_notice_lag_and_a_restart_in_place_after_its_own() {
    let events = "time_ms,agent,kind\n1800000,3,crash\n2400000,4,supervisor_loss\n";
    let instant = incidents_of(parse(SCENARIO), events);
    let lagged = incidents_of(
        with_latency(
            "exit_notice = { kind = \"constant\", value = \"40ms\" }\n\
             supervisor_loss_notice = { kind = \"constant\", value = \"70ms\" }\n\
             restart = { kind = \"constant\", value = \"25ms\" }",
        ),
        events,
    );
    assert_eq!(
        detections(&instant),
        vec![(3, "crash", Some(0), 1), (4, "crash", Some(0), 2)]
    );
    // The same rungs, each death seen its own lag later.
    assert_eq!(
        detections(&lagged),
        vec![(3, "crash", Some(40), 1), (4, "crash", Some(70), 2)]
    );
    // The crash is restarted in place once it is seen and the restart lag has passed; its
    // boot is the same draw (constant lags draw nothing), seen by a startup probe on a grid
    // that starts with the process, so the recovery grows by both lags exactly.
    let (Some(before), Some(after)) = (instant[0].4, lagged[0].4) else {
        panic!("the crash was recovered: {instant:?} {lagged:?}");
    };
    assert_eq!(after, before + 40 + 25, "{instant:?} {lagged:?}");
}

#[test]
fn a_changed_config_is_heard_after_its_own_notice_and_a_lost_pod_stops_in_its_own_time() {
    let events = "time_ms,agent,kind\n1800000,3,crash\n2400000,4,supervisor_loss\n\
                  3000000,5,config_corruption\n";
    let lags = "stop = { kind = \"constant\", value = \"2s\" }\n\
                exit_notice = { kind = \"constant\", value = \"40ms\" }";
    let pooled = incidents_of(with_latency(lags), events);
    let apart = incidents_of(
        with_latency(&format!(
            "{lags}\n\
             lost_stop = {{ kind = \"constant\", value = \"10ms\" }}\n\
             config_reject_notice = {{ kind = \"constant\", value = \"90ms\" }}"
        )),
        events,
    );
    assert_eq!(
        detections(&pooled),
        vec![
            (3, "crash", Some(40), 1),
            (4, "crash", Some(0), 2),
            (5, "config_corruption", Some(40), 3)
        ]
    );
    // The truncated config's exit waits for the validation that refuses it; a plain crash
    // does not.
    assert_eq!(
        detections(&apart),
        vec![
            (3, "crash", Some(40), 1),
            (4, "crash", Some(0), 2),
            (5, "config_corruption", Some(90), 3)
        ]
    );
    let recovery = |incidents: &[Incident], i: usize| {
        incidents[i]
            .4
            .unwrap_or_else(|| panic!("recovered: {incidents:?}"))
    };
    // Both stops draw alike, so the recreation after a lost supervisor is exactly the two
    // stops apart; the crash restarted in place stops nothing.
    assert_eq!(recovery(&pooled, 1), recovery(&apart, 1) + 1_990);
    assert_eq!(recovery(&pooled, 0), recovery(&apart, 0));
    // The rejected config's pod has a live supervisor: its stop is `stop`, and only its
    // later notice moves it.
    assert_eq!(recovery(&apart, 2), recovery(&pooled, 2) + 50);
}

#[test]
fn a_ready_is_heard_its_notice_after_the_probe_tick_that_saw_it() {
    let events = "time_ms,agent,kind\n1800000,3,crash\n2400000,4,supervisor_loss\n";
    let instant = incidents_of(parse(SCENARIO), events);
    let lagged = incidents_of(
        with_latency("ready_notice = { kind = \"constant\", value = \"7ms\" }"),
        events,
    );
    assert_eq!(detections(&instant), detections(&lagged));
    // A restart in place and a recreation both end at a ready, each heard 7 ms later.
    for (before, after) in instant.iter().zip(&lagged) {
        let (Some(before), Some(after)) = (before.4, after.4) else {
            panic!("recovered: {instant:?} {lagged:?}");
        };
        assert_eq!(after, before + 7, "{instant:?} {lagged:?}");
    }
}

#[test]
fn scenarios_without_notice_lags_do_not_write_them() {
    let text = toml::to_string(&parse(SCENARIO)).expect("a scenario serialises");
    for field in [
        "exit_notice",
        "supervisor_loss_notice",
        "restart =",
        "lost_stop",
        "config_reject_notice",
        "ready_notice",
    ] {
        assert!(!text.contains(field), "{field} in\n{text}");
    }
    let lagged = toml::to_string(&with_latency(
        "exit_notice = { kind = \"constant\", value = \"40ms\" }",
    ))
    .expect("a scenario serialises");
    assert!(lagged.contains("exit_notice"), "{lagged}");
}
