//! `carapace check` and `carapace baseline`: 0 when every SLO holds, 1 on a breach or a
//! regression from the baseline, 2 on bad input; the baseline is never rewritten by `check`.

use crate::common::{Run, Scratch, carapace, workspace};
use std::path::{Path, PathBuf};

const CI_DIR: &str = "scenarios/ci";
const CI_BASELINE: &str = "reports/baselines/ci.json";

fn ci_smoke_text() -> String {
    std::fs::read_to_string(workspace().join(CI_DIR).join("smoke.toml"))
        .expect("scenarios/ci/smoke.toml")
}

/// `carapace check ARGS... --junit DIR/junit.xml --json DIR/check.json`.
fn check(dir: &Scratch, args: &[&str]) -> (Run, PathBuf, PathBuf) {
    let junit = dir.path().join("junit.xml");
    let json = dir.path().join("check.json");
    let mut all: Vec<String> = vec!["check".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.extend([
        "--junit".into(),
        junit.display().to_string(),
        "--json".into(),
        json.display().to_string(),
    ]);
    (carapace(&all), junit, json)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn check_passes_the_ci_scenarios_against_the_committed_baseline_and_leaves_it_alone() {
    let dir = Scratch::new("check-ci");
    let baseline = workspace().join(CI_BASELINE);
    let before = std::fs::read(&baseline).expect("the committed baseline");
    let (run, junit, json) = check(&dir, &[CI_DIR, "--baseline", CI_BASELINE]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        std::fs::read(&baseline).expect("baseline"),
        before,
        "check rewrote the baseline"
    );
    assert!(
        run.stdout
            .contains("| scenario | SLO | target | p90 over 5 seeds | baseline | verdict |"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("all pass"), "{}", run.stdout);
    // Engine changes may change command streams; the numbers, not the hashes, are gated.
    assert!(
        run.stdout
            .contains("command streams identical to the baseline on "),
        "{}",
        run.stdout
    );
    let xml = read(&junit);
    assert_well_formed(&xml);
    assert!(!xml.contains("<failure"), "{xml}");
    assert!(xml.contains("<testsuite name=\"ci-smoke\""), "{xml}");
    assert!(xml.contains("name=\"recovery p90\""), "{xml}");
    let report: serde_json::Value = serde_json::from_str(&read(&json)).expect("JSON");
    assert_eq!(report["passed"], true);
    assert_eq!(report["seeds"], 5);
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert!(scenarios.len() >= 2, "{report}");
    for s in scenarios {
        assert!(
            s["seeds_identical_to_baseline"]
                .as_u64()
                .is_some_and(|n| n <= 5),
            "{s}"
        );
    }
}

#[test]
fn check_fails_an_impossible_target_with_a_junit_failure() {
    let dir = Scratch::new("check-breach");
    let text = ci_smoke_text().replace("recovery_p90 = \"60s\"", "recovery_p90 = \"1s\"");
    assert!(
        text.contains("recovery_p90 = \"1s\""),
        "the fixture changed"
    );
    let scenario = dir.file("impossible.toml", &text);
    let (run, junit, json) = check(&dir, &[&scenario.display().to_string(), "--seeds", "3"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.contains("| ci-smoke | recovery p90 | <= 1 s |"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("BREACH"), "{}", run.stdout);
    let xml = read(&junit);
    assert_well_formed(&xml);
    let failure = xml
        .lines()
        .find(|l| l.contains("<failure"))
        .unwrap_or_else(|| panic!("no <failure> in {xml}"));
    assert!(failure.contains("recovery p90: "), "{failure}");
    assert!(failure.contains("target &lt;= 1 s"), "{failure}");
    assert!(xml.contains("failures=\"1\""), "{xml}");
    let report: serde_json::Value = serde_json::from_str(&read(&json)).expect("JSON");
    assert_eq!(report["passed"], false);
    assert_eq!(
        report["scenarios"][0]["seeds"].as_array().map(Vec::len),
        Some(3)
    );
}

#[test]
fn check_fails_a_regression_from_a_doctored_baseline() {
    let dir = Scratch::new("check-regression");
    let mut baseline: serde_json::Value =
        serde_json::from_str(&read(&workspace().join(CI_BASELINE))).expect("baseline JSON");
    let recovery = &mut baseline["scenarios"]["ci-smoke"]["slo"]["recovery p90"]["p90_over_seeds"];
    assert!(recovery.as_f64().is_some_and(|v| v > 5.0), "{recovery}");
    // Better than any seed achieves, yet the 60 s target still holds: only the baseline fails.
    *recovery = serde_json::json!(2.0);
    let doctored = dir.file(
        "doctored.json",
        &serde_json::to_string_pretty(&baseline).expect("JSON"),
    );
    let before = std::fs::read(&doctored).expect("doctored baseline");
    let (run, junit, _) = check(
        &dir,
        &[CI_DIR, "--baseline", &doctored.display().to_string()],
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("regression"), "{}", run.stdout);
    assert!(
        run.stdout.contains("tolerance seconds +10% +1 s"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("| ci-smoke | recovery p90 | <= 60 s |"),
        "{}",
        run.stdout
    );
    assert_eq!(
        std::fs::read(&doctored).expect("baseline"),
        before,
        "check rewrote the baseline"
    );
    let xml = read(&junit);
    assert_well_formed(&xml);
    assert!(xml.contains("type=\"REGRESSION\""), "{xml}");
}

#[test]
fn check_rejects_a_malformed_scenario_with_exit_2_and_runs_nothing() {
    let dir = Scratch::new("check-malformed");
    let text = ci_smoke_text().replace("nodes = 6", "nodes = \"six\"");
    let bad = dir.file("bad.toml", &text);
    let line = 1 + text
        .lines()
        .position(|l| l.contains("\"six\""))
        .expect("the edit");
    let (run, junit, json) = check(&dir, &[CI_DIR, &bad.display().to_string()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains(&format!("{}:{line}:", bad.display()))
            && run.stderr.contains("fleet.nodes"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        !junit.exists() && !json.exists(),
        "wrote output for bad input"
    );
}

#[test]
fn check_rejects_a_baseline_that_does_not_cover_the_run() {
    let dir = Scratch::new("check-stale");
    let (run, _, _) = check(&dir, &[CI_DIR, "--baseline", CI_BASELINE, "--seeds", "3"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("recorded over 5 seeds"),
        "{}",
        run.stderr
    );
    let renamed = dir.file(
        "renamed.toml",
        &ci_smoke_text().replace("name = \"ci-smoke\"", "name = \"ci-new\""),
    );
    let (run, _, _) = check(
        &dir,
        &[&renamed.display().to_string(), "--baseline", CI_BASELINE],
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("`ci-new` is not in the baseline"),
        "{}",
        run.stderr
    );
    let reseeded = dir.file(
        "reseeded.toml",
        &ci_smoke_text().replace("seed = 42", "seed = 1"),
    );
    let (run, _, _) = check(
        &dir,
        &[&reseeded.display().to_string(), "--baseline", CI_BASELINE],
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("its seed changed"), "{}", run.stderr);
}

#[test]
fn baseline_is_deterministic_keeps_its_tolerances_and_check_passes_against_it() {
    let dir = Scratch::new("baseline");
    let scenario = dir.file("smoke.toml", &ci_smoke_text());
    let out = dir.path().join("nested/base.json");
    let record = || {
        carapace([
            "baseline",
            &scenario.display().to_string(),
            "--seeds",
            "2",
            "--out",
            &out.display().to_string(),
        ])
    };
    let run = record();
    assert_eq!(run.code, Some(0), "{run:?}");
    let first = read(&out);
    let recorded: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(recorded["seeds"], 2);
    assert_eq!(
        recorded["scenarios"]["ci-smoke"]["seeds"],
        serde_json::json!([42, 43])
    );
    // A team's own tolerances survive a refresh; the numbers come out byte-identical.
    let tuned = first.replace("\"absolute\": 0.02", "\"absolute\": 0.05");
    assert_ne!(tuned, first, "the fixture changed");
    std::fs::write(&out, &tuned).expect("tune the tolerances");
    assert_eq!(record().code, Some(0));
    assert_eq!(
        read(&out),
        tuned,
        "a refresh changed numbers or dropped tolerances"
    );
    let (run, _, _) = check(
        &dir,
        &[
            &scenario.display().to_string(),
            "--baseline",
            &out.display().to_string(),
        ],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout.contains("check: 1 scenarios x 2 seeds"),
        "{}",
        run.stdout
    );
}

#[test]
fn baseline_refuses_to_replace_a_file_that_is_not_a_baseline() {
    let dir = Scratch::new("baseline-refuse");
    let out = dir.file("notes.json", "{\"mine\": true}\n");
    let run = carapace(["baseline", CI_DIR, "--out", &out.display().to_string()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_eq!(read(&out), "{\"mine\": true}\n");
}

/// A small well-formedness check, enough for the XML `check` writes: one root, tags balanced
/// and properly nested, attributes quoted, `<` and `&` only as markup or entities.
/// (A real parser such as quick-xml would be one more locked dependency for one assertion.)
fn assert_well_formed(xml: &str) {
    let body = xml
        .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
        .unwrap_or_else(|| panic!("no XML declaration: {xml}"));
    let mut open: Vec<&str> = Vec::new();
    let mut roots = 0;
    let mut rest = body;
    while let Some(start) = rest.find('<') {
        assert_text(&rest[..start]);
        let end = start
            + rest[start..]
                .find('>')
                .unwrap_or_else(|| panic!("unclosed tag in {rest}"));
        let tag = &rest[start + 1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop(), Some(name), "mismatched </{name}>");
            continue;
        }
        if open.is_empty() {
            roots += 1;
        }
        let (tag, empty) = match tag.strip_suffix('/') {
            Some(t) => (t, true),
            None => (tag, false),
        };
        let name = assert_attributes(tag);
        if !empty {
            open.push(name);
        }
    }
    assert_text(rest);
    assert!(open.is_empty(), "unclosed elements {open:?}");
    assert_eq!(roots, 1, "one root element");
}

/// Checks `name attr="value" ...` and returns the name.
fn assert_attributes(tag: &str) -> &str {
    let (name, mut attrs) = tag.split_once(' ').unwrap_or((tag, ""));
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "bad tag name in <{tag}>"
    );
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return name;
        }
        let (key, after) = attrs
            .split_once("=\"")
            .unwrap_or_else(|| panic!("unquoted attribute in <{tag}>"));
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad attribute name {key:?}"
        );
        let (value, after) = after
            .split_once('"')
            .unwrap_or_else(|| panic!("unterminated attribute in <{tag}>"));
        assert_text(value);
        attrs = after;
    }
}

/// Text and attribute values: no raw `<`, every `&` starts an entity.
fn assert_text(text: &str) {
    assert!(!text.contains('<'), "raw < in {text:?}");
    for (i, _) in text.match_indices('&') {
        let entity = &text[i..text[i..].find(';').map_or(text.len(), |e| i + e + 1)];
        let known = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity)
            || (entity.starts_with("&#")
                && entity[2..entity.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_digit()));
        assert!(
            known && entity.ends_with(';'),
            "bad entity {entity:?} in {text:?}"
        );
    }
}

#[test]
fn the_well_formedness_check_catches_what_it_should() {
    let ok = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a x=\"1 &lt; 2\"><b/><c>t &amp; &#10;</c></a>\n";
    assert_well_formed(ok);
    for bad in [
        "<a><b></a></b>",
        "<a>x < y</a>",
        "<a x=1></a>",
        "<a>&nbsp</a>",
        "<a></a><b></b>",
        "<a>",
    ] {
        let doc = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{bad}\n");
        assert!(
            std::panic::catch_unwind(|| assert_well_formed(&doc)).is_err(),
            "accepted {bad}"
        );
    }
}
