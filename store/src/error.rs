//! The store's errors. Each names the file and the operation, because the daemon reports them
//! to an operator who must know which file to look at and what was being done to it. redb's
//! errors are boxed: they are large, and a `Result` is passed on every path, failing or not.

use std::path::PathBuf;

/// Anything that can go wrong opening, writing or reading a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be opened as a redb database: it is not one, it is damaged, it was
    /// written by a newer redb, or another process has it open.
    #[error("cannot open store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// A redb database, but not one this store created.
    #[error(
        "{} is a redb database but not a Carapace store (it has no store format version)",
        path.display()
    )]
    NotAStore { path: PathBuf },
    /// Written by a newer release in a layout this one does not know; opening it could misread
    /// or damage it.
    #[error(
        "store {} has format version {found}, newer than the {supported} this release reads: \
         run a newer carapace",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The store's own bookkeeping (format version, epoch) is present but unreadable.
    #[error("store {}: {what} is corrupt: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        what: String,
        detail: String,
    },
    /// A redb operation failed (I/O, corruption found while reading, a full disk).
    #[error("store {}: {operation} failed: {source}", path.display())]
    Database {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// A record over its size limit; refused before anything was written.
    #[error("{what} is {bytes} bytes, over the {limit}-byte limit")]
    TooLarge {
        what: String,
        bytes: usize,
        limit: usize,
    },
    /// A batch with more changes than [`MAX_BATCH_ENTRIES`](crate::MAX_BATCH_ENTRIES).
    #[error("batch has more than {limit} changes")]
    TooManyEntries { limit: usize },
    /// A desired-state kind or metadata key that is empty or too long.
    #[error("invalid key {key:?}: {why}")]
    InvalidKey { key: String, why: &'static str },
    /// A value that does not serialize to JSON.
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A desired-state record that does not decode as the type asked for.
    #[error("store {}: desired {kind}/{id} does not decode: {source}", path.display())]
    DecodeDesired {
        path: PathBuf,
        kind: String,
        id: u64,
        #[source]
        source: serde_json::Error,
    },
}
