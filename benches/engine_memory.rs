//! Engine state bytes per agent, measured with a counting global allocator: the heap the
//! controller holds for a fleet of placed, running agents, divided by the agent count.

use cap::Cap;
use std::alloc::System;

#[path = "support/mod.rs"]
mod support;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

fn main() {
    // Cargo passes `--bench` (and filters) to every bench binary; there is nothing to filter.
    let baseline = ALLOCATOR.allocated();
    let empty = support::Fleet::empty();
    let with_nodes = ALLOCATOR.allocated();
    drop(empty);
    let full = support::Fleet::full();
    let with_agents = ALLOCATOR.allocated();
    let agents = u64::from(full.controller.agent_count());
    let per_agent = (with_agents - with_nodes) as f64 / agents as f64;
    println!(
        "engine_memory: {} nodes = {} KiB; {} agents placed and running = {} KiB; {:.0} bytes/agent \
         (timers pending: {})",
        support::NODES,
        (with_nodes - baseline) / 1024,
        agents,
        (with_agents - with_nodes) / 1024,
        per_agent,
        full.controller.pending_timers()
    );
}
