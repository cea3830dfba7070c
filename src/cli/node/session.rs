//! A node's membership in the cluster: one lease, the registration under it, and three
//! threads that speak to etcd so that the node's loop never blocks on it — the keeper renews
//! the lease, the watcher follows the node's assignments, the publisher writes its reports in
//! order. A session ends when the lease is lost or the node fences; the next one registers
//! anew, with a new epoch.

use super::protocol::{NodeReport, Registration};
use carapace_cluster::etcd::{Followed, Txn};
use carapace_cluster::keys::Keyspace;
use carapace_cluster::{Client, LeaseId, Revision};
use carapace_drivers::clock::Clock;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// What the keeper learns about the lease.
#[derive(Debug)]
pub enum LeaseNews {
    /// etcd renewed the lease in answer to the keep-alive sent at this time (node clock, ms).
    Renewed { sent_ms: u64 },
    /// The renewal failed, and the members that answered (some did) know of no leader when
    /// asked at this time: no lease can expire until a leader is back, which renews it.
    Leaderless { asked_ms: u64 },
    /// etcd no longer has the lease: it expired, and the controller may be moving the node's
    /// agents already.
    Expired,
}

/// What the watcher learns about the node's assignments: all of them, then their changes.
pub type AssignmentNews = Followed;

/// The lease a running node holds, kept on disk so that a restarted daemon resumes its
/// session (and its epoch) while the lease lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    lease: i64,
    epoch: Revision,
}

#[derive(Debug)]
pub struct Session {
    pub lease: LeaseId,
    /// The revision that created this session's registration key.
    pub epoch: Revision,
    /// When the request that granted (or last renewed, for a resumed session) the lease was
    /// sent.
    pub granted_sent_ms: u64,
    pub lease_news: UnboundedReceiver<LeaseNews>,
    pub assignment_news: UnboundedReceiver<AssignmentNews>,
    reports: UnboundedSender<NodeReport>,
    ended: Arc<AtomicBool>,
    held_file: PathBuf,
}

/// What joining needs.
#[derive(Clone, Debug)]
pub struct Membership {
    pub client: Arc<Client>,
    pub keys: Keyspace,
    pub registration: Registration,
    pub ttl: Duration,
    pub renew_every: Duration,
    pub trust_leaderless_members: bool,
    pub data_dir: PathBuf,
    pub clock: Clock,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Etcd(#[from] carapace_cluster::EtcdError),
    #[error(
        "the name `{0}` is registered under another lease (another machine with this name, or \
         this one's previous registration until its lease expires)"
    )]
    NameTaken(String),
}

impl Session {
    /// Resumes the session recorded in the data dir if its lease lives, else registers anew.
    pub fn join(membership: &Membership) -> Result<Session, JoinError> {
        let held_file = membership.data_dir.join("cluster-lease.json");
        let name = &membership.registration.name;
        let node_key = membership.keys.node(name);
        let client = &membership.client;
        if let Some(held) = read_held(&held_file) {
            let sent_ms = membership.clock.now().0;
            let lease = LeaseId(held.lease);
            let registered = client.get(&node_key)?;
            let ours = registered
                .as_ref()
                .is_some_and(|kv| kv.lease == Some(lease) && kv.create_revision == held.epoch);
            if ours && client.keep_alive(lease)?.is_some() {
                tracing::info!(epoch = held.epoch, "resumed the previous session");
                return Ok(Session::start(
                    membership, lease, held.epoch, sent_ms, held_file,
                ));
            }
        }
        let sent_ms = membership.clock.now().0;
        let (lease, _) = client.grant(membership.ttl)?;
        let value = serde_json::to_vec(&membership.registration).expect("a registration encodes");
        let outcome = client.txn(Txn::new().when_absent(node_key.as_bytes()).put(
            node_key.as_bytes(),
            &value,
            Some(lease),
        ))?;
        if !outcome.succeeded {
            let _ = client.revoke(lease);
            return Err(JoinError::NameTaken(name.clone()));
        }
        // The key was absent, so the transaction's revision is the one that created it.
        let epoch = outcome.revision;
        write_held(
            &held_file,
            Held {
                lease: lease.0,
                epoch,
            },
        );
        Ok(Session::start(membership, lease, epoch, sent_ms, held_file))
    }

    fn start(
        membership: &Membership,
        lease: LeaseId,
        epoch: Revision,
        granted_sent_ms: u64,
        held_file: PathBuf,
    ) -> Session {
        let ended = Arc::new(AtomicBool::new(false));
        let (lease_tx, lease_news) = unbounded_channel();
        let (assign_tx, assignment_news) = unbounded_channel();
        let (reports, reports_rx) = unbounded_channel();
        spawn_keeper(membership, lease, ended.clone(), lease_tx);
        spawn_watcher(membership, ended.clone(), assign_tx);
        spawn_publisher(membership, lease, epoch, ended.clone(), reports_rx);
        Session {
            lease,
            epoch,
            granted_sent_ms,
            lease_news,
            assignment_news,
            reports,
            ended,
            held_file,
        }
    }

    /// Queues a report; the publisher writes them in order.
    pub fn publish(&self, report: NodeReport) {
        let _ = self.reports.send(report);
    }

    /// Ends the session: its threads stop, and the lease is forgotten on disk (a fenced or
    /// expired node registers anew).
    pub fn end(self) {
        self.ended.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.held_file);
    }

    /// Ends the session and revokes its lease, so the controller learns at once that the node
    /// has left (its pods are stopped by then).
    pub fn leave(self, client: &Client) {
        let lease = self.lease;
        self.end();
        if let Err(error) = client.revoke(lease) {
            tracing::warn!(%error, "could not revoke the lease; it expires on its own");
        }
    }
}

fn spawn_keeper(
    membership: &Membership,
    lease: LeaseId,
    ended: Arc<AtomicBool>,
    news: UnboundedSender<LeaseNews>,
) {
    let client = membership.client.clone();
    let clock = membership.clock;
    let every = membership.renew_every;
    let trust_leaderless = membership.trust_leaderless_members;
    // After a failure that settled nothing (a member still names a leader it has lost, or
    // answers late), the next try comes sooner: the fence leaves only a few renewal periods,
    // and a surviving member learns it is alone within an election timeout.
    let retry = (every / 4).max(Duration::from_millis(100));
    std::thread::spawn(move || {
        let mut pause = every;
        while !ended.load(Ordering::Relaxed) {
            std::thread::sleep(pause);
            if ended.load(Ordering::Relaxed) {
                return;
            }
            pause = every;
            let sent_ms = clock.now().0;
            match client.keep_alive(lease) {
                Ok(Some(_)) => {
                    if news.send(LeaseNews::Renewed { sent_ms }).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = news.send(LeaseNews::Expired);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "the lease was not renewed");
                    pause = retry;
                    if !trust_leaderless {
                        continue; // the watchdog counts the silence
                    }
                    let asked_ms = clock.now().0;
                    if client.members().leaderless() {
                        pause = every;
                        if news.send(LeaseNews::Leaderless { asked_ms }).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
}

fn spawn_watcher(
    membership: &Membership,
    ended: Arc<AtomicBool>,
    news: UnboundedSender<AssignmentNews>,
) {
    let client = membership.client.clone();
    let prefix = membership.keys.assignments(&membership.registration.name);
    let retry = membership.renew_every.min(Duration::from_millis(500));
    std::thread::spawn(move || {
        client.follow(&prefix, retry, |followed| {
            !ended.load(Ordering::Relaxed) && news.send(followed).is_ok()
        });
    });
}

fn spawn_publisher(
    membership: &Membership,
    lease: LeaseId,
    epoch: Revision,
    ended: Arc<AtomicBool>,
    mut reports: UnboundedReceiver<NodeReport>,
) {
    let client = membership.client.clone();
    let keys = membership.keys.clone();
    let name = membership.registration.name.clone();
    let retry = membership.renew_every;
    std::thread::spawn(move || {
        let mut seq = 0u64;
        while let Some(report) = reports.blocking_recv() {
            seq += 1;
            let key = keys.report(&name, epoch, seq);
            let value = serde_json::to_vec(&report).expect("a report encodes");
            // In order: a report is retried until it is written or the session ends.
            loop {
                if ended.load(Ordering::Relaxed) {
                    return;
                }
                match client.put(&key, &value, Some(lease)) {
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "a report waits for etcd");
                        std::thread::sleep(retry);
                    }
                }
            }
        }
    });
}

fn read_held(path: &Path) -> Option<Held> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_held(path: &Path, held: Held) {
    let text = serde_json::to_string(&held).expect("a lease record encodes");
    // Written whole then renamed: a crash leaves the old record or the new one.
    let temporary = path.with_extension("json.tmp");
    let written = std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        tracing::warn!(%error, path = %path.display(), "cannot record the lease; a restart registers anew");
    }
}
