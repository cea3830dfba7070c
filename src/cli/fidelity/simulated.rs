//! The simulated side of a fidelity run: the same fleet, policy, probes and fault schedule as
//! the real run, with the driver latencies fitted to it, through the simulator.

use super::real::RealRun;
use super::spec::Spec;
use crate::cli::calibrate::{Fitted, fit_phases};
use crate::cli::chaos::FaultKind;
use crate::cli::serve::config::ServeConfig;
use carapace_engine::Millis;
use carapace_sim::Simulation;
use carapace_sim::scenario::{
    AgentClass, AgentFaults, Bytes, Clients, Dist, Fleet, Latency, MemoryModel, Probes, Scenario,
    Span,
};
use carapace_sim::trace::{Replays, TraceEvent, TraceEventKind};
use std::collections::BTreeMap;

/// Simulated time after the last fault, for its recovery to finish.
const TAIL: Millis = Millis(600_000);
/// How long a replayed spike holds its memory (the real one holds until it is killed).
const SPIKE_HOLD: Millis = Millis(600_000);

/// The simulated side, pooled over seeds.
#[derive(Debug)]
pub struct SimRun {
    /// Per round of the schedule (same order as the real rounds), per seed: the rung that
    /// resolved it (4: an alert; 0: no incident) and its recovery.
    pub rounds: Vec<Vec<(u8, Option<u64>)>>,
    pub provisioning_ms: Vec<u64>,
    /// The log-normal fits of the real phases, with their sample sizes.
    pub fitted: Vec<Fitted>,
    /// What the scenario uses for each phase seen.
    pub models: Vec<(&'static str, Dist)>,
}

/// The scenario of the simulated side; its event trace is `events`.
pub fn scenario(
    spec: &Spec,
    config: &ServeConfig,
    real: &RealRun,
    models: &[(&'static str, Dist)],
) -> (Scenario, Vec<TraceEvent>) {
    let ms = |v| Span(Millis(v));
    let template = &spec.agent;
    let request = template
        .memory_request
        .unwrap_or(Bytes(template.memory_limit.0 / 2));
    let class = AgentClass {
        name: format!("class-{}", template.class),
        agents: spec.agents,
        priority: template.priority,
        memory_limit: template.memory_limit,
        memory_request: request,
        memory: MemoryModel {
            baseline: spec.sim.baseline.unwrap_or(request),
            baseline_jitter: 0.0,
            growth_per_day: Bytes(0),
            spikes_per_day: 0.0,
            spike_size: Bytes(0),
            spike_duration: Span(SPIKE_HOLD),
            // The real spike allocates its bytes at once.
            spike_ramp: ms(1),
            trace: None,
        },
        faults: AgentFaults::default(),
        clients: Clients {
            requests_per_hour: 3_600_000.0 / spec.client.interval.0.0 as f64,
            timeout: spec.client.timeout,
        },
    };
    let mut latency = Latency {
        // One machine: there is nothing to pull, and the decision reaching its pod and a
        // snapshot's restore are part of the measured start-to-spawn phase (fitted as
        // `validate`), timed from the decision.
        schedule: Dist::Constant { value: ms(0) },
        version_pull: Dist::Constant { value: ms(0) },
        snapshot_restore: Dist::Constant { value: ms(0) },
        ..Latency::default()
    };
    for (field, dist) in models {
        match *field {
            "boot" => latency.boot = *dist,
            "boot_after_crash" => latency.boot_after_crash = *dist,
            "validate" => latency.validate = *dist,
            "stop" => latency.stop = *dist,
            "restart" => latency.restart = *dist,
            "exit_notice" => latency.exit_notice = *dist,
            "supervisor_loss_notice" => latency.supervisor_loss_notice = *dist,
            "lost_stop" => latency.lost_stop = Some(*dist),
            "config_reject_notice" => latency.config_reject_notice = Some(*dist),
            READY_NOTICE => latency.ready_notice = *dist,
            other => unreachable!("calibrate fits no field `{other}`"),
        }
    }
    let pods = &config.pods;
    // A hung agent ignores SIGTERM: its stop lasts the grace, which the config says exactly
    // (the real run's hung stops are kept out of the `stop` fit for that reason).
    latency.hung_stop_grace = pods.grace;
    let events: Vec<TraceEvent> = real
        .rounds
        .iter()
        .filter(|round| round.outcome.is_ok())
        .map(|round| TraceEvent {
            at_ms: round.at_ms,
            target: round.agent,
            kind: trace_kind(round.fault),
            value: if round.fault == FaultKind::Spike {
                round.spike_bytes
            } else {
                0
            },
            duration_ms: if round.fault == FaultKind::Spike {
                SPIKE_HOLD.0
            } else {
                0
            },
        })
        .chain(
            real.recreates
                .iter()
                .filter(|recreate| recreate.outcome.is_ok())
                .map(|recreate| TraceEvent {
                    at_ms: recreate.at_ms,
                    target: recreate.agent,
                    kind: TraceEventKind::Recreate,
                    value: 0,
                    duration_ms: 0,
                }),
        )
        .collect();
    let last = events.iter().map(|e| e.at_ms).max().unwrap_or(0);
    let scenario = Scenario {
        name: "fidelity".into(),
        seed: 1,
        duration: Span(Millis(last) + TAIL),
        // Provisioning of the first boot is measured: it is the real run's create.
        warmup: ms(0),
        fleet: Fleet {
            nodes: 1,
            zones: 1,
            regions: 1,
            node_memory: Bytes(real.node_memory),
            warm_instance_memory: Bytes(750 << 20),
            tenants: 1,
            classes: vec![class],
        },
        node_faults: Default::default(),
        controller_faults: None,
        latency,
        probes: Probes {
            startup_interval: pods.startup_probe_interval,
            interval: pods.probe_interval,
            timeout: pods.probe_timeout,
            memory_interval: pods.memory_interval,
            ..Probes::default()
        },
        policy: config.policy.clone(),
        slo: Default::default(),
        churn: Default::default(),
        rollouts: Vec::new(),
        event_trace: Some("schedule.csv".into()),
        report: Default::default(),
    };
    (scenario, events)
}

/// The simulator's fault for a real one. Fidelity's spec refuses the faults without one.
fn trace_kind(fault: FaultKind) -> TraceEventKind {
    match fault {
        FaultKind::Kill => TraceEventKind::Crash,
        FaultKind::Hang => TraceEventKind::Hang,
        FaultKind::TruncateConfig => TraceEventKind::ConfigCorruption,
        FaultKind::Spike => TraceEventKind::Spike,
        FaultKind::KillSupervisor => TraceEventKind::SupervisorLoss,
        FaultKind::KillDaemon => {
            unreachable!("the spec refuses faults the simulator has no model of")
        }
    }
}

/// Fits the latencies to the real run and runs the simulated side over `spec.sim.seeds` seeds.
pub fn run(
    spec: &Spec,
    config: &ServeConfig,
    real: &RealRun,
) -> anyhow::Result<(SimRun, Scenario, Vec<TraceEvent>)> {
    let mut samples: BTreeMap<String, Vec<u64>> = real.phases.clone();
    let mut fitted = fit_phases(&mut samples, 1);
    let interval = config.pods.startup_probe_interval.0.0;
    // Before a missing boot_after_crash borrows the boots: each boot counts once.
    if let Some(notices) = ready_notices(&samples, interval) {
        fitted.push(Fitted {
            field: READY_NOTICE,
            phase: READY_NOTICE,
            meaning: "a startup probe's tick to the engine hearing of the ready",
            samples: notices.len(),
            fit: Some(crate::cli::calibrate::Fit::of(&notices)),
        });
        samples.insert(READY_NOTICE.into(), notices);
        // What is left of each boot is the tick that saw it.
        for phase in ["boot", "boot_after_crash"] {
            if let Some(boots) = samples.get_mut(phase) {
                for boot in boots.iter_mut() {
                    *boot -= *boot % interval;
                }
            }
        }
    }
    // A phase never seen takes its sibling's samples rather than a default measured on
    // another agent.
    if samples.get("boot_after_crash").is_none_or(Vec::is_empty)
        && let Some(boot) = samples.get("boot").cloned()
    {
        samples.insert("boot_after_crash".into(), boot);
    }
    // A real boot is timed to the ready observation, which waits for the next startup probe;
    // the simulator adds that wait itself, so the model loses its mean: half an interval.
    let probe_wait = interval / 2;
    let models: Vec<(&'static str, Dist)> = fitted
        .iter()
        .filter_map(|f| {
            let lag = match f.field {
                "boot" | "boot_after_crash" => probe_wait,
                _ => 0,
            };
            let values = samples.get(f.phase)?;
            model(values, lag).map(|dist| (f.field, dist))
        })
        .collect();
    let (scenario, events) = scenario(spec, config, real, &models);
    let scheduled: Vec<(u32, u64)> = real.rounds.iter().map(|r| (r.agent, r.at_ms)).collect();
    let mut rounds: Vec<Vec<(u8, Option<u64>)>> = vec![Vec::new(); real.rounds.len()];
    let mut provisioning_ms = Vec::new();
    for seed in 0..u64::from(spec.sim.seeds) {
        let mut scenario = scenario.clone();
        scenario.seed = seed + 1;
        let replays = Replays {
            memory: Vec::new(),
            events: events.clone(),
        };
        let mut sim = Simulation::new(scenario, replays)
            .map_err(|e| anyhow::anyhow!("the simulated side refused the policy: {e}"))?;
        sim.run(|_| {});
        let measures = sim.measures();
        for (slot, (round, &(agent, at))) in
            rounds.iter_mut().zip(real.rounds.iter().zip(&scheduled))
        {
            if round.outcome.is_err() {
                continue;
            }
            let incident = measures
                .incidents
                .iter()
                .find(|i| i.agent == agent && i.start_ms == at);
            slot.push(incident.map_or((0, None), |i| (i.rung, i.recovery_ms)));
        }
        for value in measures.provisioning.iter_recorded() {
            for _ in 0..value.count_at_value() {
                provisioning_ms.push(value.value_iterated_to());
            }
        }
    }
    Ok((
        SimRun {
            rounds,
            provisioning_ms,
            fitted,
            models,
        },
        scenario,
        events,
    ))
}

/// The simulator's `ready_notice`, fitted from the boots.
const READY_NOTICE: &str = "ready_notice";

/// A real boot is timed to the ready on the pod's clock: the startup probe that saw it fired
/// a whole number of intervals after the spawn (the supervisor probes on that grid), and its
/// own request took the rest. The simulator puts the ready at the tick, so the rest is its
/// `ready_notice`: each boot modulo the interval, sorted. None without boots or interval.
fn ready_notices(samples: &BTreeMap<String, Vec<u64>>, interval: u64) -> Option<Vec<u64>> {
    if interval == 0 {
        return None;
    }
    let mut notices: Vec<u64> = ["boot", "boot_after_crash"]
        .iter()
        .filter_map(|phase| samples.get(*phase))
        .flatten()
        .map(|boot| boot % interval)
        .collect();
    notices.sort_unstable();
    (!notices.is_empty()).then_some(notices)
}

/// Samples a phase needs before it is fitted; fewer are simulated by their observed range.
/// Apart from `judge.min_samples`: how many samples a comparison needs to be judged is not how
/// many a fit needs to be worth more than the range.
const FIT_FROM: usize = 8;

/// The simulator's distribution for one phase's sorted samples, `lag` ms earlier: the
/// log-normal by median and p90 from [`FIT_FROM`] samples (their observed deciles where the
/// log-normal fits them badly, as a boot seen at one of two probe ticks); before that, the
/// observed range, uniform — a log-normal through three samples of a bimodal phase (a stop
/// that is instant, or waits out the grace period) has a tail that reaches minutes.
fn model(sorted: &[u64], lag: u64) -> Option<Dist> {
    let at = |v: u64| Span(Millis(v.saturating_sub(lag).max(1)));
    let (&low, &high) = (sorted.first()?, sorted.last()?);
    Some(if sorted.len() >= FIT_FROM {
        let fit = crate::cli::calibrate::Fit::of(sorted);
        if fit.prefer_deciles(sorted.len()) {
            Dist::Deciles {
                deciles: crate::cli::calibrate::deciles(sorted).map(at),
            }
        } else {
            Dist::LogNormal {
                median: at(fit.median.0),
                p90: at(fit.p90.0),
            }
        }
    } else if low == high {
        Dist::Constant { value: at(low) }
    } else {
        Dist::Uniform {
            min: at(low),
            max: at(high),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_notice_is_what_each_boot_spends_past_its_probe_tick() {
        let samples: BTreeMap<String, Vec<u64>> = [
            ("boot".to_owned(), vec![203, 205, 302]),
            ("boot_after_crash".to_owned(), vec![201]),
            ("stop".to_owned(), vec![12]),
        ]
        .into();
        assert_eq!(ready_notices(&samples, 100), Some(vec![1, 2, 3, 5]));
        assert_eq!(ready_notices(&samples, 0), None);
        assert_eq!(ready_notices(&BTreeMap::new(), 100), None);
    }
}
