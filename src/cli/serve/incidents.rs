//! Incidents as the event feed shows them, for `GET /v1/incidents` and the dashboard: a span
//! from the first observation that an agent does not serve to the next time it is ready.
//!
//! Derived, not stored: the feed already holds every observation and decision in order, and
//! deriving from it keeps one source of truth. The measures follow the simulator's
//! definitions as far as a real machine can: the fault's own instant is not observable, so a
//! span starts at its detection (the first observation showing it), and `recovery_ms` runs from
//! there to the agent's next `ready`.

use super::feed::{FeedEntry, FeedKind};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One incident, open or closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Incident {
    pub agent: String,
    pub tenant: Option<u32>,
    /// The observation that opened it: `exited`, `escalated`, `supervisor_lost`,
    /// `config_rejected` or `spawn_failed`.
    pub cause: &'static str,
    /// That observation's description, e.g. `3 exited with code 137`.
    pub what: String,
    pub detected_at_ms: u64,
    /// The feed entry that opened it: the agent's timeline from there tells the story.
    pub detected_seq: u64,
    pub instance: Option<u32>,
    /// The highest rung it climbed: 1 restarted in place, 2 a new instance, 3 its config was
    /// refused (the known-good restore), 4 alerted and parked.
    pub rung: u8,
    pub recovered_at_ms: Option<u64>,
    pub recovery_ms: Option<u64>,
    pub alerted: bool,
}

/// Observations that show an agent not serving.
const OPENERS: [&str; 5] = [
    "exited",
    "escalated",
    "supervisor_lost",
    "config_rejected",
    "spawn_failed",
];

/// What is followed per agent while reading the feed.
#[derive(Debug, Default)]
struct Watch {
    open: Option<usize>,
    /// Instances the engine decided to stop: their exits are planned, not incidents.
    stopping: BTreeSet<u32>,
}

/// The incidents in `feed` (oldest first), oldest first.
pub fn incidents<'a>(feed: impl IntoIterator<Item = &'a FeedEntry>) -> Vec<Incident> {
    let mut found: Vec<Incident> = Vec::new();
    let mut watches: BTreeMap<(Option<u32>, String), Watch> = BTreeMap::new();
    for entry in feed {
        let Some(agent) = &entry.agent else { continue };
        let watch = watches.entry((entry.tenant, agent.clone())).or_default();
        match (entry.kind, entry.event) {
            (FeedKind::Decision, "stop") => {
                watch.stopping.extend(entry.instance);
            }
            (FeedKind::Observation, "exited")
                if entry.instance.is_some_and(|i| watch.stopping.remove(&i)) => {}
            (FeedKind::Observation, event) if OPENERS.contains(&event) => {
                let rung = if event == "config_rejected" { 3 } else { 1 };
                match watch.open {
                    Some(open) => found[open].rung = found[open].rung.max(rung),
                    None => {
                        watch.open = Some(found.len());
                        found.push(Incident {
                            agent: agent.clone(),
                            tenant: entry.tenant,
                            cause: event,
                            what: entry.what.clone(),
                            detected_at_ms: entry.at_ms,
                            detected_seq: entry.seq,
                            instance: entry.instance,
                            rung,
                            recovered_at_ms: None,
                            recovery_ms: None,
                            alerted: false,
                        });
                    }
                }
            }
            (FeedKind::Decision, "start") => {
                if let Some(open) = watch.open
                    && entry.instance != found[open].instance
                {
                    found[open].rung = found[open].rung.max(2);
                }
            }
            (FeedKind::Observation, "ready") => {
                if let Some(open) = watch.open.take() {
                    let incident = &mut found[open];
                    incident.recovered_at_ms = Some(entry.at_ms);
                    incident.recovery_ms =
                        Some(entry.at_ms.saturating_sub(incident.detected_at_ms));
                }
            }
            (FeedKind::Decision, "alert") => {
                if let Some(open) = watch.open.take() {
                    found[open].rung = 4;
                    found[open].alerted = true;
                }
            }
            _ => {}
        }
    }
    debug_assert!(found.iter().all(|i| (1..=4).contains(&i.rung)));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, kind: FeedKind, event: &'static str, instance: u32) -> FeedEntry {
        FeedEntry {
            seq,
            at_ms: seq * 100,
            agent: Some("a".into()),
            instance: Some(instance),
            tenant: Some(7),
            kind,
            event,
            what: format!("{instance} {event}"),
            pod_ms: None,
        }
    }

    use FeedKind::{Decision, Observation};

    #[test]
    fn a_crash_restarted_in_place_is_one_incident_at_rung_one() {
        let feed = [
            entry(1, Decision, "start", 1),
            entry(2, Observation, "ready", 1),
            entry(3, Observation, "exited", 1),
            entry(4, Observation, "spawned", 1),
            entry(5, Observation, "ready", 1),
        ];
        let found = incidents(&feed);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].cause, "exited");
        assert_eq!(found[0].rung, 1);
        assert_eq!(found[0].detected_at_ms, 300);
        assert_eq!(found[0].recovery_ms, Some(200));
        assert!(!found[0].alerted);
    }

    #[test]
    fn a_new_instance_is_rung_two_and_a_refused_config_rung_three() {
        let feed = [
            entry(1, Observation, "escalated", 1),
            entry(2, Decision, "stop", 1),
            entry(3, Observation, "exited", 1),
            entry(4, Decision, "start", 2),
            entry(5, Observation, "ready", 2),
            entry(6, Observation, "config_rejected", 2),
            entry(7, Decision, "start", 3),
            entry(8, Observation, "ready", 3),
        ];
        let found = incidents(&feed);
        assert_eq!(found.len(), 2, "the planned exit opens nothing: {found:?}");
        assert_eq!((found[0].cause, found[0].rung), ("escalated", 2));
        assert_eq!((found[1].cause, found[1].rung), ("config_rejected", 3));
        assert_eq!(found[1].recovered_at_ms, Some(800));
    }

    #[test]
    fn an_alert_closes_an_incident_unrecovered_at_rung_four() {
        let feed = [
            entry(1, Observation, "exited", 1),
            entry(2, Observation, "exited", 1),
            entry(3, Decision, "alert", 1),
        ];
        let found = incidents(&feed);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rung, 4);
        assert!(found[0].alerted);
        assert_eq!(found[0].recovery_ms, None);
    }

    #[test]
    fn agents_of_different_tenants_are_told_apart() {
        let mut other = entry(2, Observation, "ready", 1);
        other.tenant = Some(8);
        let feed = [entry(1, Observation, "exited", 1), other];
        let found = incidents(&feed);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].recovered_at_ms, None,
            "another tenant's `a` is another agent"
        );
    }
}
