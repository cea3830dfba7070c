//! Where the daemon keeps what it must not lose: a redb file on one machine, or etcd for a
//! cluster's controllers. The same batches, the same journal, the same replay.

use crate::cli::journal::JournalSource;
use carapace_cluster::journal::{EtcdJournal, JournalError};
use carapace_store::{Batch, CommitInfo, JournalRead, Store, StoreError};
use serde::de::DeserializeOwned;
use std::time::Duration;

#[derive(Debug)]
pub enum Durable {
    Local(Store),
    Cluster(EtcdJournal),
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Local(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] JournalError),
}

impl CommitError {
    /// Whether this controller no longer leads: nothing it writes will be accepted again.
    pub fn deposed(&self) -> bool {
        matches!(self, CommitError::Cluster(JournalError::Deposed { .. }))
    }
}

/// How long a cluster commit waits between tries while etcd does not answer.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Durable {
    pub fn epoch_unix_ms(&self) -> u64 {
        match self {
            Durable::Local(store) => store.epoch_unix_ms(),
            Durable::Cluster(journal) => journal.epoch_unix_ms(),
        }
    }

    /// Commits `batch`. In a cluster, a commit that etcd does not answer is tried again until
    /// it is settled — applied, or refused because another controller leads: while etcd has
    /// no quorum the leader makes no decision, which is what a leader without a store must do.
    ///
    /// # Errors
    /// The batch's own errors, and [`CommitError::deposed`] ones.
    pub fn commit(&mut self, batch: Batch) -> Result<CommitInfo, CommitError> {
        match self {
            Durable::Local(store) => Ok(store.commit(batch)?),
            Durable::Cluster(journal) => {
                let mut wait = RETRY_FIRST;
                let mut pending = journal.prepare(batch)?;
                loop {
                    match journal.try_commit(&mut pending) {
                        Ok(info) => return Ok(info),
                        Err(JournalError::Etcd(error)) => {
                            tracing::warn!(%error, "etcd did not take a commit; trying again");
                            std::thread::sleep(wait);
                            wait = (wait * 2).min(RETRY_MAX);
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
            }
        }
    }

    /// Every desired-state record of `kind`, decoded, in id order.
    pub fn desired<T: DeserializeOwned>(&self, kind: &str) -> anyhow::Result<Vec<(u64, T)>> {
        match self {
            Durable::Local(store) => Ok(store.desired(kind)?),
            Durable::Cluster(journal) => journal
                .desired_raw(kind)?
                .into_iter()
                .map(|(id, bytes)| {
                    serde_json::from_slice(&bytes)
                        .map(|value| (id, value))
                        .map_err(|e| anyhow::anyhow!("desired {kind}/{id} in etcd: {e}"))
                })
                .collect(),
        }
    }

    pub fn meta(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Durable::Local(store) => Ok(store.meta(key)?),
            Durable::Cluster(journal) => Ok(journal.meta(key)?),
        }
    }

    /// Sets an unreadable journal tail aside (see [`Store::set_aside_journal_from`]). A
    /// cluster's journal is not cut by a controller: it refuses to lead instead, so that a
    /// human looks at what another release wrote.
    pub fn set_aside_journal_from(&mut self, seq: u64) -> anyhow::Result<u64> {
        match self {
            Durable::Local(store) => Ok(store.set_aside_journal_from(seq)?),
            Durable::Cluster(_) => Err(anyhow::anyhow!(
                "the cluster's journal in etcd has a record this release cannot replay at \
                 sequence {seq}; refusing to lead on a journal cut short"
            )),
        }
    }

    /// What `carapace replay` takes to read this journal, when it can.
    pub fn replay_path(&self) -> Option<&std::path::Path> {
        match self {
            Durable::Local(store) => Some(store.path()),
            Durable::Cluster(_) => None,
        }
    }
}

impl JournalSource for Durable {
    fn read_page(&self, from_seq: u64, limit: usize) -> anyhow::Result<JournalRead> {
        match self {
            Durable::Local(store) => Ok(store.read_journal(from_seq, limit)?),
            Durable::Cluster(journal) => Ok(journal.read_journal(from_seq, limit)?),
        }
    }

    fn meta_bytes(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.meta(key)
    }
}
