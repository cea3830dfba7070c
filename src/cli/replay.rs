//! `carapace replay STORE [--until MS] [--what-if KNOB=VALUE]...`: re-runs the engine on a
//! journal recorded by `carapace serve` and checks that it decides exactly as recorded.
//!
//! Without `--what-if` the command stream must match one for one; the first divergence is
//! named with the inputs just before it, and the exit code is 1. With `--what-if` the recorded
//! inputs are fed to an engine under a changed policy, and what it would have decided
//! differently is reported: the first differing decision, and the decisions of both, by kind.
//! The journal's observations stop applying once the two part ways (an instance the changed
//! engine never started cannot report), so inputs it refuses are counted, not hidden.

use super::journal::{Replayer, Step, command_kind, for_each_record, recorded_policy};
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use carapace_engine::{Command, EngineConfig, Millis};
use carapace_store::{JournalEntry, JournalRecord, Store};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;

/// Inputs shown before a divergence.
const CONTEXT: usize = 8;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The store file (`DATA/carapace.redb`). Stop the daemon first, or replay a copy: the
    /// store admits one process at a time.
    store: PathBuf,
    /// Stop at this engine time (ms), inclusive.
    #[arg(long)]
    until: Option<u64>,
    /// Replay under a changed policy, e.g. `recovery.known_good_dwell_ms=60000`
    /// (repeatable; paths are inside `[policy]`).
    #[arg(long = "what-if")]
    what_if: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !args.store.is_file() {
        eprintln!(
            "carapace replay: {}: no such store file",
            args.store.display()
        );
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let store = match Store::open(&args.store, 0) {
        Ok(store) => store,
        Err(error) => {
            eprintln!("carapace replay: {error}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    let Some(policy) = recorded_policy(&store)? else {
        eprintln!(
            "carapace replay: {}: the store holds no journal yet",
            args.store.display()
        );
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    };
    let until = Millis(args.until.unwrap_or(u64::MAX));
    if args.what_if.is_empty() {
        return verify(&store, policy, until, args.json);
    }
    let changed = match with_changes(&policy, &args.what_if) {
        Ok(changed) => changed,
        Err(message) => {
            eprintln!("carapace replay: {message}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    what_if(&store, policy, changed, until, args.json)
}

/// Replays under the recorded policy; the command streams must be identical.
fn verify(
    store: &Store,
    policy: EngineConfig,
    until: Millis,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut replayer = Replayer::new(policy)?;
    let mut context: VecDeque<(u64, JournalRecord)> = VecDeque::new();
    let mut records = 0u64;
    let mut commands = 0u64;
    let mut divergence: Option<Value> = None;
    let dropped = for_each_record(store, |seq, record| {
        if record.at > until {
            return false;
        }
        records += 1;
        let step = replayer.step(&record);
        let failed = match step {
            Step::Applied | Step::Matched(_) => None,
            Step::Refused(error) => Some(json!({"refused": error.to_string()})),
            Step::Diverged { recorded, replayed } => Some(json!({
                "recorded": recorded, "replayed": replayed,
            })),
            Step::Unknown => Some(json!({"unknown_record": true})),
        };
        if matches!(record.entry, JournalEntry::Command(_)) {
            commands += 1;
        }
        if let Some(what) = failed {
            divergence = Some(json!({
                "seq": seq,
                "at_ms": record.at.0,
                "what": what,
                "inputs_before": context.iter().map(|(s, r)| json!({"seq": s, "record": r})).collect::<Vec<_>>(),
            }));
            return false;
        }
        if !matches!(record.entry, JournalEntry::Command(_)) {
            if context.len() == CONTEXT {
                context.pop_front();
            }
            context.push_back((seq, record));
        }
        true
    })?;
    let identical = divergence.is_none() && (until.0 != u64::MAX || replayer.unrecorded() == 0);
    let result = json!({
        "records": records,
        "commands": commands,
        "identical": identical,
        "first_divergence": divergence,
        "unrecorded_commands": replayer.unrecorded(),
        "journal_cut_short": dropped.as_ref().map(ToString::to_string),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else if identical {
        println!("replayed {records} records: {commands} commands, every one identical");
    } else {
        println!("replayed {records} records: the engine decided differently");
        println!(
            "{}",
            serde_json::to_string_pretty(&result["first_divergence"])?
        );
    }
    if let Some(dropped) = dropped {
        eprintln!("carapace replay: the journal was cut short: {dropped}");
    }
    Ok(if identical {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Feeds the recorded inputs to the recorded and to a changed policy; reports the differences.
fn what_if(
    store: &Store,
    recorded: EngineConfig,
    changed: EngineConfig,
    until: Millis,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut before = Replayer::new(recorded)?;
    let mut after = Replayer::new(changed)?;
    let mut before_kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut after_kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut refused_after = 0u64;
    let mut first_difference: Option<Value> = None;
    for_each_record(store, |seq, record| {
        if record.at > until {
            return false;
        }
        if matches!(record.entry, JournalEntry::Command(_)) {
            return true;
        }
        let _ = before.step(&record);
        if let Step::Refused(_) = after.step(&record) {
            refused_after += 1;
        }
        let issued_before = drain(&mut before);
        let issued_after = drain(&mut after);
        for command in &issued_before {
            *before_kinds.entry(command_kind(command)).or_default() += 1;
        }
        for command in &issued_after {
            *after_kinds.entry(command_kind(command)).or_default() += 1;
        }
        if first_difference.is_none() && issued_before != issued_after {
            first_difference = Some(json!({
                "seq": seq, "at_ms": record.at.0, "input": record.entry,
                "recorded_policy": issued_before, "changed_policy": issued_after,
            }));
        }
        true
    })?;
    let result = json!({
        "first_difference": first_difference,
        "decisions_recorded_policy": before_kinds,
        "decisions_changed_policy": after_kinds,
        "inputs_refused_under_changed_policy": refused_after,
        "stats_recorded_policy": before.controller.stats(),
        "stats_changed_policy": after.controller.stats(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        match &result["first_difference"] {
            Value::Null => println!("the changed policy decides exactly as the recorded one"),
            first => println!(
                "first different decision:\n{}",
                serde_json::to_string_pretty(first)?
            ),
        }
        println!(
            "decisions under the recorded policy: {}",
            result["decisions_recorded_policy"]
        );
        println!(
            "decisions under the changed policy:  {}",
            result["decisions_changed_policy"]
        );
        println!(
            "recorded inputs the changed engine refused (the journal no longer applies past the first difference): {refused_after}"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Takes the commands a replayer issued and has not yet compared: in a what-if run nothing is
/// compared, so all of them.
fn drain(replayer: &mut Replayer) -> Vec<Command> {
    replayer.take_issued()
}

/// The policy with `path=value` changes applied, each checked by the engine's own parser.
fn with_changes(policy: &EngineConfig, changes: &[String]) -> Result<EngineConfig, String> {
    let mut tree = serde_json::to_value(policy).map_err(|e| e.to_string())?;
    for change in changes {
        let (path, value) = change
            .split_once('=')
            .ok_or_else(|| format!("--what-if {change}: expected KNOB=VALUE"))?;
        let path = path.trim().trim_start_matches("policy.");
        let mut slot = &mut tree;
        for key in path.split('.') {
            slot = slot
                .get_mut(key)
                .ok_or_else(|| format!("--what-if {change}: the policy has no `{path}`"))?;
        }
        let parsed: Value = serde_json::from_str(value.trim())
            .unwrap_or_else(|_| Value::String(value.trim().to_owned()));
        *slot = parsed;
    }
    let changed: EngineConfig =
        serde_json::from_value(tree).map_err(|e| format!("--what-if: {e}"))?;
    changed.validate().map_err(|e| format!("--what-if: {e}"))?;
    Ok(changed)
}
