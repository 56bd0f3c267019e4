//! What travels on the cluster port, and how it is encoded.
//!
//! Every request and answer body is CBOR (`ciborium`): compact, binary,
//! self-describing, so openraft's own serde types go over it unchanged. A
//! snapshot chunk is the exception for its bytes: its body is a 4-byte
//! length, the CBOR head of the request, then the chunk's bytes raw (serde
//! would write a `Vec<u8>` as a list of numbers).
//!
//! Commands travel as the log writes them ([`crate::format_v1`]); a
//! forwarded write's answer mirrors the catalog's `Outcome` here. This is
//! the wire form between nodes of one version, not a stored form: nothing
//! here is written to disk.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use muster_catalog::{ApplyError, ApplyResult, Command, Done, Instance, Outcome, ServiceKey};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest};

use crate::log_store::EncodedEntries;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::format_v1::{CommandV1, InstanceV1, ServiceKeyV1};
use crate::types::{SnapshotMeta, TypeConfig};
use crate::{Applied, ProposeError};

/// The content type of every cluster RPC body.
pub(crate) const CONTENT_TYPE: &str = "application/cbor";

/// Encodes `value` as CBOR.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    let mut out = BytesMut::new().writer();
    ciborium::into_writer(value, &mut out).map_err(|e| format!("encoding: {e}"))?;
    Ok(out.into_inner().freeze())
}

/// Decodes CBOR bytes.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    ciborium::from_reader(bytes).map_err(|e| format!("decoding: {e}"))
}

/// The head of a snapshot chunk: everything but its bytes.
#[derive(Serialize, Deserialize)]
struct ChunkHead {
    vote: openraft::Vote<u64>,
    meta: SnapshotMeta,
    offset: u64,
    done: bool,
}

/// A snapshot chunk as a body: head length (u32, big-endian), head, bytes.
pub(crate) fn encode_chunk(req: InstallSnapshotRequest<TypeConfig>) -> Result<Bytes, String> {
    let head = encode(&ChunkHead {
        vote: req.vote,
        meta: req.meta,
        offset: req.offset,
        done: req.done,
    })?;
    let len = u32::try_from(head.len()).map_err(|_| "snapshot chunk head too large".to_string())?;
    let mut out = BytesMut::with_capacity(4 + head.len() + req.data.len());
    out.put_u32(len);
    out.put_slice(&head);
    out.put_slice(&req.data);
    Ok(out.freeze())
}

/// Reads a body made by [`encode_chunk`].
pub(crate) fn decode_chunk(mut body: Bytes) -> Result<InstallSnapshotRequest<TypeConfig>, String> {
    if body.len() < 4 {
        return Err("snapshot chunk shorter than its head length".into());
    }
    let len = body.get_u32() as usize;
    if body.len() < len {
        return Err("snapshot chunk shorter than its head".into());
    }
    let head: ChunkHead = decode(&body.split_to(len))?;
    Ok(InstallSnapshotRequest {
        vote: head.vote,
        meta: head.meta,
        offset: head.offset,
        data: body.to_vec(),
        done: head.done,
    })
}

/// The head of an append-entries body: everything but its entries.
#[derive(Serialize, Deserialize)]
struct AppendHead {
    vote: openraft::Vote<u64>,
    prev_log_id: Option<crate::types::LogId>,
    leader_commit: Option<crate::types::LogId>,
    entries: u32,
}

/// An append-entries request as a body: the head's length (u32,
/// big-endian), the head (CBOR), then each entry as its length (u32) and
/// its bytes as the log stores them ([`crate::codec`]: format version,
/// checksum, JSON). The leader sends the bytes its log just wrote, and the
/// follower's log stores them unchanged: an entry is encoded once in the
/// cluster, not once more per follower and again on each.
pub(crate) fn encode_append(
    req: AppendEntriesRequest<TypeConfig>,
    encoded: &EncodedEntries,
) -> Result<Bytes, String> {
    let head = encode(&AppendHead {
        vote: req.vote,
        prev_log_id: req.prev_log_id,
        leader_commit: req.leader_commit,
        entries: u32::try_from(req.entries.len()).map_err(|_| "too many entries".to_string())?,
    })?;
    let mut parts = Vec::with_capacity(req.entries.len());
    for entry in &req.entries {
        let bytes = match encoded.get(&entry.log_id) {
            Some(bytes) => bytes,
            None => crate::codec::encode_entry(entry)
                .map_err(|e| format!("encoding entry {}: {e}", entry.log_id))?
                .into(),
        };
        parts.push(bytes);
    }
    let size = 4 + head.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u32(u32::try_from(head.len()).map_err(|_| "append head too large".to_string())?);
    out.put_slice(&head);
    for part in parts {
        out.put_u32(u32::try_from(part.len()).map_err(|_| "entry too large".to_string())?);
        out.put_slice(&part);
    }
    Ok(out.freeze())
}

/// Reads a body made by [`encode_append`]; each entry's bytes are checked
/// (format version, checksum) and kept in `encoded` for the log to store.
pub(crate) fn decode_append(
    mut body: Bytes,
    encoded: &EncodedEntries,
) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    fn take(body: &mut Bytes, what: &str) -> Result<Bytes, String> {
        if body.len() < 4 {
            return Err(format!("append body ends before the length of {what}"));
        }
        let len = body.get_u32() as usize;
        if body.len() < len {
            return Err(format!("append body ends inside {what}"));
        }
        Ok(body.split_to(len))
    }
    let head: AppendHead = decode(&take(&mut body, "its head")?)?;
    let mut entries = Vec::with_capacity(head.entries.min(4096) as usize);
    for _ in 0..head.entries {
        let bytes = take(&mut body, "an entry")?;
        let entry = crate::codec::decode_entry(&bytes).map_err(|e| format!("decoding: {e}"))?;
        encoded.put(entry.log_id, bytes.as_ref().into());
        entries.push(entry);
    }
    if !body.is_empty() {
        return Err("append body has bytes after its entries".into());
    }
    Ok(AppendEntriesRequest {
        vote: head.vote,
        prev_log_id: head.prev_log_id,
        leader_commit: head.leader_commit,
        entries,
    })
}

/// Writes forwarded by a follower to the leader, answered one
/// [`ForwardReply`] each, in order.
#[derive(Serialize, Deserialize)]
pub(crate) struct ForwardRequest(pub(crate) Vec<Forwarded>);

/// One forwarded write.
#[derive(Serialize, Deserialize)]
pub(crate) struct Forwarded(#[serde(with = "CommandV1")] pub(crate) Command);

/// The leader's answer to a forwarded write.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    /// Committed and applied on the leader at `index`, with its result.
    Applied {
        index: u64,
        #[serde(with = "apply_result")]
        result: ApplyResult,
    },
    /// The receiver does not lead (any more).
    NotLeader { leader: Option<u64> },
    /// The leader is shutting down.
    ShuttingDown,
    /// The leader failed to write.
    Failed(String),
}

impl ForwardReply {
    pub(crate) fn from_result(r: Result<Applied, ProposeError>) -> ForwardReply {
        match r {
            Ok(a) => ForwardReply::Applied {
                index: a.index,
                result: a.result,
            },
            Err(ProposeError::NotLeader { leader }) => ForwardReply::NotLeader { leader },
            // Only a forwarding node meets OutcomeUnknown; were a leader to,
            // "stopping" is what its forwarder reads as unknown too.
            Err(ProposeError::ShuttingDown | ProposeError::OutcomeUnknown { .. }) => {
                ForwardReply::ShuttingDown
            }
            Err(ProposeError::Fatal(m)) => ForwardReply::Failed(m),
            // A leader is a member; a removed node forwards nothing.
            Err(e @ ProposeError::Removed { .. }) => ForwardReply::Failed(e.to_string()),
        }
    }
}

/// A lease renewal forwarded by a follower to the leader.
#[derive(Serialize, Deserialize)]
pub(crate) struct RenewRequest {
    pub(crate) ids: Vec<u64>,
}

/// The leader's answer to forwarded renewals.
#[derive(Serialize, Deserialize)]
pub(crate) enum RenewReply {
    /// One answer per id, in order.
    Renewed(Vec<crate::Renewal>),
    /// The receiver does not lead (any more).
    NotLeader { leader: Option<u64> },
}

/// A node introducing itself to its peers: its id, HTTP address and the
/// cluster address it advertises (absent from nodes of before it was
/// added).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) node_id: u64,
    pub(crate) http_addr: String,
    #[serde(default)]
    pub(crate) cluster_addr: Option<String>,
}

/// [`Outcome`] on the wire.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Outcome")]
struct OutcomeWire {
    #[serde(with = "DoneWire")]
    done: Done,
    #[serde(with = "keys")]
    changed: Vec<ServiceKey>,
    leases_created: Vec<(u64, u64)>,
    leases_removed: Vec<u64>,
}

/// [`Done`] on the wire.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Done")]
enum DoneWire {
    Instance(#[serde(with = "arc_instance")] Arc<Instance>),
    Removed(u64),
    Preserved(u64),
    LeaseCreated(u64),
    NodeRetired(u64),
    Restore(u64),
    Acl,
}

/// [`ApplyError`] on the wire.
#[derive(Serialize, Deserialize)]
#[serde(remote = "ApplyError")]
enum ApplyErrorWire {
    UnknownLease(u64),
    LeaseExists(u64),
    NoRestore(u64),
    UnknownInstance {
        service: String,
        id: String,
    },
    UnknownCheck {
        id: String,
        check: String,
    },
    OverLimit {
        id: String,
        field: String,
        max: usize,
    },
    AclBootstrapped,
    UnknownToken(String),
    UnknownPolicy(String),
}

mod arc_instance {
    use super::*;

    pub(super) fn serialize<S: Serializer>(i: &Arc<Instance>, s: S) -> Result<S::Ok, S::Error> {
        InstanceV1::serialize(i, s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Instance>, D::Error> {
        InstanceV1::deserialize(d).map(Arc::new)
    }
}

mod keys {
    use super::*;

    struct Out<'a>(&'a ServiceKey);
    impl Serialize for Out<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            ServiceKeyV1::serialize(self.0, s)
        }
    }
    #[derive(Deserialize)]
    struct In(#[serde(with = "ServiceKeyV1")] ServiceKey);

    pub(super) fn serialize<S: Serializer>(k: &[ServiceKey], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(k.iter().map(Out))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<ServiceKey>, D::Error> {
        Ok(Vec::<In>::deserialize(d)?
            .into_iter()
            .map(|k| k.0)
            .collect())
    }
}

mod apply_result {
    use super::*;

    #[derive(Serialize)]
    enum Out<'a> {
        Ok(#[serde(with = "OutcomeWire")] &'a Outcome),
        Err(#[serde(with = "ApplyErrorWire")] &'a ApplyError),
    }

    #[derive(Deserialize)]
    enum In {
        Ok(#[serde(with = "OutcomeWire")] Outcome),
        Err(#[serde(with = "ApplyErrorWire")] ApplyError),
    }

    pub(super) fn serialize<S: Serializer>(r: &ApplyResult, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Ok(o) => Out::Ok(o),
            Err(e) => Out::Err(e),
        }
        .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ApplyResult, D::Error> {
        Ok(match In::deserialize(d)? {
            In::Ok(o) => Ok(o),
            In::Err(e) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, ids: &[&str]) -> crate::types::Entry {
        let commands: Vec<Command> = ids
            .iter()
            .map(|id| Command::Deregister {
                namespace: "default".into(),
                service: "payments".into(),
                id: (*id).into(),
            })
            .collect();
        crate::types::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), index),
            payload: openraft::EntryPayload::Normal(crate::types::Request {
                now_ms: 1_000,
                commands: commands.into(),
            }),
        }
    }

    /// An append-entries body carries each entry as the log stores it: the
    /// follower gets the same entries, keeps their bytes for its log, and
    /// refuses a body whose entry bytes were changed.
    #[test]
    fn append_entries_travel_as_stored_bytes() {
        let leader = EncodedEntries::default();
        let (e1, e2) = (entry(5, &["a", "b"]), entry(6, &["c"]));
        // The leader's log encoded entry 5; entry 6 is encoded for the call.
        let stored = crate::codec::encode_entry(&e1).unwrap();
        leader.put(e1.log_id, stored.as_slice().into());
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: openraft::Vote::new_committed(2, 1),
            prev_log_id: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(2, 1),
                4,
            )),
            leader_commit: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(2, 1),
                3,
            )),
            entries: vec![e1.clone(), e2.clone()],
        };
        let body = encode_append(req.clone(), &leader).unwrap();

        let follower = EncodedEntries::default();
        let got = decode_append(body.clone(), &follower).unwrap();
        assert_eq!(got.vote, req.vote);
        assert_eq!(got.prev_log_id, req.prev_log_id);
        assert_eq!(got.leader_commit, req.leader_commit);
        assert_eq!(got.entries, vec![e1.clone(), e2.clone()]);
        assert_eq!(follower.get(&e1.log_id).as_deref(), Some(stored.as_slice()));
        assert_eq!(
            follower.get(&e2.log_id).as_deref(),
            Some(crate::codec::encode_entry(&e2).unwrap().as_slice())
        );
        // Another entry at the same index is not taken for it.
        let other = openraft::LogId::new(openraft::CommittedLeaderId::new(3, 2), 5);
        assert!(follower.get(&other).is_none());

        // A flipped byte inside an entry's JSON fails its checksum.
        let mut damaged = body.to_vec();
        let at = damaged.len() - 3;
        damaged[at] ^= 0x01;
        let err = decode_append(damaged.into(), &EncodedEntries::default()).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        // A cut body is refused, not read short.
        let err =
            decode_append(body.slice(..body.len() - 1), &EncodedEntries::default()).unwrap_err();
        assert!(err.contains("ends inside"), "{err}");
    }

    #[test]
    fn a_forwarded_result_survives_the_wire() {
        let mut catalog = muster_catalog::Catalog::new();
        let cmd = Command::Register {
            namespace: "default".into(),
            service: "payments".into(),
            instance: muster_catalog::InstanceData {
                id: "a".into(),
                address: "10.0.0.1".into(),
                port: 8080,
                tags: ["v2".to_string()].into(),
                meta: Default::default(),
                version: Some("1.4.0".into()),
                zone: None,
                weight: 100,
                checks: Vec::new(),
            },
            lease: muster_catalog::LeaseRef::None,
        };
        let result = catalog.apply(7, 1_000, &cmd);
        assert!(result.is_ok());
        let bytes = encode(&ForwardReply::Applied {
            index: 7,
            result: result.clone(),
        })
        .unwrap();
        match decode::<ForwardReply>(&bytes).unwrap() {
            ForwardReply::Applied { index, result: got } => {
                assert_eq!(index, 7);
                assert_eq!(got, result);
            }
            _ => panic!("not applied"),
        }
        let err: ApplyResult = Err(ApplyError::UnknownLease(9));
        let bytes = encode(&ForwardReply::Applied {
            index: 8,
            result: err.clone(),
        })
        .unwrap();
        assert!(matches!(
            decode::<ForwardReply>(&bytes).unwrap(),
            ForwardReply::Applied { result, .. } if result == err
        ));
        let two = ForwardRequest(vec![Forwarded(cmd.clone()), Forwarded(cmd.clone())]);
        let fwd = decode::<ForwardRequest>(&encode(&two).unwrap()).unwrap();
        assert_eq!(fwd.0.len(), 2);
        assert!(fwd.0.iter().all(|Forwarded(c)| *c == cmd));
    }
}

/// The leader's answer to a follower asking for the read index.
#[derive(Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    /// Confirmed by a quorum: a linearizable read reflects this index.
    Index(u64),
    /// The receiver does not lead, or could not confirm it does.
    NotLeader { leader: Option<u64> },
}
