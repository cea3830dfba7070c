use crate::harness::{Fleet, GIB, MIB, MINUTE, Timing, agent, node};
use carapace_engine::{
    AgentId, AgentSpec, AgentStatus, Command, EngineConfig, Input, NodeId, Priority, RolloutId,
    RolloutSpec, Version, ZoneId,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Agent ids are drawn below this, node ids below `NODES`.
const AGENTS: u8 = 12;
const NODES: u8 = 6;
/// Nodes that join at the start; the others join later, if the stream says so.
const FIRST_NODES: u8 = 3;
/// Small nodes (a 24 GiB cap on limits), so that a node loss crowds the others.
const NODE_GIB: u64 = 8;
/// Once faults stop and capacity is there, every agent that is not parked runs within this.
const LIVENESS_BOUND_MS: u64 = 15 * MINUTE;

/// One thing that happens to the fleet.
#[derive(Clone, Debug)]
enum Op {
    Create {
        id: u8,
        tenant: u8,
        priority: u8,
        limit_gib: u8,
        depends_on: Option<u8>,
        zone: Option<u8>,
    },
    Remove(u8),
    /// The operator changes an agent's limit, and maybe its version.
    Update {
        id: u8,
        limit_gib: u8,
        runtime: Option<u8>,
    },
    Crash(u8),
    Hang(u8),
    OomKill(u8),
    /// Every process of the agent dies soon after starting, until faults stop.
    Break(u8),
    RejectConfig(u8),
    Spike {
        agent: u8,
        mib: u16,
    },
    LoseNode(u8),
    JoinNode(u8),
    DrainNode(u8),
    Rollout {
        agents: u16,
        runtime: u8,
        wave_size: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0..AGENTS;
    let node = 0..NODES;
    prop_oneof![
        6 => (agent.clone(), 0..4u8, 0..4u8, 1..=6u8, proptest::option::weighted(0.2, 0..AGENTS),
              proptest::option::weighted(0.15, 0..3u8))
            .prop_map(|(id, tenant, priority, limit_gib, depends_on, zone)| Op::Create {
                id, tenant, priority, limit_gib, depends_on, zone
            }),
        1 => agent.clone().prop_map(Op::Remove),
        2 => (agent.clone(), 1..=8u8, proptest::option::of(1..4u8))
            .prop_map(|(id, limit_gib, runtime)| Op::Update { id, limit_gib, runtime }),
        4 => agent.clone().prop_map(Op::Crash),
        2 => agent.clone().prop_map(Op::Hang),
        1 => agent.clone().prop_map(Op::OomKill),
        1 => agent.clone().prop_map(Op::Break),
        1 => agent.clone().prop_map(Op::RejectConfig),
        4 => (agent.clone(), 512..9_000u16).prop_map(|(agent, mib)| Op::Spike { agent, mib }),
        2 => node.clone().prop_map(Op::LoseNode),
        2 => node.clone().prop_map(Op::JoinNode),
        1 => node.prop_map(Op::DrainNode),
        1 => (any::<u16>(), 1..4u8, 1..=6u8)
            .prop_map(|(agents, runtime, wave_size)| Op::Rollout { agents, runtime, wave_size }),
    ]
}

/// A stream of operations, each after a gap of virtual time, after a starting population.
fn stream() -> impl Strategy<Value = Vec<(u32, Op)>> {
    let population = proptest::collection::vec(
        (0..4u8, 0..4u8, 1..=6u8)
            .prop_map(|(tenant, priority, limit_gib)| (tenant, priority, limit_gib)),
        2..usize::from(AGENTS),
    );
    let faults = proptest::collection::vec((0..60_000u32, op()), 1..50);
    (population, faults).prop_map(|(population, mut faults)| {
        let mut ops: Vec<(u32, Op)> = population
            .into_iter()
            .enumerate()
            .map(|(id, (tenant, priority, limit_gib))| {
                let create = Op::Create {
                    id: id as u8,
                    tenant,
                    priority,
                    limit_gib,
                    depends_on: None,
                    zone: None,
                };
                (0, create)
            })
            .collect();
        // Let the population boot before the faults begin.
        if let Some((gap, _)) = faults.first_mut() {
            *gap += 30_000;
        }
        ops.append(&mut faults);
        ops
    })
}

fn config(seed: u64) -> EngineConfig {
    let mut config = EngineConfig {
        seed,
        ..EngineConfig::default()
    };
    // A third of the streams run with a warm pool of one or two instances per node.
    config.placement.warm_pool_per_node = (seed % 3) as u16;
    config
}

fn new_fleet(seed: u64) -> Fleet {
    let mut fleet = Fleet::with_timing(config(seed), Timing::default());
    for n in 0..FIRST_NODES {
        fleet.join(node(u32::from(n), u32::from(n % 3), NODE_GIB));
    }
    fleet
}

/// Applies one operation at the fleet's current time. Refused inputs are part of the game:
/// they must change nothing, which the invariant checks after every step would catch.
fn apply(fleet: &mut Fleet, op: &Op, world: &mut World) {
    match *op {
        Op::Create {
            id,
            tenant,
            priority,
            limit_gib,
            depends_on,
            zone,
        } => {
            let limit = u64::from(limit_gib) * GIB;
            let spec = AgentSpec {
                priority: Priority(priority),
                memory_bytes_limit: limit,
                // Small requests against the limits, so that the overcommit cap binds before the
                // stop-placing watermark does.
                memory_bytes_request: limit / 8,
                depends_on: depends_on.map(|d| AgentId(d.into())).into_iter().collect(),
                allowed_zones: zone.map(|z| ZoneId(z.into())).into_iter().collect(),
                ..agent(id.into(), tenant.into())
            };
            if fleet.input(Input::CreateAgent(spec.clone())).is_ok() {
                world.specs.insert(id, spec);
            }
        }
        Op::Update {
            id,
            limit_gib,
            runtime,
        } => {
            let Some(old) = world.specs.get(&id) else {
                return;
            };
            let limit = u64::from(limit_gib) * GIB;
            let spec = AgentSpec {
                memory_bytes_limit: limit,
                memory_bytes_request: old.memory_bytes_request.min(limit),
                version: runtime.map_or(old.version, |r| Version::new(u32::from(r) + 1, 1)),
                ..old.clone()
            };
            if fleet.input(Input::UpdateAgent(spec.clone())).is_ok() {
                world.specs.insert(id, spec);
            }
        }
        Op::Remove(id) => {
            let _ = fleet.input(Input::RemoveAgent {
                agent: AgentId(id.into()),
            });
            // A removal may complete later; an update of a removed agent is simply refused.
        }
        Op::Crash(id) => {
            fleet.crash(AgentId(id.into()));
        }
        Op::Hang(id) => {
            fleet.hang(AgentId(id.into()));
        }
        Op::OomKill(id) => {
            fleet.oom_kill(AgentId(id.into()));
        }
        Op::Break(id) => fleet.set_broken(AgentId(id.into()), Some(None)),
        Op::RejectConfig(id) => {
            fleet.reject_config(AgentId(id.into()));
        }
        Op::Spike { agent, mib } => {
            fleet.spike(AgentId(agent.into()), u64::from(mib) * MIB);
        }
        Op::LoseNode(n) => {
            let id = NodeId(n.into());
            if fleet.controller.node(id).is_some_and(|v| !v.lost) {
                fleet.lose_node(id);
            }
        }
        Op::JoinNode(n) => {
            let id = NodeId(n.into());
            match fleet.controller.node(id) {
                Some(view) if view.lost => fleet.rejoin(id),
                Some(_) => {}
                None => fleet.join(node(n.into(), u32::from(n % 3), NODE_GIB)),
            }
        }
        Op::DrainNode(n) => {
            let _ = fleet.input(Input::DrainNode {
                node: NodeId(n.into()),
            });
        }
        Op::Rollout {
            agents,
            runtime,
            wave_size,
        } => {
            world.rollouts += 1;
            let spec = RolloutSpec {
                id: RolloutId(world.rollouts),
                agents: (0..AGENTS)
                    .filter(|a| agents & (1 << a) != 0)
                    .map(|a| AgentId(a.into()))
                    .collect(),
                version: Version::new(u32::from(runtime) + 1, 1),
                wave_size: wave_size.into(),
            };
            let _ = fleet.input(Input::StartRollout(spec));
        }
    }
}

/// What the test remembers of the desired state it fed.
#[derive(Default)]
struct World {
    specs: BTreeMap<u8, AgentSpec>,
    rollouts: u32,
}

/// Runs the stream; the harness checks every invariant after every step.
fn run(seed: u64, ops: &[(u32, Op)]) -> Fleet {
    let mut fleet = new_fleet(seed);
    let mut world = World::default();
    for (gap, op) in ops {
        fleet.run_for(u64::from(*gap));
        apply(&mut fleet, op, &mut world);
        fleet.check();
    }
    fleet
}

/// A critical alert names `agent` after its last start command (or it never started).
fn alerted_since_start(fleet: &Fleet, agent: AgentId) -> bool {
    let last_start = fleet
        .commands()
        .iter()
        .rposition(|(_, c)| matches!(c, Command::Start { agent: a, .. } if *a == agent));
    let last_alert = fleet
        .commands()
        .iter()
        .rposition(|(_, c)| matches!(c, Command::Alert(pm) if pm.agent == agent));
    match (last_start, last_alert) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(start), Some(alert)) => alert > start,
    }
}

fn command_stream(fleet: &Fleet) -> String {
    serde_json::to_string(&(fleet.commands(), fleet.supervisor_commands()))
        .expect("commands serialize")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// The same seed and inputs give the same commands, byte for byte.
    #[test]
    fn determinism_same_stream_same_commands(seed in any::<u64>(), ops in stream()) {
        let first = run(seed, &ops);
        let second = run(seed, &ops);
        prop_assert_eq!(command_stream(&first), command_stream(&second));
        prop_assert_eq!(first.controller.stats(), second.controller.stats());
    }

    /// After every step: the engine's invariants hold, never two live copies of an agent,
    /// committed memory under every node's cap (all checked by the harness as it steps).
    #[test]
    fn safety_invariants_hold_after_every_step(seed in any::<u64>(), ops in stream()) {
        let mut fleet = run(seed, &ops);
        fleet.run_for(5 * MINUTE);
        fleet.check();
    }

    /// Once faults stop and there is room, every agent runs again, unless it was given up on:
    /// parked, or still waiting (for a dependency that was parked) with a critical alert raised
    /// since it last started. Never silently stuck.
    #[test]
    fn liveness_every_unparked_agent_runs_again(seed in any::<u64>(), ops in stream()) {
        let mut fleet = run(seed, &ops);
        fleet.clear_faults();
        for n in 0..NODES {
            let id = NodeId(n.into());
            if fleet.controller.node(id).is_some_and(|v| v.lost) {
                fleet.rejoin(id);
            }
        }
        // Fresh, empty nodes in every zone: room for the whole fleet whatever the stream did.
        for n in 0..3u32 {
            fleet.join(node(100 + n, n, 64));
        }
        // A rollout restarts its agents wave by wave, each wave waiting out the known-good
        // dwell: planned work, not recovery, so its time is added to the bound.
        let rollout_waves: u64 = ops
            .iter()
            .map(|(_, op)| match op {
                Op::Rollout { agents, wave_size, .. } => {
                    u64::from(agents.count_ones()).div_ceil(u64::from((*wave_size).max(1)))
                }
                _ => 0,
            })
            .sum();
        let bound = LIVENESS_BOUND_MS + rollout_waves * (EngineConfig::default().recovery.known_good_dwell_ms + 2 * MINUTE);
        fleet.run_for(bound);
        let stuck: Vec<(AgentId, Option<AgentStatus>)> = fleet
            .controller
            .agent_ids()
            .map(|a| (a, fleet.status(a)))
            .filter(|(_, s)| !matches!(s, Some(AgentStatus::Running | AgentStatus::Parked)))
            .filter(|(a, s)| !(*s == Some(AgentStatus::Queued) && alerted_since_start(&fleet, *a)))
            .collect();
        let history: Vec<String> = stuck
            .first()
            .map(|(agent, _)| {
                fleet
                    .commands()
                    .iter()
                    .filter(|(_, c)| c.agent() == Some(*agent) || matches!(c, Command::ReportRollout { .. }))
                    .map(|(t, c)| format!("{t} {c:?}"))
                    .collect()
            })
            .unwrap_or_default();
        prop_assert!(stuck.is_empty(), "not running {} after faults stopped: {:?}\n{}",
            bound, stuck, history.join("\n"));
    }
}
