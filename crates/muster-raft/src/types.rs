//! The openraft type configuration and the log entry payload.

use muster_catalog::{ApplyResult, Command};
use serde::{Deserialize, Serialize};

/// The payload of a normal log entry: a batch of commands (every proposal
/// that was queued when the entry was formed) and the leader's clock.
///
/// The commands are applied in order, all at the entry's log index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Request {
    /// The leader's wall clock (ms since the Unix epoch) when it formed the
    /// batch.
    pub(crate) now_ms: u64,
    /// The commands, in the order they are applied; written as version 1
    /// defines them ([`crate::format_v1`]). Shared, so that the copies
    /// openraft reads of a just-appended entry (one per follower it sends
    /// the entry to, one to apply it) cost a reference count, not a decode.
    #[serde(with = "crate::format_v1::commands_v1")]
    pub(crate) commands: std::sync::Arc<[Command]>,
}

/// What applying an entry gave: one result per command of the batch, in
/// order (empty for blank and membership entries).
///
/// It never leaves the node that applied the entry: a proposal is answered
/// where it was made (a follower forwards the request, not the result). The
/// serde implementations exist only because openraft's `serde` feature asks
/// every response type for them, and both refuse, so the catalog's types
/// need no serialised form of their own.
#[derive(Debug, Default)]
pub(crate) struct Response(pub(crate) Vec<ApplyResult>);

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "apply results are answered on the node that applied them, never sent",
        ))
    }
}

impl<'de> Deserialize<'de> for Response {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "apply results are answered on the node that applied them, never received",
        ))
    }
}

openraft::declare_raft_types!(
    /// muster's openraft types.
    pub(crate) TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A log id.
pub(crate) type LogId = openraft::LogId<u64>;
/// A log entry.
pub(crate) type Entry = openraft::Entry<TypeConfig>;
/// openraft's storage error.
pub(crate) type StorageError = openraft::StorageError<u64>;
/// A membership with the log id it was stored at.
pub(crate) type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// Snapshot metadata.
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
/// The raft handle.
pub(crate) type Raft = openraft::Raft<TypeConfig>;
