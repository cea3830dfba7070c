//! What a Carapace cluster of 11,000 agents asks of etcd, measured against a real 3-member
//! etcd on loopback (Debian's etcd-server, as `scripts/install-etcd` installs it). Measured,
//! not asserted; figures go to `benches/README.md`.
//!
//! 1. **Keyspace per agent**: 11,000 assignments (a representative OpenClaw agent: its command,
//!    environment, probe, validator and a 3,641-byte config, the size OpenClaw users report)
//!    written as the leader writes them — one fenced transaction each — and one registration
//!    per node under its lease. Logical bytes (keys + values) and the growth of etcd's
//!    database in use, per agent.
//! 2. **Write capacity**: writer threads doing what a report costs for a bounded time — the
//!    node's put of a ~250-byte report, the leader's fenced journal commit of what it meant
//!    (a ~190-byte record, the size the cluster test measures, and the agent's cursor), and
//!    the leader's fenced delete of the report: writes/s and latency.
//! 3. **The steady state**: the write rate the fleet needs, from the stated per-agent rates (the
//!    node's memory deadband refresh, the engine's snapshot interval, fleet-11k's fault rate),
//!    each report costing those three writes, plus
//!    one lease renewal per node per period; run paced at that rate for a bounded time, with
//!    its latency.
//!
//! ```sh
//! cargo bench --bench etcd_load                       # 11,000 agents, 275 nodes, 15 s runs
//! cargo bench --bench etcd_load -- --agents 1100 --seconds 5
//! ```

// Benches measure wall time and spawn threads: the determinism guard binds the engine and the
// simulator, not a bench that times a real etcd.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use carapace_cluster::etcd::Txn;
use carapace_cluster::keys::Keyspace;
use carapace_cluster::local::LocalEtcd;
use carapace_cluster::{Client, Leadership};
use hdrhistogram::Histogram;
use serde_json::json;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Reports per agent per hour in the steady state, and why.
const MEMORY_REPORTS_PER_HOUR: f64 = 6.0; // [reports] memory_refresh = 10 min, steady memory
const SNAPSHOTS_PER_HOUR: f64 = 1.0; // policy.recovery.snapshot_interval_ms = 1 h
/// fleet-11k × 7 d: 117,565 faults over 11,000 agents × 168 h; each costs about four reports
/// (exited, spawned, ready, the command's end).
const FAULT_REPORTS_PER_HOUR: f64 = 117_565.0 / (11_000.0 * 168.0) * 4.0;
/// The node's put, the leader's fenced journal commit, the leader's fenced delete.
const WRITES_PER_REPORT: f64 = 3.0;
/// A journal commit of one report, as the cluster test measures it.
const JOURNAL_COMMIT_BYTES: usize = 191;
const RENEW_EVERY: Duration = Duration::from_secs(2);

struct Args {
    agents: u32,
    nodes: u32,
    seconds: u64,
    writers: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        agents: 11_000,
        nodes: 275,
        seconds: 15,
        writers: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok());
        match flag.as_str() {
            "--agents" => args.agents = value().expect("--agents N") as u32,
            "--nodes" => args.nodes = value().expect("--nodes N") as u32,
            "--seconds" => args.seconds = value().expect("--seconds N"),
            "--writers" => args.writers = value().expect("--writers N") as usize,
            // cargo bench passes --bench; anything else is a mistake worth saying.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn main() {
    let args = parse_args();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/etcd-bench");
    let _ = std::fs::remove_dir_all(&root);
    let etcd = LocalEtcd::start(&root, 3, 34_000, Duration::from_secs(30))
        .expect("a local etcd (scripts/install-etcd)");
    let client = Arc::new(etcd.client(Duration::from_secs(2)));
    let keys = Keyspace::default();
    let (lease, _) = client.grant(Duration::from_secs(600)).unwrap();
    let leader = client.campaign(&keys.election(), b"bench", lease).unwrap();
    let mut out = String::new();

    // 1. The keyspace.
    let db_before = client.db_size_in_use().unwrap();
    let mut logical = 0u64;
    for node in 0..args.nodes {
        let (node_lease, _) = client.grant(Duration::from_secs(600)).unwrap();
        let key = keys.node(&format!("node-{node}"));
        let value = json!({"name": format!("node-{node}"), "zone": format!("zone-{}", node % 5),
            "memory_bytes": 64u64 << 30, "limits_enforced": true, "carapace_version": "0.1.0"})
        .to_string();
        logical += (key.len() + value.len()) as u64;
        client
            .put(&key, value.as_bytes(), Some(node_lease))
            .unwrap();
    }
    let placed = Instant::now();
    let written = AtomicU64::new(0);
    let assignment_bytes = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for writer in 0..args.writers {
            let (client, keys, leader) = (&client, &keys, &leader);
            let (written, assignment_bytes) = (&written, &assignment_bytes);
            let agents = args.agents;
            let nodes = args.nodes;
            let writers = args.writers as u32;
            scope.spawn(move || {
                let mut agent = writer as u32;
                while agent < agents {
                    let node = format!("node-{}", agent % nodes);
                    let key = keys.assignment(&node, agent);
                    let value = assignment(agent).to_string();
                    fenced_put(client, leader, &key, value.as_bytes());
                    assignment_bytes.fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
                    written.fetch_add(1, Ordering::Relaxed);
                    agent += writers;
                }
            });
        }
    });
    let placing = placed.elapsed();
    logical += assignment_bytes.load(Ordering::Relaxed);
    let db_after = client.db_size_in_use().unwrap();
    let per_agent_logical = logical as f64 / f64::from(args.agents);
    let per_agent_db = db_after.saturating_sub(db_before) as f64 / f64::from(args.agents);
    let _ = writeln!(
        out,
        "## etcd for {} agents on {} nodes (3 members, loopback)\n",
        args.agents, args.nodes
    );
    let _ = writeln!(out, "| measure | figure |\n| --- | ---: |");
    let _ = writeln!(
        out,
        "| keyspace, logical (keys + values) per agent | {per_agent_logical:.0} B |"
    );
    let _ = writeln!(
        out,
        "| etcd database in use, growth per agent | {per_agent_db:.0} B |"
    );
    let _ = writeln!(
        out,
        "| initial placement: {} fenced assignment writes, {} writers | {:.1} s ({:.0} writes/s) |",
        args.agents,
        args.writers,
        placing.as_secs_f64(),
        f64::from(args.agents) / placing.as_secs_f64()
    );

    // 2. Capacity for report-shaped fenced writes.
    let seconds = Duration::from_secs(args.seconds);
    let (capacity, histogram) = report_writes(
        "capacity",
        &client,
        &keys,
        &leader,
        args.writers,
        seconds,
        None,
    );
    let _ = writeln!(
        out,
        "| capacity: report put + fenced journal commit + fenced delete, {} writers, {} s | {capacity:.0} writes/s (p50 {:.1} ms, p99 {:.1} ms) |",
        args.writers,
        args.seconds,
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.99)),
    );

    // 3. The steady state at the rate the fleet needs.
    let per_agent_hour = MEMORY_REPORTS_PER_HOUR + SNAPSHOTS_PER_HOUR + FAULT_REPORTS_PER_HOUR;
    let demand = f64::from(args.agents) * per_agent_hour / 3_600.0 * WRITES_PER_REPORT;
    let renewals = f64::from(args.nodes) / RENEW_EVERY.as_secs_f64();
    let (achieved, histogram) = report_writes(
        "steady",
        &client,
        &keys,
        &leader,
        args.writers,
        seconds,
        Some(demand),
    );
    let renewal_latency = renew_for(
        &client,
        args.nodes,
        renewals,
        seconds.min(Duration::from_secs(5)),
    );
    let _ = writeln!(
        out,
        "| steady state needed: {per_agent_hour:.2} reports per agent-hour × {WRITES_PER_REPORT} writes | {demand:.1} writes/s ({:.1}% of capacity) |",
        demand / capacity * 100.0
    );
    let _ = writeln!(
        out,
        "| steady state run at that rate, {} s | {achieved:.1} writes/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms |",
        args.seconds,
        ms(histogram.value_at_quantile(0.5)),
        ms(histogram.value_at_quantile(0.99)),
        ms(histogram.max()),
    );
    let _ = writeln!(
        out,
        "| lease renewals: {} nodes every {} s = {renewals:.0}/s | p50 {:.1} ms, p99 {:.1} ms |",
        args.nodes,
        RENEW_EVERY.as_secs(),
        ms(renewal_latency.value_at_quantile(0.5)),
        ms(renewal_latency.value_at_quantile(0.99)),
    );
    print!("{out}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/etcd_load.md");
    std::fs::write(&path, &out).unwrap();
    eprintln!("written to {}", path.display());
    drop(etcd);
    let _ = std::fs::remove_dir_all(&root);
}

/// An assignment as the leader writes it for an OpenClaw gateway.
fn assignment(agent: u32) -> serde_json::Value {
    let config = format!(
        "{{\"gateway\":{{\"mode\":\"local\",\"port\":1}},\"notes\":\"{}\"}}",
        "x".repeat(3_641 - 48)
    );
    json!({
        "epoch": 1234,
        "record": {
            "id": agent,
            "request": {
                "name": format!("agent-{agent}"), "tenant": agent % 300, "class": 0, "priority": 1,
                "memory_limit": 3u64 << 30, "memory_request": 1u64 << 30,
                "command": ["/opt/openclaw/bin/openclaw", "gateway", "run", "--port", "{port}"],
                "env": {"HOME": "{state}", "OPENCLAW_CONFIG_PATH": "{config}", "OPENCLAW_GATEWAY_TOKEN": "{token}"},
                "probe": "http://127.0.0.1:{port}/readyz",
                "validate": ["/opt/openclaw/bin/openclaw", "config", "validate", "--json"],
            },
            "version": {"runtime": 1, "config": 3},
        },
        "instance": 7,
        "start_command": 1_000_000 + u64::from(agent),
        "config_text": config,
        "snapshot": 42,
    })
}

fn fenced_put(client: &Client, leader: &Leadership, key: &str, value: &[u8]) {
    let outcome = client
        .txn(
            Txn::new()
                .when_created_at(&leader.key, leader.revision)
                .put(key.as_bytes(), value, None),
        )
        .expect("etcd answers");
    assert!(outcome.succeeded, "the bench's leadership was lost");
}

/// Report-shaped writes by `writers` threads for `run`: each a node's put of a report, the
/// leader's fenced journal commit, then its fenced delete of the report. Paced to `rate` writes/s in all when given. Answers writes/s
/// achieved and the latency of each write (µs).
fn report_writes(
    phase: &str,
    client: &Arc<Client>,
    keys: &Keyspace,
    leader: &Leadership,
    writers: usize,
    run: Duration,
    rate: Option<f64>,
) -> (f64, Histogram<u64>) {
    let report = json!({"kind": "event", "agent": 4321, "instance": 7,
        "numbered": {"seq": 1234, "event": {"event": "memory", "at_ms": 123_456_789, "pid": 4242, "rss_bytes": 1_073_741_824u64, "cgroup_bytes": 1_200_000_000u64}}})
    .to_string();
    let commit = vec![b'j'; JOURNAL_COMMIT_BYTES];
    let cursor = br#"{"instance":7,"seq":1234}"#;
    let started = Instant::now();
    let histograms: Vec<Histogram<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let (client, keys, leader, report, commit) =
                    (client.clone(), keys, leader, &report, &commit);
                scope.spawn(move || {
                    let mut histogram = Histogram::<u64>::new(3).unwrap();
                    let node = format!("node-{writer}");
                    let interval = rate
                        .map(|r| Duration::from_secs_f64(writers as f64 * WRITES_PER_REPORT / r));
                    let mut seq = 0u64;
                    while started.elapsed() < run {
                        seq += 1;
                        let key = keys.report(&node, 1, seq);
                        let at = Instant::now();
                        client
                            .put(&key, report.as_bytes(), None)
                            .expect("etcd answers");
                        let _ = histogram.record(at.elapsed().as_micros() as u64);
                        let at = Instant::now();
                        let journal_key =
                            format!("{}journal/{phase}/{writer:04}{seq:016}", keys.root());
                        let cursor_key = format!("{}desired/cursor/{writer:020}", keys.root());
                        let journaled = client
                            .txn(
                                Txn::new()
                                    .when_created_at(&leader.key, leader.revision)
                                    .when_absent(journal_key.as_bytes())
                                    .put(journal_key.as_bytes(), commit, None)
                                    .put(cursor_key.as_bytes(), cursor, None),
                            )
                            .expect("etcd answers");
                        assert!(journaled.succeeded);
                        let _ = histogram.record(at.elapsed().as_micros() as u64);
                        let at = Instant::now();
                        let consumed = client
                            .txn(
                                Txn::new()
                                    .when_created_at(&leader.key, leader.revision)
                                    .delete(key.as_bytes()),
                            )
                            .expect("etcd answers");
                        assert!(consumed.succeeded);
                        let _ = histogram.record(at.elapsed().as_micros() as u64);
                        if let Some(interval) = interval {
                            let next = started + interval.mul_f64(seq as f64);
                            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                    }
                    histogram
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Histogram::<u64>::new(3).unwrap();
    for histogram in &histograms {
        all.add(histogram).unwrap();
    }
    (all.len() as f64 / elapsed, all)
}

/// One lease per node renewed at `rate`/s in all, for `run`: the latency of each renewal (µs).
fn renew_for(client: &Arc<Client>, nodes: u32, rate: f64, run: Duration) -> Histogram<u64> {
    let leases: Vec<_> = (0..nodes.min(64))
        .map(|_| client.grant(Duration::from_secs(60)).unwrap().0)
        .collect();
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut n = 0u64;
    while started.elapsed() < run {
        let lease = leases[n as usize % leases.len()];
        let at = Instant::now();
        client.keep_alive(lease).unwrap();
        let _ = histogram.record(at.elapsed().as_micros() as u64);
        n += 1;
        if let Some(wait) =
            (started + interval.mul_f64(n as f64)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
    }
    histogram
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}
