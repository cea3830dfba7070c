//! Coming back after a restart (or a kill -9): the journal replayed through a fresh engine,
//! unfinished commands redone, running pods re-adopted, pods of replaced instances stopped.

use super::daemon::Daemon;
use crate::cli::journal::{Replayer, Step, for_each_record};
use carapace_engine::{AgentStatus, Command};
use carapace_store::JournalEntry;

impl Daemon {
    /// Rebuilds the engine from the journal, checking each recorded command against the one
    /// the engine issues now.
    pub(super) fn replay(&mut self) -> anyhow::Result<()> {
        let mut replayer = Replayer::new(self.controller.config().clone())?;
        let mut steps = Vec::new();
        let dropped = for_each_record(&self.store, |_, record| {
            let step = replayer.step(&record);
            steps.push((record, step));
            // Bookkeeping happens after, outside the borrow of the store.
            true
        })?;
        for (record, step) in steps {
            self.replayed.records += 1;
            if let JournalEntry::Input(input) = &record.entry {
                self.note_finished(input);
            }
            match step {
                Step::Applied => {}
                Step::Matched(command) => self.note_issued(record.at, &command),
                Step::Diverged { recorded, .. } => {
                    self.replayed.divergences += 1;
                    self.note_issued(record.at, &recorded);
                }
                Step::Refused(_) | Step::Unknown => self.replayed.divergences += 1,
            }
        }
        self.replayed.divergences += replayer.unrecorded() as u64;
        if let Some(cut) = dropped {
            // Records appended after an unreadable one would never be replayed: the tail is
            // set aside (kept in the store, for a human), and the journal goes on from the
            // last record that replays.
            let moved = self.store.set_aside_journal_from(cut.seq)?;
            self.replayed.dropped = Some(format!("{cut}; {moved} records set aside"));
        }
        self.controller = replayer.controller;
        self.journal_records = self.replayed.records;
        if self.replayed.divergences > 0 {
            tracing::error!(
                divergences = self.replayed.divergences,
                "the journal replayed with divergent commands"
            );
        }
        Ok(())
    }

    /// After a restart: redo unfinished commands, reattach to running pods, discard the rest.
    pub fn reconcile(&mut self) -> anyhow::Result<()> {
        // Every pod on disk holds its ports until it is gone: claimed before any start is
        // redone, so a redone start cannot be handed a port a running pod still listens on.
        for (agent, instance) in self.driver.pods_on_disk() {
            self.driver.adopt_port(agent, instance);
        }
        self.driver.claim_standby_ports();
        let redo: Vec<Command> = self.in_flight.values().cloned().collect();
        let mut touched = std::collections::BTreeSet::new();
        for command in redo {
            if let Some(agent) = command.agent()
                && let Command::Start { instance, .. } | Command::Stop { instance, .. } = &command
            {
                touched.insert((agent, *instance));
            }
            self.execute(command);
        }
        for (agent, instance) in self.driver.pods_on_disk() {
            if touched.contains(&(agent, instance)) {
                continue;
            }
            let current = self.controller.agent(agent).is_some_and(|view| {
                view.instance == instance
                    && !matches!(view.status, AgentStatus::Queued | AgentStatus::Parked)
            });
            if current {
                self.driver.adopt_port(agent, instance);
                let after = self
                    .cursors
                    .get(&agent)
                    .filter(|c| c.instance == instance)
                    .map_or(0, |c| c.seq);
                self.driver.watch(agent, instance, after);
            } else {
                tracing::info!(%agent, %instance, "discarding a pod the engine no longer wants");
                self.driver.discard(agent, instance);
            }
        }
        let warming = self
            .in_flight
            .values()
            .filter_map(|c| match c {
                Command::WarmUp { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        self.driver.reattach_standbys(&warming);
        Ok(())
    }
}
