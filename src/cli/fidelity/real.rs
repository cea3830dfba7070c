//! The real side of a fidelity run: create the agents on a running `carapace serve`, measure
//! their provisioning, put them through the fault schedule one round at a time (chaos rounds),
//! recreate them one at a time for more provisioning samples, and remove them again.

use super::spec::Spec;
use crate::cli::calibrate::Phases;
use crate::cli::chaos::FaultKind;
use crate::cli::chaos::daemon::{Client, Daemon};
use crate::cli::chaos::round::{self, Ending, Plan};
use crate::cli::serve::agents::AgentRequest;
use carapace_engine::{AgentId, Millis};
use carapace_sim::Measures;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// What the real daemon did with the schedule.
#[derive(Debug)]
pub struct RealRun {
    /// Create accepted → first ready: per agent in creation order, then per recreate that
    /// provisioned.
    pub provisioning_ms: Vec<u64>,
    pub rounds: Vec<RealRound>,
    pub recreates: Vec<RealRecreate>,
    /// Phase samples for calibration (as `carapace chaos` writes them to latencies.csv).
    pub phases: BTreeMap<String, Vec<u64>>,
    /// The local node's memory capacity as the engine sees it.
    pub node_memory: u64,
    /// The daemon's feed entries about this run's agents, each with `since_origin_ms` (on
    /// the clock of the rounds' `at_ms`). The daemon keeps its last 10,000 entries: of a
    /// longer run, the tail.
    pub feed: Vec<serde_json::Value>,
}

/// One round of the schedule, as it went for real.
#[derive(Clone, Debug)]
pub struct RealRound {
    /// Index of the agent in creation order.
    pub agent: u32,
    pub fault: FaultKind,
    pub spike_bytes: u64,
    /// Injection time since the first agent was created (the schedule's time zero).
    pub at_ms: u64,
    pub outcome: Result<Resolved, String>,
}

/// One recreate after the schedule: the agent removed and created again under a new name.
#[derive(Clone, Debug)]
pub struct RealRecreate {
    /// Index of the agent in creation order.
    pub agent: u32,
    /// The new agent's create, since the first agent was created.
    pub at_ms: u64,
    /// Its provisioning.
    pub outcome: Result<u64, String>,
}

/// How a round ended: its rung (4: an alert; 0: the agent never stopped) and times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub rung: u8,
    pub detection_ms: Option<u64>,
    pub recovery_ms: Option<u64>,
}

/// Agents this run created, removed again however it ends.
struct Created<'a> {
    daemon: &'a Daemon,
    names: Vec<String>,
}

impl Drop for Created<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(error) = self
                .daemon
                .send("DELETE", &format!("/v1/agents/{name}"), None)
            {
                eprintln!("carapace fidelity: could not remove {name}: {error:#}");
            }
        }
    }
}

pub fn run(spec: &Spec, data: &Path) -> anyhow::Result<RealRun> {
    let daemon = Daemon::find(data).map_err(|m| anyhow::anyhow!(m))?;
    let node_memory = daemon.get("/v1/nodes")?["nodes"][0]["memory"]["capacity_bytes"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("the daemon reports no node capacity"))?;
    let timeout = Duration::from_millis(spec.timeout.0.0);
    let mut created = Created {
        daemon: &daemon,
        names: Vec::new(),
    };
    let feed_start = daemon.feed_tail()?;
    let mut agents: Vec<(String, AgentId, Millis)> = Vec::new();
    for index in 0..spec.agents {
        let name = spec.agent_name(index);
        let (id, at) = create(&daemon, &mut created, &spec.agent, &name)?;
        agents.push((name, id, at));
    }
    let origin = agents[0].2;
    let mut phases: Vec<Phases> = agents.iter().map(|_| Phases::default()).collect();
    let mut seen = feed_start;
    let mut provisioning_ms = provisioning(&daemon, &agents, &mut seen, timeout, &mut phases)?;
    eprintln!(
        "carapace fidelity: {} agents provisioned (ms: {provisioning_ms:?})",
        agents.len()
    );

    let client_interval = Duration::from_millis(spec.client.interval.0.0);
    let client_timeout = Duration::from_millis(spec.client.timeout.0.0);
    let clients: Vec<Client> = agents
        .iter()
        .map(|(name, ..)| Client::start(&daemon, name, client_interval, client_timeout))
        .collect();
    let mut measures = Measures::new(Millis::ZERO);
    let schedule = spec.rounds();
    let mut rounds = Vec::with_capacity(schedule.len());
    for (k, (fault, spike_bytes)) in schedule.into_iter().enumerate() {
        let index = k % agents.len();
        let (name, id, _) = &agents[index];
        let plan = Plan {
            data: data.to_owned(),
            agent: name.clone(),
            id: *id,
            class: format!("class-{}", spec.agent.class),
            fault,
            settle: settle_of(spec.settle.0, k),
            timeout,
            spike_bytes,
            client_timeout,
            restart_with: None,
        };
        let before = measures.incidents.len();
        let outcome = round::run(
            &daemon,
            &plan,
            &clients[index],
            &mut measures,
            &mut phases[index],
        );
        let (at_ms, outcome) = match outcome {
            Ok(outcome) => {
                let incident = measures.incidents.get(before);
                let resolved = Resolved {
                    rung: match outcome.ending {
                        Ending::Absorbed => 0,
                        _ => incident.as_ref().map_or(0, |i| i.rung),
                    },
                    detection_ms: incident.as_ref().and_then(|i| i.detection_ms),
                    recovery_ms: incident.as_ref().and_then(|i| i.recovery_ms),
                };
                (outcome.injected_at.saturating_since(origin).0, Ok(resolved))
            }
            Err(error) => (0, Err(format!("{error:#}"))),
        };
        eprintln!(
            "carapace fidelity: round {}: {} on {name}: {}",
            k + 1,
            fault.name(),
            match &outcome {
                Ok(r) => format!("rung {}, recovery {:?} ms", r.rung, r.recovery_ms),
                Err(error) => error.clone(),
            }
        );
        rounds.push(RealRound {
            agent: index as u32,
            fault,
            spike_bytes,
            at_ms,
            outcome,
        });
    }
    for client in &clients {
        client.stop();
    }
    let mut names: Vec<String> = agents.iter().map(|(name, ..)| name.clone()).collect();
    let mut recreates = Vec::new();
    // Each recreate follows the feed from where the one before stopped reading it.
    let mut cursor = if spec.recreates > 0 {
        daemon.feed_tail()?
    } else {
        0
    };
    for k in 0..spec.recreates {
        let index = k as usize % agents.len();
        std::thread::sleep(Duration::from_millis(spec.settle.0.0));
        let incarnation = 2 + k / spec.agents;
        let name = spec.incarnation_name(index as u32, incarnation);
        let at = recreate(&daemon, &mut created, &spec.agent, &agents[index].0, &name).and_then(
            |(id, at)| {
                // The new agent's phases on their own: its instances count from the start
                // again.
                let mut fresh = [Phases::default()];
                let ms = provisioning(
                    &daemon,
                    &[(name.clone(), id, at)],
                    &mut cursor,
                    timeout,
                    &mut fresh,
                )?;
                phases.extend(fresh);
                Ok((at, ms[0]))
            },
        );
        names.push(name.clone());
        let (at_ms, outcome) = match at {
            Ok((at, ms)) => {
                provisioning_ms.push(ms);
                (at.saturating_since(origin).0, Ok(ms))
            }
            Err(error) => (0, Err(format!("{error:#}"))),
        };
        eprintln!(
            "carapace fidelity: recreate {}: {name}: {}",
            k + 1,
            match &outcome {
                Ok(ms) => format!("provisioned in {ms} ms"),
                Err(error) => error.clone(),
            }
        );
        let failed = outcome.is_err();
        recreates.push(RealRecreate {
            agent: index as u32,
            at_ms,
            outcome,
        });
        if failed {
            // What state the agent was left in is unknown: the rest would measure it, not
            // provisioning.
            break;
        }
        agents[index].0 = name;
    }
    let feed = feed_of(&daemon, feed_start, &names, origin)?;
    let mut samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for phases in phases {
        for (phase, ms) in phases.samples {
            samples.entry(phase.to_owned()).or_default().push(ms);
        }
    }
    Ok(RealRun {
        provisioning_ms,
        rounds,
        recreates,
        phases: samples,
        node_memory,
        feed,
    })
}

/// Removes the agent `old` and creates `new` from `template`: the new agent's id and the
/// daemon's time of its create. `created` names the agents to remove at the end.
fn recreate(
    daemon: &Daemon,
    created: &mut Created<'_>,
    template: &AgentRequest,
    old: &str,
    new: &str,
) -> anyhow::Result<(AgentId, Millis)> {
    let (status, view) = daemon.send("DELETE", &format!("/v1/agents/{old}"), None)?;
    if status != 200 {
        anyhow::bail!(
            "removing {old} answered {status}: {}",
            view["error"].as_str().unwrap_or("")
        );
    }
    created.names.retain(|name| name != old);
    create(daemon, created, template, new)
}

/// Creates `name` from `template`: its id and the daemon's time of the create.
fn create(
    daemon: &Daemon,
    created: &mut Created<'_>,
    template: &AgentRequest,
    name: &str,
) -> anyhow::Result<(AgentId, Millis)> {
    let mut body = template.clone();
    body.name = name.to_owned();
    let (status, view) = daemon.send("POST", "/v1/agents", Some(&serde_json::to_value(&body)?))?;
    if status != 201 {
        anyhow::bail!(
            "creating {name} answered {status}: {}",
            view["error"].as_str().unwrap_or("")
        );
    }
    created.names.push(name.to_owned());
    let id = view["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| anyhow::anyhow!("the created view has no id: {view}"))?;
    Ok((AgentId(id), Millis(view["now_ms"].as_u64().unwrap_or(0))))
}

/// The feed after `after` about the agents `names`, each entry given its time since `origin`.
fn feed_of(
    daemon: &Daemon,
    after: u64,
    names: &[String],
    origin: Millis,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let names: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let mut entries = Vec::new();
    let mut feed = daemon.events(after)?;
    let serde_json::Value::Array(events) = feed["events"].take() else {
        return Ok(entries);
    };
    for mut event in events {
        if !event["agent"].as_str().is_some_and(|a| names.contains(a)) {
            continue;
        }
        let at = Millis(event["at_ms"].as_u64().unwrap_or(0));
        event["since_origin_ms"] = at.saturating_since(origin).0.into();
        entries.push(event);
    }
    Ok(entries)
}

/// The settle of round `k`: the file's settle plus a jitter of up to as much again, spread
/// evenly over the rounds (the golden-ratio sequence). A round is settled at a healthy probe,
/// so a fixed settle that is a multiple of the probe interval would inject every fault at the
/// same phase of the probe cycle; production's faults, and the simulator's, fall at any.
pub fn settle_of(settle: Millis, k: usize) -> Duration {
    const GOLDEN: f64 = 0.618_033_988_749_895;
    let fraction = (k as f64 * GOLDEN).fract();
    let jitter = (settle.0 as f64 * fraction) as u64;
    Duration::from_millis(settle.0 + jitter)
}

/// Follows the feed from `seen` until every agent was ready once; create → first ready.
/// `seen` is left at the last entry read.
fn provisioning(
    daemon: &Daemon,
    agents: &[(String, AgentId, Millis)],
    seen: &mut u64,
    within: Duration,
    phases: &mut [Phases],
) -> anyhow::Result<Vec<u64>> {
    let mut ready: Vec<Option<u64>> = vec![None; agents.len()];
    let deadline = Instant::now() + within;
    while ready.iter().any(Option::is_none) {
        let feed = daemon.events(*seen)?;
        for event in feed["events"].as_array().into_iter().flatten() {
            *seen = event["seq"].as_u64().unwrap_or(*seen);
            let Some(index) = agents.iter().position(|(name, ..)| event["agent"] == *name) else {
                continue;
            };
            phases[index].see(event);
            if event["event"] == "ready" && ready[index].is_none() {
                let at = Millis(event["at_ms"].as_u64().unwrap_or(0));
                ready[index] = Some(at.saturating_since(agents[index].2).0);
            }
            if event["event"] == "alert" {
                anyhow::bail!(
                    "{} was alerted while provisioning: {event}",
                    agents[index].0
                );
            }
        }
        if Instant::now() > deadline {
            let late: Vec<&str> = agents
                .iter()
                .zip(&ready)
                .filter(|(_, r)| r.is_none())
                .map(|((name, ..), _)| name.as_str())
                .collect();
            anyhow::bail!("{late:?} not ready within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(ready.into_iter().map(|r| r.unwrap_or(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_spread_over_one_more_settle_and_every_phase_of_a_probe_cycle() {
        let settles: Vec<u64> = (0..200)
            .map(|k| settle_of(Millis(200), k).as_millis() as u64)
            .collect();
        assert_eq!(settles[0], 200);
        assert!(
            settles.iter().all(|s| (200..400).contains(s)),
            "{settles:?}"
        );
        // Against a 200 ms probe cycle, every 20 ms tenth of it holds about a tenth of the
        // rounds (the golden-ratio sequence is within a few of exact).
        let mut tenths = [0u32; 10];
        for s in &settles {
            tenths[((s % 200) / 20) as usize] += 1;
        }
        assert!(tenths.iter().all(|n| (16..=24).contains(n)), "{tenths:?}");
    }
}
