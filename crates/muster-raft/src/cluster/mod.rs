//! Cluster RPC: raft between nodes, and writes forwarded to the leader.
//!
//! * [`server`]: the routes on the cluster listener (`cluster_addr`,
//!   default `127.0.0.1:7701`): append-entries, vote, snapshot chunks,
//!   forwarded writes and renewals, and `hello` (a node's HTTP address).
//! * [`client`]: openraft's network to each peer over HTTP/2, and the
//!   calls a follower makes to the leader.
//! * [`wire`]: the CBOR bodies.
//!
//! # Forming a cluster (static bootstrap)
//!
//! Every node is started with the same `peers` (id → cluster address). A
//! node whose store is fresh (no log, no vote, no snapshot) calls
//! openraft's `initialize` once with exactly that membership, whatever its
//! id and whenever it starts. openraft documents initialising several
//! nodes with the *same* membership as safe: each writes the same entry at
//! log id `(term 0, index 0)` and elections decide the rest. So the cluster
//! forms as soon as any quorum of peers runs, in any order, and no node is
//! special. A node that restarts has a membership in its store and never
//! initialises again; one restarted on an emptied data directory writes
//! that same first entry again, which its peers already hold, and is
//! caught up by the leader (it cannot win an election with its empty log).
//! The rule is only safe if every node gets the same `peers`; changing the
//! set is what dynamic membership (join/leave) is for, not a restart with
//! other flags.
//!
//! # Forwarding
//!
//! [`Shared::propose`] is the one write path of a clustered node: the
//! leader proposes locally (through the batcher), a follower sends the
//! command to the leader's `forward` route and answers with the leader's
//! result once its own catalog has applied that index (so a client that
//! wrote through a follower reads its write there). Without a leader, or
//! while the leader cannot be reached, it waits for one up to
//! [`LEADER_WAIT`], then fails with `NotLeader` and the leader it knows.
//! A forward is sent again only when it certainly did not arrive (no
//! connection, or refused by a node that no longer leads), so a write is
//! never applied twice by a retry.

pub(crate) mod client;
pub(crate) mod coalesce;
pub(crate) mod membership;
pub(crate) mod server;
pub(crate) mod wire;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use muster_catalog::Command;
use openraft::BasicNode;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::client::Http;
pub use self::client::{FaultHook, LinkFault, LinkFaults};
use crate::batcher::Proposal;
use crate::types::Raft;
use crate::{Applied, CheckReport, LeaderService, ProposeError, Renewal, ReportAnswer};

/// How long a write waits for a leader (an election, an unreachable
/// leader) before it fails with `NotLeader`.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long one forwarded call may take on the leader (its fsync included).
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a follower waits to apply a write the leader acknowledged
/// before it answers anyway (the write is durable on a quorum).
const APPLY_WAIT: Duration = Duration::from_secs(5);
/// Between two attempts to reach a leader that could not be connected to.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How often a node asks a peer whose HTTP address it does not know yet.
const HELLO_RETRY: Duration = Duration::from_millis(500);

/// How a node takes part in a cluster of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The voters of the initial cluster, this node included: node id →
    /// cluster RPC address (`host:port`). The same on every node. With
    /// `join`, only this node.
    pub peers: BTreeMap<u64, String>,
    /// This node joins a running cluster (added with `muster cluster
    /// join`): a fresh data directory does not initialise a cluster.
    pub join: bool,
    /// This node's HTTP API address, as clients and peers reach it.
    pub http_addr: String,
    /// A fault-injection hook every call this node sends consults first
    /// (see [`LinkFaults`]); `None` outside chaos tests.
    pub link_faults: Option<FaultHook>,
    /// Mutual TLS on cluster RPC: the listener accepts only TLS
    /// connections whose client certificate chains to the CA, and every
    /// call this node sends presents its certificate and checks the
    /// peer's. `None`: cleartext h2c. Reloading it (SIGHUP in the agent)
    /// applies to new connections both ways.
    pub tls: Option<Arc<muster_tls::MutualTls>>,
}

impl ClusterConfig {
    /// Checks the peers: this node among them, every address `host:port`.
    pub fn validate(&self, node_id: u64) -> Result<(), String> {
        if !self.peers.contains_key(&node_id) {
            return Err(format!(
                "peers must include this node (node_id {node_id}); peers are {:?}",
                self.peers.keys().collect::<Vec<_>>()
            ));
        }
        for (id, addr) in &self.peers {
            if *id == 0 {
                return Err("peer ids must be at least 1".into());
            }
            let port = addr.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if !matches!(port, Some(Ok(p)) if p != 0) {
                return Err(format!(
                    "peer {id}: {addr:?} is not host:port (e.g. 10.0.0.1:7701)"
                ));
            }
        }
        Ok(())
    }

    /// The initial membership every node initialises with.
    pub(crate) fn members(&self) -> BTreeMap<u64, BasicNode> {
        self.peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect()
    }
}

/// When this node last heard from each peer (an answer to an RPC it sent,
/// or an append-entries from the leader).
#[derive(Clone, Default)]
pub(crate) struct Contacts(Arc<std::sync::Mutex<BTreeMap<u64, Instant>>>);

impl Contacts {
    pub(crate) fn heard(&self, peer: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Instant::now());
    }

    /// Milliseconds since `peer` was last heard from.
    pub(crate) fn since_ms(&self, peer: u64) -> Option<u64> {
        let at = *self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)?;
        Some(u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

/// What the cluster routes and the forwarding path share with the node.
pub(crate) struct Shared {
    pub(crate) node_id: u64,
    pub(crate) raft: Raft,
    pub(crate) proposals: mpsc::Sender<Proposal>,
    pub(crate) http_addr: String,
    /// The cluster address this node advertises (its own entry in the
    /// peers it started with), told to peers in `hello`.
    pub(crate) cluster_addr: String,
    pub(crate) http: Http,
    /// TLS handshakes refused on the cluster listener since start.
    pub(crate) tls_handshake_failures: std::sync::atomic::AtomicU64,
    /// The registry's side of calls forwarded to the leader; set once.
    pub(crate) leader_service: OnceLock<Arc<dyn LeaderService>>,
    /// Every member's HTTP address that is known (learned by `hello`).
    pub(crate) http_addrs: RwLock<BTreeMap<u64, String>>,
    pub(crate) contacts: Contacts,
    /// The catalog this node applies (its retired node ids).
    pub(crate) catalog: Arc<RwLock<muster_catalog::Catalog>>,
    /// Held shared by every local proposal, and exclusively while
    /// leadership moves away (see [`membership`]).
    pub(crate) transfer_gate: tokio::sync::RwLock<()>,
    /// Renewals forwarded to the leader, coalesced into few calls.
    pub(crate) renewals: coalesce::Coalescer<coalesce::Renew>,
    /// Writes forwarded to the leader, coalesced the same way.
    pub(crate) forwards: coalesce::Coalescer<coalesce::Forward>,
    /// Renewals this follower answered itself, to pass on to the leader.
    pub(crate) pass_on: PassOn,
    /// The index this node applied last, as it moves.
    pub(crate) applied: watch::Receiver<u64>,
    /// The stored bytes of recent entries: append-entries received here
    /// leave theirs for the log to store as they are.
    pub(crate) encoded: crate::log_store::EncodedEntries,
    /// The store holding this node's vote, read by [`server`]'s vote rule.
    pub(crate) votes: muster_store::LogStore,
    /// Held while a vote request is decided, so that two candidates of one
    /// term are never both granted (see [`server`]'s `vote`).
    pub(crate) voting: tokio::sync::Mutex<()>,
    /// Whether this node was removed from the cluster ([`Node::removed`]'s
    /// flag).
    ///
    /// [`Node::removed`]: crate::Node::removed
    pub(crate) retired: Arc<std::sync::atomic::AtomicBool>,
}

/// A follower answers a renewal itself while it heard from the leader this
/// recently (three of the leader's 100 ms heartbeats): the leader is alive
/// and this node follows it, so the renewal will reach it.
const PASS_ON_WINDOW_MS: u64 = 300;

/// How often a follower passes the renewals it answered on to the leader,
/// in one call (coalesced with any renewals forwarded meanwhile).
const PASS_ON_EVERY: Duration = Duration::from_millis(50);

/// Most renewals passed on in one call; more wake the pass-on at once.
const PASS_ON_MAX: usize = 10_000;

/// Lease ids a follower renewed on the leader's behalf and has yet to pass
/// on, once each however often they were renewed meanwhile.
#[derive(Default)]
pub(crate) struct PassOn {
    ids: std::sync::Mutex<std::collections::HashSet<u64>>,
    full: tokio::sync::Notify,
    /// Renewals answered this way since start.
    pub(crate) answered: std::sync::atomic::AtomicU64,
}

/// Why one attempt on the leader did not give an answer.
enum Attempt<T> {
    /// An answer (success or a definite failure).
    Done(Result<T, ProposeError>),
    /// No leader known, or it certainly did not take the call: try again
    /// once something changes.
    Retry,
}

impl Shared {
    /// Proposes through this node's batcher (it must lead).
    pub(crate) async fn propose_local(&self, cmd: Command) -> Result<Applied, ProposeError> {
        let _gate = self.transfer_gate.read().await;
        let (proposal, reply) = Proposal::new(cmd);
        self.proposals
            .send(proposal)
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        reply.await.unwrap_or(Err(ProposeError::ShuttingDown))
    }

    /// Renews `ids` on the leader's behalf, without a call: on a follower
    /// that heard from the leader within [`PASS_ON_WINDOW_MS`], for leases
    /// its catalog holds, each answered with its TTL and queued to be
    /// passed on within [`PASS_ON_EVERY`] (far inside the shortest TTL,
    /// 1 s). `None` when the renewals must be forwarded instead: this node
    /// leads, knows no leader, lost touch with it, or does not know one of
    /// the leases (created on the leader and not applied here yet).
    ///
    /// A lease the leader expired but whose expiry this node has not
    /// applied yet is answered renewed; its holder learns otherwise at its
    /// next renewal, once the expiry is applied, as it would have a moment
    /// later had the expiry won the race on the leader.
    pub(crate) fn renew_passing_on(&self, ids: &[u64]) -> Option<Vec<Renewal>> {
        let (leader, _) = self.leader()?;
        if leader == self.node_id || self.contacts.since_ms(leader)? > PASS_ON_WINDOW_MS {
            return None;
        }
        let out = {
            let c = self.catalog.read().unwrap_or_else(PoisonError::into_inner);
            ids.iter()
                .map(|id| c.lease(*id).map(|l| Renewal::Renewed { ttl_ms: l.ttl_ms }))
                .collect::<Option<Vec<_>>>()?
        };
        let mut queued = self
            .pass_on
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        queued.extend(ids.iter().copied());
        if queued.len() >= PASS_ON_MAX {
            self.pass_on.full.notify_one();
        }
        self.pass_on
            .answered
            .fetch_add(ids.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Some(out)
    }

    /// The leader this node knows and its cluster address.
    fn leader(&self) -> Option<(u64, Option<String>)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone());
        Some((leader, addr))
    }

    /// Runs `attempt` on the leader until it answers or [`LEADER_WAIT`]
    /// passes, waiting for a change of raft state between attempts.
    async fn on_leader<T, F, Fut>(&self, mut attempt: F) -> Result<T, ProposeError>
    where
        F: FnMut(Option<(u64, Option<String>)>) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + LEADER_WAIT;
        let mut metrics = self.raft.metrics();
        loop {
            // Told meanwhile that it was removed (by its own vote request
            // refused, say): no leader will take anything from it.
            if self.retired.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ProposeError::Removed { node: self.node_id });
            }
            metrics.borrow_and_update();
            match attempt(self.leader()).await {
                Attempt::Done(r) => return r,
                Attempt::Retry => {}
            }
            if metrics.borrow().running_state.is_err() {
                return Err(ProposeError::ShuttingDown);
            }
            // A new leader or term wakes at once; an unreachable leader is
            // tried again after a short pause.
            let pause = tokio::time::sleep(RETRY_PAUSE);
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() {
                    return Err(ProposeError::ShuttingDown);
                },
                () = pause => {}
            }
            if Instant::now() >= deadline {
                return Err(ProposeError::NotLeader {
                    leader: self.leader().map(|(l, _)| l),
                });
            }
        }
    }

    /// Proposes `cmd` on the leader: locally when this node leads, else
    /// forwarded; answered once this node applied it.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<Applied, ProposeError> {
        let applied = self
            .on_leader(|leader| {
                let cmd = cmd.clone();
                async move {
                    match leader {
                        None => Attempt::Retry,
                        Some((l, _)) if l == self.node_id => match self.propose_local(cmd).await {
                            Err(ProposeError::NotLeader { .. }) => Attempt::Retry,
                            r => Attempt::Done(r),
                        },
                        Some((_, None)) => Attempt::Retry,
                        Some((l, Some(addr))) => self.forward(l, &addr, cmd).await,
                    }
                }
            })
            .await?;
        self.wait_applied(applied.index).await;
        Ok(applied)
    }

    async fn forward(&self, leader: u64, addr: &str, cmd: Command) -> Attempt<Applied> {
        use coalesce::Forwarded;
        let Some(answer) = self.forwards.send(leader, addr, cmd).await else {
            return Attempt::Done(Err(ProposeError::ShuttingDown));
        };
        match answer {
            Forwarded::Answer(wire::ForwardReply::Applied { index, result }) => {
                Attempt::Done(Ok(Applied { index, result }))
            }
            // Refused before it was appended, or appended and then cut from
            // the log as the leader lost its place: never applied, so sent
            // again (openraft answers ForwardToLeader only in those cases).
            Forwarded::Answer(wire::ForwardReply::NotLeader { .. }) | Forwarded::NotSent => {
                Attempt::Retry
            }
            // Refused unhandled: this node was removed from the cluster.
            Forwarded::Removed => Attempt::Done(Err(ProposeError::Removed { node: self.node_id })),
            // The leader stopped: perhaps after appending it (openraft's
            // `Fatal::Stopped` does not say), so, like a lost answer, it is
            // not sent again, and the client is told the outcome is unknown.
            Forwarded::Answer(wire::ForwardReply::ShuttingDown) => {
                Attempt::Done(Err(ProposeError::OutcomeUnknown { leader }))
            }
            Forwarded::Answer(wire::ForwardReply::Failed(m)) => {
                Attempt::Done(Err(ProposeError::Fatal(m)))
            }
            Forwarded::Lost(e) => {
                // Sent, but no answer: it may have been applied, so it is
                // not sent again, and the caller is told exactly that (as
                // etcd's "request timed out, possibly due to previous
                // leader failure"), not that it was refused.
                tracing::warn!(leader, error = %e, "forwarded write without an answer");
                Attempt::Done(Err(ProposeError::OutcomeUnknown { leader }))
            }
        }
    }

    /// Waits (bounded) until this node applied `index`.
    async fn wait_applied(&self, index: u64) {
        if let Err(e) = self.applied_at_least(index).await {
            tracing::warn!(index, error = %e, "answering a forwarded write not yet applied here");
        }
    }

    /// Waits until this node applied `index`, at most [`APPLY_WAIT`].
    async fn applied_at_least(&self, index: u64) -> Result<(), String> {
        let mut applied = self.applied.clone();
        let waited = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|i| *i >= index))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err("the node stopped".into()),
            Err(_) => Err(format!(
                "applied only up to {} after {APPLY_WAIT:?}",
                *applied.borrow()
            )),
        }
    }

    /// Renews leases on the leader (they live in its memory).
    pub(crate) async fn renew(&self, ids: &[u64]) -> Result<Vec<Renewal>, ProposeError> {
        self.on_leader(|leader| {
            async move {
                match leader {
                    None | Some((_, None)) => Attempt::Retry,
                    Some((l, _)) if l == self.node_id => match self.leader_service.get() {
                        Some(s) => {
                            let out = s.renew(ids);
                            if out.contains(&Renewal::NotLeader) {
                                Attempt::Retry
                            } else {
                                Attempt::Done(Ok(out))
                            }
                        }
                        None => Attempt::Retry,
                    },
                    // Coalesced with the renewals forwarded meanwhile; a
                    // renewal is idempotent, so any failure is retried.
                    Some((l, Some(addr))) => {
                        match self.renewals.send(l, &addr, ids.to_vec()).await.flatten() {
                            Some(out) => Attempt::Done(Ok(out)),
                            None => Attempt::Retry,
                        }
                    }
                }
            }
        })
        .await
    }

    /// Records a TTL check report on the leader (it runs the checks),
    /// answered once this node applied the status. Sent again on any
    /// failure: reporting a status twice sets it once.
    pub(crate) async fn report(&self, report: CheckReport) -> Result<ReportAnswer, ProposeError> {
        let body = wire::encode(&report).map_err(ProposeError::Fatal)?;
        let answer = self
            .on_leader(|leader| {
                let (body, report) = (body.clone(), report.clone());
                async move {
                    let answer = match leader {
                        None | Some((_, None)) => return Attempt::Retry,
                        Some((l, _)) if l == self.node_id => match self.leader_service.get() {
                            Some(s) => s.report(report).await,
                            None => return Attempt::Retry,
                        },
                        Some((l, Some(addr))) => {
                            match self
                                .http
                                .call(l, &addr, "report", body, FORWARD_TIMEOUT)
                                .await
                            {
                                Ok(answer) => answer,
                                Err(e) => {
                                    tracing::debug!(leader = l, error = %e, "forwarded check report failed");
                                    return Attempt::Retry;
                                }
                            }
                        }
                    };
                    match answer {
                        ReportAnswer::NotLeader => Attempt::Retry,
                        a => Attempt::Done(Ok(a)),
                    }
                }
            })
            .await?;
        if let ReportAnswer::Done { index } = answer {
            self.wait_applied(index).await;
        }
        Ok(answer)
    }

    /// The leader's read index for a linearizable read (read-index: the
    /// leader confirms with a quorum that it still leads, and names its
    /// commit index), asked of the leader when this node follows; answered
    /// once this node applied that index, never earlier.
    pub(crate) async fn read_index(&self) -> Result<u64, ProposeError> {
        let index = self
            .on_leader(|leader| async move {
                match leader {
                    None | Some((_, None)) => Attempt::Retry,
                    Some((l, _)) if l == self.node_id => match self.read_index_here().await {
                        Err(ProposeError::NotLeader { .. }) => Attempt::Retry,
                        r => Attempt::Done(r),
                    },
                    Some((l, Some(addr))) => {
                        let reply: Result<wire::ReadIndexReply, _> = self
                            .http
                            .call(l, &addr, "read-index", Bytes::new(), FORWARD_TIMEOUT)
                            .await;
                        match reply {
                            Ok(wire::ReadIndexReply::Index(i)) => Attempt::Done(Ok(i)),
                            Ok(wire::ReadIndexReply::NotLeader { .. }) => Attempt::Retry,
                            // Asking again reads nothing twice.
                            Err(e) => {
                                tracing::debug!(leader = l, error = %e, "read index failed");
                                Attempt::Retry
                            }
                        }
                    }
                }
            })
            .await?;
        match self.applied_at_least(index).await {
            Ok(()) => Ok(index),
            Err(_) => Err(ProposeError::NotLeader {
                leader: self.leader().map(|(l, _)| l),
            }),
        }
    }

    /// The read index on this node, which must lead.
    pub(crate) async fn read_index_here(&self) -> Result<u64, ProposeError> {
        read_index_of(&self.raft).await
    }

    /// The HTTP address of every member known so far.
    pub(crate) fn http_addrs(&self) -> BTreeMap<u64, String> {
        self.http_addrs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Learns the HTTP address of every member (each peer's `hello`), asking
/// again those that did not answer, and anew when membership changes.
/// Passes the renewals a follower answered itself ([`Shared::renew_passing_on`])
/// on to the leader every [`PASS_ON_EVERY`], or at once past [`PASS_ON_MAX`].
/// The answers do not matter here: a lease the leader no longer has leaves
/// every catalog once its expiry is applied, and a new leader starts every
/// lease afresh.
pub(crate) async fn pass_on_renewals(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(PASS_ON_EVERY) => {}
            () = shared.pass_on.full.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let ids: Vec<u64> = shared
            .pass_on
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for chunk in ids.chunks(PASS_ON_MAX) {
            if let Err(e) = shared.renew(chunk).await {
                tracing::debug!(error = %e, renewals = chunk.len(), "renewals not passed on to the leader");
            }
        }
    }
}

pub(crate) async fn learn_http_addrs(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut metrics = shared.raft.metrics();
    loop {
        let (seen, members): (_, Vec<(u64, String)>) = {
            let m = metrics.borrow_and_update();
            let members = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            (*m.membership_config.log_id(), members)
        };
        let known = shared.http_addrs();
        let missing: Vec<_> = members
            .into_iter()
            .filter(|(id, _)| !known.contains_key(id))
            .collect();
        for (id, addr) in &missing {
            let hello: Result<wire::Hello, _> = shared
                .http
                .get(*id, addr, "hello", Duration::from_secs(2))
                .await;
            match hello {
                Ok(h) if h.node_id == *id => {
                    shared
                        .http_addrs
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(*id, h.http_addr);
                }
                Ok(h) => tracing::warn!(
                    peer = id,
                    %addr,
                    answered = h.node_id,
                    "a different node answers at this peer's address"
                ),
                Err(e) => tracing::debug!(peer = id, error = %e, "peer not reachable yet"),
            }
        }
        let all_known = missing.is_empty() || {
            let known = shared.http_addrs();
            missing.iter().all(|(id, _)| known.contains_key(id))
        };
        // The metrics change with every applied entry; only a new
        // membership can name a new member.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = metrics.wait_for(|m| *m.membership_config.log_id() != seen), if all_known => {
                if r.is_err() { return }
            }
            () = tokio::time::sleep(HELLO_RETRY), if !all_known => {}
        }
    }
}

/// openraft's read-index on `raft`: `NotLeader` when it does not lead or
/// cannot reach a quorum (a minority side answers no consistent read).
pub(crate) async fn read_index_of(raft: &Raft) -> Result<u64, ProposeError> {
    use openraft::error::{CheckIsLeaderError, RaftError as OpenraftError};
    match raft.ensure_linearizable().await {
        Ok(log_id) => Ok(log_id.map_or(0, |l| l.index)),
        Err(OpenraftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(ProposeError::NotLeader {
                leader: f.leader_id,
            })
        }
        Err(OpenraftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
            Err(ProposeError::NotLeader { leader: None })
        }
        Err(OpenraftError::Fatal(e)) => Err(ProposeError::Fatal(e.to_string())),
    }
}
