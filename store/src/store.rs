//! The store itself: one redb file with four tables.
//!
//! | table        | key            | value                                                  |
//! |--------------|----------------|--------------------------------------------------------|
//! | `store_info` | name           | `format_version` (u32 LE), `epoch_unix_ms` (u64 LE)    |
//! | `meta`       | name           | the daemon's own bytes                                 |
//! | `desired`    | (kind, id)     | JSON of the desired-state record                       |
//! | `journal`    | sequence (1..) | a [`JournalRecord`] in its envelope                    |
//! | `set_aside`  | (cut, seq)     | the raw bytes of records cut from the journal's tail   |
//!
//! Table names and key and value types are part of [`FORMAT_VERSION`] 1: changing any of them
//! needs a new format version and a migration.

use crate::FORMAT_VERSION;
use crate::batch::{Batch, Change, CommitInfo, validate_key};
use crate::error::StoreError;
use crate::record::{DecodeError, JournalRecord};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

const STORE_INFO: TableDefinition<&str, &[u8]> = TableDefinition::new("store_info");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const DESIRED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("desired");
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
/// Added to format 1 without changing it: a release that does not know it never opens it.
const SET_ASIDE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("set_aside");

const FORMAT_VERSION_KEY: &str = "format_version";
const EPOCH_KEY: &str = "epoch_unix_ms";

/// redb's page cache. Its default (1 GiB) suits a database server; the daemon reads the journal
/// once, front to back, on start, and otherwise only appends.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// An open store. One process at a time: opening a file another process holds fails.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
    epoch_unix_ms: u64,
    /// Sequence number of the last journal record, 0 when empty. Cached because this handle is
    /// the only writer (redb locks the file), and updated only after a commit succeeded.
    last_seq: u64,
}

/// A page of the journal, read by [`Store::read_journal`].
#[derive(Clone, Debug, PartialEq)]
pub struct JournalRead {
    /// Records in sequence order, with their sequence numbers: dense from the first asked for.
    pub records: Vec<(u64, JournalRecord)>,
    /// Why the read stopped before its limit and before the end of the journal, if it did.
    pub dropped: Option<Dropped>,
}

/// Where and why a journal read stopped early. Every record before `seq` was returned; nothing
/// at or after it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub seq: u64,
    pub reason: DropReason,
}

/// Why a journal record could not be returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// The record's bytes are not a record this release can use.
    #[error(transparent)]
    Undecodable(DecodeError),
    /// No record under this sequence number although later ones exist.
    #[error("no record under this sequence number, though later ones exist")]
    Missing,
}

impl Store {
    /// Opens the store at `path`, creating it if the file does not exist or is empty.
    ///
    /// A new store records `epoch_if_new_unix_ms` (wall-clock ms since the Unix epoch, read by
    /// the caller: the store reads no clock) as its epoch, the zero of the engine times in its
    /// journal; an existing store keeps the epoch it was created with and ignores the argument.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the file is not a redb database or is held by another process,
    /// [`StoreError::NotAStore`] for some other redb database, [`StoreError::NewerFormat`] for a
    /// store written by a newer release, [`StoreError::Database`] for I/O failures.
    pub fn open(path: &Path, epoch_if_new_unix_ms: u64) -> Result<Store, StoreError> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        let epoch_unix_ms = match read_epoch(&db, path)? {
            Some(epoch) => epoch,
            None => initialize(&db, path, epoch_if_new_unix_ms)?,
        };
        let last_seq = read_last_seq(&db, path)?;
        Ok(Store {
            db,
            path: path.to_owned(),
            epoch_unix_ms,
            last_seq,
        })
    }

    /// Closes the file, reporting any error that dropping the store would ignore.
    ///
    /// # Errors
    /// [`StoreError::Database`] if redb fails to close the file cleanly.
    pub fn close(self) -> Result<(), StoreError> {
        let Store { db, path, .. } = self;
        db.close().map_err(fail(&path, "close"))
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wall-clock ms since the Unix epoch at which engine time 0 falls, fixed when the store was
    /// created.
    #[must_use]
    pub fn epoch_unix_ms(&self) -> u64 {
        self.epoch_unix_ms
    }

    /// Sequence number of the last journal record; 0 for an empty journal.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Records in the journal, counted in the file.
    ///
    /// # Errors
    /// [`StoreError::Database`] if the file cannot be read.
    pub fn journal_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(self.fail("begin read"))?;
        let journal = txn.open_table(JOURNAL).map_err(self.fail("open journal"))?;
        journal.len().map_err(self.fail("count journal"))
    }

    /// Applies `batch` in one write transaction: every change and journal record, or none.
    /// Durable when this returns `Ok` (the commit is fsynced).
    ///
    /// # Errors
    /// The first error met while building the batch (nothing is written), or a
    /// [`StoreError::Database`] from redb (the transaction is aborted: nothing is written).
    pub fn commit(&mut self, batch: Batch) -> Result<CommitInfo, StoreError> {
        let (changes, records) = batch.into_parts()?;
        let first = self.last_seq + 1;
        let end = first + records.len() as u64;
        if changes.is_empty() && records.is_empty() {
            return Ok(CommitInfo { seqs: first..first });
        }
        // An error below drops `txn` uncommitted, which aborts it.
        let txn = self.db.begin_write().map_err(self.fail("begin write"))?;
        self.apply_changes(&txn, changes)?;
        self.append_records(&txn, first, &records)?;
        txn.commit().map_err(self.fail("commit"))?;
        self.last_seq = end - 1;
        Ok(CommitInfo { seqs: first..end })
    }

    /// Moves every journal record from `from_seq` on out of the journal, into a table of its
    /// own where its bytes are kept for a human to look at, and returns how many moved. A
    /// replay stops at a record it cannot read; records appended after it would never be
    /// replayed, so a daemon sets the unreadable tail aside before it appends again.
    ///
    /// # Errors
    /// [`StoreError::Database`] if the file cannot be written; nothing moves then.
    pub fn set_aside_journal_from(&mut self, from_seq: u64) -> Result<u64, StoreError> {
        let from = from_seq.max(1);
        let txn = self.db.begin_write().map_err(self.fail("begin write"))?;
        let moved = {
            let mut journal = txn.open_table(JOURNAL).map_err(self.fail("open journal"))?;
            let mut aside = txn
                .open_table(SET_ASIDE)
                .map_err(self.fail("open set_aside"))?;
            // Each cut is numbered by how many records the journal held: two cuts never
            // share keys.
            let cut = self.last_seq;
            let mut moved = 0u64;
            let tail: Vec<(u64, Vec<u8>)> = journal
                .range(from..)
                .map_err(self.fail("read journal"))?
                .map(|entry| entry.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()
                .map_err(self.fail("read journal"))?;
            for (seq, bytes) in tail {
                aside
                    .insert((cut, seq), bytes.as_slice())
                    .map_err(self.fail("set a record aside"))?;
                journal.remove(seq).map_err(self.fail("cut the journal"))?;
                moved += 1;
            }
            moved
        };
        txn.commit().map_err(self.fail("commit"))?;
        self.last_seq = self.last_seq.min(from - 1);
        Ok(moved)
    }

    /// Records set aside by [`set_aside_journal_from`](Self::set_aside_journal_from), ever.
    pub fn set_aside_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(self.fail("begin read"))?;
        match txn.open_table(SET_ASIDE) {
            Ok(table) => table.len().map_err(self.fail("count set_aside")),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(error) => Err(self.fail("open set_aside")(error)),
        }
    }

    /// Reads up to `limit` journal records from sequence number `from_seq` (1 is the first).
    ///
    /// A record that does not decode, or a missing sequence number, ends the read at the last
    /// good record and is reported in [`JournalRead::dropped`]; a replay must not skip a
    /// record, since every later decision depends on it.
    ///
    /// # Errors
    /// [`StoreError::Database`] if the file cannot be read.
    pub fn read_journal(&self, from_seq: u64, limit: usize) -> Result<JournalRead, StoreError> {
        let from = from_seq.max(1);
        let txn = self.db.begin_read().map_err(self.fail("begin read"))?;
        let journal = txn.open_table(JOURNAL).map_err(self.fail("open journal"))?;
        let entries = journal
            .range(from..)
            .map_err(self.fail("read journal"))?
            .take(limit);
        let mut records = Vec::with_capacity(limit.min(4096));
        let mut dropped = None;
        for (expected, entry) in (from..).zip(entries) {
            let (key, value) = entry.map_err(self.fail("read journal"))?;
            let decoded = if key.value() == expected {
                JournalRecord::decode(value.value()).map_err(DropReason::Undecodable)
            } else {
                Err(DropReason::Missing)
            };
            match decoded {
                Ok(record) => records.push((expected, record)),
                Err(reason) => {
                    dropped = Some(Dropped {
                        seq: expected,
                        reason,
                    });
                    break;
                }
            }
        }
        Ok(JournalRead { records, dropped })
    }

    /// Every desired-state record of `kind`, in id order.
    ///
    /// # Errors
    /// [`StoreError::DecodeDesired`] if a record does not decode as `T` (desired state is read
    /// whole or not at all: a silently missing agent would be stopped), or
    /// [`StoreError::Database`].
    pub fn desired<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<(u64, T)>, StoreError> {
        validate_key(kind)?;
        let txn = self.db.begin_read().map_err(self.fail("begin read"))?;
        let desired = txn.open_table(DESIRED).map_err(self.fail("open desired"))?;
        let range = desired
            .range((kind, 0)..=(kind, u64::MAX))
            .map_err(self.fail("read desired"))?;
        let mut out = Vec::new();
        for entry in range {
            let (key, value) = entry.map_err(self.fail("read desired"))?;
            let (_, id) = key.value();
            out.push((id, self.decode_desired(kind, id, value.value())?));
        }
        Ok(out)
    }

    /// Desired-state record `kind`/`id`, if there is one.
    ///
    /// # Errors
    /// As [`Store::desired`].
    pub fn desired_one<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: u64,
    ) -> Result<Option<T>, StoreError> {
        validate_key(kind)?;
        let txn = self.db.begin_read().map_err(self.fail("begin read"))?;
        let desired = txn.open_table(DESIRED).map_err(self.fail("open desired"))?;
        let value = desired.get((kind, id)).map_err(self.fail("read desired"))?;
        value
            .map(|value| self.decode_desired(kind, id, value.value()))
            .transpose()
    }

    /// The daemon's metadata under `key`, as last put by [`Batch::put_meta`].
    ///
    /// # Errors
    /// [`StoreError::InvalidKey`] or [`StoreError::Database`].
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        validate_key(key)?;
        let txn = self.db.begin_read().map_err(self.fail("begin read"))?;
        let meta = txn.open_table(META).map_err(self.fail("open meta"))?;
        let value = meta.get(key).map_err(self.fail("read meta"))?;
        Ok(value.map(|value| value.value().to_vec()))
    }

    fn apply_changes(
        &self,
        txn: &WriteTransaction,
        changes: Vec<Change>,
    ) -> Result<(), StoreError> {
        let mut desired = txn.open_table(DESIRED).map_err(self.fail("open desired"))?;
        let mut meta = txn.open_table(META).map_err(self.fail("open meta"))?;
        for change in changes {
            match change {
                Change::PutDesired { kind, id, value } => {
                    desired
                        .insert((kind.as_str(), id), value.as_slice())
                        .map_err(self.fail("write desired"))?;
                }
                Change::RemoveDesired { kind, id } => {
                    desired
                        .remove((kind.as_str(), id))
                        .map_err(self.fail("remove desired"))?;
                }
                Change::PutMeta { key, value } => {
                    meta.insert(key.as_str(), value.as_slice())
                        .map_err(self.fail("write meta"))?;
                }
            }
        }
        Ok(())
    }

    fn append_records(
        &self,
        txn: &WriteTransaction,
        first: u64,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut journal = txn.open_table(JOURNAL).map_err(self.fail("open journal"))?;
        for (seq, bytes) in (first..).zip(records) {
            let previous = journal
                .insert(seq, bytes.as_slice())
                .map_err(self.fail("append journal"))?;
            // The journal is append-only: overwriting a record would rewrite history. This can
            // only happen if a commit reported as failed was in fact written, leaving
            // `last_seq` behind; returning the error aborts the transaction, so the old record
            // stays and the caller reopens the store.
            if previous.is_some() {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    what: "journal".to_owned(),
                    detail: format!("sequence number {seq} is already taken"),
                });
            }
        }
        Ok(())
    }

    fn decode_desired<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: u64,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::DecodeDesired {
            path: self.path.clone(),
            kind: kind.to_owned(),
            id,
            source,
        })
    }

    fn fail<E: Into<redb::Error>>(&self, operation: &'static str) -> impl FnOnce(E) -> StoreError {
        fail(&self.path, operation)
    }
}

/// Wraps a redb error with the file and the operation.
fn fail<E: Into<redb::Error>>(
    path: &Path,
    operation: &'static str,
) -> impl FnOnce(E) -> StoreError {
    let path = path.to_owned();
    move |error| StoreError::Database {
        path,
        operation,
        source: Box::new(error.into()),
    }
}

/// The epoch of an existing store after checking its format, or `None` for a new (empty) file.
fn read_epoch(db: &Database, path: &Path) -> Result<Option<u64>, StoreError> {
    let txn = db.begin_read().map_err(fail(path, "begin read"))?;
    let mut tables = txn
        .list_tables()
        .map_err(fail(path, "list tables"))?
        .peekable();
    if tables.peek().is_none() {
        return Ok(None);
    }
    if !tables.any(|table| table.name() == STORE_INFO.name()) {
        return Err(StoreError::NotAStore {
            path: path.to_owned(),
        });
    }
    let info = txn
        .open_table(STORE_INFO)
        .map_err(fail(path, "open store_info"))?;
    let Some(version) = info
        .get(FORMAT_VERSION_KEY)
        .map_err(fail(path, "read format version"))?
    else {
        return Err(StoreError::NotAStore {
            path: path.to_owned(),
        });
    };
    let version = u32::from_le_bytes(fixed(path, FORMAT_VERSION_KEY, version.value())?);
    if version > FORMAT_VERSION {
        return Err(StoreError::NewerFormat {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(corrupt(
            path,
            FORMAT_VERSION_KEY,
            "version 0 was never written".to_owned(),
        ));
    }
    let epoch = info
        .get(EPOCH_KEY)
        .map_err(fail(path, "read epoch"))?
        .ok_or_else(|| corrupt(path, EPOCH_KEY, "missing".to_owned()))?;
    Ok(Some(u64::from_le_bytes(fixed(
        path,
        EPOCH_KEY,
        epoch.value(),
    )?)))
}

/// Lays out a new store: its format version, its epoch and every table, in one transaction, so a
/// crash during creation leaves an empty file that the next open initializes again.
fn initialize(db: &Database, path: &Path, epoch_unix_ms: u64) -> Result<u64, StoreError> {
    let txn = db.begin_write().map_err(fail(path, "begin write"))?;
    {
        let mut info = txn
            .open_table(STORE_INFO)
            .map_err(fail(path, "create store_info"))?;
        info.insert(FORMAT_VERSION_KEY, FORMAT_VERSION.to_le_bytes().as_slice())
            .map_err(fail(path, "write format version"))?;
        info.insert(EPOCH_KEY, epoch_unix_ms.to_le_bytes().as_slice())
            .map_err(fail(path, "write epoch"))?;
    }
    txn.open_table(META).map_err(fail(path, "create meta"))?;
    txn.open_table(DESIRED)
        .map_err(fail(path, "create desired"))?;
    txn.open_table(JOURNAL)
        .map_err(fail(path, "create journal"))?;
    txn.commit().map_err(fail(path, "commit new store"))?;
    Ok(epoch_unix_ms)
}

fn read_last_seq(db: &Database, path: &Path) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(fail(path, "begin read"))?;
    let journal = txn
        .open_table(JOURNAL)
        .map_err(fail(path, "open journal"))?;
    let last = journal
        .last()
        .map_err(fail(path, "read last journal record"))?;
    Ok(last.map_or(0, |(seq, _)| seq.value()))
}

/// A fixed-width little-endian integer from the store's bookkeeping.
fn fixed<const N: usize>(path: &Path, what: &str, bytes: &[u8]) -> Result<[u8; N], StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(path, what, format!("{} bytes, expected {N}", bytes.len())))
}

fn corrupt(path: &Path, what: &str, detail: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        what: what.to_owned(),
        detail,
    }
}
