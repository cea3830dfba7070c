//! Carapace across machines, coordinated by etcd.
//!
//! Carapace never runs a consensus or membership protocol of its own: etcd holds desired
//! state, node membership (a key per node under a lease: the lease's keep-alive is the
//! heartbeat, its expiry is how the controller learns a node is lost) and leadership (etcd's
//! election; every write of the leader is a transaction that compares the leader key's
//! creation revision, so a deposed leader's late writes are refused by etcd itself).
//!
//! - [`etcd`]: a small blocking client for etcd's v3 API over its JSON gateway — KV,
//!   transactions, leases, watches and elections.
//! - [`keys`]: where everything lives in the keyspace.
//! - [`journal`]: the leader's store in etcd — desired state and the journal of every
//!   engine input and command, each commit one transaction fenced by its leadership.
//! - [`fencing`]: the self-fencing rule: when a node that cannot renew its lease must have
//!   stopped its agents, so that it never serves an agent being recreated elsewhere.
//! - [`local`]: a real etcd cluster of N members on one machine, for tests and for trying the
//!   cluster mode on one machine.
//! - [`netns`]: machines on one machine — network namespaces on a bridge, with cables to cut.

// This crate does IO (etcd, processes, the node's clock): the determinism guards of the engine
// and simulator do not apply here.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod etcd;
pub mod fencing;
pub mod journal;
pub mod keys;
pub mod local;
pub mod netns;

pub use etcd::{Client, EtcdError, KeyValue, Leadership, LeaseId, Revision};
