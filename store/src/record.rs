//! Journal records and their byte format.
//!
//! A record is JSON in a versioned envelope: `{"v":1,"at":<engine ms>,"entry":<entry>}`, where
//! `<entry>` is `{"input":<Input>}`, `"timeout"` or `{"command":<Command>}` and the engine's
//! own serde representation of inputs and commands is used inside. JSON because a journal must
//! outlive the release that wrote it: it is self-describing, readable with any tool, and serde
//! gives every engine type a representation already. The envelope's `v` lets a later release
//! change the encoding while still reading this one, and lets this release recognise — and
//! refuse, rather than misread — a record written by a newer one.

use crate::MAX_RECORD_BYTES;
use crate::error::StoreError;
use carapace_engine::{Command, Input, Millis};
use serde::{Deserialize, Serialize};

/// Version of the record envelope this release writes, and the newest it reads.
pub const RECORD_VERSION: u32 = 1;

/// One journaled event, with the engine time it happened at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// Engine time: milliseconds since the daemon's epoch ([`Store::epoch_unix_ms`]).
    ///
    /// [`Store::epoch_unix_ms`]: crate::Store::epoch_unix_ms
    pub at: Millis,
    pub entry: JournalEntry,
}

/// What happened. Replaying `Input` and `Timeout` entries, in order, through a fresh
/// `Controller` rebuilds its state; `Command` entries are what it decided, for checking a
/// replay and for reading an incident off the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JournalEntry {
    /// An input fed to `Controller::handle`.
    Input(Input),
    /// A timer firing: `Controller::handle_timeout` was called.
    Timeout,
    /// A command the controller issued.
    Command(Command),
}

/// Why bytes stored as a journal record are not a record this release can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than [`MAX_RECORD_BYTES`]: this release never writes such a record.
    #[error("record is {bytes} bytes, over the {limit}-byte limit")]
    Oversized { bytes: usize, limit: usize },
    /// Written by a newer release, in an envelope version this one does not know.
    #[error("record format v{found} is newer than this release reads (v{supported})")]
    NewerVersion { found: u64, supported: u32 },
    /// Not a record: corrupt bytes, a missing field, or an entry this release does not know.
    #[error("record does not decode: {detail}")]
    Malformed { detail: String },
}

// Field order is the byte order of the encoding; `v` first so a reader sees it before anything
// it may not understand.
#[derive(Serialize)]
struct EnvelopeOut<'a> {
    v: u32,
    at: Millis,
    entry: &'a JournalEntry,
}

#[derive(Deserialize)]
struct EnvelopeV1 {
    v: u64,
    at: Millis,
    entry: JournalEntry,
}

/// Only the version, to explain why a full decode failed.
#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

impl JournalRecord {
    #[must_use]
    pub fn new(at: Millis, entry: JournalEntry) -> JournalRecord {
        JournalRecord { at, entry }
    }

    /// The record's bytes as stored in the journal.
    ///
    /// # Errors
    /// [`StoreError::TooLarge`] when the encoding exceeds [`MAX_RECORD_BYTES`];
    /// [`StoreError::Encode`] if serialization fails.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let envelope = EnvelopeOut {
            v: RECORD_VERSION,
            at: self.at,
            entry: &self.entry,
        };
        let bytes = serde_json::to_vec(&envelope).map_err(|source| StoreError::Encode {
            what: "journal record".to_owned(),
            source,
        })?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(StoreError::TooLarge {
                what: "journal record".to_owned(),
                bytes: bytes.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        Ok(bytes)
    }

    /// Decodes stored record bytes. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// A [`DecodeError`] saying why the bytes are not a record this release can use.
    pub fn decode(bytes: &[u8]) -> Result<JournalRecord, DecodeError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(DecodeError::Oversized {
                bytes: bytes.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        // One parse in the common case; the version is probed only to explain a failure.
        match serde_json::from_slice::<EnvelopeV1>(bytes) {
            Ok(envelope) => check_version(envelope.v).map(|()| JournalRecord {
                at: envelope.at,
                entry: envelope.entry,
            }),
            Err(error) => match serde_json::from_slice::<VersionProbe>(bytes) {
                Ok(probe) => check_version(probe.v).and(Err(malformed(&error))),
                Err(_) => Err(malformed(&error)),
            },
        }
    }
}

/// Accepts exactly the versions this release reads. A newer version is refused even when its
/// bytes happen to parse: its fields may mean something else.
fn check_version(found: u64) -> Result<(), DecodeError> {
    if found == u64::from(RECORD_VERSION) {
        Ok(())
    } else if found > u64::from(RECORD_VERSION) {
        Err(DecodeError::NewerVersion {
            found,
            supported: RECORD_VERSION,
        })
    } else {
        Err(DecodeError::Malformed {
            detail: format!("unknown record format v{found}"),
        })
    }
}

fn malformed(error: &serde_json::Error) -> DecodeError {
    DecodeError::Malformed {
        detail: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carapace_engine::{AgentId, Instance};

    fn sample() -> JournalRecord {
        JournalRecord::new(
            Millis(42),
            JournalEntry::Input(Input::ProbeSucceeded {
                agent: AgentId(3),
                instance: Instance(1),
            }),
        )
    }

    #[test]
    fn encoding_is_the_documented_envelope() {
        let bytes = sample().encode().unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"v":1,"at":42,"entry":{"input":{"kind":"probe_succeeded","agent":3,"instance":1}}}"#
        );
        let timeout = JournalRecord::new(Millis(7), JournalEntry::Timeout);
        assert_eq!(
            timeout.encode().unwrap(),
            br#"{"v":1,"at":7,"entry":"timeout"}"#
        );
    }

    #[test]
    fn newer_version_is_reported_as_such_even_when_it_parses() {
        let parses = br#"{"v":2,"at":42,"entry":"timeout"}"#;
        let does_not = br#"{"v":3,"at":"soon","entry":{"telepathy":{}}}"#;
        for (bytes, found) in [(&parses[..], 2), (&does_not[..], 3)] {
            assert_eq!(
                JournalRecord::decode(bytes),
                Err(DecodeError::NewerVersion {
                    found,
                    supported: RECORD_VERSION
                })
            );
        }
    }

    #[test]
    fn garbage_and_unknown_entries_are_malformed() {
        for bytes in [
            &b""[..],
            b"\xff\x00garbage",
            br#"{"at":1,"entry":"timeout"}"#,
            br#"{"v":0,"at":1,"entry":"timeout"}"#,
            br#"{"v":1,"at":1,"entry":"teleport"}"#,
            br#"{"v":1,"at":1,"entry":{"input":{"kind":"agent_started","agent":-1}}}"#,
        ] {
            assert!(
                matches!(
                    JournalRecord::decode(bytes),
                    Err(DecodeError::Malformed { .. })
                ),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn oversized_bytes_are_refused_before_parsing() {
        let bytes = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(
            JournalRecord::decode(&bytes),
            Err(DecodeError::Oversized {
                bytes: MAX_RECORD_BYTES + 1,
                limit: MAX_RECORD_BYTES
            })
        );
    }
}
