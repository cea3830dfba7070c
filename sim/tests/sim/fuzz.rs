//! Property tests: the scenario, unit and trace parsers never panic, whatever they are fed.
//!
//! Seeds are fixed so a failure reproduces on every machine (no regression files needed).

use crate::common::smoke_text;
use carapace_sim::scenario::{self, Bytes, Span};
use carapace_sim::trace;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0xCA7A_9ACE),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A parse either succeeds or reports at least one problem.
fn parse_cleanly(text: &str) {
    if let Err(error) = scenario::parse_str(text, "fuzz.toml") {
        assert!(!error.problems.is_empty(), "an error without a problem");
        assert_eq!(error.file, "fuzz.toml");
        let _ = error.to_string();
    }
}

/// Text made of the characters TOML cares about, so the parser gets past the first byte.
fn tomlish() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        "([a-z_\\.]{1,12} ?= ?(\"[0-9a-zA-Z \\.]{0,10}\"|[0-9\\.e+-]{1,8}|true|\\[\\]|\\{\\}|\\{ ?[a-z]{1,5} = [0-9]{1,3} ?\\})\n|\\[\\[?[a-z\\.]{1,14}\\]\\]?\n|#[^\n]{0,10}\n|[\\[\\]{}=,\"'\\.\n a-z0-9]{1,6}){0,24}",
    )
    .expect("a valid regex")
}

/// One edit of a text: flip a byte, truncate, delete a line, or give a key another value.
#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Truncate { at: usize },
    DeleteLine { line: usize },
    Revalue { line: usize, value: usize },
}

/// Values that are valid TOML but test the checks behind the syntax.
const VALUES: [&str; 16] = [
    "0",
    "-1",
    "1",
    "1e400",
    "nan",
    "-inf",
    "0.5",
    "18446744073709551616",
    "\"\"",
    "\"0s\"",
    "\"4 parsecs\"",
    "\"99999999TiB\"",
    "\"3GiB\"",
    "[]",
    "{}",
    "true",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        3 => any::<usize>().prop_map(|line| Mutation::DeleteLine { line }),
        4 => (any::<usize>(), 0..VALUES.len())
            .prop_map(|(line, value)| Mutation::Revalue { line, value }),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        match *m {
            Mutation::Flip { at, byte } if !bytes.is_empty() => {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            Mutation::Truncate { at } => bytes.truncate(at % (bytes.len() + 1)),
            Mutation::DeleteLine { line } => {
                let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
                let drop = line % lines.len();
                bytes = lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != drop)
                    .map(|(_, l)| l.to_vec())
                    .collect::<Vec<_>>()
                    .join(&b'\n');
            }
            Mutation::Revalue { line, value } => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let keyed: Vec<usize> = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.contains(" = ") && !l.starts_with('#'))
                    .map(|(i, _)| i)
                    .collect();
                let Some(&target) = keyed.get(line % keyed.len().max(1)) else {
                    continue;
                };
                let lines: Vec<String> = text
                    .lines()
                    .enumerate()
                    .map(|(i, l)| match l.split_once(" = ") {
                        Some((key, _)) if i == target => format!("{key} = {}", VALUES[value]),
                        _ => l.to_owned(),
                    })
                    .collect();
                bytes = lines.join("\n").into_bytes();
            }
            Mutation::Flip { .. } => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn scenario_parser_survives_arbitrary_text(text in any::<String>()) {
        parse_cleanly(&text);
    }

    #[test]
    fn scenario_parser_survives_toml_shaped_text(text in tomlish()) {
        parse_cleanly(&text);
    }

    #[test]
    fn scenario_parser_survives_mutated_smoke(mutations in proptest::collection::vec(mutation(), 1..6)) {
        parse_cleanly(&mutate(&smoke_text(), &mutations));
    }

    /// One or two keys given odd but well-typed values: reaches the checks behind serde.
    #[test]
    fn scenario_checks_survive_revalued_smoke(
        edits in proptest::collection::vec((any::<usize>(), 0..VALUES.len()), 1..3),
    ) {
        let mutations: Vec<Mutation> = edits
            .into_iter()
            .map(|(line, value)| Mutation::Revalue { line, value })
            .collect();
        parse_cleanly(&mutate(&smoke_text(), &mutations));
    }

    #[test]
    fn units_never_panic(text in any::<String>(), shaped in "[ ]?[0-9]{0,25}(\\.[0-9]{0,20})?(e[0-9]{1,3})?[ ]?[a-zA-Z]{0,4}[ ]?") {
        for input in [&text, &shaped] {
            if let Ok(bytes) = input.parse::<Bytes>() {
                prop_assert!(bytes.0 <= 1 << 62);
            }
            if let Ok(span) = input.parse::<Span>() {
                prop_assert!(span.ms() <= 1 << 50);
            }
        }
    }

    #[test]
    fn trace_parsers_never_panic(text in any::<String>(), csvish in "([0-9a-z\\.;,\t -]{0,12}\n){0,8}") {
        for input in [&text, &csvish] {
            for result in [
                trace::parse_generic(input, "t.csv"),
                trace::parse_alibaba(input, "t.csv"),
                trace::parse_bitbrains(input, "t.csv"),
            ] {
                match result {
                    Ok(series) => {
                        prop_assert!(!series.is_empty());
                        let _ = series.value_at(0, 12_345, 1 << 30);
                        let _ = series.sample_stats();
                    }
                    Err(error) => prop_assert!(error.to_string().starts_with("t.csv")),
                }
            }
            match trace::parse_events(input, "t.csv") {
                Ok(events) => prop_assert!(events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms)),
                Err(error) => prop_assert!(error.to_string().starts_with("t.csv")),
            }
        }
    }
}

/// Units that parse print back to the same value (within the printed precision).
#[test]
fn units_round_trip_through_display() {
    let mut runner = proptest::test_runner::TestRunner::new(config(1_000));
    runner
        .run(&(0u64..(1 << 50)), |n| {
            let span = Span(carapace_engine::Millis(n));
            prop_assert_eq!(span.to_string().parse::<Span>().ok(), Some(span));
            Ok(())
        })
        .expect("durations round-trip");
    runner
        .run(&(0u64..(1 << 50)), |n| {
            let bytes = Bytes(n);
            let back: Bytes = bytes.to_string().parse().expect("printed sizes parse");
            // Printing keeps three decimals of the largest unit.
            prop_assert!(back.0.abs_diff(n) as f64 <= n as f64 * 1e-3 + 1.0);
            Ok(())
        })
        .expect("sizes round-trip");
}
