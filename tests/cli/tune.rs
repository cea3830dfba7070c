//! `carapace tune`: a sweep that recommends, writes its outputs, resumes, and refuses nonsense.

use crate::common::{Scratch, carapace, smoke_text};

fn tune(scenario: &std::path::Path, out: &std::path::Path, knob: &str) -> crate::common::Run {
    carapace([
        "tune".as_ref(),
        scenario.as_os_str(),
        "--knob".as_ref(),
        std::ffi::OsStr::new(knob),
        "--seeds".as_ref(),
        "2".as_ref(),
        // smoke's provisioning p90 sits ~3% under its target: ask for a margin it can keep.
        "--margin".as_ref(),
        "0.02".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ])
}

#[test]
fn a_sweep_recommends_the_densest_point_that_holds_and_resumes_when_rerun() {
    let dir = Scratch::new("tune");
    let scenario = dir.file("smoke.toml", &smoke_text());
    let out = dir.path().join("out");
    let run = tune(&scenario, &out, "fleet.classes[0].agents=30,50");
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("RECOMMENDED"), "{}", run.stdout);
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tune.json")).unwrap()).unwrap();
    let points = result["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    let recommended = result["recommended"].as_u64().expect("a recommendation") as usize;
    let density = |i: usize| points[i]["density_ratio_median"].as_f64().unwrap();
    let holding: Vec<usize> = (0..2)
        .filter(|&i| points[i]["holds_with_margin"] == true)
        .collect();
    assert!(holding.contains(&recommended));
    assert!(
        holding.iter().all(|&i| density(i) <= density(recommended)),
        "the densest that holds"
    );
    assert!(
        std::fs::read_to_string(out.join("adopt.toml"))
            .unwrap()
            .contains("fleet.classes[0].agents")
    );
    assert!(
        std::fs::read_to_string(out.join("tune.svg"))
            .unwrap()
            .starts_with("<svg")
    );
    let partial = std::fs::read_to_string(out.join("tune.partial.jsonl")).unwrap();
    assert_eq!(
        partial.lines().count(),
        4,
        "one line per finished run: 2 points x 2 seeds"
    );

    let again = tune(&scenario, &out, "fleet.classes[0].agents=30,50");
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(
        again.stderr.contains("resuming: 4 runs already done"),
        "{}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tune.partial.jsonl")).unwrap(),
        partial,
        "nothing rerun"
    );
    assert_eq!(again.stdout, run.stdout, "a resumed sweep reports the same");
}

#[test]
fn no_point_holding_every_slo_exits_1_and_bad_knobs_exit_2() {
    let dir = Scratch::new("tune-fail");
    let strict = smoke_text().replace("recovery_p90 = \"60s\"", "recovery_p90 = \"1s\"");
    assert_ne!(strict, smoke_text(), "the SLO to tighten is in smoke.toml");
    let scenario = dir.file("strict.toml", &strict);
    let out = dir.path().join("out");
    let run = tune(&scenario, &out, "policy.placement.overcommit_ratio=2.0,3.0");
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout.contains("No setting holds every SLO"),
        "{}",
        run.stdout
    );
    for bad in [
        "policy.placement.nonsense=1,2",
        "fleet.nodes=0,1",
        "fleet.nodes=1..9",
    ] {
        let refused = tune(&scenario, &out, bad);
        assert_eq!(refused.code, Some(2), "{bad}: {refused:?}");
    }
}
