//! Runs many simulations at once, one per core. Each run is single-threaded and
//! deterministic; running them side by side changes no result, and results come back in the
//! order they were asked for.

use super::sim::{SimError, load_traces, run_one};
use carapace_sim::report::Report;
use carapace_sim::scenario::Scenario;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One run to make: a scenario (already varied: seed, knobs) and where its traces resolve.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub scenario: Scenario,
    pub base: &'a Path,
}

/// Runs every job on every core with a progress bar (hidden when stderr is not a terminal).
/// `on_done(index, &result)` is called as each job finishes, in completion order, so callers
/// can keep partial results of an interrupted batch.
pub fn run_all(
    jobs: Vec<Job<'_>>,
    label: &str,
    on_done: impl Fn(usize, &Result<Report, SimError>) + Sync,
) -> Vec<Result<Report, SimError>> {
    let bar = ProgressBar::with_draw_target(Some(jobs.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {label} {{pos}}/{{len}} runs [{{bar:40}}] eta {{eta}}"
        ))
        .expect("static template")
        .progress_chars("=> "),
    );
    let results = parallel_map(&jobs, |index, job| {
        let result = load_traces(&job.scenario, job.base)
            .and_then(|replays| run_one(job.scenario.clone(), replays, 0, |_| {}));
        on_done(index, &result);
        bar.inc(1);
        result
    });
    bar.finish_and_clear();
    results
}

/// `f` over every item, on every core; results in the items' order. Each item runs on one
/// thread from start to end, so deterministic work stays deterministic.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(usize, &T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else { break };
                    let result = f(index, item);
                    results
                        .lock()
                        .expect("a worker panicked while holding the results")[index] =
                        Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("no worker holds the lock after the scope")
        .into_iter()
        .map(|r| r.expect("every index below the length was taken by a worker"))
        .collect()
}
