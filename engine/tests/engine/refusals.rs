use crate::harness::{Fleet, GIB, MINUTE, agent, fleet_with_nodes, node, settle, views};
use carapace_engine::{
    AgentId, AgentSpec, EngineConfig, EngineError, Input, Instance, Limits, Millis, NodeId,
    StormPolicy, Supervisor, SupervisorError, SupervisorInput, SupervisorPolicy,
};

/// Two agents running and three waiting for the start budget (one start per minute), so that
/// any stray decision would show.
fn busy_fleet() -> Fleet {
    let config = EngineConfig {
        limits: Limits {
            max_agents: 100,
            ..Limits::default()
        },
        storm: StormPolicy {
            burst: 2,
            starts_per_second: 1.0 / 60.0,
            jitter_ms: 0,
            ..StormPolicy::default()
        },
        ..EngineConfig::default()
    };
    let mut fleet = fleet_with_nodes(config, 2, 2);
    for id in 0..5 {
        fleet.create(agent(id, id));
    }
    settle(&mut fleet, &[AgentId(0), AgentId(1)], MINUTE / 2);
    fleet
}

/// Feeds `input` straight to the controller at `at` and checks it is refused with `expected`
/// and that nothing changed: views, clock, timers, and no command.
fn assert_refused(fleet: &mut Fleet, at: Millis, input: Input, expected: EngineError) {
    let before = (views(&fleet.controller), fleet.controller.now());
    let result = fleet.controller.handle(at, input);
    assert_eq!(result, Err(expected));
    assert_eq!(
        fleet.controller.poll_command(),
        None,
        "a refusal decides nothing"
    );
    assert_eq!((views(&fleet.controller), fleet.controller.now()), before);
    fleet.check();
}

#[test]
fn unknown_agents_are_refused() {
    let mut fleet = busy_fleet();
    let now = fleet.now();
    let unknown = AgentId(42);
    let inputs = [
        Input::RemoveAgent { agent: unknown },
        Input::UpdateAgent(agent(42, 1)),
        Input::AgentExited {
            agent: unknown,
            instance: Instance(1),
            code: 1,
            oom_killed: false,
        },
        Input::SampleMemory {
            agent: unknown,
            instance: Instance(1),
            memory_bytes: GIB,
        },
        Input::ProbeSucceeded {
            agent: unknown,
            instance: Instance(1),
        },
    ];
    for input in inputs {
        assert_refused(&mut fleet, now, input, EngineError::UnknownAgent(unknown));
    }
    let depends_on_unknown = AgentSpec {
        depends_on: vec![unknown],
        ..agent(9, 9)
    };
    assert_refused(
        &mut fleet,
        now,
        Input::CreateAgent(depends_on_unknown),
        EngineError::UnknownAgent(unknown),
    );
}

#[test]
fn duplicate_ids_are_refused() {
    let mut fleet = busy_fleet();
    let now = fleet.now();
    assert_refused(
        &mut fleet,
        now,
        Input::CreateAgent(agent(1, 1)),
        EngineError::DuplicateAgent(AgentId(1)),
    );
    assert_refused(
        &mut fleet,
        now,
        Input::JoinNode(node(1, 1, 16)),
        EngineError::DuplicateNode(NodeId(1)),
    );
}

#[test]
fn ids_beyond_the_limits_are_refused() {
    let mut fleet = busy_fleet();
    let now = fleet.now();
    let before = views(&fleet.controller);
    let result = fleet
        .controller
        .handle(now, Input::CreateAgent(agent(100, 1)));
    assert!(matches!(
        result,
        Err(EngineError::InvalidSpec { field: "id", .. })
    ));
    let result = fleet.controller.handle(
        now,
        Input::JoinNode(node(EngineConfig::default().limits.max_nodes, 0, 16)),
    );
    assert!(matches!(
        result,
        Err(EngineError::InvalidSpec { field: "id", .. })
    ));
    assert_eq!(views(&fleet.controller), before);
    assert_eq!(fleet.controller.poll_command(), None);
}

#[test]
fn a_request_above_the_limit_is_refused() {
    let mut fleet = busy_fleet();
    let now = fleet.now();
    let greedy = AgentSpec {
        memory_bytes_request: 3 * GIB,
        memory_bytes_limit: 2 * GIB,
        ..agent(9, 9)
    };
    let before = views(&fleet.controller);
    for input in [
        Input::CreateAgent(greedy.clone()),
        Input::UpdateAgent(AgentSpec {
            id: AgentId(1),
            tenant: carapace_engine::TenantId(1),
            ..greedy
        }),
    ] {
        let result = fleet.controller.handle(now, input);
        assert!(
            matches!(
                result,
                Err(EngineError::InvalidSpec {
                    field: "memory_bytes_request",
                    ..
                })
            ),
            "{result:?}"
        );
    }
    assert_eq!(views(&fleet.controller), before);
}

#[test]
fn unknown_nodes_are_refused() {
    let mut fleet = busy_fleet();
    let now = fleet.now();
    for input in [
        Input::DrainNode { node: NodeId(7) },
        Input::LoseNode { node: NodeId(7) },
        Input::HeartbeatNode { node: NodeId(7) },
    ] {
        assert_refused(&mut fleet, now, input, EngineError::UnknownNode(NodeId(7)));
    }
}

#[test]
fn time_going_backwards_is_refused() {
    let mut fleet = busy_fleet();
    let now = fleet.now();
    let earlier = Millis(now.0 - 1);
    assert_refused(
        &mut fleet,
        earlier,
        Input::RemoveAgent { agent: AgentId(0) },
        EngineError::TimeWentBackwards { now, got: earlier },
    );
    let before = views(&fleet.controller);
    assert_eq!(
        fleet.controller.handle_timeout(earlier),
        Err(EngineError::TimeWentBackwards { now, got: earlier })
    );
    assert_eq!(views(&fleet.controller), before);

    let mut supervisor = Supervisor::new(SupervisorPolicy::default());
    let adopt = SupervisorInput::Adopt {
        agent: AgentId(0),
        instance: Instance(1),
    };
    supervisor.handle(Millis(10), adopt).unwrap();
    assert_eq!(
        supervisor.handle(Millis(9), adopt),
        Err(SupervisorError::TimeWentBackwards {
            now: Millis(10),
            got: Millis(9)
        })
    );
    assert!(supervisor.handle_timeout(Millis(9)).is_err());
}

/// Caught: a refused input still moved the controller's clock forward and pumped the start
/// queue, so a journal replayed without its refused inputs made different decisions.
#[test]
fn refused_input_neither_advances_the_clock_nor_starts_work() {
    let mut fleet = busy_fleet();
    assert_eq!(
        fleet.status(AgentId(4)),
        Some(carapace_engine::AgentStatus::Queued)
    );
    // Long enough for the start budget to refill.
    let later = fleet.now() + Millis(MINUTE + 1);
    assert_refused(
        &mut fleet,
        later,
        Input::RemoveAgent { agent: AgentId(42) },
        EngineError::UnknownAgent(AgentId(42)),
    );
    // A valid input at an earlier time than the refused one is still accepted.
    let accepted_at = later - Millis(1);
    fleet
        .controller
        .handle(accepted_at, Input::HeartbeatNode { node: NodeId(0) })
        .unwrap();
}
