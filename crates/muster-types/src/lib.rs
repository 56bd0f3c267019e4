//! Wire types of muster's native HTTP API (v1), shared by the server and the
//! clients, plus the validation every input goes through at the edge.
//!
//! - [`RegisterRequest`] and the lease requests are what clients send; they
//!   reject unknown fields, and [`RegisterRequest::validate`] turns one into a
//!   [`Registration`] or a [`FieldError`] naming the offending field.
//! - [`Instance`], [`InstancesResponse`], [`ServicesResponse`], [`LeaseInfo`],
//!   [`ClusterInfo`] and [`WatchEvent`] are what the server answers.
//! - [`ErrorBody`] is the one error shape of the API.
//! - [`limits`] holds every size and count limit in one place.
#![forbid(unsafe_code)]

pub mod acl;
pub mod backup;
mod compact;
mod duration;
mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use compact::{CompactString, MAX_INTERNED_LEN, Meta, MetaIter, SharedStr, Tags};
pub use duration::{format_duration, parse_duration};
pub use validate::{
    FieldError, ID_PATTERN, LABEL_PATTERN, LEASE_ID_PATTERN, Registration, truncate_output,
    validate_check, validate_instance_id, validate_namespace, validate_service_name, validate_ttl,
};

/// Every limit the API enforces, in one place so docs, server and clients agree.
pub mod limits {
    /// Largest accepted request body, in bytes.
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
    /// Longest request target (path and query), in bytes; longer is a 414.
    pub const MAX_URI_BYTES: usize = 8 * 1024;
    /// Largest header block (names and values), in bytes; larger is a 431.
    pub const MAX_HEADER_BYTES: usize = 16 * 1024;
    /// Longest service or namespace name (a DNS label).
    pub const MAX_NAME_LEN: usize = 63;
    /// Longest instance id.
    pub const MAX_ID_LEN: usize = 128;
    /// Longest address (a DNS name is at most 253 characters).
    pub const MAX_ADDRESS_LEN: usize = 253;
    /// Most tags on one instance.
    pub const MAX_TAGS: usize = 64;
    /// Longest tag.
    pub const MAX_TAG_LEN: usize = 128;
    /// Most metadata entries on one instance.
    pub const MAX_META: usize = 64;
    /// Longest metadata key.
    pub const MAX_META_KEY_LEN: usize = 128;
    /// Longest metadata value.
    pub const MAX_META_VALUE_LEN: usize = 512;
    /// Longest version or zone string.
    pub const MAX_VERSION_LEN: usize = 64;
    /// Largest instance weight.
    pub const MAX_WEIGHT: u32 = 10_000;
    /// Shortest lease TTL, in milliseconds.
    pub const MIN_TTL_MS: u64 = 1_000;
    /// Longest lease TTL, in milliseconds.
    pub const MAX_TTL_MS: u64 = 3_600_000;
    /// Most lease ids in one batch renewal.
    pub const MAX_RENEW_BATCH: usize = 10_000;
    /// Longest a blocking query may wait, in milliseconds.
    pub const MAX_WAIT_MS: u64 = 600_000;
    /// Most checks on one instance.
    pub const MAX_CHECKS: usize = 16;
    /// Most check output kept, in bytes.
    pub const MAX_CHECK_OUTPUT: usize = 4096;
    /// Shortest check interval, in milliseconds.
    pub const MIN_CHECK_INTERVAL_MS: u64 = 1_000;
    /// Longest check interval, in milliseconds.
    pub const MAX_CHECK_INTERVAL_MS: u64 = 86_400_000;
    /// Default wait of a blocking query, in milliseconds.
    pub const DEFAULT_WAIT_MS: u64 = 300_000;
    /// Longest query id of a multiplexed watch (`POST /v1/watch`).
    pub const MAX_WATCH_QUERY_ID_LEN: usize = 128;
    /// Default for the most queries one multiplexed watch carries (the
    /// agent's `watch_max_queries`); the body limit also applies.
    pub const DEFAULT_MAX_WATCH_QUERIES: usize = 1024;
}

/// Default namespace when a request names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Default instance weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Response header carrying the index a read reflects.
pub const INDEX_HEADER: &str = "x-muster-index";

/// Health of an instance, worst last.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving normally.
    Passing,
    /// Serving, but degraded; excluded from default discovery.
    Warning,
    /// Not serving.
    Critical,
}

impl Health {
    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

/// Body of `PUT /v1/services/{service}/instances/{id}`.
///
/// Either `ttl` (the instance gets a lease of its own) or `lease` (the
/// instance joins an existing lease) or neither (a persistent instance).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// IP address or host name the instance serves on.
    #[schema(min_length = 1, max_length = 253)]
    pub address: String,
    /// TCP port, 1 to 65535.
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u32,
    /// Tags; discovery by `tag` needs all requested tags present.
    #[serde(default)]
    #[schema(max_items = 64)]
    pub tags: Vec<String>,
    /// Free-form string metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Version, matched as semver when it parses as one.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub version: Option<String>,
    /// Zone (failure domain), e.g. `eu-1a`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    pub zone: Option<String>,
    /// Relative weight for load balancing, 1 to 10000 (default 100).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub weight: Option<u32>,
    /// Give the instance a lease of its own with this TTL (`"10s"`, 1s to 1h).
    #[serde(default)]
    #[schema(example = "10s")]
    pub ttl: Option<String>,
    /// Attach the instance to this existing lease.
    #[serde(default)]
    pub lease: Option<String>,
    /// Server-run health checks.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub checks: Vec<CheckSpec>,
}

/// A server-run health check, in the shape Consul users know. Exactly one of
/// `http`, `tcp`, `grpc`, `ttl` or `args` says what kind it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Check id, unique within the instance (default `check-N` by position).
    #[serde(default)]
    pub id: Option<String>,
    /// Human-readable name.
    #[serde(default)]
    pub name: Option<String>,
    /// URL probed with an HTTP request: 2xx passing, 429 warning, else critical.
    #[serde(default)]
    pub http: Option<String>,
    /// HTTP method (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// HTTP request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Accept any TLS certificate for an https check.
    #[serde(default)]
    pub tls_skip_verify: bool,
    /// `host:port` probed with a TCP connect.
    #[serde(default)]
    pub tcp: Option<String>,
    /// `host:port` or `host:port/service`, probed with `grpc.health.v1.Health/Check`.
    #[serde(default)]
    pub grpc: Option<String>,
    /// Passing only while the client reports within this TTL (`PUT .../checks/{id}/pass`).
    #[serde(default)]
    pub ttl: Option<String>,
    /// A command run by the agent: exit 0 passing, 1 warning, else critical.
    /// Refused unless the agent runs with `--enable-command-checks`.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Time between runs (required except for ttl checks), 1s to 24h.
    #[serde(default)]
    pub interval: Option<String>,
    /// Time a run may take (default the smaller of 10s and the interval).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Status before the first result (default `critical`).
    #[serde(default)]
    pub status: Option<Health>,
    /// Remove the instance after it has been critical this long.
    #[serde(default)]
    pub deregister_critical_after: Option<String>,
    /// Consecutive successes before the check turns passing (default 1).
    #[serde(default)]
    pub success_before_passing: Option<u32>,
    /// Consecutive failures before the check turns critical (default 1).
    #[serde(default)]
    pub failures_before_critical: Option<u32>,
    /// Free-form notes for operators.
    #[serde(default)]
    pub notes: Option<String>,
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase", tag = "type")]
pub enum CheckKind {
    /// An HTTP request.
    Http {
        /// URL.
        url: String,
        /// Method.
        method: String,
        /// Headers.
        headers: BTreeMap<String, String>,
        /// Skip TLS verification.
        tls_skip_verify: bool,
    },
    /// A TCP connect.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// The gRPC health protocol.
    Grpc {
        /// `host:port`.
        addr: String,
        /// Service name asked about (empty: the server as a whole).
        service: String,
    },
    /// Reported by the client within a TTL.
    Ttl,
    /// A command run by the agent.
    Command {
        /// Program and arguments.
        args: Vec<String>,
    },
}

impl CheckKind {
    /// Short kind name, used in metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Grpc { .. } => "grpc",
            CheckKind::Ttl => "ttl",
            CheckKind::Command { .. } => "command",
        }
    }
}

/// A check of an instance: its validated definition and its current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    /// Id, unique within the instance.
    pub id: String,
    /// Name.
    pub name: String,
    /// What it probes.
    pub kind: CheckKind,
    /// Milliseconds between runs (for ttl checks: the TTL).
    pub interval_ms: u64,
    /// Milliseconds a run may take.
    pub timeout_ms: u64,
    /// Consecutive successes before passing.
    pub success_before_passing: u32,
    /// Consecutive failures before critical.
    pub failures_before_critical: u32,
    /// Remove the instance after this many milliseconds critical.
    pub deregister_critical_after_ms: Option<u64>,
    /// Notes.
    pub notes: Option<String>,
    /// Current status.
    pub status: Health,
    /// Output of the run that set the status (at most 4 KiB).
    pub output: String,
    /// Log index of the last status change.
    pub status_index: u64,
    /// Unix milliseconds of the last run, when known (single-instance reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_ms: Option<u64>,
    /// Output of the last run, when it differs from `output` (single-instance reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_output: Option<String>,
}

/// Body of `PUT .../maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// Turn maintenance on (true) or off (false).
    pub enabled: bool,
    /// Why, shown with the instance.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Body of a TTL check report (`PUT .../checks/{check}/pass|warn|fail`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckReport {
    /// Output to record (at most 4 KiB kept).
    #[serde(default)]
    pub output: Option<String>,
}

// Its strings are compact (see `SharedStr`, `CompactString`, `Tags`, `Meta`):
// a registry holds many instances, most of whose strings repeat. Each field
// serialises as the plain string, set or map it stands for. (A plain comment:
// the doc comment is the OpenAPI description.)
/// One registered instance, as every read returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    /// Client-chosen id, unique within namespace and service.
    #[schema(value_type = String)]
    pub id: CompactString,
    /// Namespace the instance lives in.
    #[schema(value_type = String)]
    pub namespace: SharedStr,
    /// Service the instance belongs to.
    #[schema(value_type = String)]
    pub service: SharedStr,
    /// IP address or host name.
    #[schema(value_type = String)]
    pub address: CompactString,
    /// TCP port.
    pub port: u16,
    /// Tags, sorted and without duplicates.
    #[schema(value_type = std::collections::BTreeSet<String>)]
    pub tags: Tags,
    /// Metadata.
    #[schema(value_type = BTreeMap<String, String>)]
    pub meta: Meta,
    /// Version string, if any.
    #[schema(value_type = Option<String>)]
    pub version: Option<SharedStr>,
    /// Zone, if any.
    #[schema(value_type = Option<String>)]
    pub zone: Option<SharedStr>,
    /// Load-balancing weight.
    pub weight: u32,
    /// Current health: the worst of its checks; critical in maintenance.
    pub health: Health,
    /// Server-run checks and their state.
    #[serde(default)]
    #[schema(value_type = Vec<Check>)]
    pub checks: Box<[Check]>,
    /// Maintenance reason, while the instance is in maintenance.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub maintenance: Option<SharedStr>,
    /// Lease holding the instance, if it is ephemeral.
    #[schema(value_type = Option<String>)]
    pub lease: Option<CompactString>,
    /// True while self-preservation keeps the instance although its lease
    /// is past its deadline (the registry stopped hearing from its
    /// clients): it may be gone. Absent when false. Past the
    /// `self_preservation_bound` its health is also `critical`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub preserved: bool,
    /// Log index that created the instance.
    pub create_index: u64,
    /// Log index that last changed the instance.
    pub modify_index: u64,
    /// Wall-clock time of the last registration, Unix milliseconds (leader's clock).
    pub registered_at_ms: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Answer of a discovery query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstancesResponse {
    /// Namespace queried.
    pub namespace: String,
    /// Service queried.
    pub service: String,
    /// Index this answer reflects (also in `X-Muster-Index`).
    pub index: u64,
    /// Matching instances, ordered by id.
    pub instances: Vec<Instance>,
}

/// One line of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// All instances.
    pub instances: u64,
    /// Instances passing.
    pub passing: u64,
    /// Instances warning.
    pub warning: u64,
    /// Instances critical.
    pub critical: u64,
    /// Index of the service's last change.
    pub index: u64,
}

/// Answer of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServicesResponse {
    /// Namespace listed.
    pub namespace: String,
    /// Index this answer reflects.
    pub index: u64,
    /// Services with at least one instance, by name.
    pub services: Vec<ServiceSummary>,
}

/// Body of `POST /v1/leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLeaseRequest {
    /// Time to live, e.g. `"10s"` (1s to 1h).
    #[schema(example = "10s")]
    pub ttl: String,
}

/// A lease as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LeaseInfo {
    /// Lease id (16 hex digits).
    pub id: String,
    /// Time to live, e.g. `"10s"`.
    pub ttl: String,
    /// Time to live in milliseconds.
    pub ttl_ms: u64,
    /// Number of instances attached.
    pub instances: u64,
    /// Index of the last change to the lease.
    pub index: u64,
}

/// Body of `POST /v1/leases/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewManyRequest {
    /// Lease ids to renew.
    pub ids: Vec<String>,
}

/// Answer of `POST /v1/leases/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenewManyResponse {
    /// Ids renewed.
    pub renewed: Vec<String>,
    /// Ids the registry does not know (expired or never existed): re-register.
    pub not_found: Vec<String>,
}

/// Answer of a single renewal or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RenewResponse {
    /// Lease renewed.
    pub id: String,
    /// Its TTL in milliseconds: renew well within it.
    pub ttl_ms: u64,
}

/// Answer of a deregistration or revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WriteResponse {
    /// Log index of the write.
    pub index: u64,
    /// Instances removed by it.
    pub removed: u64,
}

/// Body of `POST /v1/cluster/members`: the node to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The new node's id: never one removed from this cluster before.
    #[schema(example = 4)]
    pub id: u64,
    /// Its cluster RPC address, `host:port` (its `--cluster-addr`).
    #[schema(example = "10.0.0.4:7701")]
    pub cluster_addr: String,
}

/// Body of `POST /v1/cluster/transfer-leader`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderRequest {
    /// The voter to lead; absent: the most up-to-date other voter.
    #[serde(default)]
    pub to: Option<u64>,
}

/// Answer of `POST /v1/snapshot/restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RestoreResult {
    /// The log index at which the restored state took effect on every
    /// node (reads and watches at this index or later see it whole).
    pub index: u64,
    /// Instances restored.
    pub instances: u64,
    /// Leases restored (each with a fresh full TTL).
    pub leases: u64,
    /// The header of the backup restored.
    pub backup: backup::BackupHeader,
}

/// Answer of `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInfo {
    /// This node's id.
    pub node_id: u64,
    /// Current leader, if known.
    pub leader: Option<u64>,
    /// Voting members.
    pub members: Vec<u64>,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied to the catalog.
    pub applied_index: u64,
    /// Whether lease expiry is paused by self-preservation.
    pub self_preservation: bool,
    /// Leases kept past their deadline by self-preservation, their
    /// instances marked `preserved` and still passing.
    #[serde(default)]
    pub preserved_leases: u64,
    /// Leases kept longer than `self_preservation_bound`: their instances
    /// are marked `preserved` and critical.
    #[serde(default)]
    pub lapsed_leases: u64,
    /// Every member of the cluster (voters and learners) as this node sees
    /// it; empty on an agent run without peers (a cluster of one).
    #[serde(default)]
    pub nodes: Vec<ClusterNode>,
}

/// One member of the cluster in `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterNode {
    /// Its node id.
    pub id: u64,
    /// Its role as this node knows it.
    pub role: NodeRole,
    /// Its cluster RPC address (`host:port`).
    pub cluster_addr: String,
    /// Whether it answers: on the leader, heard from within the last 2 s
    /// (a dead or cut-off member is `false`, whatever its role); on a
    /// follower, known only for the leader; `null` when not known.
    pub reachable: Option<bool>,
    /// Its HTTP API address, once this node learned it.
    pub http_addr: Option<String>,
    /// The last log index known replicated to it: known on the leader (for
    /// itself, its last log index); `null` elsewhere.
    pub match_index: Option<u64>,
    /// Milliseconds since this node last heard from it (on the leader:
    /// each follower's last answer; on a follower: the leader's last
    /// append); `null` for itself and for a member not heard from.
    pub last_contact_ms: Option<u64>,
}

/// The role of a cluster member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// It leads: it orders every write.
    Leader,
    /// A voter that follows the leader.
    Follower,
    /// It replicates the log without voting.
    Learner,
}

/// Body of `POST /v1/watch`: many discovery queries over one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchRequest {
    /// The queries, each with its own id (at least one, at most the
    /// server's `watch_max_queries`).
    pub queries: Vec<WatchQuery>,
}

/// One query of a multiplexed watch: a service and the filters of
/// discovery, named by a client-chosen `id` that every event of it carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// The client's key for this query: 1 to 128 characters, no control
    /// characters, unique within the request.
    pub id: String,
    /// Service to watch.
    pub service: String,
    /// Namespace (default: the request's `namespace` parameter, else
    /// `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Required tags (all must match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tag: Vec<String>,
    /// Required metadata, each `key:value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta: Vec<String>,
    /// Semver range such as `^1.4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `passing` (default) or `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Resume from this index (the `index` of the last event received for
    /// this query): what came after it, a `current` confirmation, or a
    /// fresh snapshot when the history no longer reaches back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// One Server-Sent Event of `POST /v1/watch`: a [`WatchEvent`] with the
/// `query` id it belongs to, as `{"query": "...", "type": ..., ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueryEvent {
    /// The `id` of the query the event belongs to.
    pub query: String,
    /// The event.
    #[serde(flatten)]
    pub event: WatchEvent,
}

/// One Server-Sent Event of `GET /v1/watch`; the SSE `event:` field carries
/// the same name as `type` and the `id:` field the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WatchEvent {
    /// Every matching instance, sent first and after a too-old `Last-Event-ID`.
    Snapshot {
        /// Index the snapshot reflects.
        index: u64,
        /// The instances.
        instances: Vec<Instance>,
    },
    /// An instance was registered or changed.
    Upsert {
        /// Index of the change.
        index: u64,
        /// The instance as it now is.
        instance: Box<Instance>,
    },
    /// An instance was removed.
    Delete {
        /// Index of the change.
        index: u64,
        /// Id of the removed instance.
        id: String,
    },
    /// Sent at once to a watch resumed with `Last-Event-ID` that missed
    /// nothing: what the client holds is current at `index`.
    Current {
        /// The service index the client is up to date with.
        index: u64,
    },
}

impl WatchEvent {
    /// Index carried by the event.
    pub fn index(&self) -> u64 {
        match self {
            WatchEvent::Snapshot { index, .. }
            | WatchEvent::Upsert { index, .. }
            | WatchEvent::Delete { index, .. }
            | WatchEvent::Current { index } => *index,
        }
    }

    /// SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            WatchEvent::Snapshot { .. } => "snapshot",
            WatchEvent::Upsert { .. } => "upsert",
            WatchEvent::Delete { .. } => "delete",
            WatchEvent::Current { .. } => "current",
        }
    }
}

/// The one error shape of the API: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Details of an API error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_field`, `not_found`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The offending field, when one input field is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Formats a lease id the way the API shows it.
pub fn format_lease_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Parses a lease id as the API shows it (hex, up to 16 digits).
pub fn parse_lease_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_round_trip() {
        for id in [0, 1, 0xdead_beef, u64::MAX] {
            assert_eq!(parse_lease_id(&format_lease_id(id)), Some(id));
        }
        assert_eq!(parse_lease_id(""), None);
        assert_eq!(parse_lease_id("xyz"), None);
        assert_eq!(parse_lease_id("00000000000000001"), None);
    }

    #[test]
    fn register_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<RegisterRequest>(
            r#"{"address":"10.0.0.1","port":80,"colour":"blue"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    /// A fully populated instance exactly as API v1 sends it: the compact
    /// field types must not change a byte of it.
    const FULL_INSTANCE_JSON: &str = r#"{"id":"pay-1","namespace":"default","service":"payments","address":"10.0.0.1","port":8080,"tags":["eu","v2"],"meta":{"rev":"r42","team":"payments"},"version":"1.4.2","zone":"eu-1a","weight":100,"health":"critical","checks":[{"id":"tcp","name":"tcp","kind":{"type":"tcp","addr":"10.0.0.1:8080"},"interval_ms":10000,"timeout_ms":1000,"success_before_passing":1,"failures_before_critical":2,"deregister_critical_after_ms":60000,"notes":"n","status":"passing","output":"ok","status_index":5,"last_run_ms":1700000000500}],"maintenance":"upgrade","lease":"00000000000000ff","preserved":true,"create_index":3,"modify_index":7,"registered_at_ms":1700000000000}"#;

    fn full_instance() -> Instance {
        Instance {
            id: "pay-1".into(),
            namespace: "default".into(),
            service: "payments".into(),
            address: "10.0.0.1".into(),
            port: 8080,
            tags: ["v2", "eu"].into_iter().collect(),
            meta: [("team", "payments"), ("rev", "r42")].into_iter().collect(),
            version: Some("1.4.2".into()),
            zone: Some("eu-1a".into()),
            weight: 100,
            health: Health::Critical,
            checks: Box::new([Check {
                id: "tcp".into(),
                name: "tcp".into(),
                kind: CheckKind::Tcp {
                    addr: "10.0.0.1:8080".into(),
                },
                interval_ms: 10_000,
                timeout_ms: 1_000,
                success_before_passing: 1,
                failures_before_critical: 2,
                deregister_critical_after_ms: Some(60_000),
                notes: Some("n".into()),
                status: Health::Passing,
                output: "ok".into(),
                status_index: 5,
                last_run_ms: Some(1_700_000_000_500),
                last_output: None,
            }]),
            maintenance: Some("upgrade".into()),
            lease: Some(format_lease_id(255).into()),
            preserved: true,
            create_index: 3,
            modify_index: 7,
            registered_at_ms: 1_700_000_000_000,
        }
    }

    /// The instance type as it was with plain strings, sets and maps.
    #[derive(Serialize, Deserialize)]
    struct PlainInstance {
        id: String,
        namespace: String,
        service: String,
        address: String,
        port: u16,
        tags: std::collections::BTreeSet<String>,
        meta: BTreeMap<String, String>,
        version: Option<String>,
        zone: Option<String>,
        weight: u32,
        health: Health,
        #[serde(default)]
        checks: Vec<Check>,
        #[serde(default)]
        maintenance: Option<String>,
        lease: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        preserved: bool,
        create_index: u64,
        modify_index: u64,
        registered_at_ms: u64,
    }

    #[test]
    fn instance_json_is_unchanged() {
        let inst = full_instance();
        assert_eq!(serde_json::to_string(&inst).unwrap(), FULL_INSTANCE_JSON);
        let back: Instance = serde_json::from_str(FULL_INSTANCE_JSON).unwrap();
        assert_eq!(back, inst);
        let plain: PlainInstance = serde_json::from_str(FULL_INSTANCE_JSON).unwrap();
        assert_eq!(serde_json::to_string(&plain).unwrap(), FULL_INSTANCE_JSON);
    }

    #[test]
    fn instance_json_matches_plain_types() {
        // Long strings (stored out of line), escapes, non-ASCII, duplicate
        // tags, nulls and omitted defaulted fields: both types decode and
        // re-encode every input to the same bytes.
        let long = "a".repeat(200);
        let inputs = [
            format!(
                r#"{{"id":"{long}","namespace":"ns","service":"s","address":"{long}.example.com","port":1,"tags":["z","\u00e9t\u00e9","z","a\"b","{long}"],"meta":{{"{long}":"{long}","k":"v\n","k":"w","":""}},"version":null,"zone":null,"weight":1,"health":"passing","lease":null,"create_index":1,"modify_index":1,"registered_at_ms":0}}"#
            ),
            r#"{"id":"i","namespace":"default","service":"x","address":"::1","port":65535,"tags":[],"meta":{},"version":"v","zone":"z","weight":10000,"health":"warning","checks":[],"maintenance":null,"lease":"ffffffffffffffff","create_index":0,"modify_index":9,"registered_at_ms":5}"#.to_string(),
        ];
        for input in &inputs {
            let compact: Instance = serde_json::from_str(input).unwrap();
            let plain: PlainInstance = serde_json::from_str(input).unwrap();
            assert_eq!(
                serde_json::to_string(&compact).unwrap(),
                serde_json::to_string(&plain).unwrap(),
                "{input}"
            );
            assert_eq!(
                serde_json::to_value(&compact).unwrap(),
                serde_json::to_value(&plain).unwrap()
            );
        }
    }

    #[test]
    fn instance_stays_small() {
        // In an Arc (16-byte header) it is one 208-byte glibc chunk (8-byte
        // header, 16-byte granules): 8 bytes more would cost 16.
        assert!(
            std::mem::size_of::<Instance>() <= 184,
            "{}",
            std::mem::size_of::<Instance>()
        );
    }

    #[test]
    fn watch_event_is_tagged() {
        let e = WatchEvent::Delete {
            index: 7,
            id: "a".into(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "delete");
        assert_eq!(v["index"], 7);
    }
}
