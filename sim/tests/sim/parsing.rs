//! Scenario files: every shipped one parses, the committed JSON Schema is current, and bad
//! input is reported by file, line, column and field path, every problem at once.

use crate::common::{smoke_text, workspace};
use carapace_sim::scenario::{self, ScenarioError, ScenarioProblem};

#[test]
fn every_shipped_scenario_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(workspace().join("scenarios")).expect("scenarios/") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = scenario::load_file(&path) {
                panic!("{e}");
            }
            seen += 1;
        }
    }
    assert!(seen >= 2, "found only {seen} scenario files");
}

/// `docs/scenario.schema.json` is what `carapace schema` prints. Regenerate it, when scenario
/// types change, with `cargo run -- schema > docs/scenario.schema.json`.
#[test]
fn committed_json_schema_is_current() {
    let path = workspace().join("docs/scenario.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let current = scenario::json_schema() + "\n";
    assert!(
        committed == current,
        "{} is out of date with the scenario types; regenerate it with \
         `cargo run -- schema > docs/scenario.schema.json` and commit it",
        path.display()
    );
    let value: serde_json::Value = serde_json::from_str(&committed).expect("valid JSON");
    assert!(value["properties"]["fleet"].is_object(), "{value}");
}

/// Smoke with `from` (which must occur exactly once) replaced by `to`.
fn smoke_with(from: &str, to: &str) -> String {
    let text = smoke_text();
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` is not unique in smoke.toml"
    );
    text.replace(from, to)
}

/// 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> u32 {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not found")) as u32
        + 1
}

fn errors(text: &str) -> ScenarioError {
    let error = scenario::parse_str(text, "bad.toml").expect_err("the scenario is invalid");
    assert_eq!(error.file, "bad.toml");
    assert!(!error.problems.is_empty());
    error
}

fn only(error: &ScenarioError) -> &ScenarioProblem {
    assert_eq!(error.problems.len(), 1, "{error}");
    &error.problems[0]
}

#[test]
fn an_unknown_field_is_named_where_it_is() {
    let text = smoke_with("tenants = 6\n", "tenants = 6\nnodez = 3\n");
    let error = errors(&text);
    let problem = only(&error);
    assert_eq!(problem.line, line_of(&text, "nodez"), "{error}");
    assert_eq!(problem.column, 1, "{error}");
    assert_eq!(problem.path, "fleet.nodez", "{error}");
    assert!(problem.message.contains("unknown field `nodez`"), "{error}");
    assert!(
        error.to_string().starts_with(&format!(
            "bad.toml:{}:1: field `fleet.nodez`: ",
            problem.line
        )),
        "{error}"
    );
}

#[test]
fn a_wrong_type_is_named_with_its_field_path() {
    let text = smoke_with("nodes = 6", "nodes = \"six\"");
    let error = errors(&text);
    let problem = only(&error);
    assert_eq!(problem.path, "fleet.nodes", "{error}");
    assert_eq!(problem.line, line_of(&text, "\"six\""), "{error}");
    assert_eq!(problem.column, 9, "{error}");
    assert!(problem.message.contains("invalid type"), "{error}");
}

#[test]
fn a_bad_unit_is_named_inside_an_array_of_tables() {
    let text = smoke_with("memory_limit = \"3GiB\"", "memory_limit = \"4 parsecs\"");
    let error = errors(&text);
    let problem = only(&error);
    assert_eq!(problem.path, "fleet.classes[0].memory_limit", "{error}");
    assert_eq!(problem.line, line_of(&text, "parsecs"), "{error}");
    assert_eq!(problem.column, 16, "{error}");
    assert!(
        problem.message.contains("unknown size unit `parsecs`"),
        "{error}"
    );
}

#[test]
fn a_bad_duration_in_an_inline_table_is_located() {
    let text = smoke_with("timeout = \"30s\"", "timeout = \"soonish\"");
    let error = errors(&text);
    let problem = only(&error);
    assert_eq!(problem.path, "fleet.classes[0].clients.timeout", "{error}");
    assert_eq!(problem.line, line_of(&text, "soonish"), "{error}");
    assert!(problem.message.contains("not a duration"), "{error}");
}

#[test]
fn a_toml_syntax_error_is_located() {
    let text = smoke_with("seed = 42", "seed = = 42");
    let error = errors(&text);
    let problem = only(&error);
    assert_eq!(problem.line, line_of(&text, "seed = = 42"), "{error}");
    assert!(problem.column > 1, "{error}");
}

#[test]
fn semantic_errors_are_all_reported_at_once_where_they_are() {
    let text = smoke_with("warmup = \"10m\"", "warmup = \"7h\"")
        .replace("nodes = 6", "nodes = 0")
        .replace("memory_request = \"700MiB\"", "memory_request = \"3GiB\"");
    let error = errors(&text);
    let find = |path: &str| {
        error
            .problems
            .iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no problem about `{path}` in:\n{error}"))
    };
    let warmup = find("warmup");
    assert_eq!(warmup.line, line_of(&text, "warmup = \"7h\""), "{error}");
    assert_eq!(warmup.column, 10, "{error}");
    assert!(warmup.message.contains("shorter than duration"), "{error}");
    let nodes = find("fleet.nodes");
    assert_eq!(nodes.line, line_of(&text, "nodes = 0"), "{error}");
    let request = find("fleet.classes[1].memory_request");
    assert_eq!(
        request.line,
        line_of(&text, "memory_request = \"3GiB\""),
        "{error}"
    );
    assert!(
        request.message.contains("must not exceed memory_limit"),
        "{error}"
    );
    // Zero nodes also makes the scheduled loss of node 2 and the zone count wrong.
    let scheduled = find("node_faults.scheduled[0].node");
    assert_eq!(scheduled.line, line_of(&text, "scheduled = "), "{error}");
    find("fleet.zones");
    // One line per problem, each `file:line:col: field ...`.
    let printed = error.to_string();
    assert_eq!(printed.lines().count(), error.problems.len(), "{printed}");
    for (line, problem) in printed.lines().zip(&error.problems) {
        let prefix = format!(
            "bad.toml:{}:{}: field `{}`: ",
            problem.line, problem.column, problem.path
        );
        assert!(line.starts_with(&prefix), "{line}");
    }
}

#[test]
fn a_semantic_problem_in_an_appended_table_is_located() {
    let text = smoke_text() + "\n[probes]\nmemory_deadband = 1.5\n";
    let error = errors(&text);
    let problem = only(&error);
    assert_eq!(problem.path, "probes.memory_deadband");
    assert_eq!(problem.line, line_of(&text, "memory_deadband"), "{error}");
}

#[test]
fn a_missing_file_is_reported_as_a_whole() {
    let path = workspace().join("scenarios/does-not-exist.toml");
    let error = scenario::load_file(&path).expect_err("no such file");
    let problem = only(&error);
    assert_eq!((problem.line, problem.column), (0, 0));
    assert!(problem.message.starts_with("cannot read"), "{error}");
    assert!(error.file.ends_with("does-not-exist.toml"));
}

#[test]
fn a_missing_required_field_is_named() {
    let text = smoke_with("seed = 42\n", "");
    let error = errors(&text);
    let problem = only(&error);
    assert!(problem.message.contains("missing field `seed`"), "{error}");
}
