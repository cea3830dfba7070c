//! `carapace tune SCENARIO --knob PATH=FROM..TO:STEP ...`: sweeps policy (or fleet) knobs,
//! judges every point on its SLOs over several seeds, and recommends the densest setting that
//! holds them all with a margin.

use super::gate::{p90_over_seeds, percentile_nearest_rank, within};
use super::runner::{Job, run_all};
use super::sim::SimError;
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use anyhow::Context;
use carapace_sim::report::svg;
use carapace_sim::report::{Report, Verdict};
use carapace_sim::scenario::{self, Scenario, knob};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

/// Points a sweep may have, in all: beyond this it is a typo, not a plan.
const MAX_POINTS: usize = 2_000;

#[derive(Debug, clap::Args)]
pub struct TuneArgs {
    /// Scenario file (TOML).
    scenario: PathBuf,
    /// A knob to sweep: `PATH=FROM..TO:STEP` or `PATH=V1,V2,...`, e.g.
    /// `policy.placement.overcommit_ratio=1.0..4.0:0.25`. Repeat for a grid.
    #[arg(long = "knob", required = true, value_parser = parse_sweep)]
    knobs: Vec<Sweep>,
    /// Seeds per point; each SLO is judged on its 90th percentile over them.
    #[arg(long, default_value_t = 3)]
    seeds: u32,
    /// Headroom every SLO must keep at the recommended point, as a fraction of its target.
    #[arg(long, default_value_t = 0.1)]
    margin: f64,
    /// Output directory [default: reports/NAME-tune].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One knob's values.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    path: String,
    values: Vec<f64>,
}

fn parse_sweep(text: &str) -> Result<Sweep, String> {
    let (path, range) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected PATH=FROM..TO:STEP or PATH=V1,V2"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{s}` is not a number"))
            .and_then(|v| {
                if v.is_finite() {
                    Ok(v)
                } else {
                    Err(format!("`{s}` is not finite"))
                }
            })
    };
    let values = if let Some((from, rest)) = range.split_once("..") {
        let (to, step) = rest
            .split_once(':')
            .ok_or_else(|| format!("`{range}`: a range needs a step, FROM..TO:STEP"))?;
        let (from, to, step) = (number(from)?, number(to)?, number(step)?);
        if step <= 0.0 || to < from {
            return Err(format!("`{range}`: needs FROM <= TO and STEP > 0"));
        }
        let count = ((to - from) / step + 1e-9).floor() as usize + 1;
        if count > MAX_POINTS {
            return Err(format!(
                "`{range}` has {count} values; at most {MAX_POINTS}"
            ));
        }
        // Computed from the index, not accumulated, so 0.1 steps do not drift.
        (0..count)
            .map(|i| ((from + step * i as f64) * 1e9).round() / 1e9)
            .collect()
    } else {
        range
            .split(',')
            .map(number)
            .collect::<Result<Vec<_>, _>>()?
    };
    if path.trim().is_empty() || values.is_empty() {
        return Err(format!("`{text}`: needs a path and at least one value"));
    }
    Ok(Sweep {
        path: path.trim().to_owned(),
        values,
    })
}

/// What one seed of one point measured (a line of tune.partial.jsonl).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SeedResult {
    fingerprint: String,
    point: usize,
    seed: u64,
    density_ratio: f64,
    invariant_violation: Option<String>,
    /// SLO name → (comparison, target, measured).
    slo: BTreeMap<String, (String, f64, Option<f64>)>,
}

/// A point's verdict, over its seeds (tune.json).
#[derive(Clone, Debug, Serialize)]
struct PointResult {
    knobs: Vec<(String, f64)>,
    density_ratio_median: f64,
    slo: Vec<SloAtPoint>,
    holds: bool,
    holds_with_margin: bool,
    invariant_violation: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct SloAtPoint {
    name: String,
    comparison: String,
    target: f64,
    /// p90 over seeds for `<=` SLOs, p10 for `>=` ones: the bad tail either way.
    measured: Option<f64>,
    pass: bool,
    /// Headroom left, as a fraction of what the margin asks for (≥ 1 keeps the margin).
    headroom: Option<f64>,
}

#[derive(Debug, Serialize)]
struct TuneResult {
    scenario: String,
    seeds: u32,
    margin: f64,
    points: Vec<PointResult>,
    recommended: Option<usize>,
    binding_slo: Option<String>,
    fragment: Option<String>,
}

pub fn run(args: TuneArgs) -> anyhow::Result<ExitCode> {
    let base_scenario = match scenario::load_file(&args.scenario) {
        Ok(s) => s,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(EXIT_BAD_INPUT));
        }
    };
    if args.seeds == 0 || args.seeds > 1_000 || !(0.0..1.0).contains(&args.margin) {
        eprintln!("carapace tune: --seeds must be in 1..=1000 and --margin in [0, 1)");
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let grid = grid(&args.knobs);
    if grid.len() > MAX_POINTS {
        eprintln!("carapace tune: {} points; at most {MAX_POINTS}", grid.len());
        return Ok(ExitCode::from(EXIT_BAD_INPUT));
    }
    let mut variants = Vec::with_capacity(grid.len());
    for point in &grid {
        let mut variant = base_scenario.clone();
        for (path, value) in point {
            variant = match knob::set(&variant, path, *value) {
                Ok(v) => v,
                Err(error) => {
                    eprintln!("carapace tune: {error}");
                    return Ok(ExitCode::from(EXIT_BAD_INPUT));
                }
            };
        }
        variants.push(variant);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("reports").join(format!("{}-tune", base_scenario.name)));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let fingerprint = fingerprint(&args, &base_scenario);
    let partial_path = out.join("tune.partial.jsonl");
    let mut done = read_partial(&partial_path, &fingerprint);
    let base = args
        .scenario
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut jobs = Vec::new();
    let mut job_keys = Vec::new();
    for (point, variant) in variants.iter().enumerate() {
        for i in 0..u64::from(args.seeds) {
            let seed = variant.seed.wrapping_add(i);
            if done.contains_key(&(point, seed)) {
                continue;
            }
            let mut scenario = variant.clone();
            scenario.seed = seed;
            jobs.push(Job {
                scenario,
                base: &base,
            });
            job_keys.push((point, seed));
        }
    }
    if !done.is_empty() {
        eprintln!(
            "resuming: {} runs already done in {}",
            done.len(),
            partial_path.display()
        );
    }
    let partial = Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial_path)
            .with_context(|| format!("opening {}", partial_path.display()))?,
    );
    let results = run_all(jobs, "tune", |index, result| {
        let Ok(report) = result else { return };
        let (point, seed) = job_keys[index];
        let line = seed_result(&fingerprint, point, seed, report);
        // A line per finished run: an interrupted sweep keeps everything it finished.
        let mut file = partial
            .lock()
            .expect("no writer panics while holding the file");
        let _ = writeln!(
            file,
            "{}",
            serde_json::to_string(&line).expect("a result serialises")
        );
    });
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok(report) => {
                let (point, seed) = job_keys[index];
                done.insert(
                    (point, seed),
                    seed_result(&fingerprint, point, seed, &report),
                );
            }
            Err(SimError::BadInput(message)) => {
                eprintln!("{message}");
                return Ok(ExitCode::from(EXIT_BAD_INPUT));
            }
        }
    }
    let points: Vec<PointResult> = grid
        .iter()
        .enumerate()
        .map(|(point, knobs)| {
            judge_point(
                knobs,
                done.range((point, 0)..=(point, u64::MAX)).map(|(_, r)| r),
                args.margin,
            )
        })
        .collect();
    let recommended = recommend(&points);
    let binding_slo = recommended.and_then(|r| binding(&points, r));
    let fragment = recommended.map(|r| fragment(&points[r].knobs));
    let result = TuneResult {
        scenario: base_scenario.name.clone(),
        seeds: args.seeds,
        margin: args.margin,
        points,
        recommended,
        binding_slo,
        fragment,
    };
    write_outputs(&out, &result, &args.knobs)?;
    print!("{}", table(&result));
    println!("results: {}", out.join("tune.json").display());
    Ok(if result.recommended.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Every combination of the knobs' values, first knob varying slowest.
fn grid(knobs: &[Sweep]) -> Vec<Vec<(String, f64)>> {
    knobs.iter().fold(vec![Vec::new()], |points, knob| {
        points
            .iter()
            .flat_map(|point| {
                knob.values.iter().map(move |&value| {
                    let mut point = point.clone();
                    point.push((knob.path.clone(), value));
                    point
                })
            })
            .collect()
    })
}

fn fingerprint(args: &TuneArgs, scenario: &Scenario) -> String {
    let text = format!(
        "{}|{:?}|{}",
        toml::to_string(scenario).unwrap_or_default(),
        args.knobs,
        args.seeds
    );
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn read_partial(path: &Path, fingerprint: &str) -> BTreeMap<(usize, u64), SeedResult> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<SeedResult>(line).ok())
        .filter(|r| r.fingerprint == fingerprint)
        .map(|r| ((r.point, r.seed), r))
        .collect()
}

fn seed_result(fingerprint: &str, point: usize, seed: u64, report: &Report) -> SeedResult {
    SeedResult {
        fingerprint: fingerprint.to_owned(),
        point,
        seed,
        density_ratio: report.summary.density_ratio,
        invariant_violation: report.summary.invariant_violation.clone(),
        slo: report
            .summary
            .slo
            .iter()
            .map(|v: &Verdict| {
                (
                    v.name.clone(),
                    (v.comparison.to_owned(), v.target, v.measured),
                )
            })
            .collect(),
    }
}

fn judge_point<'a>(
    knobs: &[(String, f64)],
    seeds: impl Iterator<Item = &'a SeedResult>,
    margin: f64,
) -> PointResult {
    let seeds: Vec<&SeedResult> = seeds.collect();
    let densities: Vec<f64> = seeds.iter().map(|s| s.density_ratio).collect();
    let density = percentile_nearest_rank(&densities, 50).unwrap_or(0.0);
    let names: Vec<String> = seeds
        .first()
        .map(|s| s.slo.keys().cloned().collect())
        .unwrap_or_default();
    let slo: Vec<SloAtPoint> = names
        .into_iter()
        .map(|name| {
            let (comparison, target, _) = seeds[0].slo[&name].clone();
            let values: Vec<Option<f64>> = seeds
                .iter()
                .map(|s| s.slo.get(&name).and_then(|v| v.2))
                .collect();
            let at_most = comparison == "<=";
            // The gate's own judgement, so `tune` and `check` never disagree on a point.
            let measured = p90_over_seeds(&values, at_most);
            let pass = measured.is_none_or(|m| within(m, at_most, target));
            let headroom = measured.map(|m| headroom(at_most, target, m, margin));
            SloAtPoint {
                name,
                comparison,
                target,
                measured,
                pass,
                headroom,
            }
        })
        .collect();
    let invariant_violation = seeds.iter().find_map(|s| s.invariant_violation.clone());
    let holds = invariant_violation.is_none() && slo.iter().all(|s| s.pass);
    let holds_with_margin = holds && slo.iter().all(|s| s.headroom.is_none_or(|h| h >= 1.0));
    PointResult {
        knobs: knobs.to_vec(),
        density_ratio_median: density,
        slo,
        holds,
        holds_with_margin,
        invariant_violation,
    }
}

/// How much of the required margin an SLO keeps: 1.0 is exactly the margin, above is more.
/// For `<=` the margin is a fraction of the target; for fractions judged `>=` it is a fraction
/// of the distance to 1; for other `>=` targets a fraction of the target.
fn headroom(at_most: bool, target: f64, measured: f64, margin: f64) -> f64 {
    let (room, needed) = if at_most {
        (target - measured, margin * target)
    } else if target <= 1.0 {
        (measured - target, margin * (1.0 - target))
    } else {
        (measured - target, margin * target)
    };
    if needed <= 0.0 {
        return if room >= 0.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        };
    }
    room / needed
}

/// The densest point that holds every SLO with the margin; ties go to the first.
fn recommend(points: &[PointResult]) -> Option<usize> {
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.holds_with_margin)
        .fold(None, |best: Option<(usize, f64)>, (i, p)| match best {
            Some((_, density)) if density >= p.density_ratio_median => best,
            _ => Some((i, p.density_ratio_median)),
        })
        .map(|(i, _)| i)
}

/// What stops density from growing further: the SLOs missed (or held without the margin) by
/// the next denser point; when no denser point was tried, the SLO with the least headroom.
fn binding(points: &[PointResult], recommended: usize) -> Option<String> {
    let chosen = &points[recommended];
    let next_denser = points
        .iter()
        .filter(|p| p.density_ratio_median > chosen.density_ratio_median && !p.holds_with_margin)
        .min_by(|a, b| a.density_ratio_median.total_cmp(&b.density_ratio_median));
    if let Some(next) = next_denser {
        let mut names: Vec<&str> = next
            .slo
            .iter()
            .filter(|s| !s.pass || s.headroom.is_some_and(|h| h < 1.0))
            .map(|s| s.name.as_str())
            .collect();
        if next.invariant_violation.is_some() {
            names.push("invariants");
        }
        if !names.is_empty() {
            return Some(names.join(", "));
        }
    }
    chosen
        .slo
        .iter()
        .filter_map(|s| s.headroom.filter(|h| h.is_finite()).map(|h| (h, &s.name)))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name.clone())
}

/// The scenario text that sets the recommended knobs.
fn fragment(knobs: &[(String, f64)]) -> String {
    let mut tables: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
    let mut loose = String::new();
    for (path, value) in knobs {
        match path.rsplit_once('.') {
            Some((table, key)) if !path.contains('[') => tables
                .entry(table.to_owned())
                .or_default()
                .push((key.to_owned(), *value)),
            _ => writeln!(loose, "# {path} = {value}").expect("writing to a String"),
        }
    }
    let mut text = String::new();
    for (table, entries) in tables {
        writeln!(text, "[{table}]").expect("writing to a String");
        for (key, value) in entries {
            writeln!(text, "{key} = {value}").expect("writing to a String");
        }
    }
    text + &loose
}

fn table(result: &TuneResult) -> String {
    let mut out = String::new();
    let Some(first) = result.points.first() else {
        return out;
    };
    let knob_names: Vec<&str> = first
        .knobs
        .iter()
        .map(|(p, _)| p.rsplit('.').next().unwrap_or(p))
        .collect();
    let slo_names: Vec<&str> = first.slo.iter().map(|s| s.name.as_str()).collect();
    writeln!(
        out,
        "| {} | density | {} | verdict |",
        knob_names.join(" | "),
        slo_names.join(" | ")
    )
    .unwrap();
    writeln!(
        out,
        "|{}",
        "---|".repeat(knob_names.len() + slo_names.len() + 2)
    )
    .unwrap();
    for (i, point) in result.points.iter().enumerate() {
        let knobs: Vec<String> = point.knobs.iter().map(|(_, v)| format!("{v}")).collect();
        let slos: Vec<String> = point
            .slo
            .iter()
            .map(|s| match s.measured {
                Some(m) => format!("{}{}", trim(m), if s.pass { "" } else { " ✗" }),
                None => "–".to_owned(),
            })
            .collect();
        let verdict = if result.recommended == Some(i) {
            "RECOMMENDED"
        } else if point.holds_with_margin {
            "holds"
        } else if point.holds {
            "holds, thin margin"
        } else {
            "misses an SLO"
        };
        writeln!(
            out,
            "| {} | {:.2}x | {} | {verdict} |",
            knobs.join(" | "),
            point.density_ratio_median,
            slos.join(" | ")
        )
        .unwrap();
    }
    match result.recommended {
        Some(i) => {
            let point = &result.points[i];
            writeln!(
                out,
                "\nDensest setting holding every SLO with a {:.0}% margin: {:.2}x density; {} binds first.\nAdopt:\n{}",
                result.margin * 100.0,
                point.density_ratio_median,
                result.binding_slo.as_deref().unwrap_or("no SLO"),
                result.fragment.as_deref().unwrap_or("")
            )
            .unwrap();
        }
        None => writeln!(
            out,
            "\nNo setting holds every SLO with a {:.0}% margin.",
            result.margin * 100.0
        )
        .unwrap(),
    }
    out
}

fn trim(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn write_outputs(out: &Path, result: &TuneResult, knobs: &[Sweep]) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(result)? + "\n";
    write_atomically(&out.join("tune.json"), json.as_bytes())?;
    write_atomically(&out.join("tune.md"), table(result).as_bytes())?;
    if let Some(fragment) = &result.fragment {
        write_atomically(&out.join("adopt.toml"), fragment.as_bytes())?;
    }
    write_atomically(&out.join("tune.svg"), plot(result, knobs).as_bytes())?;
    Ok(())
}

/// One knob: density and the share of SLOs held, against the knob. Two knobs: a heatmap of
/// density, misses crossed out and the recommendation outlined.
fn plot(result: &TuneResult, knobs: &[Sweep]) -> String {
    let title = format!("{}: density against SLO attainment", result.scenario);
    if knobs.len() == 2 {
        let (xs, ys) = (&knobs[1].values, &knobs[0].values);
        let max_density = result
            .points
            .iter()
            .map(|p| p.density_ratio_median)
            .fold(0.0, f64::max)
            .max(1e-9);
        let cells: Vec<svg::Cell> = result
            .points
            .iter()
            .enumerate()
            .map(|(i, p)| svg::Cell {
                x: i % xs.len(),
                y: i / xs.len(),
                shade: p.density_ratio_median / max_density,
                label: format!(
                    "{:.2}x{}",
                    p.density_ratio_median,
                    if p.holds { "" } else { " miss" }
                ),
                marked: result.recommended == Some(i),
                failed: !p.holds,
            })
            .collect();
        let ticks = |v: &Vec<f64>| v.iter().map(|x| trim(*x)).collect::<Vec<_>>();
        return svg::heatmap(
            &title,
            &knobs[1].path,
            &ticks(xs),
            &knobs[0].path,
            &ticks(ys),
            &cells,
        );
    }
    let x = |p: &PointResult| p.knobs.first().map_or(0.0, |k| k.1);
    let density = svg::Line {
        label: "density ratio",
        points: result
            .points
            .iter()
            .map(|p| (x(p), p.density_ratio_median))
            .collect(),
    };
    let max_density = density
        .points
        .iter()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0);
    let held = svg::Line {
        label: "SLOs held (scaled)",
        points: result
            .points
            .iter()
            .map(|p| {
                let share =
                    p.slo.iter().filter(|s| s.pass).count() as f64 / p.slo.len().max(1) as f64;
                (x(p), share * max_density)
            })
            .collect(),
    };
    let knob = knobs.first().map_or("knob", |k| k.path.as_str());
    svg::lines(
        &title,
        knob,
        "density ratio (SLO share scaled to it)",
        &[density, held],
        None,
        false,
    )
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_parse_ranges_and_lists_and_refuse_nonsense() {
        let sweep = parse_sweep("policy.placement.overcommit_ratio=1.0..2.0:0.25").unwrap();
        assert_eq!(sweep.values, vec![1.0, 1.25, 1.5, 1.75, 2.0]);
        let sweep = parse_sweep("fleet.nodes=4,6,8").unwrap();
        assert_eq!(sweep.values, vec![4.0, 6.0, 8.0]);
        let tenths = parse_sweep("x=0.1..0.3:0.1").unwrap();
        assert_eq!(tenths.values, vec![0.1, 0.2, 0.3]);
        for bad in [
            "nothing",
            "x=1..2",
            "x=2..1:1",
            "x=1..2:0",
            "x=a,b",
            "=1",
            "x=1..1000000:1",
        ] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headroom_is_measured_against_the_margin() {
        assert!((headroom(true, 60.0, 48.0, 0.1) - 2.0).abs() < 1e-9);
        assert!(headroom(true, 60.0, 57.0, 0.1) < 1.0);
        assert!((headroom(false, 0.9, 0.95, 0.1) - 5.0).abs() < 1e-9);
        assert_eq!(headroom(true, 0.0, 0.0, 0.1), f64::INFINITY);
        assert_eq!(headroom(true, 0.0, 1.0, 0.1), f64::NEG_INFINITY);
    }

    #[test]
    fn grids_vary_the_first_knob_slowest_and_fragments_group_tables() {
        let knobs = vec![
            Sweep {
                path: "a.x".into(),
                values: vec![1.0, 2.0],
            },
            Sweep {
                path: "a.y".into(),
                values: vec![3.0, 4.0, 5.0],
            },
        ];
        let grid = grid(&knobs);
        assert_eq!(grid.len(), 6);
        assert_eq!(
            grid[1],
            vec![("a.x".to_owned(), 1.0), ("a.y".to_owned(), 4.0)]
        );
        let text = fragment(&[
            ("policy.placement.overcommit_ratio".into(), 3.25),
            ("fleet.classes[0].agents".into(), 90.0),
        ]);
        assert_eq!(
            text,
            "[policy.placement]\novercommit_ratio = 3.25\n# fleet.classes[0].agents = 90\n"
        );
    }
}
