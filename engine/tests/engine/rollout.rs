use crate::harness::{Fleet, MINUTE, V1, V2, agent, fleet_with_nodes, settle};
use carapace_engine::{
    AgentId, AgentStatus, Command, EngineConfig, EngineError, Input, RolloutId, RolloutSpec,
    RolloutState, StartReason,
};

fn ids() -> Vec<AgentId> {
    (0..6).map(AgentId).collect()
}

/// Six agents running V1, known-good.
fn fleet() -> Fleet {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 3, 3);
    for a in ids() {
        fleet.create(agent(a.0, a.0));
    }
    settle(&mut fleet, &ids(), 2 * MINUTE);
    fleet.run_for(3 * MINUTE);
    for a in ids() {
        assert_eq!(fleet.controller.agent(a).unwrap().known_good, Some(V1));
    }
    fleet
}

fn rollout(wave_size: u32) -> Input {
    Input::StartRollout(RolloutSpec {
        id: RolloutId(1),
        agents: ids(),
        version: V2,
        wave_size,
    })
}

fn reports(fleet: &Fleet) -> Vec<RolloutState> {
    fleet
        .commands()
        .iter()
        .filter_map(|(_, c)| match c {
            Command::ReportRollout { state, .. } => Some(*state),
            _ => None,
        })
        .collect()
}

fn rollout_starts(fleet: &Fleet, agent: AgentId) -> usize {
    fleet
        .commands()
        .iter()
        .filter(|(_, c)| {
            matches!(c, Command::Start { agent: a, reason: StartReason::Rollout, .. } if *a == agent)
        })
        .count()
}

#[test]
fn rollout_goes_in_waves_each_gated_on_the_last_being_known_good() {
    let mut fleet = fleet();
    fleet.input(rollout(2)).unwrap();
    assert_eq!(
        reports(&fleet),
        vec![RolloutState::WaveStarted { wave: 0, agents: 2 }]
    );
    for wave in 1..3u32 {
        let started = fleet.run_while_not(10 * MINUTE, |f| {
            reports(f).contains(&RolloutState::WaveStarted { wave, agents: 2 })
        });
        assert!(started, "wave {wave} started");
        // The gate: the previous wave is known-good on V2, the waves after it untouched.
        for a in ids() {
            let view = fleet.controller.agent(a).unwrap();
            let index = a.0 / 2;
            if index < wave {
                assert_eq!(view.known_good, Some(V2), "{a} of wave {index}");
            } else if index > wave {
                assert_eq!(view.version, V1, "{a} of wave {index} waits");
                assert_eq!(rollout_starts(&fleet, a), 0);
            }
        }
    }
    let completed = fleet.run_while_not(10 * MINUTE, |f| {
        reports(f).contains(&RolloutState::Completed)
    });
    assert!(completed);
    for a in ids() {
        let view = fleet.controller.agent(a).unwrap();
        assert_eq!(view.status, AgentStatus::Running);
        assert_eq!(view.version, V2);
        assert_eq!(rollout_starts(&fleet, a), 1);
    }
}

#[test]
fn an_agent_failing_on_the_new_version_rolls_every_changed_agent_back() {
    let mut fleet = fleet();
    fleet.set_broken(AgentId(3), Some(Some(V2)));
    fleet.input(rollout(2)).unwrap();
    let rolled_back = fleet.run_while_not(15 * MINUTE, |f| {
        reports(f)
            .iter()
            .any(|r| matches!(r, RolloutState::RolledBack { .. }))
    });
    assert!(rolled_back);
    assert!(reports(&fleet).contains(&RolloutState::RolledBack {
        failed_agent: AgentId(3)
    }));
    assert!(!reports(&fleet).contains(&RolloutState::Completed));
    fleet.run_for(5 * MINUTE);
    for a in ids() {
        let view = fleet.controller.agent(a).unwrap();
        assert_eq!(view.status, AgentStatus::Running, "{a}");
        assert_eq!(view.version, V1, "{a} is back on V1");
    }
    // The third wave never started.
    assert_eq!(rollout_starts(&fleet, AgentId(4)), 0);
    assert_eq!(rollout_starts(&fleet, AgentId(5)), 0);
    assert!(fleet.alerts().next().is_none(), "rolled back, not parked");
}

#[test]
fn a_rollout_naming_an_agent_twice_or_a_busy_agent_is_refused() {
    let mut fleet = fleet();
    let twice = Input::StartRollout(RolloutSpec {
        id: RolloutId(1),
        agents: vec![AgentId(0), AgentId(0)],
        version: V2,
        wave_size: 1,
    });
    assert!(matches!(
        fleet.input(twice),
        Err(EngineError::InvalidSpec {
            field: "agents",
            ..
        })
    ));
    fleet.input(rollout(1)).unwrap();
    assert_eq!(
        fleet.input(rollout(1)),
        Err(EngineError::DuplicateRollout(RolloutId(1)))
    );
    let busy = Input::StartRollout(RolloutSpec {
        id: RolloutId(2),
        agents: vec![AgentId(5)],
        version: V2,
        wave_size: 1,
    });
    assert!(matches!(
        fleet.input(busy),
        Err(EngineError::InvalidSpec {
            field: "agents",
            ..
        })
    ));
}
