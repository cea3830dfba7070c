//! Whole-run benchmark of the simulator: fleet-11k for 7 days, and for 1 day at 11,000, 110,000
//! and 1,100,000 agents; for each, events processed, wall time, events/s and peak heap, beside
//! a bare event loop over the same event mix measured in the same process. See
//! `benches/README.md` for what the bare loop does and how to read the figures.
//!
//! Each run is measured in a child process of this binary (`--child NAME`), so that the peak
//! heap of one run is not hidden by the peak of another: the counting allocator's peak only
//! ever grows within a process.

// Benches measure wall time: the determinism guard of clippy.toml binds the engine and the
// simulator, not a bench binary that times them.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use cap::Cap;
use carapace_engine::Millis;
use carapace_sim::scenario::{self, Scenario, knob};
use carapace_sim::{EVENT_KINDS, EventQueue, Simulation};
use serde::{Deserialize, Serialize};
use std::alloc::System;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/fleet-11k.toml");
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/sim_whole_run.md");
const DAY_MS: u64 = 86_400_000;

/// One whole run: fleet-11k with agents, nodes and tenants multiplied by `scale`, for `days`.
#[derive(Clone, Copy, Debug)]
struct Run {
    name: &'static str,
    /// Selects the run with `--only` (besides its name).
    label: &'static str,
    scale: u32,
    days: u64,
    /// Repetitions when `--repeat` is not given.
    repeat: usize,
    /// Run without `--only`/`--scale`; the 1.1M run is not (about half an hour on 2 shared
    /// cores, see benches/README.md).
    default: bool,
}

const RUNS: [Run; 4] = [
    Run {
        name: "fleet-11k x 7d",
        label: "11k",
        scale: 1,
        days: 7,
        repeat: 3,
        default: true,
    },
    Run {
        name: "fleet-11k x 1d",
        label: "11k",
        scale: 1,
        days: 1,
        repeat: 3,
        default: true,
    },
    Run {
        name: "110k x 1d",
        label: "110k",
        scale: 10,
        days: 1,
        repeat: 3,
        default: true,
    },
    Run {
        name: "1.1M x 1d",
        label: "1.1m",
        scale: 100,
        days: 1,
        repeat: 1,
        default: false,
    },
];

/// What a child process measured, printed as one JSON line after [`RESULT`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Measured {
    agents: u64,
    nodes: u32,
    days: u64,
    setup_s: f64,
    run_s: f64,
    events: u64,
    events_by_kind: Vec<u64>,
    /// Events in the queue after setup (one-off and periodic).
    pending_at_start: u64,
    /// Heap bytes after `Simulation::new`, after the run, and at the peak of setup + run.
    setup_bytes: u64,
    end_bytes: u64,
    peak_bytes: u64,
    bare_setup_s: f64,
    bare_run_s: f64,
    bare_events: u64,
    bare_node_ticks: u64,
}

const RESULT: &str = "RESULT ";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let name = args.get(i + 1).expect("--child NAME");
        let run = RUNS.iter().find(|r| r.name == name).expect("a known run");
        let measured = measure(run);
        println!(
            "{RESULT}{}",
            serde_json::to_string(&measured).expect("serialisable")
        );
        return;
    }
    let options = Options::parse(&args);
    let selected: Vec<Run> = RUNS
        .iter()
        .filter(|r| options.selects(r))
        .copied()
        .collect();
    if selected.is_empty() {
        eprintln!("sim_whole_run: no run selected; runs: 11k, 110k, 1.1m (or --scale 1|10|100)");
        std::process::exit(2);
    }
    let exe = std::env::current_exe().expect("own path");
    let mut rows = Vec::new();
    for run in &selected {
        let repeat = options.repeat.unwrap_or(run.repeat);
        let mut samples = Vec::new();
        for rep in 0..repeat {
            eprintln!("sim_whole_run: {} (run {}/{repeat})", run.name, rep + 1);
            let measured = spawn_child(&exe, run);
            eprintln!(
                "  sim {:.2} s for {} events; bare loop {:.3} s for {} events; ratio {:.1}x; peak {} bytes/agent",
                measured.run_s,
                measured.events,
                measured.bare_run_s,
                measured.bare_events,
                measured.run_s / measured.bare_run_s,
                measured.peak_bytes / measured.agents
            );
            samples.push(measured);
        }
        rows.push((*run, samples));
    }
    let table = render(&rows);
    print!("{table}");
    let out = options.out.unwrap_or_else(|| PathBuf::from(DEFAULT_OUT));
    match std::fs::write(&out, &table) {
        Ok(()) => eprintln!("sim_whole_run: table written to {}", out.display()),
        Err(e) => eprintln!("sim_whole_run: cannot write {}: {e}", out.display()),
    }
}

#[derive(Debug, Default)]
struct Options {
    only: Vec<String>,
    scales: Vec<u32>,
    repeat: Option<usize>,
    out: Option<PathBuf>,
}

impl Options {
    /// `--only 11k,110k` (labels or exact names), `--scale 10`, `--repeat N`, `--out FILE`;
    /// anything else (cargo passes `--bench`) is ignored.
    fn parse(args: &[String]) -> Options {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().cloned().unwrap_or_default();
            match arg.as_str() {
                "--only" => options
                    .only
                    .extend(value().split(',').map(|s| s.trim().to_lowercase())),
                "--scale" => options
                    .scales
                    .push(value().parse().expect("--scale 1|10|100")),
                "--repeat" => options.repeat = Some(value().parse().expect("--repeat N")),
                "--out" => options.out = Some(PathBuf::from(value())),
                _ => {}
            }
        }
        options
    }

    fn selects(&self, run: &Run) -> bool {
        if self.only.is_empty() && self.scales.is_empty() {
            return run.default;
        }
        let by_name = self.only.is_empty()
            || self
                .only
                .iter()
                .any(|o| o == run.label || *o == run.name.to_lowercase());
        let by_scale = self.scales.is_empty() || self.scales.contains(&run.scale);
        by_name && by_scale
    }
}

fn spawn_child(exe: &Path, run: &Run) -> Measured {
    let output = Command::new(exe)
        .args(["--child", run.name])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("child runs");
    assert!(output.status.success(), "child for {} failed", run.name);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(RESULT))
        .expect("child prints its result");
    serde_json::from_str(line).expect("child result parses")
}

/// fleet-11k scaled: agents, nodes and tenants multiplied by `scale`, run for `days`.
fn build_scenario(run: &Run) -> Scenario {
    let base = scenario::load_file(Path::new(SCENARIO)).expect("fleet-11k loads");
    let scale = f64::from(run.scale);
    let mut s = knob::set(&base, "duration", (run.days * DAY_MS) as f64).expect("duration");
    s = knob::set(&s, "fleet.nodes", f64::from(base.fleet.nodes) * scale).expect("nodes");
    s = knob::set(&s, "fleet.tenants", f64::from(base.fleet.tenants) * scale).expect("tenants");
    for (i, class) in base.fleet.classes.iter().enumerate() {
        let path = format!("fleet.classes[{i}].agents");
        s = knob::set(&s, &path, f64::from(class.agents) * scale).expect("agents");
    }
    s
}

/// Runs `run` once in this process: the simulation, then the bare loop over its event mix.
fn measure(run: &Run) -> Measured {
    let scenario = build_scenario(run);
    let agents: u64 = scenario
        .fleet
        .classes
        .iter()
        .map(|c| u64::from(c.agents))
        .sum();
    let nodes = scenario.fleet.nodes;
    let period = scenario.probes.memory_interval.ms();
    let base = ALLOCATOR.allocated();

    let started = Instant::now();
    let mut sim = Simulation::new(scenario, Vec::new()).expect("scenario builds");
    let setup_s = started.elapsed().as_secs_f64();
    let setup_bytes = ALLOCATOR.allocated().saturating_sub(base) as u64;
    let pending_at_start = sim.pending_events() as u64;

    // Progress on stderr every 4 simulated hours, so a run cut short still tells its pace.
    let started = Instant::now();
    let mut next_report = 4 * 3_600_000;
    sim.run(|now| {
        if now.0 >= next_report && now < Millis(run.days * DAY_MS) {
            next_report += 4 * 3_600_000;
            eprintln!(
                "  [{}] simulated {} h in {:.1} s",
                run.name,
                now.0 / 3_600_000,
                started.elapsed().as_secs_f64()
            );
        }
    });
    let run_s = started.elapsed().as_secs_f64();
    let peak_bytes = ALLOCATOR.max_allocated().saturating_sub(base) as u64;
    let end_bytes = ALLOCATOR.allocated().saturating_sub(base) as u64;
    let stats = sim.stats().clone();
    let end = sim.end();
    drop(sim);

    let node_ticks = stats.events_by_kind[0];
    let plan = BarePlan {
        nodes,
        period,
        end,
        // Every node has its next tick pending in the periodic lane; the rest is the heap.
        heap_pending: pending_at_start.saturating_sub(u64::from(nodes)),
        heap_events: stats.events - node_ticks,
        heap_kinds: stats.events_by_kind[1..].to_vec(),
    };
    let bare = bare_loop(&plan);
    Measured {
        agents,
        nodes,
        days: run.days,
        setup_s,
        run_s,
        events: stats.events,
        events_by_kind: stats.events_by_kind.to_vec(),
        pending_at_start,
        setup_bytes,
        end_bytes,
        peak_bytes,
        bare_setup_s: bare.setup_s,
        bare_run_s: bare.run_s,
        bare_events: bare.events,
        bare_node_ticks: bare.node_ticks,
    }
}

/// The shape of a run's event stream, as the bare loop replays it.
#[derive(Debug)]
struct BarePlan {
    nodes: u32,
    period: u64,
    end: Millis,
    /// One-off events pending when the run starts: the heap's occupancy.
    heap_pending: u64,
    /// One-off events the run processed.
    heap_events: u64,
    /// One-off events processed, by kind (`EVENT_KINDS[1..]`).
    heap_kinds: Vec<u64>,
}

/// The payload the bare loop carries: the size of the simulator's `Event` (16 bytes).
#[derive(Clone, Copy, Debug)]
struct BareEvent {
    kind: u8,
    id: u32,
    word: u64,
}

const _: () = assert!(std::mem::size_of::<BareEvent>() == 16);

#[derive(Debug)]
struct Bare {
    setup_s: f64,
    run_s: f64,
    events: u64,
    node_ticks: u64,
}

/// The event loop with no world and no engine: the same queue type, the same periodic lane of
/// node ticks, and a heap holding as many one-off events as the run started with, each
/// rescheduling itself after an exponential gap so that as many pop as in the run.
fn bare_loop(plan: &BarePlan) -> Bare {
    const GAPS: usize = 4096;
    let started = Instant::now();
    let mut rng = SplitMix(0x5eed_0000_0000_0001);
    // Mean gap of each self-rescheduling chain: K chains over the duration give H events.
    let mean = plan.heap_pending.max(1) as f64 * plan.end.0 as f64 / plan.heap_events.max(1) as f64;
    let gaps: Vec<u64> = (0..GAPS)
        .map(|_| (-(1.0 - rng.unit()).ln() * mean) as u64)
        .collect();
    // Kinds in the proportions the run processed them (a table of 1024, cycled).
    let total: u64 = plan.heap_kinds.iter().sum::<u64>().max(1);
    let mut kinds = Vec::with_capacity(1024);
    for (k, &count) in plan.heap_kinds.iter().enumerate() {
        let share = (count * 1024).div_ceil(total) as usize;
        kinds.extend(std::iter::repeat_n(k as u8 + 1, share));
    }
    if kinds.is_empty() {
        kinds.push(1);
    }
    let mut queue = EventQueue::default();
    let nodes = u64::from(plan.nodes);
    for node in 0..plan.nodes {
        let offset = u64::from(node) * plan.period / nodes.max(1);
        let event = BareEvent {
            kind: 0,
            id: node,
            word: 0,
        };
        queue.push_periodic(Millis(offset), event);
    }
    for i in 0..plan.heap_pending {
        let at = Millis(gaps[(rng.next() as usize) % GAPS]);
        if at <= plan.end {
            let event = BareEvent {
                kind: kinds[i as usize % kinds.len()],
                id: i as u32,
                word: i,
            };
            queue.push(at, event);
        }
    }
    let setup_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut events = 0u64;
    let mut by_kind = [0u64; EVENT_KINDS.len()];
    let mut checksum = 0u64;
    let period = Millis(plan.period);
    while let Some(at) = queue.peek_time() {
        if at > plan.end {
            break;
        }
        let (at, event) = queue.pop().expect("peeked");
        events += 1;
        by_kind[usize::from(event.kind)] += 1;
        checksum = checksum.rotate_left(5) ^ event.word ^ u64::from(event.id);
        if event.kind == 0 {
            if at + period <= plan.end {
                queue.push_periodic(at + period, event);
            }
        } else {
            let next = at + Millis(gaps[(rng.next() as usize) % GAPS]);
            if next <= plan.end {
                let event = BareEvent {
                    kind: kinds[events as usize % kinds.len()],
                    id: event.id,
                    word: checksum,
                };
                queue.push(next, event);
            }
        }
    }
    let run_s = started.elapsed().as_secs_f64();
    black_box(checksum);
    Bare {
        setup_s,
        run_s,
        events,
        node_ticks: by_kind[0],
    }
}

/// SplitMix64: a tiny deterministic generator for the bare loop's gaps.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn render(rows: &[(Run, Vec<Measured>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | agents | nodes | events | setup | sim wall | events/s | bare wall (events) | sim / bare | ns/event sim, bare | peak heap | peak B/agent | after setup B/agent | µs per agent-day | vs 11k x 1d |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let per_agent_day = |m: &[Measured]| {
        median(
            m.iter()
                .map(|x| x.run_s * 1e6 / (x.agents * x.days) as f64)
                .collect(),
        )
    };
    let reference = rows
        .iter()
        .find(|(r, _)| r.scale == 1 && r.days == 1)
        .map(|(_, m)| per_agent_day(m));
    for (run, samples) in rows {
        let first = &samples[0];
        let wall = median(samples.iter().map(|m| m.run_s).collect());
        let setup = median(samples.iter().map(|m| m.setup_s).collect());
        let bare = median(samples.iter().map(|m| m.bare_run_s).collect());
        let ratio = median(samples.iter().map(|m| m.run_s / m.bare_run_s).collect());
        let agent_day = per_agent_day(samples);
        let linear = reference.map_or("—".to_owned(), |r| format!("{:.2}x", agent_day / r));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.2} s | {:.2} s | {:.2} M | {:.3} s ({}) | **{:.1}x** | {:.0}, {:.0} | {:.0} MiB | **{}** | {} | {:.1} | {} |",
            run.name,
            first.agents,
            first.nodes,
            first.events,
            setup,
            wall,
            first.events as f64 / wall / 1e6,
            bare,
            first.bare_events,
            ratio,
            wall * 1e9 / first.events as f64,
            bare * 1e9 / first.bare_events.max(1) as f64,
            first.peak_bytes as f64 / f64::from(1u32 << 20),
            first.peak_bytes / first.agents,
            first.setup_bytes / first.agents,
            agent_day,
            linear,
        );
    }
    let _ = writeln!(
        out,
        "\nMedians of {} (sim wall, bare wall, ratio per run). Events by kind (first run of each):\n",
        rows.iter()
            .map(|(r, m)| format!("{} x{}", r.name, m.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (run, samples) in rows {
        let m = &samples[0];
        let kinds: Vec<String> = EVENT_KINDS
            .iter()
            .zip(&m.events_by_kind)
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "- {}: {}; pending at start {} (heap {}); bare loop node ticks {} (sim {}); heap after run {} B/agent",
            run.name,
            kinds.join(", "),
            m.pending_at_start,
            m.pending_at_start - u64::from(m.nodes),
            m.bare_node_ticks,
            m.events_by_kind[0],
            m.end_bytes / m.agents,
        );
    }
    out
}
