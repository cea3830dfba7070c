//! A pod's own fence: the time by which it must have begun stopping its agent, unless its node
//! pushes that time on. A node in a cluster holds an etcd lease; if the node's daemon dies while
//! its pods live on, nobody would stop them when the lease expires and the agents are recreated
//! elsewhere. So the node keeps a fence file — a deadline on the machine's monotonic clock,
//! moved forward at every lease renewal — and each pod stops its agent once that deadline
//! passes. The monotonic clock is the kernel's, one for every process on the machine, and wall
//! clock steps do not move it.

use std::path::Path;
use std::time::Duration;

/// Milliseconds on the machine's monotonic clock (`CLOCK_MONOTONIC`, shared by its processes).
pub fn monotonic_ms() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always there on Linux");
    (now.tv_sec() as u64) * 1_000 + (now.tv_nsec() as u64) / 1_000_000
}

/// Sets the deadline (monotonic ms) in `path`, written whole and renamed into place, so a pod
/// never reads half a number.
pub fn write_deadline(path: &Path, deadline_ms: u64) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, deadline_ms.to_string())?;
    std::fs::rename(&temporary, path)
}

/// The deadline in `path`; `None` when it is missing or unreadable.
pub fn read_deadline(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Resolves once the deadline in `path` has passed (checked every `every`). A missing or
/// unreadable file counts as passed: a node that cannot keep its fence has no say over pods.
pub async fn passed(path: &Path, every: Duration) {
    loop {
        match read_deadline(path) {
            Some(deadline) if monotonic_ms() < deadline => {}
            _ => return,
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_fence_holds_while_pushed_on_and_falls_when_left() {
        let dir = std::env::temp_dir().join(format!("carapace-fence-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("fence");
        write_deadline(&file, monotonic_ms() + 60_000).unwrap();
        let held = tokio::time::timeout(
            Duration::from_millis(100),
            passed(&file, Duration::from_millis(10)),
        )
        .await;
        assert!(held.is_err(), "a deadline a minute away has not passed");
        write_deadline(&file, monotonic_ms().saturating_sub(1)).unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            passed(&file, Duration::from_millis(10)),
        )
        .await
        .expect("a deadline in the past has passed");
        std::fs::remove_file(&file).unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            passed(&file, Duration::from_millis(10)),
        )
        .await
        .expect("a missing fence file counts as passed");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
