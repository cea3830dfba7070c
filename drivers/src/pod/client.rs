//! The daemon's side of a pod's control socket.

use super::{Numbered, PodDir, PodReply, PodRequest};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// Why a pod did not answer as asked.
#[derive(Debug, thiserror::Error)]
pub enum PodClientError {
    /// No supervisor answers: it is gone (or was never started).
    #[error("pod {dir}: no supervisor answers: {source}")]
    Unreachable { dir: String, source: std::io::Error },
    #[error("pod {dir}: {message}")]
    Refused { dir: String, message: String },
    #[error("pod {dir}: no answer within {timeout:?}")]
    Timeout { dir: String, timeout: Duration },
    #[error("pod {dir}: unexpected reply: {reply}")]
    Protocol { dir: String, reply: String },
}

/// Talks to one pod's supervisor.
#[derive(Clone, Debug)]
pub struct PodClient {
    dir: PodDir,
}

impl PodClient {
    pub fn new(dir: PodDir) -> PodClient {
        PodClient { dir }
    }

    pub fn dir(&self) -> &PodDir {
        &self.dir
    }

    /// Stops the agent and ends the pod's supervisor; how the agent ended.
    pub async fn stop(&self, grace: Duration) -> Result<Option<i32>, PodClientError> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        // The grace period, plus time for the supervisor to notice and answer.
        let timeout = grace + Duration::from_secs(10);
        match self
            .request(&PodRequest::Stop { grace_ms }, timeout)
            .await?
        {
            PodReply::Stopped { code } => Ok(code),
            other => Err(self.unexpected(other)),
        }
    }

    /// A consistent snapshot of the running agent's state directory; (files, bytes).
    pub async fn snapshot(
        &self,
        store: PathBuf,
        version: u32,
        timeout: Duration,
    ) -> Result<(u32, u64), PodClientError> {
        match self
            .request(&PodRequest::Snapshot { store, version }, timeout)
            .await?
        {
            PodReply::Snapshotted { files, bytes } => Ok((files, bytes)),
            other => Err(self.unexpected(other)),
        }
    }

    /// Adopts the running agent for a new owner (see [`PodRequest::Adopt`]); the seq after
    /// which the new owner's events begin.
    pub async fn adopt(&self, probe: String, token: String) -> Result<u64, PodClientError> {
        match self
            .request(&PodRequest::Adopt { probe, token }, Duration::from_secs(10))
            .await?
        {
            PodReply::Adopted { after } => Ok(after),
            other => Err(self.unexpected(other)),
        }
    }

    /// The supervisor's pid, the agent's pid, whether it is healthy, its last event's seq.
    pub async fn status(&self) -> Result<PodReply, PodClientError> {
        match self
            .request(&PodRequest::Status, Duration::from_secs(5))
            .await?
        {
            reply @ PodReply::Status { .. } => Ok(reply),
            other => Err(self.unexpected(other)),
        }
    }

    /// Streams every event after `after` to `events`, then new ones as they happen. Returns
    /// when the supervisor goes away (or the receiver does): `Ok` with the last seq seen.
    pub async fn watch(
        &self,
        after: u64,
        events: mpsc::Sender<Numbered>,
    ) -> Result<u64, PodClientError> {
        let mut lines = self.send(&PodRequest::Watch { after }).await?;
        let mut last = after;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<PodReply>(&line) {
                Ok(PodReply::Event(numbered)) => {
                    last = numbered.seq;
                    if events.send(numbered).await.is_err() {
                        break;
                    }
                }
                Ok(other) => return Err(self.unexpected(other)),
                Err(_) => {
                    return Err(PodClientError::Protocol {
                        dir: self.name(),
                        reply: line,
                    });
                }
            }
        }
        Ok(last)
    }

    async fn request(
        &self,
        request: &PodRequest,
        timeout: Duration,
    ) -> Result<PodReply, PodClientError> {
        let exchange = async {
            let mut lines = self.send(request).await?;
            let answer = lines
                .next_line()
                .await
                .map_err(|source| self.unreachable(source))?
                .ok_or_else(|| {
                    self.unreachable(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
                })?;
            serde_json::from_str::<PodReply>(&answer).map_err(|_| PodClientError::Protocol {
                dir: self.name(),
                reply: answer,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(PodReply::Error { message })) => Err(PodClientError::Refused {
                dir: self.name(),
                message,
            }),
            Ok(reply) => reply,
            Err(_) => Err(PodClientError::Timeout {
                dir: self.name(),
                timeout,
            }),
        }
    }

    /// Connects, sends one request line, and returns the reply lines to read.
    async fn send(
        &self,
        request: &PodRequest,
    ) -> Result<tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>, PodClientError> {
        let (read, mut write) = self.connect().await?.into_split();
        let mut line = serde_json::to_vec(request).expect("a request serialises");
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|source| self.unreachable(source))?;
        Ok(BufReader::new(read).lines())
    }

    async fn connect(&self) -> Result<UnixStream, PodClientError> {
        UnixStream::connect(self.dir.socket())
            .await
            .map_err(|source| self.unreachable(source))
    }

    fn name(&self) -> String {
        self.dir.root().display().to_string()
    }

    fn unreachable(&self, source: std::io::Error) -> PodClientError {
        PodClientError::Unreachable {
            dir: self.name(),
            source,
        }
    }

    fn unexpected(&self, reply: PodReply) -> PodClientError {
        PodClientError::Protocol {
            dir: self.name(),
            reply: format!("{reply:?}"),
        }
    }
}
