use crate::harness::{Fleet, GIB, MIB, MINUTE, agent, node, settle};
use carapace_engine::{
    AgentId, AgentSpec, Command, EngineConfig, NodeId, Priority, StartReason, StopReason,
};

// A 16 GiB node: placement stops at 12.8 GiB used, migration starts at 14.08, eviction at 15.04.

fn ids() -> Vec<AgentId> {
    (0..4).map(AgentId).collect()
}

/// Four agents (6 GiB limits, 1 GiB requests) on node 0, each sampled at 3 GiB: 12 GiB used.
fn crowded_node(priorities: [u8; 4]) -> Fleet {
    let mut fleet = Fleet::new(EngineConfig::default());
    fleet.join(node(0, 0, 16));
    for (id, priority) in (0..4).zip(priorities) {
        fleet.create(AgentSpec {
            memory_bytes_limit: 6 * GIB,
            priority: Priority(priority),
            ..agent(id, id)
        });
    }
    settle(&mut fleet, &ids(), 2 * MINUTE);
    for a in ids() {
        assert!(fleet.spike(a, 3 * GIB));
    }
    assert_eq!(
        fleet.controller.node(NodeId(0)).unwrap().used_bytes,
        12 * GIB
    );
    fleet
}

fn stops_since(fleet: &Fleet, mark: usize) -> Vec<(AgentId, StopReason)> {
    fleet
        .commands_since(mark)
        .filter_map(|c| match c {
            Command::Stop { agent, reason, .. } => Some((*agent, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn above_the_migrate_watermark_the_fastest_riser_moves_once() {
    let mut fleet = crowded_node([5; 4]);
    fleet.join(node(1, 0, 16));
    fleet.run_for(10_000);
    let mark = fleet.commands().len();
    // Agent 2 grows a little, agent 3 a lot: 14.5 GiB used in all.
    assert!(fleet.spike(AgentId(2), 3 * GIB + 512 * MIB));
    assert!(fleet.spike(AgentId(3), 5 * GIB));
    assert_eq!(
        stops_since(&fleet, mark),
        vec![(AgentId(3), StopReason::Migrate)]
    );
    // One spike, one move: more pressure within the cooldown changes nothing.
    assert!(fleet.spike(AgentId(2), 4 * GIB));
    assert_eq!(stops_since(&fleet, mark).len(), 1);
    settle(&mut fleet, &ids(), MINUTE);
    assert_eq!(
        fleet.controller.agent(AgentId(3)).unwrap().node,
        Some(NodeId(1))
    );
    assert!(fleet.commands_since(mark).any(|c| matches!(
        c,
        Command::Start {
            agent: AgentId(3),
            reason: StartReason::Migrate,
            snapshot: Some(_),
            ..
        }
    )));
}

#[test]
fn with_nowhere_to_go_the_fastest_riser_is_throttled() {
    let mut fleet = crowded_node([5; 4]);
    fleet.run_for(10_000);
    let mark = fleet.commands().len();
    assert!(fleet.spike(AgentId(3), 5 * GIB + 512 * MIB));
    let throttles: Vec<&Command> = fleet
        .commands_since(mark)
        .filter(|c| matches!(c, Command::Throttle { .. }))
        .collect();
    let [
        Command::Throttle {
            agent,
            memory_bytes_high,
            ..
        },
    ] = throttles.as_slice()
    else {
        panic!("one throttle expected: {throttles:?}");
    };
    assert_eq!(*agent, AgentId(3));
    let used = 5 * GIB + 512 * MIB;
    assert!(*memory_bytes_high >= used && *memory_bytes_high <= used + used / 20);
    assert!(stops_since(&fleet, mark).is_empty());
}

#[test]
fn above_the_evict_watermark_the_lowest_priority_is_evicted() {
    let mut fleet = crowded_node([5, 1, 5, 5]);
    fleet.join(node(1, 0, 16));
    fleet.run_for(10_000);
    let mark = fleet.commands().len();
    // Agent 3 spikes to 6.5 GiB: 15.5 GiB used, over the evict watermark. Agent 1 is the
    // lowest priority, though not the one spiking.
    assert!(fleet.spike(AgentId(3), 6 * GIB + 512 * MIB));
    let stops = stops_since(&fleet, mark);
    assert_eq!(stops.len(), 1, "{stops:?}");
    assert_eq!(stops[0].0, AgentId(1));
    settle(&mut fleet, &ids(), MINUTE);
    assert_eq!(
        fleet.controller.agent(AgentId(1)).unwrap().node,
        Some(NodeId(1))
    );
    assert_eq!(fleet.controller.stats().evictions, 1);
}

/// Caught: an eviction's stop was labelled `Replace`, so drivers and reports could not tell an
/// eviction (a density decision) from a recreation (a recovery one).
#[test]
fn eviction_stop_says_evict() {
    let mut fleet = crowded_node([5, 1, 5, 5]);
    fleet.run_for(10_000);
    let mark = fleet.commands().len();
    assert!(fleet.spike(AgentId(3), 6 * GIB + 512 * MIB));
    assert_eq!(
        stops_since(&fleet, mark),
        vec![(AgentId(1), StopReason::Evict)]
    );
}

#[test]
fn above_the_stop_placing_watermark_nothing_new_lands() {
    let mut fleet = crowded_node([5; 4]);
    for a in ids() {
        assert!(fleet.spike(a, 3 * GIB + 256 * MIB));
    }
    fleet.create(AgentSpec {
        memory_bytes_request: 64 * MIB,
        ..agent(9, 9)
    });
    fleet.run_for(MINUTE);
    assert_eq!(
        fleet.status(AgentId(9)),
        Some(carapace_engine::AgentStatus::Queued)
    );
    fleet.join(node(1, 0, 16));
    settle(&mut fleet, &[AgentId(9)], MINUTE);
    assert_eq!(
        fleet.controller.agent(AgentId(9)).unwrap().node,
        Some(NodeId(1))
    );
}
