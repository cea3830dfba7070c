//! `carapace replay` on journals a real `carapace serve` recorded: identical when nothing
//! changed, the first divergence named when the journal was not written by this engine, and
//! what a changed policy would have decided.

use crate::common::{Scratch, carapace};
use crate::serve::Served;
use carapace_engine::{Command, Millis};
use carapace_store::{Batch, JournalEntry, JournalRecord, Store};
use serde_json::Value;
use std::time::Duration;

#[test]
fn a_recorded_journal_replays_identically_and_a_tampered_one_names_its_divergence() {
    let scratch = Scratch::new("replay");
    let mut served = Served::start(&scratch);
    served.create_running("r1");
    // Healthy past the dwell: known-good, a snapshot, an incident-free journal.
    served.wait_agent("r1", Duration::from_secs(30), "known-good", |v| {
        !v["known_good"].is_null()
    });
    served.agent_call("r1", "POST", "/crash?code=4");
    served.wait_agent("r1", Duration::from_secs(30), "restarted", |v| {
        v["status"] == "running" && v["rung"] == "restart_in_place"
    });
    served.kill_daemon();
    let copy = scratch.path().join("copy.redb");
    std::fs::copy(served.data_dir().join("carapace.redb"), &copy).expect("copy the store");
    let copy_arg = copy.display().to_string();

    let run = carapace(["replay", &copy_arg, "--json"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let result: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(result["identical"], true, "{result}");
    assert!(result["commands"].as_u64().unwrap() >= 2, "{result}");

    let run = carapace([
        "replay",
        &copy_arg,
        "--json",
        "--what-if",
        "recovery.known_good_dwell_ms=60000",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let what_if: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert!(
        !what_if["first_difference"].is_null(),
        "a 60 s dwell takes no known-good snapshot at 1.5 s: {what_if}"
    );

    // A command this engine never issued, appended as if recorded.
    {
        let mut store = Store::open(&copy, 0).expect("open the copy");
        let last = store.last_seq();
        let mut batch = Batch::new();
        batch.append(&JournalRecord::new(
            Millis(u64::MAX / 2),
            JournalEntry::Command(Command::Reject {
                reason: "not from this engine".into(),
            }),
        ));
        store.commit(batch).expect("append");
        assert_eq!(store.last_seq(), last + 1);
    }
    let run = carapace(["replay", &copy_arg, "--json"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let result: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(result["identical"], false);
    let divergence = &result["first_divergence"];
    assert!(
        divergence["what"]["recorded"]
            .to_string()
            .contains("not from this engine"),
        "{divergence}"
    );
    assert!(
        !divergence["inputs_before"].as_array().unwrap().is_empty(),
        "the inputs around it are shown: {divergence}"
    );

    let run = carapace(["replay", &copy_arg, "--what-if", "recovery.nope=1"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("recovery.nope"), "{}", run.stderr);
    let missing = scratch.path().join("missing.redb").display().to_string();
    assert_eq!(carapace(["replay", &missing]).code, Some(2));
}
