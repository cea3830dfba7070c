//! Fuzzing every parser and decoder that takes outside input: scenario TOML, trace CSV (memory
//! and events), the daemon's config, API bodies, journal records, snapshot manifests and the
//! pod protocol's lines. Each target is fed valid inputs mutated at random (bytes flipped,
//! cut, spliced, repeated, tokens inserted) and plain random bytes, from a seeded ChaCha
//! stream so that a failing case replays; a panic anywhere fails the run.
//!
//! `cargo test --release --bin carapace fuzz` runs `CARAPACE_FUZZ_CASES` (default 2,000) cases
//! per target; docs/fuzzing.md records the million-case runs.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Tokens that steer mutations into the grammar's corners.
const TOKENS: &[&str] = &[
    "\"",
    "{",
    "}",
    "[",
    "]",
    "=",
    ",",
    ":",
    "\n",
    "\\",
    "-1",
    "1e999",
    "18446744073709551616",
    "NaN",
    "null",
    "true",
    "\"\\u0000\"",
    "[[",
    "]]",
    "'''",
    "\"\"\"",
    "#",
    "0x",
    "\u{feff}",
    "infinity",
    "9999999 PiB",
    "1h",
    "\r\n",
    "\t",
];

fn cases() -> u64 {
    std::env::var("CARAPACE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

/// One input: a seed mutated a few times, or (one case in eight) random bytes.
fn input(rng: &mut ChaCha8Rng, seeds: &[&[u8]]) -> Vec<u8> {
    if rng.random_range(0..8) == 0 {
        let length = rng.random_range(0..256);
        return (0..length).map(|_| rng.random()).collect();
    }
    let mut bytes = seeds[rng.random_range(0..seeds.len())].to_vec();
    for _ in 0..rng.random_range(1..6) {
        mutate(rng, &mut bytes);
    }
    bytes
}

fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    let at = |rng: &mut ChaCha8Rng, bytes: &Vec<u8>| rng.random_range(0..=bytes.len());
    match rng.random_range(0..6) {
        0 if !bytes.is_empty() => {
            let i = rng.random_range(0..bytes.len());
            bytes[i] = rng.random();
        }
        1 => {
            let cut = at(rng, bytes);
            bytes.truncate(cut);
        }
        2 => {
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            let i = at(rng, bytes);
            bytes.splice(i..i, token.bytes());
        }
        3 if !bytes.is_empty() => {
            let start = rng.random_range(0..bytes.len());
            let end = rng.random_range(start..=bytes.len().min(start + 64));
            let piece = bytes[start..end].to_vec();
            let i = at(rng, bytes);
            bytes.splice(i..i, piece);
        }
        4 if !bytes.is_empty() => {
            let start = rng.random_range(0..bytes.len());
            let end = rng.random_range(start..=bytes.len());
            bytes.drain(start..end);
        }
        _ => {
            let i = at(rng, bytes);
            bytes.insert(i, rng.random());
        }
    }
}

/// Runs `target` on `cases()` inputs; panics name the target, the case and the input.
fn fuzz(name: &str, stream: u64, seeds: &[&[u8]], target: impl Fn(&[u8])) {
    let mut rng = ChaCha8Rng::seed_from_u64(0xC0FFEE);
    rng.set_stream(stream);
    for case in 0..cases() {
        let bytes = input(&mut rng, seeds);
        // A target that panics is the finding: whatever state it leaves is not looked at.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(&bytes)));
        assert!(
            outcome.is_ok(),
            "{name}: case {case} panicked on {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn fuzz_scenario_files() {
    let smoke = include_bytes!("../../scenarios/smoke.toml");
    let storm = include_bytes!("../../scenarios/spike-storm.toml");
    fuzz("scenario TOML", 1, &[smoke, storm], |bytes| {
        let _ = carapace_sim::scenario::parse_str(&text(bytes), "fuzz.toml");
    });
}

#[test]
fn fuzz_trace_csv() {
    let generic: &[u8] = b"time_ms,memory_bytes\n0,1000\n60000,2000\n120000,1500\n";
    let alibaba: &[u8] = b"pod,timestamp,mem_util\np1,0,0.5\np1,57,0.6\np2,0,0.1\n";
    let bitbrains: &[u8] = b"Timestamp [ms];CPU cores;Memory capacity provisioned [KB];Memory usage [KB]\n0;1;1000;500\n300000;1;1000;700\n";
    let events = include_bytes!("../../scenarios/traces/drill.csv");
    fuzz(
        "trace CSV",
        2,
        &[generic, alibaba, bitbrains, events],
        |bytes| {
            let text = text(bytes);
            let _ = carapace_sim::trace::parse_generic(&text, "fuzz.csv");
            let _ = carapace_sim::trace::parse_alibaba(&text, "fuzz.csv");
            let _ = carapace_sim::trace::parse_bitbrains(&text, "fuzz.csv");
            let _ = carapace_sim::trace::parse_events(&text, "fuzz.csv");
        },
    );
}

#[test]
fn fuzz_daemon_config() {
    let config: &[u8] = b"data_dir = \"d\"\n[api]\nlisten = \"127.0.0.1:7878\"\ntenant_burst = 5\n[node]\nmemory = \"8GiB\"\n[pods]\nport_base = 28800\nprobe_interval = \"1s\"\n[policy.recovery]\nknown_good_dwell_ms = 1000\n[policy.placement]\novercommit_ratio = 3.0\n";
    fuzz("serve config", 3, &[config], |bytes| {
        let _ = super::serve::fuzz_config(&text(bytes), Path::new("/fuzz/carapace.toml"));
    });
}

#[test]
fn fuzz_api_bodies() {
    let agent: &[u8] = br#"{"name":"a","tenant":1,"memory_limit":"1GiB","memory_request":512,"command":["x","{port}"],"env":{"K":"v"},"probe":"http://127.0.0.1:{port}/readyz","config":{"port":"{port}","a":[1,2,{"b":null}]},"validate":["v"]}"#;
    let tenant: &[u8] =
        br#"{"id":3,"name":"acme","quota":{"max_agents":5,"max_memory_bytes":1000}}"#;
    let rollout: &[u8] =
        br#"{"agents":["a","b"],"wave_size":2,"config_patch":{"a":{"b":null,"c":{"d":1}},"e":"f"}}"#;
    fuzz("API bodies", 4, &[agent, tenant, rollout], |bytes| {
        super::serve::fuzz_bodies(bytes)
    });
}

#[test]
fn fuzz_journal_records() {
    let records: [&[u8]; 3] = [
        br#"{"v":1,"at":42,"entry":{"input":{"kind":"probe_succeeded","agent":3,"instance":1}}}"#,
        br#"{"v":1,"at":7,"entry":"timeout"}"#,
        br#"{"v":1,"at":9,"entry":{"command":{"kind":"start","id":1,"agent":0,"instance":1,"node":0,"version":{"runtime":1,"config":1},"snapshot":null,"reason":"provision","warm":false}}}"#,
    ];
    fuzz("journal records", 5, &records, |bytes| {
        let _ = carapace_store::JournalRecord::decode(bytes);
    });
}

#[test]
fn fuzz_snapshot_manifests_and_pod_lines() {
    let manifest: &[u8] = br#"{"version":3,"files":[{"path":"state/openclaw.sqlite","size":10,"mode":420,"blake3":"00"}]}"#;
    let request: &[u8] = br#"{"op":"snapshot","store":"/s","version":2}"#;
    let event: &[u8] = br#"{"seq":4,"event":{"event":"exited","at_ms":5,"pid":7,"code":1}}"#;
    let reply: &[u8] =
        br#"{"reply":"status","supervisor_pid":1,"agent_pid":2,"healthy":true,"last_seq":3}"#;
    fuzz(
        "manifests and pod lines",
        6,
        &[manifest, request, event, reply],
        |bytes| {
            let _ = serde_json::from_slice::<carapace_drivers::snapshot::Manifest>(bytes);
            let _ = serde_json::from_slice::<carapace_drivers::pod::PodRequest>(bytes);
            let _ = serde_json::from_slice::<carapace_drivers::pod::PodReply>(bytes);
            let _ = serde_json::from_slice::<carapace_drivers::pod::Numbered>(bytes);
            let _ = serde_json::from_slice::<carapace_drivers::pod::PodSpec>(bytes);
        },
    );
}
