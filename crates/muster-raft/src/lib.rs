//! The one crate of muster that names openraft.
//!
//! It adapts [`muster_store::LogStore`] (a durable, group-committed log) and
//! the in-memory [`muster_catalog::Catalog`] to openraft's v2 storage traits
//! and exposes a small [`Node`] API: open, wait until ready, propose a
//! command, read the catalog, shut down.
//!
//! # Guarantees
//!
//! * **Acknowledged means durable.** [`Node::propose`] returns only after the
//!   entry was fsynced (openraft is told a log append is flushed only from the
//!   store's durability callback) and applied to the catalog.
//! * **Group commit.** Concurrent proposals are batched into one log entry
//!   (one append, one fsync); the commands of an entry are applied in order,
//!   all at its index. A lone proposal is not delayed: it goes out at once as
//!   a batch of one, and proposals arriving meanwhile form the next batch.
//! * **Rebuilt on start.** The catalog lives in memory. On start-up it is
//!   loaded from the last snapshot, then openraft re-applies every committed
//!   log entry after it (the committed log id is saved for that purpose).
//! * **One node or several.** [`Node::open`] runs a cluster of one: a fresh
//!   data directory is initialised with this node as the only voter.
//!   [`Node::open_cluster`] runs a member of a cluster of several, formed
//!   from static peers and served on its own listener (see [`cluster`] for
//!   the bootstrap rule, cluster RPC and the forwarding of writes).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// openraft's `StorageError` (over 200 bytes) is the error type its storage
// traits require; the helpers that produce it return it as is.
#![allow(clippy::result_large_err)]

pub mod backup;
mod batcher;
pub mod cluster;
mod codec;
mod format_v1;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod log_store;
mod node;
mod snapshot_file;
mod state_machine;
mod types;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use backup::{BackupStream, RestoreError, RestoreReport};
pub use cluster::ClusterConfig;
pub use cluster::membership::{MemberChange, MemberError};
pub use muster_store::StoreError;
pub use node::Node;

/// Configuration of a raft node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// This node's id; stable across restarts.
    pub node_id: u64,
    /// Directory holding the store (`raft.redb`); created if missing.
    pub data_dir: PathBuf,
    /// Build a snapshot after this many log entries since the last one
    /// (at least 1).
    pub snapshot_logs: u64,
    /// Also build one after this many commands since the last one, or a
    /// eighth of the instances that one held if more (at least 1). One
    /// entry carries a whole batch of commands, so this is what bounds the
    /// replay on restart.
    pub snapshot_commands: u64,
    /// Start from the snapshot alone when the log no longer reaches it,
    /// accepting the loss of every write acknowledged after the snapshot
    /// (an operator's decision; refused by default).
    pub force_recover_from_snapshot: bool,
}

/// Receives what the state machine did, for watches, caches and timers.
pub trait ApplyObserver: Send + Sync + 'static {
    /// Called after a batch of entries was applied, with the catalog lock
    /// released, in log order.
    ///
    /// Called once per command, in the order applied; the commands of one
    /// entry (one batch of proposals) share its `index`. Entries without a
    /// command (blank and membership entries) only advance the catalog's
    /// applied index and are not reported. Also called for entries
    /// re-applied at start-up.
    fn applied(&self, index: u64, result: &muster_catalog::ApplyResult);

    /// Called after the whole catalog was replaced (snapshot loaded at
    /// start-up or installed).
    ///
    /// The catalog's read lock is held during the call: do not try to take
    /// the write lock from here.
    fn restored(&self, catalog: &muster_catalog::Catalog);

    /// Called once when this node learns that it was removed from its
    /// cluster: it applies its own retirement (an entry, or a snapshot that
    /// holds it), just before the `applied` or `restored` call that carries
    /// it; or, removed while it was down, a member refuses one of its
    /// calls because its id is retired (then `index` is the last it
    /// applied).
    /// From then on [`Node::removed`] is `true`.
    fn retired(&self, _index: u64) {}
}

/// A committed and applied proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The log index of the entry: the catalog's version after it.
    /// Proposals batched into one entry share it.
    pub index: u64,
    /// What the catalog made of the command.
    pub result: muster_catalog::ApplyResult,
}

/// A snapshot of a node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// This node's id.
    pub node_id: u64,
    /// The current leader, if known.
    pub leader: Option<u64>,
    /// Voting members of the cluster.
    pub members: Vec<u64>,
    /// Highest log index known to be committed.
    pub commit_index: u64,
    /// Highest log index applied to the catalog.
    pub applied_index: u64,
    /// Every member (voters and learners), by id; empty on a node without
    /// cluster RPC.
    pub nodes: Vec<MemberInfo>,
    /// Snapshots streamed from a leader and installed since this process
    /// started (a follower that fell behind the leader's compacted log).
    pub snapshots_installed: u64,
    /// Lease renewals this node forwarded to the leader since it started,
    /// and the calls that carried them (renewals arriving together share
    /// a call).
    pub forwarded_renewals: (u64, u64),
    /// Lease renewals this follower answered itself since it started,
    /// passed on to the leader in batches (the ids of each batch count in
    /// `forwarded_renewals`).
    pub renewals_passed_on: u64,
    /// Writes this node forwarded to the leader since it started, and the
    /// calls that carried them.
    pub forwarded_writes: (u64, u64),
    /// TLS handshakes its cluster listener refused since it started (no
    /// client certificate, one from another CA, a cleartext client).
    pub cluster_tls_handshake_failures: u64,
}

/// Whom a node follows, as its raft state says: the term it is in and the
/// leader it accepted in that term (itself, when it leads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Leadership {
    /// The node's current term.
    pub term: u64,
    /// The leader of that term, once this node knows it.
    pub leader: Option<u64>,
}

/// What a member is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It leads.
    Leader,
    /// A voter that follows (or stands as candidate).
    Follower,
    /// It replicates the log but does not vote.
    Learner,
}

/// One member of the cluster, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Its node id.
    pub id: u64,
    /// Its role as this node knows it.
    pub role: Role,
    /// Its cluster RPC address.
    pub cluster_addr: String,
    /// Its HTTP API address, once learned.
    pub http_addr: Option<String>,
    /// The last log index known to be replicated to it (known on the
    /// leader only; on the leader itself, its last log index).
    pub match_index: Option<u64>,
    /// Whether it answers: on the leader, heard from within
    /// [`UNREACHABLE_AFTER`] (each follower answers every heartbeat); on a
    /// follower, known only for the leader. `Some(true)` for itself.
    pub reachable: Option<bool>,
    /// Milliseconds since this node last heard from it: on the leader,
    /// from each follower's last answer; on a follower, from the leader's
    /// last append-entries. `None` when not heard from, and for itself.
    pub last_contact_ms: Option<u64>,
}

/// A member not heard from for this long is shown as unreachable (the
/// leader hears from each follower every heartbeat, 100 ms).
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(2);

/// The registry's side of calls that followers forward to the leader
/// because their state lives in the leader's memory, not in the log.
pub trait LeaderService: Send + Sync + 'static {
    /// Renews the leases `ids`, one answer per id, in order.
    fn renew(&self, ids: &[u64]) -> Vec<Renewal>;

    /// Records a TTL check report (the leader runs the checks), answered
    /// once the status it reports is committed.
    fn report(
        &self,
        report: CheckReport,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ReportAnswer> + Send + '_>>;
}

/// A TTL check report, made on the leader.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckReport {
    /// The instance's namespace.
    pub namespace: String,
    /// Its service.
    pub service: String,
    /// The instance id.
    pub id: String,
    /// The check's id.
    pub check: String,
    /// The status reported.
    pub status: muster_types::Health,
    /// The output reported (already truncated).
    pub output: String,
}

/// The leader's answer to a [`CheckReport`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReportAnswer {
    /// Recorded; the status is committed at or before `index`.
    Done {
        /// A log index at which the reported status holds.
        index: u64,
    },
    /// No such instance or check.
    Missing,
    /// The check is not a TTL check.
    NotTtl,
    /// The node does not lead (any more).
    NotLeader,
    /// The status could not be written.
    Failed(String),
}

/// The answer to one lease renewal made on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Renewal {
    /// Renewed; its TTL in milliseconds.
    Renewed {
        /// The lease's TTL.
        ttl_ms: u64,
    },
    /// No such lease.
    NotFound,
    /// The node does not lead (any more).
    NotLeader,
}

/// Why a running node can no longer make writes durable: its store failed
/// a commit (it refuses every later write), or openraft stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The disk (or a quota) is full: the failure passes once space is
    /// freed and the node restarted on the same data.
    pub storage_full: bool,
    /// What failed.
    pub message: String,
}

/// Why a node could not be opened, started or stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RaftError {
    /// The configuration is invalid.
    #[error("invalid raft configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store holds data that cannot be decoded.
    #[error("corrupt raft state: {0}")]
    Corrupt(String),
    /// The data directory is readable but incomplete: starting from it
    /// would silently lose writes that were acknowledged (a log deleted,
    /// emptied or older than the snapshot; a snapshot missing under a
    /// purged log).
    #[error("{0}")]
    DataLoss(String),
    /// The node did not become ready in time.
    #[error("raft node not ready after {waited:?}: {state}")]
    NotReady {
        /// How long was waited.
        waited: Duration,
        /// What the node was doing.
        state: String,
    },
    /// The node has stopped (shut down or failed).
    #[error("raft node stopped")]
    Stopped,
    /// openraft reported a fatal error.
    #[error("raft failed: {0}")]
    Fatal(String),
}

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; send the proposal to `leader`.
    #[error("not the leader{}", match .leader { Some(l) => format!(" (leader is node {l})"), None => " (no leader known)".to_owned() })]
    NotLeader {
        /// The current leader, if known.
        leader: Option<u64>,
    },
    /// The node is shutting down.
    #[error("raft node is shutting down")]
    ShuttingDown,
    /// A write forwarded to `leader`, which stopped or went silent before
    /// it answered: the write may or may not have been applied, so it was
    /// not sent again (a retry would apply twice what was applied once).
    #[error(
        "the leader (node {leader}) stopped answering while it had this write: \
         it may or may not have been applied"
    )]
    OutcomeUnknown {
        /// The leader the write was forwarded to.
        leader: u64,
    },
    /// This node was removed from its cluster (a member refused the write
    /// it forwarded, not handling it): it takes no more writes.
    #[error("node {node} was removed from the cluster")]
    Removed {
        /// This node's id.
        node: u64,
    },
    /// The node failed; it must be restarted.
    #[error("raft node failed: {0}")]
    Fatal(String),
}
