//! The [`Node`]: a running raft member with its catalog.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use muster_catalog::{Catalog, Command};
use muster_store::LogStore;
use openraft::{BasicNode, Config, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::batcher::{self, Proposal};
use crate::cluster::client::{Http, Network};
use crate::cluster::{self, ClusterConfig, Contacts, Shared};
use crate::codec;
use crate::log_store::{
    KEY_COMMITTED, KEY_LAST_PURGED, KEY_SNAPSHOT, KEY_VOTE, RaftLog, read_meta,
};
use crate::snapshot_file::SnapshotDir;
use crate::state_machine::StateMachine;
use crate::types::Raft;
use crate::{
    Applied, ApplyObserver, Failure, LeaderService, Leadership, MemberInfo, NodeInfo, ProposeError,
    RaftConfig, RaftError, Renewal, Role, UNREACHABLE_AFTER,
};

/// The file name of the store inside the data directory.
const STORE_FILE: &str = "raft.redb";
/// At most this many already-snapshotted logs are kept (for followers that
/// lag a little, once there are followers).
const MAX_LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1000;
/// How long shutdown waits for the batches being written to be answered
/// before it stops raft under them.
const BATCHES_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running raft node and the catalog it applies to.
///
/// Cheap to clone; all clones drive the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    /// The data directory (restores spool their upload there).
    data_dir: std::path::PathBuf,
    raft: Raft,
    catalog: Arc<RwLock<Catalog>>,
    store: LogStore,
    committed: Arc<AtomicU64>,
    /// Snapshot pacing counts, and how many snapshots were installed.
    pace: Arc<crate::state_machine::SnapshotPace>,
    leader_rx: watch::Receiver<bool>,
    leadership_rx: watch::Receiver<Leadership>,
    /// Proposals for the batcher.
    proposals: mpsc::Sender<Proposal>,
    /// Tells the batcher to stop.
    stop_batcher: watch::Sender<bool>,
    /// The batcher task, taken by shutdown.
    batcher: std::sync::Mutex<Option<JoinHandle<()>>>,
    shutting_down: AtomicBool,
    /// Held during shutdown; `true` once it completed.
    stopped: tokio::sync::Mutex<bool>,
    /// Whether this node applied its own retirement (now or in an earlier
    /// run: kept in the store under [`KEY_RETIRED`]).
    retired: Arc<AtomicBool>,
    /// Notes this node's retirement (its openraft handle taken at stop).
    marker: Arc<RetirementMarker>,
    /// Cluster RPC and forwarding, on a member of a cluster of several.
    cluster: Option<Arc<Shared>>,
    /// Tells the cluster listener and the address learner to stop.
    stop_cluster: watch::Sender<bool>,
    /// The cluster listener's and the address learner's tasks.
    cluster_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Metadata key set once this node applied its own retirement: a removed
/// node started again may not re-apply it (it is told no commit index any
/// more), so the fact is kept apart from the log.
const KEY_RETIRED: &str = "raft/retired";

/// Passes what is applied on to the observer, noting first whether it is
/// this node's own retirement ([`Node::removed`]).
struct RetirementMarker {
    node_id: u64,
    store: LogStore,
    retired: Arc<AtomicBool>,
    inner: Arc<dyn ApplyObserver>,
    /// Set while openraft runs (taken at shutdown: openraft holds this
    /// marker, so keeping it would make a cycle): a removed node stands for
    /// no more elections (one removed while it was down would, about once
    /// a second, for ever).
    raft: std::sync::Mutex<Option<Raft>>,
}

impl RetirementMarker {
    fn mark(&self, index: u64) {
        if self.retired.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(raft) = &*self.raft.lock().unwrap_or_else(PoisonError::into_inner) {
            raft.runtime_config().elect(false);
        }
        self.inner.retired(index);
        let value = self.node_id.to_be_bytes().to_vec();
        self.store.put_meta(
            KEY_RETIRED,
            Some(value),
            crate::log_store::log_failure("that this node was removed"),
        );
    }
}

impl ApplyObserver for RetirementMarker {
    fn applied(&self, index: u64, result: &muster_catalog::ApplyResult) {
        if let Ok(out) = result
            && matches!(out.done, muster_catalog::Done::NodeRetired(id) if id == self.node_id)
        {
            self.mark(index);
        }
        self.inner.applied(index, result);
    }

    fn restored(&self, catalog: &Catalog) {
        if catalog.retired_nodes().contains(&self.node_id) {
            self.mark(catalog.applied_index());
        }
        self.inner.restored(catalog);
    }
}

/// How long shutdown waits for the cluster listener to finish the requests
/// it is serving.
const CLUSTER_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The openraft configuration for a node: fast elections (a single voter
/// elects itself within ~150–300 ms of start) and the snapshot policy.
fn raft_config(cfg: &RaftConfig, clustered: bool) -> Result<Config, RaftError> {
    if cfg.snapshot_logs == 0 {
        return Err(RaftError::Config("snapshot_logs must be at least 1".into()));
    }
    if cfg.snapshot_commands == 0 {
        return Err(RaftError::Config(
            "snapshot_commands must be at least 1".into(),
        ));
    }
    let single = Config {
        cluster_name: "muster".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: cfg.snapshot_logs.min(MAX_LOGS_KEPT_AFTER_SNAPSHOT),
        ..Config::default()
    };
    let config = if clustered {
        // Between nodes, an append-entries must arrive and be fsynced
        // within one heartbeat interval (openraft's timeout for it), and a
        // follower must not start an election because a busy machine was
        // slow for a moment. A follower that knew a leader stands only
        // after openraft's leader lease (`election_timeout_max`) plus its
        // own election timeout without a heartbeat: 1.2-1.6 s here (etcd
        // stands after 1 s by default), so a failed leader is replaced in
        // about 1.5 s. 600-1200 ms made that 1.8-2.4 s (BENCHMARKS.md).
        Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            // A chunk, and after the last one the install (decoding the
            // whole catalog), must finish within this.
            install_snapshot_timeout: 30_000,
            snapshot_max_chunk_size: 1024 * 1024,
            // Entries are batches of up to ~1 MiB each.
            max_payload_entries: 32,
            ..single
        }
    } else {
        single
    };
    config
        .validate()
        .map_err(|e| RaftError::Config(e.to_string()))
}

/// Whether this node leads, has applied every log it had on disk at open
/// (`disk_last`) and an entry of its own term, so its catalog is complete.
///
/// A single voter restarting with a committed vote of its own resumes its
/// old term without a new blank entry; then the last entry on disk is of
/// its own term, and `disk_last` is what matters.
fn is_ready_leader(m: &RaftMetrics<u64, BasicNode>, node_id: u64, disk_last: u64) -> bool {
    m.running_state.is_ok()
        && m.state == ServerState::Leader
        && m.current_leader == Some(node_id)
        && m.vote.is_committed()
        && m.last_applied.as_ref().is_some_and(|applied| {
            applied.index >= disk_last && applied.leader_id == *m.vote.leader_id()
        })
}

/// A failed wait on openraft's metrics: stopped, or not there in time
/// (`state` says what was awaited).
fn wait_error(e: openraft::metrics::WaitError, state: String) -> RaftError {
    match e {
        openraft::metrics::WaitError::ShuttingDown => RaftError::Stopped,
        openraft::metrics::WaitError::Timeout(waited, _) => RaftError::NotReady { waited, state },
    }
}

fn describe(m: &RaftMetrics<u64, BasicNode>) -> String {
    format!(
        "state {:?}, leader {:?}, vote {}, last log {:?}, last applied {:?}, running {:?}",
        m.state,
        m.current_leader,
        m.vote,
        m.last_log_index,
        m.last_applied.map(|l| l.index),
        m.running_state,
    )
}

/// Every member as `m` (this node's metrics) shows it.
fn members(m: &RaftMetrics<u64, BasicNode>, c: &Shared) -> Vec<MemberInfo> {
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let http = c.http_addrs();
    let me = c.node_id;
    membership
        .nodes()
        .map(|(id, node)| {
            let role = if m.current_leader == Some(*id) {
                Role::Leader
            } else if voters.contains(id) {
                Role::Follower
            } else {
                Role::Learner
            };
            let match_index = if *id == me && m.state == ServerState::Leader {
                m.last_log_index
            } else {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index)
            };
            let last_contact_ms = if *id == me {
                None
            } else {
                c.contacts.since_ms(*id)
            };
            let knows = m.state == ServerState::Leader || m.current_leader == Some(*id);
            let reachable = if *id == me {
                Some(true)
            } else if knows {
                Some(last_contact_ms.is_some_and(|ms| ms < UNREACHABLE_AFTER.as_millis() as u64))
            } else {
                None
            };
            MemberInfo {
                id: *id,
                role,
                reachable,
                cluster_addr: node.addr.clone(),
                http_addr: http.get(id).cloned(),
                match_index,
                last_contact_ms,
            }
        })
        .collect()
}

/// Keeps `tx` equal to "this node is a ready leader", and `leadership`
/// to its term and leader, until raft stops.
fn spawn_leader_watch(
    raft: &Raft,
    node_id: u64,
    disk_last: u64,
    tx: watch::Sender<bool>,
    leadership: watch::Sender<Leadership>,
) {
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        loop {
            // The borrow ends before the await below.
            let (leader, now) = {
                let m = metrics.borrow_and_update();
                let now = Leadership {
                    term: m.current_term,
                    leader: m.current_leader,
                };
                (is_ready_leader(&m, node_id, disk_last), now)
            };
            tx.send_if_modified(|v| {
                let changed = *v != leader;
                *v = leader;
                changed
            });
            leadership.send_if_modified(|v| {
                let changed = *v != now;
                *v = now;
                changed
            });
            if metrics.changed().await.is_err() {
                break;
            }
        }
        tx.send_replace(false);
    });
}

impl Node {
    /// Opens the store under `data_dir`, loads the last snapshot into the
    /// catalog, starts openraft (which re-applies the committed log after the
    /// snapshot). On a fresh data dir initialises a single-voter cluster
    /// `{node_id}`, exactly once; on restart never again.
    pub async fn open(
        cfg: RaftConfig,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<Node, RaftError> {
        Node::start(cfg, observer, None).await
    }

    /// Opens the store as [`Node::open`] does, as a member of the cluster
    /// `cluster.peers`, serving cluster RPC on `listener` (bound to this
    /// node's cluster address). On a fresh data dir initialises the cluster
    /// with every peer as a voter (see [`crate::cluster`] for why every
    /// node may, and does); on restart never again.
    ///
    /// Returns without waiting for the cluster to form: writes wait for a
    /// leader (bounded), reads serve what this node applied.
    pub async fn open_cluster(
        cfg: RaftConfig,
        observer: Arc<dyn ApplyObserver>,
        cluster: ClusterConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<Node, RaftError> {
        cluster.validate(cfg.node_id).map_err(RaftError::Config)?;
        Node::start(cfg, observer, Some((cluster, listener))).await
    }

    async fn start(
        cfg: RaftConfig,
        observer: Arc<dyn ApplyObserver>,
        cluster: Option<(ClusterConfig, tokio::net::TcpListener)>,
    ) -> Result<Node, RaftError> {
        let config = raft_config(&cfg, cluster.is_some())?;
        let path = cfg.data_dir.join(STORE_FILE);
        let store = tokio::task::spawn_blocking(move || LogStore::open(&path))
            .await
            .map_err(|e| RaftError::Fatal(format!("opening the store panicked: {e}")))??;

        check_formats(&store)?;
        let snapshot_dir = SnapshotDir::in_dir(&cfg.data_dir);
        // Before the state machine opens: it removes data files that no
        // pointer names, which a missing pointer would make of the snapshot.
        check_log_reaches_snapshot(&store, &snapshot_dir, cfg.force_recover_from_snapshot)?;
        let fresh = store.is_empty()
            && !snapshot_dir.exists()
            && [KEY_VOTE, KEY_COMMITTED, KEY_LAST_PURGED, KEY_SNAPSHOT]
                .iter()
                .all(|k| store.get_meta(k).is_none());

        let disk_last = store.last_index().unwrap_or(0);

        let retired = Arc::new(AtomicBool::new(store.get_meta(KEY_RETIRED).is_some()));
        if retired.load(Ordering::Relaxed) {
            tracing::error!(
                node_id = cfg.node_id,
                "this node was removed from its cluster: it answers no requests; stop it"
            );
        }
        let marker = Arc::new(RetirementMarker {
            node_id: cfg.node_id,
            store: store.clone(),
            retired: Arc::clone(&retired),
            inner: observer,
            raft: std::sync::Mutex::new(None),
        });
        let catalog = Arc::new(RwLock::new(Catalog::new()));
        let on_removed: crate::cluster::client::OnRemoved = {
            let (marker, catalog) = (Arc::clone(&marker), Arc::clone(&catalog));
            Arc::new(move |told| {
                if !marker.retired.load(Ordering::Relaxed) {
                    tracing::error!(
                        %told,
                        "a member says this node was removed from the cluster while it was away"
                    );
                }
                let applied = match catalog.read() {
                    Ok(c) => c.applied_index(),
                    Err(poisoned) => poisoned.into_inner().applied_index(),
                };
                marker.mark(applied);
            })
        };
        let observer: Arc<dyn ApplyObserver> = Arc::clone(&marker) as _;
        let sm = {
            let catalog = Arc::clone(&catalog);
            tokio::task::spawn_blocking(move || StateMachine::open(snapshot_dir, catalog, observer))
                .await
                .map_err(|e| RaftError::Fatal(format!("loading the snapshot panicked: {e}")))?
                .map_err(|e| RaftError::Corrupt(e.to_string()))?
        };
        let pace = sm.pace(cfg.snapshot_commands);
        let applied = sm.applied_watch();
        let committed = Arc::new(AtomicU64::new(0));
        let encoded = crate::log_store::EncodedEntries::default();
        let log = RaftLog::new(store.clone(), Arc::clone(&committed), encoded.clone());

        let http = match &cluster {
            Some((c, _)) => Some(
                Http::new(
                    cfg.node_id,
                    c.link_faults.clone(),
                    c.tls.clone(),
                    Arc::clone(&retired),
                    on_removed,
                )
                .map_err(RaftError::Config)?,
            ),
            None => None,
        };
        let contacts = Contacts::default();
        let network = Network {
            node_id: cfg.node_id,
            http: http.clone(),
            contacts: contacts.clone(),
            encoded: encoded.clone(),
        };
        let raft = match Raft::new(cfg.node_id, Arc::new(config), network, log, sm).await {
            Ok(raft) => raft,
            Err(e) => {
                store.close();
                return Err(RaftError::Fatal(format!("starting raft: {e}")));
            }
        };
        // After the set, a `mark` sees openraft; before it, the flag says.
        *marker.raft.lock().unwrap_or_else(PoisonError::into_inner) = Some(raft.clone());
        if retired.load(Ordering::SeqCst) {
            raft.runtime_config().elect(false);
        }
        let joining = cluster.as_ref().is_some_and(|(c, _)| c.join);
        if fresh && joining {
            tracing::info!(
                node_id = cfg.node_id,
                "fresh data dir: waiting to be added to a cluster (muster cluster join)"
            );
        }
        if fresh && !joining {
            let initialized = match &cluster {
                None => {
                    tracing::info!(
                        node_id = cfg.node_id,
                        "fresh data dir: initialising a single-node cluster"
                    );
                    raft.initialize(BTreeSet::from([cfg.node_id])).await
                }
                Some((c, _)) => {
                    tracing::info!(
                        node_id = cfg.node_id,
                        peers = ?c.peers,
                        "fresh data dir: initialising the cluster of the static peers"
                    );
                    raft.initialize(c.members()).await
                }
            };
            if let Err(e) = initialized {
                let _ = raft.shutdown().await;
                store.close();
                return Err(RaftError::Fatal(format!("initialising the cluster: {e}")));
            }
        }

        let (leader_tx, leader_rx) = watch::channel(false);
        let (leadership_tx, leadership_rx) = watch::channel(Leadership::default());
        spawn_leader_watch(&raft, cfg.node_id, disk_last, leader_tx, leadership_tx);
        let (proposals, proposals_rx) = mpsc::channel(batcher::QUEUE_CAPACITY);
        let (stop_batcher, stop_rx) = watch::channel(false);
        let batcher = tokio::spawn(batcher::run(
            raft.clone(),
            Arc::clone(&pace),
            proposals_rx,
            stop_rx,
        ));
        let (stop_cluster, stop_cluster_rx) = watch::channel(false);
        let mut cluster_tasks = Vec::new();
        let shared = cluster.zip(http).map(|((c, listener), http)| {
            let shared = Arc::new(Shared {
                node_id: cfg.node_id,
                raft: raft.clone(),
                proposals: proposals.clone(),
                http_addr: c.http_addr.clone(),
                cluster_addr: c.peers.get(&cfg.node_id).cloned().unwrap_or_default(),
                http: http.clone(),
                tls_handshake_failures: Default::default(),
                leader_service: Default::default(),
                http_addrs: std::sync::RwLock::new([(cfg.node_id, c.http_addr)].into()),
                contacts,
                catalog: Arc::clone(&catalog),
                transfer_gate: tokio::sync::RwLock::new(()),
                renewals: crate::cluster::coalesce::Coalescer::start(http.clone()),
                forwards: crate::cluster::coalesce::Coalescer::start(http.clone()),
                pass_on: Default::default(),
                applied: applied.clone(),
                votes: store.clone(),
                encoded: encoded.clone(),
                voting: tokio::sync::Mutex::new(()),
                retired: Arc::clone(&retired),
            });
            let mut stop = stop_cluster_rx.clone();
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let serving = Arc::clone(&shared);
            let tls = c.tls.clone();
            cluster_tasks.push(tokio::spawn(async move {
                if let Err(e) = cluster::server::serve(listener, serving, tls, shutdown).await {
                    tracing::error!(error = %e, "the cluster listener failed");
                }
            }));
            cluster_tasks.push(tokio::spawn(cluster::pass_on_renewals(
                Arc::clone(&shared),
                stop_cluster_rx.clone(),
            )));
            cluster_tasks.push(tokio::spawn(cluster::learn_http_addrs(
                Arc::clone(&shared),
                stop_cluster_rx.clone(),
            )));
            shared
        });

        Ok(Node {
            inner: Arc::new(Inner {
                retired,
                marker,
                node_id: cfg.node_id,
                data_dir: cfg.data_dir.clone(),
                raft,
                catalog,
                store,
                committed,
                pace,
                leader_rx,
                leadership_rx,
                proposals,
                stop_batcher,
                batcher: std::sync::Mutex::new(Some(batcher)),
                shutting_down: AtomicBool::new(false),
                stopped: tokio::sync::Mutex::new(false),
                cluster: shared,
                stop_cluster,
                cluster_tasks: std::sync::Mutex::new(cluster_tasks),
            }),
        })
    }

    /// Waits until this node is leader (a single node elects itself) and has
    /// applied every log it had on disk. A member of a cluster of several
    /// does not wait: it may not lead, and the cluster may still be forming.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), RaftError> {
        if self.inner.cluster.is_some() {
            return Ok(());
        }
        let mut rx = self.inner.leader_rx.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|leader| *leader)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => {
                let state = describe(&self.inner.raft.metrics().borrow());
                Err(RaftError::NotReady {
                    waited: timeout,
                    state,
                })
            }
        }
    }

    /// Appends a command, waits until it is committed (fsynced) and applied,
    /// and returns its log index and the catalog's result.
    ///
    /// Concurrent proposals are batched into one log entry (stamped with the
    /// leader's wall clock, in ms, when the batch is formed), so they may
    /// share an index; each gets its own result. A proposal made alone is
    /// written at once. An error that hits the entry (not leader, shutting
    /// down, fatal) is returned to every proposal of its batch.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ProposeError> {
        if self.inner.shutting_down.load(Ordering::Acquire) {
            return Err(ProposeError::ShuttingDown);
        }
        if let Some(cluster) = &self.inner.cluster {
            return cluster.propose(cmd).await;
        }
        let (proposal, reply) = Proposal::new(cmd);
        self.inner
            .proposals
            .send(proposal)
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        // A dropped reply means the batcher is gone: the node is stopping.
        reply.await.unwrap_or(Err(ProposeError::ShuttingDown))
    }

    /// Whether this node is a member of a cluster of several (serves
    /// cluster RPC and forwards writes).
    pub fn is_clustered(&self) -> bool {
        self.inner.cluster.is_some()
    }

    /// Sets the registry's side of calls forwarded to the leader (lease
    /// renewals). Once; later calls are ignored.
    pub fn set_leader_service(&self, service: Arc<dyn LeaderService>) {
        if let Some(c) = &self.inner.cluster {
            let _ = c.leader_service.set(service);
        }
    }

    /// Renews leases on the leader: locally if this node leads (through
    /// the [`LeaderService`]), else forwarded; waits (bounded) for a
    /// leader. Only on a clustered node; a single node renews locally.
    pub async fn renew_on_leader(&self, ids: &[u64]) -> Result<Vec<Renewal>, ProposeError> {
        match &self.inner.cluster {
            Some(c) => c.renew(ids).await,
            None => Err(ProposeError::NotLeader {
                leader: Some(self.inner.node_id),
            }),
        }
    }

    /// Renews `ids` on a follower without a call to the leader, when it
    /// may (see the cluster's `renew_passing_on`): `None` when they must go
    /// to the leader ([`Node::renew_on_leader`]).
    pub fn renew_passing_on(&self, ids: &[u64]) -> Option<Vec<Renewal>> {
        self.inner.cluster.as_ref()?.renew_passing_on(ids)
    }

    /// Waits until this node can answer a linearizable read: the leader
    /// confirmed with a quorum that it leads (read-index, asked of it from
    /// a follower) and this node applied the index it named, which it
    /// returns. `NotLeader` when no leader with a quorum answers in time.
    pub async fn read_barrier(&self) -> Result<u64, ProposeError> {
        match &self.inner.cluster {
            Some(c) => c.read_index().await,
            None => cluster::read_index_of(&self.inner.raft).await,
        }
    }

    /// Changes the cluster's membership on the leader (forwarded from a
    /// follower); waits (bounded) for a leader. Refused on a node that is
    /// not a member of a cluster of several.
    pub async fn change_members(
        &self,
        change: crate::MemberChange,
    ) -> Result<(), crate::MemberError> {
        match &self.inner.cluster {
            Some(c) => c.change_members(change).await,
            None => Err(crate::MemberError::Refused(
                "this node is a cluster of one: membership changes need an agent \
                 started with --peers or --join"
                    .into(),
            )),
        }
    }

    /// Records a TTL check report on the leader (it runs the checks):
    /// forwarded from a follower, answered once this node applied the
    /// status; waits (bounded) for a leader. Only on a clustered node.
    pub async fn report_on_leader(
        &self,
        report: crate::CheckReport,
    ) -> Result<crate::ReportAnswer, ProposeError> {
        match &self.inner.cluster {
            Some(c) => c.report(report).await,
            None => Err(ProposeError::NotLeader {
                leader: Some(self.inner.node_id),
            }),
        }
    }

    /// Why this node can no longer make writes durable, if it cannot. Reads
    /// of the catalog go on; the node must be restarted to write again.
    pub fn failure(&self) -> Option<Failure> {
        if let Some(e) = self.inner.store.poisoned() {
            return Some(Failure {
                storage_full: e.is_storage_full(),
                message: e.to_string(),
            });
        }
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        match &m.running_state {
            Ok(()) => None,
            Err(e) => Some(Failure {
                storage_full: false,
                message: format!("raft stopped: {e}"),
            }),
        }
    }

    /// How many write transactions (each one fsync) the store committed
    /// since the node was opened; with batching, far fewer than proposals.
    pub fn store_commits(&self) -> u64 {
        self.inner.store.commits()
    }

    /// The catalog, shared with the state machine. Hold its lock briefly and
    /// never across an await.
    pub fn catalog(&self) -> &Arc<RwLock<Catalog>> {
        &self.inner.catalog
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    /// The current term, as this node knows it.
    pub(crate) fn current_term(&self) -> u64 {
        self.inner.raft.metrics().borrow().current_term
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// Whether this node was removed from its cluster: it applied its own
    /// retirement (now, or in an earlier run: a removed node started again
    /// is told no commit index, so it may never re-apply it; the store
    /// keeps the fact), or the membership its log holds last (committed
    /// or not, as openraft uses it) has members but not this node (a node
    /// that received the change that removed it). A removed node gets no
    /// more of the log, so what it holds only ages; it should serve
    /// nothing. A node started with `--join` and not added yet has an
    /// empty membership: it is not removed, only waiting.
    pub fn removed(&self) -> bool {
        if self.inner.cluster.is_none() {
            return false;
        }
        if self.inner.retired.load(Ordering::Relaxed) {
            return true;
        }
        let id = self.inner.node_id;
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        membership.voter_ids().next().is_some() && membership.get_node(&id).is_none()
    }

    /// The node's current view of the cluster.
    pub fn info(&self) -> NodeInfo {
        // The catalog is updated before openraft's metrics are: read the
        // applied index from it so that it never lags what readers see.
        let applied_index = match self.inner.catalog.read() {
            Ok(c) => c.applied_index(),
            Err(poisoned) => poisoned.into_inner().applied_index(),
        };
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        let nodes = match &self.inner.cluster {
            None => Vec::new(),
            Some(c) => members(&m, c),
        };
        NodeInfo {
            node_id: self.inner.node_id,
            leader: m.current_leader,
            nodes,
            members: m.membership_config.voter_ids().collect(),
            commit_index: self
                .inner
                .committed
                .load(Ordering::Relaxed)
                .max(applied_index),
            applied_index,
            snapshots_installed: self.inner.pace.installed.load(Ordering::Relaxed),
            renewals_passed_on: self
                .inner
                .cluster
                .as_ref()
                .map_or(0, |c| c.pass_on.answered.load(Ordering::Relaxed)),
            forwarded_renewals: self.inner.cluster.as_ref().map_or((0, 0), |c| {
                let s = &c.renewals.stats;
                (
                    s.parts.load(Ordering::Relaxed),
                    s.calls.load(Ordering::Relaxed),
                )
            }),
            forwarded_writes: self.inner.cluster.as_ref().map_or((0, 0), |c| {
                let s = &c.forwards.stats;
                (
                    s.parts.load(Ordering::Relaxed),
                    s.calls.load(Ordering::Relaxed),
                )
            }),
            cluster_tls_handshake_failures: self
                .inner
                .cluster
                .as_ref()
                .map_or(0, |c| c.tls_handshake_failures.load(Ordering::Relaxed)),
        }
    }

    /// `true` while this node is leader and has applied an entry of its own
    /// term (so its catalog is complete); `false` otherwise and after stop.
    pub fn leader_watch(&self) -> watch::Receiver<bool> {
        self.inner.leader_rx.clone()
    }

    /// This node's term and the leader it knows in it, as they change
    /// (a watch: a reader sees the latest, not every step). Closed once
    /// raft stops.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership_rx.clone()
    }

    /// Waits, without asking for one, until a snapshot covering log index
    /// `index` or later is stored; returns the index it covers.
    pub async fn wait_snapshot(&self, index: u64, timeout: Duration) -> Result<u64, RaftError> {
        let m = self
            .inner
            .raft
            .wait(Some(timeout))
            .metrics(
                move |m| m.snapshot.is_some_and(|s| s.index >= index) || m.running_state.is_err(),
                "snapshot stored",
            )
            .await
            .map_err(|e| wait_error(e, format!("no snapshot covering index {index}")))?;
        if let Err(e) = &m.running_state {
            return Err(RaftError::Fatal(e.to_string()));
        }
        Ok(m.snapshot.map_or(0, |s| s.index))
    }

    /// Waits until the log is purged up to log index `index` or later (logs
    /// are purged behind each snapshot, keeping a few); returns the index.
    pub async fn wait_purged(&self, index: u64, timeout: Duration) -> Result<u64, RaftError> {
        let m = self
            .inner
            .raft
            .wait(Some(timeout))
            .metrics(
                move |m| m.purged.is_some_and(|p| p.index >= index) || m.running_state.is_err(),
                "log purged",
            )
            .await
            .map_err(|e| wait_error(e, format!("log not purged up to index {index}")))?;
        if let Err(e) = &m.running_state {
            return Err(RaftError::Fatal(e.to_string()));
        }
        Ok(m.purged.map_or(0, |p| p.index))
    }

    /// Builds a snapshot covering at least everything applied so far, waits
    /// until it is stored, and returns the log index it covers. (Snapshots
    /// are also built automatically every `snapshot_logs` entries and paced
    /// by `snapshot_commands`.)
    pub async fn snapshot(&self, timeout: Duration) -> Result<u64, RaftError> {
        let raft = &self.inner.raft;
        let target = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let before = raft.metrics().borrow().snapshot;
            if let Some(s) = before.filter(|s| s.index >= target) {
                return Ok(s.index);
            }
            raft.trigger()
                .snapshot()
                .await
                .map_err(|_| RaftError::Stopped)?;
            // A build already under way ignores the trigger; when it ends
            // (snapshot changed but still short of `target`), trigger again.
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            raft.wait(Some(remaining))
                .metrics(
                    move |m| m.snapshot != before || m.running_state.is_err(),
                    "snapshot built",
                )
                .await
                .map_err(|e| wait_error(e, "snapshot not built".into()))?;
            if let Err(e) = &raft.metrics().borrow().running_state {
                return Err(RaftError::Fatal(e.to_string()));
            }
        }
    }

    /// Stops openraft and closes the store (committing anything queued).
    /// Batches being written are answered first; proposals still queued
    /// and later ones fail with [`ProposeError::ShuttingDown`]. Idempotent.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        let mut stopped = self.inner.stopped.lock().await;
        if *stopped {
            return Ok(());
        }
        self.inner.shutting_down.store(true, Ordering::Release);
        // New writes are refused from here on; writes forwarded by peers and
        // raft RPC in flight finish (bounded), then the listener closes.
        self.inner.stop_cluster.send_replace(true);
        let cluster_tasks = std::mem::take(
            &mut *self
                .inner
                .cluster_tasks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in cluster_tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(CLUSTER_DRAIN_TIMEOUT, task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        // The batcher refuses what is still queued and waits for the batches
        // being written to be answered while raft still runs.
        self.inner.stop_batcher.send_replace(true);
        let batcher = self
            .inner
            .batcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(batcher) = batcher
            && tokio::time::timeout(BATCHES_DRAIN_TIMEOUT, batcher)
                .await
                .is_err()
        {
            tracing::warn!("batches in flight not answered in time; stopping raft under them");
        }
        let result = self
            .inner
            .raft
            .shutdown()
            .await
            .map_err(|e| RaftError::Fatal(format!("raft core did not stop cleanly: {e}")));
        self.inner
            .marker
            .raft
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| RaftError::Fatal(format!("closing the store panicked: {e}")))?;
        *stopped = true;
        tracing::info!(node_id = self.inner.node_id, "raft node stopped");
        result
    }
}

/// Refuses a store whose data this build cannot read, before openraft
/// starts on it: a snapshot kept in the store's metadata (as pre-release
/// builds did), log entries of another format version, or entries that
/// fail their checksum.
pub(crate) fn check_formats(store: &LogStore) -> Result<(), RaftError> {
    let path = store.path().display();
    if store.get_meta(KEY_SNAPSHOT).is_some() {
        return Err(RaftError::Corrupt(format!(
            "{path} keeps its snapshot inside the store, as pre-release builds did; \
             this version cannot read that data directory"
        )));
    }
    // Every entry, a few at a time: a log holds at most a few thousand
    // entries past the last snapshot, which a restart replays anyway.
    let indexes = store.indexes(..);
    for chunk in indexes.chunks(64) {
        let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
        let entries = store.range(first..=last)?;
        if entries.len() != chunk.len() {
            return Err(RaftError::Corrupt(format!(
                "{path}: log entries {first}..={last} are not all there"
            )));
        }
        for (index, bytes) in entries {
            codec::check_entry_format(&bytes).map_err(|e| {
                RaftError::Corrupt(format!(
                    "{path}: log entry {index}: {e}. Restore the data directory from a backup."
                ))
            })?;
        }
    }
    Ok(())
}

/// Refuses a data directory whose log does not reach its snapshot: every
/// write acknowledged after the snapshot was in the log, so a log that is
/// missing, empty or older than the snapshot means they are gone, and
/// starting would serve an older state as if it were current (the index
/// going backwards under clients that saw later ones). Also refuses a log
/// purged up to an index with no snapshot to stand for what was purged.
pub(crate) fn check_log_reaches_snapshot(
    store: &LogStore,
    snapshots: &SnapshotDir,
    force: bool,
) -> Result<(), RaftError> {
    let log = store.path().display();
    let purged: Option<crate::types::LogId> = read_meta(store, KEY_LAST_PURGED)
        .map_err(|e| RaftError::Corrupt(format!("{log}: the last purged log id: {e}")))?;
    let purged = purged.map(|l| l.index);
    let current = snapshots
        .current()
        .map_err(|e| RaftError::Corrupt(e.to_string()))?;
    let Some(current) = current else {
        return match purged {
            Some(p) => Err(RaftError::DataLoss(format!(
                "the log in {log} was purged up to index {p} after a snapshot, but the \
                 snapshot is gone ({} is missing): the state up to index {p} cannot be \
                 rebuilt. Restore the data directory from a backup (the snapshot data file \
                 may still be beside it, but nothing says which index it holds).",
                snapshots.pointer_path().display()
            ))),
            None => Ok(()),
        };
    };
    let Some(snapshot_index) = current.meta.last_log_id.map(|l| l.index) else {
        return Ok(());
    };
    let log_end = store.last_index().max(purged);
    if log_end.is_some_and(|end| end >= snapshot_index) {
        return Ok(());
    }
    let found = match log_end {
        None if store.is_empty() => "is missing or empty".to_string(),
        None => "has no entries".to_string(),
        Some(end) => format!("ends at index {end}"),
    };
    let what = format!(
        "the log {log} {found}, but the snapshot {} holds the state at index \
         {snapshot_index}: the log was deleted, truncated or replaced by an older copy, \
         and every write acknowledged after index {snapshot_index} is lost with it",
        snapshots.pointer_path().display()
    );
    if force {
        tracing::warn!(
            snapshot_index,
            "{what}; starting from the snapshot alone, as --force-recover-from-snapshot asks"
        );
        return Ok(());
    }
    Err(RaftError::DataLoss(format!(
        "{what}. Restore the data directory from a backup, or start once with \
         --force-recover-from-snapshot to accept the loss and resume from index \
         {snapshot_index}."
    )))
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}
