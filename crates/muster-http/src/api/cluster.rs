//! Cluster status and liveness.

use axum::extract::State;
use axum::response::IntoResponse;
use muster_types::ClusterInfo;

use super::Call;
use crate::HttpStateRef;
use crate::error::ApiError;

/// Node id, leader, members and indexes.
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
    }))
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive")))]
pub async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}
