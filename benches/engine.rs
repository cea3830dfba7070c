//! Engine throughput at fleet scale: placement, re-placement after a node loss, and a mixed
//! input stream dominated by memory samples. `benches/README.md` has the figures.

// Timing a custom loop needs the wall clock, which the determinism guard forbids elsewhere.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use carapace_engine::{AgentId, Input, Millis, NodeId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Duration;

#[path = "support/mod.rs"]
mod support;

use support::{AGENTS, Fleet, NODES, agent_spec};

/// Place one agent among 500 nodes holding 11,000: create it (placement runs in the same
/// call), then remove it again so every iteration sees the same fleet.
fn place_one(c: &mut Criterion) {
    let mut fleet = Fleet::full();
    let id = AgentId(AGENTS);
    c.bench_function("place_one_agent/500_nodes_11k_agents", |b| {
        b.iter(|| {
            fleet.now = fleet.now + Millis(1);
            fleet
                .controller
                .handle(fleet.now, Input::CreateAgent(agent_spec(id.0)))
                .expect("valid");
            let start = fleet.controller.poll_command().expect("placed at once");
            black_box(&start);
            // Not placed yet: removing a queued agent would be cheaper and lie. It is started,
            // so removal stops it and the stop's completion forgets it.
            fleet.feed(Input::RemoveAgent { agent: id });
        });
    });
}

/// Lose a node holding ~22 agents: every one is recreated elsewhere within the call. The node
/// comes back empty afterwards (not timed), so the fleet's shape holds across iterations.
fn replace_lost_node(c: &mut Criterion) {
    let mut fleet = Fleet::full();
    let mut next = 0u32;
    c.bench_function("replace_lost_node/11k_agents", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let node = NodeId(next % NODES);
                next += 1;
                fleet.now = fleet.now + Millis(1);
                let started = std::time::Instant::now();
                fleet
                    .controller
                    .handle(fleet.now, Input::LoseNode { node })
                    .expect("valid");
                let mut starts = 0;
                while let Some(command) = fleet.controller.poll_command() {
                    starts +=
                        usize::from(matches!(command, carapace_engine::Command::Start { .. }));
                    black_box(&command);
                }
                total += started.elapsed();
                black_box(starts);
                // Untimed: bring the recreated agents up and the node back.
                fleet.now = fleet.now + Millis(1);
                for agent in fleet.controller.agent_ids().collect::<Vec<_>>() {
                    let view = fleet.controller.agent(agent).expect("listed");
                    if view.status == carapace_engine::AgentStatus::Starting {
                        fleet.feed(Input::ProbeSucceeded {
                            agent,
                            instance: view.instance,
                        });
                    }
                }
                fleet.feed(Input::JoinNode(support::node_spec(node.0)));
            }
            total
        });
    });
}

/// A stream of inputs, 90% memory samples, the rest crashes and the healthy probes that close
/// them (rung 1). Each batch ends with every agent healthy again, so batches can repeat.
fn mixed_stream(c: &mut Criterion) {
    const BATCH: usize = 10_000;
    let mut fleet = Fleet::full();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut batch: Vec<(u64, Input)> = Vec::with_capacity(BATCH);
    let mut down: Vec<AgentId> = Vec::new();
    for k in 0..BATCH {
        let agent = AgentId(rng.random_range(0..AGENTS));
        let instance = fleet.instance(agent);
        let roll = rng.random_range(0..100);
        let left = BATCH - k;
        let input = if left <= down.len() || (roll >= 95 && !down.is_empty()) {
            let agent = down.pop().expect("non-empty");
            Input::ProbeSucceeded {
                agent,
                instance: fleet.instance(agent),
            }
        } else if roll >= 90 && !down.contains(&agent) && left > down.len() + 1 {
            down.push(agent);
            Input::AgentExited {
                agent,
                instance,
                code: 1,
                oom_killed: false,
            }
        } else {
            Input::SampleMemory {
                agent,
                instance,
                memory_bytes: rng.random_range(300..700) << 20,
            }
        };
        batch.push((k as u64, input));
    }
    assert!(down.is_empty());
    let samples = batch
        .iter()
        .filter(|(_, i)| matches!(i, Input::SampleMemory { .. }))
        .count();
    assert!(samples * 100 >= BATCH * 88, "about 90% samples");
    let mut group = c.benchmark_group("mixed_stream");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("90pct_memory_samples/11k_agents", |b| {
        b.iter(|| {
            let base = fleet.now;
            for (offset, input) in &batch {
                let now = base + Millis(*offset);
                fleet.controller.handle(now, input.clone()).expect("valid");
                if fleet.controller.next_deadline().is_some_and(|d| d <= now) {
                    fleet.controller.handle_timeout(now).expect("monotonic");
                }
                while let Some(command) = fleet.controller.poll_command() {
                    black_box(command);
                }
            }
            fleet.now = base + Millis(BATCH as u64);
        });
    });
    group.finish();
}

criterion_group!(benches, place_one, replace_lost_node, mixed_stream);
criterion_main!(benches);
