//! The simulator against answers worked out by hand: detection, recovery, density, replay.

use crate::common::{Scratch, parse, run, run_with};
use carapace_sim::Fault;
use carapace_sim::naive_agents_per_node;
use carapace_sim::report::Report;
use carapace_sim::scenario::{MemoryTrace, TraceFormat};
use carapace_sim::trace;
use std::collections::BTreeMap;

/// Detection times of many agents' hangs (2,000 agents, 2 hangs a day each, 2 days) under
/// `probes` (a TOML table body).
fn hang_detections(probes: &str) -> Vec<f64> {
    let scenario = parse(&format!(
        r#"
        name = "hangs"
        seed = 7
        duration = "2d"
        warmup = "30m"
        [fleet]
        nodes = 40
        node_memory = "64GiB"
        tenants = 20
        [[fleet.classes]]
        name = "a"
        agents = 2000
        memory_limit = "1GiB"
        memory_request = "256MiB"
        memory = {{ baseline = "200MiB" }}
        faults = {{ hangs_per_day = 2.0 }}
        [probes]
        {probes}
        "#
    ));
    let report = Report::of(&run(scenario, Vec::new()));
    assert_eq!(report.summary.invariant_violation, None);
    let detections: Vec<f64> = report
        .incidents
        .iter()
        .filter(|i| i.fault == Fault::Hang)
        .map(|i| i.detection_ms.expect("every hang is detected") as f64)
        .collect();
    assert!(detections.len() > 5_000, "{} hangs", detections.len());
    detections
}

/// Many agents, only hangs. A hang starts at a Poisson time, independent of the liveness
/// probe's phase, and the next probe shows it: detection is uniform on (0, T], mean T/2.
#[test]
fn hang_detection_averages_half_the_probe_interval() {
    let interval_ms = 10_000.0;
    let detections = hang_detections("interval = \"10s\"");
    assert!(
        detections.iter().all(|&d| d > 0.0 && d <= interval_ms),
        "a hang detected outside (0, T]"
    );
    let mean = detections.iter().sum::<f64>() / detections.len() as f64;
    assert!(
        (mean / (interval_ms / 2.0) - 1.0).abs() < 0.03,
        "mean hang detection {mean} ms; T/2 = {} ms",
        interval_ms / 2.0
    );
}

/// The same hangs with a probe timeout τ: each failing probe is seen τ after it began, so
/// detection is uniform on (τ, T + τ], mean T/2 + τ.
#[test]
fn a_probe_timeout_delays_hang_detection_by_exactly_itself() {
    let (interval_ms, timeout_ms) = (10_000.0, 4_000.0);
    let detections = hang_detections("interval = \"10s\"\ntimeout = \"4s\"");
    assert!(
        detections
            .iter()
            .all(|&d| d > timeout_ms && d <= interval_ms + timeout_ms),
        "a hang detected outside (τ, T + τ]"
    );
    let mean = detections.iter().sum::<f64>() / detections.len() as f64;
    let expected = interval_ms / 2.0 + timeout_ms;
    assert!(
        (mean / expected - 1.0).abs() < 0.03,
        "mean hang detection {mean} ms; T/2 + τ = {expected} ms"
    );
}

/// Node failures (200 nodes failing twice a day each, over 2 days, no agent faults), with
/// `node_faults` extra lines and `extra` scenario tables after them; the report's node-loss
/// incidents.
fn node_loss_run(node_faults: &str, extra: &str) -> Vec<carapace_sim::IncidentRecord> {
    let scenario = parse(&format!(
        r#"
        name = "node-losses"
        seed = 11
        duration = "2d"
        warmup = "30m"
        [fleet]
        nodes = 200
        node_memory = "64GiB"
        tenants = 10
        [[fleet.classes]]
        name = "a"
        agents = 1000
        memory_limit = "1GiB"
        memory_request = "256MiB"
        memory = {{ baseline = "200MiB" }}
        [node_faults]
        failures_per_node_per_day = 2.0
        repair_time = "10m"
        {node_faults}
        {extra}
        "#
    ));
    let report = Report::of(&run(scenario, Vec::new()));
    assert_eq!(report.summary.invariant_violation, None);
    report
        .incidents
        .iter()
        .filter(|i| i.fault == Fault::NodeFailure)
        .collect()
}

/// Detection times of node failures under `node_faults` extra lines.
fn node_loss_detections(node_faults: &str) -> Vec<f64> {
    let detections: Vec<f64> = node_loss_run(node_faults, "")
        .iter()
        .map(|i| i.detection_ms.expect("every node loss is detected") as f64)
        .collect();
    assert!(
        detections.len() > 1_000,
        "{} node-loss incidents",
        detections.len()
    );
    detections
}

/// Without leases a failed node is lost exactly the heartbeat timeout after it failed.
#[test]
fn a_node_without_a_lease_is_lost_after_the_heartbeat_timeout() {
    let detections = node_loss_detections("");
    assert!(
        detections.iter().all(|&d| d == 15_000.0),
        "{:?}",
        &detections[..5]
    );
}

/// With etcd leases (TTL L, renewals every R, etcd's expiry check every C), a failure lands at
/// a uniform point of the renewal period and the expiry waits for the next check: detection is
/// uniform on (L − R, L] plus uniform on [0, C), mean L − R/2 + C/2.
#[test]
fn a_node_with_a_lease_is_lost_when_etcd_expires_it() {
    let (ttl, renew, check) = (15_000.0, 2_000.0, 500.0);
    let detections = node_loss_detections("lease = { ttl = \"15s\", renew_every = \"2s\" }");
    assert!(
        detections
            .iter()
            .all(|&d| d > ttl - renew && d < ttl + check),
        "a node loss detected outside (L − R, L + C)"
    );
    let mean = detections.iter().sum::<f64>() / detections.len() as f64;
    let expected = ttl - renew / 2.0 + check / 2.0;
    assert!(
        (mean / expected - 1.0).abs() < 0.01,
        "mean node-loss detection {mean} ms; L − R/2 + C/2 = {expected} ms"
    );
}

/// Crash recovery is detection (the exit is seen at once) plus a restart in place (the first
/// is immediate), a boot of constant length B, and the startup probe that sees it ready: a
/// crash that meets no other fault recovers in [B, B + P].
#[test]
fn isolated_crash_recovery_is_boot_plus_at_most_one_probe_period() {
    let (boot_ms, probe_ms) = (17_300u64, 1_000u64);
    let scenario = parse(&format!(
        r#"
        name = "crashes"
        seed = 11
        duration = "2d"
        warmup = "30m"
        [fleet]
        nodes = 40
        node_memory = "64GiB"
        tenants = 20
        [[fleet.classes]]
        name = "a"
        agents = 2000
        memory_limit = "1GiB"
        memory_request = "256MiB"
        memory = {{ baseline = "200MiB" }}
        faults = {{ crashes_per_day = 1.0 }}
        [latency]
        boot_after_crash = {{ kind = "constant", value = {boot_ms} }}
        [probes]
        startup_interval = {probe_ms}
        "#
    ));
    let sim = run_with(scenario, Vec::new(), |sim| sim.record_fault_arrivals(true));
    let mut crashes: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &(at, agent, kind) in sim.fault_arrivals() {
        if kind == "crash" {
            crashes.entry(agent.0).or_default().push(at.0);
        }
    }
    // A crash within the restart budget's period before, or during the recovery, is not an
    // isolated crash: budgets, back-off and merged incidents apply to it instead.
    let quiet_before_ms = 600_000;
    let isolated = |agent: u32, start: u64| {
        crashes[&agent]
            .iter()
            .filter(|&&t| t != start)
            .all(|&t| t + quiet_before_ms < start || t > start + boot_ms + probe_ms)
    };
    let report = Report::of(&sim);
    let all: Vec<_> = report
        .incidents
        .iter()
        .filter(|i| i.fault == Fault::Crash)
        .collect();
    let checked: Vec<_> = all
        .iter()
        .filter(|i| isolated(i.agent, i.start_ms))
        .collect();
    assert!(
        checked.len() > 3_000 && checked.len() * 100 > all.len() * 95,
        "{} isolated crashes of {}",
        checked.len(),
        all.len()
    );
    for incident in checked {
        let recovery = incident.recovery_ms.expect("an isolated crash recovers");
        assert!(
            (boot_ms..=boot_ms + probe_ms).contains(&recovery),
            "recovery {recovery} ms outside [B, B+P] for {incident:?}"
        );
        assert_eq!(incident.detection_ms, Some(0), "{incident:?}");
        assert_eq!(
            incident.rung, 1,
            "restart in place resolves it: {incident:?}"
        );
    }
}

/// Two classes: 10 agents limited to 4 GiB and 10 to 2 GiB, on two 16 GiB nodes. The naive
/// baseline reserves the mean limit, 3 GiB: floor(16 / 3) = 5 agents per node. Under the
/// policy all 20 fit (limits 30 GiB per node, under the 3× cap of 48 GiB; usage 5 GiB), so
/// 10 per node: a density ratio of exactly 2.
#[test]
fn density_ratio_of_a_hand_computed_fleet() {
    let scenario = parse(
        r#"
        name = "density"
        seed = 3
        duration = "6h"
        warmup = "30m"
        [fleet]
        nodes = 2
        node_memory = "16GiB"
        tenants = 4
        [[fleet.classes]]
        name = "big"
        agents = 10
        memory_limit = "4GiB"
        memory_request = "1GiB"
        memory = { baseline = "500MiB" }
        [[fleet.classes]]
        name = "small"
        agents = 10
        memory_limit = "2GiB"
        memory_request = "512MiB"
        memory = { baseline = "500MiB" }
        "#,
    );
    assert_eq!(naive_agents_per_node(&scenario), 5.0);
    let report = Report::of(&run(scenario, Vec::new()));
    assert_eq!(report.summary.naive_agents_per_node, 5.0);
    assert_eq!(report.summary.agents_per_node, 10.0);
    assert_eq!(report.summary.density_ratio, 2.0);
    assert_eq!(report.summary.incidents, 0);
}

/// A replayed trace, generated here: `SERIES` series of `SAMPLES` samples a minute apart.
const SERIES: u64 = 4;
const SAMPLES: u64 = 240;
const MIB: u64 = 1 << 20;

fn synthetic_trace() -> String {
    let mut text = String::from("time_ms,series,memory_bytes\n");
    for s in 0..SERIES {
        for k in 0..SAMPLES {
            // A deterministic wobble between 200 and 799 MiB, different per series.
            let mib = 200 + (s * 7_919 + k * k * 104_729 + k * 31) % 600;
            text.push_str(&format!("{},pod-{s},{}\n", k * 60_000, mib * MIB));
        }
    }
    text
}

/// The sim replays a trace's memory faithfully: sampling it at the sim's cadence gives the
/// trace's mean, and the node memory the sim measured is agents × that mean.
#[test]
fn a_replayed_memory_trace_reproduces_its_mean() {
    let dir = Scratch::new("replay");
    std::fs::write(dir.path().join("mem.csv"), synthetic_trace()).expect("write the trace");
    let spec = MemoryTrace {
        path: "mem.csv".into(),
        format: TraceFormat::Csv,
        scale_to: None,
    };
    let series = trace::load(&spec, dir.path()).expect("the trace loads");
    assert_eq!(series.len(), SERIES as usize);
    assert_eq!(series.period_ms(), (SAMPLES - 1) * 60_000 + 1);
    let (mean, max) = series.sample_stats();
    assert!(
        max < (800 * MIB) as f64 && mean > (300 * MIB) as f64,
        "{mean} {max}"
    );

    // 1. At the sim's sampling cadence (30 s, offset so steps are not hit exactly).
    let cadence = 30_000;
    let mut sum = 0.0;
    let mut count = 0.0;
    for index in 0..series.len() {
        for at in (7_000..SAMPLES * 60_000 * 5).step_by(cadence) {
            sum += series.value_at(index, at, 0) as f64;
            count += 1.0;
        }
    }
    let sampled = sum / count;
    assert!(
        (sampled / mean - 1.0).abs() < 0.01,
        "sampled {sampled} against the trace's {mean}"
    );

    // 2. Through the whole simulation: one node, nothing but the trace moving memory.
    let agents = 100.0;
    let node_bytes = 128.0 * 1024.0 * MIB as f64;
    let mut scenario = parse(
        r#"
        name = "replay"
        seed = 5
        duration = "2d"
        warmup = "1h"
        [fleet]
        nodes = 1
        node_memory = "128GiB"
        tenants = 1
        [[fleet.classes]]
        name = "replayed"
        agents = 100
        memory_limit = "1GiB"
        memory_request = "512MiB"
        memory = { baseline = "512MiB" }
        "#,
    );
    scenario.fleet.classes[0].memory.trace = Some(spec);
    let report = Report::of(&run(scenario, vec![(0, series)]));
    assert_eq!(report.summary.incidents, 0);
    let measured: Vec<f64> = report
        .buckets
        .iter()
        .filter(|b| b.end_ms > 3_600_000)
        .map(|b| b.node_memory_utilisation_mean)
        .collect();
    let utilisation = measured.iter().sum::<f64>() / measured.len() as f64;
    let expected = agents * mean / node_bytes;
    assert!(
        (utilisation / expected - 1.0).abs() < 0.05,
        "node utilisation {utilisation}, expected {expected} from the trace"
    );
}

/// A controller failure of constant takeover D (no renewal jitter) arriving as a Poisson
/// process of rate λ covers a fraction λ·D of the time. A node loss whose lease expires in
/// such an outage is learned when the standby takes over, at most D later; every other one
/// exactly as without failovers — and the node failures themselves are drawn as before.
#[test]
fn a_controller_failover_delays_what_the_engine_learns_by_at_most_the_takeover() {
    let (per_day, takeover_ms) = (48.0, 120_000.0);
    let lease = "lease = { ttl = \"15s\", renew_every = \"2s\" }";
    let without = node_loss_detections_by_start(lease, "");
    let with = node_loss_detections_by_start(
        lease,
        &format!(
            "[controller_faults]\nfailures_per_day = {per_day}\nleader_ttl = \"100s\"\n\
             renew_every = \"0s\"\nrebuild = \"20s\""
        ),
    );
    // The same failures: a node that happened to hold no agent in one run has no incident
    // there, so most, not all, starts are in both.
    let common: Vec<u64> = without
        .keys()
        .filter(|s| with.contains_key(s))
        .copied()
        .collect();
    assert!(
        common.len() * 100 >= without.len().max(with.len()) * 95,
        "node failures drawn differently: {} in common of {} and {}",
        common.len(),
        without.len(),
        with.len()
    );
    let mut delayed = 0usize;
    for start in &common {
        let (base, failed_over) = (without[start], with[start]);
        let extra = failed_over - base;
        assert!(
            (0.0..=takeover_ms).contains(&extra),
            "the node loss at {start} ms was learned {extra} ms later (takeover {takeover_ms} ms)"
        );
        if extra > 0.0 {
            delayed += 1;
        }
    }
    let fraction = delayed as f64 / common.len() as f64;
    let expected = per_day * takeover_ms / 86_400_000.0;
    assert!(
        (fraction - expected).abs() < expected * 0.4,
        "{delayed} of {} node losses learned late ({fraction:.3}); λ·D = {expected:.3}",
        common.len()
    );
}

/// When each node failure (by its start) was learned, with `extra` scenario tables.
fn node_loss_detections_by_start(node_faults: &str, extra: &str) -> BTreeMap<u64, f64> {
    let mut by_start = BTreeMap::new();
    for incident in node_loss_run(node_faults, extra) {
        let detection = incident.detection_ms.expect("every node loss is detected") as f64;
        let seen = by_start.entry(incident.start_ms).or_insert(detection);
        assert_eq!(
            *seen, detection,
            "one node's agents learned lost at different times"
        );
    }
    by_start
}
