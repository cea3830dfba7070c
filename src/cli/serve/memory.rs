//! Each agent's recent memory samples, for the dashboard's chart: bounded per agent, in
//! memory only (a restarted daemon starts a fresh history; the engine keeps its own, for
//! post-mortems, in the journal's replay).

use carapace_engine::{AgentId, Millis};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};

/// Samples kept per agent: an hour at the default 10 s interval.
pub const MAX_POINTS: usize = 360;

/// One sample: the agent's instance's memory at an engine time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    pub at_ms: u64,
    pub instance: u32,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct MemoryHistory {
    by_agent: BTreeMap<AgentId, VecDeque<Point>>,
}

impl MemoryHistory {
    /// Keeps one sample, dropping the oldest past [`MAX_POINTS`].
    pub fn record(&mut self, agent: AgentId, at: Millis, instance: u32, bytes: u64) {
        let points = self.by_agent.entry(agent).or_default();
        debug_assert!(
            points.back().is_none_or(|last| last.at_ms <= at.0),
            "samples arrive in engine-time order"
        );
        if points.len() == MAX_POINTS {
            points.pop_front();
        }
        points.push_back(Point {
            at_ms: at.0,
            instance,
            bytes,
        });
        debug_assert!(points.len() <= MAX_POINTS);
    }

    /// The agent's samples, oldest first.
    pub fn points(&self, agent: AgentId) -> Vec<Point> {
        self.by_agent
            .get(&agent)
            .map(|points| points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Drops a removed agent's history.
    pub fn forget(&mut self, agent: AgentId) {
        self.by_agent.remove(&agent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_newest_samples_within_its_bound() {
        let mut history = MemoryHistory::default();
        let agent = AgentId(1);
        for at in 0..(MAX_POINTS as u64 + 10) {
            history.record(agent, Millis(at), 1, at * 2);
        }
        let points = history.points(agent);
        assert_eq!(points.len(), MAX_POINTS);
        assert_eq!(points[0].at_ms, 10, "the ten oldest were dropped");
        assert_eq!(points[MAX_POINTS - 1].bytes, (MAX_POINTS as u64 + 9) * 2);
        assert!(history.points(AgentId(2)).is_empty());
        history.forget(agent);
        assert!(history.points(agent).is_empty());
    }
}
