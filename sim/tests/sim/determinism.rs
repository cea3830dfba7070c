//! Same scenario and seed ⇒ a byte-identical report; another seed ⇒ another command stream.

use crate::common::{Scratch, run, smoke};
use carapace_sim::report::Report;
use std::collections::BTreeMap;
use std::path::Path;

/// Every file of a report directory, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("report directory")
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).expect("report file"))
        })
        .collect()
}

fn write_smoke_report(dir: &Path, seed: Option<u64>) -> Report {
    let mut scenario = smoke();
    if let Some(seed) = seed {
        scenario.seed = seed;
    }
    let report = Report::of(&run(scenario, Vec::new()));
    report.write(dir).expect("write the report");
    report
}

#[test]
fn same_seed_writes_byte_identical_reports() {
    let (a, b) = (Scratch::new("det-a"), Scratch::new("det-b"));
    write_smoke_report(a.path(), None);
    write_smoke_report(b.path(), None);
    let (a, b) = (files(a.path()), files(b.path()));
    for expected in [
        "summary.md",
        "metrics.json",
        "incidents.csv",
        "timeseries.csv",
        "report.html",
        "recovery-cdf.svg",
        "node-memory.svg",
        "agents-down.svg",
        "ladder.svg",
    ] {
        assert!(a.contains_key(expected), "the report lacks {expected}");
    }
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "both runs write the same files"
    );
    for (name, bytes) in &a {
        assert!(
            !name.ends_with(".tmp"),
            "a temporary file was left behind: {name}"
        );
        assert!(
            bytes == &b[name],
            "{name} differs between two runs of one seed"
        );
    }
}

#[test]
fn another_seed_gives_another_command_stream() {
    let (a, b) = (Scratch::new("seed-a"), Scratch::new("seed-b"));
    let first = write_smoke_report(a.path(), None);
    let second = write_smoke_report(b.path(), Some(43));
    assert_ne!(
        first.summary.command_stream_hash, second.summary.command_stream_hash,
        "seeds 42 and 43 drove the engine identically"
    );
    assert_ne!(
        files(a.path())["metrics.json"],
        files(b.path())["metrics.json"]
    );
}

/// Reports are compared across machines and commits: no path of this machine and no
/// wall-clock time may appear in them.
#[test]
fn reports_hold_no_machine_path_or_wall_clock_time() {
    let dir = Scratch::new("no-paths");
    write_smoke_report(dir.path(), None);
    let forbidden = [
        dir.path().display().to_string(),
        std::env::temp_dir().display().to_string(),
        crate::common::workspace().display().to_string(),
        env!("CARGO_MANIFEST_DIR").to_owned(),
    ];
    for (name, bytes) in files(dir.path()) {
        let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("{name} is not UTF-8"));
        for path in &forbidden {
            assert!(
                !text.contains(path.as_str()),
                "{name} contains the path {path}"
            );
        }
        if let Some(at) = find_date(text.as_bytes()) {
            panic!(
                "{name} contains what looks like a calendar date: {:?}",
                &text[at..(at + 10).min(text.len())]
            );
        }
    }
}

/// Where the first `dddd-dd-dd` (an ISO 8601 date, as timestamps print) starts.
fn find_date(bytes: &[u8]) -> Option<usize> {
    const SHAPE: &[u8; 10] = b"dddd-dd-dd";
    bytes.windows(SHAPE.len()).position(|window| {
        window.iter().zip(SHAPE).all(|(&b, &s)| match s {
            b'd' => b.is_ascii_digit(),
            _ => b == s,
        })
    })
}

#[test]
fn the_date_finder_finds_dates() {
    assert_eq!(find_date(b"at 2026-01-31T10:00:00Z"), Some(3));
    assert_eq!(find_date(b"12-34-5678 1234-56"), None);
}
