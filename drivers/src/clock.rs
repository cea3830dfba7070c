//! The driver's clock: milliseconds since the driver started, the engine's `Millis`.

use carapace_engine::Millis;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now(&self) -> Millis {
        Millis(u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// The instant `at` stands for, to sleep until it.
    pub fn instant(&self, at: Millis) -> Instant {
        self.epoch + Duration::from_millis(at.0)
    }
}
