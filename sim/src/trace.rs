//! Memory traces: a generic CSV format and adapters for public production traces.
//!
//! A trace is a set of series (one per pod or VM), each a step function over time starting at
//! zero. Agents of a class that replays a trace are each given one series, by seeded choice,
//! and a seeded phase offset, so agents sharing a series do not spike in lockstep. Traces of
//! fractions (of a container's limit) scale to the agent's limit; absolute traces are bytes.

use crate::scenario::{MemoryTrace, TraceFormat};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// Rows read from one trace; beyond this the file is refused rather than exhaust memory.
const MAX_ROWS: usize = 20_000_000;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}: field `{field}`: {problem}")]
    Row {
        file: String,
        line: u64,
        field: &'static str,
        problem: String,
    },
    #[error("{file}: {problem}")]
    File { file: String, problem: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemorySeries {
    series: Vec<Vec<(u64, f64)>>,
    period_ms: u64,
    /// Values are fractions of a limit (scaled on read) rather than bytes.
    fractions: bool,
    scale_to: Option<u64>,
}

impl MemorySeries {
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Length of the longest series: replay wraps around at this.
    pub fn period_ms(&self) -> u64 {
        self.period_ms
    }

    /// Memory of series `index` at time `at` (wrapping), in bytes.
    pub fn value_at(&self, index: usize, at: u64, limit_bytes: u64) -> u64 {
        let series = &self.series[index % self.series.len()];
        let span = series.last().map_or(1, |(t, _)| t + 1).max(1);
        let t = at % span;
        let i = series
            .partition_point(|(time, _)| *time <= t)
            .saturating_sub(1);
        let value = series[i].1;
        if self.fractions {
            (value.clamp(0.0, 1.0) * self.scale_to.unwrap_or(limit_bytes) as f64) as u64
        } else {
            value.max(0.0) as u64
        }
    }

    /// Mean and maximum over every sample, per series averaged: for checking a replay against
    /// its source.
    pub fn sample_stats(&self) -> (f64, f64) {
        let (mut sum, mut count, mut max) = (0.0, 0usize, 0.0f64);
        for series in &self.series {
            for (_, v) in series {
                sum += v;
                count += 1;
                max = max.max(*v);
            }
        }
        (sum / count.max(1) as f64, max)
    }
}

/// Loads the trace a class names, resolving its path against the scenario's directory.
pub fn load(trace: &MemoryTrace, base: &Path) -> Result<MemorySeries, TraceError> {
    let path = base.join(&trace.path);
    let file = path.display().to_string();
    let io = |source| TraceError::Io {
        file: file.clone(),
        source,
    };
    let raw = std::fs::read(&path).map_err(io)?;
    let text = if trace.path.ends_with(".tar.gz") || trace.path.ends_with(".tgz") {
        first_member_of_tar_gz(&raw).map_err(io)?
    } else if trace.path.ends_with(".gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut text)
            .map_err(io)?;
        text
    } else {
        String::from_utf8(raw).map_err(|_| TraceError::File {
            file: file.clone(),
            problem: "is not UTF-8 text".into(),
        })?
    };
    let mut series = match trace.format {
        TraceFormat::Csv => parse_generic(&text, &file)?,
        TraceFormat::AlibabaGentd26 => parse_alibaba(&text, &file)?,
        TraceFormat::Bitbrains => parse_bitbrains(&text, &file)?,
    };
    series.scale_to = trace.scale_to.map(|b| b.0);
    Ok(series)
}

fn first_member_of_tar_gz(raw: &[u8]) -> std::io::Result<String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(raw));
    let mut entries = archive.entries()?;
    let mut entry = entries
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "empty archive"))??;
    let mut text = String::new();
    entry.read_to_string(&mut text)?;
    Ok(text)
}

/// `time_ms,series,memory_bytes` with a header row.
pub fn parse_generic(text: &str, file: &str) -> Result<MemorySeries, TraceError> {
    let rows = read_rows(text, file, b',', |record, line| {
        let time: u64 = field(record, 0, "time_ms", file, line)?;
        let series = record
            .get(1)
            .ok_or_else(|| missing(file, line, "series"))?
            .to_owned();
        let bytes: u64 = field(record, 2, "memory_bytes", file, line)?;
        Ok((series, time, bytes as f64))
    })?;
    assemble(rows, file, false)
}

/// Alibaba GenTD26 `value,timestamp_anon,container_ip`: fraction of the limit, seconds.
pub fn parse_alibaba(text: &str, file: &str) -> Result<MemorySeries, TraceError> {
    let rows = read_rows(text, file, b',', |record, line| {
        let value: f64 = field(record, 0, "value", file, line)?;
        // Written as floats ("1662858720.0"); whole seconds in practice.
        let seconds: f64 = field(record, 1, "timestamp_anon", file, line)?;
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(TraceError::Row {
                file: file.to_owned(),
                line,
                field: "timestamp_anon",
                problem: format!("`{seconds}` is not a time"),
            });
        }
        let pod = record
            .get(2)
            .ok_or_else(|| missing(file, line, "container_ip"))?
            .to_owned();
        Ok((pod, (seconds * 1000.0) as u64, value))
    })?;
    assemble(rows, file, true)
}

/// Bitbrains GWA-T-12: `;\t`-separated, Unix seconds, "Memory usage [KB]" in column 7.
pub fn parse_bitbrains(text: &str, file: &str) -> Result<MemorySeries, TraceError> {
    let normalised = text.replace(";\t", ";");
    let rows = read_rows(&normalised, file, b';', |record, line| {
        let seconds: u64 = field(record, 0, "Timestamp", file, line)?;
        let kb: f64 = field(record, 6, "Memory usage [KB]", file, line)?;
        Ok((String::new(), seconds.saturating_mul(1000), kb * 1024.0))
    })?;
    assemble(rows, file, false)
}

type Row = (String, u64, f64);

fn read_rows<R>(
    text: &str,
    file: &str,
    delimiter: u8,
    parse: impl Fn(&csv::StringRecord, u64) -> Result<R, TraceError>,
) -> Result<Vec<R>, TraceError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index as u64 + 2;
        let record = record.map_err(|e| TraceError::Row {
            file: file.to_owned(),
            line,
            field: "row",
            problem: e.to_string(),
        })?;
        if record.iter().all(str::is_empty) {
            continue;
        }
        if rows.len() >= MAX_ROWS {
            return Err(TraceError::File {
                file: file.to_owned(),
                problem: format!("has more than {MAX_ROWS} rows"),
            });
        }
        rows.push(parse(&record, line)?);
    }
    Ok(rows)
}

fn field<T: std::str::FromStr>(
    record: &csv::StringRecord,
    index: usize,
    name: &'static str,
    file: &str,
    line: u64,
) -> Result<T, TraceError> {
    let text = record.get(index).ok_or_else(|| missing(file, line, name))?;
    let value = text.parse().map_err(|_| TraceError::Row {
        file: file.to_owned(),
        line,
        field: name,
        problem: format!("`{text}` is not a number"),
    })?;
    Ok(value)
}

fn missing(file: &str, line: u64, field: &'static str) -> TraceError {
    TraceError::Row {
        file: file.to_owned(),
        line,
        field,
        problem: "is missing".into(),
    }
}

/// Groups rows by series (in name order), shifts each to start at zero and sorts by time.
fn assemble(rows: Vec<Row>, file: &str, fractions: bool) -> Result<MemorySeries, TraceError> {
    let mut grouped: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for (name, time, value) in rows {
        if !value.is_finite() {
            return Err(TraceError::File {
                file: file.to_owned(),
                problem: "holds a non-finite value".into(),
            });
        }
        grouped.entry(name).or_default().push((time, value));
    }
    let mut series = Vec::with_capacity(grouped.len());
    let mut period_ms = 1;
    for (_, mut points) in grouped {
        points.sort_by_key(|(t, _)| *t);
        let start = points[0].0;
        for point in &mut points {
            point.0 -= start;
        }
        period_ms = period_ms.max(points.last().map_or(1, |(t, _)| t + 1));
        series.push(points);
    }
    if series.is_empty() {
        return Err(TraceError::File {
            file: file.to_owned(),
            problem: "holds no samples".into(),
        });
    }
    Ok(MemorySeries {
        series,
        period_ms,
        fractions,
        scale_to: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_csv_replays_as_a_step_function_that_wraps() {
        let text = "time_ms,series,memory_bytes\n0,a,100\n1000,a,300\n0,b,50\n";
        let trace = parse_generic(text, "t.csv").unwrap();
        assert_eq!(trace.len(), 2);
        assert_eq!(trace.value_at(0, 0, 0), 100);
        assert_eq!(trace.value_at(0, 999, 0), 100);
        assert_eq!(trace.value_at(0, 1000, 0), 300);
        assert_eq!(
            trace.value_at(0, 1001, 0),
            100,
            "wraps after the last sample"
        );
        assert_eq!(trace.value_at(1, 12345, 0), 50);
    }

    #[test]
    fn bad_rows_name_file_line_and_field() {
        let error =
            parse_generic("time_ms,series,memory_bytes\n0,a,100\nsoon,a,3\n", "t.csv").unwrap_err();
        assert_eq!(
            error.to_string(),
            "t.csv:3: field `time_ms`: `soon` is not a number"
        );
        let error =
            parse_alibaba("value,timestamp_anon,container_ip\n0.5,10\n", "a.csv").unwrap_err();
        assert_eq!(
            error.to_string(),
            "a.csv:2: field `container_ip`: is missing"
        );
    }

    #[test]
    fn fractions_scale_to_the_limit() {
        let trace = parse_alibaba(
            "value,timestamp_anon,container_ip\n0.25,100,x\n0.5,157,x\n",
            "a.csv",
        )
        .unwrap();
        assert_eq!(trace.value_at(0, 0, 1000), 250);
        assert_eq!(trace.value_at(0, 57_000, 1000), 500);
    }
}

/// Everything a run replays: memory curves (by class) and faults at fixed times.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replays {
    pub memory: Vec<(usize, MemorySeries)>,
    pub events: Vec<TraceEvent>,
}

impl From<Vec<(usize, MemorySeries)>> for Replays {
    fn from(memory: Vec<(usize, MemorySeries)>) -> Replays {
        Replays {
            memory,
            events: Vec::new(),
        }
    }
}

/// Loads every trace `scenario` names, paths resolved against `base` (the scenario's
/// directory), and checks that replayed faults name agents and nodes the fleet has.
pub fn load_all(scenario: &crate::scenario::Scenario, base: &Path) -> Result<Replays, TraceError> {
    let mut replays = Replays::default();
    for (class, spec) in scenario.fleet.classes.iter().enumerate() {
        if let Some(trace) = &spec.memory.trace {
            replays.memory.push((class, load(trace, base)?));
        }
    }
    if let Some(path) = &scenario.event_trace {
        let events = load_events(path, base)?;
        let (agents, nodes) = (scenario.agent_count(), u64::from(scenario.fleet.nodes));
        for event in &events {
            let (limit, what) = if event.kind == TraceEventKind::NodeFailure {
                (nodes, "nodes")
            } else {
                (agents, "agents")
            };
            if u64::from(event.target) >= limit {
                return Err(TraceError::File {
                    file: base.join(path).display().to_string(),
                    problem: format!(
                        "the event at {} ms names {} {}, but the fleet has {limit} {what}",
                        event.at_ms,
                        &what[..what.len() - 1],
                        event.target
                    ),
                });
            }
        }
        replays.events = events;
    }
    Ok(replays)
}

/// A fault replayed at a fixed time, from an event trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub at_ms: u64,
    /// The agent index (or node index, for `node_failure`).
    pub target: u32,
    pub kind: TraceEventKind,
    /// Bytes, for a spike.
    pub value: u64,
    /// For a spike, its length.
    pub duration_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TraceEventKind {
    Crash,
    Hang,
    ConfigCorruption,
    Spike,
    NodeFailure,
    /// The agent's pod supervisor dies (and its agent with it); the node reports the loss.
    SupervisorLoss,
    /// The agent is removed and a new one of its class and tenant is created in its place, as
    /// an operator deletes an agent and creates it again; later rows naming the agent reach
    /// the new one. Its provisioning is measured like any create.
    Recreate,
}

impl TraceEventKind {
    pub const ALL: [TraceEventKind; 7] = [
        TraceEventKind::Crash,
        TraceEventKind::Hang,
        TraceEventKind::ConfigCorruption,
        TraceEventKind::Spike,
        TraceEventKind::NodeFailure,
        TraceEventKind::SupervisorLoss,
        TraceEventKind::Recreate,
    ];

    /// The name an event trace gives it.
    pub fn name(self) -> &'static str {
        match self {
            TraceEventKind::Crash => "crash",
            TraceEventKind::Hang => "hang",
            TraceEventKind::ConfigCorruption => "config_corruption",
            TraceEventKind::Spike => "spike",
            TraceEventKind::NodeFailure => "node_failure",
            TraceEventKind::SupervisorLoss => "supervisor_loss",
            TraceEventKind::Recreate => "recreate",
        }
    }
}

/// `time_ms,agent,kind,value,duration_ms` with a header row; kinds are `crash`, `hang`,
/// `config_corruption`, `spike` (value: bytes, duration_ms: its length), `supervisor_loss`,
/// `recreate` and `node_failure` (agent: the node's index). Returned in time order (rows of one time keep their order).
pub fn parse_events(text: &str, file: &str) -> Result<Vec<TraceEvent>, TraceError> {
    let mut events = read_rows(text, file, b',', |record, line| {
        let at_ms: u64 = field(record, 0, "time_ms", file, line)?;
        let target: u32 = field(record, 1, "agent", file, line)?;
        let name = record.get(2).ok_or_else(|| missing(file, line, "kind"))?;
        let Some(kind) = TraceEventKind::ALL.into_iter().find(|k| k.name() == name) else {
            let names: Vec<&str> = TraceEventKind::ALL.iter().map(|k| k.name()).collect();
            return Err(TraceError::Row {
                file: file.to_owned(),
                line,
                field: "kind",
                problem: format!("`{name}` is not one of {}", names.join(", ")),
            });
        };
        let optional = |i: usize, name: &'static str| -> Result<u64, TraceError> {
            match record.get(i) {
                None | Some("") => Ok(0),
                Some(_) => field(record, i, name, file, line),
            }
        };
        let (value, duration_ms) = (optional(3, "value")?, optional(4, "duration_ms")?);
        if kind == TraceEventKind::Spike && (value == 0 || duration_ms == 0) {
            return Err(TraceError::Row {
                file: file.to_owned(),
                line,
                field: "value",
                problem: "a spike needs its bytes (value) and its length (duration_ms)".into(),
            });
        }
        Ok(TraceEvent {
            at_ms,
            target,
            kind,
            value,
            duration_ms,
        })
    })?;
    events.sort_by_key(|e| e.at_ms);
    Ok(events)
}

/// Loads an event trace, resolving its path against the scenario's directory.
pub fn load_events(path: &str, base: &Path) -> Result<Vec<TraceEvent>, TraceError> {
    let full = base.join(path);
    let file = full.display().to_string();
    let text = std::fs::read_to_string(&full).map_err(|source| TraceError::Io {
        file: file.clone(),
        source,
    })?;
    parse_events(&text, &file)
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn event_traces_parse_in_time_order_and_name_bad_rows() {
        let text = "time_ms,agent,kind,value,duration_ms\n5000,2,spike,1073741824,60000\n1000,0,crash,,\n3000,1,node_failure\n";
        let events = parse_events(text, "e.csv").unwrap();
        assert_eq!(
            events.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            vec![1000, 3000, 5000]
        );
        assert_eq!(
            events[2],
            TraceEvent {
                at_ms: 5000,
                target: 2,
                kind: TraceEventKind::Spike,
                value: 1 << 30,
                duration_ms: 60_000
            }
        );
        let error = parse_events("time_ms,agent,kind\n1,0,meteor\n", "e.csv").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("e.csv:2: field `kind`: `meteor`"),
            "{error}"
        );
        let error = parse_events("time_ms,agent,kind\n1,0,spike\n", "e.csv").unwrap_err();
        assert!(error.to_string().contains("field `value`"), "{error}");
    }
}
