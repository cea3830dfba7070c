//! The controller's durable store in etcd: the same desired state and journal that
//! `carapace serve` keeps in redb on one machine, written by the leader only, every write a
//! transaction fenced by its leadership.
//!
//! | key | value |
//! | --- | --- |
//! | `ROOT/store/epoch_unix_ms` | wall-clock ms at engine time 0, decimal |
//! | `ROOT/desired/KIND/ID` | the record's JSON (ID zero-padded to 20 digits) |
//! | `ROOT/meta/KEY` | the daemon's own bytes |
//! | `ROOT/journal/SEQ` | one commit's journal records, framed (SEQ: its first record's) |
//!
//! One commit is one etcd transaction: its journal records share one key, so a step that
//! issues a hundred commands still fits etcd's limit on operations per transaction, and a
//! new leader reads either the whole step or none of it. A record is framed as its length
//! (u32, little-endian) followed by its bytes.
//!
//! Fencing: every transaction compares the creation revision of the leader's election key.
//! A deposed leader — its lease expired while it was cut off, and another campaign won — has
//! every later write refused by etcd, however late it arrives.

use crate::etcd::{Client, EtcdError, Leadership, Revision, Txn};
use carapace_store::{
    Batch, Change, CommitInfo, DecodeError, DropReason, Dropped, JournalRead, JournalRecord,
    StoreError,
};
use std::sync::Arc;

/// etcd's default `--max-txn-ops`: a commit needs one operation per change, one for its
/// journal key and one comparison of its own.
pub const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB), with room for the request's envelope and
/// the gateway's base64 (4 bytes for every 3).
pub const MAX_COMMIT_BYTES: usize = 1024 * 1024;
/// Commit keys read per etcd request when the journal is read front to back.
const PAGE_KEYS: usize = 64;

/// Why the journal in etcd did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The leadership this store writes under is gone: etcd refused the write.
    #[error(
        "etcd refused a write fenced by leadership revision {revision}: another controller \
         leads now"
    )]
    Deposed { revision: Revision },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key in the store's keyspace holds bytes it cannot use.
    #[error("etcd key {key}: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("a commit of {ops} operations, {bytes} bytes is over etcd's limits per transaction")]
    TooLarge { ops: usize, bytes: usize },
}

/// A commit checked and framed, not yet applied.
#[derive(Debug)]
pub struct Pending {
    changes: Vec<Change>,
    framed: Vec<u8>,
    records: u64,
    tried: bool,
}

/// The leader's store in etcd.
#[derive(Debug)]
pub struct EtcdJournal {
    client: Arc<Client>,
    root: String,
    leadership: Leadership,
    epoch_unix_ms: u64,
    last_seq: u64,
}

impl EtcdJournal {
    /// Opens the store under `root` for the holder of `leadership`, recording
    /// `epoch_if_new_unix_ms` as the epoch of a store that has none yet.
    ///
    /// # Errors
    /// etcd errors, [`JournalError::Deposed`], or a store whose keys do not decode.
    pub fn open(
        client: Arc<Client>,
        root: &str,
        leadership: Leadership,
        epoch_if_new_unix_ms: u64,
    ) -> Result<EtcdJournal, JournalError> {
        let mut journal = EtcdJournal {
            client,
            root: root.to_owned(),
            leadership,
            epoch_unix_ms: epoch_if_new_unix_ms,
            last_seq: 0,
        };
        let epoch_key = journal.epoch_key();
        match journal.client.get(&epoch_key)? {
            Some(kv) => journal.epoch_unix_ms = decimal(&epoch_key, &kv.value)?,
            None => {
                let value = epoch_if_new_unix_ms.to_string();
                let txn = journal.fenced().when_absent(epoch_key.as_bytes()).put(
                    epoch_key.as_bytes(),
                    value.as_bytes(),
                    None,
                );
                if !journal.client.txn(txn)?.succeeded {
                    // Another leader wrote it first, or this one is deposed: read again.
                    let kv = journal
                        .client
                        .get(&epoch_key)?
                        .ok_or(JournalError::Deposed {
                            revision: journal.leadership.revision,
                        })?;
                    journal.epoch_unix_ms = decimal(&epoch_key, &kv.value)?;
                }
            }
        }
        if let Some(last) = journal.client.last_under(&journal.journal_prefix())? {
            let first = journal.seq_of(last.key_str())?;
            let records = unframe(last.key_str(), &last.value)?;
            journal.last_seq = first + records.len() as u64 - 1;
        }
        Ok(journal)
    }

    #[must_use]
    pub fn epoch_unix_ms(&self) -> u64 {
        self.epoch_unix_ms
    }

    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    #[must_use]
    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Applies `batch` in one transaction fenced by this store's leadership.
    ///
    /// # Errors
    /// As [`prepare`](Self::prepare) and [`try_commit`](Self::try_commit).
    pub fn commit(&mut self, batch: Batch) -> Result<CommitInfo, JournalError> {
        let mut pending = self.prepare(batch)?;
        self.try_commit(&mut pending)
    }

    /// Checks `batch` against etcd's limits and frames its records, writing nothing.
    ///
    /// # Errors
    /// The batch's own error, or [`JournalError::TooLarge`].
    pub fn prepare(&self, batch: Batch) -> Result<Pending, JournalError> {
        let (changes, records) = batch.into_parts()?;
        let ops = changes.len() + usize::from(!records.is_empty()) + 1;
        let framed = frame(&records);
        let bytes = framed.len() + changes.iter().map(change_bytes).sum::<usize>();
        if ops > MAX_TXN_OPS || bytes > MAX_COMMIT_BYTES {
            return Err(JournalError::TooLarge { ops, bytes });
        }
        Ok(Pending {
            changes,
            framed,
            records: records.len() as u64,
            tried: false,
        })
    }

    /// Tries to apply `pending`; may be called again with the same `pending` after an etcd
    /// error, which leaves it unknown whether the write happened: a retry finds out.
    ///
    /// # Errors
    /// [`JournalError::Deposed`] when etcd refused the fence, or an etcd error.
    pub fn try_commit(&mut self, pending: &mut Pending) -> Result<CommitInfo, JournalError> {
        let first = self.last_seq + 1;
        let end = first + pending.records;
        if pending.changes.is_empty() && pending.records == 0 {
            return Ok(CommitInfo { seqs: first..first });
        }
        let mut txn = self.fenced();
        for change in &pending.changes {
            txn = match change {
                Change::PutDesired { kind, id, value } => {
                    txn.put(self.desired_key(kind, *id).as_bytes(), value, None)
                }
                Change::RemoveDesired { kind, id } => {
                    txn.delete(self.desired_key(kind, *id).as_bytes())
                }
                Change::PutMeta { key, value } => {
                    txn.put(self.meta_key(key).as_bytes(), value, None)
                }
            };
        }
        let journal_key = self.journal_key(first);
        if pending.records > 0 {
            // Append-only: a commit never overwrites another's records.
            txn = txn.when_absent(journal_key.as_bytes()).put(
                journal_key.as_bytes(),
                &pending.framed,
                None,
            );
        }
        let retry = pending.tried;
        pending.tried = true;
        let succeeded = self.client.txn(txn)?.succeeded;
        // A retried commit whose records are there already was applied by the try whose
        // answer was lost (only this leader appends, and only this commit is at `first`).
        let applied_before = !succeeded
            && retry
            && pending.records > 0
            && self
                .client
                .get(&journal_key)?
                .is_some_and(|kv| kv.value == pending.framed);
        if !succeeded && !applied_before {
            return Err(JournalError::Deposed {
                revision: self.leadership.revision,
            });
        }
        self.last_seq = end - 1;
        Ok(CommitInfo { seqs: first..end })
    }

    /// Every desired-state record of `kind` as JSON bytes, in id order.
    ///
    /// # Errors
    /// etcd errors, or a key whose id does not parse.
    pub fn desired_raw(&self, kind: &str) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
        let prefix = format!("{}desired/{kind}/", self.root);
        let mut out = Vec::new();
        self.for_each_key(&prefix, prefix.as_bytes(), |key, value| {
            let id = key
                .strip_prefix(&prefix)
                .and_then(|id| id.parse::<u64>().ok())
                .ok_or_else(|| JournalError::Corrupt {
                    key: key.to_owned(),
                    detail: "not a desired-state key".into(),
                })?;
            out.push((id, value.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The daemon's metadata under `key`.
    ///
    /// # Errors
    /// etcd errors.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self.client.get(&self.meta_key(key))?.map(|kv| kv.value))
    }

    /// Up to about `limit` records from `from_seq`, which is 1 or the sequence number after the
    /// last record of an earlier read: reads return whole commits, so a page may run past
    /// `limit` by the rest of its last commit.
    ///
    /// # Errors
    /// etcd errors. A commit that does not decode, or a gap, ends the read and is reported
    /// in [`JournalRead::dropped`], as the redb store does.
    pub fn read_journal(&self, from_seq: u64, limit: usize) -> Result<JournalRead, JournalError> {
        let from = from_seq.max(1);
        let mut records = Vec::new();
        let mut expected = from;
        let mut dropped = None;
        let start = self.journal_key(from).into_bytes();
        self.for_each_key(&self.journal_prefix(), &start, |key, value| {
            let reason = if self.seq_of(key)? == expected {
                match decode_commit(key, value) {
                    Ok(decoded) => {
                        for record in decoded {
                            records.push((expected, record));
                            expected += 1;
                        }
                        return Ok(records.len() < limit);
                    }
                    Err(error) => DropReason::Undecodable(error),
                }
            } else {
                DropReason::Missing
            };
            dropped = Some(Dropped {
                seq: expected,
                reason,
            });
            Ok(false)
        })?;
        Ok(JournalRead { records, dropped })
    }

    /// A transaction that applies only while this store's leadership holds.
    fn fenced(&self) -> Txn {
        Txn::new().when_created_at(&self.leadership.key, self.leadership.revision)
    }

    /// Visits the keys under `prefix` from `from` on, in key order and all at one revision,
    /// page by page, while `visit` answers true.
    fn for_each_key(
        &self,
        prefix: &str,
        from: &[u8],
        mut visit: impl FnMut(&str, &[u8]) -> Result<bool, JournalError>,
    ) -> Result<(), JournalError> {
        let mut start = from.to_vec();
        let mut revision = None;
        loop {
            let page = self.client.list_page(prefix, &start, PAGE_KEYS, revision)?;
            revision = Some(page.revision);
            for kv in &page.kvs {
                if !visit(kv.key_str(), &kv.value)? {
                    return Ok(());
                }
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    start = last.key.clone();
                    start.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    fn epoch_key(&self) -> String {
        format!("{}store/epoch_unix_ms", self.root)
    }

    fn desired_key(&self, kind: &str, id: u64) -> String {
        format!("{}desired/{kind}/{id:020}", self.root)
    }

    fn meta_key(&self, key: &str) -> String {
        format!("{}meta/{key}", self.root)
    }

    fn journal_prefix(&self) -> String {
        format!("{}journal/", self.root)
    }

    fn journal_key(&self, seq: u64) -> String {
        format!("{}journal/{seq:020}", self.root)
    }

    fn seq_of(&self, key: &str) -> Result<u64, JournalError> {
        key.strip_prefix(&self.journal_prefix())
            .and_then(|seq| seq.parse().ok())
            .filter(|seq| *seq > 0)
            .ok_or_else(|| JournalError::Corrupt {
                key: key.to_owned(),
                detail: "not a journal key".into(),
            })
    }
}

fn change_bytes(change: &Change) -> usize {
    match change {
        Change::PutDesired { kind, value, .. } => kind.len() + 20 + value.len(),
        Change::RemoveDesired { kind, .. } => kind.len() + 20,
        Change::PutMeta { key, value } => key.len() + value.len(),
    }
}

/// Records framed one after another: each its length (u32 LE), then its bytes.
fn frame(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 4).sum());
    for record in records {
        let len = u32::try_from(record.len()).expect("invariant: a record is under 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(record);
    }
    out
}

/// The records of one commit; an error names the key when the framing does not add up.
fn unframe<'a>(key: &str, mut bytes: &'a [u8]) -> Result<Vec<&'a [u8]>, JournalError> {
    let corrupt = |detail: &str| JournalError::Corrupt {
        key: key.to_owned(),
        detail: detail.to_owned(),
    };
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("a record's length is cut short"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(corrupt("a record is cut short"));
        }
        let (record, rest) = rest.split_at(len);
        records.push(record);
        bytes = rest;
    }
    if records.is_empty() {
        return Err(corrupt("a commit without records"));
    }
    Ok(records)
}

/// The records of one commit, or why they are not records.
fn decode_commit(key: &str, bytes: &[u8]) -> Result<Vec<JournalRecord>, DecodeError> {
    let frames = unframe(key, bytes).map_err(|error| DecodeError::Malformed {
        detail: error.to_string(),
    })?;
    frames.into_iter().map(JournalRecord::decode).collect()
}

fn decimal(key: &str, bytes: &[u8]) -> Result<u64, JournalError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| JournalError::Corrupt {
            key: key.to_owned(),
            detail: "not a decimal number".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn framing_round_trips(records in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
            let framed = frame(&records);
            let back = unframe("k", &framed).unwrap();
            prop_assert_eq!(back, records.iter().map(Vec::as_slice).collect::<Vec<_>>());
        }

        #[test]
        fn cut_framing_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unframe("k", &bytes);
        }
    }

    #[test]
    fn a_truncated_commit_names_its_key() {
        let framed = frame(&[b"abcdef".to_vec()]);
        let error = unframe("/r/journal/1", &framed[..7]).unwrap_err();
        assert!(error.to_string().contains("/r/journal/1"), "{error}");
    }
}
