//! A watch: etcd's stream of changes under a prefix, read as the gateway sends it (one JSON
//! object per line, as long as the connection lives).

use super::wire;
use super::{EtcdError, KeyValue, Revision, key_value};
use std::io::{BufRead, BufReader, Read};

/// One change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// The key is gone (deleted, or its lease expired); the value is empty.
    Delete(KeyValue),
}

impl WatchEvent {
    pub fn key_value(&self) -> &KeyValue {
        match self {
            WatchEvent::Put(kv) | WatchEvent::Delete(kv) => kv,
        }
    }
}

/// The changes of one revision or more, in order, and the store revision after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

/// An open watch. [`Watch::next_batch`] blocks until etcd sends something; when the stream
/// ends or breaks it answers an error, and the caller watches again from
/// [`Watch::resume_from`], missing nothing.
pub struct Watch {
    lines: BufReader<Box<dyn Read + Send>>,
    endpoint: String,
    next: Revision,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("endpoint", &self.endpoint)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Watch {
    pub(super) fn new(reader: Box<dyn Read + Send>, endpoint: String, start: Revision) -> Watch {
        Watch {
            lines: BufReader::new(reader),
            endpoint,
            next: start,
        }
    }

    /// The revision to watch from again after this watch ends: one past the last change seen.
    pub fn resume_from(&self) -> Revision {
        self.next
    }

    /// The next changes. Frames with none (the creation notice, progress) are skipped.
    pub fn next_batch(&mut self) -> Result<WatchBatch, EtcdError> {
        loop {
            let mut line = String::new();
            let read = self
                .lines
                .read_line(&mut line)
                .map_err(|error| EtcdError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    detail: format!("the watch broke: {error}"),
                })?;
            if read == 0 {
                return Err(EtcdError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    detail: "the watch ended".into(),
                });
            }
            if line.trim().is_empty() {
                continue;
            }
            let frame: wire::WatchFrame =
                serde_json::from_str(&line).map_err(|error| EtcdError::Decode {
                    path: "/v3/watch".into(),
                    detail: error.to_string(),
                })?;
            if let Some(status) = frame.error {
                return Err(EtcdError::Refused {
                    code: status.code,
                    message: status.message,
                });
            }
            let Some(result) = frame.result else {
                continue;
            };
            if result.canceled {
                // A compacted start: the caller must list again, then watch from there.
                return Err(EtcdError::Refused {
                    code: 11,
                    message: format!(
                        "the watch was canceled (compacted up to revision {})",
                        result.compact_revision.0
                    ),
                });
            }
            if result.events.is_empty() {
                continue;
            }
            let events: Vec<WatchEvent> = result
                .events
                .into_iter()
                .map(|event| {
                    let deleted = event.kind.as_deref() == Some("DELETE");
                    let kv = key_value(event.kv);
                    if deleted {
                        WatchEvent::Delete(kv)
                    } else {
                        WatchEvent::Put(kv)
                    }
                })
                .collect();
            let last = events
                .iter()
                .map(|e| e.key_value().mod_revision)
                .max()
                .unwrap_or(self.next - 1);
            self.next = self.next.max(last + 1);
            return Ok(WatchBatch {
                revision: result.header.revision.0,
                events,
            });
        }
    }
}
