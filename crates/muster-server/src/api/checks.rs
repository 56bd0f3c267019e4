//! Checks and maintenance of one instance: add or remove a check, report a
//! TTL check, turn maintenance on and off.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use muster_catalog::Command;
use muster_types::{
    CheckReport, CheckSpec, ErrorBody, Health, Instance, MaintenanceRequest, validate_check,
};

use super::instances::refuse_command_checks;
use super::{JsonBody, Params, indexed};
use crate::AppStateRef;
use crate::checks::ReportError;
use crate::error::ApiError;

async fn write(state: &AppStateRef, cmd: Command) -> Result<Response, ApiError> {
    let applied = state.node.propose(cmd).await?;
    let out = applied.result?;
    let inst = out.instance.expect("instance commands yield the instance");
    Ok(indexed(applied.index, &*inst))
}

/// Turn maintenance on or off: in maintenance an instance is critical (out of
/// passing results) but stays registered.
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/maintenance", tag = "checks",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    request_body = MaintenanceRequest,
    responses((status = 200, description = "The instance", body = Instance),
              (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn maintenance(
    State(state): State<AppStateRef>,
    Path((service, id)): Path<(String, String)>,
    params: Params,
    JsonBody(body): JsonBody<MaintenanceRequest>,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    let reason = match (body.enabled, body.reason) {
        (false, _) => None,
        (true, r) => {
            let r = r.unwrap_or_else(|| "maintenance".into());
            if r.is_empty()
                || r.len() > muster_types::limits::MAX_META_VALUE_LEN
                || r.chars().any(char::is_control)
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_field",
                    "reason must be 1 to 512 printable characters",
                )
                .with_field("reason"));
            }
            Some(r)
        }
    };
    write(
        &state,
        Command::Maintenance {
            namespace: key.namespace.to_string(),
            service: key.service.to_string(),
            id,
            reason,
        },
    )
    .await
}

/// Add or replace one check of an instance (the id comes from the path).
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/checks/{check}", tag = "checks",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("check" = String, Path, description = "Check id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    request_body = CheckSpec,
    responses((status = 200, description = "The instance", body = Instance),
              (status = 400, description = "Invalid check", body = ErrorBody),
              (status = 403, description = "Command checks are disabled", body = ErrorBody),
              (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn put_check(
    State(state): State<AppStateRef>,
    Path((service, id, check)): Path<(String, String, String)>,
    params: Params,
    JsonBody(mut spec): JsonBody<CheckSpec>,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    if spec.id.as_ref().is_some_and(|i| *i != check) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "id in the body differs from the path",
        )
        .with_field("id"));
    }
    spec.id = Some(check);
    let check = validate_check(0, &spec)?;
    refuse_command_checks(&state, std::slice::from_ref(&check))?;
    {
        let c = state.node.catalog().read().expect("catalog lock");
        let inst = c.instance(&key, &id).ok_or_else(|| {
            ApiError::not_found(
                "not_found",
                format!("instance {id:?} of service {:?} not found", key.service),
            )
        })?;
        if inst.checks.len() >= muster_types::limits::MAX_CHECKS
            && !inst.checks.iter().any(|c| c.id == check.id)
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "the instance already has the most checks allowed",
            )
            .with_field("checks"));
        }
    }
    write(
        &state,
        Command::PutCheck {
            namespace: key.namespace.to_string(),
            service: key.service.to_string(),
            id,
            check,
        },
    )
    .await
}

/// Remove one check of an instance.
#[utoipa::path(delete, path = "/v1/services/{service}/instances/{id}/checks/{check}", tag = "checks",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("check" = String, Path, description = "Check id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    responses((status = 200, description = "The instance", body = Instance),
              (status = 404, description = "No such instance or check", body = ErrorBody)))]
pub async fn delete_check(
    State(state): State<AppStateRef>,
    Path((service, id, check)): Path<(String, String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    write(
        &state,
        Command::RemoveCheck {
            namespace: key.namespace.to_string(),
            service: key.service.to_string(),
            id,
            check,
        },
    )
    .await
}

/// Report a TTL check: `pass`, `warn` or `fail`, with optional output. A
/// report that confirms the current status writes nothing to the log.
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/checks/{check}/{status}", tag = "checks",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("check" = String, Path, description = "Check id"),
           ("status" = String, Path, description = "`pass`, `warn` or `fail`"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    request_body(content = CheckReport, description = "Optional output"),
    responses((status = 204, description = "Recorded"),
              (status = 400, description = "Not a TTL check, or a bad status", body = ErrorBody),
              (status = 404, description = "No such instance or check", body = ErrorBody)))]
pub async fn report(
    State(state): State<AppStateRef>,
    Path((service, id, check, status)): Path<(String, String, String, String)>,
    params: Params,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let key = params.instance_key(service, &id)?;
    let health = match status.as_str() {
        "pass" => Health::Passing,
        "warn" => Health::Warning,
        "fail" => Health::Critical,
        other => {
            return Err(ApiError::bad_param(
                "status",
                format!("{other:?} must be pass, warn or fail"),
            ));
        }
    };
    let report: CheckReport = if body.is_empty() {
        CheckReport::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                format!("report body: {e}"),
            )
        })?
    };
    let output = report
        .output
        .unwrap_or_else(|| format!("reported {status}"));
    match state.checks.report(&key, &id, &check, health, output).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(ReportError::NotFound) => Err(ApiError::not_found(
            "check_not_found",
            format!("instance {id:?} has no check {check:?}"),
        )),
        Err(ReportError::NotTtl) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_ttl_check",
            format!("check {check:?} is not a TTL check; the registry runs it itself"),
        )),
        Err(ReportError::NotLeader) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
            "send check reports to the leader",
        )),
    }
}
