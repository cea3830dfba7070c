//! `carapace calibrate DIR...`: fits the simulator's driver latency model to what
//! `carapace chaos` measured on real pods, and writes it as a scenario fragment.
//!
//! Chaos records, per round, the phases the daemon's event feed shows (`latencies.csv`):
//! a fresh instance's start decision to its process, its process to ready (`boot`), a process
//! restarted in place to ready (`boot_after_crash`), a stop decision to the start that
//! follows it (`stop`, and `lost_stop` for a pod whose supervisor died), an exit to the
//! process restarted in place (`restart`), and a kill of the agent, of its pod supervisor or
//! of an agent whose config was truncated to the engine hearing of it (`exit_notice`,
//! `supervisor_loss_notice`, `config_reject_notice`). Each phase is fitted as the simulator's
//! log-normal — by its median and 90th percentile, the very parameters a scenario gives — and
//! the fit is judged by the Kolmogorov–Smirnov distance between the samples and the fitted
//! distribution. Where it fits badly, the phase is written as its observed deciles instead.

use super::EXIT_BAD_INPUT;
use super::chaos::FaultKind;
use carapace_engine::Millis;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Phases and the simulator's latency fields they calibrate.
const PHASES: &[(&str, &str, &str)] = &[
    ("boot", "boot", "process start to ready, a fresh instance"),
    (
        "boot_after_crash",
        "boot_after_crash",
        "process restarted in place to ready",
    ),
    (
        "start_to_spawn",
        "validate",
        "start decision to process: lay-out, snapshot restore and config validation on one machine",
    ),
    (
        "stop",
        "stop",
        "stop decision to the next start: SIGTERM, exit, snapshot",
    ),
    (
        LOST_STOP,
        "lost_stop",
        "stop decision to the next start, for a pod whose supervisor died",
    ),
    (
        "restart",
        "restart",
        "exit seen to the process spawned again in place",
    ),
    (
        "exit_notice",
        "exit_notice",
        "SIGKILL of the agent to the engine seeing it exit",
    ),
    (
        "supervisor_loss_notice",
        "supervisor_loss_notice",
        "SIGKILL of the pod supervisor to the engine seeing it lost",
    ),
    (
        "config_reject_notice",
        "config_reject_notice",
        "truncated config and SIGKILL of the agent to the engine seeing the config refused",
    ),
];
/// Fewer samples than this fit nothing worth writing down.
const MIN_SAMPLES: usize = 3;
/// Bounds on what one calibration reads.
const MAX_SAMPLES: usize = 1_000_000;

#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// Directories `carapace chaos --out` wrote (each holds latencies.csv).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Where to write the scenario fragment (default: print it).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    let mut samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for dir in &args.dirs {
        let path = dir.join("latencies.csv");
        let mut reader = match csv::Reader::from_path(&path) {
            Ok(reader) => reader,
            Err(error) => {
                eprintln!("carapace calibrate: {}: {error}", path.display());
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
        };
        for (line, row) in reader.deserialize::<(String, u64)>().enumerate() {
            let (phase, ms) = match row {
                Ok(row) => row,
                Err(error) => {
                    // Line 1 is the header.
                    eprintln!(
                        "carapace calibrate: {}:{}: {error}",
                        path.display(),
                        line + 2
                    );
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
            };
            let kept = samples.entry(phase).or_default();
            if kept.len() < MAX_SAMPLES {
                kept.push(ms);
            }
        }
    }
    let fragment = fragment(&args.dirs, &mut samples);
    match &args.out {
        Some(path) => std::fs::write(path, &fragment)?,
        None => print!("{fragment}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// One phase of the real runs and the simulator's latency field it calibrates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fitted {
    pub field: &'static str,
    pub phase: &'static str,
    pub meaning: &'static str,
    pub samples: usize,
    /// None with fewer than [`MIN_SAMPLES`] samples.
    pub fit: Option<Fit>,
}

/// Fits every phase the simulator has a field for, each with at least `min_samples`
/// samples; `samples` are sorted in place.
pub fn fit_phases(samples: &mut BTreeMap<String, Vec<u64>>, min_samples: usize) -> Vec<Fitted> {
    let min_samples = min_samples.max(1);
    PHASES
        .iter()
        .map(|&(phase, field, meaning)| {
            let values = samples.get_mut(phase).map(|v| {
                v.sort_unstable();
                &v[..]
            });
            let values = values.unwrap_or_default();
            Fitted {
                field,
                phase,
                meaning,
                samples: values.len(),
                fit: (values.len() >= min_samples).then(|| Fit::of(values)),
            }
        })
        .collect()
}

/// The `[latency]` fragment, with each fit's sample size and KS distance as comments.
fn fragment(dirs: &[PathBuf], samples: &mut BTreeMap<String, Vec<u64>>) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Fitted by `carapace calibrate` from {} chaos run(s). Paste into a scenario.",
        dirs.len()
    );
    let _ = writeln!(text, "[latency]");
    for fitted in fit_phases(samples, MIN_SAMPLES) {
        let Fitted {
            field,
            phase,
            meaning,
            samples: count,
            fit,
        } = fitted;
        match fit {
            _ if count == 0 => {
                let _ = writeln!(text, "# {field}: no samples of `{phase}` ({meaning})");
            }
            None => {
                let _ = writeln!(
                    text,
                    "# {field}: {count} sample(s) of `{phase}`, fewer than {MIN_SAMPLES}: not fitted"
                );
            }
            Some(fit) if fit.prefer_deciles(count) => {
                let _ = writeln!(
                    text,
                    "# {meaning}: n = {count}; a log-normal fits badly (KS distance {:.3} > \
                     {LOG_NORMAL_KS_MAX}), so the observed deciles",
                    fit.ks
                );
                // fit_phases sorted them.
                let values = samples.get(phase).map_or(&[][..], Vec::as_slice);
                let spans: Vec<String> = deciles(values)
                    .iter()
                    .map(|v| format!("\"{v}ms\""))
                    .collect();
                let _ = writeln!(
                    text,
                    "{field} = {{ kind = \"deciles\", deciles = [{}] }}",
                    spans.join(", ")
                );
            }
            Some(fit) => {
                let _ = writeln!(text, "# {meaning}: n = {count}, KS distance {:.3}", fit.ks);
                let _ = writeln!(
                    text,
                    "{field} = {{ kind = \"log_normal\", median = \"{}ms\", p90 = \"{}ms\" }}",
                    fit.median.0, fit.p90.0
                );
            }
        }
    }
    hung_stop_line(&mut text, samples);
    text
}

/// `hung_stop_grace`: how much longer a hung instance's stop took than the others, medians
/// apart.
fn hung_stop_line(text: &mut String, samples: &mut BTreeMap<String, Vec<u64>>) {
    let median = |samples: &mut BTreeMap<String, Vec<u64>>, phase: &str| {
        let values = samples.get_mut(phase)?;
        if values.len() < MIN_SAMPLES {
            return None;
        }
        values.sort_unstable();
        Some(values[values.len() / 2])
    };
    match (median(samples, HUNG_STOP), median(samples, "stop")) {
        (Some(hung), Some(stop)) => {
            let _ = writeln!(
                text,
                "# a hung instance's stop beyond the others' (its grace before SIGKILL), medians apart"
            );
            let _ = writeln!(
                text,
                "hung_stop_grace = \"{}ms\"",
                hung.saturating_sub(stop)
            );
        }
        _ => {
            let _ = writeln!(
                text,
                "# hung_stop_grace: fewer than {MIN_SAMPLES} stops of hung and of other instances: not fitted"
            );
        }
    }
}

/// A log-normal whose KS distance to its samples is beyond this fits them badly: the
/// observed deciles describe them instead.
pub const LOG_NORMAL_KS_MAX: f64 = 0.1;
/// Deciles need this many samples to be eleven distinct order statistics.
pub const MIN_DECILE_SAMPLES: usize = 11;

/// A log-normal fitted by its median and 90th percentile, and how well it fits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    pub median: Millis,
    pub p90: Millis,
    /// Kolmogorov–Smirnov distance between the samples and the fitted distribution.
    pub ks: f64,
}

impl Fit {
    /// Whether the observed deciles should stand in for this log-normal over `samples`.
    pub fn prefer_deciles(&self, samples: usize) -> bool {
        self.ks > LOG_NORMAL_KS_MAX && samples >= MIN_DECILE_SAMPLES
    }

    /// `sorted` must be ascending and non-empty.
    pub fn of(sorted: &[u64]) -> Fit {
        assert!(!sorted.is_empty(), "a fit needs samples");
        assert!(sorted.is_sorted(), "samples are sorted before fitting");
        let quantile = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        // A log-normal needs positive values; the simulator's spans are whole milliseconds.
        let median = quantile(0.5).max(1);
        let p90 = quantile(0.9).max(median);
        Fit {
            median: Millis(median),
            p90: Millis(p90),
            ks: ks_distance(sorted, median as f64, p90 as f64),
        }
    }
}

/// The minimum, the nine deciles and the maximum of ascending, non-empty samples.
pub fn deciles(sorted: &[u64]) -> [u64; 11] {
    assert!(!sorted.is_empty() && sorted.is_sorted(), "sorted samples");
    std::array::from_fn(|k| sorted[((sorted.len() - 1) as f64 * k as f64 / 10.0).round() as usize])
}

/// sup |F_n(x) − F(x)| for the log-normal with this median and 90th percentile.
fn ks_distance(sorted: &[u64], median: f64, p90: f64) -> f64 {
    let mu = median.ln();
    // z of the 90th percentile of a standard normal.
    let sigma = (p90.ln() - mu) / 1.281_551_565_545;
    let cdf = |x: f64| {
        if sigma <= 0.0 {
            // Degenerate: all the mass at the median.
            return if x >= median { 1.0 } else { 0.0 };
        }
        let z = (x.max(1e-9).ln() - mu) / sigma;
        0.5 * (1.0 + libm::erf(z / std::f64::consts::SQRT_2))
    };
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = cdf(x as f64);
            (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
        })
        .fold(0.0, f64::max)
}

/// Phases of one agent's feed as chaos follows it: what started when, and how long each
/// took. Fed every entry of the agent in order.
#[derive(Debug, Default)]
pub struct Phases {
    started: BTreeMap<u64, Millis>,
    spawned: BTreeMap<u64, Spawn>,
    /// The stop decision in flight, and the phase it times.
    stopped: Option<(Millis, &'static str)>,
    /// Instances whose probe failed and that have not been ready since.
    hung: BTreeSet<u64>,
    /// Instances whose pod supervisor died.
    lost: BTreeSet<u64>,
    /// The last exit, until the process that follows it.
    exited: Option<Millis>,
    /// A fault just injected: the observation that reports it, the phase it times, when.
    injected: Option<(&'static str, &'static str, Millis)>,
    pub samples: Vec<(&'static str, u64)>,
}

/// A process spawned and not yet ready.
#[derive(Debug)]
struct Spawn {
    /// When the daemon heard of it, and when it happened on its pod's clock.
    heard: Millis,
    pod_ms: Option<u64>,
    /// A fresh start (its boot is `boot`), or a restart in place (`boot_after_crash`).
    fresh: bool,
    /// The phase that ended with the spawn and when it began, when it is timed at the ready
    /// (see [`Phases::see`]).
    lead: Option<(&'static str, Millis)>,
}

/// A hung instance's stop: it does not act on SIGTERM, so its stop lasts the pod's grace.
/// Kept apart from `stop` (it would stretch every other stop's fit) and reported as the
/// simulator's `hung_stop_grace`.
pub const HUNG_STOP: &str = "stop_hung";
/// The stop of a pod whose supervisor died: nothing to signal, so far quicker than `stop`.
pub const LOST_STOP: &str = "stop_lost";

impl Phases {
    /// A fault was injected `at` (engine time): the observation of it, when it comes, times
    /// how long the engine took to hear of a kill.
    pub fn injected(&mut self, fault: FaultKind, at: Millis) {
        self.injected = match fault {
            FaultKind::Kill => Some(("exited", "exit_notice", at)),
            // The exit of an agent whose config changed is reported with the validation of
            // its restart in place, which refuses it.
            FaultKind::TruncateConfig => Some(("config_rejected", "config_reject_notice", at)),
            FaultKind::KillSupervisor => Some(("supervisor_lost", "supervisor_loss_notice", at)),
            // A hang and a spike kill nothing; a killed daemon hears of nothing until it is
            // back.
            FaultKind::Hang | FaultKind::Spike | FaultKind::KillDaemon => None,
        };
    }

    pub fn see(&mut self, entry: &Value) {
        let at = Millis(entry["at_ms"].as_u64().unwrap_or(0));
        if let Some((event, phase, injected)) = self.injected
            && entry["kind"] == "observation"
            && entry["event"] == event
        {
            self.samples.push((phase, at.saturating_since(injected).0));
            self.injected = None;
        }
        let Some(instance) = entry["instance"].as_u64() else {
            return;
        };
        match (entry["kind"].as_str(), entry["event"].as_str()) {
            (Some("decision"), Some("start")) => {
                self.started.insert(instance, at);
                self.exited = None;
                if let Some((stop, phase)) = self.stopped.take() {
                    self.samples.push((phase, at.saturating_since(stop).0));
                }
            }
            (Some("decision"), Some("stop")) => {
                let (lost, hung) = (self.lost.remove(&instance), self.hung.remove(&instance));
                let phase = if lost {
                    LOST_STOP
                } else if hung {
                    HUNG_STOP
                } else {
                    "stop"
                };
                self.stopped = Some((at, phase));
            }
            (Some("observation"), Some("supervisor_lost")) => {
                self.lost.insert(instance);
            }
            (Some("observation"), Some("exited")) => {
                self.exited = Some(at);
            }
            (Some("observation"), Some("probe_failed")) => {
                self.hung.insert(instance);
            }
            (Some("observation"), Some("spawned")) => {
                let fresh = self.started.remove(&instance);
                let lead = match fresh {
                    Some(start) => Some(("start_to_spawn", start)),
                    None => self.exited.take().map(|exited| ("restart", exited)),
                };
                let pod_ms = entry["pod_ms"].as_u64();
                // Without the pod's clock, the spawn is timed as the daemon heard of it, now;
                // with it, at the ready.
                let lead = match (lead, pod_ms) {
                    (Some((phase, from)), None) => {
                        self.samples.push((phase, at.saturating_since(from).0));
                        None
                    }
                    (lead, _) => lead,
                };
                let spawn = Spawn {
                    heard: at,
                    pod_ms,
                    fresh: fresh.is_some(),
                    lead,
                };
                self.spawned.insert(instance, spawn);
            }
            (Some("observation"), Some("ready")) => {
                self.hung.remove(&instance);
                if let Some(spawn) = self.spawned.remove(&instance) {
                    // The daemon hears of a spawn late, by a few ms and not always as many,
                    // and of a ready sooner: timed as heard, the start's lead and the boot
                    // after it share that jitter with opposite signs, and drawn apart by the
                    // simulator they spread a provisioning wider than it ever is. On the
                    // pod's clock the boot is exact, and the lead is what is left of the
                    // start → ready the daemon saw.
                    let boot = match (spawn.pod_ms, entry["pod_ms"].as_u64()) {
                        (Some(spawned), Some(ready)) => ready.saturating_sub(spawned),
                        _ => at.saturating_since(spawn.heard).0,
                    };
                    if let Some((phase, from)) = spawn.lead {
                        let spawned = Millis(at.0.saturating_sub(boot));
                        self.samples.push((phase, spawned.saturating_since(from).0));
                    }
                    let phase = if spawn.fresh {
                        "boot"
                    } else {
                        "boot_after_crash"
                    };
                    self.samples.push((phase, boot));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_normal_sample_fits_itself_closely_and_a_bimodal_one_does_not() {
        // Quantiles of the log-normal with median 1000 and p90 2000, at (i + 0.5) / n.
        let sigma = (2.0f64).ln() / 1.281_551_565_545;
        let n = 200;
        let mut sample: Vec<u64> = (0..n)
            .map(|i| {
                let p = (i as f64 + 0.5) / n as f64;
                // Inverse normal CDF by bisection on erf: a test needs no speed.
                let (mut lo, mut hi) = (-10.0f64, 10.0f64);
                for _ in 0..100 {
                    let mid = (lo + hi) / 2.0;
                    if 0.5 * (1.0 + libm::erf(mid / std::f64::consts::SQRT_2)) < p {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                (1000.0 * (sigma * lo).exp()).round() as u64
            })
            .collect();
        sample.sort_unstable();
        let fit = Fit::of(&sample);
        assert!((fit.median.0 as i64 - 1000).abs() <= 15, "{fit:?}");
        assert!((fit.p90.0 as i64 - 2000).abs() <= 60, "{fit:?}");
        assert!(fit.ks < 0.05, "{fit:?}");
        let mut bimodal: Vec<u64> = (0..100)
            .map(|_| 100)
            .chain((0..100).map(|_| 10_000))
            .collect();
        bimodal.sort_unstable();
        assert!(Fit::of(&bimodal).ks > 0.3);
        assert!(Fit::of(&bimodal).prefer_deciles(bimodal.len()));
        assert!(!fit.prefer_deciles(sample.len()));
    }

    #[test]
    fn a_phase_the_log_normal_fits_badly_is_written_as_its_deciles_and_validates() {
        // A boot seen at one of two probe ticks.
        let two_point: Vec<u64> = (0..30)
            .map(|k| if k % 3 == 0 { 300 } else { 200 })
            .collect();
        let mut samples = BTreeMap::from([("boot".to_owned(), two_point)]);
        let text = fragment(&[PathBuf::from("run")], &mut samples);
        let expected = "boot = { kind = \"deciles\", deciles = [\"200ms\", \"200ms\", \"200ms\", \
                        \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"300ms\", \"300ms\", \
                        \"300ms\", \"300ms\"] }";
        assert!(text.contains(expected), "{text}");
        let scenario: carapace_sim::scenario::Latency = toml::from_str::<toml::Table>(&text)
            .expect("TOML")["latency"]
            .clone()
            .try_into()
            .expect("a [latency] table the simulator reads");
        assert!(matches!(
            scenario.boot,
            carapace_sim::scenario::Dist::Deciles { .. }
        ));
    }

    #[test]
    fn deciles_are_the_order_statistics_at_each_tenth() {
        let sorted: Vec<u64> = (0..=100).collect();
        assert_eq!(
            deciles(&sorted),
            [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
        );
        assert_eq!(deciles(&[7]), [7; 11]);
    }

    #[test]
    fn phases_follow_a_restart_in_place_and_a_recreation() {
        let mut phases = Phases::default();
        let entry = |at: u64, kind: &str, event: &str, instance: u64| serde_json::json!({"at_ms": at, "kind": kind, "event": event, "instance": instance});
        phases.injected(FaultKind::Kill, Millis(0));
        for e in [
            entry(5, "observation", "exited", 1),
            entry(7, "observation", "spawned", 1),
            entry(501, "observation", "ready", 1),
            entry(600, "decision", "stop", 1),
            entry(2600, "decision", "start", 2),
            entry(2700, "observation", "spawned", 2),
            entry(3000, "observation", "ready", 2),
            // A hang: the probe fails, the instance is stopped, its stop is counted apart.
            entry(4000, "observation", "probe_failed", 2),
            entry(4100, "decision", "stop", 2),
            entry(14_100, "decision", "start", 3),
        ] {
            phases.see(&e);
        }
        // A killed supervisor: its loss is timed from the kill, its pod's stop is counted
        // apart; the exit that follows a recreation's start is no restart in place.
        phases.injected(FaultKind::KillSupervisor, Millis(20_000));
        for e in [
            entry(20_012, "observation", "supervisor_lost", 3),
            entry(20_012, "decision", "stop", 3),
            entry(20_014, "decision", "start", 4),
            entry(20_031, "observation", "spawned", 4),
        ] {
            phases.see(&e);
        }
        // A truncated config: the kill is timed to the refusal, not to the exit before it.
        phases.injected(FaultKind::TruncateConfig, Millis(30_000));
        for e in [
            entry(30_020, "observation", "exited", 4),
            entry(30_021, "observation", "config_rejected", 4),
            entry(30_021, "decision", "stop", 4),
            entry(30_034, "decision", "start", 5),
        ] {
            phases.see(&e);
        }
        assert_eq!(
            phases.samples,
            vec![
                ("exit_notice", 5),
                ("restart", 2),
                ("boot_after_crash", 494),
                ("stop", 2000),
                ("start_to_spawn", 100),
                ("boot", 300),
                (HUNG_STOP, 10_000),
                ("supervisor_loss_notice", 12),
                (LOST_STOP, 2),
                ("start_to_spawn", 17),
                ("config_reject_notice", 21),
                ("stop", 13),
            ]
        );
    }

    #[test]
    fn on_the_pods_clock_a_boot_is_exact_and_its_lead_keeps_the_rest_of_what_the_daemon_saw() {
        let mut phases = Phases::default();
        let entry = |at: u64, kind: &str, event: &str, instance: u64, pod: Option<u64>| {
            let mut e = serde_json::json!({"at_ms": at, "kind": kind, "event": event, "instance": instance});
            if let Some(pod) = pod {
                e["pod_ms"] = pod.into();
            }
            e
        };
        for e in [
            // Spawned 20 ms after the start, heard of 15 ms later; ready 200 ms after the
            // spawn, heard of 2 ms later.
            entry(1_000, "decision", "start", 1, None),
            entry(1_035, "observation", "spawned", 1, Some(20)),
            entry(1_222, "observation", "ready", 1, Some(220)),
            // Killed: restarted 3 ms after the exit was heard of, ready 300 ms after its
            // spawn (the spawn heard of 30 ms late, the ready at once).
            entry(5_000, "observation", "exited", 1, Some(4_010)),
            entry(5_033, "observation", "spawned", 1, Some(4_013)),
            entry(5_303, "observation", "ready", 1, Some(4_313)),
            // A start that never became ready gives no lead: its spawn's time is not known.
            entry(9_000, "decision", "start", 2, None),
            entry(9_040, "observation", "spawned", 2, Some(25)),
            entry(9_041, "observation", "exited", 2, Some(26)),
        ] {
            phases.see(&e);
        }
        assert_eq!(
            phases.samples,
            vec![
                ("start_to_spawn", 22),
                ("boot", 200),
                ("restart", 3),
                ("boot_after_crash", 300),
            ]
        );
    }
}
