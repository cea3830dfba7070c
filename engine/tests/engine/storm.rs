use crate::harness::{MINUTE, agent, fleet_with_nodes, settle};
use carapace_engine::{
    AgentId, AgentSpec, Command, EngineConfig, Millis, NodeId, Priority, StartReason, StormPolicy,
};

fn storm_config() -> EngineConfig {
    EngineConfig {
        storm: StormPolicy {
            max_concurrent_starts: 5,
            starts_per_second: 2.0,
            burst: 4,
            jitter_ms: 200,
            placement_retry_ms: 5_000,
        },
        ..EngineConfig::default()
    }
}

#[test]
fn mass_node_loss_restarts_are_bounded_and_drain_by_priority() {
    let mut fleet = fleet_with_nodes(storm_config(), 10, 5);
    let agents: Vec<AgentId> = (0..40).map(AgentId).collect();
    for a in &agents {
        fleet.create(AgentSpec {
            priority: Priority((a.0 % 4) as u8),
            ..agent(a.0, a.0 % 13)
        });
    }
    settle(&mut fleet, &agents, 10 * MINUTE);
    fleet.peak_starting = 0;
    let first_loss = fleet.commands().len();
    for n in 0..5 {
        fleet.lose_node(NodeId(n));
    }
    let lost_at = fleet.now();
    // Starts issued during the losses may land on a node lost next; from here on the queue
    // holds every agent still to recreate.
    let mark = fleet.commands().len();
    settle(&mut fleet, &agents, 10 * MINUTE);

    assert!(
        fleet.peak_starting <= 5,
        "at most max_concurrent_starts boot at once, saw {}",
        fleet.peak_starting
    );
    let starts: Vec<(Millis, AgentId)> = fleet.commands()[first_loss..]
        .iter()
        .filter_map(|(t, c)| match c {
            Command::Start {
                agent,
                reason: StartReason::Recreate,
                ..
            } => Some((*t, *agent)),
            _ => None,
        })
        .collect();
    assert!(
        starts.len() >= 15,
        "half the fleet was recreated: {}",
        starts.len()
    );
    // The token bucket: never more than the burst plus a second's refill within one second.
    for (i, (t, _)) in starts.iter().enumerate() {
        let window = starts[i..]
            .iter()
            .take_while(|(u, _)| *u < *t + Millis(1_000))
            .count();
        assert!(window <= 4 + 2, "{window} starts within a second of {t}");
    }
    // Everything left was queued at the same instant: highest priority first.
    let priorities: Vec<u32> = fleet
        .commands_since(mark)
        .filter_map(|c| match c {
            Command::Start { agent, .. } => Some(agent.0 % 4),
            _ => None,
        })
        .collect();
    assert!(
        priorities.windows(2).all(|w| w[0] >= w[1]),
        "queue drains by priority: {priorities:?}"
    );
    assert!(
        fleet.commands()[first_loss..mark]
            .iter()
            .any(|(t, c)| *t == lost_at && matches!(c, Command::Start { .. })),
        "the first starts go out at once"
    );
}

#[test]
fn without_storm_control_the_same_loss_boots_everything_at_once() {
    // The control for the test above: its bound is the policy's doing, not the scenario's.
    let config = EngineConfig::default();
    let mut fleet = fleet_with_nodes(config, 10, 5);
    let agents: Vec<AgentId> = (0..40).map(AgentId).collect();
    for a in &agents {
        fleet.create(agent(a.0, a.0 % 13));
    }
    settle(&mut fleet, &agents, 10 * MINUTE);
    fleet.peak_starting = 0;
    for n in 0..5 {
        fleet.lose_node(NodeId(n));
    }
    settle(&mut fleet, &agents, 10 * MINUTE);
    assert!(fleet.peak_starting > 5, "peak {}", fleet.peak_starting);
}
