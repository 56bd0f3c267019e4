//! The pure core of muster: the catalog of namespaces, services, instances
//! and leases, changed only by [`Catalog::apply`] and read through queries.
//!
//! **Architecture invariant:** nothing here does I/O or reads a clock. Time
//! comes in as an argument (`now_ms`, the leader's wall clock stamped into the
//! log entry), so applying the same commands at the same indexes gives the
//! same catalog on every node and on every replay.
//!
//! - [`Command`]: every mutation the registry knows.
//! - [`Catalog`]: the state, [`Catalog::apply`] and the read side.
//! - [`Query`]: discovery filters (tags, meta, version range, zone, health).
//! - Every service carries its own index (the log index of its last change)
//!   and a bounded history of changes, which watches resume from. Several
//!   changes may share an index (a batch of commands in one log entry, or
//!   one command touching several instances).
//!
//! Memory: an instance is one `Arc<Instance>` (a 208-byte allocation) plus
//! its metadata slice; its other strings are inline or shared (see
//! `muster_types::SharedStr`). Commands carry plain strings and are turned
//! into the compact form once, at apply, through the process-wide interner.
//! [`Instances`] keeps one pointer per instance, [`LeaseMembers`] no B-tree
//! for small leases, and a history shares the instances it upserted.
#![forbid(unsafe_code)]

pub mod acl;
mod instances;
pub mod model;
mod query;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use muster_types::{
    CompactString, Health, Meta, ServiceSummary, SharedStr, Tags, format_lease_id, limits,
};

pub use model::{Check, Instance, Preservation};

pub use instances::{Instances, LeaseMember, LeaseMembers};
pub use query::{HealthFilter, Query, VersionMatch};

/// How many changes each service remembers for watch resumption.
pub const HISTORY_PER_SERVICE: usize = 256;

/// Identifies a service: namespace plus name. Every instance of a service
/// shares the two strings of the catalog's key (see [`ServiceKey::interned`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: SharedStr,
    /// Service name.
    pub service: SharedStr,
}

impl ServiceKey {
    /// Builds a key with strings of its own (no interner lock: for lookups).
    pub fn new(namespace: impl Into<SharedStr>, service: impl Into<SharedStr>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            service: service.into(),
        }
    }

    /// Builds a key from interned strings, shared with every other key and
    /// instance of the same service.
    pub fn interned(namespace: &str, service: &str) -> Self {
        ServiceKey {
            namespace: SharedStr::interned(namespace),
            service: SharedStr::interned(service),
        }
    }
}

/// The client-supplied part of an instance, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceData {
    /// Instance id.
    pub id: String,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// Version.
    pub version: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// Weight.
    pub weight: u32,
    /// Checks in their initial state; a check whose id and kind are
    /// unchanged on re-registration keeps its current status.
    pub checks: Vec<Check>,
}

/// Health of an instance: critical in maintenance or when its lease lapsed
/// under self-preservation, else the worst of its checks (passing without
/// checks).
pub fn health_of(checks: &[Check], maintenance: Option<&str>, preserved: Preservation) -> Health {
    if maintenance.is_some() || preserved == Preservation::Lapsed {
        return Health::Critical;
    }
    checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Health::Passing)
}

/// Which lease, if any, a registration attaches the instance to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRef {
    /// Persistent instance: no lease.
    None,
    /// A lease of the instance's own with this TTL. `id` is chosen by the
    /// leader and used only if the instance does not already own a lease of
    /// the same TTL (so a retried registration does not churn leases).
    Own {
        /// Id for a new lease.
        id: u64,
        /// TTL in milliseconds.
        ttl_ms: u64,
    },
    /// An existing lease, shared with other instances.
    Existing(u64),
}

/// Every mutation of the catalog. Each is one log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Register or replace an instance.
    Register {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
        /// The instance.
        instance: InstanceData,
        /// Its lease.
        lease: LeaseRef,
    },
    /// Remove an instance.
    Deregister {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
        /// Instance id.
        id: String,
    },
    /// Create a lease (id chosen by the leader).
    CreateLease {
        /// Lease id.
        id: u64,
        /// TTL in milliseconds.
        ttl_ms: u64,
    },
    /// Revoke a lease and remove every instance attached to it.
    RevokeLease {
        /// Lease id.
        id: u64,
    },
    /// A check's status changed (decided by the leader's check runner or a
    /// TTL report). Applying the status it already has changes nothing.
    CheckStatus {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
        /// Instance id.
        id: String,
        /// Check id.
        check: String,
        /// New status.
        status: Health,
        /// Output of the run that decided it (truncated to 4 KiB).
        output: String,
    },
    /// Turn maintenance on (`Some(reason)`) or off (`None`).
    Maintenance {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
        /// Instance id.
        id: String,
        /// Reason, or `None` to end maintenance.
        reason: Option<String>,
    },
    /// Add or replace one check of an instance.
    PutCheck {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
        /// Instance id.
        id: String,
        /// The check, in its initial state.
        check: Check,
    },
    /// Remove one check of an instance.
    RemoveCheck {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
        /// Instance id.
        id: String,
        /// Check id.
        check: String,
    },
    /// Leases the leader found expired: remove them and their instances.
    /// Ids no longer present are skipped (a revoke may have won the race).
    ExpireLeases {
        /// Lease ids.
        ids: Vec<u64>,
    },
    /// The leader's self-preservation changed how these leases are kept
    /// past their deadlines; their instances carry the new state. Ids no
    /// longer present are skipped.
    PreserveLeases {
        /// Lease ids.
        ids: Vec<u64>,
        /// Their new state.
        state: Preservation,
    },
    /// A node left the cluster for good: its id is never a member again.
    /// Applying it twice changes nothing.
    RetireNode {
        /// The node id.
        id: u64,
    },
    /// Starts staging restore `id` (a backup replacing the whole catalog,
    /// sent through the log in chunks). A restore staged before is
    /// discarded. Nothing readers see changes until [`Command::RestoreCommit`].
    RestoreBegin {
        /// Restore id, chosen by the node driving the restore.
        id: u64,
    },
    /// One chunk of restore `id`: leases and instances added to the staged
    /// state.
    RestoreStage {
        /// Restore id.
        id: u64,
        /// Leases, with their members.
        leases: Vec<Lease>,
        /// Instances.
        instances: Vec<Arc<Instance>>,
    },
    /// Replaces the catalog with the staged state of restore `id`, at
    /// once: every instance and lease of the old catalog goes, every staged
    /// one comes, each instance's indexes become this entry's, and each
    /// service records the difference (deletes, upserts) in its history.
    RestoreCommit {
        /// Restore id.
        id: u64,
    },
    /// Discards the staged state of restore `id`.
    RestoreAbort {
        /// Restore id.
        id: u64,
    },
    /// Creates the first management token, once ever: refused with
    /// [`ApplyError::AclBootstrapped`] after that.
    AclBootstrap {
        /// The token (its secret hashed).
        token: acl::AclToken,
    },
    /// Creates or updates a token. An update keeps the token's secret
    /// hash, kind and creation time.
    AclSetToken {
        /// The token.
        token: acl::AclToken,
    },
    /// Revokes a token.
    AclDeleteToken {
        /// Its accessor.
        accessor: String,
    },
    /// Creates or replaces a policy.
    AclSetPolicy {
        /// The policy.
        policy: acl::Policy,
    },
    /// Deletes a policy; tokens naming it lose what it granted.
    AclDeletePolicy {
        /// Its name.
        name: String,
    },
}

/// A staged restore left untouched this long (by the entries' clock) is
/// discarded by the next command applied: the node driving it is gone.
pub const RESTORE_STAGE_TIMEOUT_MS: u64 = 120_000;

/// The state of a restore being staged through the log: kept beside the
/// catalog (and in its snapshots), invisible to readers until committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Staged {
    /// Restore id.
    pub id: u64,
    /// Time of the last command of this restore (the entry's `now_ms`).
    pub touched_ms: u64,
    /// Staged leases by id.
    pub leases: BTreeMap<u64, Lease>,
    /// Staged instances by service.
    pub instances: BTreeMap<ServiceKey, Instances>,
}

impl Staged {
    /// Number of staged instances.
    pub fn instance_count(&self) -> usize {
        self.instances.values().map(Instances::len).sum()
    }
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The lease does not exist (never did, expired or revoked).
    #[error("lease {} not found", format_lease_id(*.0))]
    UnknownLease(u64),
    /// A lease with this id already exists.
    #[error("lease {} already exists", format_lease_id(*.0))]
    LeaseExists(u64),
    /// The instance does not exist.
    #[error("instance {id:?} of service {service:?} not found")]
    UnknownInstance {
        /// Service.
        service: String,
        /// Instance id.
        id: String,
    },
    /// The instance has no such check.
    #[error("instance {id:?} has no check {check:?}")]
    UnknownCheck {
        /// Instance id.
        id: String,
        /// Check id.
        check: String,
    },
    /// No restore with this id is staged (never begun, replaced by another,
    /// abandoned, or already committed).
    #[error("restore {0} is not staged (replaced by another, abandoned or already done)")]
    NoRestore(u64),
    /// ACLs were bootstrapped before: the first management token exists.
    #[error("ACLs are already bootstrapped: the bootstrap token was made before")]
    AclBootstrapped,
    /// No token with this accessor.
    #[error("token {0:?} not found")]
    UnknownToken(String),
    /// No policy with this name.
    #[error("policy {0:?} not found")]
    UnknownPolicy(String),
    /// The instance would have more checks, tags or metadata entries than
    /// allowed. Checked at apply as well as at the edge, so that concurrent
    /// writes (two checks added at once) cannot exceed a limit.
    #[error("instance {id:?} would have more than {max} {field}")]
    OverLimit {
        /// Instance id.
        id: String,
        /// What is over the limit: `checks`, `tags` or `meta`.
        field: String,
        /// The limit.
        max: usize,
    },
}

/// What a command did, for the proposer (`done`) and for observers (watch
/// wake-ups, the leader's lease timers, check reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What the command did, by kind of command.
    pub done: Done,
    /// Services whose index moved.
    pub changed: Vec<ServiceKey>,
    /// Leases created: (id, ttl_ms).
    pub leases_created: Vec<(u64, u64)>,
    /// Leases removed.
    pub leases_removed: Vec<u64>,
}

/// What a command did: one kind of answer per kind of command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// `Register`, `PutCheck`, `RemoveCheck`, `Maintenance`, `CheckStatus`:
    /// the instance as it now is (as it was, if nothing changed).
    Instance(Arc<Instance>),
    /// `Deregister`, `RevokeLease`, `ExpireLeases`: how many instances went.
    Removed(u64),
    /// `PreserveLeases`: how many instances changed.
    Preserved(u64),
    /// `CreateLease`: the lease's id.
    LeaseCreated(u64),
    /// `RetireNode`: the node id.
    NodeRetired(u64),
    /// `RestoreStage`: instances staged so far; `RestoreCommit`: instances
    /// restored; `RestoreBegin`, `RestoreAbort`: 0.
    Restore(u64),
    /// An ACL command.
    Acl,
}

/// What the steps of one command did, gathered as they go.
#[derive(Default)]
struct Effects {
    changed: Vec<ServiceKey>,
    leases_created: Vec<(u64, u64)>,
    leases_removed: Vec<u64>,
    removed: u64,
    preserved: u64,
    instance: Option<Arc<Instance>>,
}

/// Result of applying one command.
pub type ApplyResult = Result<Outcome, ApplyError>;

/// One change of a service, as its history and watches carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Instance registered or replaced.
    Upsert(Arc<Instance>),
    /// Instance removed.
    Delete(CompactString),
}

/// A change with the index it happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedChange {
    /// Log index.
    pub index: u64,
    /// The change.
    pub change: Change,
}

/// One service: its instances, index and recent history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    /// Index of the last change (kept after the last instance leaves, so
    /// blocking queries and watches see the removal).
    pub index: u64,
    /// Instances by id.
    pub instances: Instances,
    /// Recent changes, oldest first.
    history: VecDeque<IndexedChange>,
    /// Every change after this index is in `history`.
    history_floor: u64,
}

impl Service {
    /// A service made of its parts, as [`Service::history`] and
    /// [`Service::history_floor`] give them (for snapshot decoders). The
    /// history is trusted to be in index order; an upsert in it should share
    /// the current instance's allocation where it is the current instance.
    pub fn from_parts(
        index: u64,
        instances: Instances,
        history: impl IntoIterator<Item = IndexedChange>,
        history_floor: u64,
    ) -> Service {
        Service {
            index,
            instances,
            history: history.into_iter().collect(),
            history_floor,
        }
    }

    /// The recent changes, oldest first.
    pub fn history(&self) -> impl ExactSizeIterator<Item = &IndexedChange> {
        self.history.iter()
    }

    /// Every change after this index is in [`Service::history`].
    pub fn history_floor(&self) -> u64 {
        self.history_floor
    }

    /// Whether `instance` is the current instance of its id (the same
    /// allocation, not merely an equal one).
    pub fn is_current(&self, instance: &Arc<Instance>) -> bool {
        self.instances
            .get(&instance.id)
            .is_some_and(|current| Arc::ptr_eq(current, instance))
    }
}

/// A lease: a TTL and the instances that live and die with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Lease id.
    pub id: u64,
    /// TTL in milliseconds.
    pub ttl_ms: u64,
    /// Created by a registration with `ttl`: removed with its last instance.
    pub own: bool,
    /// Attached instances.
    pub instances: LeaseMembers,
    /// Index of the last change.
    pub index: u64,
    /// Whether self-preservation keeps it past its deadline.
    pub preserved: Preservation,
}

/// The whole registry state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    index: u64,
    services: BTreeMap<ServiceKey, Service>,
    leases: BTreeMap<u64, Lease>,
    namespace_index: BTreeMap<String, u64>,
    /// Node ids removed from the cluster, never to be reused.
    retired_nodes: BTreeSet<u64>,
    /// A restore being staged, if any.
    staged: Option<Box<Staged>>,
    /// ACL tokens and policies.
    acl: acl::Acl,
}

/// A catalog without its services, for encoders that write a catalog one
/// service at a time (snapshots): [`Catalog::head`], then every pair of
/// [`Catalog::service_entries`]; [`Catalog::from_parts`] puts them back
/// together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogHead<'a> {
    /// Highest log index applied.
    pub index: u64,
    /// Every lease.
    pub leases: Cow<'a, BTreeMap<u64, Lease>>,
    /// Index of the last change per namespace.
    pub namespace_index: Cow<'a, BTreeMap<String, u64>>,
    /// How many services follow the head.
    pub services: u64,
    /// Node ids removed from the cluster, never to be reused.
    pub retired_nodes: Cow<'a, BTreeSet<u64>>,
    /// A restore being staged, if any.
    pub staged: Option<Cow<'a, Staged>>,
    /// ACL tokens and policies.
    pub acl: Cow<'a, acl::Acl>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything but the services, borrowed.
    pub fn head(&self) -> CatalogHead<'_> {
        CatalogHead {
            index: self.index,
            leases: Cow::Borrowed(&self.leases),
            namespace_index: Cow::Borrowed(&self.namespace_index),
            services: self.services.len() as u64,
            retired_nodes: Cow::Borrowed(&self.retired_nodes),
            staged: self.staged.as_deref().map(Cow::Borrowed),
            acl: Cow::Borrowed(&self.acl),
        }
    }

    /// Every service with its key, in key order.
    pub fn service_entries(&self) -> impl ExactSizeIterator<Item = (&ServiceKey, &Service)> {
        self.services.iter()
    }

    /// The catalog made of a head and its services (as written by
    /// [`Catalog::head`] and [`Catalog::service_entries`]).
    pub fn from_parts(
        head: CatalogHead<'_>,
        services: impl IntoIterator<Item = (ServiceKey, Service)>,
    ) -> Catalog {
        Catalog {
            index: head.index,
            services: services.into_iter().collect(),
            leases: head.leases.into_owned(),
            namespace_index: head.namespace_index.into_owned(),
            retired_nodes: head.retired_nodes.into_owned(),
            staged: head.staged.map(|s| Box::new(s.into_owned())),
            acl: {
                let mut acl = head.acl.into_owned();
                acl.set_changed_at(head.index);
                acl
            },
        }
    }

    /// The restore being staged, if any.
    pub fn staged(&self) -> Option<&Staged> {
        self.staged.as_deref()
    }

    /// ACL tokens and policies.
    pub fn acl(&self) -> &acl::Acl {
        &self.acl
    }

    /// Node ids removed from the cluster: never members again.
    pub fn retired_nodes(&self) -> &BTreeSet<u64> {
        &self.retired_nodes
    }

    /// Highest log index applied.
    pub fn applied_index(&self) -> u64 {
        self.index
    }

    /// Records that log `index` was applied without a command (blank or
    /// membership entries), so the global index keeps up with the log.
    pub fn advance(&mut self, index: u64) {
        self.index = self.index.max(index);
    }

    /// Applies one command at log `index`. Deterministic: the result and the
    /// new state depend only on the state, `index`, `now_ms` and `cmd`. A
    /// command that fails changes nothing but the applied index.
    pub fn apply(&mut self, index: u64, now_ms: u64, cmd: &Command) -> ApplyResult {
        self.advance(index);
        if self
            .staged
            .as_ref()
            .is_some_and(|s| now_ms > s.touched_ms.saturating_add(RESTORE_STAGE_TIMEOUT_MS))
        {
            self.staged = None;
        }
        let mut out = Effects::default();
        match cmd {
            Command::Register {
                namespace,
                service,
                instance,
                lease,
            } => self.register(
                index, now_ms, namespace, service, instance, *lease, &mut out,
            )?,
            Command::Deregister {
                namespace,
                service,
                id,
            } => {
                let key = ServiceKey::interned(namespace, service);
                let exists = self
                    .services
                    .get(&key)
                    .is_some_and(|s| s.instances.contains_key(id));
                if !exists {
                    return Err(ApplyError::UnknownInstance {
                        service: service.clone(),
                        id: id.clone(),
                    });
                }
                self.remove_instance(index, &key, id, &mut out);
            }
            Command::CreateLease { id, ttl_ms } => {
                if self.leases.contains_key(id) {
                    return Err(ApplyError::LeaseExists(*id));
                }
                self.insert_lease(index, *id, *ttl_ms, false, &mut out);
            }
            Command::RevokeLease { id } => {
                if !self.leases.contains_key(id) {
                    return Err(ApplyError::UnknownLease(*id));
                }
                self.drop_lease(index, *id, &mut out);
            }
            Command::CheckStatus {
                namespace,
                service,
                id,
                check,
                status,
                output,
            } => {
                let key = ServiceKey::interned(namespace, service);
                self.modify_instance(index, &key, id, &mut out, |inst| {
                    let c = inst
                        .checks
                        .iter_mut()
                        .find(|c| c.id == *check)
                        .ok_or_else(|| ApplyError::UnknownCheck {
                            id: id.clone(),
                            check: check.clone(),
                        })?;
                    if c.status == *status {
                        return Ok(false);
                    }
                    c.status = *status;
                    c.output = muster_types::truncate_output(output);
                    c.status_index = index;
                    Ok(true)
                })?;
            }
            Command::Maintenance {
                namespace,
                service,
                id,
                reason,
            } => {
                let key = ServiceKey::interned(namespace, service);
                self.modify_instance(index, &key, id, &mut out, |inst| {
                    if inst.maintenance.as_deref() == reason.as_deref() {
                        return Ok(false);
                    }
                    inst.maintenance = reason.as_deref().map(SharedStr::interned);
                    Ok(true)
                })?;
            }
            Command::PutCheck {
                namespace,
                service,
                id,
                check,
            } => {
                let key = ServiceKey::interned(namespace, service);
                self.modify_instance(index, &key, id, &mut out, |inst| {
                    let mut new = check.clone();
                    new.status_index = index;
                    match inst.checks.iter_mut().find(|c| c.id == check.id) {
                        Some(old) => {
                            if old.kind == new.kind {
                                new.status = old.status;
                                new.output = old.output.clone();
                                new.status_index = old.status_index;
                            }
                            if *old == new {
                                return Ok(false);
                            }
                            *old = new;
                        }
                        None => {
                            if inst.checks.len() >= limits::MAX_CHECKS {
                                return Err(ApplyError::OverLimit {
                                    id: id.clone(),
                                    field: "checks".into(),
                                    max: limits::MAX_CHECKS,
                                });
                            }
                            let mut checks = std::mem::take(&mut inst.checks).into_vec();
                            checks.push(new);
                            inst.checks = checks.into_boxed_slice();
                        }
                    }
                    Ok(true)
                })?;
            }
            Command::RemoveCheck {
                namespace,
                service,
                id,
                check,
            } => {
                let key = ServiceKey::interned(namespace, service);
                self.modify_instance(index, &key, id, &mut out, |inst| {
                    let before = inst.checks.len();
                    let mut checks = std::mem::take(&mut inst.checks).into_vec();
                    checks.retain(|c| c.id != *check);
                    inst.checks = checks.into_boxed_slice();
                    if inst.checks.len() == before {
                        return Err(ApplyError::UnknownCheck {
                            id: id.clone(),
                            check: check.clone(),
                        });
                    }
                    Ok(true)
                })?;
            }
            Command::ExpireLeases { ids } => {
                for id in ids {
                    if self.leases.contains_key(id) {
                        self.drop_lease(index, *id, &mut out);
                    }
                }
            }
            Command::PreserveLeases { ids, state } => {
                for id in ids {
                    self.preserve_lease(index, *id, *state, &mut out);
                }
            }
            Command::RetireNode { id } => {
                self.retired_nodes.insert(*id);
            }
            Command::RestoreBegin { id } => {
                self.staged = Some(Box::new(Staged {
                    id: *id,
                    touched_ms: now_ms,
                    ..Staged::default()
                }));
            }
            Command::RestoreStage {
                id,
                leases,
                instances,
            } => {
                let staged = self.staged_mut(*id)?;
                staged.touched_ms = now_ms;
                for lease in leases {
                    staged.leases.insert(lease.id, lease.clone());
                }
                for inst in instances {
                    let key = ServiceKey::interned(&inst.namespace, &inst.service);
                    staged
                        .instances
                        .entry(key)
                        .or_default()
                        .insert(inst.clone());
                }
                out.removed = staged.instance_count() as u64;
            }
            Command::RestoreCommit { id } => {
                self.staged_mut(*id)?;
                let staged = self.staged.take().expect("checked above");
                out.removed = self.commit_restore(index, *staged, &mut out);
            }
            Command::RestoreAbort { id } => {
                self.staged_mut(*id)?;
                self.staged = None;
            }
            Command::AclBootstrap { token } => {
                if self.acl.bootstrapped {
                    return Err(ApplyError::AclBootstrapped);
                }
                self.acl.bootstrapped = true;
                self.acl.put_token(token.clone());
                self.acl.set_changed_at(index);
            }
            Command::AclSetToken { token } => {
                self.acl.put_token(token.clone());
                self.acl.set_changed_at(index);
            }
            Command::AclDeleteToken { accessor } => {
                if !self.acl.remove_token(accessor) {
                    return Err(ApplyError::UnknownToken(accessor.clone()));
                }
                self.acl.set_changed_at(index);
            }
            Command::AclSetPolicy { policy } => {
                self.acl.put_policy(policy.clone());
                self.acl.set_changed_at(index);
            }
            Command::AclDeletePolicy { name } => {
                if !self.acl.remove_policy(name) {
                    return Err(ApplyError::UnknownPolicy(name.clone()));
                }
                self.acl.set_changed_at(index);
            }
        }
        out.changed.sort();
        out.changed.dedup();
        let done = match cmd {
            Command::Register { .. }
            | Command::CheckStatus { .. }
            | Command::Maintenance { .. }
            | Command::PutCheck { .. }
            | Command::RemoveCheck { .. } => Done::Instance(
                out.instance
                    .expect("every instance command that applies yields its instance"),
            ),
            Command::Deregister { .. }
            | Command::RevokeLease { .. }
            | Command::ExpireLeases { .. } => Done::Removed(out.removed),
            Command::CreateLease { id, .. } => Done::LeaseCreated(*id),
            Command::PreserveLeases { .. } => Done::Preserved(out.preserved),
            Command::RetireNode { id } => Done::NodeRetired(*id),
            Command::RestoreBegin { .. }
            | Command::RestoreStage { .. }
            | Command::RestoreCommit { .. }
            | Command::RestoreAbort { .. } => Done::Restore(out.removed),
            Command::AclBootstrap { .. }
            | Command::AclSetToken { .. }
            | Command::AclDeleteToken { .. }
            | Command::AclSetPolicy { .. }
            | Command::AclDeletePolicy { .. } => Done::Acl,
        };
        Ok(Outcome {
            done,
            changed: out.changed,
            leases_created: out.leases_created,
            leases_removed: out.leases_removed,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        index: u64,
        now_ms: u64,
        namespace: &str,
        service: &str,
        data: &InstanceData,
        lease: LeaseRef,
        out: &mut Effects,
    ) -> Result<(), ApplyError> {
        // Interned: the key, every instance and lease entry of the service
        // share its two strings.
        for (field, len, max) in [
            ("checks", data.checks.len(), limits::MAX_CHECKS),
            ("tags", data.tags.len(), limits::MAX_TAGS),
            ("meta", data.meta.len(), limits::MAX_META),
        ] {
            if len > max {
                return Err(ApplyError::OverLimit {
                    id: data.id.clone(),
                    field: field.into(),
                    max,
                });
            }
        }
        let key = ServiceKey::interned(namespace, service);
        let previous = self
            .services
            .get(&key)
            .and_then(|s| s.instances.get(&data.id))
            .cloned();
        let old_lease = previous
            .as_ref()
            .and_then(|p| p.lease.as_deref())
            .and_then(muster_types::parse_lease_id);

        // Resolve the lease first: an unknown lease must change nothing.
        let lease_id = match lease {
            LeaseRef::None => None,
            LeaseRef::Existing(id) => {
                if !self.leases.contains_key(&id) {
                    return Err(ApplyError::UnknownLease(id));
                }
                Some(id)
            }
            LeaseRef::Own { id, ttl_ms } => {
                let reuse = old_lease.filter(|old| {
                    self.leases
                        .get(old)
                        .is_some_and(|l| l.own && l.ttl_ms == ttl_ms)
                });
                match reuse {
                    Some(old) => Some(old),
                    None => {
                        if self.leases.contains_key(&id) {
                            return Err(ApplyError::LeaseExists(id));
                        }
                        self.insert_lease(index, id, ttl_ms, true, out);
                        Some(id)
                    }
                }
            }
        };

        // Checks that survive a re-registration keep their state.
        let checks: Box<[Check]> = data
            .checks
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.status_index = index;
                if let Some(old) = previous
                    .as_ref()
                    .and_then(|p| p.checks.iter().find(|o| o.id == c.id && o.kind == c.kind))
                {
                    c.status = old.status;
                    c.output = old.output.clone();
                    c.status_index = old.status_index;
                }
                c
            })
            .collect();
        let maintenance = previous.as_ref().and_then(|p| p.maintenance.clone());
        let preserved = lease_id
            .and_then(|l| self.leases.get(&l))
            .map_or(Preservation::None, |l| l.preserved);
        let id = CompactString::from(data.id.as_str());
        let instance = Arc::new(Instance {
            id: id.clone(),
            namespace: key.namespace.clone(),
            service: key.service.clone(),
            address: data.address.as_str().into(),
            port: data.port,
            tags: data.tags.iter().collect::<Tags>(),
            meta: data.meta.iter().collect::<Meta>(),
            version: data.version.as_deref().map(SharedStr::interned),
            zone: data.zone.as_deref().map(SharedStr::interned),
            weight: data.weight,
            health: health_of(&checks, maintenance.as_deref(), preserved),
            checks,
            maintenance,
            lease: lease_id.map(|l| format_lease_id(l).into()),
            preserved,
            create_index: previous.as_ref().map_or(index, |p| p.create_index),
            modify_index: index,
            registered_at_ms: now_ms,
        });

        // A replay of the same registration changes nothing and wakes nobody.
        if let Some(prev) = &previous {
            let same = Instance {
                modify_index: prev.modify_index,
                registered_at_ms: prev.registered_at_ms,
                ..(*instance).clone()
            };
            if same == **prev {
                out.instance = Some(prev.clone());
                return Ok(());
            }
        }

        if old_lease != lease_id {
            if let Some(old) = old_lease {
                self.detach(index, old, &key, &data.id, out);
            }
            if let Some(new) = lease_id {
                let l = self.leases.get_mut(&new).expect("lease resolved above");
                l.instances.insert((key.clone(), id));
                l.index = index;
            }
        }

        let svc = self.services.entry(key.clone()).or_default();
        svc.instances.insert(instance.clone());
        svc.record(index, Change::Upsert(instance.clone()));
        self.set_namespace_index(&key.namespace, index);
        out.changed.push(key);
        out.instance = Some(instance);
        Ok(())
    }

    /// Changes one instance through `f`, which says whether it changed
    /// anything; a change bumps the instance's and service's index.
    fn modify_instance(
        &mut self,
        index: u64,
        key: &ServiceKey,
        id: &str,
        out: &mut Effects,
        f: impl FnOnce(&mut Instance) -> Result<bool, ApplyError>,
    ) -> Result<(), ApplyError> {
        let svc = self.services.get_mut(key);
        let Some(current) = svc.as_ref().and_then(|s| s.instances.get(id)) else {
            return Err(ApplyError::UnknownInstance {
                service: key.service.to_string(),
                id: id.to_string(),
            });
        };
        let mut inst = (**current).clone();
        if !f(&mut inst)? {
            out.instance = Some(current.clone());
            return Ok(());
        }
        inst.health = health_of(&inst.checks, inst.maintenance.as_deref(), inst.preserved);
        inst.modify_index = index;
        let inst = Arc::new(inst);
        let svc = svc.expect("instance found above");
        svc.instances.insert(inst.clone());
        svc.record(index, Change::Upsert(inst.clone()));
        self.set_namespace_index(&key.namespace, index);
        out.changed.push(key.clone());
        out.instance = Some(inst);
        Ok(())
    }

    fn insert_lease(&mut self, index: u64, id: u64, ttl_ms: u64, own: bool, out: &mut Effects) {
        self.leases.insert(
            id,
            Lease {
                id,
                ttl_ms,
                own,
                instances: LeaseMembers::new(),
                index,
                preserved: Preservation::None,
            },
        );
        out.leases_created.push((id, ttl_ms));
    }

    /// Detaches an instance from a lease; an own lease left empty goes too.
    fn detach(&mut self, index: u64, lease: u64, key: &ServiceKey, id: &str, out: &mut Effects) {
        if let Some(l) = self.leases.get_mut(&lease) {
            l.instances.remove(key, id);
            l.index = index;
            if l.own && l.instances.is_empty() {
                self.leases.remove(&lease);
                out.leases_removed.push(lease);
            }
        }
    }

    fn staged_mut(&mut self, id: u64) -> Result<&mut Staged, ApplyError> {
        match self.staged.as_deref_mut() {
            Some(s) if s.id == id => Ok(s),
            _ => Err(ApplyError::NoRestore(id)),
        }
    }

    /// Swaps the staged state in at `index`: every instance and lease
    /// replaced, the difference recorded in each service's history, so
    /// watchers get deletes and upserts (or a snapshot when they are too
    /// far behind). Returns the number of instances restored.
    fn commit_restore(&mut self, index: u64, staged: Staged, out: &mut Effects) -> u64 {
        let Staged {
            leases, instances, ..
        } = staged;
        let mut restored = 0u64;
        let mut keys: BTreeSet<ServiceKey> = self
            .services
            .iter()
            .filter(|(_, s)| !s.instances.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        keys.extend(instances.keys().cloned());
        let mut instances = instances;
        for key in keys {
            let new = instances.remove(&key).unwrap_or_default();
            let svc = self.services.entry(key.clone()).or_default();
            let gone: Vec<CompactString> = svc
                .instances
                .keys()
                .filter(|id| !new.contains_key(id))
                .cloned()
                .collect();
            for id in gone {
                svc.instances.remove(&id);
                svc.record(index, Change::Delete(id));
            }
            for inst in new.values() {
                let mut fresh = Instance::clone(inst);
                // A fresh lease: nothing is preserved, as after a leader
                // change; the indexes are this log's, not the backup's.
                fresh.preserved = Preservation::None;
                fresh.health = health_of(
                    &fresh.checks,
                    fresh.maintenance.as_deref(),
                    Preservation::None,
                );
                fresh.create_index = index;
                fresh.modify_index = index;
                let fresh = Arc::new(fresh);
                svc.instances.insert(fresh.clone());
                svc.record(index, Change::Upsert(fresh));
                restored += 1;
            }
            svc.index = index;
            self.namespace_index
                .insert(key.namespace.to_string(), index);
            out.changed.push(key);
        }
        for id in self.leases.keys() {
            if !leases.contains_key(id) {
                out.leases_removed.push(*id);
            }
        }
        self.leases = leases
            .into_iter()
            .map(|(id, mut lease)| {
                lease.index = index;
                lease.preserved = Preservation::None;
                out.leases_created.push((id, lease.ttl_ms));
                (id, lease)
            })
            .collect();
        restored
    }

    fn remove_instance(&mut self, index: u64, key: &ServiceKey, id: &str, out: &mut Effects) {
        let Some(svc) = self.services.get_mut(key) else {
            return;
        };
        let Some(inst) = svc.instances.remove(id) else {
            return;
        };
        svc.record(index, Change::Delete(inst.id.clone()));
        self.set_namespace_index(&key.namespace, index);
        out.changed.push(key.clone());
        out.removed += 1;
        if let Some(lease) = inst.lease.as_deref().and_then(muster_types::parse_lease_id) {
            self.detach(index, lease, key, id, out);
        }
    }

    fn set_namespace_index(&mut self, namespace: &str, index: u64) {
        match self.namespace_index.get_mut(namespace) {
            Some(i) => *i = index,
            None => {
                self.namespace_index.insert(namespace.to_string(), index);
            }
        }
    }

    /// Sets a lease's preservation and copies it to its instances.
    fn preserve_lease(&mut self, index: u64, id: u64, state: Preservation, out: &mut Effects) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        if lease.preserved == state {
            return;
        }
        lease.preserved = state;
        lease.index = index;
        let members: Vec<(ServiceKey, CompactString)> = lease
            .instances
            .iter()
            .map(|(k, i)| (k.clone(), CompactString::from(i)))
            .collect();
        for (key, inst) in members {
            let mut changed = false;
            // Every member exists (a lease's members are its instances).
            let _ = self.modify_instance(index, &key, &inst, out, |i| {
                changed = i.preserved != state;
                i.preserved = state;
                Ok(changed)
            });
            out.preserved += u64::from(changed);
        }
        out.instance = None;
    }

    fn drop_lease(&mut self, index: u64, id: u64, out: &mut Effects) {
        let Some(lease) = self.leases.remove(&id) else {
            return;
        };
        out.leases_removed.push(id);
        for (key, inst) in lease.instances.iter() {
            self.remove_instance(index, key, inst, out);
        }
    }

    // ---- reads ----

    /// Index of a service's last change; 0 when it never existed.
    pub fn service_index(&self, key: &ServiceKey) -> u64 {
        self.services.get(key).map_or(0, |s| s.index)
    }

    /// Index of the last change in a namespace; 0 when it never had one.
    pub fn namespace_index(&self, namespace: &str) -> u64 {
        self.namespace_index.get(namespace).copied().unwrap_or(0)
    }

    /// The service, if it ever existed.
    pub fn service(&self, key: &ServiceKey) -> Option<&Service> {
        self.services.get(key)
    }

    /// One instance.
    pub fn instance(&self, key: &ServiceKey, id: &str) -> Option<&Arc<Instance>> {
        self.services.get(key)?.instances.get(id)
    }

    /// Instances of a service matching a query, ordered by id, and the
    /// service index the answer reflects.
    pub fn query(&self, key: &ServiceKey, q: &Query) -> (u64, Vec<Arc<Instance>>) {
        match self.services.get(key) {
            None => (0, Vec::new()),
            Some(s) => (
                s.index,
                s.instances
                    .values()
                    .filter(|i| q.matches(i))
                    .cloned()
                    .collect(),
            ),
        }
    }

    /// Services of a namespace that have instances, by name, with counts.
    pub fn services(&self, namespace: &str) -> Vec<ServiceSummary> {
        let start = ServiceKey::new(namespace, "");
        self.services
            .range(start..)
            .take_while(|(k, _)| k.namespace.as_str() == namespace)
            .filter(|(_, s)| !s.instances.is_empty())
            .map(|(k, s)| {
                let mut sum = ServiceSummary {
                    name: k.service.to_string(),
                    instances: s.instances.len() as u64,
                    passing: 0,
                    warning: 0,
                    critical: 0,
                    index: s.index,
                };
                for i in s.instances.values() {
                    match i.health {
                        Health::Passing => sum.passing += 1,
                        Health::Warning => sum.warning += 1,
                        Health::Critical => sum.critical += 1,
                    }
                }
                sum
            })
            .collect()
    }

    /// Changes of a service after `since`, oldest first; `None` when the
    /// history no longer reaches back that far (the caller needs a snapshot).
    pub fn changes_since(&self, key: &ServiceKey, since: u64) -> Option<Vec<IndexedChange>> {
        let Some(svc) = self.services.get(key) else {
            // Never existed: nothing happened after any index.
            return Some(Vec::new());
        };
        if since < svc.history_floor {
            return None;
        }
        Some(
            svc.history
                .iter()
                .filter(|c| c.index > since)
                .cloned()
                .collect(),
        )
    }

    /// What a watcher that last saw event id `last_id` of this service may
    /// have missed, oldest first: every change after `last_id`, and, when
    /// several changes of the service share `last_id`, those too (the
    /// watcher may have got only some of them before it lost the stream, and
    /// its id cannot say which). So delivery is at least once: a resumed
    /// watcher may see again changes it already had, which is harmless as
    /// upserts and deletes are idempotent. When `last_id` holds at most one
    /// change, exactly the missed changes are returned.
    ///
    /// `None` when the history no longer reaches back that far (the caller
    /// needs a snapshot).
    pub fn changes_to_resume(&self, key: &ServiceKey, last_id: u64) -> Option<Vec<IndexedChange>> {
        let Some(svc) = self.services.get(key) else {
            return Some(Vec::new());
        };
        // Changes at the floor index may have been dropped while others of
        // the same index remain: from exactly there, nothing is certain.
        if last_id < svc.history_floor || (last_id == svc.history_floor && last_id > 0) {
            return None;
        }
        let start = svc.history.partition_point(|c| c.index < last_id);
        let shared = svc
            .history
            .range(start..)
            .take_while(|c| c.index == last_id)
            .nth(1)
            .is_some();
        let from = if shared {
            start
        } else {
            svc.history.partition_point(|c| c.index <= last_id)
        };
        Some(svc.history.range(from..).cloned().collect())
    }

    /// Every service key that ever existed, in order.
    pub fn service_keys(&self) -> impl Iterator<Item = &ServiceKey> {
        self.services.keys()
    }

    /// One lease.
    pub fn lease(&self, id: u64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// All leases, by id.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Number of instances across all services.
    pub fn instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    /// Number of leases self-preservation keeps past their deadline:
    /// (held, lapsed). Counted, not kept: for status pages and scrapes.
    pub fn preserved_lease_count(&self) -> (u64, u64) {
        let (mut held, mut lapsed) = (0, 0);
        for l in self.leases.values() {
            match l.preserved {
                Preservation::None => {}
                Preservation::Held => held += 1,
                Preservation::Lapsed => lapsed += 1,
            }
        }
        (held, lapsed)
    }

    /// Number of leases.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }
}

impl Service {
    fn record(&mut self, index: u64, change: Change) {
        self.index = index;
        self.history.push_back(IndexedChange { index, change });
        while self.history.len() > HISTORY_PER_SERVICE {
            if let Some(old) = self.history.pop_front() {
                // Changes sharing the dropped index may still be in the
                // queue, so resumption must start strictly after it.
                self.history_floor = old.index;
            }
        }
    }
}

#[cfg(test)]
mod tests;
