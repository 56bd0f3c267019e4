//! Cluster status and liveness.

use axum::extract::State;
use axum::response::IntoResponse;
use muster_registry::{MemberChange, Role};
use muster_types::{
    ClusterInfo, ClusterNode, ErrorBody, JoinRequest, NodeRole, TransferLeaderRequest,
};

use super::{ApiPath, Call, JsonBody};
use crate::HttpStateRef;
use crate::error::ApiError;
use crate::openapi::{BodyErrors, WriteErrors};

/// Node id, leader, members and indexes, and every member of the cluster
/// with its role, addresses, last contact and match index.
#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    responses((status = 200, description = "Cluster status", body = ClusterInfo)))]
pub async fn cluster(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
) -> Result<axum::Json<ClusterInfo>, ApiError> {
    info(&state, &caller)
}

/// Adds a node, from any member (forwarded to the leader): it joins as a
/// learner, is promoted to voter once it holds the log, and the answer
/// comes once it votes. The node must run with `--join` and answer at
/// `cluster_addr` (with cluster mTLS, holding a certificate of the
/// cluster's CA); it is recorded at the cluster address it advertises.
/// Adding a member again at the same address changes nothing; an id that
/// was removed is refused, for good.
#[utoipa::path(post, path = "/v1/cluster/members", tag = "operations",
    request_body = JoinRequest,
    responses((status = 200, description = "The node is a voter; this node's view of the cluster", body = ClusterInfo),
              (status = 400, description = "Invalid input", body = ErrorBody),
              (status = 409, description = "membership_refused: a removed id, an id or address in use, another change under way, a node that cannot be reached as that id (not running, or refused by cluster mTLS; nothing changed), or a node that did not catch up", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn join(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    JsonBody(body): JsonBody<JoinRequest>,
) -> Result<axum::Json<ClusterInfo>, ApiError> {
    let change = MemberChange::Add {
        id: body.id,
        cluster_addr: body.cluster_addr,
    };
    let status = state.registry.change_members(&caller, change).await?;
    Ok(to_info(status))
}

/// Removes a node (voter or learner), from any member (forwarded to the
/// leader); its id is retired and never accepted again. The leader cannot
/// remove itself: move leadership first. Removing a removed node again
/// changes nothing.
#[utoipa::path(delete, path = "/v1/cluster/members/{id}", tag = "operations",
    params(("id" = u64, Path, description = "Node id")),
    responses((status = 200, description = "Removed; this node's view of the cluster", body = ClusterInfo),
              (status = 400, description = "Invalid input", body = ErrorBody),
              (status = 409, description = "membership_refused: not a member, or the leader itself", body = ErrorBody),
              WriteErrors))]
pub async fn leave(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath(id): ApiPath<u64>,
) -> Result<axum::Json<ClusterInfo>, ApiError> {
    let change = MemberChange::Remove { id };
    let status = state.registry.change_members(&caller, change).await?;
    Ok(to_info(status))
}

/// Moves leadership to `to` (or the most up-to-date other voter), from any
/// member. Writes are held for the ~1-2 s it takes (until the voters'
/// leader lease runs out) and then go to the new leader.
#[utoipa::path(post, path = "/v1/cluster/transfer-leader", tag = "operations",
    request_body = TransferLeaderRequest,
    responses((status = 200, description = "Leadership moved; this node's view of the cluster", body = ClusterInfo),
              (status = 400, description = "Invalid input", body = ErrorBody),
              (status = 409, description = "membership_refused: the target is not a voter, or did not catch up", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn transfer_leader(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    JsonBody(body): JsonBody<TransferLeaderRequest>,
) -> Result<axum::Json<ClusterInfo>, ApiError> {
    let change = MemberChange::TransferLeader { to: body.to };
    let status = state.registry.change_members(&caller, change).await?;
    Ok(to_info(status))
}

fn info(
    state: &HttpStateRef,
    caller: &muster_registry::Caller,
) -> Result<axum::Json<ClusterInfo>, ApiError> {
    Ok(to_info(state.registry.cluster(caller)?))
}

fn to_info(i: muster_registry::ClusterStatus) -> axum::Json<ClusterInfo> {
    axum::Json(ClusterInfo {
        node_id: i.node_id,
        leader: i.leader,
        members: i.members,
        commit_index: i.commit_index,
        applied_index: i.applied_index,
        self_preservation: i.self_preservation,
        preserved_leases: i.preserved_leases,
        lapsed_leases: i.lapsed_leases,
        nodes: i
            .nodes
            .into_iter()
            .map(|n| ClusterNode {
                id: n.id,
                role: match n.role {
                    Role::Leader => NodeRole::Leader,
                    Role::Follower => NodeRole::Follower,
                    Role::Learner => NodeRole::Learner,
                },
                cluster_addr: n.cluster_addr,
                reachable: n.reachable,
                http_addr: n.http_addr,
                match_index: n.match_index,
                last_contact_ms: n.last_contact_ms,
            })
            .collect(),
    })
}

/// Health: 200 while the agent serves and can make writes durable; 507
/// `storage_full` or 503 `storage_failed` while it cannot (reads still
/// answer), and 503 `node_removed` once it was removed from its cluster, so
/// a supervisor or load balancer never sees a zombie as healthy.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Serving, and writes are durable"),
        (status = 503, description = "storage_failed: writes cannot be made durable; node_removed: this node was removed from its cluster", body = ErrorBody),
        (status = 507, description = "storage_full: the data directory's disk is full", body = ErrorBody)))]
pub async fn healthz(State(state): State<HttpStateRef>) -> Result<impl IntoResponse, ApiError> {
    state.registry.healthy()?;
    Ok(axum::Json(serde_json::json!({"status": "ok"})))
}
