use crate::harness::{Fleet, MINUTE, agent, fleet_with_nodes, settle, views};
use carapace_engine::{
    AgentId, AgentSpec, AgentStatus, Command, EngineConfig, EngineError, Input, NodeId,
};

const COORDINATOR: AgentId = AgentId(0);
const WORKERS: [AgentId; 2] = [AgentId(1), AgentId(2)];

fn worker(id: u32) -> AgentSpec {
    AgentSpec {
        depends_on: vec![COORDINATOR],
        ..agent(id, 7)
    }
}

fn first_start(fleet: &Fleet, agent: AgentId, after: usize) -> usize {
    fleet.commands()[after..]
        .iter()
        .position(|(_, c)| matches!(c, Command::Start { agent: a, .. } if *a == agent))
        .map(|p| p + after)
        .unwrap_or_else(|| panic!("{agent} was never started"))
}

fn team() -> Fleet {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 1, 1);
    fleet.create(agent(0, 7));
    for w in WORKERS {
        fleet.create(worker(w.0));
    }
    fleet
}

#[test]
fn workers_start_only_once_their_coordinator_runs() {
    let mut fleet = team();
    assert_eq!(fleet.status(COORDINATOR), Some(AgentStatus::Starting));
    for w in WORKERS {
        assert_eq!(fleet.status(w), Some(AgentStatus::Queued));
    }
    let healthy = fleet.run_while_not(MINUTE, |f| {
        f.status(COORDINATOR) == Some(AgentStatus::Running)
    });
    assert!(healthy);
    let coordinator_healthy_at = fleet.now();
    settle(&mut fleet, &WORKERS, MINUTE);
    for w in WORKERS {
        let index = first_start(&fleet, w, 0);
        assert!(fleet.commands()[index].0 >= coordinator_healthy_at);
    }
}

#[test]
fn after_a_node_loss_the_coordinator_is_recreated_first() {
    let mut fleet = team();
    settle(
        &mut fleet,
        &[COORDINATOR, WORKERS[0], WORKERS[1]],
        2 * MINUTE,
    );
    fleet.join(crate::harness::node(1, 1, 16));
    let mark = fleet.commands().len();
    fleet.lose_node(NodeId(0));
    settle(
        &mut fleet,
        &[COORDINATOR, WORKERS[0], WORKERS[1]],
        2 * MINUTE,
    );
    let coordinator = first_start(&fleet, COORDINATOR, mark);
    for w in WORKERS {
        let start = first_start(&fleet, w, mark);
        assert!(start > coordinator);
        assert!(fleet.commands()[start].0 > fleet.commands()[coordinator].0);
    }
}

#[test]
fn a_dependency_cycle_is_refused_and_changes_nothing() {
    let mut fleet = team();
    fleet.run_for(MINUTE);
    let before = views(&fleet.controller);
    let commands = fleet.commands().len();
    let cycle = AgentSpec {
        depends_on: vec![WORKERS[0]],
        ..agent(0, 7)
    };
    assert_eq!(
        fleet.input(Input::UpdateAgent(cycle)),
        Err(EngineError::DependencyCycle {
            agent: COORDINATOR,
            through: WORKERS[0]
        })
    );
    let itself = AgentSpec {
        depends_on: vec![AgentId(9)],
        ..agent(9, 7)
    };
    assert_eq!(
        fleet.input(Input::CreateAgent(itself)),
        Err(EngineError::DependencyCycle {
            agent: AgentId(9),
            through: AgentId(9)
        })
    );
    assert_eq!(views(&fleet.controller), before);
    assert_eq!(fleet.commands().len(), commands);
}

#[test]
fn an_agent_others_depend_on_cannot_be_removed() {
    let mut fleet = team();
    assert_eq!(
        fleet.input(Input::RemoveAgent { agent: COORDINATOR }),
        Err(EngineError::DependedOn {
            agent: COORDINATOR,
            dependent: WORKERS[0]
        })
    );
    for w in WORKERS {
        fleet.input(Input::RemoveAgent { agent: w }).unwrap();
    }
    fleet
        .input(Input::RemoveAgent { agent: COORDINATOR })
        .unwrap();
    fleet.run_for(MINUTE);
    assert_eq!(fleet.controller.agent_count(), 0);
    assert!(fleet.agents_on(NodeId(0)).is_empty());
}
