//! Reading a scenario file into a [`Scenario`], with every problem located by file, line,
//! column and field path.

use super::{AgentClass, Dist, Scenario};
use std::fmt;
use std::path::Path;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Upper bounds that keep one run within a machine's memory; beyond them is a typo.
const MAX_AGENTS: u64 = 4_000_000;
const MAX_NODES: u32 = 100_000;
const MAX_TENANTS: u32 = 1_000_000;
const MAX_CLASSES: usize = 1_000;
const MAX_SCENARIO_BYTES: u64 = 4 << 20;

/// Everything wrong with one scenario file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ScenarioError {
    pub file: String,
    pub problems: Vec<ScenarioProblem>,
}

/// One problem, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioProblem {
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: u32,
    pub column: u32,
    /// Dotted path of the field, e.g. `fleet.classes[0].memory.baseline`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.file, problem.line, problem.column)?;
            if !problem.path.is_empty() {
                write!(f, "field `{}`: ", problem.path)?;
            }
            f.write_str(&problem.message)?;
        }
        Ok(())
    }
}

/// Reads and checks a scenario file.
pub fn load_file(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let whole = |message: String| ScenarioError {
        file: file.clone(),
        problems: vec![ScenarioProblem {
            line: 0,
            column: 0,
            path: String::new(),
            message,
        }],
    };
    let size = std::fs::metadata(path)
        .map_err(|e| whole(format!("cannot read: {e}")))?
        .len();
    if size > MAX_SCENARIO_BYTES {
        return Err(whole(format!(
            "is {size} bytes; scenario files are limited to {MAX_SCENARIO_BYTES}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    parse_str(&text, &file)
}

/// Parses and checks scenario text; `file` names it in errors.
pub fn parse_str(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
    let fail = |problems| ScenarioError {
        file: file.to_owned(),
        problems,
    };
    let document =
        DeTable::parse(text).map_err(|e| fail(vec![locate_toml_error(text, &e, String::new())]))?;
    let deserializer = toml::de::Deserializer::from(document.clone());
    let scenario: Scenario = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = clean_path(&e.path().to_string());
        fail(vec![locate_toml_error(text, e.inner(), path)])
    })?;
    let problems: Vec<ScenarioProblem> = check(&scenario)
        .into_iter()
        .map(|(path, message)| {
            let (line, column) = find_path(&document, &path)
                .map(|offset| line_column(text, offset))
                .unwrap_or((0, 0));
            ScenarioProblem {
                line,
                column,
                path,
                message,
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(scenario)
    } else {
        Err(fail(problems))
    }
}

fn locate_toml_error(text: &str, error: &toml::de::Error, path: String) -> ScenarioProblem {
    let (line, column) = error
        .span()
        .map(|span| line_column(text, span.start))
        .unwrap_or((0, 0));
    let message = error.message().trim().to_owned();
    ScenarioProblem {
        line,
        column,
        path,
        message,
    }
}

/// serde_path_to_error writes `?` for the root and `.` between fields; keep it readable.
fn clean_path(path: &str) -> String {
    if path == "." || path == "?" {
        String::new()
    } else {
        path.to_owned()
    }
}

fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line as u32, column as u32)
}

/// Byte offset of the value at a dotted path such as `fleet.classes[1].agents`; the nearest
/// existing ancestor when the field itself is absent (a default that is out of range).
fn find_path(document: &Spanned<DeTable<'_>>, path: &str) -> Option<usize> {
    let mut table: &DeTable<'_> = document.get_ref();
    let mut offset = document.span().start;
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    for segment in path.split('.') {
        let (key, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if let Some(v) = value {
            table = v.get_ref().as_table()?;
        }
        let Some((_, found)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
            return Some(offset);
        };
        let mut current = found;
        for index in indices.split(['[', ']']).filter(|s| !s.is_empty()) {
            let index: usize = index.parse().ok()?;
            current = current.get_ref().as_array()?.get(index)?;
        }
        offset = current.span().start;
        value = Some(current);
    }
    Some(offset)
}

/// Relations serde cannot express. Each problem names the field it is about.
fn check(s: &Scenario) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem =
        |path: &str, message: &str| problems.push((path.to_owned(), message.to_owned()));
    if s.name.is_empty()
        || !s
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problem(
            "name",
            "must be non-empty and use only letters, digits, '-' and '_' (it names a directory)",
        );
    }
    if s.duration.ms() == 0 {
        problem("duration", "must be positive");
    }
    if s.warmup >= s.duration {
        problem("warmup", "must be shorter than duration");
    }
    let fleet = &s.fleet;
    if !(1..=MAX_NODES).contains(&fleet.nodes) {
        problem("fleet.nodes", &format!("must be between 1 and {MAX_NODES}"));
    }
    if fleet.zones == 0 || fleet.zones > fleet.nodes.max(1) {
        problem("fleet.zones", "must be between 1 and the number of nodes");
    }
    if fleet.regions == 0 || fleet.regions > fleet.zones.max(1) {
        problem("fleet.regions", "must be between 1 and the number of zones");
    }
    if fleet.node_memory.0 < 1 << 20 {
        problem("fleet.node_memory", "must be at least 1MiB");
    }
    if !(1..=MAX_TENANTS).contains(&fleet.tenants) {
        problem(
            "fleet.tenants",
            &format!("must be between 1 and {MAX_TENANTS}"),
        );
    }
    if fleet.classes.is_empty() || fleet.classes.len() > MAX_CLASSES {
        problem(
            "fleet.classes",
            &format!("must list between 1 and {MAX_CLASSES} agent classes"),
        );
    }
    let agents = s.agent_count();
    if agents == 0 || agents > MAX_AGENTS {
        problem(
            "fleet.classes",
            &format!("must hold between 1 and {MAX_AGENTS} agents in all"),
        );
    }
    for (i, class) in fleet.classes.iter().enumerate() {
        check_class(
            &format!("fleet.classes[{i}]"),
            class,
            fleet.node_memory.0,
            &mut problem,
        );
        if fleet.classes[..i].iter().any(|c| c.name == class.name) {
            problem(
                &format!("fleet.classes[{i}].name"),
                "is used by an earlier class",
            );
        }
    }
    let nf = &s.node_faults;
    rate(
        &mut problem,
        "node_faults.failures_per_node_per_day",
        nf.failures_per_node_per_day,
    );
    if let Some(lease) = &nf.lease {
        if lease.ttl.0.0 == 0 {
            problem("node_faults.lease.ttl", "must be above 0");
        }
        if lease.renew_every.0.0 == 0 || lease.renew_every.0 >= lease.ttl.0 {
            problem(
                "node_faults.lease.renew_every",
                "must be above 0 and below node_faults.lease.ttl",
            );
        }
    }
    if let Some(cf) = &s.controller_faults {
        rate(
            &mut problem,
            "controller_faults.failures_per_day",
            cf.failures_per_day,
        );
        if cf.leader_ttl.0.0 == 0 {
            problem("controller_faults.leader_ttl", "must be above 0");
        }
        if cf.renew_every.0 >= cf.leader_ttl.0 {
            problem(
                "controller_faults.renew_every",
                "must be below controller_faults.leader_ttl",
            );
        }
    }
    for (i, loss) in nf.scheduled.iter().enumerate() {
        if loss.node >= fleet.nodes {
            problem(
                &format!("node_faults.scheduled[{i}].node"),
                "names a node beyond fleet.nodes",
            );
        }
    }
    for (name, dist) in [
        ("schedule", &s.latency.schedule),
        ("version_pull", &s.latency.version_pull),
        ("boot", &s.latency.boot),
        ("boot_after_crash", &s.latency.boot_after_crash),
        ("snapshot_restore", &s.latency.snapshot_restore),
        ("warm_attach", &s.latency.warm_attach),
        ("stop", &s.latency.stop),
        ("validate", &s.latency.validate),
        ("exit_notice", &s.latency.exit_notice),
        ("supervisor_loss_notice", &s.latency.supervisor_loss_notice),
        ("restart", &s.latency.restart),
        ("ready_notice", &s.latency.ready_notice),
    ] {
        if let Err(message) = check_dist(dist) {
            problem(&format!("latency.{name}"), &message);
        }
    }
    for (name, dist) in [
        ("lost_stop", &s.latency.lost_stop),
        ("config_reject_notice", &s.latency.config_reject_notice),
    ] {
        if let Some(Err(message)) = dist.as_ref().map(check_dist) {
            problem(&format!("latency.{name}"), &message);
        }
    }
    let probes = &s.probes;
    for (name, span) in [
        ("startup_interval", probes.startup_interval),
        ("interval", probes.interval),
        ("memory_interval", probes.memory_interval),
    ] {
        if span.ms() == 0 {
            problem(&format!("probes.{name}"), "must be positive");
        }
    }
    if probes.timeout.ms() > 3_600_000 {
        problem("probes.timeout", "must be at most 1h");
    }
    if !(0.0..1.0).contains(&probes.memory_deadband) {
        problem("probes.memory_deadband", "must be in [0, 1)");
    }
    if let Err(e) = s.policy.validate() {
        problem(&format!("policy.{}", e.field), e.problem);
    }
    if !(0.0..=1.0).contains(&s.slo.unnoticed_min) {
        problem("slo.unnoticed_min", "must be a fraction in [0, 1]");
    }
    if !(s.slo.density_min.is_finite() && s.slo.density_min >= 0.0) {
        problem("slo.density_min", "must be a non-negative number");
    }
    rate(
        &mut problem,
        "churn.creates_per_hour",
        s.churn.creates_per_hour,
    );
    for (i, rollout) in s.rollouts.iter().enumerate() {
        if !fleet.classes.iter().any(|c| c.name == rollout.class) {
            problem(
                &format!("rollouts[{i}].class"),
                "names no class of fleet.classes",
            );
        }
        if rollout.wave_size == 0 {
            problem(&format!("rollouts[{i}].wave_size"), "must be at least 1");
        }
        if rollout.at >= s.duration {
            problem(&format!("rollouts[{i}].at"), "is after the end of the run");
        }
    }
    if s.report.bucket.ms() < 1_000 {
        problem("report.bucket", "must be at least 1s");
    }
    problems
}

fn check_class(
    path: &str,
    class: &AgentClass,
    node_memory: u64,
    problem: &mut impl FnMut(&str, &str),
) {
    if class.name.is_empty() {
        problem(&format!("{path}.name"), "must not be empty");
    }
    if class.memory_limit.0 == 0 {
        problem(&format!("{path}.memory_limit"), "must be positive");
    }
    if class.memory_limit.0 > node_memory {
        problem(
            &format!("{path}.memory_limit"),
            "exceeds fleet.node_memory: no node could ever hold one",
        );
    }
    if class.memory_request > class.memory_limit {
        problem(
            &format!("{path}.memory_request"),
            "must not exceed memory_limit",
        );
    }
    let memory = &class.memory;
    if memory.baseline > class.memory_limit {
        problem(
            &format!("{path}.memory.baseline"),
            "must not exceed memory_limit",
        );
    }
    if !(0.0..1.0).contains(&memory.baseline_jitter) {
        problem(
            &format!("{path}.memory.baseline_jitter"),
            "must be in [0, 1)",
        );
    }
    rate(
        problem,
        &format!("{path}.memory.spikes_per_day"),
        memory.spikes_per_day,
    );
    if memory.spikes_per_day > 0.0 && memory.spike_duration.ms() == 0 {
        problem(
            &format!("{path}.memory.spike_duration"),
            "must be positive when spikes happen",
        );
    }
    let faults = &class.faults;
    rate(
        problem,
        &format!("{path}.faults.crashes_per_day"),
        faults.crashes_per_day,
    );
    rate(
        problem,
        &format!("{path}.faults.hangs_per_day"),
        faults.hangs_per_day,
    );
    rate(
        problem,
        &format!("{path}.faults.config_corruptions_per_day"),
        faults.config_corruptions_per_day,
    );
    if !(0.0..=1.0).contains(&faults.crash_poisons_state) {
        problem(
            &format!("{path}.faults.crash_poisons_state"),
            "must be a probability in [0, 1]",
        );
    }
    rate(
        problem,
        &format!("{path}.clients.requests_per_hour"),
        class.clients.requests_per_hour,
    );
}

fn rate(problem: &mut impl FnMut(&str, &str), path: &str, value: f64) {
    if !(value.is_finite() && (0.0..=1e6).contains(&value)) {
        problem(path, "must be a rate in [0, 1e6]");
    }
}

fn check_dist(dist: &Dist) -> Result<(), String> {
    match *dist {
        Dist::Constant { .. } => Ok(()),
        Dist::Uniform { min, max } if min > max => Err("min must not exceed max".into()),
        Dist::LogNormal { median, p90 } if median.ms() == 0 || p90 < median => {
            Err("needs 0 < median <= p90".into())
        }
        Dist::Deciles { deciles } if !deciles.is_sorted() => {
            Err("deciles must not decrease (minimum, the nine deciles, maximum)".into())
        }
        _ => Ok(()),
    }
}
