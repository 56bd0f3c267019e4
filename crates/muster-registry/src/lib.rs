//! The registry: one protocol-neutral core that every front-end calls.
//!
//! A front-end (the HTTP API today; a Consul-compatible API, DNS, a UI, a
//! gateway later) decodes its protocol into the typed operations of
//! [`Registry`], each with the [`Caller`] it runs for, and encodes what
//! they return. It never touches the catalog, a lock or the raft node:
//! those live here, with the lease timers, the health-check runner, the
//! per-service wake-ups and the typed caches.
//!
//! Data flows one way: an operation is authorised, checked, proposed as a
//! command to the raft log; once durable it is applied to the catalog, and
//! the apply observer wakes watchers and blocking queries, feeds the lease
//! timers and reconciles health checks.
//!
//! - [`Registry::open`] starts it; [`Registry::begin_shutdown`] ends long
//!   polls and watches, [`Registry::shutdown`] stops it.
//! - Writes: [`Registry::register`], [`Registry::deregister`], leases,
//!   checks and maintenance. Answered once durable.
//! - Reads: [`Registry::instance`], [`Registry::discover`] (typed answers
//!   cached per service index and canonical query), [`Registry::services`],
//!   blocking waits on a service or a namespace, and [`Registry::watch`], a
//!   typed stream of snapshot, upsert, delete and current events.
//! - Every failure is a [`RegistryError`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod acl;
mod cache;
mod caller;
mod checks;
mod error;
mod hub;
mod leases;
mod observer;
mod watch;

use std::sync::{Arc, Mutex, PoisonError, RwLockReadGuard};
use std::time::Duration;

use muster_catalog::{Catalog, Check, Command, Done, Instance, InstanceData, LeaseRef};
use muster_raft::{Node, ProposeError, RaftConfig};
use muster_types::{CheckKind, FieldError, Health, limits};
use rand::Rng;
use tokio::sync::{mpsc, watch as tokio_watch};
use tokio::task::JoinHandle;

pub use acl::{AuditRecord, AuditSink};
pub use cache::{Discovery, QueryMap};
pub use caller::{Caller, Identity, Secret};
pub use checks::CheckRun;
pub use error::{RegistryError, Result};
pub use leases::{LeaseTable, Sweep};
pub use muster_catalog::{
    HISTORY_PER_SERVICE, HealthFilter, Query, ServiceKey, VersionMatch, model,
};
pub use muster_raft::{
    BackupStream, ClusterConfig, MemberChange, MemberError, MemberInfo, RaftError, RestoreReport,
    Role,
};
pub use watch::{Watch, WatchBatch, WatchEvent};

use crate::caller::Access;
use crate::checks::{CheckRunner, ReportError};
use crate::hub::Hub;
use crate::leases::{LeaseManager, RenewError};
use crate::observer::{Observer, Reconcile};

/// How the registry runs: storage, leases, checks. Front-end settings (the
/// addresses they listen on) are not here.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    /// This node's id in the raft cluster.
    pub node_id: u64,
    /// Directory holding the durable log, vote and snapshots.
    pub data_dir: std::path::PathBuf,
    /// Snapshot (and compact the log) after this many log entries.
    pub snapshot_logs: u64,
    /// Also snapshot after this many commands, or an eighth of the
    /// instances the last snapshot held if more.
    pub snapshot_commands: u64,
    /// Share of leases (0..1] that may fall silent at once before expiry
    /// pauses (self-preservation); 1.0 disables it.
    pub self_preservation_threshold: f64,
    /// Self-preservation applies only with at least this many leases.
    pub self_preservation_min_leases: usize,
    /// How long self-preservation keeps a lease past its deadline with its
    /// instances still passing; after it they are kept as critical.
    pub self_preservation_bound: Duration,
    /// How often the leader looks for expired leases.
    pub sweep_interval: Duration,
    /// Allow checks that run a command on the registry's host.
    pub enable_command_checks: bool,
    /// Most health-check probes in flight at once.
    pub check_concurrency: usize,
    /// How long start-up may take before giving up.
    pub startup_timeout: Duration,
    /// Start from the snapshot alone when the log no longer reaches it,
    /// accepting the loss of the writes acknowledged after it.
    pub force_recover_from_snapshot: bool,
    /// Enforce ACL tokens: default deny, anonymous callers get only what
    /// the anonymous token's policies grant.
    pub acl: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            node_id: 1,
            data_dir: "./muster-data".into(),
            snapshot_logs: 10_000,
            snapshot_commands: 50_000,
            self_preservation_threshold: 0.85,
            self_preservation_min_leases: 10,
            self_preservation_bound: Duration::from_secs(15 * 60),
            sweep_interval: Duration::from_millis(250),
            enable_command_checks: false,
            check_concurrency: 512,
            startup_timeout: Duration::from_secs(60),
            force_recover_from_snapshot: false,
            acl: false,
        }
    }
}

impl RegistryConfig {
    /// Checks every field; the message names the field and the fix.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be at least 1".into());
        }
        if self.snapshot_logs < 10 {
            return Err("snapshot_logs must be at least 10".into());
        }
        if self.snapshot_commands < 10 {
            return Err("snapshot_commands must be at least 10".into());
        }
        if !(self.self_preservation_threshold > 0.0 && self.self_preservation_threshold <= 1.0) {
            return Err("self_preservation_threshold must be in (0, 1]; 1 disables it".into());
        }
        if self.sweep_interval < Duration::from_millis(10)
            || self.sweep_interval > Duration::from_secs(10)
        {
            return Err("sweep_interval must be between 10ms and 10s".into());
        }
        if self.check_concurrency == 0 {
            return Err("check_concurrency must be at least 1".into());
        }
        Ok(())
    }
}

/// Why the registry could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The storage or consensus layer failed.
    #[error(transparent)]
    Raft(#[from] RaftError),
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a registration asks for: the instance as its owner describes it.
/// Front-ends build it from their own wire types (already parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Address (IP or host name).
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    pub tags: std::collections::BTreeSet<String>,
    /// Metadata.
    pub meta: std::collections::BTreeMap<String, String>,
    /// Version.
    pub version: Option<String>,
    /// Zone.
    pub zone: Option<String>,
    /// Load-balancing weight.
    pub weight: u32,
    /// What keeps the instance alive.
    pub lease: LeaseChoice,
    /// Checks, in their initial state.
    pub checks: Vec<Check>,
}

/// What keeps a registered instance alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChoice {
    /// Nothing: a persistent instance, removed only by deregistration (or a
    /// check's `deregister_critical_after`).
    Persistent,
    /// A lease of its own with this TTL (reused by a re-registration with
    /// the same TTL).
    Ttl(Duration),
    /// An existing lease, shared with other instances.
    Existing(u64),
}

impl From<muster_types::Registration> for Registration {
    fn from(r: muster_types::Registration) -> Self {
        Registration {
            address: r.address,
            port: r.port,
            tags: r.tags,
            meta: r.meta,
            version: r.version,
            zone: r.zone,
            weight: r.weight,
            lease: match (r.ttl, r.lease) {
                (Some(ttl), _) => LeaseChoice::Ttl(ttl),
                (None, Some(l)) => LeaseChoice::Existing(l),
                (None, None) => LeaseChoice::Persistent,
            },
            checks: r.checks.into_iter().map(Check::from).collect(),
        }
    }
}

/// A write that was made durable, with what it produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    /// The log index of the write.
    pub index: u64,
    /// What it produced.
    pub value: T,
}

/// A read, with the index it reflects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed<T> {
    /// The index the answer reflects.
    pub index: u64,
    /// The answer.
    pub value: T,
}

/// One instance with what only the node running its checks knows.
#[derive(Debug, Clone)]
pub struct InstanceState {
    /// The instance as the log has it.
    pub instance: Arc<Instance>,
    /// The last run of each of its checks, in the order of
    /// `instance.checks` (empty runs where this node runs none).
    pub runs: Vec<CheckRun>,
}

/// A lease as reads show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Lease id.
    pub id: u64,
    /// Time to live.
    pub ttl: Duration,
    /// Instances attached to it.
    pub instances: u64,
    /// Log index that created it.
    pub index: u64,
}

/// A renewed lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// Lease id.
    pub lease: u64,
    /// The TTL it was renewed for.
    pub ttl: Duration,
}

/// The outcome of renewing many leases at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewedMany {
    /// Leases renewed.
    pub renewed: Vec<u64>,
    /// Leases unknown (expired or revoked): their holders must register again.
    pub not_found: Vec<u64>,
}

/// The services of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceList {
    /// The namespace's index.
    pub index: u64,
    /// Services with instance counts by health.
    pub services: Vec<muster_types::ServiceSummary>,
}

/// A node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: u64,
    /// The leader, if known.
    pub leader: Option<u64>,
    /// Voting members.
    pub members: Vec<u64>,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied.
    pub applied_index: u64,
    /// Whether lease expiry is paused (self-preservation).
    pub self_preservation: bool,
    /// Leases kept past their deadline by self-preservation, their
    /// instances still passing.
    pub preserved_leases: u64,
    /// Leases kept past the bound: their instances are critical.
    pub lapsed_leases: u64,
    /// Every member with its role, addresses, last contact and match
    /// index; empty on a single node.
    pub nodes: Vec<MemberInfo>,
}

/// The handle every front-end holds. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    node: Node,
    hub: Arc<Hub>,
    leases: Arc<LeaseManager>,
    checks: Arc<CheckRunner>,
    discovery: cache::DiscoveryCache,
    batches: cache::WatchBatches,
    config: RegistryConfig,
    stop_tx: tokio_watch::Sender<bool>,
    stop_rx: tokio_watch::Receiver<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    audit: std::sync::OnceLock<Arc<dyn acl::AuditSink>>,
    acl_cache: acl::AuthzCache,
}

/// Reads the catalog of `node`. A poisoned lock is recovered: apply is
/// whole or not at all under it, and one panic must not fail every read.
pub(crate) fn catalog(node: &Node) -> RwLockReadGuard<'_, Catalog> {
    node.catalog()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
}

/// A fresh lease id: random, never 0.
fn new_lease_id() -> u64 {
    rand::rng().random_range(1..=u64::MAX)
}

impl Registry {
    /// Opens the store, waits until this node leads and has replayed its
    /// log, and starts the lease sweeper, the check runner and the tasks
    /// that follow leadership.
    pub async fn open(config: RegistryConfig) -> std::result::Result<Registry, StartError> {
        Registry::start(config, None).await
    }

    /// Opens the registry as a member of the cluster `cluster.peers`,
    /// serving cluster RPC on `listener`. Returns without waiting for the
    /// cluster to form; any member takes every request: writes are
    /// forwarded to the leader, reads served from this node's catalog.
    pub async fn open_cluster(
        config: RegistryConfig,
        cluster: ClusterConfig,
        listener: tokio::net::TcpListener,
    ) -> std::result::Result<Registry, StartError> {
        Registry::start(config, Some((cluster, listener))).await
    }

    async fn start(
        config: RegistryConfig,
        cluster: Option<(ClusterConfig, tokio::net::TcpListener)>,
    ) -> std::result::Result<Registry, StartError> {
        config.validate().map_err(StartError::Config)?;
        // HTTPS health checks use rustls with exactly one crypto provider
        // (ring); an embedding program may have installed it already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let hub = Arc::new(Hub::default());
        let leases = Arc::new(LeaseManager::new(
            config.self_preservation_threshold,
            config.self_preservation_min_leases,
            config.self_preservation_bound,
        ));
        let (reconcile_tx, reconcile_rx) = mpsc::unbounded_channel();
        let observer = Arc::new(Observer {
            hub: hub.clone(),
            leases: leases.clone(),
            reconcile: reconcile_tx,
        });
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let raft_config = RaftConfig {
            node_id: config.node_id,
            data_dir: config.data_dir.clone(),
            snapshot_logs: config.snapshot_logs,
            snapshot_commands: config.snapshot_commands,
            force_recover_from_snapshot: config.force_recover_from_snapshot,
        };
        let node = match cluster {
            None => Node::open(raft_config, observer).await?,
            Some((cluster, listener)) => {
                Node::open_cluster(raft_config, observer, cluster, listener).await?
            }
        };
        node.wait_ready(config.startup_timeout).await?;

        let (stop_tx, stop_rx) = tokio_watch::channel(false);
        let checks = CheckRunner::new(node.clone(), config.check_concurrency);
        // Until set, what followers forward waits for it (as for a leader).
        node.set_leader_service(Arc::new(LeaderCalls {
            leases: leases.clone(),
            checks: checks.clone(),
        }));
        let tasks = vec![
            tokio::spawn(reconcile_checks(
                checks.clone(),
                reconcile_rx,
                stop_rx.clone(),
            )),
            {
                let initial = *node.leader_watch().borrow();
                follow_turn(&node, &leases, &checks, initial);
                tokio::spawn(follow_leadership(
                    node.clone(),
                    leases.clone(),
                    checks.clone(),
                    stop_rx.clone(),
                    initial,
                ))
            },
            tokio::spawn({
                let node = node.clone();
                leases::run_sweeper(
                    leases.clone(),
                    config.sweep_interval,
                    stop_rx.clone(),
                    move |cmd| {
                        let node = node.clone();
                        async move {
                            node.propose(cmd)
                                .await
                                .map(|a| a.index)
                                .map_err(|e| e.to_string())
                        }
                    },
                )
            }),
        ];
        Ok(Registry {
            inner: Arc::new(Inner {
                node,
                hub,
                leases,
                checks,
                discovery: Default::default(),
                batches: Default::default(),
                config,
                stop_tx,
                stop_rx,
                tasks: Mutex::new(tasks),
                audit: Default::default(),
                acl_cache: Default::default(),
            }),
        })
    }

    /// Ends every blocking wait and watch (they return at once from now
    /// on), so that front-ends can finish their connections. Writes still
    /// work until [`Registry::shutdown`].
    pub fn begin_shutdown(&self) {
        self.inner.stop_tx.send_replace(true);
    }

    /// A receiver that turns `true` when the registry begins to shut down.
    pub fn shutdown_signal(&self) -> tokio_watch::Receiver<bool> {
        self.inner.stop_rx.clone()
    }

    /// Stops the background tasks and the raft node. Operations fail with
    /// [`RegistryError::ShuttingDown`] afterwards.
    pub async fn shutdown(&self) -> std::result::Result<(), RaftError> {
        self.begin_shutdown();
        let tasks = std::mem::take(&mut *cache::lock(&self.inner.tasks));
        for t in tasks {
            let _ = t.await;
        }
        self.inner.checks.set_leader(false);
        self.inner.node.shutdown().await
    }

    /// The configuration the registry runs with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    fn read<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        f(&catalog(&self.inner.node))
    }

    /// Proposes a command and waits until it is durable and applied.
    async fn propose(&self, cmd: Command) -> Result<Written<muster_catalog::Outcome>> {
        self.writable()?;
        let applied = match self.inner.node.propose(cmd).await {
            Ok(applied) => applied,
            // The write that found the disk full (or the store failing).
            Err(e) => return Err(self.writable().err().unwrap_or_else(|| e.into())),
        };
        let out = applied.result?;
        Ok(Written {
            index: applied.index,
            value: out,
        })
    }

    /// Why this node is not fit to serve, for health probes: it was removed
    /// from its cluster ([`RegistryError::Removed`]), or it cannot make
    /// writes durable ([`Registry::writable`]).
    ///
    /// A removed node keeps running (and answering every request with
    /// `Removed`) rather than exit: under a supervisor that restarts what
    /// exits it would only come back, removed still.
    pub fn healthy(&self) -> Result<()> {
        self.member()?;
        self.writable()
    }

    /// [`RegistryError::Removed`] once this node was removed from its
    /// cluster: its state only ages, so it serves nothing.
    pub(crate) fn member(&self) -> Result<()> {
        if self.inner.node.removed() {
            return Err(RegistryError::Removed {
                node: self.inner.node.node_id(),
            });
        }
        Ok(())
    }

    /// Why writes cannot be made durable now, as the error every write
    /// gets while it lasts.
    pub fn writable(&self) -> Result<()> {
        match self.inner.node.failure() {
            None => Ok(()),
            Some(f) => Err(RegistryError::Unwritable {
                full: f.storage_full,
                reason: f.message,
            }),
        }
    }

    /// Waits until writes can no longer be made durable, and says why. A
    /// failed store stops raft, so this node stops leading: that change is
    /// what wakes the wait.
    pub async fn unwritable(&self) -> RegistryError {
        let mut leader = self.inner.node.leader_watch();
        loop {
            if let Err(e) = self.writable() {
                return e;
            }
            if leader.changed().await.is_err() {
                // Raft is gone: say why, if the store knows.
                return self.writable().err().unwrap_or(RegistryError::ShuttingDown);
            }
        }
    }

    /// Command checks run programs on the registry's host: only with the
    /// agent's opt-in.
    fn allow_checks(&self, checks: &[Check], field: impl Fn(usize) -> String) -> Result<()> {
        if self.inner.config.enable_command_checks {
            return Ok(());
        }
        match checks
            .iter()
            .position(|c| matches!(c.kind, CheckKind::Command { .. }))
        {
            None => Ok(()),
            Some(i) => Err(RegistryError::CommandChecksDisabled { field: field(i) }),
        }
    }

    fn instance_not_found(key: &ServiceKey, id: &str) -> RegistryError {
        RegistryError::InstanceNotFound {
            service: key.service.to_string(),
            id: id.to_string(),
        }
    }

    /// The instance an instance command yielded.
    fn written_instance(w: Written<muster_catalog::Outcome>) -> Result<Written<Arc<Instance>>> {
        match w.value.done {
            Done::Instance(i) => Ok(Written {
                index: w.index,
                value: i,
            }),
            other => Err(RegistryError::Storage(format!(
                "an instance command was applied as {other:?}"
            ))),
        }
    }

    /// How many instances a removal took away.
    fn written_removal(w: Written<muster_catalog::Outcome>) -> Result<Written<u64>> {
        match w.value.done {
            Done::Removed(n) => Ok(Written {
                index: w.index,
                value: n,
            }),
            other => Err(RegistryError::Storage(format!(
                "a removal was applied as {other:?}"
            ))),
        }
    }

    // ---- instances ------------------------------------------------------

    /// Registers or replaces instance `id` of `key`. Idempotent: the same
    /// registration again changes nothing. Registering counts as a
    /// heartbeat of the instance's lease.
    pub async fn register(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        id: &str,
        reg: Registration,
    ) -> Result<Written<Arc<Instance>>> {
        self.audited(
            caller,
            Access::Write(key),
            "register",
            false,
            || format!("{}/{}/{}", key.namespace, key.service, id),
            async {
                validate_key(key)?;
                muster_types::validate_instance_id(id)?;
                if reg.checks.len() > limits::MAX_CHECKS {
                    return Err(FieldError::invalid(
                        "checks",
                        format!("at most {} checks per instance", limits::MAX_CHECKS),
                    )
                    .into());
                }
                self.allow_checks(&reg.checks, |i| format!("checks[{i}].args"))?;
                let lease = match reg.lease {
                    LeaseChoice::Persistent => LeaseRef::None,
                    LeaseChoice::Ttl(ttl) => LeaseRef::Own {
                        id: new_lease_id(),
                        ttl_ms: ttl.as_millis() as u64,
                    },
                    LeaseChoice::Existing(l) => {
                        // Refuse an unknown lease before it costs a log entry (apply
                        // checks again, so a racing revoke still cannot attach an
                        // instance to a dead lease).
                        if self.read(|c| c.lease(l).is_none()) {
                            return Err(RegistryError::LeaseNotFound(l));
                        }
                        LeaseRef::Existing(l)
                    }
                };
                let cmd = Command::Register {
                    namespace: key.namespace.to_string(),
                    service: key.service.to_string(),
                    instance: InstanceData {
                        id: id.to_string(),
                        address: reg.address,
                        port: reg.port,
                        tags: reg.tags,
                        meta: reg.meta,
                        version: reg.version,
                        zone: reg.zone,
                        weight: reg.weight,
                        checks: reg.checks,
                    },
                    lease,
                };
                let written = Self::written_instance(self.propose(cmd).await?)?;
                if let Some(l) = written
                    .value
                    .lease
                    .as_deref()
                    .and_then(muster_types::parse_lease_id)
                {
                    self.inner.leases.refresh(l);
                }
                metrics::counter!("muster_registrations_total").increment(1);
                Ok(written)
            },
        )
        .await
    }

    /// Deregisters an instance; the value is how many instances went (1).
    pub async fn deregister(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        id: &str,
    ) -> Result<Written<u64>> {
        self.audited(
            caller,
            Access::Write(key),
            "deregister",
            false,
            || format!("{}/{}/{}", key.namespace, key.service, id),
            async {
                validate_key(key)?;
                muster_types::validate_instance_id(id)?;
                Self::written_removal(
                    self.propose(Command::Deregister {
                        namespace: key.namespace.to_string(),
                        service: key.service.to_string(),
                        id: id.to_string(),
                    })
                    .await?,
                )
            },
        )
        .await
    }

    /// One instance, with the last run and output of each of its checks
    /// (kept in memory by the check runner, not in the log).
    pub fn instance(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        id: &str,
    ) -> Result<Indexed<InstanceState>> {
        let readable = self.readable(caller, key)?;
        validate_key(key)?;
        muster_types::validate_instance_id(id)?;
        if !readable {
            return Err(Self::instance_not_found(key, id));
        }
        let (index, instance) = self.read(|c| {
            let inst = c
                .instance(key, id)
                .ok_or_else(|| Self::instance_not_found(key, id))?;
            Ok::<_, RegistryError>((c.service_index(key), inst.clone()))
        })?;
        let runs = instance
            .checks
            .iter()
            .map(|check| {
                self.inner
                    .checks
                    .runtime(key, id, &check.id)
                    .unwrap_or_default()
            })
            .collect();
        Ok(Indexed {
            index,
            value: InstanceState { instance, runs },
        })
    }

    /// Renews the lease of an instance (in memory; not a log write).
    pub async fn heartbeat(&self, caller: &Caller, key: &ServiceKey, id: &str) -> Result<Renewed> {
        self.audited(
            caller,
            Access::Write(key),
            "heartbeat",
            true,
            || format!("{}/{}/{}", key.namespace, key.service, id),
            async {
                validate_key(key)?;
                muster_types::validate_instance_id(id)?;
                let lease = self.read(|c| {
                    let inst = c
                        .instance(key, id)
                        .ok_or_else(|| Self::instance_not_found(key, id))?;
                    Ok::<_, RegistryError>(inst.lease.clone())
                })?;
                let Some(lease) = lease.as_deref().and_then(muster_types::parse_lease_id) else {
                    return Err(RegistryError::NoLease { id: id.to_string() });
                };
                self.renew(lease).await
            },
        )
        .await
    }

    /// The index of a service: the log index of its last change (0 if it
    /// never existed). Cheap; front-ends use it to serve their own caches.
    pub fn service_index(&self, caller: &Caller, key: &ServiceKey) -> Result<u64> {
        if !self.readable(caller, key)? {
            return Ok(0);
        }
        Ok(self.read(|c| c.service_index(key)))
    }

    /// Instances of a service that match `query`, computed once per service
    /// index and canonical query and shared.
    pub fn discover(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        query: &Query,
    ) -> Result<Arc<Discovery>> {
        let readable = self.readable(caller, key)?;
        validate_key(key)?;
        if !readable {
            return Ok(Arc::new(Discovery {
                index: 0,
                instances: Default::default(),
            }));
        }
        let canonical = query.cache_key();
        let c = catalog(&self.inner.node);
        let index = c.service_index(key);
        if let Some(d) = self.inner.discovery.get(key, &canonical, index) {
            return Ok(d);
        }
        let (index, instances) = c.query(key, query);
        drop(c);
        let d = Arc::new(Discovery { index, instances });
        self.inner.discovery.put(key, &canonical, d.clone());
        Ok(d)
    }

    /// Waits until the service's index exceeds `index`, `wait` passes, or
    /// the registry shuts down; returns the service's index then.
    pub async fn wait_service(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        index: u64,
        wait: Duration,
    ) -> Result<u64> {
        let readable = self.readable(caller, key)?;
        let current = || {
            if readable {
                self.read(|c| c.service_index(key))
            } else {
                0
            }
        };
        let rx = self.inner.hub.subscribe_service(key.clone());
        self.wait_for(rx, current, index, wait).await;
        Ok(current())
    }

    /// Waits until any service of `namespace` changes after `index`, `wait`
    /// passes, or the registry shuts down; returns the namespace's index.
    pub async fn wait_services(
        &self,
        caller: &Caller,
        namespace: &str,
        index: u64,
        wait: Duration,
    ) -> Result<u64> {
        self.authz(caller)?;
        let rx = self.inner.hub.subscribe_namespace(namespace.to_string());
        self.wait_for(
            rx,
            || self.read(|c| c.namespace_index(namespace)),
            index,
            wait,
        )
        .await;
        Ok(self.read(|c| c.namespace_index(namespace)))
    }

    async fn wait_for(
        &self,
        mut rx: tokio_watch::Receiver<u64>,
        current: impl Fn() -> u64,
        index: u64,
        timeout: Duration,
    ) {
        let mut shutdown = self.inner.stop_rx.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        while current() <= index && !*shutdown.borrow() {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The services of a namespace with instance counts by health.
    pub fn services(&self, caller: &Caller, namespace: &str) -> Result<ServiceList> {
        let authz = self.authz(caller)?;
        muster_types::validate_namespace(namespace)?;
        if !authz.reads_in(namespace) {
            return Ok(ServiceList {
                index: 0,
                services: Vec::new(),
            });
        }
        let mut list = self.read(|c| ServiceList {
            index: c.namespace_index(namespace),
            services: c.services(namespace),
        });
        list.services
            .retain(|s| authz.may_read(&ServiceKey::new(namespace, s.name.as_str())));
        Ok(list)
    }

    /// Watches a service through `query`: from the start (a snapshot), or
    /// resumed after `resume` (what was missed, or a snapshot when the
    /// history no longer reaches back, or [`WatchEvent::Current`]).
    pub fn watch(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        query: Query,
        resume: Option<u64>,
    ) -> Result<Watch> {
        let readable = self.readable(caller, key)?;
        validate_key(key)?;
        Ok(Watch::new(
            self.clone(),
            caller.clone(),
            readable,
            key.clone(),
            query,
            resume,
        ))
    }

    // ---- leases ---------------------------------------------------------

    async fn renew(&self, lease: u64) -> Result<Renewed> {
        match self.renew_many(&[lease]).await?.pop() {
            Some(Ok(ttl)) => Ok(Renewed { lease, ttl }),
            _ => Err(RegistryError::LeaseNotFound(lease)),
        }
    }

    /// Renews `ids` where leases live: in this node's memory if it leads,
    /// else on the leader (forwarded). One answer per id: its TTL, or
    /// `Err(())` if there is no such lease.
    async fn renew_many(&self, ids: &[u64]) -> Result<Vec<std::result::Result<Duration, ()>>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut forward = false;
        for &id in ids {
            match self.inner.leases.renew(id) {
                Ok(ttl) => out.push(Ok(ttl)),
                Err(RenewError::NotFound) => out.push(Err(())),
                Err(RenewError::NotLeader) => {
                    forward = true;
                    break;
                }
            }
        }
        if forward {
            // A node whose store failed stepped down: say why.
            self.writable()?;
            if !self.inner.node.is_clustered() {
                return Err(RegistryError::NotLeader {
                    leader: self.inner.node.info().leader,
                });
            }
            let renewed = match self.inner.node.renew_passing_on(ids) {
                Some(r) => r,
                None => self.inner.node.renew_on_leader(ids).await?,
            };
            out = renewed
                .into_iter()
                .map(|r| match r {
                    muster_raft::Renewal::Renewed { ttl_ms } => Ok(Duration::from_millis(ttl_ms)),
                    _ => Err(()),
                })
                .collect();
        }
        let failed = out.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            metrics::counter!("muster_lease_renewal_failures_total").increment(failed as u64);
        }
        Ok(out)
    }

    /// Creates a lease with `ttl`. Instances registered with it live while
    /// it is renewed.
    pub async fn create_lease(&self, caller: &Caller, ttl: Duration) -> Result<LeaseStatus> {
        self.audited(
            caller,
            Access::Lease,
            "lease-create",
            false,
            String::new,
            async {
                let ttl_ms = ttl.as_millis() as u64;
                if !(limits::MIN_TTL_MS..=limits::MAX_TTL_MS).contains(&ttl_ms) {
                    return Err(FieldError::invalid("ttl", "ttl must be between 1s and 1h").into());
                }
                let id = new_lease_id();
                let w = self.propose(Command::CreateLease { id, ttl_ms }).await?;
                // A racing revoke may already have removed it: report what was made.
                Ok(self
                    .read(|c| c.lease(id).map(lease_status))
                    .unwrap_or(LeaseStatus {
                        id,
                        ttl,
                        instances: 0,
                        index: w.index,
                    }))
            },
        )
        .await
    }

    /// One lease, with the registry's applied index.
    pub fn lease(&self, caller: &Caller, id: u64) -> Result<Indexed<LeaseStatus>> {
        self.authorize(caller, Access::Lease)?;
        self.read(|c| {
            let l = c.lease(id).ok_or(RegistryError::LeaseNotFound(id))?;
            Ok(Indexed {
                index: c.applied_index(),
                value: lease_status(l),
            })
        })
    }

    /// Renews one lease (in memory on the leader; not a log write).
    pub async fn renew_lease(&self, caller: &Caller, id: u64) -> Result<Renewed> {
        self.audited(
            caller,
            Access::Lease,
            "lease-renew",
            true,
            || muster_types::format_lease_id(id),
            async { self.renew(id).await },
        )
        .await
    }

    /// Renews many leases at once.
    pub async fn renew_leases(&self, caller: &Caller, ids: &[u64]) -> Result<RenewedMany> {
        self.audited(
            caller,
            Access::Lease,
            "lease-renew",
            true,
            || format!("{} leases", ids.len()),
            async {
                if ids.len() > limits::MAX_RENEW_BATCH {
                    return Err(FieldError::invalid(
                        "ids",
                        format!(
                            "{} ids given; at most {} per request",
                            ids.len(),
                            limits::MAX_RENEW_BATCH
                        ),
                    )
                    .into());
                }
                let mut out = RenewedMany::default();
                for (&id, r) in ids.iter().zip(self.renew_many(ids).await?) {
                    match r {
                        Ok(_) => out.renewed.push(id),
                        Err(()) => out.not_found.push(id),
                    }
                }
                Ok(out)
            },
        )
        .await
    }

    /// Revokes a lease: every instance attached to it is removed. The value
    /// is how many.
    pub async fn revoke_lease(&self, caller: &Caller, id: u64) -> Result<Written<u64>> {
        self.audited(
            caller,
            Access::Lease,
            "lease-revoke",
            false,
            || muster_types::format_lease_id(id),
            async { Self::written_removal(self.propose(Command::RevokeLease { id }).await?) },
        )
        .await
    }

    // ---- checks ---------------------------------------------------------

    /// Adds or replaces one check of an instance.
    pub async fn put_check(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        id: &str,
        check: Check,
    ) -> Result<Written<Arc<Instance>>> {
        let target = format!("{}/{}/{}/{}", key.namespace, key.service, id, check.id);
        self.audited(
            caller,
            Access::Write(key),
            "check-put",
            false,
            || target,
            async {
                validate_key(key)?;
                muster_types::validate_instance_id(id)?;
                self.allow_checks(std::slice::from_ref(&check), |_| "args".to_string())?;
                self.read(|c| {
                    let inst = c
                        .instance(key, id)
                        .ok_or_else(|| Self::instance_not_found(key, id))?;
                    if inst.checks.len() >= limits::MAX_CHECKS
                        && !inst.checks.iter().any(|c| c.id == check.id)
                    {
                        return Err(RegistryError::from(FieldError::invalid(
                            "checks",
                            format!(
                                "the instance already has the most checks allowed ({})",
                                limits::MAX_CHECKS
                            ),
                        )));
                    }
                    Ok(())
                })?;
                Self::written_instance(
                    self.propose(Command::PutCheck {
                        namespace: key.namespace.to_string(),
                        service: key.service.to_string(),
                        id: id.to_string(),
                        check,
                    })
                    .await?,
                )
            },
        )
        .await
    }

    /// Removes one check of an instance.
    pub async fn remove_check(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        id: &str,
        check: &str,
    ) -> Result<Written<Arc<Instance>>> {
        self.audited(
            caller,
            Access::Write(key),
            "check-remove",
            false,
            || format!("{}/{}/{}/{check}", key.namespace, key.service, id),
            async {
                validate_key(key)?;
                muster_types::validate_instance_id(id)?;
                Self::written_instance(
                    self.propose(Command::RemoveCheck {
                        namespace: key.namespace.to_string(),
                        service: key.service.to_string(),
                        id: id.to_string(),
                        check: check.to_string(),
                    })
                    .await?,
                )
            },
        )
        .await
    }

    /// Reports the status of a TTL check, answered once the status is
    /// committed: a read after it sees the status. A report that confirms
    /// the current status writes nothing to the log. A report sent right
    /// after the registration that added the check is accepted.
    pub async fn report_check(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        id: &str,
        check: &str,
        status: Health,
        output: String,
    ) -> Result<()> {
        self.audited(
            caller,
            Access::Write(key),
            "check-report",
            true,
            || format!("{}/{}/{}/{check}", key.namespace, key.service, id),
            async {
                validate_key(key)?;
                muster_types::validate_instance_id(id)?;
                let output = muster_types::truncate_output(&output);
                let local = self
                    .inner
                    .checks
                    .report(key, id, check, status, output.clone())
                    .await;
                let result = match local {
                    // A follower: the leader runs the checks.
                    Err(ReportError::NotLeader) if self.inner.node.is_clustered() => {
                        self.writable()?;
                        let report = muster_raft::CheckReport {
                            namespace: key.namespace.to_string(),
                            service: key.service.to_string(),
                            id: id.to_string(),
                            check: check.to_string(),
                            status,
                            output,
                        };
                        match self.inner.node.report_on_leader(report).await? {
                            muster_raft::ReportAnswer::Done { .. } => Ok(()),
                            muster_raft::ReportAnswer::Missing => Err(ReportError::Missing),
                            muster_raft::ReportAnswer::NotTtl => Err(ReportError::NotTtl),
                            muster_raft::ReportAnswer::NotLeader => Err(ReportError::NotLeader),
                            muster_raft::ReportAnswer::Failed(m) => {
                                Err(ReportError::Unwritten(ProposeError::Fatal(m)))
                            }
                        }
                    }
                    r => r.map(|_| ()),
                };
                match result {
                    Ok(()) => Ok(()),
                    Err(ReportError::Missing) => Err(RegistryError::CheckNotFound {
                        id: id.to_string(),
                        check: check.to_string(),
                    }),
                    Err(ReportError::NotTtl) => Err(RegistryError::NotTtlCheck {
                        check: check.to_string(),
                    }),
                    Err(ReportError::NotLeader) => Err(RegistryError::NotLeader {
                        leader: self.inner.node.info().leader,
                    }),
                    // The write that found the disk full (or the store failing).
                    Err(ReportError::Unwritten(e)) => {
                        Err(self.writable().err().unwrap_or_else(|| e.into()))
                    }
                }
            },
        )
        .await
    }

    /// Turns maintenance on (with a reason) or off (`None`). In maintenance
    /// an instance is critical (out of passing answers) but stays
    /// registered.
    pub async fn maintenance(
        &self,
        caller: &Caller,
        key: &ServiceKey,
        id: &str,
        reason: Option<String>,
    ) -> Result<Written<Arc<Instance>>> {
        self.audited(
            caller,
            Access::Write(key),
            "maintenance",
            false,
            || format!("{}/{}/{}", key.namespace, key.service, id),
            async {
                validate_key(key)?;
                muster_types::validate_instance_id(id)?;
                if let Some(r) = &reason
                    && (r.is_empty()
                        || r.len() > limits::MAX_META_VALUE_LEN
                        || r.chars().any(char::is_control))
                {
                    return Err(FieldError::invalid(
                        "reason",
                        format!(
                            "reason must be 1 to {} printable characters",
                            limits::MAX_META_VALUE_LEN
                        ),
                    )
                    .into());
                }
                Self::written_instance(
                    self.propose(Command::Maintenance {
                        namespace: key.namespace.to_string(),
                        service: key.service.to_string(),
                        id: id.to_string(),
                        reason,
                    })
                    .await?,
                )
            },
        )
        .await
    }

    // ---- operations -----------------------------------------------------

    /// This node's view of the cluster.
    ///
    /// Open to every caller with a valid token, anonymous included (as
    /// Consul's status endpoints and etcd's member list): load balancers,
    /// probes and tools find the leader without a secret. Changing the
    /// membership needs the operator right.
    pub fn cluster(&self, caller: &Caller) -> Result<ClusterStatus> {
        self.authz(caller)?;
        Ok(self.status())
    }

    /// This node's view of the cluster, ungated.
    fn status(&self) -> ClusterStatus {
        let i = self.inner.node.info();
        let (preserved_leases, lapsed_leases) = self.read(|c| c.preserved_lease_count());
        ClusterStatus {
            node_id: i.node_id,
            leader: i.leader,
            members: i.members,
            commit_index: i.commit_index,
            applied_index: i.applied_index,
            self_preservation: self.inner.leases.preserving(),
            preserved_leases,
            lapsed_leases,
            nodes: i.nodes,
        }
    }

    /// Waits until a read of `key` on this node is linearizable (`?consistent`):
    /// the leader confirmed with a quorum and this node applied its index.
    pub async fn consistent(&self, caller: &Caller, key: &ServiceKey) -> Result<()> {
        self.authz(caller)?;
        let _ = key;
        self.inner.node.read_barrier().await?;
        Ok(())
    }

    /// [`Registry::consistent`] for the list of a namespace's services.
    pub async fn consistent_services(&self, caller: &Caller, namespace: &str) -> Result<()> {
        self.authz(caller)?;
        muster_types::validate_namespace(namespace)?;
        self.inner.node.read_barrier().await?;
        Ok(())
    }

    /// Changes the cluster's membership (add, remove, move leadership) on
    /// the leader, forwarded from any node; answered once made.
    ///
    /// Answers this node's view of the cluster after the change. A node
    /// asked to remove itself refuses every later call (`Removed`), but
    /// the call that removed it is answered, with its last view.
    pub async fn change_members(
        &self,
        caller: &Caller,
        change: MemberChange,
    ) -> Result<ClusterStatus> {
        let removes_self =
            matches!(change, MemberChange::Remove { id } if id == self.inner.node.node_id());
        let target = format!("{change:?}");
        self.audited(
            caller,
            Access::Operator,
            "cluster-members",
            false,
            || target,
            async {
                self.inner
                    .node
                    .change_members(change)
                    .await
                    .map_err(|e| match e {
                        MemberError::Refused(m) => RegistryError::MembershipRefused(m),
                        MemberError::NotLeader { leader } => RegistryError::NotLeader { leader },
                        MemberError::Unavailable(m) => RegistryError::MembershipUnavailable(m),
                    })
            },
        )
        .await?;
        if removes_self {
            return Ok(self.status());
        }
        self.cluster(caller)
    }

    /// A consistent backup of the whole registry, streamed: every write
    /// acknowledged before the call is in it (read through the leader's
    /// read-index), and it reflects exactly the index in its header.
    pub async fn snapshot_save(&self, caller: &Caller) -> Result<BackupStream> {
        self.authorize(caller, Access::Operator)?;
        Ok(self.inner.node.backup().await?)
    }

    /// Replaces the whole registry's state, on every node, with a backup
    /// read from `input`: checked whole first (a corrupt or truncated file
    /// changes nothing), then staged through the log in chunks and swapped
    /// in at once. Restored leases start a fresh full TTL.
    pub async fn snapshot_restore(
        &self,
        caller: &Caller,
        input: impl tokio::io::AsyncRead + Unpin + Send,
    ) -> Result<RestoreReport> {
        self.audited(
            caller,
            Access::Operator,
            "snapshot-restore",
            false,
            String::new,
            async {
                self.inner.node.restore(input).await.map_err(|e| match e {
                    muster_raft::RestoreError::Invalid(m) => RegistryError::InvalidBackup(m),
                    muster_raft::RestoreError::Conflict(m) => RegistryError::RestoreConflict(m),
                    muster_raft::RestoreError::Io(m) => RegistryError::RestoreIo(m),
                    muster_raft::RestoreError::Propose(e) => e.into(),
                })
            },
        )
        .await
    }

    /// Sets the registry's gauges (instances, leases, applied index,
    /// self-preservation) to their current values; a metrics front-end calls
    /// it before each scrape.
    pub fn refresh_gauges(&self) {
        self.read(|c| {
            metrics::gauge!("muster_instances").set(c.instance_count() as f64);
            metrics::gauge!("muster_leases").set(c.lease_count() as f64);
            metrics::gauge!("muster_applied_index").set(c.applied_index() as f64);
            let (held, lapsed) = c.preserved_lease_count();
            metrics::gauge!("muster_preserved_leases", "state" => "held").set(held as f64);
            metrics::gauge!("muster_preserved_leases", "state" => "lapsed").set(lapsed as f64);
        });
        let preserving = self.inner.leases.preserving();
        metrics::gauge!("muster_self_preservation").set(if preserving { 1.0 } else { 0.0 });
        let info = self.inner.node.info();
        metrics::counter!("muster_raft_snapshots_installed_total")
            .absolute(info.snapshots_installed);
        metrics::counter!("muster_raft_renewals_passed_on_total").absolute(info.renewals_passed_on);
        let (renewals, calls) = info.forwarded_renewals;
        metrics::counter!("muster_raft_forwarded_renewals_total").absolute(renewals);
        metrics::counter!("muster_raft_forwarded_renewal_calls_total").absolute(calls);
        let (writes, calls) = info.forwarded_writes;
        metrics::counter!("muster_raft_forwarded_writes_total").absolute(writes);
        metrics::counter!("muster_raft_forwarded_write_calls_total").absolute(calls);
        metrics::counter!("muster_cluster_tls_handshake_failures_total")
            .absolute(info.cluster_tls_handshake_failures);
    }

    /// Introspection for tests and diagnostics: how many watchers and
    /// blocking queries wait on a service.
    pub fn service_waiters(&self, key: &ServiceKey) -> usize {
        self.inner.hub.service_waiters(key)
    }

    /// Introspection for tests and diagnostics: how many health checks run
    /// on this node.
    pub fn running_checks(&self) -> usize {
        self.inner.checks.len()
    }

    /// A receiver of whether self-preservation holds lease expiry.
    pub fn self_preservation(&self) -> tokio_watch::Receiver<bool> {
        self.inner.leases.preserving_watch()
    }
}

fn lease_status(l: &muster_catalog::Lease) -> LeaseStatus {
    LeaseStatus {
        id: l.id,
        ttl: Duration::from_millis(l.ttl_ms),
        instances: l.instances.len() as u64,
        index: l.index,
    }
}

/// Service key names are DNS labels.
fn validate_key(key: &ServiceKey) -> Result<()> {
    muster_types::validate_namespace(&key.namespace)?;
    muster_types::validate_service_name(&key.service)?;
    Ok(())
}

/// Drains reconcile requests. A batch of writes queues many at once, mostly
/// for the same services: merge them, then reconcile each once.
async fn reconcile_checks(
    checks: Arc<CheckRunner>,
    mut rx: mpsc::UnboundedReceiver<Reconcile>,
    mut stop: tokio_watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let mut all = false;
        let mut keys: std::collections::HashMap<ServiceKey, bool> = Default::default();
        let mut next = Some(first);
        while let Some(r) = next {
            match r {
                None => all = true,
                Some((key, may)) => *keys.entry(key).or_default() |= may,
            }
            next = rx.try_recv().ok();
        }
        if all {
            checks.reconcile_all();
        } else {
            for (key, may) in keys {
                checks.reconcile_if_needed(&key, may);
            }
        }
    }
}

/// Calls followers forward to the leader: renewals, answered from its
/// lease table, and TTL reports, made to its check runner.
struct LeaderCalls {
    leases: Arc<LeaseManager>,
    checks: Arc<CheckRunner>,
}

impl muster_raft::LeaderService for LeaderCalls {
    fn renew(&self, ids: &[u64]) -> Vec<muster_raft::Renewal> {
        ids.iter()
            .map(|&id| match self.leases.renew(id) {
                Ok(ttl) => muster_raft::Renewal::Renewed {
                    ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                },
                Err(RenewError::NotFound) => muster_raft::Renewal::NotFound,
                Err(RenewError::NotLeader) => muster_raft::Renewal::NotLeader,
            })
            .collect()
    }

    fn report(
        &self,
        r: muster_raft::CheckReport,
    ) -> std::pin::Pin<Box<dyn Future<Output = muster_raft::ReportAnswer> + Send + '_>> {
        use muster_raft::ReportAnswer;
        Box::pin(async move {
            let key = ServiceKey::new(r.namespace.as_str(), r.service.as_str());
            match self
                .checks
                .report(&key, &r.id, &r.check, r.status, r.output)
                .await
            {
                Ok(index) => ReportAnswer::Done { index },
                Err(ReportError::Missing) => ReportAnswer::Missing,
                Err(ReportError::NotTtl) => ReportAnswer::NotTtl,
                Err(ReportError::NotLeader)
                | Err(ReportError::Unwritten(ProposeError::NotLeader { .. })) => {
                    ReportAnswer::NotLeader
                }
                Err(ReportError::Unwritten(e)) => ReportAnswer::Failed(e.to_string()),
            }
        })
    }
}

/// One change of leadership: a new leader gives every lease a fresh full
/// TTL and takes over the checks; a node that steps down drops both.
fn follow_turn(node: &Node, leases: &LeaseManager, checks: &Arc<CheckRunner>, is_leader: bool) {
    if is_leader {
        leases.become_leader(&catalog(node));
    } else {
        leases.step_down();
    }
    checks.set_leader(is_leader);
}

/// Lease timers and checks follow leadership: a new leader gives every
/// lease a fresh full TTL and takes over the checks.
async fn follow_leadership(
    node: Node,
    leases: Arc<LeaseManager>,
    checks: Arc<CheckRunner>,
    mut stop: tokio_watch::Receiver<bool>,
    initial: bool,
) {
    let mut leader = node.leader_watch();
    // The first turn runs before `open` returns (see there), so no write can
    // come between the node being ready and its lease timers starting:
    // leases created by the first writes are timed as new ones, not taken
    // over as leases of a previous leader.
    let mut done = Some(initial);
    loop {
        let is_leader = *leader.borrow_and_update();
        if done.take() != Some(is_leader) {
            follow_turn(&node, &leases, &checks, is_leader);
        }
        tokio::select! {
            r = leader.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}
