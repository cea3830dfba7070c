//! Replaying a journal through a fresh engine: what `carapace serve` does at every start, and
//! what `carapace replay` does on demand.
//!
//! A journal holds every accepted input, every timer firing and every command, in order. The
//! engine is deterministic, so feeding the inputs and firings again must issue the recorded
//! commands again, one for one. Where it does not, the journal was written by different
//! logic (another release, another policy) — and the first difference is what a user needs.

use carapace_engine::{Command, Controller, EngineConfig, EngineError};
use carapace_store::{JournalEntry, JournalRead, JournalRecord, Store};
use std::collections::VecDeque;

/// Journal records read per page.
pub const PAGE: usize = 4_096;

/// What one journal record did on replay.
#[derive(Debug)]
pub enum Step {
    /// An input or a timer firing, taken.
    Applied,
    /// An input the engine refused; the journal holds only accepted ones.
    Refused(EngineError),
    /// A recorded command the engine issued again.
    Matched(Command),
    /// A recorded command the engine did not issue (it issued `replayed` instead, or none).
    Diverged {
        recorded: Command,
        replayed: Option<Command>,
    },
    /// A record this release does not know.
    Unknown,
}

/// A fresh engine fed a journal, record by record.
#[derive(Debug)]
pub struct Replayer {
    pub controller: Controller,
    issued: VecDeque<Command>,
}

impl Replayer {
    pub fn new(policy: EngineConfig) -> Result<Replayer, carapace_engine::ConfigError> {
        Ok(Replayer {
            controller: Controller::new(policy)?,
            issued: VecDeque::new(),
        })
    }

    pub fn step(&mut self, record: &JournalRecord) -> Step {
        match &record.entry {
            JournalEntry::Input(input) => {
                let result = self.controller.handle(record.at, input.clone());
                self.drain();
                match result {
                    Ok(()) => Step::Applied,
                    Err(error) => Step::Refused(error),
                }
            }
            JournalEntry::Timeout => {
                let result = self.controller.handle_timeout(record.at);
                self.drain();
                match result {
                    Ok(()) => Step::Applied,
                    Err(error) => Step::Refused(error),
                }
            }
            JournalEntry::Command(recorded) => match self.issued.pop_front() {
                Some(replayed) if &replayed == recorded => Step::Matched(replayed),
                replayed => Step::Diverged {
                    recorded: recorded.clone(),
                    replayed,
                },
            },
            _ => Step::Unknown,
        }
    }

    /// Commands the engine issued that the journal does not hold (after the last record).
    pub fn unrecorded(&self) -> usize {
        self.issued.len()
    }

    /// The commands issued and not compared with a record yet, taken.
    pub fn take_issued(&mut self) -> Vec<Command> {
        self.issued.drain(..).collect()
    }

    fn drain(&mut self) {
        while let Some(command) = self.controller.poll_command() {
            self.issued.push_back(command);
        }
    }
}

/// Where a journal is read from: the redb file of one machine, or the cluster's store in
/// etcd.
pub trait JournalSource {
    /// Records from `from_seq` (1, or the one after the last of an earlier page) on, about
    /// `limit` of them.
    fn read_page(&self, from_seq: u64, limit: usize) -> anyhow::Result<JournalRead>;
    /// The daemon's metadata under `key`.
    fn meta_bytes(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>>;
}

impl JournalSource for Store {
    fn read_page(&self, from_seq: u64, limit: usize) -> anyhow::Result<JournalRead> {
        Ok(self.read_journal(from_seq, limit)?)
    }

    fn meta_bytes(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.meta(key)?)
    }
}

/// The policy a store's journal was recorded under, if it holds one.
pub fn recorded_policy(store: &impl JournalSource) -> anyhow::Result<Option<EngineConfig>> {
    Ok(store
        .meta_bytes("policy")?
        .map(|bytes| serde_json::from_slice(&bytes))
        .transpose()?)
}

/// Where a journal read stopped before its end: the first record it could not use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutShort {
    pub seq: u64,
    pub reason: String,
}

impl std::fmt::Display for CutShort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "journal record {} and after: {}", self.seq, self.reason)
    }
}

/// Every record of the journal from `seq` 1, page by page, until `visit` returns false; where
/// the read stopped early, if it did.
pub fn for_each_record(
    store: &impl JournalSource,
    mut visit: impl FnMut(u64, JournalRecord) -> bool,
) -> anyhow::Result<Option<CutShort>> {
    let mut next = 1;
    loop {
        let page = store.read_page(next, PAGE)?;
        let count = page.records.len();
        for (seq, record) in page.records {
            next = seq + 1;
            if !visit(seq, record) {
                return Ok(None);
            }
        }
        if let Some(dropped) = page.dropped {
            return Ok(Some(CutShort {
                seq: dropped.seq,
                reason: dropped.reason.to_string(),
            }));
        }
        if count < PAGE {
            return Ok(None);
        }
    }
}

/// A command's kind, as the event feed and replay reports name it.
pub fn command_kind(command: &Command) -> &'static str {
    match command {
        Command::Start { .. } => "start",
        Command::Stop { .. } => "stop",
        Command::TakeSnapshot { .. } => "snapshot",
        Command::Throttle { .. } => "throttle",
        Command::Alert(_) => "alert",
        Command::WarmUp { .. } => "warm_up",
        Command::ReportRollout { .. } => "rollout",
        Command::Reject { .. } => "reject",
        _ => "other",
    }
}
