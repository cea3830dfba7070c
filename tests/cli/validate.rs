//! `carapace validate`: 0 when every file is valid, 2 with `file:line:col: field ...` when not.

use crate::common::{Scratch, carapace, smoke_text, workspace};

#[test]
fn validate_accepts_every_shipped_scenario() {
    let mut files: Vec<String> = std::fs::read_dir(workspace().join("scenarios"))
        .expect("scenarios/")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            p.strip_prefix(workspace())
                .expect("inside the workspace")
                .display()
                .to_string()
        })
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    let run = carapace(std::iter::once("validate".to_owned()).chain(files.iter().cloned()));
    assert_eq!(run.code, Some(0), "{run:?}");
    for file in &files {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{file}: ok ("))),
            "no verdict for {file}:\n{}",
            run.stdout
        );
    }
}

#[test]
fn validate_reports_every_problem_located_and_exits_2() {
    let dir = Scratch::new("validate");
    let text = smoke_text()
        .replace("warmup = \"10m\"", "warmup = \"7h\"")
        .replace("memory_request = \"700MiB\"", "memory_request = \"3GiB\"");
    let line_of = |needle: &str| 1 + text.lines().position(|l| l.contains(needle)).unwrap();
    let bad = dir.file("bad.toml", &text);
    let good = workspace().join("scenarios/smoke.toml");
    let run =
        carapace::<_, &std::ffi::OsStr>(["validate".as_ref(), good.as_os_str(), bad.as_os_str()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stdout.contains("smoke.toml: ok"), "{}", run.stdout);
    let bad = bad.display().to_string();
    let expected = [
        format!("{bad}:{}:10: field `warmup`: ", line_of("warmup = ")),
        format!("{bad}:{}:", line_of("memory_request = \"3GiB\"")),
    ];
    for prefix in &expected {
        assert!(
            run.stderr.lines().any(|l| l.starts_with(prefix.as_str())),
            "no line starting `{prefix}` in:\n{}",
            run.stderr
        );
    }
    assert!(
        run.stderr
            .contains("field `fleet.classes[1].memory_request`: must not exceed memory_limit"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 2, "{}", run.stderr);
}

#[test]
fn validate_locates_a_syntax_error() {
    let dir = Scratch::new("validate-syntax");
    let bad = dir.file("syntax.toml", "name = \"x\"\nseed = \n");
    let run = carapace::<_, &std::ffi::OsStr>(["validate".as_ref(), bad.as_os_str()]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.starts_with(&format!("{}:2:", bad.display())),
        "{}",
        run.stderr
    );
}
