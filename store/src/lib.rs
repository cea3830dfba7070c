//! Carapace's durable store: everything `carapace serve` must not lose, in one redb file.
//!
//! Two things live here:
//!
//! - **Desired state** — what the operator asked for (agent specs and how to run them), as
//!   typed records under a `kind` and a `u64` id. The store does not know the daemon's types;
//!   it keeps JSON bytes and hands them back in id order.
//! - **The journal** — an append-only log of every engine input, every timer firing and every
//!   command, each with its engine time ([`Millis`](carapace_engine::Millis)). Records are keyed
//!   by dense sequence numbers from 1.
//!
//! # Why a journal of inputs, not a snapshot of engine state
//!
//! The engine is deterministic: the same inputs at the same times produce the same commands on
//! every machine. So the inputs *are* the state — replaying the journal through a fresh
//! `Controller` rebuilds exactly the controller that was running, down to its timers, its
//! restart budgets and its random stream. A snapshot of engine state could not promise that:
//! it would need its own format for every internal structure, would drift whenever those
//! structures change, and could not be fed to the simulator to ask "why did production decide
//! this?". The journal can: the very records that recover the daemon after a `kill -9` replay a
//! production incident in the simulator. The commands are journaled too, so a replay can check
//! that it decided what production decided, and a post-mortem can be read straight off the file.
//!
//! # Atomicity and durability
//!
//! Every change goes through a [`Batch`] and [`Store::commit`], which applies it in one redb
//! write transaction, durable when `commit` returns (redb's default immediate durability: the
//! commit is fsynced). An API call that creates an agent puts its spec *and* journals the
//! `CreateAgent` input in one batch, so after a crash either both are there or neither is. A
//! batch that cannot be applied — a record too large, a value that does not serialize — is
//! refused whole, before anything is written.
//!
//! # Why redb
//!
//! Embedded (no server to run beside the daemon), ACID with a single writer, crash-safe by
//! design (copy-on-write B-trees with checksummed commits: a torn write is never visible), and a
//! stable, documented file format, so a journal written today stays readable by later releases.
//!
//! # Format
//!
//! The store's own layout carries a [`FORMAT_VERSION`], checked on open: a file written by a
//! newer release is refused rather than misread. Each journal record is JSON inside a small
//! versioned envelope, `{"v":1,"at":<ms>,"entry":{..}}`, decoded by [`JournalRecord::decode`];
//! a record that does not decode (corruption, or a newer release's record) ends a read at the
//! last valid record and is reported, never a panic.
//!
//! The store reads no clock and draws no randomness: the daemon passes in the wall-clock epoch
//! on first creation ([`Store::open`]) and engine times with every record.

mod batch;
mod error;
mod record;
mod store;

pub use batch::{Batch, Change, CommitInfo};
pub use error::StoreError;
pub use record::{DecodeError, JournalEntry, JournalRecord, RECORD_VERSION};
pub use store::{DropReason, Dropped, JournalRead, Store};

/// Version of the store's layout (its tables and how values are encoded in them). Bumped when a
/// release changes the layout; [`Store::open`] refuses a file with a newer one.
pub const FORMAT_VERSION: u32 = 1;

/// Largest value the store writes or decodes: one encoded journal record, one desired-state
/// record or one metadata value. An agent spec is a few hundred bytes and the largest command
/// (an alert with its post-mortem timeline, which the engine bounds) a few tens of KiB, so this
/// is far above any legitimate record while keeping each one small enough to hold in memory.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Largest total size of one [`Batch`] (keys and values): one write transaction stays bounded
/// in memory and in the time it holds the writer.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// Most changes (journal records, puts, removes) one [`Batch`] may hold.
pub const MAX_BATCH_ENTRIES: usize = 65_536;

/// Longest desired-state `kind` or metadata key, in bytes. Keys are names chosen by the code,
/// not data; a long one is a bug.
pub const MAX_KEY_BYTES: usize = 128;
