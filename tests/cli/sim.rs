//! `carapace sim`: writes the report, exits 0 on a pass, 1 on a missed SLO, 2 on bad input.

use crate::common::{Scratch, carapace, smoke_path, smoke_text};

const REPORT_FILES: [&str; 9] = [
    "summary.md",
    "metrics.json",
    "incidents.csv",
    "timeseries.csv",
    "report.html",
    "recovery-cdf.svg",
    "node-memory.svg",
    "agents-down.svg",
    "ladder.svg",
];

#[test]
fn sim_smoke_passes_and_writes_the_report() {
    let out = Scratch::new("sim-smoke");
    let smoke = smoke_path();
    let run = carapace::<_, &std::ffi::OsStr>([
        "sim".as_ref(),
        smoke.as_os_str(),
        "--out".as_ref(),
        out.path().as_os_str(),
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("| SLO | target | measured | verdict |"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
    assert!(run.stdout.contains("report.html"), "{}", run.stdout);
    for name in REPORT_FILES {
        let path = out.path().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!bytes.is_empty(), "{name} is empty");
        let text = String::from_utf8(bytes).expect("UTF-8 report");
        assert!(
            !text.contains(&out.path().display().to_string()),
            "{name} names the output directory"
        );
    }
    let metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("metrics.json")).expect("metrics.json"),
    )
    .expect("metrics.json is JSON");
    assert_eq!(metrics["scenario"], "smoke");
    assert_eq!(metrics["seed"], 42);
    assert!(metrics["invariant_violation"].is_null(), "{metrics}");
}

#[test]
fn sim_json_prints_the_metrics_it_writes_and_seed_overrides() {
    let out = Scratch::new("sim-json");
    let path = smoke_path();
    let args: Vec<&std::ffi::OsStr> = vec![
        "sim".as_ref(),
        path.as_os_str(),
        "--json".as_ref(),
        "--seed".as_ref(),
        "7".as_ref(),
        "--check-every".as_ref(),
        "1".as_ref(),
        "--out".as_ref(),
        out.path().as_os_str(),
    ];
    let run = carapace(&args);
    assert!(run.code == Some(0) || run.code == Some(1), "{run:?}");
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("metrics.json")).expect("metrics.json"),
    )
    .expect("metrics.json is JSON");
    assert_eq!(printed, written);
    assert_eq!(printed["seed"], 7);
    assert!(printed["invariant_violation"].is_null(), "{printed}");
}

#[test]
fn sim_exits_1_when_an_slo_is_missed() {
    let dir = Scratch::new("sim-slo");
    let text = smoke_text().replace("recovery_p90 = \"60s\"", "recovery_p90 = \"1s\"");
    assert!(text.contains("recovery_p90 = \"1s\""));
    let scenario = dir.file("strict.toml", &text);
    let out = dir.path().join("report");
    let args = [
        "sim".as_ref(),
        scenario.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    let run = carapace::<_, &std::ffi::OsStr>(args);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("| recovery p90 |") && l.ends_with("| FAIL |")),
        "{}",
        run.stdout
    );
    assert!(
        out.join("summary.md").is_file(),
        "a failed run still writes its report"
    );
}

#[test]
fn sim_exits_2_on_bad_input() {
    let dir = Scratch::new("sim-bad");
    let missing = dir.path().join("missing.toml");
    let run = carapace::<_, &std::ffi::OsStr>(["sim".as_ref(), missing.as_os_str()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("missing.toml:0:0: cannot read"),
        "{}",
        run.stderr
    );

    let broken = dir.file(
        "broken.toml",
        &smoke_text().replace("nodes = 6", "nodes = -6"),
    );
    let run = carapace::<_, &std::ffi::OsStr>(["sim".as_ref(), broken.as_os_str()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("field `fleet.nodes`"), "{}", run.stderr);

    // A trace that is not there is bad input too, named by its path.
    let text = smoke_text().replace(
        "memory = { baseline = \"600MiB\", growth_per_day = \"100MiB\" }",
        "memory = { baseline = \"600MiB\", trace = { path = \"no-such-trace.csv\", format = \"csv\" } }",
    );
    assert!(text.contains("no-such-trace.csv"));
    let traced = dir.file("traced.toml", &text);
    let out = dir.path().join("report");
    let run = carapace::<_, &std::ffi::OsStr>([
        "sim".as_ref(),
        traced.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("no-such-trace.csv"), "{}", run.stderr);
    assert!(!out.exists(), "no report for a run that never started");
}
