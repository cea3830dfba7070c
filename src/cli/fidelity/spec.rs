//! The fidelity file: which agents to create on the real daemon, the fixed fault schedule to
//! put them through, and how the comparison is judged.

use crate::cli::chaos::FaultKind;
use crate::cli::serve::agents::AgentRequest;
use crate::cli::serve::config::deserialize_toml;
use carapace_engine::Millis;
use carapace_sim::scenario::{Bytes, Span};
use serde::Deserialize;
use std::path::Path;

/// Bounds that keep one fidelity run under an hour; beyond them is a typo. A KS distance
/// under 0.2 needs some 52 real samples to tell apart from noise (see
/// `compare::ks_critical_95`): as many agents for provisioning, as many rounds of each fault,
/// so a schedule of every fault class needs a few hundred rounds.
const MAX_AGENTS: u32 = 128;
const MAX_ROUNDS: u32 = 1_000;
const MAX_SPEC_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Agents created from `agent`, named `NAME-1` … `NAME-N`.
    pub agents: u32,
    /// The API body of each agent (`POST /v1/agents`); its name is the prefix.
    pub agent: AgentRequest,
    /// The fault schedule, in order; round k goes to agent k mod N.
    #[serde(rename = "fault")]
    pub faults: Vec<FaultRounds>,
    /// After the schedule, this many times: remove an agent (recreate k: agent k mod N) and
    /// create it again under a new name (`NAME-3.2`, ...), timed like the first creates, one
    /// at a time. Provisioning then has as many samples as a fault class without as many
    /// agents at once.
    #[serde(default)]
    pub recreates: u32,
    /// Healthy time before each injection (lets the known-good dwell pass), plus a jitter of
    /// up to as much again (see `real::settle_of`).
    #[serde(default = "defaults::settle")]
    pub settle: Span,
    /// Give up on one round, or on an agent's provisioning, after this.
    #[serde(default = "defaults::timeout")]
    pub timeout: Span,
    #[serde(default)]
    pub client: ClientModel,
    #[serde(default)]
    pub sim: SimSide,
    #[serde(default)]
    pub judge: Judge,
}

/// `repeat` rounds of one fault.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRounds {
    pub kind: FaultKind,
    #[serde(default = "defaults::one")]
    pub repeat: u32,
    /// Bytes a `spike` allocates inside the agent's memory cgroup.
    #[serde(default = "defaults::spike_bytes")]
    pub spike_bytes: Bytes,
}

/// The modelled client: a request this often, noticing an outage after its timeout.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientModel {
    pub interval: Span,
    pub timeout: Span,
}

impl Default for ClientModel {
    fn default() -> Self {
        ClientModel {
            interval: Span(Millis(1_000)),
            timeout: Span(Millis(10_000)),
        }
    }
}

/// What the simulated side needs that the real run cannot tell it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimSide {
    /// Seeds run: the simulated distributions pool them, and every seed must choose the
    /// real rung.
    pub seeds: u32,
    /// The agents' memory right after boot (default: the template's memory_request, or half
    /// its limit).
    pub baseline: Option<Bytes>,
}

impl Default for SimSide {
    fn default() -> Self {
        SimSide {
            seeds: 10,
            baseline: None,
        }
    }
}

/// How the distributions are judged.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Judge {
    /// Largest Kolmogorov–Smirnov distance between real and simulated times that passes.
    pub ks_max: f64,
    /// Fewer real samples than this are shown but not judged: a KS distance of three
    /// samples says little.
    pub min_samples: usize,
}

impl Default for Judge {
    fn default() -> Self {
        Judge {
            ks_max: 0.2,
            min_samples: 8,
        }
    }
}

mod defaults {
    use carapace_engine::Millis;
    use carapace_sim::scenario::{Bytes, Span};
    pub(super) fn settle() -> Span {
        Span(Millis(5_000))
    }
    pub(super) fn timeout() -> Span {
        Span(Millis(300_000))
    }
    pub(super) fn one() -> u32 {
        1
    }
    pub(super) fn spike_bytes() -> Bytes {
        Bytes(1 << 30)
    }
}

impl Spec {
    /// Reads and checks a fidelity file; errors name the file, line, column and field.
    pub fn load(path: &Path) -> Result<Spec, String> {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if size > MAX_SPEC_BYTES {
            return Err(format!(
                "{}: is {size} bytes; fidelity files are limited to {MAX_SPEC_BYTES}",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Spec::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Spec, String> {
        let spec: Spec = deserialize_toml(text, path)?;
        let field = |name: &str, problem: String| {
            Err(format!("{}: field `{name}`: {problem}", path.display()))
        };
        if !(1..=MAX_AGENTS).contains(&spec.agents) {
            return field("agents", format!("must be 1 to {MAX_AGENTS}"));
        }
        if let Err(problem) = spec.agent.check() {
            return field("agent", problem);
        }
        if spec.faults.is_empty() {
            return field("fault", "the schedule needs at least one [[fault]]".into());
        }
        let rounds: u32 = spec.faults.iter().map(|f| f.repeat).sum();
        if spec.faults.iter().any(|f| f.repeat == 0) || rounds > MAX_ROUNDS {
            return field(
                "fault.repeat",
                format!("each at least 1, {MAX_ROUNDS} rounds in all"),
            );
        }
        if spec.recreates > MAX_ROUNDS - rounds {
            return field(
                "recreates",
                format!("at most {MAX_ROUNDS} rounds and recreates in all"),
            );
        }
        // The names the run will give must be names the daemon takes.
        let mut longest = spec.agent.clone();
        longest.name = match spec.recreates {
            0 => spec.agent_name(spec.agents - 1),
            n => spec.incarnation_name(spec.agents - 1, 1 + n.div_ceil(spec.agents)),
        };
        if let Err(problem) = longest.check() {
            return field("agent.name", format!("as `{}`: {problem}", longest.name));
        }
        for (i, rounds) in spec.faults.iter().enumerate() {
            if let Some(problem) = without_a_model(rounds.kind) {
                return field(&format!("fault[{i}].kind"), problem.into());
            }
        }
        if spec.settle.0 > Millis(3_600_000) || spec.timeout.0 > Millis(3_600_000) {
            return field("settle", "settle and timeout are at most 1h".into());
        }
        if spec.timeout.0 < Millis(1_000) {
            return field("timeout", "must be at least 1s".into());
        }
        if spec.client.interval.0 < Millis(10) || spec.client.timeout.0 < Millis(10) {
            return field("client", "interval and timeout are at least 10ms".into());
        }
        if !(1..=1_000).contains(&spec.sim.seeds) {
            return field("sim.seeds", "must be 1 to 1000".into());
        }
        if !(spec.judge.ks_max.is_finite() && (0.0..=1.0).contains(&spec.judge.ks_max)) {
            return field("judge.ks_max", "must be 0 to 1".into());
        }
        Ok(spec)
    }

    /// Every round in schedule order: (fault, spike bytes).
    pub fn rounds(&self) -> Vec<(FaultKind, u64)> {
        self.faults
            .iter()
            .flat_map(|f| std::iter::repeat_n((f.kind, f.spike_bytes.0), f.repeat as usize))
            .collect()
    }

    pub fn agent_name(&self, index: u32) -> String {
        format!("{}-{}", self.agent.name, index + 1)
    }

    /// The name of agent `index`'s `incarnation`-th create (2 for its first recreate).
    pub fn incarnation_name(&self, index: u32, incarnation: u32) -> String {
        format!("{}.{incarnation}", self.agent_name(index))
    }
}

/// Why a real fault cannot be compared with the simulator yet, if it cannot.
fn without_a_model(kind: FaultKind) -> Option<&'static str> {
    match kind {
        FaultKind::Kill
        | FaultKind::Hang
        | FaultKind::TruncateConfig
        | FaultKind::KillSupervisor => None,
        FaultKind::KillDaemon => Some(
            "kill-daemon restarts the daemon, which fidelity does not own; run it with \
             `carapace chaos --restart-with`",
        ),
        // The kernel picks a real spike's victim among the pod's processes (often the
        // allocator itself), while the simulator grows the agent's own memory: the two
        // would be compared on different faults.
        FaultKind::Spike => Some(
            "a real spike allocates beside the agent and the kernel picks the victim, while \
             the simulator grows the agent's own memory; measure it with `carapace chaos`",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "[agent]\nname = \"fid\"\nmemory_limit = \"512MiB\"\ncommand = [\"/bin/agent\", \"--port\", \"{port}\"]\nprobe = \"http://127.0.0.1:{port}/readyz\"\n";

    fn parse(text: &str) -> Result<Spec, String> {
        Spec::parse(text, Path::new("fidelity.toml"))
    }

    #[test]
    fn a_schedule_expands_into_rounds_in_order() {
        let spec = parse(&format!(
            "agents = 2\n{AGENT}\n[[fault]]\nkind = \"kill\"\nrepeat = 2\n\n[[fault]]\nkind = \"hang\"\n"
        ))
        .expect("parses");
        let kinds: Vec<FaultKind> = spec.rounds().iter().map(|r| r.0).collect();
        assert_eq!(
            kinds,
            [FaultKind::Kill, FaultKind::Kill, FaultKind::Hang],
            "{spec:?}"
        );
        assert_eq!(spec.agent_name(1), "fid-2");
        assert_eq!(spec.sim.seeds, 10);
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../fidelity/openclaw.toml");
        let spec = Spec::parse(text, Path::new("fidelity/openclaw.toml")).expect("parses");
        assert_eq!(spec.rounds().len(), 32);
        assert_eq!(spec.agent_name(2), "claw-3");
    }

    #[test]
    fn problems_name_the_file_and_the_field() {
        let unknown = parse(&format!(
            "agents = 2\n{AGENT}\n[[fault]]\nkind = \"meteor\"\n"
        ))
        .unwrap_err();
        assert!(
            unknown.starts_with("fidelity.toml: field `fault[0].kind`: line 9"),
            "{unknown}"
        );
        let none = parse(&format!("agents = 2\n{AGENT}fault = []\n")).unwrap_err();
        assert!(none.contains("field `fault`"), "{none}");
        let fleet = |agents: u32, repeat: u32| {
            parse(&format!(
                "agents = {agents}\n{AGENT}[[fault]]\nkind = \"kill\"\nrepeat = {repeat}\n"
            ))
        };
        assert!(fleet(MAX_AGENTS, MAX_ROUNDS).is_ok());
        let many = fleet(MAX_AGENTS + 1, 1).unwrap_err();
        assert!(many.contains("field `agents`"), "{many}");
        let long = fleet(1, MAX_ROUNDS + 1).unwrap_err();
        assert!(long.contains("field `fault.repeat`"), "{long}");
        let daemon = parse(&format!(
            "agents = 1\n{AGENT}[[fault]]\nkind = \"kill-daemon\"\n"
        ))
        .unwrap_err();
        assert!(daemon.contains("field `fault[0].kind`"), "{daemon}");
        let stray = parse(&format!("agents = 1\nagnets = 2\n{AGENT}")).unwrap_err();
        assert!(stray.contains("agnets"), "{stray}");
    }

    #[test]
    fn recreates_share_the_bound_of_the_rounds_and_take_names_the_daemon_accepts() {
        let with = |recreates: u32, name: &str| {
            parse(&format!(
                "agents = 4\nrecreates = {recreates}\n{}[[fault]]\nkind = \"kill\"\nrepeat = 10\n",
                AGENT.replace("\"fid\"", &format!("\"{name}\""))
            ))
        };
        let spec = with(MAX_ROUNDS - 10, "fid").expect("rounds and recreates within the bound");
        assert_eq!(spec.recreates, MAX_ROUNDS - 10);
        assert_eq!(spec.incarnation_name(2, 2), "fid-3.2");
        let over = with(MAX_ROUNDS - 9, "fid").unwrap_err();
        assert!(over.contains("field `recreates`"), "{over}");
        // A prefix the daemon takes, whose recreated names it would not.
        let prefix = "a".repeat(125);
        assert!(with(0, &prefix).is_ok());
        let long = with(8, &prefix).unwrap_err();
        assert!(long.contains("field `agent.name`"), "{long}");
        assert_eq!(with(0, "fid").expect("parses").recreates, 0);
    }
}
