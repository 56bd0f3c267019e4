//! Version 1 of the stored forms: how each command of a log entry and each
//! part of snapshot data is written, defined here, apart from the in-memory
//! types ([`muster_catalog`]) and the HTTP JSON ([`muster_types`]).
//!
//! Each type below mirrors one in-memory type field for field (serde's
//! `remote` derive: no copy on either side). A change to an in-memory type
//! therefore fails to compile here until someone decides what it means for
//! the stored form; a change to what is written fails the golden fixtures
//! (`testdata/log-entry-v1.bin`, `testdata/snapshot-v1.bin`) and needs a new
//! format version.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use muster_catalog::acl::{Acl, AclToken, Policy, ServiceAccess, ServiceRule};
use muster_catalog::{
    CatalogHead, Change, Check, Command, IndexedChange, Instance, InstanceData, Instances, Lease,
    LeaseMembers, LeaseRef, Preservation, Service, ServiceKey, Staged,
};
use muster_types::{CheckKind, CompactString, Health, Meta, SharedStr, Tags};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// [`Command`] as version 1 writes it.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Command")]
pub(crate) enum CommandV1 {
    Register {
        namespace: String,
        service: String,
        #[serde(with = "InstanceDataV1")]
        instance: InstanceData,
        #[serde(with = "LeaseRefV1")]
        lease: LeaseRef,
    },
    Deregister {
        namespace: String,
        service: String,
        id: String,
    },
    CreateLease {
        id: u64,
        ttl_ms: u64,
    },
    RevokeLease {
        id: u64,
    },
    CheckStatus {
        namespace: String,
        service: String,
        id: String,
        check: String,
        #[serde(with = "HealthV1")]
        status: Health,
        output: String,
    },
    Maintenance {
        namespace: String,
        service: String,
        id: String,
        reason: Option<String>,
    },
    PutCheck {
        namespace: String,
        service: String,
        id: String,
        #[serde(with = "CheckV1")]
        check: Check,
    },
    RemoveCheck {
        namespace: String,
        service: String,
        id: String,
        check: String,
    },
    ExpireLeases {
        ids: Vec<u64>,
    },
    PreserveLeases {
        ids: Vec<u64>,
        #[serde(with = "PreservationV1")]
        state: Preservation,
    },
    RetireNode {
        id: u64,
    },
    RestoreBegin {
        id: u64,
    },
    RestoreStage {
        id: u64,
        #[serde(with = "lease_list_v1")]
        leases: Vec<Lease>,
        #[serde(with = "instance_list_v1")]
        instances: Vec<Arc<Instance>>,
    },
    RestoreCommit {
        id: u64,
    },
    RestoreAbort {
        id: u64,
    },
    AclBootstrap {
        #[serde(with = "AclTokenV1")]
        token: AclToken,
    },
    AclSetToken {
        #[serde(with = "AclTokenV1")]
        token: AclToken,
    },
    AclDeleteToken {
        accessor: String,
    },
    AclSetPolicy {
        #[serde(with = "PolicyV1")]
        policy: Policy,
    },
    AclDeletePolicy {
        name: String,
    },
}

/// [`AclToken`] as stored: the secret's hash, never the secret.
#[derive(Serialize, Deserialize)]
#[serde(remote = "AclToken")]
struct AclTokenV1 {
    accessor: String,
    secret_hash: String,
    description: String,
    policies: Vec<String>,
    management: bool,
    created_ms: u64,
    expires_ms: Option<u64>,
}

/// [`Policy`] as stored.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Policy")]
struct PolicyV1 {
    name: String,
    description: String,
    #[serde(with = "rules_v1")]
    services: Vec<ServiceRule>,
    operator: bool,
    acl: bool,
}

/// [`ServiceRule`] as stored.
#[derive(Serialize, Deserialize)]
#[serde(remote = "ServiceRule")]
struct ServiceRuleV1 {
    namespace: String,
    service: String,
    #[serde(with = "ServiceAccessV1")]
    access: ServiceAccess,
}

/// [`ServiceAccess`] as stored.
#[derive(Serialize, Deserialize)]
#[serde(remote = "ServiceAccess", rename_all = "lowercase")]
enum ServiceAccessV1 {
    Deny,
    Read,
    Write,
}

mod rules_v1 {
    use super::*;

    #[derive(Serialize)]
    struct Out<'a>(#[serde(with = "ServiceRuleV1")] &'a ServiceRule);
    #[derive(Deserialize)]
    struct In(#[serde(with = "ServiceRuleV1")] ServiceRule);

    pub(super) fn serialize<S: Serializer>(rules: &[ServiceRule], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(rules.iter().map(Out))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<ServiceRule>, D::Error> {
        Ok(Vec::<In>::deserialize(d)?
            .into_iter()
            .map(|r| r.0)
            .collect())
    }
}

#[derive(Serialize)]
struct AclTokenOut<'a>(#[serde(with = "AclTokenV1")] &'a AclToken);
#[derive(Deserialize)]
struct AclTokenIn(#[serde(with = "AclTokenV1")] AclToken);
#[derive(Serialize)]
struct PolicyOut<'a>(#[serde(with = "PolicyV1")] &'a Policy);
#[derive(Deserialize)]
struct PolicyIn(#[serde(with = "PolicyV1")] Policy);

/// The ACL state in the head frame.
struct AclOut<'a>(&'a Acl);

impl Serialize for AclOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Acl", 3)?;
        st.serialize_field("bootstrapped", &self.0.bootstrapped)?;
        let tokens: Vec<AclTokenOut<'_>> = self.0.tokens().map(AclTokenOut).collect();
        st.serialize_field("tokens", &tokens)?;
        let policies: Vec<PolicyOut<'_>> = self.0.policies().map(PolicyOut).collect();
        st.serialize_field("policies", &policies)?;
        st.end()
    }
}

#[derive(Deserialize)]
struct AclIn {
    bootstrapped: bool,
    tokens: Vec<AclTokenIn>,
    policies: Vec<PolicyIn>,
}

/// A list of leases, each as [`LeaseV1`] (a chunk of a restore).
mod lease_list_v1 {
    use super::*;

    pub(super) fn serialize<S: Serializer>(leases: &[Lease], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(leases.iter().map(LeaseRefOut))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Lease>, D::Error> {
        Ok(Vec::<LeaseIn>::deserialize(d)?
            .into_iter()
            .map(|l| l.0)
            .collect())
    }
}

/// A list of instances, each as [`InstanceV1`] (a chunk of a restore).
mod instance_list_v1 {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        instances: &[Arc<Instance>],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(instances.iter().map(|i| InstanceRef(i)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Arc<Instance>>, D::Error> {
        Ok(Vec::<InstanceIn>::deserialize(d)?
            .into_iter()
            .map(|i| Arc::new(i.0))
            .collect())
    }
}

/// Written only when a lease or instance is preserved, so a catalog without
/// self-preservation is stored exactly as before the field existed.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Preservation", rename_all = "lowercase")]
enum PreservationV1 {
    None,
    Held,
    Lapsed,
}

fn not_preserved(p: &Preservation) -> bool {
    !p.is_preserved()
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "InstanceData")]
struct InstanceDataV1 {
    id: String,
    address: String,
    port: u16,
    tags: BTreeSet<String>,
    meta: BTreeMap<String, String>,
    version: Option<String>,
    zone: Option<String>,
    weight: u32,
    #[serde(default, with = "checks_v1")]
    checks: Vec<Check>,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "LeaseRef")]
enum LeaseRefV1 {
    None,
    Own { id: u64, ttl_ms: u64 },
    Existing(u64),
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Check")]
struct CheckV1 {
    id: String,
    name: String,
    #[serde(with = "CheckKindV1")]
    kind: CheckKind,
    interval_ms: u64,
    timeout_ms: u64,
    success_before_passing: u32,
    failures_before_critical: u32,
    deregister_critical_after_ms: Option<u64>,
    notes: Option<String>,
    #[serde(with = "HealthV1")]
    status: Health,
    output: String,
    status_index: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "CheckKind", rename_all = "lowercase", tag = "type")]
enum CheckKindV1 {
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, String>,
        tls_skip_verify: bool,
    },
    Tcp {
        addr: String,
    },
    Grpc {
        addr: String,
        service: String,
    },
    Ttl,
    Command {
        args: Vec<String>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Health", rename_all = "lowercase")]
enum HealthV1 {
    Passing,
    Warning,
    Critical,
}

/// A list of checks, each as [`CheckV1`].
mod checks_v1 {
    use super::*;

    struct One<'a>(&'a Check);

    impl Serialize for One<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            CheckV1::serialize(self.0, s)
        }
    }

    #[derive(Deserialize)]
    struct Owned(#[serde(with = "CheckV1")] Check);

    pub(super) fn serialize<S: Serializer>(checks: &[Check], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(checks.iter().map(One))
    }

    pub(super) fn deserialize<'de, D, C>(d: D) -> Result<C, D::Error>
    where
        D: Deserializer<'de>,
        C: FromIterator<Check>,
    {
        Ok(Vec::<Owned>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect())
    }
}

/// A list of commands, each as [`CommandV1`]: the `commands` of an entry.
pub(crate) mod commands_v1 {
    use super::*;

    struct One<'a>(&'a Command);

    impl Serialize for One<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            CommandV1::serialize(self.0, s)
        }
    }

    #[derive(Deserialize)]
    struct Owned(#[serde(with = "CommandV1")] Command);

    pub(crate) fn serialize<S: Serializer>(commands: &[Command], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(commands.iter().map(One))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<Command>>>(
        d: D,
    ) -> Result<T, D::Error> {
        Ok(Vec::<Owned>::deserialize(d)?
            .into_iter()
            .map(|o| o.0)
            .collect::<Vec<_>>()
            .into())
    }
}

// ---- Snapshot data, version 1 ----
//
// The head frame is `{"index", "leases": {id: lease}, "namespace_index",
// "services"}`; each service frame is `[key, service]`, the service being
// `{"index", "instances": {id: instance}, "history", "history_floor"}`. A
// history entry that upserted the instance still current under its id is
// written as that id (`{"Current": id}`), not as a second copy: a full
// history would otherwise repeat a quarter of a large catalog in every
// snapshot.

#[derive(Serialize, Deserialize)]
#[serde(remote = "ServiceKey")]
pub(crate) struct ServiceKeyV1 {
    namespace: SharedStr,
    service: SharedStr,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Instance")]
pub(crate) struct InstanceV1 {
    id: CompactString,
    namespace: SharedStr,
    service: SharedStr,
    address: CompactString,
    port: u16,
    tags: Tags,
    meta: Meta,
    version: Option<SharedStr>,
    zone: Option<SharedStr>,
    weight: u32,
    #[serde(with = "HealthV1")]
    health: Health,
    #[serde(default, with = "checks_v1")]
    checks: Box<[Check]>,
    #[serde(default)]
    maintenance: Option<SharedStr>,
    lease: Option<CompactString>,
    #[serde(
        default,
        skip_serializing_if = "not_preserved",
        with = "PreservationV1"
    )]
    preserved: Preservation,
    create_index: u64,
    modify_index: u64,
    registered_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "Lease")]
struct LeaseV1 {
    id: u64,
    ttl_ms: u64,
    own: bool,
    #[serde(with = "members_v1")]
    instances: LeaseMembers,
    index: u64,
    #[serde(
        default,
        skip_serializing_if = "not_preserved",
        with = "PreservationV1"
    )]
    preserved: Preservation,
}

/// Serialises a borrowed value with a version-1 `remote` mirror.
macro_rules! by_ref {
    ($name:ident, $ty:ty, $mirror:ident) => {
        struct $name<'a>(&'a $ty);
        impl Serialize for $name<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $mirror::serialize(self.0, s)
            }
        }
    };
}

by_ref!(KeyRef, ServiceKey, ServiceKeyV1);
by_ref!(InstanceRef, Instance, InstanceV1);
by_ref!(LeaseRefOut, Lease, LeaseV1);

#[derive(Deserialize)]
struct KeyIn(#[serde(with = "ServiceKeyV1")] ServiceKey);

#[derive(Deserialize)]
struct InstanceIn(#[serde(with = "InstanceV1")] Instance);

#[derive(Deserialize)]
struct LeaseIn(#[serde(with = "LeaseV1")] Lease);

/// A lease's instances: a list of `[key, id]` pairs.
mod members_v1 {
    use super::*;

    pub(super) fn serialize<S: Serializer>(m: &LeaseMembers, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter().map(|(k, id)| (KeyRef(k), id)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LeaseMembers, D::Error> {
        Ok(Vec::<(KeyIn, CompactString)>::deserialize(d)?
            .into_iter()
            .map(|(k, id)| (k.0, id))
            .collect())
    }
}

struct LeasesOut<'a>(&'a BTreeMap<u64, Lease>);

impl Serialize for LeasesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(id, l)| (id, LeaseRefOut(l))))
    }
}

/// The head frame of snapshot data: the catalog without its services.
pub(crate) struct HeadOut<'a>(pub(crate) &'a CatalogHead<'a>);

impl Serialize for HeadOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CatalogHead", 4)?;
        st.serialize_field("index", &self.0.index)?;
        st.serialize_field("leases", &LeasesOut(&self.0.leases))?;
        st.serialize_field("namespace_index", &*self.0.namespace_index)?;
        st.serialize_field("services", &self.0.services)?;
        // Written only once a node was removed, so a catalog of a cluster
        // that never removed one is stored exactly as before the field.
        if !self.0.retired_nodes.is_empty() {
            st.serialize_field("retired_nodes", &*self.0.retired_nodes)?;
        }
        // Written only while a restore is staged, likewise.
        if let Some(staged) = &self.0.staged {
            st.serialize_field("restore", &StagedOut(staged))?;
        }
        // Written only once ACLs were used, likewise.
        if !self.0.acl.is_empty() {
            st.serialize_field("acl", &AclOut(&self.0.acl))?;
        }
        st.end()
    }
}

/// The head frame as read.
#[derive(Deserialize)]
pub(crate) struct HeadIn {
    index: u64,
    leases: BTreeMap<u64, LeaseIn>,
    namespace_index: BTreeMap<String, u64>,
    services: u64,
    #[serde(default)]
    retired_nodes: BTreeSet<u64>,
    #[serde(default)]
    restore: Option<StagedIn>,
    #[serde(default)]
    acl: Option<AclIn>,
}

/// A staged restore in the head frame: its id, last touch, leases and
/// instances (a snapshot taken mid-restore carries it, so a node that
/// installs that snapshot can still commit the restore).
struct StagedOut<'a>(&'a Staged);

impl Serialize for StagedOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Staged", 4)?;
        st.serialize_field("id", &self.0.id)?;
        st.serialize_field("touched_ms", &self.0.touched_ms)?;
        st.serialize_field("leases", &LeasesOut(&self.0.leases))?;
        let instances: Vec<InstanceRef<'_>> = self
            .0
            .instances
            .values()
            .flat_map(|i| i.values())
            .map(|i| InstanceRef(i))
            .collect();
        st.serialize_field("instances", &instances)?;
        st.end()
    }
}

#[derive(Deserialize)]
struct StagedIn {
    id: u64,
    touched_ms: u64,
    leases: BTreeMap<u64, LeaseIn>,
    instances: Vec<InstanceIn>,
}

impl StagedIn {
    fn into_staged(self) -> Staged {
        let mut instances: BTreeMap<ServiceKey, Instances> = BTreeMap::new();
        for i in self.instances {
            let key = ServiceKey::interned(&i.0.namespace, &i.0.service);
            instances.entry(key).or_default().insert(Arc::new(i.0));
        }
        Staged {
            id: self.id,
            touched_ms: self.touched_ms,
            leases: self.leases.into_iter().map(|(id, l)| (id, l.0)).collect(),
            instances,
        }
    }
}

impl HeadIn {
    /// How many service frames follow.
    pub(crate) fn services(&self) -> u64 {
        self.services
    }

    /// The catalog's head.
    pub(crate) fn into_head(self) -> CatalogHead<'static> {
        CatalogHead {
            index: self.index,
            leases: Cow::Owned(self.leases.into_iter().map(|(id, l)| (id, l.0)).collect()),
            namespace_index: Cow::Owned(self.namespace_index),
            services: self.services,
            retired_nodes: Cow::Owned(self.retired_nodes),
            staged: self.restore.map(|s| Cow::Owned(s.into_staged())),
            acl: Cow::Owned(self.acl.map_or_else(Acl::default, |a| {
                Acl::from_parts(
                    a.bootstrapped,
                    a.tokens.into_iter().map(|t| t.0),
                    a.policies.into_iter().map(|p| p.0),
                )
            })),
        }
    }
}

/// A history entry as stored.
#[derive(Serialize, Deserialize)]
enum StoredChange<I, S> {
    /// Instance registered or replaced: the instance.
    Upsert(I),
    /// Instance removed: its id.
    Delete(S),
    /// Instance registered or replaced, and still the current instance of
    /// that id: the id.
    Current(S),
}

#[derive(Serialize, Deserialize)]
struct StoredIndexedChange<I, S> {
    index: u64,
    change: StoredChange<I, S>,
}

struct InstancesOut<'a>(&'a Instances);

impl Serialize for InstancesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(id, i)| (id, InstanceRef(i))))
    }
}

struct HistoryOut<'a>(&'a Service);

impl Serialize for HistoryOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let svc = self.0;
        s.collect_seq(svc.history().map(|c| StoredIndexedChange {
            index: c.index,
            change: match &c.change {
                Change::Upsert(i) if svc.is_current(i) => StoredChange::Current(&i.id),
                Change::Upsert(i) => StoredChange::Upsert(InstanceRef(i)),
                Change::Delete(id) => StoredChange::Delete(id),
            },
        }))
    }
}

struct ServiceOut<'a>(&'a Service);

impl Serialize for ServiceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Service", 4)?;
        st.serialize_field("index", &self.0.index)?;
        st.serialize_field("instances", &InstancesOut(&self.0.instances))?;
        st.serialize_field("history", &HistoryOut(self.0))?;
        st.serialize_field("history_floor", &self.0.history_floor())?;
        st.end()
    }
}

/// A service frame of snapshot data: `[key, service]`.
pub(crate) fn service_out<'a>(key: &'a ServiceKey, service: &'a Service) -> impl Serialize + 'a {
    (KeyRef(key), ServiceOut(service))
}

/// A map of ids to instances, each filed under its own id.
struct InstancesIn(Instances);

impl<'de> Deserialize<'de> for InstancesIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InstancesIn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of instance ids to instances")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InstancesIn, A::Error> {
                let mut out = Instances::new();
                while let Some((id, inst)) = map.next_entry::<CompactString, InstanceIn>()? {
                    if id != inst.0.id {
                        return Err(serde::de::Error::custom(format!(
                            "instance {:?} filed under id {id:?}",
                            inst.0.id.as_str()
                        )));
                    }
                    if out.insert(Arc::new(inst.0)).is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "instance {id:?} appears twice"
                        )));
                    }
                }
                Ok(InstancesIn(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct ServiceIn {
    index: u64,
    instances: InstancesIn,
    history: Vec<StoredIndexedChange<InstanceIn, CompactString>>,
    history_floor: u64,
}

/// A service frame as read.
#[derive(Deserialize)]
pub(crate) struct ServiceEntryIn(KeyIn, ServiceIn);

impl ServiceEntryIn {
    /// The service, its history sharing the instances it names as current.
    pub(crate) fn into_entry(self) -> Result<(ServiceKey, Service), String> {
        let ServiceEntryIn(key, svc) = self;
        let instances = svc.instances.0;
        let history = svc
            .history
            .into_iter()
            .map(|c| {
                let change = match c.change {
                    StoredChange::Current(id) => match instances.get(&id) {
                        Some(current) => Change::Upsert(current.clone()),
                        None => {
                            return Err(format!(
                                "history entry {} of service {:?} names instance {id:?}, \
                                 which the service does not hold",
                                c.index,
                                key.0.service.as_str()
                            ));
                        }
                    },
                    StoredChange::Upsert(i) => Change::Upsert(Arc::new(i.0)),
                    StoredChange::Delete(id) => Change::Delete(id),
                };
                Ok(IndexedChange {
                    index: c.index,
                    change,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let service = Service::from_parts(svc.index, instances, history, svc.history_floor);
        Ok((key.0, service))
    }
}
