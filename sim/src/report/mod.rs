//! The report of one run: an SLO table, machine-readable metrics, one row per incident, a time
//! series and SVG plots, all in one directory and all byte-identical for the same scenario and
//! seed (no wall-clock times, no machine paths).

pub mod svg;

use crate::measures::{Bucket, Fault, IncidentLog, round4};
use crate::sim::Simulation;
use crate::world::naive_agents_per_node;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Percentiles of one measure, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u32>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
        }
    }
}

/// One SLO's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub name: String,
    /// `<=` or `>=`.
    pub comparison: &'static str,
    pub target: f64,
    /// `None` when the run had nothing to measure (no incident, no provisioning): the SLO
    /// holds vacuously, and the table says so.
    pub measured: Option<f64>,
    pub unit: &'static str,
    pub pass: bool,
}

/// Everything measured in one run (metrics.json).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub seed: u64,
    pub duration_ms: u64,
    pub warmup_ms: u64,
    pub agents: u64,
    pub nodes: u32,
    pub tenants: u32,
    pub incidents: u64,
    pub incidents_by_fault: Vec<(String, u64)>,
    pub incidents_unresolved_at_end: u64,
    pub detection_ms: Percentiles,
    pub recovery_ms: Percentiles,
    pub provisioning_ms: Percentiles,
    pub unnoticed_fraction: f64,
    pub density_ratio: f64,
    pub agents_per_node: f64,
    pub naive_agents_per_node: f64,
    pub node_oom_events: u64,
    pub collateral_kills: u64,
    pub cgroup_oom_kills: u64,
    /// Incidents resolved by rungs 1, 2, 3, and ended in an alert.
    pub ladder: [u64; 4],
    pub alerts: u64,
    pub migrations: u64,
    pub throttles: u64,
    pub evictions: u64,
    pub planned_disruptions: u64,
    pub events: u64,
    pub engine_inputs: u64,
    pub engine_commands: u64,
    pub engine_errors: u64,
    pub first_engine_error: Option<String>,
    pub memory_samples_fed: u64,
    pub command_stream_hash: String,
    pub invariant_violation: Option<String>,
    pub rollouts: Vec<(u64, u32, String)>,
    pub slo: Vec<Verdict>,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.slo.iter().all(|v| v.pass) && self.invariant_violation.is_none()
    }
}

/// A whole report, ready to print or write.
#[derive(Clone, Debug)]
pub struct Report {
    pub summary: Summary,
    pub incidents: IncidentLog,
    pub buckets: Vec<Bucket>,
    pub post_mortems: Vec<carapace_engine::PostMortem>,
    recovery_cdf: Vec<(f64, f64)>,
}

impl Report {
    pub fn of(sim: &Simulation) -> Report {
        let s = &sim.scenario;
        let m = &sim.measures;
        let engine = sim.controller.stats();
        let incidents = m.incidents.clone();
        let resolved = m.noticed + m.unnoticed;
        let unnoticed_fraction = if resolved == 0 {
            1.0
        } else {
            round4(m.unnoticed as f64 / resolved as f64)
        };
        let naive = naive_agents_per_node(s);
        let measured_buckets: Vec<&Bucket> = m
            .buckets
            .iter()
            .filter(|b| b.end_ms > s.warmup.ms())
            .collect();
        let agents_per_node = if measured_buckets.is_empty() {
            0.0
        } else {
            round4(
                measured_buckets
                    .iter()
                    .map(|b| b.agents_per_up_node)
                    .sum::<f64>()
                    / measured_buckets.len() as f64,
            )
        };
        let density_ratio = if naive > 0.0 {
            round4(agents_per_node / naive)
        } else {
            0.0
        };
        let by_fault = Fault::ALL
            .iter()
            .map(|f| {
                (
                    f.name().to_owned(),
                    incidents.iter().filter(|i| i.fault == *f).count() as u64,
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        let recovery = Percentiles::of(&m.recovery);
        let provisioning = Percentiles::of(&m.provisioning);
        let mut summary = Summary {
            scenario: s.name.clone(),
            seed: s.seed,
            duration_ms: s.duration.ms(),
            warmup_ms: s.warmup.ms(),
            agents: s.agent_count(),
            nodes: s.fleet.nodes,
            tenants: s.fleet.tenants,
            incidents: incidents.len() as u64,
            incidents_by_fault: by_fault,
            incidents_unresolved_at_end: m.unresolved().count() as u64,
            detection_ms: Percentiles::of(&m.detection),
            recovery_ms: recovery,
            provisioning_ms: provisioning,
            unnoticed_fraction,
            density_ratio,
            agents_per_node,
            naive_agents_per_node: naive,
            node_oom_events: m.node_oom_events,
            collateral_kills: m.collateral_kills,
            cgroup_oom_kills: m.cgroup_oom_kills,
            ladder: m.ladder,
            alerts: sim.stats.alerts,
            migrations: engine.migrations,
            throttles: engine.throttles,
            evictions: engine.evictions,
            planned_disruptions: m.planned_disruptions,
            events: sim.stats.events,
            engine_inputs: sim.stats.engine_inputs,
            engine_commands: sim.stats.engine_commands,
            engine_errors: sim.stats.engine_errors,
            first_engine_error: sim.stats.first_engine_error.clone(),
            memory_samples_fed: sim.stats.memory_samples_fed,
            command_stream_hash: format!("{:016x}", sim.stats.command_stream_hash),
            invariant_violation: sim.stats.invariant_violation.clone(),
            rollouts: sim.stats.rollout_events.clone(),
            slo: Vec::new(),
        };
        summary.slo = judge(s, &summary);
        Report {
            summary,
            incidents,
            buckets: m.buckets.clone(),
            post_mortems: sim.stats.post_mortems.clone(),
            recovery_cdf: cdf(&m.recovery),
        }
    }

    /// The SLO table, as printed by `carapace sim` and written to summary.md.
    pub fn slo_table(&self) -> String {
        let mut out = String::new();
        writeln!(out, "| SLO | target | measured | verdict |").unwrap();
        writeln!(out, "|---|---|---|---|").unwrap();
        for v in &self.summary.slo {
            writeln!(
                out,
                "| {} | {} {} {} | {} | {} |",
                v.name,
                v.comparison,
                format_value(v.target),
                v.unit,
                measured(v),
                if v.pass { "pass" } else { "FAIL" }
            )
            .unwrap();
        }
        if let Some(violation) = &self.summary.invariant_violation {
            writeln!(
                out,
                "| invariants | hold | {} | FAIL |",
                violation.replace('|', "/")
            )
            .unwrap();
        }
        out
    }

    /// Writes summary.md, metrics.json, incidents.csv, timeseries.csv, the SVG plots and
    /// report.html into `dir`, replacing files of the same names.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let plots = self.plots();
        for (name, svg) in &plots {
            write_atomically(&dir.join(name), svg.as_bytes())?;
        }
        let mut json =
            serde_json::to_string_pretty(&self.summary).map_err(std::io::Error::other)?;
        json.push('\n');
        write_atomically(&dir.join("metrics.json"), json.as_bytes())?;
        write_atomically(&dir.join("incidents.csv"), &self.incidents_csv()?)?;
        let mut post_mortems = String::new();
        for post_mortem in &self.post_mortems {
            post_mortems
                .push_str(&serde_json::to_string(post_mortem).map_err(std::io::Error::other)?);
            post_mortems.push('\n');
        }
        write_atomically(&dir.join("postmortems.jsonl"), post_mortems.as_bytes())?;
        write_atomically(&dir.join("timeseries.csv"), &self.timeseries_csv()?)?;
        write_atomically(&dir.join("summary.md"), self.markdown().as_bytes())?;
        write_atomically(&dir.join("report.html"), self.html(&plots).as_bytes())?;
        Ok(())
    }

    fn incidents_csv(&self) -> std::io::Result<Vec<u8>> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        for incident in self.incidents.iter() {
            writer.serialize(&incident).map_err(std::io::Error::other)?;
        }
        if self.incidents.is_empty() {
            writer
                .write_record([
                    "agent",
                    "class",
                    "fault",
                    "start_ms",
                    "detection_ms",
                    "recovery_ms",
                    "rung",
                    "noticed",
                ])
                .map_err(std::io::Error::other)?;
        }
        writer
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn timeseries_csv(&self) -> std::io::Result<Vec<u8>> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        for bucket in &self.buckets {
            writer.serialize(bucket).map_err(std::io::Error::other)?;
        }
        writer
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn markdown(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        writeln!(out, "# {} (seed {})\n", s.scenario, s.seed).unwrap();
        writeln!(
            out,
            "{} agents of {} tenants on {} nodes, {} simulated ({} warm-up).\n",
            s.agents,
            s.tenants,
            s.nodes,
            human_ms(s.duration_ms),
            human_ms(s.warmup_ms)
        )
        .unwrap();
        out.push_str(&self.slo_table());
        writeln!(out).unwrap();
        writeln!(
            out,
            "| measure | p50 | p90 | p99 | max | count |\n|---|---|---|---|---|---|"
        )
        .unwrap();
        for (name, p) in [
            ("detection", &s.detection_ms),
            ("recovery", &s.recovery_ms),
            ("provisioning", &s.provisioning_ms),
        ] {
            writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} |",
                human_ms(p.p50),
                human_ms(p.p90),
                human_ms(p.p99),
                human_ms(p.max),
                p.count
            )
            .unwrap();
        }
        writeln!(out).unwrap();
        writeln!(
            out,
            "Incidents: {} ({}); resolved by rung 1: {}, rung 2: {}, rung 3: {}; alerts: {}; unresolved at end: {}.",
            s.incidents,
            s.incidents_by_fault.iter().map(|(f, n)| format!("{f} {n}")).collect::<Vec<_>>().join(", "),
            s.ladder[0],
            s.ladder[1],
            s.ladder[2],
            s.ladder[3],
            s.incidents_unresolved_at_end
        )
        .unwrap();
        writeln!(
            out,
            "Density: {:.2} agents per node against {:.0} when every agent reserves its limit (ratio {:.2}). Node OOM events: {}; collateral kills: {}; cgroup OOM kills: {}; migrations: {}; throttles: {}; evictions: {}.",
            s.agents_per_node, s.naive_agents_per_node, s.density_ratio, s.node_oom_events, s.collateral_kills, s.cgroup_oom_kills, s.migrations, s.throttles, s.evictions
        )
        .unwrap();
        writeln!(
            out,
            "\nEngine: {} inputs, {} commands, command-stream hash `{}`.",
            s.engine_inputs, s.engine_commands, s.command_stream_hash
        )
        .unwrap();
        out
    }

    fn plots(&self) -> Vec<(&'static str, String)> {
        let hours = |ms: u64| ms as f64 / 3_600_000.0;
        let cdf_seconds: Vec<(f64, f64)> = self
            .recovery_cdf
            .iter()
            .map(|&(ms, q)| (ms / 1000.0, q))
            .collect();
        let recovery = svg::lines(
            "Recovery time (CDF)",
            "seconds from fault to healthy",
            "fraction of incidents",
            &[svg::Line {
                label: "recovery",
                points: cdf_seconds,
            }],
            Some(1.0),
            true,
        );
        let memory = svg::lines(
            "Node memory utilisation",
            "hours",
            "fraction of physical memory",
            &[
                svg::Line {
                    label: "mean",
                    points: self
                        .buckets
                        .iter()
                        .map(|b| (hours(b.end_ms), b.node_memory_utilisation_mean))
                        .collect(),
                },
                svg::Line {
                    label: "max",
                    points: self
                        .buckets
                        .iter()
                        .map(|b| (hours(b.end_ms), b.node_memory_utilisation_max))
                        .collect(),
                },
            ],
            Some(1.0),
            false,
        );
        let down = svg::lines(
            "Agents down",
            "hours",
            "agents",
            &[
                svg::Line {
                    label: "at bucket end",
                    points: self
                        .buckets
                        .iter()
                        .map(|b| (hours(b.end_ms), f64::from(b.agents_down)))
                        .collect(),
                },
                svg::Line {
                    label: "peak in bucket",
                    points: self
                        .buckets
                        .iter()
                        .map(|b| (hours(b.end_ms), f64::from(b.agents_down_max)))
                        .collect(),
                },
            ],
            None,
            false,
        );
        let l = self.summary.ladder;
        let ladder = svg::bars(
            "Incidents resolved per rung",
            "incidents",
            &[
                ("1 restart", l[0] as f64),
                ("2 recreate", l[1] as f64),
                ("3 known-good", l[2] as f64),
                ("4 alert", l[3] as f64),
            ],
        );
        vec![
            ("recovery-cdf.svg", recovery),
            ("node-memory.svg", memory),
            ("agents-down.svg", down),
            ("ladder.svg", ladder),
        ]
    }

    fn html(&self, plots: &[(&'static str, String)]) -> String {
        let mut out = String::new();
        out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
        write!(
            out,
            "<title>Carapace report: {}</title>",
            svg::escape(&self.summary.scenario)
        )
        .unwrap();
        out.push_str("<style>body{font-family:sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem}svg{max-width:100%;height:auto}.fail{color:#b91c1c;font-weight:bold}</style></head><body>\n");
        write!(out, "<h1>{} <small>seed {}</small></h1>\n<table><tr><th>SLO</th><th>target</th><th>measured</th><th>verdict</th></tr>\n", svg::escape(&self.summary.scenario), self.summary.seed).unwrap();
        for v in &self.summary.slo {
            let verdict = if v.pass {
                "pass".to_owned()
            } else {
                "<span class=\"fail\">FAIL</span>".to_owned()
            };
            writeln!(
                out,
                "<tr><td>{}</td><td>{} {} {}</td><td>{}</td><td>{verdict}</td></tr>",
                v.name,
                svg::escape(v.comparison),
                format_value(v.target),
                v.unit,
                measured(v)
            )
            .unwrap();
        }
        out.push_str("</table>\n");
        for (_, svg) in plots {
            out.push_str("<figure>");
            out.push_str(svg);
            out.push_str("</figure>\n");
        }
        out.push_str("</body></html>\n");
        out
    }
}

fn judge(s: &crate::scenario::Scenario, m: &Summary) -> Vec<Verdict> {
    let slo = &s.slo;
    let seconds = |ms: u64| ms as f64 / 1000.0;
    let at_most = |name: &str, target: f64, measured: Option<f64>, unit| Verdict {
        name: name.into(),
        comparison: "<=",
        target,
        measured,
        unit,
        pass: measured.is_none_or(|m| m <= target),
    };
    let at_least = |name: &str, target: f64, measured: Option<f64>, unit| Verdict {
        name: name.into(),
        comparison: ">=",
        target,
        measured,
        unit,
        pass: measured.is_none_or(|m| m >= target),
    };
    let sampled = |p: &Percentiles, value: u64| (p.count > 0).then(|| seconds(value));
    let resolved = m.recovery_ms.count + m.ladder[3];
    let mut verdicts = vec![
        at_most(
            "recovery p90",
            seconds(slo.recovery_p90.ms()),
            sampled(&m.recovery_ms, m.recovery_ms.p90),
            "s",
        ),
        at_most(
            "provisioning p90",
            seconds(slo.provisioning_p90.ms()),
            sampled(&m.provisioning_ms, m.provisioning_ms.p90),
            "s",
        ),
        at_least(
            "unnoticed incidents",
            slo.unnoticed_min,
            (resolved > 0).then_some(m.unnoticed_fraction),
            "",
        ),
        at_most(
            "node OOM events",
            slo.node_oom_max as f64,
            Some(m.node_oom_events as f64),
            "",
        ),
        at_most(
            "collateral kills",
            slo.collateral_kills_max as f64,
            Some(m.collateral_kills as f64),
            "",
        ),
    ];
    if let Some(max) = slo.recovery_max {
        verdicts.push(at_most(
            "recovery max",
            seconds(max.ms()),
            sampled(&m.recovery_ms, m.recovery_ms.max),
            "s",
        ));
    }
    if let Some(max) = slo.alerts_max {
        verdicts.push(at_most("alerts", max as f64, Some(m.alerts as f64), ""));
    }
    if slo.density_min > 0.0 {
        verdicts.push(at_least(
            "density ratio",
            slo.density_min,
            Some(m.density_ratio),
            "x",
        ));
    }
    verdicts
}

fn cdf(histogram: &Histogram<u32>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let total = histogram.len() as f64;
    let mut seen = 0u64;
    let mut points = vec![(0.0, 0.0)];
    for value in histogram.iter_recorded() {
        seen += u64::from(value.count_at_value());
        points.push((
            histogram.highest_equivalent(value.value_iterated_to()) as f64,
            round4(seen as f64 / total),
        ));
    }
    // At most a few hundred points keep the SVG small.
    let stride = points.len().div_ceil(400).max(1);
    let last = *points.last().expect("non-empty");
    let mut thinned: Vec<(f64, f64)> = points.into_iter().step_by(stride).collect();
    if thinned.last() != Some(&last) {
        thinned.push(last);
    }
    thinned
}

fn measured(verdict: &Verdict) -> String {
    match verdict.measured {
        Some(value) => format!("{} {}", format_value(value), verdict.unit),
        None => "no samples".to_owned(),
    }
}

fn format_value(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=119_999 => format!("{:.1}s", ms as f64 / 1000.0),
        120_000..=7_199_999 => format!("{:.1}m", ms as f64 / 60_000.0),
        _ => format!("{:.1}h", ms as f64 / 3_600_000.0),
    }
}

/// Write to a temporary sibling and rename, so a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
