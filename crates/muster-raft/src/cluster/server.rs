//! The server side of cluster RPC: one axum router on the cluster listener.
//!
//! [`serve`] takes a bound listener, the cluster TLS (if on) and a
//! shutdown future. With TLS, connections are accepted by a task of their
//! own that runs each handshake in its own task (bounded by
//! [`HANDSHAKE_TIMEOUT`]), so a slow or hostile client never holds up the
//! next; only connections whose client certificate chains to the cluster
//! CA reach the routes. A handshake that fails or times out (a cleartext
//! client, no certificate, another CA's) is counted
//! ([`Shared::tls_handshake_failures`]) and logged.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use muster_tls::MutualTls;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::client::FROM_HEADER;
use super::{Shared, wire};
use crate::types::TypeConfig;

/// Largest RPC body taken: an append of up to `max_payload_entries`
/// entries, each a batch of at most ~1 MiB (see the batcher).
const MAX_BODY: usize = 256 * 1024 * 1024;
/// How long a TLS client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed `accept` (out of file descriptors), before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves cluster RPC on `listener` until `shutdown` resolves: over
/// mutual TLS when `tls` is set, else cleartext h2c.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<MutualTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(Arc::clone(&shared));
    match tls {
        None => {
            use axum::serve::ListenerExt as _;
            // Without TCP_NODELAY (axum::serve leaves Nagle on), h2
            // writes an answer's frames in pieces and the last waits for
            // the leader's delayed ACK: ~40 ms on about one append in
            // twenty, measured as register's p99.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let local = listener.local_addr()?;
            let (tx, accepted) = mpsc::channel(64);
            let handshakes = tokio::spawn(handshakes(listener, tls, tx, shared));
            let served = axum::serve(TlsListener { local, accepted }, router)
                .with_graceful_shutdown(shutdown)
                .await;
            handshakes.abort();
            served
        }
    }
}

/// Accepts TCP connections and hands those that complete a mutual-TLS
/// handshake to `tx`, until its receiver is gone.
async fn handshakes(
    listener: TcpListener,
    tls: Arc<MutualTls>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shared: Arc<Shared>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster listener: accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        // The configuration current at the accept: a reload applies to
        // the connections accepted after it.
        let acceptor = TlsAcceptor::from(tls.server_config());
        let (tx, shared) = (tx.clone(), Arc::clone(&shared));
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let failure = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
            };
            shared
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %failure, "cluster RPC: TLS handshake refused");
        });
    }
}

/// The connections that passed the handshake, as axum takes them.
struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            // The accepting task ended: nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/raft/hello", get(hello))
        .route("/raft/{to}/append", post(append))
        .route("/raft/{to}/vote", post(vote))
        .route("/raft/{to}/snapshot", post(snapshot))
        .route("/raft/{to}/forward", post(forward))
        .route("/raft/{to}/renew", post(renew))
        .route("/raft/{to}/report", post(report))
        .route("/raft/{to}/members", post(members))
        .route("/raft/{to}/elect", post(elect))
        .route("/raft/{to}/read-index", post(read_index))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            refuse_removed,
        ))
        .with_state(shared)
}

/// Answers any call from a node whose id this cluster retired (named by
/// [`FROM_HEADER`]) with 410 Gone, which tells it that it was removed
/// ([`CallError::Removed`]); the call is not handled.
///
/// A node removed while it was down, started again on its old data, never
/// applied its retirement nor received the membership that left it out:
/// it would serve its aging state, pass writes on, and stand for election
/// for ever (refused, as no member counts it a voter). Its first call to
/// any member that applied the removal (a `hello` at start-up, a
/// forwarded write, a vote request) tells it, before any raft here sees
/// the call, so no term is disturbed; told, it sends nothing more.
///
/// [`CallError::Removed`]: super::client::CallError::Removed
async fn refuse_removed(
    State(s): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let from = req
        .headers()
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(from) = from {
        let retired = s
            .catalog
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retired_nodes()
            .contains(&from);
        if retired {
            tracing::warn!(
                node = from,
                path = %req.uri().path(),
                "call refused: node {from} was removed from this cluster; told it so \
                 (stop it, or bring the machine back under a new id)"
            );
            return (
                StatusCode::GONE,
                format!("node {from} was removed from this cluster (its id is retired)"),
            )
                .into_response();
        }
    }
    next.run(req).await
}

fn cbor<T: Serialize>(value: &T) -> Response {
    match wire::encode(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, wire::CONTENT_TYPE)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

fn bad_request(e: String) -> Response {
    (StatusCode::BAD_REQUEST, e).into_response()
}

/// Refuses an RPC meant for another node id: the sender's view of who is
/// at this address is wrong, and answering would corrupt its replication.
fn check_to(shared: &Shared, to: u64) -> Result<(), Response> {
    if to == shared.node_id {
        return Ok(());
    }
    Err((
        StatusCode::MISDIRECTED_REQUEST,
        format!("this is node {}, not node {to}", shared.node_id),
    )
        .into_response())
}

async fn hello(State(s): State<Arc<Shared>>) -> Response {
    cbor(&wire::Hello {
        node_id: s.node_id,
        http_addr: s.http_addr.clone(),
        cluster_addr: Some(s.cluster_addr.clone()),
    })
}

async fn append(State(s): State<Arc<Shared>>, Path(to): Path<u64>, body: Bytes) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let req: AppendEntriesRequest<TypeConfig> = match wire::decode_append(body, &s.encoded) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    if let Some(leader) = req.vote.leader_id().voted_for() {
        s.contacts.heard(leader);
    }
    cbor(&s.raft.append_entries(req).await)
}

async fn vote(State(s): State<Arc<Shared>>, Path(to): Path<u64>, body: Bytes) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let req: VoteRequest<u64> = match wire::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    // One request decided at a time: the vote it may grant is saved before
    // `raft.vote` returns, so the next request sees it.
    let _deciding = s.voting.lock().await;
    if let Some(refusal) = second_vote_in_term(&s, &req) {
        return cbor(&Ok::<_, openraft::error::RaftError<u64>>(refusal));
    }
    cbor(&s.raft.vote(req).await)
}

/// Raft's rule that a node votes for at most one candidate per term.
///
/// openraft 0.9 (without its `single-term-leader` feature, which changes
/// the stored log ids) orders votes by (term, node id) and grants a
/// candidate whose id is higher than the one it already voted for in the
/// same term, so two candidates of one term could both win, one after the
/// other. Refusing a second candidate of a term this node already voted in
/// (for itself or another) restores the standard rule, and with it "at most
/// one leader per term": two leaders of one term would need two majorities,
/// which share a node that voted twice. A node that grants another
/// candidate's vote gives up its own candidacy (openraft makes it a
/// follower), so its vote for itself never counts twice either.
///
/// The refusal carries the candidate's own vote and no log id, which
/// openraft's candidate takes as a plain "not granted": it stays a
/// candidate and, without a majority, stands again in the next term after
/// its election timeout.
fn second_vote_in_term(
    s: &Shared,
    req: &VoteRequest<u64>,
) -> Option<openraft::raft::VoteResponse<u64>> {
    let stored: openraft::Vote<u64> =
        crate::log_store::read_meta(&s.votes, crate::log_store::KEY_VOTE).ok()??;
    let mine = stored.leader_id();
    let theirs = req.vote.leader_id();
    if mine.term == theirs.term && mine.node_id != theirs.node_id {
        tracing::debug!(
            term = theirs.term,
            candidate = theirs.node_id,
            voted_for = mine.node_id,
            "vote refused: this node already voted in this term"
        );
        return Some(openraft::raft::VoteResponse::new(req.vote, None, false));
    }
    None
}

/// A chunk of a snapshot: openraft writes it at its offset into the file
/// the state machine gave for receiving, and installs the snapshot after
/// the last chunk.
async fn snapshot(State(s): State<Arc<Shared>>, Path(to): Path<u64>, body: Bytes) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let req = match wire::decode_chunk(body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    cbor(&s.raft.install_snapshot(req).await)
}

/// `Ok` if this node leads, else the leader it knows: none once its raft
/// stopped (its store failed: a full disk), whatever openraft's last
/// metrics say. The others then elect a leader without it, and the
/// follower asking sends its calls again there.
fn leading(s: &Shared) -> Result<(), Option<u64>> {
    if stopped(s) {
        return Err(None);
    }
    match s.raft.metrics().borrow().current_leader {
        Some(l) if l == s.node_id => Ok(()),
        other => Err(other),
    }
}

/// Whether this node's raft stopped: its store failed (a full disk).
fn stopped(s: &Shared) -> bool {
    s.raft.metrics().borrow().running_state.is_err()
}

/// Writes a follower forwards: proposed here if this node leads, through
/// the same batcher as local writes.
async fn forward(State(s): State<Arc<Shared>>, Path(to): Path<u64>, body: Bytes) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let wire::ForwardRequest(cmds) = match wire::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let replies: Vec<wire::ForwardReply> = if let Err(leader) = leading(&s) {
        vec![wire::ForwardReply::NotLeader { leader }; cmds.len()]
    } else {
        // Each proposed on its own (they meet in the batcher's next entry),
        // each answered with its own result.
        let proposed: Vec<_> = cmds
            .into_iter()
            .map(|wire::Forwarded(cmd)| {
                let s = Arc::clone(&s);
                tokio::spawn(async move { s.propose_local(cmd).await })
            })
            .collect();
        let mut replies = Vec::with_capacity(proposed.len());
        for p in proposed {
            replies.push(wire::ForwardReply::from_result(
                p.await.unwrap_or(Err(crate::ProposeError::ShuttingDown)),
            ));
        }
        if stopped(&s) {
            // The raft stopped under these writes: each may be on the
            // followers, and a new leader commit it. The follower answers
            // "outcome unknown" (a 503 to retry), not this node's failure.
            for r in &mut replies {
                if matches!(r, wire::ForwardReply::Failed(_)) {
                    *r = wire::ForwardReply::ShuttingDown;
                }
            }
        }
        replies
    };
    cbor(&replies)
}

/// Lease renewals a follower forwards: leases live in the leader's memory.
async fn renew(State(s): State<Arc<Shared>>, Path(to): Path<u64>, body: Bytes) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let req: wire::RenewRequest = match wire::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let reply = match (leading(&s), s.leader_service.get()) {
        (Ok(()), Some(service)) => wire::RenewReply::Renewed(service.renew(&req.ids)),
        (Ok(()), None) => wire::RenewReply::NotLeader { leader: None },
        (Err(leader), _) => wire::RenewReply::NotLeader { leader },
    };
    cbor(&reply)
}

/// TTL check reports a follower forwards: the leader runs the checks.
async fn report(State(s): State<Arc<Shared>>, Path(to): Path<u64>, body: Bytes) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let req: crate::CheckReport = match wire::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let answer = match s.leader_service.get() {
        Some(service) if leading(&s).is_ok() => service.report(req).await,
        _ => crate::ReportAnswer::NotLeader,
    };
    cbor(&answer)
}

/// A membership change a follower forwards: made here if this node leads.
async fn members(State(s): State<Arc<Shared>>, Path(to): Path<u64>, body: Bytes) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let change: crate::MemberChange = match wire::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let reply = match leading(&s) {
        Ok(()) => Shared::reply(s.change_here(change).await),
        Err(leader) => Shared::reply(Err(crate::MemberError::NotLeader { leader })),
    };
    cbor(&reply)
}

/// The leader moving leadership here asks this node to call an election.
async fn elect(State(s): State<Arc<Shared>>, Path(to): Path<u64>) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let reply = match s.raft.trigger().elect().await {
        Ok(()) => Shared::reply(Ok(())),
        Err(e) => Shared::reply(Err(crate::MemberError::Unavailable(e.to_string()))),
    };
    cbor(&reply)
}

/// The read index a follower asks of the leader for a consistent read.
async fn read_index(State(s): State<Arc<Shared>>, Path(to): Path<u64>) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let reply = match s.read_index_here().await {
        Ok(i) => wire::ReadIndexReply::Index(i),
        Err(crate::ProposeError::NotLeader { leader }) => {
            wire::ReadIndexReply::NotLeader { leader }
        }
        Err(_) => wire::ReadIndexReply::NotLeader { leader: None },
    };
    cbor(&reply)
}
