//! The JSON shapes of etcd's v3 gateway.
//!
//! The gateway maps protobuf to JSON: `bytes` fields are base64 strings, 64-bit integers are
//! decimal strings, and fields at their default value are left out. The types here speak that
//! mapping and nothing more; [`super::Client`] turns them into the crate's own types.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes as the gateway carries them: base64 in a JSON string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<B64, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map(B64)
            .map_err(serde::de::Error::custom)
    }
}

/// A 64-bit integer as the gateway writes it (a decimal string); numbers are taken too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I64(pub i64);

impl Serialize for I64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for I64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<I64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(i64),
        }
        match Either::deserialize(deserializer)? {
            Either::Number(n) => Ok(I64(n)),
            Either::Text(text) => text.parse().map(I64).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Header {
    #[serde(default)]
    pub revision: I64,
}

#[derive(Debug, Default, Deserialize)]
pub struct Kv {
    #[serde(default)]
    pub key: B64,
    #[serde(default)]
    pub value: B64,
    #[serde(default)]
    pub create_revision: I64,
    #[serde(default)]
    pub mod_revision: I64,
    #[serde(default)]
    pub lease: I64,
}

#[derive(Debug, Default, Serialize)]
pub struct RangeRequest {
    pub key: B64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<B64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<I64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<I64>,
    /// `ASCEND` or `DESCEND`, with `sort_target`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_order: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort_target: Option<&'static str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub kvs: Vec<Kv>,
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PutRequest {
    pub key: B64,
    pub value: B64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<I64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PutResponse {
    #[serde(default)]
    pub header: Header,
}

#[derive(Debug, Default, Serialize)]
pub struct DeleteRequest {
    pub key: B64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<B64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeleteResponse {
    #[serde(default)]
    pub deleted: I64,
}

#[derive(Debug, Serialize)]
pub struct Compare {
    pub key: B64,
    pub target: &'static str,
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_revision: Option<I64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<I64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<I64>,
}

#[derive(Debug, Serialize)]
pub enum Op {
    #[serde(rename = "request_put")]
    Put(PutRequest),
    #[serde(rename = "request_delete_range")]
    DeleteRange(DeleteRequest),
}

#[derive(Debug, Default, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TxnResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub succeeded: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub struct GrantRequest {
    pub ttl: I64,
}

#[derive(Debug, Deserialize)]
pub struct GrantResponse {
    #[serde(rename = "ID")]
    pub id: I64,
    #[serde(rename = "TTL")]
    pub ttl: I64,
}

#[derive(Debug, Serialize)]
pub struct LeaseRequest {
    #[serde(rename = "ID")]
    pub id: I64,
}

#[derive(Debug, Deserialize)]
pub struct KeepAliveFrame {
    pub result: Option<KeepAliveResponse>,
    pub error: Option<Status>,
}

#[derive(Debug, Default, Deserialize)]
pub struct KeepAliveResponse {
    #[serde(rename = "TTL", default)]
    pub ttl: I64,
}

#[derive(Debug, Serialize)]
pub struct CampaignRequest {
    pub name: B64,
    pub lease: I64,
    pub value: B64,
}

#[derive(Debug, Deserialize)]
pub struct CampaignResponse {
    pub leader: LeaderKey,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LeaderKey {
    pub name: B64,
    pub key: B64,
    pub rev: I64,
    pub lease: I64,
}

#[derive(Debug, Serialize)]
pub struct LeaderRequest {
    pub name: B64,
}

#[derive(Debug, Deserialize)]
pub struct LeaderResponse {
    pub kv: Option<Kv>,
}

#[derive(Debug, Serialize)]
pub struct ResignRequest {
    pub leader: LeaderKey,
}

#[derive(Debug, Serialize)]
pub struct WatchCreate {
    pub create_request: WatchCreateRequest,
}

#[derive(Debug, Serialize)]
pub struct WatchCreateRequest {
    pub key: B64,
    pub range_end: B64,
    pub start_revision: I64,
}

#[derive(Debug, Deserialize)]
pub struct WatchFrame {
    pub result: Option<WatchResponse>,
    pub error: Option<Status>,
}

#[derive(Debug, Default, Deserialize)]
pub struct WatchResponse {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default)]
    pub compact_revision: I64,
    #[serde(default)]
    pub events: Vec<WatchEvent>,
}

#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    /// "PUT" is the default and so is left out; a deletion says "DELETE".
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub kv: Kv,
}

/// An error as the gateway reports it (a streamed call names the code `grpc_code`).
#[derive(Debug, Deserialize)]
pub struct Status {
    #[serde(default, alias = "grpc_code")]
    pub code: i64,
    #[serde(default)]
    pub message: String,
}

/// A member's own view of the cluster (`/v3/maintenance/status`).
#[derive(Debug, Default, Deserialize)]
pub struct StatusResponse {
    /// The leader's member id (an unsigned 64-bit decimal); left out while the member knows
    /// of no leader.
    #[serde(default)]
    pub leader: Option<String>,
    /// Bytes of the member's database file in use (free pages left out).
    #[serde(rename = "dbSizeInUse", default)]
    pub db_size_in_use: I64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_integers_round_trip_through_the_gateway_mapping() {
        let bytes = B64(vec![0, 1, 2, 250, 255]);
        let text = serde_json::to_string(&bytes).unwrap();
        assert_eq!(serde_json::from_str::<B64>(&text).unwrap(), bytes);
        assert_eq!(serde_json::to_string(&I64(-7)).unwrap(), "\"-7\"");
        assert_eq!(serde_json::from_str::<I64>("\"42\"").unwrap(), I64(42));
        assert_eq!(serde_json::from_str::<I64>("42").unwrap(), I64(42));
        assert!(serde_json::from_str::<I64>("\"4x\"").is_err());
        assert!(serde_json::from_str::<B64>("\"not base64!\"").is_err());
    }

    #[test]
    fn a_watch_frame_as_etcd_sends_it_decodes() {
        let frame = r#"{"result":{"header":{"revision":"5"},"events":[{"kv":{"key":"YTI=","create_revision":"5","mod_revision":"5","version":"1","value":"YmFy"}},{"type":"DELETE","kv":{"key":"YTE=","mod_revision":"6"}}]}}"#;
        let frame: WatchFrame = serde_json::from_str(frame).unwrap();
        let result = frame.result.unwrap();
        assert_eq!(result.header.revision, I64(5));
        assert_eq!(result.events[0].kv.key.0, b"a2");
        assert_eq!(result.events[0].kind, None);
        assert_eq!(result.events[1].kind.as_deref(), Some("DELETE"));
    }

    #[test]
    fn a_member_without_a_leader_says_so() {
        let status = r#"{"header":{"revision":"1"},"version":"3.4.23","raftTerm":"2","errors":["etcdserver: no leader"]}"#;
        let status: StatusResponse = serde_json::from_str(status).unwrap();
        assert_eq!(status.leader, None);
        let led = r#"{"leader":"11539305337000706507","dbSizeInUse":"16384"}"#;
        let led: StatusResponse = serde_json::from_str(led).unwrap();
        assert_eq!(led.leader.as_deref(), Some("11539305337000706507"));
        assert_eq!(led.db_size_in_use, I64(16_384));
        let frame = r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#;
        let frame: KeepAliveFrame = serde_json::from_str(frame).unwrap();
        assert_eq!(frame.error.unwrap().code, 14);
    }
}
