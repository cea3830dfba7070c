//! A batch: the changes one [`Store::commit`](crate::Store::commit) applies all together.

use crate::error::StoreError;
use crate::record::JournalRecord;
use crate::{MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_KEY_BYTES, MAX_RECORD_BYTES};
use serde::Serialize;
use std::fmt;
use std::ops::Range;

/// Changes to apply in one write transaction: all of them, or none.
///
/// Values are encoded as they are added, so a batch holds only bytes and is checked against the
/// store's limits before it reaches the database. Adding never fails: the first problem (a
/// record over [`MAX_RECORD_BYTES`], a value that does not serialize, a bad key, a batch over
/// its own limits) is kept, later changes are ignored, and [`Store::commit`] refuses the whole
/// batch with that error, writing nothing. This keeps call sites a straight sequence of
/// additions while making a half-applied batch impossible.
///
/// Desired-state and metadata changes apply in the order they were added (a put then a remove
/// of the same id leaves it removed); journal records get consecutive sequence numbers in the
/// order they were appended.
///
/// [`Store::commit`]: crate::Store::commit
#[derive(Default)]
pub struct Batch {
    changes: Vec<Change>,
    records: Vec<Vec<u8>>,
    bytes: usize,
    error: Option<StoreError>,
}

/// One desired-state or metadata change, encoded: what a store of another backend (the
/// cluster's, in etcd) applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    PutDesired {
        kind: String,
        id: u64,
        value: Vec<u8>,
    },
    RemoveDesired {
        kind: String,
        id: u64,
    },
    PutMeta {
        key: String,
        value: Vec<u8>,
    },
}

/// What a commit did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Sequence numbers given to the batch's journal records, in append order; empty when the
    /// batch had none (then it starts at the next sequence number to be assigned).
    pub seqs: Range<u64>,
}

impl Batch {
    #[must_use]
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Appends a record to the journal.
    pub fn append(&mut self, record: &JournalRecord) -> &mut Batch {
        if self.error.is_none() {
            match record.encode() {
                Ok(bytes) => {
                    if self.admit(bytes.len()) {
                        self.records.push(bytes);
                    }
                }
                Err(error) => self.error = Some(error),
            }
        }
        self
    }

    /// Sets desired-state record `kind`/`id` to `value` (as JSON), replacing any previous one.
    pub fn put_desired<T: Serialize + ?Sized>(
        &mut self,
        kind: &str,
        id: u64,
        value: &T,
    ) -> &mut Batch {
        if self.error.is_none() && self.check_key(kind) {
            match encode_value(kind, id, value) {
                Ok(value) => {
                    if self.admit(kind.len() + value.len()) {
                        self.changes.push(Change::PutDesired {
                            kind: kind.to_owned(),
                            id,
                            value,
                        });
                    }
                }
                Err(error) => self.error = Some(error),
            }
        }
        self
    }

    /// Removes desired-state record `kind`/`id`; nothing happens if there is none.
    pub fn remove_desired(&mut self, kind: &str, id: u64) -> &mut Batch {
        if self.error.is_none() && self.check_key(kind) && self.admit(kind.len()) {
            self.changes.push(Change::RemoveDesired {
                kind: kind.to_owned(),
                id,
            });
        }
        self
    }

    /// Sets the daemon's metadata `key` to `value` (for example the last engine time, so time
    /// never goes backwards across restarts).
    pub fn put_meta(&mut self, key: &str, value: &[u8]) -> &mut Batch {
        if self.error.is_none()
            && self.check_key(key)
            && self.check_value_size(|| format!("metadata {key:?}"), value.len())
            && self.admit(key.len() + value.len())
        {
            self.changes.push(Change::PutMeta {
                key: key.to_owned(),
                value: value.to_vec(),
            });
        }
        self
    }

    /// No changes and no journal records.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.records.is_empty()
    }

    /// Journal records appended so far.
    #[must_use]
    pub fn journal_records(&self) -> usize {
        self.records.len()
    }

    /// The batch's parts — its changes in order and its encoded journal records — or the
    /// first error met while building it.
    ///
    /// # Errors
    /// The first error met while the batch was built.
    pub fn into_parts(self) -> Result<(Vec<Change>, Vec<Vec<u8>>), StoreError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok((self.changes, self.records)),
        }
    }

    /// Counts one more change of `bytes` against the batch's limits; records the error and
    /// returns false when it does not fit.
    fn admit(&mut self, bytes: usize) -> bool {
        let entries = self.changes.len() + self.records.len();
        if entries >= MAX_BATCH_ENTRIES {
            self.error = Some(StoreError::TooManyEntries {
                limit: MAX_BATCH_ENTRIES,
            });
            return false;
        }
        let total = self.bytes.saturating_add(bytes);
        if total > MAX_BATCH_BYTES {
            self.error = Some(StoreError::TooLarge {
                what: "batch".to_owned(),
                bytes: total,
                limit: MAX_BATCH_BYTES,
            });
            return false;
        }
        self.bytes = total;
        true
    }

    fn check_key(&mut self, key: &str) -> bool {
        match validate_key(key) {
            Ok(()) => true,
            Err(error) => {
                self.error = Some(error);
                false
            }
        }
    }

    fn check_value_size(&mut self, what: impl FnOnce() -> String, bytes: usize) -> bool {
        if bytes <= MAX_RECORD_BYTES {
            return true;
        }
        self.error = Some(StoreError::TooLarge {
            what: what(),
            bytes,
            limit: MAX_RECORD_BYTES,
        });
        false
    }
}

/// A desired-state value as stored: its JSON, within [`MAX_RECORD_BYTES`].
fn encode_value<T: Serialize + ?Sized>(
    kind: &str,
    id: u64,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Encode {
        what: format!("desired {kind}/{id}"),
        source,
    })?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge {
            what: format!("desired {kind}/{id}"),
            bytes: bytes.len(),
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(bytes)
}

/// Kinds and metadata keys are short names chosen by code.
pub(crate) fn validate_key(key: &str) -> Result<(), StoreError> {
    let why = if key.is_empty() {
        "empty"
    } else if key.len() > MAX_KEY_BYTES {
        "longer than MAX_KEY_BYTES"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidKey {
        key: key.chars().take(MAX_KEY_BYTES).collect(),
        why,
    })
}

impl fmt::Debug for Batch {
    // Counts rather than contents: a batch can hold megabytes of encoded records.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("changes", &self.changes.len())
            .field("journal_records", &self.records.len())
            .field("bytes", &self.bytes)
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::JournalEntry;
    use carapace_engine::Millis;

    #[test]
    fn the_first_error_poisons_the_batch() {
        let mut batch = Batch::new();
        batch
            .put_desired("agent", 1, &"ok")
            .put_desired("", 2, &"bad kind")
            .append(&JournalRecord::new(Millis(1), JournalEntry::Timeout));
        assert_eq!(
            batch.journal_records(),
            0,
            "changes after the error are ignored"
        );
        assert!(matches!(
            batch.into_parts(),
            Err(StoreError::InvalidKey { why: "empty", .. })
        ));
    }

    #[test]
    fn oversized_values_are_refused() {
        let big = "x".repeat(MAX_RECORD_BYTES + 1);
        let mut batch = Batch::new();
        batch.put_desired("agent", 1, &big);
        assert!(matches!(
            batch.into_parts(),
            Err(StoreError::TooLarge {
                limit: MAX_RECORD_BYTES,
                ..
            })
        ));
        let mut batch = Batch::new();
        batch.put_meta("k", big.as_bytes()).put_meta("k", b"x");
        assert!(batch.into_parts().is_err());
    }

    #[test]
    fn batches_are_bounded() {
        let mut batch = Batch::new();
        for id in 0..=MAX_BATCH_ENTRIES as u64 {
            batch.remove_desired("agent", id);
        }
        assert!(matches!(
            batch.into_parts(),
            Err(StoreError::TooManyEntries { .. })
        ));

        let chunk = "x".repeat(MAX_RECORD_BYTES - 16);
        let mut batch = Batch::new();
        for id in 0..=(MAX_BATCH_BYTES / chunk.len()) as u64 {
            batch.put_desired("agent", id, &chunk);
        }
        assert!(matches!(
            batch.into_parts(),
            Err(StoreError::TooLarge {
                limit: MAX_BATCH_BYTES,
                ..
            })
        ));
    }

    #[test]
    fn keys_are_bounded() {
        assert!(validate_key("agent").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }
}
