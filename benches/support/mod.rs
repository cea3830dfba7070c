//! A large fleet built straight on the engine for benches: 500 nodes, 11,000 agents, 300
//! tenants, every agent placed and healthy. The "driver" answers at once: a start is followed by
//! its completion and a healthy probe, a stop by its completion.

#![allow(dead_code)] // Each bench binary uses a different part.

use carapace_engine::{
    AgentId, AgentSpec, Command, Controller, EngineConfig, Input, Instance, Millis, NodeId,
    NodeSpec, Outcome, PlacementPolicy, Priority, RegionId, StormPolicy, TenantId, Version, ZoneId,
};

pub const NODES: u32 = 500;
pub const AGENTS: u32 = 11_000;
pub const TENANTS: u32 = 300;
pub const ZONES: u32 = 5;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// A config whose storm brake never binds: the benches measure decisions, not waiting.
pub fn config() -> EngineConfig {
    EngineConfig {
        storm: StormPolicy {
            max_concurrent_starts: 1_000_000,
            starts_per_second: 1e6,
            burst: 1_000_000,
            ..StormPolicy::default()
        },
        placement: PlacementPolicy {
            max_starts_per_node: 64,
            ..PlacementPolicy::default()
        },
        ..EngineConfig::default()
    }
}

pub fn agent_spec(id: u32) -> AgentSpec {
    AgentSpec {
        id: AgentId(id),
        tenant: TenantId(id % TENANTS),
        class: 0,
        priority: Priority((id % 4) as u8),
        memory_bytes_limit: 2 * GIB,
        memory_bytes_request: 512 * MIB,
        version: Version::new(1, 1),
        depends_on: Vec::new(),
        allowed_zones: Vec::new(),
    }
}

pub fn node_spec(id: u32) -> NodeSpec {
    NodeSpec {
        id: NodeId(id),
        region: RegionId(0),
        zone: ZoneId(id % ZONES),
        memory_bytes_capacity: 32 * GIB,
    }
}

/// The controller and the clock that drives it.
pub struct Fleet {
    pub controller: Controller,
    pub now: Millis,
}

impl Fleet {
    /// Nodes only, no agents.
    pub fn empty() -> Fleet {
        let mut fleet = Fleet {
            controller: Controller::new(config()).expect("bench config is valid"),
            now: Millis(0),
        };
        for n in 0..NODES {
            fleet.feed(Input::JoinNode(node_spec(n)));
        }
        fleet
    }

    /// Every agent placed and running.
    pub fn full() -> Fleet {
        let mut fleet = Fleet::empty();
        for id in 0..AGENTS {
            fleet.feed(Input::CreateAgent(agent_spec(id)));
        }
        assert_eq!(fleet.controller.agent_count(), AGENTS);
        fleet
    }

    /// Feeds one input and answers every command as an instant driver would.
    pub fn feed(&mut self, input: Input) {
        self.controller
            .handle(self.now, input)
            .expect("bench inputs are valid");
        self.drain();
    }

    pub fn drain(&mut self) {
        let mut answers = Vec::new();
        while let Some(command) = self.controller.poll_command() {
            match command {
                Command::Start {
                    id,
                    agent,
                    instance,
                    ..
                } => {
                    answers.push(Input::FinishCommand {
                        command: id,
                        outcome: Outcome::Succeeded,
                    });
                    answers.push(Input::ProbeSucceeded { agent, instance });
                }
                Command::Stop { id, .. } | Command::TakeSnapshot { id, .. } => {
                    answers.push(Input::FinishCommand {
                        command: id,
                        outcome: Outcome::Succeeded,
                    });
                }
                _ => {}
            }
        }
        for answer in answers {
            self.feed(answer);
        }
    }

    pub fn instance(&self, agent: AgentId) -> Instance {
        self.controller.agent(agent).expect("desired").instance
    }
}
