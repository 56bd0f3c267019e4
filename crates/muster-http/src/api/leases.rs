//! Lease routes: create, renew (one or many), inspect, revoke.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_registry::LeaseStatus;
use muster_types::{
    CreateLeaseRequest, ErrorBody, LeaseInfo, RenewManyRequest, RenewManyResponse, RenewResponse,
    WriteResponse, format_duration, format_lease_id, parse_lease_id, validate_ttl,
};

use super::instances::renewed;
use super::{ApiPath, Call, JsonBody, Params, indexed};
use crate::HttpStateRef;
use crate::error::ApiError;
use crate::openapi::{BodyErrors, WriteErrors};

fn lease_id(s: &str) -> Result<u64, ApiError> {
    parse_lease_id(s).ok_or_else(|| {
        ApiError::bad_param("id", format!("{s:?} is not a lease id (16 hex digits)"))
    })
}

fn info(l: &LeaseStatus) -> LeaseInfo {
    LeaseInfo {
        id: format_lease_id(l.id),
        ttl: format_duration(l.ttl),
        ttl_ms: l.ttl.as_millis() as u64,
        instances: l.instances,
        index: l.index,
    }
}

/// Create a lease. Instances registered with `lease` set to its id live
/// while it is renewed.
#[utoipa::path(post, path = "/v1/leases", tag = "leases",
    request_body = CreateLeaseRequest,
    responses((status = 201, description = "Created", body = LeaseInfo, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid TTL, body or parameter", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn create(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    JsonBody(body): JsonBody<CreateLeaseRequest>,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let ttl = validate_ttl("ttl", &body.ttl)?;
    let lease = state.registry.create_lease(&caller, ttl).await?;
    let mut resp = indexed(lease.index, &info(&lease));
    *resp.status_mut() = StatusCode::CREATED;
    Ok(resp)
}

/// One lease.
#[utoipa::path(get, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses((status = 200, description = "The lease", body = LeaseInfo, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Not a lease id, or a parameter given", body = ErrorBody),
              (status = 404, description = "No such lease", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let found = state.registry.lease(&caller, lease_id(&id)?)?;
    Ok(indexed(found.index, &info(&found.value)))
}

/// Renew a lease (in memory on the leader; not a log write).
#[utoipa::path(put, path = "/v1/leases/{id}/renew", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses((status = 200, description = "Renewed", body = RenewResponse),
              (status = 400, description = "Not a lease id, or a parameter given", body = ErrorBody),
              (status = 404, description = "No such lease: create a new one and re-register", body = ErrorBody),
              WriteErrors))]
pub async fn renew(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    Ok(renewed(
        state.registry.renew_lease(&caller, lease_id(&id)?).await?,
    ))
}

/// Renew many leases in one request.
#[utoipa::path(post, path = "/v1/leases/renew", tag = "leases",
    request_body = RenewManyRequest,
    responses((status = 200, description = "Which were renewed and which are unknown", body = RenewManyResponse),
              (status = 400, description = "Invalid id, too many ids, a malformed body or a parameter given", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn renew_many(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    JsonBody(body): JsonBody<RenewManyRequest>,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    // The registry refuses more than it renews in one call.
    let ids = body
        .ids
        .iter()
        .map(|s| {
            parse_lease_id(s)
                .ok_or_else(|| ApiError::bad_field("ids", format!("{s:?} is not a lease id")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = state.registry.renew_leases(&caller, &ids).await?;
    Ok(axum::Json(RenewManyResponse {
        renewed: out.renewed.into_iter().map(format_lease_id).collect(),
        not_found: out.not_found.into_iter().map(format_lease_id).collect(),
    })
    .into_response())
}

/// Revoke a lease: every instance attached to it is removed.
#[utoipa::path(delete, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses((status = 200, description = "Revoked", body = WriteResponse, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Not a lease id, or a parameter given", body = ErrorBody),
              (status = 404, description = "No such lease", body = ErrorBody),
              WriteErrors))]
pub async fn revoke(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath(id): ApiPath<String>,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let w = state.registry.revoke_lease(&caller, lease_id(&id)?).await?;
    Ok(indexed(
        w.index,
        &WriteResponse {
            index: w.index,
            removed: w.value,
        },
    ))
}
