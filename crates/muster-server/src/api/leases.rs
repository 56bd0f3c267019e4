//! Lease routes: create, renew (one or many), inspect, revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_catalog::Command;
use muster_types::{
    CreateLeaseRequest, ErrorBody, LeaseInfo, RenewManyRequest, RenewManyResponse, RenewResponse,
    WriteResponse, format_duration, format_lease_id, limits, parse_lease_id, validate_ttl,
};

use super::instances::{new_lease_id, renew_lease};
use super::{JsonBody, Params, indexed};
use crate::AppStateRef;
use crate::error::ApiError;
use crate::leases::RenewError;

fn lease_id(s: &str) -> Result<u64, ApiError> {
    parse_lease_id(s).ok_or_else(|| {
        ApiError::bad_param("id", format!("{s:?} is not a lease id (16 hex digits)"))
    })
}

fn info(l: &muster_catalog::Lease) -> LeaseInfo {
    LeaseInfo {
        id: format_lease_id(l.id),
        ttl: format_duration(std::time::Duration::from_millis(l.ttl_ms)),
        ttl_ms: l.ttl_ms,
        instances: l.instances.len() as u64,
        index: l.index,
    }
}

/// Create a lease. Instances registered with `lease` set to its id live
/// while it is renewed.
#[utoipa::path(post, path = "/v1/leases", tag = "leases",
    request_body = CreateLeaseRequest,
    responses((status = 201, description = "Created", body = LeaseInfo),
              (status = 400, description = "Invalid TTL", body = ErrorBody)))]
pub async fn create(
    State(state): State<AppStateRef>,
    params: Params,
    JsonBody(body): JsonBody<CreateLeaseRequest>,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let ttl = validate_ttl("ttl", &body.ttl)?;
    let id = new_lease_id();
    let applied = state
        .node
        .propose(Command::CreateLease {
            id,
            ttl_ms: ttl.as_millis() as u64,
        })
        .await?;
    applied.result?;
    let c = state.node.catalog().read().expect("catalog lock");
    // A racing revoke may already have removed it; report what was created.
    let body = c.lease(id).map(info).unwrap_or(LeaseInfo {
        id: format_lease_id(id),
        ttl: format_duration(ttl),
        ttl_ms: ttl.as_millis() as u64,
        instances: 0,
        index: applied.index,
    });
    drop(c);
    let mut resp = indexed(applied.index, &body);
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// One lease.
#[utoipa::path(get, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses((status = 200, description = "The lease", body = LeaseInfo),
              (status = 404, description = "No such lease", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let id = lease_id(&id)?;
    let c = state.node.catalog().read().expect("catalog lock");
    let l = c.lease(id).ok_or_else(|| {
        ApiError::not_found(
            "lease_not_found",
            format!("lease {} not found", format_lease_id(id)),
        )
    })?;
    Ok(indexed(c.applied_index(), &info(l)))
}

/// Renew a lease (in memory on the leader; not a log write).
#[utoipa::path(put, path = "/v1/leases/{id}/renew", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses((status = 200, description = "Renewed", body = RenewResponse),
              (status = 404, description = "No such lease: create a new one and re-register", body = ErrorBody)))]
pub async fn renew(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    renew_lease(&state, lease_id(&id)?)
}

/// Renew many leases in one request.
#[utoipa::path(post, path = "/v1/leases/renew", tag = "leases",
    request_body = RenewManyRequest,
    responses((status = 200, description = "Which were renewed and which are unknown", body = RenewManyResponse),
              (status = 400, description = "Invalid id or too many ids", body = ErrorBody)))]
pub async fn renew_many(
    State(state): State<AppStateRef>,
    params: Params,
    JsonBody(body): JsonBody<RenewManyRequest>,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    if body.ids.len() > limits::MAX_RENEW_BATCH {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!(
                "{} ids given; at most {} per request",
                body.ids.len(),
                limits::MAX_RENEW_BATCH
            ),
        )
        .with_field("ids"));
    }
    let ids = body
        .ids
        .iter()
        .map(|s| {
            parse_lease_id(s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_field",
                    format!("{s:?} is not a lease id"),
                )
                .with_field("ids")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = RenewManyResponse {
        renewed: Vec::new(),
        not_found: Vec::new(),
    };
    for id in ids {
        match state.leases.renew(id) {
            Ok(_) => out.renewed.push(format_lease_id(id)),
            Err(RenewError::NotFound) => out.not_found.push(format_lease_id(id)),
            Err(RenewError::NotLeader) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_leader",
                    "send renewals to the leader",
                ));
            }
        }
    }
    Ok(axum::Json(out).into_response())
}

/// Revoke a lease: every instance attached to it is removed.
#[utoipa::path(delete, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses((status = 200, description = "Revoked", body = WriteResponse),
              (status = 404, description = "No such lease", body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppStateRef>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let id = lease_id(&id)?;
    let applied = state.node.propose(Command::RevokeLease { id }).await?;
    let out = applied.result?;
    Ok(indexed(
        applied.index,
        &WriteResponse {
            index: applied.index,
            removed: out.removed,
        },
    ))
}
