//! The catalog's own instance and check: what the registry holds in memory.
//!
//! They are neither the HTTP JSON ([`muster_types::Instance`], which a
//! front-end builds from them) nor the stored form (`muster-raft`'s
//! `format_v1`, which mirrors them field for field): the three change
//! apart. Neither type has a serde implementation on purpose.
//!
//! The strings are compact (see [`SharedStr`], [`CompactString`], [`Tags`],
//! [`Meta`]): a registry holds many instances, most of whose strings repeat.

use muster_types::{CheckKind, CompactString, Health, Meta, SharedStr, Tags};

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Client-chosen id, unique within namespace and service.
    pub id: CompactString,
    /// Namespace the instance lives in.
    pub namespace: SharedStr,
    /// Service the instance belongs to.
    pub service: SharedStr,
    /// IP address or host name.
    pub address: CompactString,
    /// TCP port.
    pub port: u16,
    /// Tags, sorted and without duplicates.
    pub tags: Tags,
    /// Metadata.
    pub meta: Meta,
    /// Version string, if any.
    pub version: Option<SharedStr>,
    /// Zone, if any.
    pub zone: Option<SharedStr>,
    /// Load-balancing weight.
    pub weight: u32,
    /// Current health: the worst of its checks; critical in maintenance.
    pub health: Health,
    /// Server-run checks and their state.
    pub checks: Box<[Check]>,
    /// Maintenance reason, while the instance is in maintenance.
    pub maintenance: Option<SharedStr>,
    /// Lease holding the instance, if it is ephemeral (its text form).
    pub lease: Option<CompactString>,
    /// Whether self-preservation keeps the instance past its lease's
    /// deadline (the lease's state, copied to each of its instances).
    pub preserved: Preservation,
    /// Log index that created the instance.
    pub create_index: u64,
    /// Log index that last changed the instance.
    pub modify_index: u64,
    /// Wall-clock time of the last registration, Unix milliseconds (the
    /// leader's clock, stamped into the log entry).
    pub registered_at_ms: u64,
}

/// Whether self-preservation keeps a lease (and its instances) past the
/// lease's deadline.
///
/// The leader decides it from its lease timers and writes it through the
/// log, so every node answers the same and watches see the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preservation {
    /// Renewed in time (or not ephemeral): nothing kept.
    #[default]
    None,
    /// Past its deadline, kept because the registry looks cut off from its
    /// clients; the instances keep their health.
    Held,
    /// Held longer than the bound: still kept, but critical, so default
    /// (passing-only) discovery stops returning it.
    Lapsed,
}

impl Preservation {
    /// Whether self-preservation keeps it at all.
    pub fn is_preserved(self) -> bool {
        self != Preservation::None
    }
}

/// A check of an instance: its definition and its replicated state. (What
/// only the node running it knows, the last run and its output, lives in
/// the registry's check runner.)
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Output of the run that set the status.
    pub output: String,
    /// Log index of the last status change.
    pub status_index: u64,
}

/// A check as the edge validates it ([`muster_types::validate_check`]),
/// in its initial state. The read-only fields of the HTTP form (last run
/// and output) are not part of a definition and are dropped.
impl From<muster_types::Check> for Check {
    fn from(c: muster_types::Check) -> Self {
        Check {
            id: c.id,
            name: c.name,
            kind: c.kind,
            interval_ms: c.interval_ms,
            timeout_ms: c.timeout_ms,
            success_before_passing: c.success_before_passing,
            failures_before_critical: c.failures_before_critical,
            deregister_critical_after_ms: c.deregister_critical_after_ms,
            notes: c.notes,
            status: c.status,
            output: c.output,
            status_index: c.status_index,
        }
    }
}
