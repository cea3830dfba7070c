//! A blocking client for etcd's v3 API, spoken over etcd's JSON gateway (`/v3/...`).
//!
//! The gateway is etcd's own documented HTTP mapping of its gRPC API, served by every member on
//! its client URL. Using it keeps the build free of a protobuf compiler and of a gRPC stack;
//! what the gateway lacks (bidirectional streams) Carapace does not need: a lease is renewed by
//! one keep-alive call per period, and a watch is a response streamed as JSON lines.
//!
//! Every call tries the members in turn, starting from the last one that answered, so a
//! member that is down or cut off costs one timeout and is then skipped. An error etcd itself
//! answered (a lease that is gone, a request that lost quorum) is returned as it is: trying
//! another member would not change it, except for a timeout, which is tried elsewhere.

mod watch;
mod wire;

pub use watch::{Watch, WatchBatch, WatchEvent};

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use wire::{B64, I64};

/// A store revision: etcd's logical clock, increased by every write.
pub type Revision = i64;

/// A lease: keys put under it disappear when it expires or is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

/// A key and its value as stored, with the revisions that say who wrote it when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
}

impl KeyValue {
    /// The key as text (Carapace's keys are all UTF-8).
    pub fn key_str(&self) -> &str {
        std::str::from_utf8(&self.key).unwrap_or("")
    }
}

/// Leadership won in an election: the leader key and the revision that created it. Every
/// write a leader makes compares that revision, so it is refused once the leadership is lost
/// (the key is gone with its lease, or another campaign's key is the leader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub election: String,
    pub key: Vec<u8>,
    pub revision: Revision,
    pub lease: LeaseId,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No member answered. The detail names the last member tried, never a value.
    #[error("no etcd member answered (last tried {endpoint}: {detail})")]
    Unreachable { endpoint: String, detail: String },
    /// etcd answered with an error.
    #[error("etcd refused the request: {message} (code {code})")]
    Refused { code: i64, message: String },
    /// etcd's answer did not decode.
    #[error("etcd's answer to {path} did not decode: {detail}")]
    Decode { path: String, detail: String },
    /// A key or endpoint that this client cannot use.
    #[error("{0}")]
    Invalid(String),
}

impl EtcdError {
    /// Whether asking another member might give another answer.
    fn worth_another_member(&self) -> bool {
        match self {
            EtcdError::Unreachable { .. } => true,
            // etcd's own "request timed out" / "leader changed": the member could not reach
            // the quorum in time, which another member may.
            EtcdError::Refused { code, message } => {
                *code == 14 || *code == 4 || message.contains("timed out")
            }
            _ => false,
        }
    }
}

/// What [`Client::follow`] hands over: everything under the prefix, then its changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Followed {
    /// Every key as of a revision: replaces what was known.
    Listed(Vec<KeyValue>),
    /// Changes since, in order.
    Changed(Vec<WatchEvent>),
}

/// A page of keys read by [`Client::list_page`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub kvs: Vec<KeyValue>,
    /// Whether keys beyond this page remain in the range.
    pub more: bool,
    /// The revision the page was read at.
    pub revision: Revision,
}

/// What the members this client can reach say about the cluster's leadership.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembersView {
    /// Members that answered.
    pub reachable: usize,
    /// Of those, members that follow (or are) a leader.
    pub with_leader: usize,
}

impl MembersView {
    /// Members answered, and none knows of a leader: the cluster has no quorum (or this
    /// client and the members it reaches are cut off from the rest together).
    pub fn leaderless(&self) -> bool {
        self.reachable > 0 && self.with_leader == 0
    }
}

/// A guarded write: applied only while every comparison holds.
#[derive(Debug, Default)]
pub struct Txn {
    request: wire::TxnRequest,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Holds while `key` was created at `revision` (and so still exists): a leader's fence.
    pub fn when_created_at(mut self, key: &[u8], revision: Revision) -> Txn {
        self.request.compare.push(wire::Compare {
            key: B64(key.to_vec()),
            target: "CREATE",
            result: "EQUAL",
            create_revision: Some(I64(revision)),
            mod_revision: None,
            version: None,
        });
        self
    }

    /// Holds while `key` does not exist.
    pub fn when_absent(mut self, key: &[u8]) -> Txn {
        self.request.compare.push(wire::Compare {
            key: B64(key.to_vec()),
            target: "VERSION",
            result: "EQUAL",
            create_revision: None,
            mod_revision: None,
            version: Some(I64(0)),
        });
        self
    }

    /// Holds while `key` was last written at `revision`.
    pub fn when_modified_at(mut self, key: &[u8], revision: Revision) -> Txn {
        self.request.compare.push(wire::Compare {
            key: B64(key.to_vec()),
            target: "MOD",
            result: "EQUAL",
            create_revision: None,
            mod_revision: Some(I64(revision)),
            version: None,
        });
        self
    }

    pub fn put(mut self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Txn {
        self.request
            .success
            .push(wire::Op::Put(put_request(key, value, lease)));
        self
    }

    pub fn delete(mut self, key: &[u8]) -> Txn {
        self.request
            .success
            .push(wire::Op::DeleteRange(wire::DeleteRequest {
                key: B64(key.to_vec()),
                range_end: None,
            }));
        self
    }

    pub fn delete_prefix(mut self, prefix: &[u8]) -> Txn {
        self.request
            .success
            .push(wire::Op::DeleteRange(wire::DeleteRequest {
                key: B64(prefix.to_vec()),
                range_end: Some(B64(prefix_end(prefix))),
            }));
        self
    }
}

/// What a transaction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnOutcome {
    pub succeeded: bool,
    pub revision: Revision,
}

/// A client of one etcd cluster.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<String>,
    /// For short calls: bounded, so a dead member costs one timeout.
    agent: ureq::Agent,
    /// For calls that wait by design (a campaign, a watch): no overall bound.
    waiting: ureq::Agent,
    /// The member that answered last; tried first.
    preferred: AtomicUsize,
}

impl Client {
    /// A client of the members at `endpoints` (`http://host:port`, comma-separated lists are
    /// split by the caller). `timeout` bounds each short call to one member.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<Client, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::Invalid("no etcd endpoint given".into()));
        }
        let mut cleaned = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let endpoint = endpoint.trim().trim_end_matches('/');
            if !endpoint.starts_with("http://") {
                return Err(EtcdError::Invalid(format!(
                    "etcd endpoint `{endpoint}`: expected http://HOST:PORT"
                )));
            }
            cleaned.push(endpoint.to_owned());
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let waiting = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .build()
            .into();
        Ok(Client {
            endpoints: cleaned,
            agent,
            waiting,
            preferred: AtomicUsize::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The value of `key` with its revisions, if it exists.
    pub fn get(&self, key: &str) -> Result<Option<KeyValue>, EtcdError> {
        let request = wire::RangeRequest {
            key: B64(key.as_bytes().to_vec()),
            ..Default::default()
        };
        let response: wire::RangeResponse = self.call("/v3/kv/range", &request)?;
        Ok(response.kvs.into_iter().next().map(key_value))
    }

    /// Every key under `prefix`, in key order, and the revision they were read at (a watch
    /// from the next revision misses nothing and repeats nothing).
    pub fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), EtcdError> {
        let request = wire::RangeRequest {
            key: B64(prefix.as_bytes().to_vec()),
            range_end: Some(B64(prefix_end(prefix.as_bytes()))),
            ..Default::default()
        };
        let response: wire::RangeResponse = self.call("/v3/kv/range", &request)?;
        Ok((
            response.kvs.into_iter().map(key_value).collect(),
            response.header.revision.0,
        ))
    }

    /// Up to `limit` keys under `prefix` from `from` (inclusive; a key under the prefix) on,
    /// in key order, all read at `revision` (or the latest when `None`), and whether more
    /// follow. Pages of one revision together read a large prefix as one consistent view.
    pub fn list_page(
        &self,
        prefix: &str,
        from: &[u8],
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<Page, EtcdError> {
        let request = wire::RangeRequest {
            key: B64(from.to_vec()),
            range_end: Some(B64(prefix_end(prefix.as_bytes()))),
            revision: revision.map(I64),
            limit: Some(I64(i64::try_from(limit).unwrap_or(i64::MAX))),
            ..Default::default()
        };
        let response: wire::RangeResponse = self.call("/v3/kv/range", &request)?;
        Ok(Page {
            kvs: response.kvs.into_iter().map(key_value).collect(),
            more: response.more,
            revision: response.header.revision.0,
        })
    }

    /// The last key under `prefix` in key order, if there is one.
    pub fn last_under(&self, prefix: &str) -> Result<Option<KeyValue>, EtcdError> {
        let request = wire::RangeRequest {
            key: B64(prefix.as_bytes().to_vec()),
            range_end: Some(B64(prefix_end(prefix.as_bytes()))),
            limit: Some(I64(1)),
            sort_order: Some("DESCEND"),
            sort_target: Some("KEY"),
            ..Default::default()
        };
        let response: wire::RangeResponse = self.call("/v3/kv/range", &request)?;
        Ok(response.kvs.into_iter().next().map(key_value))
    }

    pub fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Revision, EtcdError> {
        let response: wire::PutResponse =
            self.call("/v3/kv/put", &put_request(key.as_bytes(), value, lease))?;
        Ok(response.header.revision.0)
    }

    /// Deletes `key`; answers how many keys went (0 or 1).
    pub fn delete(&self, key: &str) -> Result<i64, EtcdError> {
        let request = wire::DeleteRequest {
            key: B64(key.as_bytes().to_vec()),
            range_end: None,
        };
        let response: wire::DeleteResponse = self.call("/v3/kv/deleterange", &request)?;
        Ok(response.deleted.0)
    }

    pub fn txn(&self, txn: Txn) -> Result<TxnOutcome, EtcdError> {
        let response: wire::TxnResponse = self.call("/v3/kv/txn", &txn.request)?;
        Ok(TxnOutcome {
            succeeded: response.succeeded,
            revision: response.header.revision.0,
        })
    }

    /// A new lease of `ttl` (whole seconds, at least 1, as etcd counts them).
    pub fn grant(&self, ttl: Duration) -> Result<(LeaseId, Duration), EtcdError> {
        let seconds = ttl.as_secs().max(1) as i64;
        let response: wire::GrantResponse =
            self.call("/v3/lease/grant", &wire::GrantRequest { ttl: I64(seconds) })?;
        Ok((
            LeaseId(response.id.0),
            Duration::from_secs(response.ttl.0.max(0) as u64),
        ))
    }

    /// Renews `lease`; answers the TTL it has again, or `None` when it has expired.
    pub fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, EtcdError> {
        let frame: wire::KeepAliveFrame = self.call(
            "/v3/lease/keepalive",
            &wire::LeaseRequest { id: I64(lease.0) },
        )?;
        if let Some(status) = frame.error {
            return Err(EtcdError::Refused {
                code: status.code,
                message: status.message,
            });
        }
        let ttl = frame.result.map(|r| r.ttl.0).unwrap_or(0);
        // etcd answers a TTL of 0 (left out) for a lease it no longer has.
        Ok((ttl > 0).then(|| Duration::from_secs(ttl as u64)))
    }

    /// Revokes `lease`: its keys go at once.
    pub fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        let _: serde_json::Value =
            self.call("/v3/lease/revoke", &wire::LeaseRequest { id: I64(lease.0) })?;
        Ok(())
    }

    /// Campaigns in `election` under `lease` and waits until this campaign leads.
    pub fn campaign(
        &self,
        election: &str,
        value: &[u8],
        lease: LeaseId,
    ) -> Result<Leadership, EtcdError> {
        let request = wire::CampaignRequest {
            name: B64(election.as_bytes().to_vec()),
            lease: I64(lease.0),
            value: B64(value.to_vec()),
        };
        let response: wire::CampaignResponse =
            self.call_with(&self.waiting, "/v3/election/campaign", &request)?;
        Ok(Leadership {
            election: election.to_owned(),
            key: response.leader.key.0,
            revision: response.leader.rev.0,
            lease: LeaseId(response.leader.lease.0),
        })
    }

    /// The current leader's key and value in `election`, if anyone leads.
    pub fn leader(&self, election: &str) -> Result<Option<KeyValue>, EtcdError> {
        let request = wire::LeaderRequest {
            name: B64(election.as_bytes().to_vec()),
        };
        match self.call::<_, wire::LeaderResponse>("/v3/election/leader", &request) {
            Ok(response) => Ok(response.kv.map(key_value)),
            Err(EtcdError::Refused { message, .. }) if message.contains("no leader") => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Gives leadership up: the next campaign in line leads.
    pub fn resign(&self, leadership: &Leadership) -> Result<(), EtcdError> {
        let request = wire::ResignRequest {
            leader: wire::LeaderKey {
                name: B64(leadership.election.as_bytes().to_vec()),
                key: B64(leadership.key.clone()),
                rev: I64(leadership.revision),
                lease: I64(leadership.lease.0),
            },
        };
        let _: serde_json::Value = self.call("/v3/election/resign", &request)?;
        Ok(())
    }

    /// Asks every member, each within the call timeout, whether it knows of a leader.
    pub fn members(&self) -> MembersView {
        let mut view = MembersView::default();
        for endpoint in &self.endpoints {
            let answer = self
                .agent
                .post(format!("{endpoint}/v3/maintenance/status"))
                .header("Content-Type", "application/json")
                .send(&b"{}"[..]);
            let Ok(mut response) = answer else { continue };
            if response.status() != 200 {
                continue;
            }
            let Ok(text) = response.body_mut().read_to_string() else {
                continue;
            };
            if let Ok(status) = serde_json::from_str::<wire::StatusResponse>(&text) {
                view.reachable += 1;
                if status.leader.is_some_and(|id| !id.is_empty() && id != "0") {
                    view.with_leader += 1;
                }
            }
        }
        view
    }

    /// Bytes in use in the database of the member that answers (keys, values, their history
    /// until compaction, and the store's own structures).
    pub fn db_size_in_use(&self) -> Result<u64, EtcdError> {
        let status: wire::StatusResponse =
            self.call("/v3/maintenance/status", &serde_json::json!({}))?;
        Ok(status.db_size_in_use.0.max(0) as u64)
    }

    /// Compacts the history up to `revision`: older versions of keys are dropped.
    pub fn compact(&self, revision: Revision) -> Result<(), EtcdError> {
        let _: serde_json::Value = self.call(
            "/v3/kv/compaction",
            &serde_json::json!({ "revision": revision.to_string(), "physical": true }),
        )?;
        Ok(())
    }

    /// Follows `prefix` for as long as `handle` answers true: lists it and hands the listing
    /// over, then watches from the revision listed (nothing is missed between the two), and
    /// lists again whenever the watch breaks; waits `retry` after each failure. Blocks: run it
    /// on a thread of its own.
    pub fn follow(&self, prefix: &str, retry: Duration, mut handle: impl FnMut(Followed) -> bool) {
        loop {
            let (kvs, revision) = match self.list(prefix) {
                Ok(listing) => listing,
                Err(error) => {
                    tracing::debug!(%error, prefix, "cannot list yet");
                    std::thread::sleep(retry);
                    continue;
                }
            };
            if !handle(Followed::Listed(kvs)) {
                return;
            }
            let mut watch = match self.watch(prefix, revision + 1) {
                Ok(watch) => watch,
                Err(error) => {
                    tracing::debug!(%error, prefix, "cannot watch yet");
                    std::thread::sleep(retry);
                    continue;
                }
            };
            loop {
                match watch.next_batch() {
                    Ok(batch) => {
                        if !handle(Followed::Changed(batch.events)) {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, prefix, "a watch ended; listing again");
                        std::thread::sleep(retry);
                        break;
                    }
                }
            }
        }
    }

    /// Watches every key under `prefix` from `start` (inclusive).
    pub fn watch(&self, prefix: &str, start: Revision) -> Result<Watch, EtcdError> {
        let request = wire::WatchCreate {
            create_request: wire::WatchCreateRequest {
                key: B64(prefix.as_bytes().to_vec()),
                range_end: B64(prefix_end(prefix.as_bytes())),
                start_revision: I64(start),
            },
        };
        let body = serde_json::to_vec(&request).map_err(|e| EtcdError::Invalid(e.to_string()))?;
        let (reader, endpoint) = self.each_member(|endpoint| {
            let response = self
                .waiting
                .post(format!("{endpoint}/v3/watch"))
                .header("Content-Type", "application/json")
                .send(&body[..])
                .map_err(|error| unreachable(endpoint, &error))?;
            if response.status() != 200 {
                return Err(refusal(response.status().as_u16(), response));
            }
            Ok(response.into_body().into_reader())
        })?;
        Ok(Watch::new(Box::new(reader), endpoint, start))
    }

    fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, EtcdError> {
        self.call_with(&self.agent, path, request)
    }

    fn call_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        agent: &ureq::Agent,
        path: &str,
        request: &Req,
    ) -> Result<Resp, EtcdError> {
        let body = serde_json::to_vec(request).map_err(|e| EtcdError::Invalid(e.to_string()))?;
        let (answer, _) = self.each_member(|endpoint| {
            let mut response = agent
                .post(format!("{endpoint}{path}"))
                .header("Content-Type", "application/json")
                .send(&body[..])
                .map_err(|error| unreachable(endpoint, &error))?;
            if response.status() != 200 {
                return Err(refusal(response.status().as_u16(), response));
            }
            let text = response
                .body_mut()
                .read_to_string()
                .map_err(|error| unreachable(endpoint, &error))?;
            serde_json::from_str::<Resp>(&text).map_err(|error| EtcdError::Decode {
                path: path.to_owned(),
                detail: error.to_string(),
            })
        })?;
        Ok(answer)
    }

    /// Runs `attempt` on the preferred member, then on each other one while the failure is
    /// one another member may not have.
    fn each_member<T>(
        &self,
        mut attempt: impl FnMut(&str) -> Result<T, EtcdError>,
    ) -> Result<(T, String), EtcdError> {
        let first = self.preferred.load(Ordering::Relaxed) % self.endpoints.len();
        let mut last = None;
        for offset in 0..self.endpoints.len() {
            let index = (first + offset) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            match attempt(endpoint) {
                Ok(answer) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok((answer, endpoint.clone()));
                }
                Err(error) if error.worth_another_member() => last = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Invalid("no etcd endpoint given".into())))
    }
}

fn put_request(key: &[u8], value: &[u8], lease: Option<LeaseId>) -> wire::PutRequest {
    wire::PutRequest {
        key: B64(key.to_vec()),
        value: B64(value.to_vec()),
        lease: lease.map(|l| I64(l.0)),
    }
}

fn key_value(kv: wire::Kv) -> KeyValue {
    KeyValue {
        key: kv.key.0,
        value: kv.value.0,
        create_revision: kv.create_revision.0,
        mod_revision: kv.mod_revision.0,
        lease: (kv.lease.0 != 0).then_some(LeaseId(kv.lease.0)),
    }
}

/// The end of the range of keys starting with `prefix`: the prefix with its last byte below
/// 0xff incremented (etcd's convention; `\0` means "to the end of the keyspace").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn unreachable(endpoint: &str, error: &ureq::Error) -> EtcdError {
    EtcdError::Unreachable {
        endpoint: endpoint.to_owned(),
        detail: error.to_string(),
    }
}

fn refusal(status: u16, response: ureq::http::Response<ureq::Body>) -> EtcdError {
    let text = response
        .into_body()
        .read_to_string()
        .unwrap_or_else(|_| String::new());
    match serde_json::from_str::<wire::Status>(&text) {
        Ok(status) => EtcdError::Refused {
            code: status.code,
            message: status.message,
        },
        Err(_) => EtcdError::Refused {
            code: -i64::from(status),
            message: format!("HTTP {status}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_prefix_ends_past_every_key_that_starts_with_it() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    proptest! {
        #[test]
        fn keys_under_a_prefix_sort_inside_its_range(
            prefix in proptest::collection::vec(any::<u8>(), 1..6),
            rest in proptest::collection::vec(any::<u8>(), 0..6),
        ) {
            let end = prefix_end(&prefix);
            let mut key = prefix.clone();
            key.extend_from_slice(&rest);
            prop_assert!(key >= prefix);
            prop_assert!(end == vec![0] || key < end);
        }
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        let error = Client::new(&["127.0.0.1:2379".into()], Duration::from_secs(1)).unwrap_err();
        assert!(
            error.to_string().contains("expected http://HOST:PORT"),
            "{error}"
        );
        assert!(Client::new(&[], Duration::from_secs(1)).is_err());
    }
}
