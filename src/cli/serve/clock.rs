//! The daemon's clock.

use carapace_engine::Millis;

/// The daemon's clock: engine time since the store's epoch, never going backwards across
/// restarts.
#[derive(Debug)]
pub struct DaemonClock {
    started: std::time::Instant,
    base: Millis,
}

impl DaemonClock {
    pub(super) fn new(epoch_unix_ms: u64, at_least: Millis) -> DaemonClock {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        DaemonClock {
            started: std::time::Instant::now(),
            base: Millis(unix_ms.saturating_sub(epoch_unix_ms)).max(at_least),
        }
    }

    pub fn now(&self) -> Millis {
        self.base + Millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(0))
    }

    /// The instant `at` stands for, to sleep until it.
    pub fn instant(&self, at: Millis) -> std::time::Instant {
        self.started + std::time::Duration::from_millis(at.0.saturating_sub(self.base.0))
    }
}
