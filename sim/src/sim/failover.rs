//! The leading controller's failures (`[controller_faults]`): while no controller leads, the
//! engine is told nothing and decides nothing; the new leader learns everything that
//! happened meanwhile at once, in order, when it takes over. Pods go on as they are: rung 1
//! is the nodes' own, in the simulator as in production.

use super::*;
use crate::rng::Component;

/// Whether a controller leads, and what it has not been told.
#[derive(Debug, Default)]
pub(crate) struct Failover {
    /// When the standby takes over, while none leads.
    back_at: Option<Millis>,
    /// Inputs that happened while none led, in order.
    held: Vec<Input>,
    /// Failures so far: the n-th draws the n-th lease number.
    failures: u32,
    /// Poisson failures so far: the n-th draws the n-th gap.
    arrivals: u32,
    down_since: Millis,
}

impl Failover {
    pub(crate) fn is_down(&self) -> bool {
        self.back_at.is_some()
    }

    pub(crate) fn back_at(&self) -> Millis {
        self.back_at.expect("asked only while no controller leads")
    }

    pub(crate) fn hold(&mut self, input: Input) {
        debug_assert!(self.is_down());
        self.held.push(input);
    }
}

impl Simulation {
    pub(super) fn schedule_controller_faults(&mut self) {
        let Some(faults) = self.scenario.controller_faults.clone() else {
            return;
        };
        for at in &faults.scheduled {
            self.queue
                .push(at.0, Event::ControllerFail { scheduled: true });
        }
        self.schedule_next_controller_failure(Millis::ZERO);
    }

    fn schedule_next_controller_failure(&mut self, from: Millis) {
        let Some(faults) = &self.scenario.controller_faults else {
            return;
        };
        let rate = faults.failures_per_day;
        let draw = self.failover.arrivals;
        self.failover.arrivals += 1;
        let u = self.streams.unit(Component::ControllerFailure, 0, draw);
        if let Some(gap) = crate::dist::exponential_gap(rate, u) {
            let at = from + gap;
            if at <= self.end {
                self.queue
                    .push(at, Event::ControllerFail { scheduled: false });
            }
        }
    }

    pub(super) fn controller_fail(&mut self, scheduled: bool) {
        let faults = self
            .scenario
            .controller_faults
            .clone()
            .expect("a controller fails only under [controller_faults]");
        let draw = self.failover.failures;
        self.failover.failures += 1;
        self.stats.controller_failovers += 1;
        // Scheduled failures do not move the Poisson process; each Poisson one draws the next.
        if !scheduled {
            self.schedule_next_controller_failure(self.now);
        }
        if self.failover.is_down() {
            return; // the standby was not leading yet: the outage goes on as it was
        }
        let since_renewal = self.streams.unit(Component::ControllerLease, 0, draw);
        let ttl = faults.leader_ttl.0.0;
        let takeover =
            ttl - (since_renewal * faults.renew_every.0.0 as f64) as u64 + faults.rebuild.0.0;
        let back = self.now + Millis(takeover.max(1));
        self.failover.back_at = Some(back);
        self.failover.down_since = self.now;
        self.queue.push(back, Event::ControllerBack);
    }

    pub(super) fn controller_back(&mut self) {
        if self.failover.back_at != Some(self.now) {
            return;
        }
        self.failover.back_at = None;
        self.stats.controller_down_ms += self.now.0 - self.failover.down_since.0;
        // The new leader's engine fires the timers that fell due while none led, then takes
        // what happened meanwhile.
        self.controller_wake = None;
        if let Err(error) = self.controller.handle_timeout(self.now) {
            self.note_engine_error(error);
        }
        for input in std::mem::take(&mut self.failover.held) {
            self.feed(input);
        }
        self.drain_controller();
    }
}
