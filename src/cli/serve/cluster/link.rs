//! The leader's link to its nodes through etcd: threads that speak to etcd so that the
//! daemon's loop never waits on it, except for its own journal.
//!
//! - the **keeper** renews the leadership lease; an expired one means another controller may
//!   lead, and this one must stop;
//! - the **membership watcher** follows `nodes/`: registrations appear and vanish with their
//!   leases;
//! - the **report watcher** follows `reports/`: each node's pod events, in order;
//! - the **writer** puts the assignments the engine's commands become and deletes what is
//!   done with, in the order they were asked for, each write fenced by the leadership.

use crate::cli::node::protocol::{Assignment, NodeReport, Registration};
use carapace_cluster::etcd::{Followed, Txn, WatchEvent};
use carapace_cluster::keys::Keyspace;
use carapace_cluster::{Client, KeyValue, Leadership, Revision};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// A node's registration as seen in etcd.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub name: String,
    /// The revision that created its registration key.
    pub epoch: Revision,
    pub registration: Registration,
}

/// What the link learns, for the daemon's loop.
#[derive(Debug)]
pub enum News {
    /// Every registration as of a revision: what the daemon knows is brought in line.
    Listed(Vec<Seen>),
    Joined(Seen),
    /// A registration is gone: its lease expired or the node left.
    Left {
        name: String,
    },
    /// One report of a node, in the node's order.
    Report {
        key: String,
        node: String,
        epoch: Revision,
        report: NodeReport,
    },
    /// Another controller may lead: this one must stop deciding.
    Deposed(String),
}

/// One write of the writer thread.
#[derive(Debug)]
enum Write {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
    DeletePrefix { prefix: String },
}

/// The leader's side of etcd, besides its journal.
#[derive(Debug)]
pub struct Link {
    pub keys: Keyspace,
    writes: std::sync::mpsc::Sender<Write>,
}

/// Settings of the link's threads.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    pub client: Arc<Client>,
    pub keys: Keyspace,
    pub leadership: Leadership,
}

impl Link {
    /// Starts the watchers and the writer; their news goes to `news`, starting with the
    /// listed nodes. The leadership lease's keeper runs already (see [`keep_lease`]): it
    /// kept the campaign alive.
    pub fn start(settings: &LinkSettings, news: &UnboundedSender<News>) -> Link {
        spawn_membership_watcher(settings, news.clone());
        spawn_report_watcher(settings, news.clone());
        let writes = spawn_writer(settings, news.clone());
        Link {
            keys: settings.keys.clone(),
            writes,
        }
    }

    /// Puts (or replaces) what `node` must run for the assignment's agent.
    pub fn assign(&self, node: &str, assignment: &Assignment) {
        let key = self.keys.assignment(node, assignment.record.id.0);
        let value = serde_json::to_vec(assignment).expect("an assignment encodes");
        self.send(Write::Put { key, value });
    }

    /// Removes the assignment of `agent` on `node`.
    pub fn unassign(&self, node: &str, agent: u32) {
        self.send(Write::Delete {
            key: self.keys.assignment(node, agent),
        });
    }

    /// Removes every assignment of a node that is gone.
    pub fn forget_node(&self, node: &str) {
        self.send(Write::DeletePrefix {
            prefix: self.keys.assignments(node),
        });
    }

    /// A report the daemon has taken (journaled what it meant): it need not be read again.
    pub fn consumed(&self, key: String) {
        self.send(Write::Delete { key });
    }

    fn send(&self, write: Write) {
        // The writer lives as long as the process: it ends only after telling the daemon it
        // was deposed, and the daemon stops then.
        let _ = self.writes.send(write);
    }
}

/// A channel for the link's news.
pub fn news_channel() -> (UnboundedSender<News>, UnboundedReceiver<News>) {
    unbounded_channel()
}

/// Renews `lease` every `every` from now on, for the campaign and then the leadership; an
/// expired lease is news of deposition.
pub fn keep_lease(
    client: Arc<Client>,
    lease: carapace_cluster::LeaseId,
    every: Duration,
    news: UnboundedSender<News>,
) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(every);
            match client.keep_alive(lease) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = news.send(News::Deposed("the leadership lease expired".into()));
                    return;
                }
                // A lease cannot expire while etcd cannot answer either: the fenced writes
                // decide whether this controller still leads.
                Err(error) => tracing::warn!(%error, "the leadership lease was not renewed"),
            }
        }
    });
}

/// How long a watcher waits after etcd failed it.
const RETRY: Duration = Duration::from_millis(500);

fn spawn_membership_watcher(settings: &LinkSettings, news: UnboundedSender<News>) {
    let client = settings.client.clone();
    let keys = settings.keys.clone();
    std::thread::spawn(move || {
        let prefix = keys.nodes();
        let seen = |kv: &KeyValue| -> Option<Seen> {
            let name = kv.key_str().strip_prefix(&prefix)?.to_owned();
            match serde_json::from_slice::<Registration>(&kv.value) {
                Ok(registration) if registration.name == name => Some(Seen {
                    name,
                    epoch: kv.create_revision,
                    registration,
                }),
                Ok(_) => {
                    tracing::error!(key = kv.key_str(), "a registration names another node");
                    None
                }
                Err(error) => {
                    tracing::error!(key = kv.key_str(), %error, "a registration that does not decode");
                    None
                }
            }
        };
        client.follow(&prefix, RETRY, |followed| match followed {
            Followed::Listed(kvs) => news
                .send(News::Listed(kvs.iter().filter_map(seen).collect()))
                .is_ok(),
            Followed::Changed(events) => events.iter().all(|event| {
                let sent = match event {
                    // A registration's first version; later puts are the same node.
                    WatchEvent::Put(kv) if kv.mod_revision == kv.create_revision => {
                        seen(kv).map_or(Ok(()), |node| news.send(News::Joined(node)))
                    }
                    WatchEvent::Put(_) => Ok(()),
                    WatchEvent::Delete(kv) => match kv.key_str().strip_prefix(&prefix) {
                        // A deleted key's event carries no creation revision: the daemon
                        // matches the name's live registration.
                        Some(name) => news.send(News::Left {
                            name: name.to_owned(),
                        }),
                        None => Ok(()),
                    },
                };
                sent.is_ok()
            }),
        });
    });
}

fn spawn_report_watcher(settings: &LinkSettings, news: UnboundedSender<News>) {
    let client = settings.client.clone();
    let keys = settings.keys.clone();
    std::thread::spawn(move || {
        let prefix = keys.all_reports();
        // The last report handed over per node and epoch: a listing after a broken watch
        // repeats what was not deleted yet.
        let mut last: BTreeMap<(String, Revision), u64> = BTreeMap::new();
        let mut forward = |kv: &KeyValue| -> bool {
            let key = kv.key_str();
            let Some((node, epoch, seq)) = parse_report_key(&prefix, key) else {
                tracing::error!(key, "not a report key");
                return true;
            };
            let newest = last.entry((node.clone(), epoch)).or_insert(0);
            if seq <= *newest {
                return true;
            }
            *newest = seq;
            match serde_json::from_slice::<NodeReport>(&kv.value) {
                Ok(report) => news
                    .send(News::Report {
                        key: key.to_owned(),
                        node,
                        epoch,
                        report,
                    })
                    .is_ok(),
                Err(error) => {
                    tracing::error!(key, %error, "a report that does not decode");
                    true
                }
            }
        };
        client.follow(&prefix.clone(), RETRY, |followed| match followed {
            Followed::Listed(kvs) => kvs.iter().all(&mut forward),
            Followed::Changed(events) => events.iter().all(|event| match event {
                WatchEvent::Put(kv) => forward(kv),
                // Deleted by this leader once taken, or gone with the node's lease.
                WatchEvent::Delete(_) => true,
            }),
        });
    });
}

/// `ROOT/reports/NODE/EPOCH/SEQ` → (NODE, EPOCH, SEQ).
fn parse_report_key(prefix: &str, key: &str) -> Option<(String, Revision, u64)> {
    let mut parts = key.strip_prefix(prefix)?.split('/');
    let node = parts.next()?.to_owned();
    let epoch = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((node, epoch, seq))
}

fn spawn_writer(
    settings: &LinkSettings,
    news: UnboundedSender<News>,
) -> std::sync::mpsc::Sender<Write> {
    let client = settings.client.clone();
    let leadership = settings.leadership.clone();
    let (writes, queue) = std::sync::mpsc::channel::<Write>();
    std::thread::spawn(move || {
        let mut wait = Duration::from_millis(100);
        while let Ok(write) = queue.recv() {
            // In order: a write is tried until etcd takes or refuses it.
            loop {
                let txn = Txn::new().when_created_at(&leadership.key, leadership.revision);
                let txn = match &write {
                    Write::Put { key, value } => txn.put(key.as_bytes(), value, None),
                    Write::Delete { key } => txn.delete(key.as_bytes()),
                    Write::DeletePrefix { prefix } => txn.delete_prefix(prefix.as_bytes()),
                };
                match client.txn(txn) {
                    Ok(outcome) if outcome.succeeded => {
                        wait = Duration::from_millis(100);
                        break;
                    }
                    Ok(_) => {
                        let _ = news.send(News::Deposed(format!(
                            "etcd refused a write fenced by leadership revision {}",
                            leadership.revision
                        )));
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "an assignment write waits for etcd");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
    });
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_keys_parse_back_to_their_parts() {
        let keys = Keyspace::default();
        let prefix = keys.all_reports();
        assert_eq!(
            parse_report_key(&prefix, &keys.report("n-1", 42, 7)),
            Some(("n-1".to_owned(), 42, 7))
        );
        assert_eq!(parse_report_key(&prefix, "/carapace/reports/n/x/1"), None);
        assert_eq!(parse_report_key(&prefix, "/carapace/reports/n/1/2/3"), None);
        assert_eq!(parse_report_key(&prefix, "/other/reports/n/1/2"), None);
    }
}
