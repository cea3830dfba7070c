//! `carapace serve --etcd`: the daemon as one of several controller replicas. Only the leader
//! (etcd's election) runs the engine; its store is etcd (`carapace_cluster::journal`), its
//! pods run on `carapace node` machines, to which its commands go as assignments and from
//! which their pods' events come back as reports.
//!
//! Nothing here decides: node registrations become `JoinNode`, vanished ones `LoseNode`, and
//! reports become the same inputs a local pod's events do. Where an instance runs is read off
//! the engine's own start commands, which the journal holds, so a new leader knows every
//! placement as soon as it has replayed the journal.

pub mod link;

use super::config::ClusterConfig;
use super::daemon::Daemon;
use super::driver::Report;
use super::feed::FeedKind;
use crate::cli::node::protocol::{Assignment, NodeReport, SnapshotOrder, StopOrder};
use carapace_cluster::Revision;
use carapace_cluster::keys::Keyspace;
use carapace_cluster::{Client, Leadership};
use carapace_engine::{
    AgentId, Command, CommandId, Input, Instance, NodeId, NodeSpec, Outcome, RegionId, SnapshotId,
    Version, ZoneId,
};
use carapace_store::Batch;
use link::{Link, News, Seen};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// Desired-state kind of the nodes the engine knows, by engine node id.
pub(super) const MEMBERS: &str = "member";

/// One registration of a node, as the engine's node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub name: String,
    pub epoch: Revision,
    pub zone: Option<String>,
    pub memory_bytes: u64,
    /// Lost (its lease expired, or it registered again as a new member): never placed on.
    pub lost: bool,
}

/// Where a start command put an instance, and what it started it from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Placement {
    node: NodeId,
    start: CommandId,
    version: Version,
    snapshot: Option<SnapshotId>,
}

/// The leader's view of the cluster.
#[derive(Debug)]
pub struct Cluster {
    pub link: Link,
    pub members: BTreeMap<NodeId, Member>,
    /// Each instance placed on a node and not stopped yet, as its start command placed it.
    placed: BTreeMap<(AgentId, Instance), Placement>,
    /// While the journal replays, bookkeeping only: what the journal says was done is done.
    pub replaying: bool,
}

impl Cluster {
    pub fn new(link: Link) -> Cluster {
        Cluster {
            link,
            members: BTreeMap::new(),
            placed: BTreeMap::new(),
            replaying: true,
        }
    }

    fn live(&self, name: &str) -> Option<(NodeId, &Member)> {
        self.members
            .iter()
            .find(|(_, m)| !m.lost && m.name == name)
            .map(|(id, m)| (*id, m))
    }

    fn live_member(&self, node: NodeId) -> Option<&Member> {
        self.members.get(&node).filter(|m| !m.lost)
    }
}

impl Daemon {
    /// Bookkeeping of a command in cluster mode, live or replayed: where it placed what.
    pub(super) fn note_placed(&mut self, command: &Command) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        if let Command::Start {
            id,
            agent,
            instance,
            node,
            version,
            snapshot,
            ..
        } = command
        {
            let placement = Placement {
                node: *node,
                start: *id,
                version: *version,
                snapshot: *snapshot,
            };
            cluster.placed.insert((*agent, *instance), placement);
        }
    }

    /// A stop finished (cluster mode): the node may forget the assignment.
    pub(super) fn note_unplaced(&mut self, agent: AgentId, instance: Instance) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        let Some(Placement { node, .. }) = cluster.placed.remove(&(agent, instance)) else {
            return;
        };
        // The key is per node and agent: a newer instance placed on the same node keeps it.
        let newer_here = cluster
            .placed
            .iter()
            .any(|((a, _), placement)| *a == agent && placement.node == node);
        if let Some(member) = cluster.live_member(node)
            && !newer_here
            && !cluster.replaying
        {
            cluster.link.unassign(&member.name, agent.0);
        }
    }

    /// Carries out a command in cluster mode: what a node must do becomes its assignment.
    pub(super) fn execute_on_cluster(&mut self, command: Command) {
        match command {
            Command::Start {
                id,
                agent,
                instance,
                node,
                ..
            } => {
                if !self.assign(agent, instance, |_| {}) {
                    tracing::warn!(%agent, %node, "a start on a node that is gone");
                    self.driver_finished(id, Outcome::Failed);
                }
            }
            Command::Stop {
                id,
                agent,
                instance,
                snapshot,
                ..
            } => {
                let order = StopOrder {
                    command: id,
                    snapshot,
                };
                // The node is gone, and fenced itself: the instance is stopped.
                if !self.assign(agent, instance, |a| a.stop = Some(order)) {
                    let outcome = if snapshot.is_some() {
                        Outcome::SnapshotFailed
                    } else {
                        Outcome::Succeeded
                    };
                    self.driver_finished(id, outcome);
                }
            }
            Command::TakeSnapshot {
                id,
                agent,
                instance,
                snapshot,
                ..
            } => {
                let order = SnapshotOrder {
                    command: id,
                    snapshot,
                };
                if !self.assign(agent, instance, |a| a.take_snapshot = Some(order)) {
                    self.driver_finished(id, Outcome::Failed);
                }
            }
            // Nodes keep no warm pool yet.
            Command::WarmUp { id, .. } => self.driver_finished(id, Outcome::Failed),
            Command::Throttle { agent, .. } => {
                tracing::debug!(%agent, "nodes do not throttle yet");
            }
            other => self.execute_local(other),
        }
    }

    /// Writes the assignment that runs a placed instance, with `order` applied to it (a stop
    /// or snapshot order); false when the instance's node is gone.
    fn assign(
        &self,
        agent: AgentId,
        instance: Instance,
        order: impl FnOnce(&mut Assignment),
    ) -> bool {
        let cluster = self.cluster();
        let Some(placement) = cluster.placed.get(&(agent, instance)) else {
            return false;
        };
        let (Some(member), Some(record)) =
            (cluster.live_member(placement.node), self.agents.get(&agent))
        else {
            return false;
        };
        let mut assignment = Assignment {
            epoch: member.epoch,
            record: record.clone(),
            instance,
            start_command: placement.start,
            config_text: self
                .configs
                .get(&(agent, placement.version.config))
                .cloned(),
            snapshot: placement.snapshot,
            stop: None,
            take_snapshot: None,
        };
        order(&mut assignment);
        cluster.link.assign(&member.name, &assignment);
        true
    }

    /// The cluster, in cluster mode (where every caller here runs).
    fn cluster(&self) -> &Cluster {
        self.cluster
            .as_ref()
            .expect("invariant: cluster bookkeeping runs in cluster mode")
    }

    fn cluster_mut(&mut self) -> &mut Cluster {
        self.cluster
            .as_mut()
            .expect("invariant: cluster bookkeeping runs in cluster mode")
    }

    /// What the link learned, turned into engine inputs.
    pub fn on_cluster_news(&mut self, news: News) -> Result<(), Deposed> {
        match news {
            News::Listed(seen) => {
                let cluster = self.cluster();
                let gone: Vec<NodeId> = cluster
                    .members
                    .iter()
                    .filter(|(_, m)| {
                        !m.lost && !seen.iter().any(|s| s.name == m.name && s.epoch == m.epoch)
                    })
                    .map(|(id, _)| *id)
                    .collect();
                for node in gone {
                    self.lose_member(node);
                }
                for node in seen {
                    self.join_member(node);
                }
            }
            News::Joined(seen) => self.join_member(seen),
            News::Left { name } => {
                let live = self.cluster().live(&name);
                if let Some((node, _)) = live {
                    self.lose_member(node);
                }
            }
            News::Report {
                key,
                node,
                epoch,
                report,
            } => {
                let member = self.cluster().live(&node).filter(|(_, m)| m.epoch == epoch);
                // A report of a registration the engine has lost is of a fenced node: what
                // it says is over, and its key goes with the node's lease.
                if member.is_some() {
                    self.on_node_report(&node, report);
                    self.cluster().link.consumed(key);
                }
            }
            News::Deposed(why) => return Err(Deposed(why)),
        }
        Ok(())
    }

    fn on_node_report(&mut self, node: &str, report: NodeReport) {
        match report {
            NodeReport::Event {
                agent,
                instance,
                numbered,
            } => {
                // A new leader reads again what the old one took but had not deleted yet.
                let seen = self
                    .cursors
                    .get(&agent)
                    .is_some_and(|c| c.instance == instance && c.seq >= numbered.seq);
                if !seen {
                    self.on_report(Report::Event {
                        agent,
                        instance,
                        numbered,
                    });
                }
            }
            NodeReport::SupervisorLost { agent, instance } => {
                self.on_report(Report::SupervisorLost { agent, instance });
            }
            NodeReport::Finished { command, outcome } => {
                if self.in_flight.contains_key(&command) {
                    self.on_report(Report::Finished { command, outcome });
                }
            }
            NodeReport::Fenced {
                stopped_after_ms,
                pods,
            } => self.push_feed(
                self.clock.now(),
                None,
                None,
                FeedKind::Observation,
                "node_fenced",
                format!(
                    "node {node} fenced itself: {pods} pods stopped {stopped_after_ms} ms after \
                     its last renewal"
                ),
            ),
        }
    }

    fn join_member(&mut self, seen: Seen) {
        let cluster = self.cluster();
        if let Some((node, member)) = cluster.live(&seen.name) {
            if member.epoch == seen.epoch {
                return;
            }
            // Registered again: the old registration fenced itself; it is another node now.
            self.lose_member(node);
        }
        let cluster = self.cluster();
        let id = NodeId(
            cluster
                .members
                .keys()
                .next_back()
                .map_or(0, |last| last.0 + 1),
        );
        let zone = zone_id(&cluster.members, seen.registration.zone.as_deref());
        let member = Member {
            name: seen.name,
            epoch: seen.epoch,
            zone: seen.registration.zone,
            memory_bytes: seen.registration.memory_bytes,
            lost: false,
        };
        let spec = NodeSpec {
            id,
            region: RegionId(0),
            zone,
            memory_bytes_capacity: member.memory_bytes,
        };
        let mut batch = Batch::new();
        batch.put_desired(MEMBERS, u64::from(id.0), &member);
        tracing::info!(node = %member.name, epoch = member.epoch, %id, "a node joined");
        self.cluster_mut().members.insert(id, member);
        if let Err(error) = self.apply(Input::JoinNode(spec), batch) {
            tracing::error!(%error, "the engine refused a node");
        }
    }

    fn lose_member(&mut self, node: NodeId) {
        let cluster = self.cluster_mut();
        let Some(member) = cluster.members.get_mut(&node) else {
            return;
        };
        member.lost = true;
        let member = member.clone();
        cluster.link.forget_node(&member.name);
        cluster.placed.retain(|_, placement| placement.node != node);
        tracing::warn!(node = %member.name, epoch = member.epoch, "a node is lost");
        let mut batch = Batch::new();
        batch.put_desired(MEMBERS, u64::from(node.0), &member);
        if let Err(error) = self.apply(Input::LoseNode { node }, batch) {
            tracing::error!(%error, "the engine refused a node's loss");
        }
    }

    /// The API's view of the cluster's nodes: each registration the engine has known.
    pub fn cluster_nodes_view(&self) -> serde_json::Value {
        let Some(cluster) = &self.cluster else {
            return serde_json::json!({ "nodes": [] });
        };
        let nodes: Vec<serde_json::Value> = cluster
            .members
            .iter()
            .map(|(id, member)| {
                serde_json::json!({
                    "id": id.0,
                    "name": member.name,
                    "epoch": member.epoch,
                    "zone": member.zone,
                    "lost": member.lost,
                    "memory": self.controller.node(*id),
                })
            })
            .collect();
        serde_json::json!({ "nodes": nodes })
    }

    /// The members, as the journal left them (before it is replayed); none on one machine.
    pub(super) fn load_members(&mut self) -> anyhow::Result<()> {
        if self.cluster.is_none() {
            return Ok(());
        }
        for (id, member) in self.store.desired::<Member>(MEMBERS)? {
            self.cluster_mut().members.insert(NodeId(id as u32), member);
        }
        Ok(())
    }
}

/// The zone a node's zone name maps to: the one of another member with that name, or the
/// next unused one.
fn zone_id(members: &BTreeMap<NodeId, Member>, zone: Option<&str>) -> ZoneId {
    let mut known: Vec<&str> = Vec::new();
    for member in members.values() {
        if let Some(z) = member.zone.as_deref()
            && !known.contains(&z)
        {
            known.push(z);
        }
    }
    match zone {
        // Zone 0 is "no zone given".
        None => ZoneId(0),
        Some(zone) => {
            let index = known.iter().position(|k| *k == zone).unwrap_or(known.len());
            ZoneId(index as u32 + 1)
        }
    }
}

/// A controller that won the election: what it leads with.
#[derive(Debug)]
pub struct Leading {
    pub client: Arc<Client>,
    pub keys: Keyspace,
    pub leadership: Leadership,
    pub news: UnboundedSender<News>,
    pub news_received: UnboundedReceiver<News>,
}

/// Campaigns until this controller leads (blocking: run it off the loop). The lease is kept
/// alive from its grant on, so a candidate waits in line as long as it lives.
pub fn campaign(config: &ClusterConfig, candidate: &str) -> anyhow::Result<Leading> {
    let ms = |s: carapace_sim::scenario::Span| Duration::from_millis(s.0.0);
    let client = Arc::new(Client::new(&config.etcd, ms(config.call_timeout))?);
    let keys = Keyspace::new(&config.key_root).map_err(|e| anyhow::anyhow!(e))?;
    let ttl = ms(config.leader_ttl);
    let retry = Duration::from_secs(1);
    let lease = loop {
        match client.grant(ttl) {
            Ok((lease, _)) => break lease,
            Err(error) => {
                tracing::warn!(%error, "etcd does not answer yet; campaigning when it does");
                std::thread::sleep(retry);
            }
        }
    };
    let (news, news_received) = link::news_channel();
    link::keep_lease(client.clone(), lease, ttl / 3, news.clone());
    let leadership = loop {
        match client.campaign(&keys.election(), candidate.as_bytes(), lease) {
            Ok(leadership) => break leadership,
            Err(error) => {
                tracing::warn!(%error, "the campaign broke off; campaigning again");
                std::thread::sleep(retry);
            }
        }
    };
    Ok(Leading {
        client,
        keys,
        leadership,
        news,
        news_received,
    })
}

/// Gives the leadership up at once, so that a standby need not wait for the lease to expire.
pub fn step_down(client: &Client, leadership: &Leadership) {
    if let Err(error) = client.resign(leadership) {
        tracing::warn!(%error, "could not resign; the standby leads once the lease expires");
    }
    let _ = client.revoke(leadership.lease);
}

/// This controller no longer leads.
#[derive(Debug, thiserror::Error)]
#[error("no longer the leader: {0}")]
pub struct Deposed(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, zone: Option<&str>) -> Member {
        Member {
            name: name.into(),
            epoch: 1,
            zone: zone.map(Into::into),
            memory_bytes: 1,
            lost: false,
        }
    }

    #[test]
    fn zones_are_numbered_by_first_sighting() {
        let mut members = BTreeMap::new();
        assert_eq!(zone_id(&members, None), ZoneId(0));
        assert_eq!(zone_id(&members, Some("a")), ZoneId(1));
        members.insert(NodeId(0), member("n0", Some("a")));
        members.insert(NodeId(1), member("n1", Some("b")));
        assert_eq!(zone_id(&members, Some("a")), ZoneId(1));
        assert_eq!(zone_id(&members, Some("b")), ZoneId(2));
        assert_eq!(zone_id(&members, Some("c")), ZoneId(3));
    }
}
