//! Shared helpers: where the workspace and the shared traces are, scratch directories, runs.

use carapace_sim::Simulation;
use carapace_sim::scenario::{self, Scenario};
use carapace_sim::trace::MemorySeries;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The workspace root: the parent of this crate's directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("sim/ sits inside the workspace")
        .to_path_buf()
}

/// `<workspace>/../shared/traces/raw`, holding the real trace samples. Missing data fails the
/// test that needs it, loudly: a test that quietly passes without its data proves nothing.
pub fn shared_traces() -> PathBuf {
    let dir = workspace().join("../shared/traces/raw");
    assert!(
        dir.is_dir(),
        "the shared trace samples are missing: expected them in {} (the `shared/` directory \
         beside the workspace root); these tests need them and never pass without them",
        dir.display()
    );
    dir
}

pub fn smoke_text() -> String {
    std::fs::read_to_string(workspace().join("scenarios/smoke.toml")).expect("scenarios/smoke.toml")
}

pub fn smoke() -> Scenario {
    scenario::parse_str(&smoke_text(), "smoke.toml").expect("smoke.toml is valid")
}

pub fn parse(text: &str) -> Scenario {
    match scenario::parse_str(text, "test.toml") {
        Ok(s) => s,
        Err(e) => panic!("test scenario does not parse:\n{e}"),
    }
}

/// Runs `scenario` to its end.
pub fn run(scenario: Scenario, series: Vec<(usize, MemorySeries)>) -> Simulation {
    run_with(scenario, series, |_| {})
}

/// Runs `scenario` to its end after `setup` has configured the simulation.
pub fn run_with(
    scenario: Scenario,
    series: Vec<(usize, MemorySeries)>,
    setup: impl FnOnce(&mut Simulation),
) -> Simulation {
    let mut sim = Simulation::new(scenario, series).expect("the engine accepts the scenario");
    setup(&mut sim);
    sim.run(|_| {});
    sim
}

/// A fresh scratch directory under the system's temp dir, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "carapace-sim-test-{}-{label}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
