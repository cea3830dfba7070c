//! Making a failing scenario small while it still fails the same way: greedy, deterministic,
//! bounded.

use super::check::{Checks, Failure, check};
use crate::scenario::{self, Scenario, Span};
use crate::trace::MemorySeries;
use carapace_engine::Millis;

/// A failing scenario made small.
#[derive(Clone, Debug, PartialEq)]
pub struct Shrunk {
    pub scenario: Scenario,
    pub failure: Failure,
    /// Runs the shrinking made (at most the bound it was given).
    pub runs: u32,
}

/// Shrinks `failing` (which fails with `failure` under `checks`) by trying, in turn: fewer
/// agents per class (also with as many faults spread over fewer agents), fewer nodes, fewer tenants, a shorter run, and each fault class or
/// scheduled event off. A candidate is kept when it still fails with the same shape of
/// failure; the search restarts from the smallest scenario so far until no candidate is kept
/// or `max_runs` runs were made.
pub fn shrink(
    failing: &Scenario,
    failure: &Failure,
    series: &[(usize, MemorySeries)],
    checks: &Checks,
    max_runs: u32,
) -> Shrunk {
    let shape = failure.shape();
    let mut best = Shrunk {
        scenario: failing.clone(),
        failure: failure.clone(),
        runs: 0,
    };
    'progress: while best.runs < max_runs {
        for candidate in candidates(&best.scenario, checks) {
            if best.runs >= max_runs {
                break 'progress;
            }
            best.runs += 1;
            let Ok(verdict) = check(&candidate, series, checks) else {
                continue;
            };
            if let Some(found) = verdict.failure.filter(|f| f.shape() == shape) {
                best.scenario = candidate;
                best.failure = found;
                continue 'progress;
            }
        }
        break;
    }
    assert!(
        best.runs <= max_runs,
        "invariant: shrinking stays within its run budget"
    );
    best
}

/// Smaller variants of `s`, most ambitious first; each passes every check a file does.
fn candidates(s: &Scenario, checks: &Checks) -> Vec<Scenario> {
    let mut out: Vec<Scenario> = Vec::new();
    let total = s.agent_count();
    for (i, class) in s.fleet.classes.iter().enumerate() {
        let n = class.agents;
        let others = total - u64::from(n);
        let floor = u32::from(others == 0);
        for fewer in [floor, 1, n / 2, n.saturating_sub(1)] {
            if fewer < n && fewer >= floor {
                out.push(with(s, |c| c.fleet.classes[i].agents = fewer));
            }
        }
        // Fewer agents, each failing as much more often: the class sees as many faults as
        // before, so a bug that needs several of them can still be hit by one agent.
        for fewer in [1, n / 2] {
            if (1..n).contains(&fewer) {
                let factor = f64::from(n) / f64::from(fewer);
                out.push(with(s, |c| {
                    let class = &mut c.fleet.classes[i];
                    class.agents = fewer;
                    class.faults.crashes_per_day *= factor;
                    class.faults.hangs_per_day *= factor;
                    class.faults.config_corruptions_per_day *= factor;
                    class.memory.spikes_per_day *= factor;
                }));
            }
        }
    }
    for fewer in [1, s.fleet.nodes / 2, s.fleet.nodes.saturating_sub(1)] {
        if (1..s.fleet.nodes).contains(&fewer) {
            out.push(with(s, |c| set_nodes(c, fewer)));
        }
    }
    for fewer in [1, s.fleet.tenants / 2] {
        if (1..s.fleet.tenants).contains(&fewer) {
            out.push(with(s, |c| c.fleet.tenants = fewer));
        }
    }
    // Long enough for a warmup, some faults and the quiet tail.
    let shortest = s.warmup.ms() + 2 * checks.quiet_tail.0;
    for shorter in [s.duration.ms() / 2, s.duration.ms() * 3 / 4] {
        if (shortest..s.duration.ms()).contains(&shorter) {
            out.push(with(s, |c| set_duration(c, shorter)));
        }
    }
    out.extend(faults_off(s));
    out.into_iter()
        .filter_map(revalidated)
        .filter(|c| c != s)
        .collect()
}

/// Each fault class, node failure, scheduled event and churn switched off, one at a time.
fn faults_off(s: &Scenario) -> Vec<Scenario> {
    let mut out = Vec::new();
    for i in 0..s.fleet.classes.len() {
        let f = &s.fleet.classes[i].faults;
        let m = &s.fleet.classes[i].memory;
        let rates = [
            f.crashes_per_day,
            f.hangs_per_day,
            f.config_corruptions_per_day,
            f.crash_poisons_state,
            m.spikes_per_day,
        ];
        for (which, rate) in rates.into_iter().enumerate() {
            if rate == 0.0 {
                continue;
            }
            out.push(with(s, |c| {
                let class = &mut c.fleet.classes[i];
                match which {
                    0 => class.faults.crashes_per_day = 0.0,
                    1 => class.faults.hangs_per_day = 0.0,
                    2 => class.faults.config_corruptions_per_day = 0.0,
                    3 => class.faults.crash_poisons_state = 0.0,
                    _ => class.memory.spikes_per_day = 0.0,
                }
            }));
        }
    }
    if s.node_faults.failures_per_node_per_day > 0.0 {
        out.push(with(s, |c| c.node_faults.failures_per_node_per_day = 0.0));
    }
    if !s.node_faults.scheduled.is_empty() {
        out.push(with(s, |c| c.node_faults.scheduled.clear()));
    }
    if s.churn.creates_per_hour > 0.0 {
        out.push(with(s, |c| c.churn.creates_per_hour = 0.0));
    }
    if !s.rollouts.is_empty() {
        out.push(with(s, |c| c.rollouts.clear()));
    }
    out
}

fn with(s: &Scenario, change: impl FnOnce(&mut Scenario)) -> Scenario {
    let mut candidate = s.clone();
    change(&mut candidate);
    candidate
}

fn set_nodes(s: &mut Scenario, nodes: u32) {
    let fleet = &mut s.fleet;
    fleet.nodes = nodes;
    fleet.zones = fleet.zones.min(nodes);
    fleet.regions = fleet.regions.min(fleet.zones);
    s.node_faults.scheduled.retain(|loss| loss.node < nodes);
}

fn set_duration(s: &mut Scenario, ms: u64) {
    s.duration = Span(Millis(ms));
    s.node_faults.scheduled.retain(|loss| loss.at.ms() < ms);
    s.rollouts.retain(|rollout| rollout.at.ms() < ms);
}

/// Through the file format and back: a candidate a file could not hold is no candidate.
fn revalidated(s: Scenario) -> Option<Scenario> {
    let text = toml::to_string(&s).ok()?;
    scenario::parse_str(&text, "<shrink>").ok()
}
