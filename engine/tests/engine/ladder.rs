use crate::harness::{MINUTE, V1, V2, agent, fleet_with_nodes, settle};
use carapace_engine::{
    AgentId, AgentStatus, Cause, Command, EngineConfig, EscalationReason, Input, NodeId, Rung,
    StartReason, StopReason, SupervisorCommand, TimelineEvent,
};

const A: AgentId = AgentId(1);

/// One agent, running and known-good at V1 (its dwell passed and its snapshot is taken).
fn known_good_fleet() -> crate::harness::Fleet {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 3, 3);
    fleet.create(agent(1, 1));
    settle(&mut fleet, &[A], MINUTE);
    fleet.run_for(3 * MINUTE);
    let view = fleet.controller.agent(A).unwrap();
    assert_eq!(view.known_good, Some(V1));
    assert!(view.latest_snapshot.is_some());
    fleet
}

fn starts_of(fleet: &crate::harness::Fleet, from: usize) -> Vec<Command> {
    fleet
        .commands_since(from)
        .filter(|c| matches!(c, Command::Start { agent, .. } if *agent == A))
        .cloned()
        .collect()
}

#[test]
fn rung1_crash_is_restarted_in_place_without_a_new_instance() {
    let mut fleet = known_good_fleet();
    let before = fleet.controller.agent(A).unwrap();
    let mark = fleet.commands().len();
    assert!(fleet.crash(A));
    assert_eq!(fleet.status(A), Some(AgentStatus::Restarting));
    assert!(matches!(
        fleet.supervisor_commands().last(),
        Some((_, _, SupervisorCommand::Restart { attempt: 1, .. }))
    ));
    settle(&mut fleet, &[A], MINUTE);
    let after = fleet.controller.agent(A).unwrap();
    assert_eq!(after.instance, before.instance, "rung 1 keeps the instance");
    assert_eq!(after.node, before.node, "rung 1 stays on the node");
    assert!(starts_of(&fleet, mark).is_empty(), "no controller start");
    assert_eq!(after.rung, Some(Rung::RestartInPlace));
    fleet.run_for(3 * MINUTE);
    assert_eq!(fleet.controller.agent(A).unwrap().rung, None);
    assert_eq!(fleet.controller.stats().resolved_by_rung, [1, 0, 0]);
}

#[test]
fn rung2_budget_exhausted_recreates_from_the_latest_snapshot() {
    let mut fleet = known_good_fleet();
    let first = fleet.controller.agent(A).unwrap();
    let mark = fleet.commands().len();
    // Each exit comes after more than `early_exit_ms` of health, so it is no crash loop; the
    // fourth within the period exhausts the budget of three.
    for _ in 0..3 {
        assert!(fleet.crash(A));
        settle(&mut fleet, &[A], MINUTE);
        fleet.run_for(40_000);
        assert!(starts_of(&fleet, mark).is_empty());
    }
    assert!(fleet.crash(A));
    assert!(fleet.supervisor_commands().iter().any(|(_, _, c)| matches!(
        c,
        SupervisorCommand::Escalate {
            reason: EscalationReason::BudgetExhausted,
            ..
        }
    )));
    settle(&mut fleet, &[A], MINUTE);
    let stop_snapshot = fleet
        .commands_since(mark)
        .find_map(|c| match c {
            Command::Stop {
                agent,
                snapshot,
                reason: StopReason::Replace,
                ..
            } if *agent == A => Some(*snapshot),
            _ => None,
        })
        .expect("the old instance is stopped")
        .expect("with a snapshot of its state");
    let starts = starts_of(&fleet, mark);
    let [
        Command::Start {
            reason, snapshot, ..
        },
    ] = starts.as_slice()
    else {
        panic!("one recreation expected: {starts:?}");
    };
    assert_eq!(*reason, StartReason::Recreate);
    assert_eq!(*snapshot, Some(stop_snapshot), "state intact");
    let view = fleet.controller.agent(A).unwrap();
    assert_eq!(view.instance, first.instance.next());
    assert_eq!(view.rung, Some(Rung::Recreate));
}

#[test]
fn rung2_hang_is_recreated() {
    let mut fleet = known_good_fleet();
    let mark = fleet.commands().len();
    assert!(fleet.hang(A));
    settle(&mut fleet, &[A], 0);
    let recovered = fleet.run_while_not(2 * MINUTE, |f| !starts_of(f, mark).is_empty());
    assert!(recovered, "a hung agent is recreated");
    assert!(matches!(
        starts_of(&fleet, mark).as_slice(),
        [Command::Start {
            reason: StartReason::Recreate,
            ..
        }]
    ));
    settle(&mut fleet, &[A], MINUTE);
    assert_eq!(
        fleet.controller.agent(A).unwrap().rung,
        Some(Rung::Recreate)
    );
}

#[test]
fn rung3_crash_right_after_restart_restores_known_good() {
    let mut fleet = known_good_fleet();
    let known_good_snapshot = fleet.controller.agent(A).unwrap().latest_snapshot;
    let mark = fleet.commands().len();
    assert!(fleet.crash(A));
    // The supervisor restarted it at once; it dies again while booting.
    assert!(fleet.crash(A));
    assert!(fleet.supervisor_commands().iter().any(|(_, _, c)| matches!(
        c,
        SupervisorCommand::Escalate {
            reason: EscalationReason::CrashLoop,
            ..
        }
    )));
    settle(&mut fleet, &[A], MINUTE);
    let starts = starts_of(&fleet, mark);
    let [
        Command::Start {
            reason,
            version,
            snapshot,
            ..
        },
    ] = starts.as_slice()
    else {
        panic!("one restore expected: {starts:?}");
    };
    assert_eq!(*reason, StartReason::RestoreKnownGood);
    assert_eq!(*version, V1);
    assert_eq!(*snapshot, known_good_snapshot);
    assert_eq!(
        fleet.controller.agent(A).unwrap().rung,
        Some(Rung::RestoreKnownGood)
    );
}

#[test]
fn rung3_bad_version_that_crash_loops_rolls_back_to_known_good() {
    let mut fleet = known_good_fleet();
    fleet.set_broken(A, Some(Some(V2)));
    let mark = fleet.commands().len();
    fleet
        .input(Input::UpdateAgent(carapace_engine::AgentSpec {
            version: V2,
            ..agent(1, 1)
        }))
        .unwrap();
    fleet.run_for(2 * MINUTE);
    assert_eq!(fleet.status(A), Some(AgentStatus::Running));
    let view = fleet.controller.agent(A).unwrap();
    assert_eq!(view.version, V1, "runs the known-good version again");
    let reasons: Vec<(StartReason, _)> = starts_of(&fleet, mark)
        .iter()
        .map(|c| match c {
            Command::Start {
                reason, version, ..
            } => (*reason, *version),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (StartReason::Rollout, V2),
            (StartReason::RestoreKnownGood, V1)
        ]
    );
    assert!(fleet.alerts().next().is_none());
}

#[test]
fn rung3_invalid_config_restores_known_good() {
    let mut fleet = known_good_fleet();
    let mark = fleet.commands().len();
    assert!(fleet.reject_config(A));
    settle(&mut fleet, &[A], MINUTE);
    assert!(matches!(
        starts_of(&fleet, mark).as_slice(),
        [Command::Start {
            reason: StartReason::RestoreKnownGood,
            version: V1,
            ..
        }]
    ));
    assert_eq!(
        fleet.controller.agent(A).unwrap().rung,
        Some(Rung::RestoreKnownGood)
    );
}

#[test]
fn rung3_invalid_config_of_a_new_version_restores_known_good() {
    let mut fleet = known_good_fleet();
    fleet.set_config_invalid(A, V2);
    fleet
        .input(Input::UpdateAgent(carapace_engine::AgentSpec {
            version: V2,
            ..agent(1, 1)
        }))
        .unwrap();
    fleet.run_for(2 * MINUTE);
    let view = fleet.controller.agent(A).unwrap();
    assert_eq!(view.status, AgentStatus::Running);
    assert_eq!(view.version, V1);
    assert_eq!(view.rung, Some(Rung::RestoreKnownGood));
}

#[test]
fn rung4_still_failing_parks_and_alerts_with_a_post_mortem() {
    let mut fleet = known_good_fleet();
    fleet.set_broken(A, Some(None));
    assert!(fleet.crash(A));
    fleet.run_for(5 * MINUTE);
    assert_eq!(fleet.status(A), Some(AgentStatus::Parked));
    assert!(fleet.live_pods(A).is_empty(), "a parked agent has no pod");
    let alerts: Vec<_> = fleet.alerts().collect();
    let [post_mortem] = alerts.as_slice() else {
        panic!("one alert expected, got {}", alerts.len());
    };
    assert_eq!(post_mortem.agent, A);
    assert_eq!(post_mortem.cause, Cause::Crashed);
    assert_eq!(
        post_mortem.rungs,
        vec![Rung::RestartInPlace, Rung::RestoreKnownGood, Rung::Alert]
    );
    assert_eq!(post_mortem.known_good_version, Some(V1));
    assert!(!post_mortem.timeline.entries.is_empty());
    let rungs_in_timeline: Vec<Rung> = post_mortem
        .timeline
        .entries
        .iter()
        .filter_map(|e| match e.event {
            TimelineEvent::Rung { rung, .. } => Some(rung),
            _ => None,
        })
        .collect();
    for rung in &post_mortem.rungs {
        assert!(
            rungs_in_timeline.contains(rung),
            "the timeline names {rung:?}"
        );
    }
    assert!(
        post_mortem
            .timeline
            .entries
            .iter()
            .any(|e| matches!(e.event, TimelineEvent::Parked))
    );
    assert!(fleet.commands().iter().any(|(_, c)| matches!(
        c,
        Command::Stop {
            reason: StopReason::Park,
            ..
        }
    )));
}

#[test]
fn rung3_restores_a_never_healthy_agent_to_its_provisioned_state_then_parks() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 2, 2);
    fleet.set_broken(A, Some(None));
    fleet.create(agent(1, 1));
    fleet.run_for(2 * MINUTE);
    assert_eq!(fleet.status(A), Some(AgentStatus::Parked));
    let post_mortem = fleet.alerts().next().expect("an alert");
    assert_eq!(post_mortem.known_good_version, None);
    assert_eq!(post_mortem.rungs.last(), Some(&Rung::Alert));
    let starts: Vec<&Command> = fleet.starts().map(|(_, c)| c).collect();
    assert_eq!(
        starts.len(),
        2,
        "one provision, one restore of the provisioned state"
    );
    assert!(matches!(
        starts[1],
        Command::Start {
            reason: StartReason::RestoreKnownGood,
            snapshot: None,
            ..
        }
    ));
}

#[test]
fn a_parked_agent_is_tried_again_when_the_operator_updates_it() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 2, 2);
    fleet.set_broken(A, Some(None));
    fleet.create(agent(1, 1));
    fleet.run_for(2 * MINUTE);
    assert_eq!(fleet.status(A), Some(AgentStatus::Parked));
    fleet.clear_faults();
    fleet
        .input(Input::UpdateAgent(carapace_engine::AgentSpec {
            version: V2,
            ..agent(1, 1)
        }))
        .unwrap();
    settle(&mut fleet, &[A], MINUTE);
    assert_eq!(fleet.controller.agent(A).unwrap().version, V2);
}

#[test]
fn oom_kill_reserves_the_whole_limit_until_samples_say_otherwise() {
    let mut fleet = known_good_fleet();
    let before = fleet.controller.agent(A).unwrap().reservation_bytes;
    assert!(fleet.oom_kill(A));
    let after = fleet.controller.agent(A).unwrap().reservation_bytes;
    assert!(after > before);
    assert_eq!(after, agent(1, 1).memory_bytes_limit);
    settle(&mut fleet, &[A], MINUTE);
}

/// Found by `carapace explore` (smoke, swarm seed 62): an agent alerted for lack of room,
/// started, and queued again before it was known-good kept its past queue deadline, and the
/// deadline invariant broke when that deadline came round.
#[test]
fn a_second_wait_for_room_in_one_incident_leaves_no_stale_deadline() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 1, 1);
    fleet.lose_node(NodeId(0));
    fleet.create(agent(1, 1));
    let queue_deadline = EngineConfig::default().recovery.queue_deadline_ms;
    fleet.run_for(queue_deadline + MINUTE);
    assert_eq!(fleet.alerts().count(), 1, "paged once for want of room");
    assert_eq!(fleet.status(A), Some(AgentStatus::Queued));
    fleet.rejoin(NodeId(0));
    let started = fleet.run_while_not(MINUTE, |f| f.status(A) == Some(AgentStatus::Starting));
    assert!(started, "room is back: the agent starts");
    fleet.lose_node(NodeId(0));
    assert_eq!(fleet.status(A), Some(AgentStatus::Queued));
    // The harness checks every invariant after every step, the deadline one included.
    fleet.run_for(2 * queue_deadline);
    assert_eq!(fleet.alerts().count(), 1, "one incident, one page");
    assert_eq!(fleet.controller.agent(A).unwrap().deadline, None);
}
