//! The client side of cluster RPC: openraft's network to each peer, and
//! the calls a follower makes to the leader (forwarded writes, renewals).
//!
//! One HTTP/2 client is shared by every peer; it keeps one multiplexed
//! connection per peer and reconnects by itself. System proxies are never
//! used. Without cluster TLS it speaks cleartext h2c (prior knowledge);
//! with it ([`ClusterConfig::tls`]), `https` with ALPN `h2`, presenting
//! this node's certificate and verifying the peer's against the cluster
//! CA and the host of the address it calls (IP or DNS name). After a
//! reload of the certificates the next call builds a new client, so new
//! connections use the new files (calls under way finish on theirs). Errors are mapped so that openraft backs
//! off where it should: a peer that cannot be connected to is
//! [`Unreachable`] (openraft waits before it tries again, see
//! [`PeerClient::backoff`]), a request that timed out is a `Timeout`, any
//! other failure on the way a [`NetworkError`] (retried on the next
//! heartbeat), and an error the peer's raft answered a [`RemoteError`].
//!
//! Every call a node sends, raft's and the follower's calls to the leader
//! alike, first asks the [`LinkFaults`] hook of its [`ClusterConfig`], if
//! it has one, what to do with it: deliver, drop, drop the answer, or
//! delay. It is the chaos-testing seam (the partition tests cut links with
//! it); without a hook a call costs one `Option` check more.
//!
//! [`ClusterConfig`]: super::ClusterConfig

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;

use super::wire;
use crate::types::TypeConfig;
use muster_tls::MutualTls;

/// The longest pause between two attempts to reach an unreachable peer
/// ([`RaftNetwork::backoff`]).
const REPLICATION_RETRY_CAP: Duration = Duration::from_millis(250);
/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What becomes of one call a node sends to a peer (see [`LinkFaults`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkFault {
    /// Sent and answered as usual.
    #[default]
    Deliver,
    /// Never sent: the caller sees the peer unreachable, at once (as a
    /// refused connection), and knows the peer did not handle it.
    Drop,
    /// Sent and handled by the peer, but its answer is lost: the caller
    /// sees a broken connection and cannot know whether it was handled.
    DropResponse,
    /// Sent after this delay, then answered as usual (a delay past the
    /// call's timeout is a timeout).
    Delay(Duration),
}

/// A hook consulted before every call a node sends to a peer, per directed
/// link: raft's append-entries, votes and snapshot chunks, and a
/// follower's calls to the leader (forwarded writes, renewals, TTL
/// reports, read-index, membership changes, `hello`). A fault-injection
/// seam for chaos tests: dropping every call both ways between two sets
/// of nodes partitions the cluster. It sees each call once, so it should
/// decide quickly and never block.
pub trait LinkFaults: Send + Sync + 'static {
    /// What to do with the call `rpc` (the route's last segment, e.g.
    /// `append`, `vote`, `forward`, `read-index`, `hello`) that node
    /// `from` is sending to node `to`.
    fn on_send(&self, from: u64, to: u64, rpc: &str) -> LinkFault;
}

/// A [`LinkFaults`] hook as [`ClusterConfig`](super::ClusterConfig) holds
/// it: cheap to clone; equal only to clones of itself.
#[derive(Clone)]
pub struct FaultHook(Arc<dyn LinkFaults>);

impl FaultHook {
    /// Wraps `faults` for a [`ClusterConfig`](super::ClusterConfig).
    pub fn new(faults: Arc<dyn LinkFaults>) -> FaultHook {
        FaultHook(faults)
    }
}

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook(..)")
    }
}

impl PartialEq for FaultHook {
    fn eq(&self, other: &FaultHook) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl Eq for FaultHook {}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The peer could not be connected to: the request was not sent.
    #[error("cannot connect to {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// No answer in time; the request may or may not have been handled.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The peer answered that this node was removed from the cluster
    /// (410 Gone: its id is retired there).
    #[error("{addr} says: {reason}")]
    Removed { addr: String, reason: String },
    /// Anything else on the way (a reset connection, a bad status, an
    /// undecodable body); the request may or may not have been handled.
    #[error("cluster RPC to {addr} failed: {reason}")]
    Network { addr: String, reason: String },
}

/// The HTTP/2 client of cluster traffic, shared by every peer.
#[derive(Clone)]
pub(crate) struct Http {
    /// The client, and the [`MutualTls::generation`] it was built for.
    client: Arc<Mutex<(u64, reqwest::Client)>>,
    /// Cluster TLS, when on.
    tls: Option<Arc<MutualTls>>,
    /// The node sending (told to the receiver in [`FROM_HEADER`], and to
    /// the fault hook).
    from: u64,
    faults: Option<FaultHook>,
    /// Whether this node was removed from the cluster: then it sends
    /// nothing more.
    removed: Arc<AtomicBool>,
    /// Told when a peer answers that this node was removed.
    on_removed: OnRemoved,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("from", &self.from)
            .field("tls", &self.tls.is_some())
            .field("removed", &self.removed)
            .finish_non_exhaustive()
    }
}

/// The header that names the node sending a cluster call: a member
/// refuses every call from a node whose id the cluster retired (410
/// Gone), which is how a node removed while it was down learns it.
pub(crate) const FROM_HEADER: &str = "muster-from";

/// Called when a peer answers that this node was removed from the
/// cluster ([`CallError::Removed`]), with that answer.
pub(crate) type OnRemoved = Arc<dyn Fn(&CallError) + Send + Sync>;

/// A client for cluster calls, with `tls` when it is on.
fn build_client(tls: Option<&MutualTls>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        // A peer answers its own RPC; a redirect would only send a
        // node's log (or a snapshot) somewhere nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        // A peer that vanished without closing its socket (a cut cable,
        // a frozen VM) is noticed by h2 pings instead of at the next
        // request's timeout.
        .http2_keep_alive_interval(Some(Duration::from_secs(1)))
        .http2_keep_alive_timeout(Duration::from_secs(2))
        .http2_keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.tls_backend_preconfigured((*tls.client_config()).clone());
    }
    builder
        .build()
        .map_err(|e| format!("building the cluster RPC client: {}", error_chain(&e)))
}

impl Http {
    /// The client of node `from`. `removed` says whether it was removed
    /// (then it sends nothing); `on_removed` is called when a peer answers
    /// that it was.
    pub(crate) fn new(
        from: u64,
        faults: Option<FaultHook>,
        tls: Option<Arc<MutualTls>>,
        removed: Arc<AtomicBool>,
        on_removed: OnRemoved,
    ) -> Result<Http, String> {
        let generation = tls.as_ref().map_or(0, |t| t.generation());
        let client = build_client(tls.as_deref())?;
        Ok(Http {
            client: Arc::new(Mutex::new((generation, client))),
            tls,
            from,
            faults,
            removed,
            on_removed,
        })
    }

    /// Refuses to send once this node was removed from the cluster.
    fn check_member(&self, addr: &str) -> Result<(), CallError> {
        if self.removed.load(Ordering::Relaxed) {
            return Err(CallError::Removed {
                addr: addr.to_string(),
                reason: format!(
                    "node {} was removed from the cluster and sends nothing more",
                    self.from
                ),
            });
        }
        Ok(())
    }

    /// Maps an answer's status: 410 Gone is the peer saying this node was
    /// removed (told to `on_removed`), any other failure a network error.
    fn check_status(
        &self,
        addr: &str,
        status: reqwest::StatusCode,
        body: &[u8],
    ) -> Result<(), CallError> {
        if status == reqwest::StatusCode::GONE {
            let e = CallError::Removed {
                addr: addr.to_string(),
                reason: String::from_utf8_lossy(body).into_owned(),
            };
            (self.on_removed)(&e);
            return Err(e);
        }
        if !status.is_success() {
            return Err(CallError::Network {
                addr: addr.to_string(),
                reason: format!("{status}: {}", String::from_utf8_lossy(body)),
            });
        }
        Ok(())
    }

    /// The client to send with: a new one once the TLS files were
    /// reloaded (the old one's connections close once their calls end).
    fn client(&self) -> reqwest::Client {
        let mut current = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tls) = &self.tls {
            let generation = tls.generation();
            if generation != current.0 {
                match build_client(Some(tls)) {
                    Ok(client) => *current = (generation, client),
                    // Keeps the previous client (and so the previous files).
                    Err(e) => {
                        tracing::error!(error = %e, "cluster TLS: cannot use the reloaded files")
                    }
                }
            }
        }
        current.1.clone()
    }

    /// `https` with cluster TLS, else `http` (h2c).
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// What the fault hook makes of the call `rpc` to node `to`: `Err`
    /// when it is dropped, after any delay it imposes; `Ok(true)` when its
    /// answer is to be dropped.
    async fn fault(&self, to: u64, addr: &str, rpc: &str) -> Result<bool, CallError> {
        let Some(hook) = &self.faults else {
            return Ok(false);
        };
        match hook.0.on_send(self.from, to, rpc) {
            LinkFault::Deliver => Ok(false),
            LinkFault::Drop => Err(CallError::Unreachable {
                addr: addr.to_string(),
                reason: format!("the link from node {} to node {to} is cut", self.from),
            }),
            LinkFault::DropResponse => Ok(true),
            LinkFault::Delay(d) => {
                tokio::time::sleep(d).await;
                Ok(false)
            }
        }
    }

    /// The error a dropped answer gives.
    fn lost_answer(&self, to: u64, addr: &str) -> CallError {
        CallError::Network {
            addr: addr.to_string(),
            reason: format!(
                "the answer from node {to} to node {} was dropped",
                self.from
            ),
        }
    }

    /// POSTs `body` to node `to`'s route `rpc` at `addr` and decodes the
    /// CBOR answer.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        to: u64,
        addr: &str,
        rpc: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<T, CallError> {
        self.check_member(addr)?;
        let drop_answer = self.fault(to, addr, rpc).await?;
        let url = format!("{}://{addr}{}", self.scheme(), path(to, rpc));
        let sent = self
            .client()
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE)
            .header(FROM_HEADER, self.from)
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let resp = sent.map_err(|e| classify(addr, timeout, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(addr, timeout, e))?;
        if drop_answer {
            return Err(self.lost_answer(to, addr));
        }
        self.check_status(addr, status, &bytes)?;
        wire::decode(&bytes).map_err(|reason| CallError::Network {
            addr: addr.to_string(),
            reason,
        })
    }

    /// GETs `/raft/{rpc}` at `addr`, of node `to` (a route every node
    /// answers whatever its id) and decodes the CBOR answer.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        to: u64,
        addr: &str,
        rpc: &str,
        timeout: Duration,
    ) -> Result<T, CallError> {
        self.check_member(addr)?;
        let drop_answer = self.fault(to, addr, rpc).await?;
        let resp = self
            .client()
            .get(format!("{}://{addr}/raft/{rpc}", self.scheme()))
            .header(FROM_HEADER, self.from)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| classify(addr, timeout, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| classify(addr, timeout, e))?;
        if drop_answer {
            return Err(self.lost_answer(to, addr));
        }
        self.check_status(addr, status, &bytes)?;
        wire::decode(&bytes).map_err(|reason| CallError::Network {
            addr: addr.to_string(),
            reason,
        })
    }
}

fn classify(addr: &str, timeout: Duration, e: reqwest::Error) -> CallError {
    if e.is_connect() {
        CallError::Unreachable {
            addr: addr.to_string(),
            reason: error_chain(&e),
        }
    } else if e.is_timeout() {
        CallError::Timeout {
            addr: addr.to_string(),
            timeout,
        }
    } else {
        CallError::Network {
            addr: addr.to_string(),
            reason: error_chain(&e),
        }
    }
}

/// An error and its causes on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// The path of an RPC to node `to`: the receiver refuses one meant for
/// another node (a peer restarted under another id at the same address).
fn path(to: u64, rpc: &str) -> String {
    format!("/raft/{to}/{rpc}")
}

/// openraft's network: a [`PeerClient`] per target.
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) node_id: u64,
    /// `None` on a cluster of one, which sends no RPC (and builds no
    /// client: reqwest's TLS needs a crypto provider installed first).
    pub(crate) http: Option<Http>,
    pub(crate) contacts: super::Contacts,
    /// The stored bytes of recent entries, sent as they are.
    pub(crate) encoded: crate::log_store::EncodedEntries,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            from: self.node_id,
            target,
            node: node.clone(),
            http: self.http.clone(),
            contacts: self.contacts.clone(),
            encoded: self.encoded.clone(),
        }
    }
}

/// The connection to one peer, as openraft sees it.
pub(crate) struct PeerClient {
    from: u64,
    target: u64,
    node: BasicNode,
    http: Option<Http>,
    contacts: super::Contacts,
    encoded: crate::log_store::EncodedEntries,
}

impl PeerClient {
    /// Sends one raft RPC and maps its failures for openraft.
    async fn rpc<Resp, E>(
        &self,
        action: RPCTypes,
        name: &str,
        body: Result<Bytes, String>,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(http) = &self.http else {
            let e = Io(format!(
                "node {} has no cluster RPC (a cluster of one)",
                self.from
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let body = body.map_err(|e| RPCError::Network(NetworkError::new(&Io(e))))?;
        let timeout = option.hard_ttl();
        let answer: Result<Resp, E> = http
            .call(self.target, &self.node.addr, name, body, timeout)
            .await
            .map_err(|e| match e {
                CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Timeout { .. } => RPCError::Timeout(Timeout {
                    action,
                    id: self.from,
                    target: self.target,
                    timeout,
                }),
                CallError::Network { .. } => RPCError::Network(NetworkError::new(&e)),
                // Removed: nothing it sends will be taken again; openraft
                // backs off as from a peer it cannot reach.
                CallError::Removed { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            })?;
        self.contacts.heard(self.target);
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

/// A message as an error, for openraft's error constructors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Io(String);

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(
            RPCTypes::AppendEntries,
            "append",
            wire::encode_append(rpc, &self.encoded),
            &option,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.rpc(
            RPCTypes::InstallSnapshot,
            "snapshot",
            wire::encode_chunk(rpc),
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(RPCTypes::Vote, "vote", wire::encode(&rpc), &option)
            .await
    }

    /// Exponential from 50 ms to [`REPLICATION_RETRY_CAP`]: how long a
    /// restarted peer may wait for the leader's first append, during which
    /// it knows no leader and holds its clients' writes (measured: ~0.5 s
    /// on average with a 1 s cap, on every restart of a rolling restart).
    /// A dead peer costs a refused connection attempt every 250 ms.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            (0..)
                .map(|i: u32| Duration::from_millis(50u64.saturating_mul(1 << i.min(5))))
                .map(|d| d.min(REPLICATION_RETRY_CAP)),
        )
    }
}
