//! Judging one run: safety, liveness and the engine's refusals; and the determinism self-check.

use crate::Simulation;
use crate::scenario::Scenario;
use crate::trace::MemorySeries;
use carapace_engine::{AgentId, AgentStatus, EngineError, Millis};
use serde::Serialize;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// How runs are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// The engine's invariants and the world's are checked every this many events (1: after
    /// every event). They cost O(fleet) each.
    pub invariants_every: u64,
    /// Faults stop this long before the end. The liveness bound: by the end every desired
    /// agent that was not given up on (parked, or a human alerted) runs again, or served in
    /// the tail and is in a move the engine made since.
    pub quiet_tail: Millis,
}

impl Checks {
    /// Invariants after every event up to 500 agents, then about ten agent-checks per event;
    /// a quiet tail of 30 minutes, above the longest legitimate climb of the ladder (queue
    /// deadline 10 min, then start and stop deadlines).
    pub fn for_scenario(scenario: &Scenario) -> Checks {
        let agents = scenario.agent_count();
        Checks {
            invariants_every: if agents <= 500 { 1 } else { agents / 10 },
            quiet_tail: Millis(30 * 60_000),
        }
    }
}

/// What kind of wrong a failing run did; shrinking keeps the kind (and the message's shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// An invariant broke: the engine's accounting, or two live copies of an agent.
    Safety,
    /// Faults stopped, yet an agent neither runs nor was given up on.
    Liveness,
    /// The engine refused an input a correct driver sends (not a late report of a removed
    /// agent).
    EngineError,
    /// The engine (or the simulator) panicked: an assertion named an invariant.
    Panic,
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The agent the failure is about, when it names one.
    pub agent: Option<AgentId>,
}

impl Failure {
    /// The failure with its numbers taken out (`two live copies of agent-`): two runs fail the
    /// same way when kind and shape agree, whichever agent, node or time it hit.
    pub fn shape(&self) -> (FailureKind, String) {
        let message =
            self.message
                .split_once(": ")
                .map_or(self.message.as_str(), |(head, rest)| {
                    if head.starts_with("at ") {
                        rest
                    } else {
                        self.message.as_str()
                    }
                });
        (
            self.kind,
            message.chars().filter(|c| !c.is_ascii_digit()).collect(),
        )
    }

    fn new(kind: FailureKind, message: String) -> Failure {
        let agent = agent_named(&message);
        Failure {
            kind,
            message,
            agent,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FailureKind::Safety => "safety",
            FailureKind::Liveness => "liveness",
            FailureKind::EngineError => "engine error",
            FailureKind::Panic => "panic",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

/// The judgement of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub seed: u64,
    pub failure: Option<Failure>,
    pub events: u64,
    pub command_stream_hash: u64,
}

/// Runs `scenario` (its traces already loaded in `series`) under `checks`. `Err` only when the
/// scenario cannot run at all (the engine refuses its policy).
pub fn check(
    scenario: &Scenario,
    series: &[(usize, MemorySeries)],
    checks: &Checks,
) -> Result<Verdict, EngineError> {
    let (verdict, _) = run(scenario, series, checks, Record::Nothing)?;
    Ok(verdict)
}

/// The first point where two runs of the same seed parted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    pub seed: u64,
    pub hashes: (u64, u64),
    /// The first differing command, as `(index, first run's, second run's)`; `None` when a
    /// rerun with a command log did not diverge again.
    pub first_difference: Option<(usize, String, String)>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} is not deterministic: command-stream hashes {:016x} and {:016x}",
            self.seed, self.hashes.0, self.hashes.1
        )?;
        match &self.first_difference {
            Some((index, a, b)) => write!(f, "; first differing command #{index}: {a} vs {b}"),
            None => write!(f, "; a rerun with a command log did not diverge again"),
        }
    }
}

/// Commands kept when looking for the first difference between two runs.
const DIFF_COMMANDS: usize = 2_000_000;

/// Runs `scenario` twice and compares the command-stream hashes, as madsim does. On a
/// divergence both runs are repeated with a command log to name the first differing command.
pub fn check_determinism(
    scenario: &Scenario,
    series: &[(usize, MemorySeries)],
    checks: &Checks,
) -> Result<(Verdict, Option<Divergence>), EngineError> {
    let first = check(scenario, series, checks)?;
    let second = check(scenario, series, checks)?;
    if first == second {
        return Ok((first, None));
    }
    let (_, a) = run(scenario, series, checks, Record::Commands(DIFF_COMMANDS))?;
    let (_, b) = run(scenario, series, checks, Record::Commands(DIFF_COMMANDS))?;
    let describe = |entry: Option<&(Millis, Option<AgentId>, String)>| {
        entry.map_or_else(
            || "<none>".to_owned(),
            |(at, _, text)| format!("at {at}: {text}"),
        )
    };
    let first_difference = (0..a.commands.len().max(b.commands.len()))
        .find(|&i| a.commands.get(i) != b.commands.get(i))
        .map(|i| (i, describe(a.commands.get(i)), describe(b.commands.get(i))));
    let divergence = Divergence {
        seed: scenario.seed,
        hashes: (first.command_stream_hash, second.command_stream_hash),
        first_difference,
    };
    Ok((first, Some(divergence)))
}

/// One line of an agent's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    pub at_ms: u64,
    pub at: String,
    /// `fault` (what the world did to it) or `command` (what the engine told the driver).
    pub source: &'static str,
    pub what: String,
}

/// Commands kept for a timeline: far above what a shrunk scenario emits.
const TIMELINE_COMMANDS: usize = 1_000_000;

/// Reruns `scenario` recording everything and returns what happened to `agent`: the faults
/// that arrived for it and every command about it, in time order.
pub fn timeline(
    scenario: &Scenario,
    series: &[(usize, MemorySeries)],
    checks: &Checks,
    agent: AgentId,
) -> Result<Vec<TimelineEntry>, EngineError> {
    let (_, log) = run(
        scenario,
        series,
        checks,
        Record::Commands(TIMELINE_COMMANDS),
    )?;
    let faults = log
        .faults
        .into_iter()
        .filter(|(_, a, _)| *a == agent)
        .map(|(at, _, kind)| (at, "fault", kind.to_owned()));
    let commands = log
        .commands
        .into_iter()
        .filter(|(_, a, _)| *a == Some(agent))
        .map(|(at, _, text)| (at, "command", text));
    let mut entries: Vec<(Millis, &'static str, String)> = faults.chain(commands).collect();
    // Stable: at one instant the fault comes before the commands it caused.
    entries.sort_by_key(|(at, source, _)| (*at, *source == "command"));
    Ok(entries
        .into_iter()
        .map(|(at, source, what)| TimelineEntry {
            at_ms: at.0,
            at: at.to_string(),
            source,
            what,
        })
        .collect())
}

enum Record {
    Nothing,
    Commands(usize),
}

#[derive(Default)]
struct Log {
    commands: Vec<(Millis, Option<AgentId>, String)>,
    faults: Vec<(Millis, AgentId, &'static str)>,
}

fn run(
    scenario: &Scenario,
    series: &[(usize, MemorySeries)],
    checks: &Checks,
    record: Record,
) -> Result<(Verdict, Log), EngineError> {
    let mut sim = Simulation::new(scenario.clone(), series.to_vec())?;
    sim.check_invariants_every(checks.invariants_every.max(1));
    sim.stop_faults_at(sim.end().saturating_since(checks.quiet_tail));
    if let Record::Commands(limit) = record {
        sim.record_commands(limit);
        sim.record_fault_arrivals(true);
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        sim.run(|_| {});
        judge(&sim, checks)
    }));
    let failure = match outcome {
        Ok(failure) => failure,
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Some(Failure::new(
                FailureKind::Panic,
                format!("at {}: {text}", sim.now()),
            ))
        }
    };
    let verdict = Verdict {
        seed: scenario.seed,
        failure,
        events: sim.stats().events,
        command_stream_hash: sim.stats().command_stream_hash,
    };
    let log = Log {
        commands: sim.commands().to_vec(),
        faults: sim.fault_arrivals().to_vec(),
    };
    Ok((verdict, log))
}

/// The first failure of a finished run: safety first, then the engine's refusals, then
/// liveness.
fn judge(sim: &Simulation, checks: &Checks) -> Option<Failure> {
    let stats = sim.stats();
    if let Some(violation) = &stats.invariant_violation {
        return Some(Failure::new(FailureKind::Safety, violation.clone()));
    }
    if let Some(error) = &stats.first_unexpected_engine_error {
        return Some(Failure::new(FailureKind::EngineError, error.clone()));
    }
    liveness(sim, checks)
}

/// With the faults over for `quiet_tail`, every agent the engine still wants runs (engine and
/// world agree), unless it was parked, a human was alerted about it, or it served in the
/// tail and the engine moved it since, with a deadline yet to pass.
fn liveness(sim: &Simulation, checks: &Checks) -> Option<Failure> {
    let controller = sim.controller();
    for id in controller.agent_ids() {
        let view = controller.agent(id).expect("listed ids exist");
        let problem = match view.status {
            AgentStatus::Parked => continue,
            AgentStatus::Running if sim.agents[id].process.is_none() => {
                "is running as far as the engine knows, but no process of it exists".to_owned()
            }
            AgentStatus::Running => continue,
            _ if sim.was_alerted(id) => continue,
            // Density and rollouts go on deciding in the quiet tail (memory still grows): an
            // agent that served there and is stopping or moving under a deadline still to
            // come is in flight, not stuck. One that never served in the tail is judged.
            _ if sim.served_after_faults(id) && view.deadline.is_some_and(|d| d > sim.now()) => {
                continue;
            }
            status => format!("is {status:?} (rung {:?}), never alerted", view.rung),
        };
        return Some(Failure {
            kind: FailureKind::Liveness,
            message: format!(
                "at {}: {id} {problem}, {} after the last fault could arrive",
                sim.now(),
                checks.quiet_tail
            ),
            agent: Some(id),
        });
    }
    None
}

/// The first `agent-N` a message names.
fn agent_named(message: &str) -> Option<AgentId> {
    let (_, rest) = message.split_once("agent-")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(AgentId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_the_same_shape_match_whatever_they_hit() {
        let a = Failure::new(
            FailureKind::Safety,
            "at 2h 3m: two live copies of agent-17".into(),
        );
        let b = Failure::new(
            FailureKind::Safety,
            "at 10m: two live copies of agent-3".into(),
        );
        assert_eq!(a.agent, Some(AgentId(17)));
        assert_eq!(a.shape(), b.shape());
        let c = Failure::new(
            FailureKind::Safety,
            "at 10m: node-1: committed 5 bytes".into(),
        );
        assert_ne!(a.shape(), c.shape());
        assert_eq!(c.agent, None);
    }
}
