//! Cluster status and liveness.

use axum::extract::State;
use axum::response::IntoResponse;
use muster_registry::Role;
use muster_types::{ClusterInfo, ClusterNode, ErrorBody, NodeRole};

use super::Call;
use crate::HttpStateRef;
use crate::error::ApiError;

/// Node id, leader, members and indexes, and every member of the cluster
/// with its role, addresses, last contact and match index.
#[utoipa::path(get, path = "/v1/cluster", tag = "operations",
    responses((status = 200, description = "Cluster status", body = ClusterInfo)))]
pub async fn cluster(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
) -> Result<axum::Json<ClusterInfo>, ApiError> {
    let i = state.registry.cluster(&caller)?;
    Ok(axum::Json(ClusterInfo {
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
                http_addr: n.http_addr,
                match_index: n.match_index,
                last_contact_ms: n.last_contact_ms,
            })
            .collect(),
    }))
}

/// Health: 200 while the agent serves and can make writes durable; 507
/// `storage_full` or 503 `storage_failed` while it cannot (reads still
/// answer), so a supervisor or load balancer never sees a zombie as healthy.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Serving, and writes are durable"),
        (status = 503, description = "storage_failed: writes cannot be made durable", body = ErrorBody),
        (status = 507, description = "storage_full: the data directory's disk is full", body = ErrorBody)))]
pub async fn healthz(State(state): State<HttpStateRef>) -> Result<impl IntoResponse, ApiError> {
    state.registry.writable()?;
    Ok(axum::Json(serde_json::json!({"status": "ok"})))
}
