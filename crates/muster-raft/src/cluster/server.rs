//! The server side of cluster RPC: one axum router on the cluster listener.
//!
//! [`serve`] takes a bound listener and a shutdown future and nothing else
//! about the transport, so that TLS (the security issue) wraps the listener
//! without reshaping the routes.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::Serialize;
use tokio::net::TcpListener;

use super::{Shared, wire};
use crate::types::TypeConfig;

/// Largest RPC body taken: an append of up to `max_payload_entries`
/// entries, each a batch of at most ~1 MiB (see the batcher).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Serves cluster RPC on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(shutdown)
        .await
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
        .with_state(shared)
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
    })
}

async fn append(State(s): State<Arc<Shared>>, Path(to): Path<u64>, body: Bytes) -> Response {
    if let Err(r) = check_to(&s, to) {
        return r;
    }
    let req: AppendEntriesRequest<TypeConfig> = match wire::decode(&body) {
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
    cbor(&s.raft.vote(req).await)
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
    let leader = s.raft.metrics().borrow().current_leader;
    let replies: Vec<wire::ForwardReply> = if leader == Some(s.node_id) {
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
        replies
    } else {
        vec![wire::ForwardReply::NotLeader { leader }; cmds.len()]
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
    let leader = s.raft.metrics().borrow().current_leader;
    let reply = match s.leader_service.get() {
        Some(service) if leader == Some(s.node_id) => {
            wire::RenewReply::Renewed(service.renew(&req.ids))
        }
        _ => wire::RenewReply::NotLeader { leader },
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
    let leader = s.raft.metrics().borrow().current_leader;
    let answer = match s.leader_service.get() {
        Some(service) if leader == Some(s.node_id) => service.report(req).await,
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
    let leader = s.raft.metrics().borrow().current_leader;
    let reply = if leader == Some(s.node_id) {
        Shared::reply(s.change_here(change).await)
    } else {
        Shared::reply(Err(crate::MemberError::NotLeader { leader }))
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
