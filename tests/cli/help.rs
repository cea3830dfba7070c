//! `--help` works for the binary and every subcommand.

use crate::common::carapace;

#[test]
fn help_works_for_every_subcommand() {
    let top = carapace(["--help"]);
    assert_eq!(top.code, Some(0), "{top:?}");
    for sub in ["sim", "validate", "schema"] {
        assert!(
            top.stdout.contains(sub),
            "`{sub}` missing from:\n{}",
            top.stdout
        );
        for args in [vec![sub, "--help"], vec!["help", sub]] {
            let run = carapace(&args);
            assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
            assert!(
                run.stdout.contains("Usage: carapace"),
                "{args:?}: {}",
                run.stdout
            );
            assert!(run.stdout.contains(sub), "{args:?}: {}", run.stdout);
        }
    }
    let sim = carapace(["sim", "--help"]);
    for flag in ["--seed", "--out", "--check-every", "--json"] {
        assert!(sim.stdout.contains(flag), "sim --help lacks {flag}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["no-such-command"],
        vec!["validate"],
        vec!["sim", "--seed", "x"],
    ] {
        let run = carapace(&args);
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
    }
}
