use crate::harness::{Fleet, GIB, MIB, MINUTE, V1, V2, agent, fleet_with_nodes, node, settle};
use carapace_engine::{
    AgentId, AgentSpec, AgentStatus, Command, EngineConfig, Input, NodeId, StartReason, StopReason,
    Version, ZoneId,
};
use std::collections::{BTreeMap, BTreeSet};

fn node_of(fleet: &Fleet, agent: AgentId) -> NodeId {
    fleet
        .controller
        .agent(agent)
        .and_then(|a| a.node)
        .unwrap_or_else(|| panic!("{agent} holds no node"))
}

fn ids(range: std::ops::Range<u32>) -> Vec<AgentId> {
    range.map(AgentId).collect()
}

#[test]
fn node_loss_recreates_every_agent_elsewhere_spread_and_under_the_cap() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 5, 3);
    let agents = ids(0..20);
    for a in &agents {
        fleet.create(agent(a.0, a.0 % 7));
    }
    settle(&mut fleet, &agents, 5 * MINUTE);
    let victims: Vec<AgentId> = agents
        .iter()
        .copied()
        .filter(|a| node_of(&fleet, *a) == NodeId(0))
        .collect();
    assert!(victims.len() >= 3, "placement spreads: node-0 holds some");
    let mark = fleet.commands().len();
    fleet.lose_node(NodeId(0));
    settle(&mut fleet, &agents, 5 * MINUTE);
    let mut targets = BTreeMap::<NodeId, u32>::new();
    for a in &victims {
        let target = node_of(&fleet, *a);
        assert_ne!(target, NodeId(0));
        *targets.entry(target).or_default() += 1;
    }
    assert!(
        targets.len() >= 2,
        "a lost node's agents are spread, not piled on one node: {targets:?}"
    );
    let recreations = fleet
        .commands_since(mark)
        .filter(|c| {
            matches!(
                c,
                Command::Start {
                    reason: StartReason::Recreate,
                    ..
                }
            )
        })
        .count();
    assert_eq!(recreations, victims.len());
    for n in fleet.controller.node_ids() {
        let view = fleet.controller.node(n).unwrap();
        assert!(view.committed_bytes <= view.cap_bytes);
    }
    assert_eq!(fleet.controller.node(NodeId(0)).unwrap().agents, 0);
}

#[test]
fn overcommit_cap_bounds_the_sum_of_limits_per_node() {
    let mut fleet = Fleet::new(EngineConfig::default());
    // 8 GiB × 3 = a 24 GiB cap: twelve 2 GiB limits. Requests are small so that only the cap
    // binds, not the watermark.
    fleet.join(node(0, 0, 8));
    let small = |id| AgentSpec {
        memory_bytes_request: 64 * MIB,
        ..agent(id, id)
    };
    for id in 0..15 {
        fleet.create(small(id));
    }
    fleet.run_for(3 * MINUTE);
    let view = fleet.controller.node(NodeId(0)).unwrap();
    assert_eq!(view.cap_bytes, 24 * GIB);
    assert_eq!(view.committed_bytes, 24 * GIB);
    assert_eq!(view.agents, 12);
    let queued = ids(0..15)
        .into_iter()
        .filter(|a| fleet.status(*a) == Some(AgentStatus::Queued))
        .count();
    assert_eq!(queued, 3, "the rest wait for room");
    fleet.join(node(1, 0, 8));
    settle(&mut fleet, &ids(0..15), 2 * MINUTE);
    assert_eq!(fleet.controller.node(NodeId(1)).unwrap().agents, 3);
}

#[test]
fn a_tenant_is_spread_across_nodes_and_zones() {
    // Six nodes in three zones: 0 and 3 in zone 0, 1 and 4 in zone 1, 2 and 5 in zone 2.
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 6, 3);
    let team = ids(0..3);
    for a in &team {
        fleet.create(agent(a.0, 42));
    }
    settle(&mut fleet, &team, 2 * MINUTE);
    let nodes: BTreeSet<NodeId> = team.iter().map(|a| node_of(&fleet, *a)).collect();
    let zones: BTreeSet<u32> = nodes.iter().map(|n| n.0 % 3).collect();
    assert_eq!(nodes.len(), 3, "one node each");
    assert_eq!(
        zones.len(),
        3,
        "one zone each, though two nodes share each zone"
    );
}

#[test]
fn a_tenant_spreads_even_when_another_node_has_more_headroom() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 2, 1);
    // Tenant 1 fills node 0 a little; node 1 gets a bigger neighbour of tenant 2.
    fleet.create(agent(0, 1));
    settle(&mut fleet, &[AgentId(0)], MINUTE);
    assert_eq!(node_of(&fleet, AgentId(0)), NodeId(0));
    fleet.create(AgentSpec {
        memory_bytes_request: 2 * GIB,
        memory_bytes_limit: 4 * GIB,
        ..agent(1, 2)
    });
    settle(&mut fleet, &[AgentId(1)], MINUTE);
    assert_eq!(node_of(&fleet, AgentId(1)), NodeId(1));
    // Node 0 has more headroom, but tenant 1 is already there.
    fleet.create(agent(2, 1));
    settle(&mut fleet, &[AgentId(2)], MINUTE);
    assert_eq!(node_of(&fleet, AgentId(2)), NodeId(1));
}

#[test]
fn a_node_that_holds_the_version_is_preferred() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 2, 1);
    let small = |id, version: Version| AgentSpec {
        memory_bytes_request: 256 * MIB,
        version,
        ..agent(id, id)
    };
    fleet.create(small(0, V2));
    settle(&mut fleet, &[AgentId(0)], MINUTE);
    assert_eq!(
        node_of(&fleet, AgentId(0)),
        NodeId(0),
        "ties go to the lowest id"
    );
    // Node 0 has a little less headroom but already pulled V2.
    fleet.create(small(1, V2));
    settle(&mut fleet, &[AgentId(1)], MINUTE);
    assert_eq!(node_of(&fleet, AgentId(1)), NodeId(0));
    // Without the version, headroom wins.
    fleet.create(small(2, V1));
    settle(&mut fleet, &[AgentId(2)], MINUTE);
    assert_eq!(node_of(&fleet, AgentId(2)), NodeId(1));
}

#[test]
fn drain_moves_every_agent_away_and_places_nothing_new_there() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 3, 3);
    let agents = ids(0..9);
    for a in &agents {
        fleet.create(agent(a.0, a.0));
    }
    settle(&mut fleet, &agents, 3 * MINUTE);
    let on_node0: Vec<AgentId> = agents
        .iter()
        .copied()
        .filter(|a| node_of(&fleet, *a) == NodeId(0))
        .collect();
    assert!(!on_node0.is_empty());
    let mark = fleet.commands().len();
    fleet.input(Input::DrainNode { node: NodeId(0) }).unwrap();
    fleet.create(agent(9, 9));
    let all = ids(0..10);
    // A few at a time: never more than the drain's concurrency (2 by default) of them down
    // at once, where stopping them all together would take down every one.
    let concurrency = 2;
    assert_eq!(EngineConfig::default().placement.drain_concurrency, 2);
    assert!(
        on_node0.len() > concurrency,
        "the test must exercise the limit"
    );
    let emptied = fleet.run_while_not(10 * MINUTE, |f| {
        let down = on_node0
            .iter()
            .filter(|a| f.status(**a) != Some(carapace_engine::AgentStatus::Running))
            .count();
        assert!(
            down <= concurrency,
            "{down} of node-0's agents down at once"
        );
        f.agents_on(NodeId(0)).is_empty()
    });
    assert!(emptied, "the drain empties the node");
    settle(&mut fleet, &all, 3 * MINUTE);
    for a in &all {
        assert_ne!(node_of(&fleet, *a), NodeId(0), "{a} left or avoided node-0");
    }
    assert!(fleet.agents_on(NodeId(0)).is_empty());
    let view = fleet.controller.node(NodeId(0)).unwrap();
    assert!(view.draining);
    assert_eq!(view.committed_bytes, 0);
    let migrations: Vec<&Command> = fleet
        .commands_since(mark)
        .filter(|c| {
            matches!(
                c,
                Command::Stop {
                    reason: StopReason::Migrate,
                    snapshot: Some(_),
                    ..
                }
            )
        })
        .collect();
    assert_eq!(migrations.len(), on_node0.len(), "stopped with a snapshot");
}

#[test]
fn allowed_zones_are_honoured_through_placement_and_node_loss() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 6, 3);
    let zone2 = |id| AgentSpec {
        allowed_zones: vec![ZoneId(2)],
        ..agent(id, id)
    };
    let agents = ids(0..4);
    for a in &agents {
        fleet.create(zone2(a.0));
    }
    settle(&mut fleet, &agents, 2 * MINUTE);
    let in_zone2 = |n: NodeId| n == NodeId(2) || n == NodeId(5);
    for a in &agents {
        assert!(in_zone2(node_of(&fleet, *a)));
    }
    fleet.lose_node(NodeId(2));
    settle(&mut fleet, &agents, 2 * MINUTE);
    for a in &agents {
        assert_eq!(node_of(&fleet, *a), NodeId(5));
    }
    // With no node left in the zone, they wait rather than run anywhere else.
    fleet.lose_node(NodeId(5));
    fleet.run_for(2 * MINUTE);
    for a in &agents {
        assert_eq!(fleet.status(*a), Some(AgentStatus::Queued));
    }
    fleet.rejoin(NodeId(2));
    settle(&mut fleet, &agents, 2 * MINUTE);
    for a in &agents {
        assert_eq!(node_of(&fleet, *a), NodeId(2));
    }
}

#[test]
fn nodes_that_never_joined_or_are_lost_get_nothing() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 2, 2);
    fleet.lose_node(NodeId(1));
    let agents = ids(0..4);
    for a in &agents {
        fleet.create(agent(a.0, a.0));
    }
    settle(&mut fleet, &agents, 2 * MINUTE);
    for a in &agents {
        assert_eq!(node_of(&fleet, *a), NodeId(0));
    }
}

/// Caught: raising an agent's limit on a full node charged the new limit to that node at once,
/// over its overcommit cap, for as long as the migration away took.
#[test]
fn raising_a_limit_on_a_full_node_never_commits_over_the_cap() {
    let mut fleet = Fleet::new(EngineConfig::default());
    fleet.join(node(0, 0, 8));
    let spec = |id, limit_gib| AgentSpec {
        memory_bytes_limit: limit_gib * GIB,
        memory_bytes_request: 64 * MIB,
        ..agent(id, id)
    };
    for id in 0..4 {
        fleet.create(spec(id, 6));
    }
    settle(&mut fleet, &ids(0..4), 2 * MINUTE);
    assert_eq!(
        fleet.controller.node(NodeId(0)).unwrap().committed_bytes,
        24 * GIB
    );
    fleet.join(node(1, 0, 8));
    fleet
        .input(Input::UpdateAgent(spec(0, 8)))
        .expect("a bigger limit is a valid update");
    // The harness checks the cap after every step; check right away too.
    fleet.check();
    settle(&mut fleet, &ids(0..4), 2 * MINUTE);
    assert_eq!(
        fleet.controller.agent(AgentId(0)).unwrap().node,
        Some(NodeId(1)),
        "moved to where the new limit fits"
    );
    assert_eq!(
        fleet.controller.node(NodeId(1)).unwrap().committed_bytes,
        8 * GIB
    );
    // A smaller limit fits where it is: no move, the node is charged less at once.
    fleet.input(Input::UpdateAgent(spec(1, 2))).unwrap();
    assert_eq!(
        fleet.controller.node(NodeId(0)).unwrap().committed_bytes,
        14 * GIB
    );
    assert_eq!(fleet.status(AgentId(1)), Some(AgentStatus::Running));
}

/// Zone 0 has four big nodes, zone 1 two small ones: headroom alone would put most of a
/// tenant in zone 0. The blast-radius limit keeps at most half of it there while zone 1 has
/// room, and `blast_radius` names exactly the agents a zone would take down.
fn lopsided_fleet(config: EngineConfig) -> Fleet {
    let mut fleet = Fleet::new(config);
    for n in 0..4 {
        fleet.join(node(n, 0, 64));
    }
    for n in 4..6 {
        fleet.join(node(n, 1, 8));
    }
    fleet
}

fn agents_in_zone(fleet: &Fleet, zone: u32, agents: &[AgentId]) -> usize {
    let zone_nodes: BTreeSet<NodeId> = (0..6)
        .filter(|n| (*n < 4) == (zone == 0))
        .map(NodeId)
        .collect();
    agents
        .iter()
        .filter(|a| zone_nodes.contains(&node_of(fleet, **a)))
        .count()
}

#[test]
fn blast_radius_keeps_at_most_half_of_a_tenant_in_one_zone() {
    let agents = ids(0..6);
    let mut fleet = lopsided_fleet(EngineConfig::default());
    for a in &agents {
        fleet.create(agent(a.0, 1));
        settle(&mut fleet, &[*a], MINUTE);
    }
    assert_eq!(agents_in_zone(&fleet, 0, &agents), 3);
    let in_zone_0: Vec<AgentId> = agents
        .iter()
        .copied()
        .filter(|a| node_of(&fleet, *a).0 < 4)
        .collect();
    assert_eq!(
        fleet
            .controller
            .blast_radius(carapace_engine::Domain::Zone(ZoneId(0))),
        in_zone_0
    );
    assert_eq!(
        fleet
            .controller
            .blast_radius(carapace_engine::Domain::Zone(ZoneId(7))),
        Vec::<AgentId>::new()
    );

    // Without the limit (share 1.0), headroom puts most of the tenant in the big zone.
    let mut config = EngineConfig::default();
    config.placement.max_tenant_share_per_zone = 1.0;
    let mut unlimited = lopsided_fleet(config);
    for a in &agents {
        unlimited.create(agent(a.0, 1));
        settle(&mut unlimited, &[*a], MINUTE);
    }
    assert!(
        agents_in_zone(&unlimited, 0, &agents) > 3,
        "the test must exercise the limit"
    );
}

#[test]
fn a_zone_cannot_move_to_another_region() {
    let mut fleet = fleet_with_nodes(EngineConfig::default(), 2, 1);
    let mut moved = node(9, 0, 16);
    moved.region = carapace_engine::RegionId(3);
    let refused = fleet.input(Input::JoinNode(moved));
    assert!(
        matches!(
            refused,
            Err(carapace_engine::EngineError::InvalidSpec {
                field: "region",
                ..
            })
        ),
        "{refused:?}"
    );
}

#[test]
fn a_new_agent_takes_a_warm_instance_and_the_pool_is_refilled() {
    let mut config = EngineConfig::default();
    config.placement.warm_pool_per_node = 1;
    let mut fleet = fleet_with_nodes(config, 2, 2);
    let warm_ups = |fleet: &Fleet| {
        fleet
            .commands()
            .iter()
            .filter(|(_, c)| matches!(c, Command::WarmUp { .. }))
            .count()
    };
    assert_eq!(
        warm_ups(&fleet),
        0,
        "no runtime is known before the first agent"
    );
    fleet.create(agent(0, 1));
    assert_eq!(
        warm_ups(&fleet),
        2,
        "the first agent's runtime warms one instance per node"
    );
    settle(&mut fleet, &[AgentId(0)], MINUTE);
    // The first agent came before any pool was warm: it booted cold.
    assert!(matches!(
        fleet.starts().next(),
        Some((_, Command::Start { warm: false, .. }))
    ));
    fleet.run_for(MINUTE);
    assert!(
        fleet
            .controller
            .node_ids()
            .all(|n| fleet.controller.node(n).unwrap().warm == 1)
    );
    fleet.create(agent(1, 2));
    settle(&mut fleet, &[AgentId(1)], MINUTE);
    let last = fleet.starts().last().map(|(_, c)| c.clone());
    assert!(
        matches!(
            last,
            Some(Command::Start {
                warm: true,
                reason: StartReason::Provision,
                ..
            })
        ),
        "{last:?}"
    );
    assert_eq!(warm_ups(&fleet), 3, "the pool it came from is refilled");
    // Recoveries restore state and boot as before: the pool is for new agents.
    assert!(fleet.crash(AgentId(1)));
    fleet.run_for(MINUTE);
    assert!(fleet.starts().all(|(_, c)| !matches!(
        c,
        Command::Start {
            warm: true,
            reason: StartReason::Recreate,
            ..
        }
    )));
}
