//! Checks and maintenance of one instance: add or remove a check, report a
//! TTL check, turn maintenance on and off.

use super::LimitedBody;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use muster_types::{
    CheckReport, CheckSpec, ErrorBody, Health, Instance, MaintenanceRequest, validate_check,
};

use super::{ApiPath, Call, JsonBody, Params, indexed};
use crate::HttpStateRef;
use crate::error::ApiError;
use crate::openapi::{BodyErrors, WriteErrors};
use crate::wire;

/// Turn maintenance on or off: in maintenance an instance is critical (out of
/// passing results) but stays registered.
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/maintenance", tag = "checks",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    request_body = MaintenanceRequest,
    responses((status = 200, description = "The instance", body = Instance, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid service name, id, namespace, parameter or body", body = ErrorBody),
              (status = 404, description = "No such instance", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn maintenance(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath((service, id)): ApiPath<(String, String)>,
    params: Params,
    JsonBody(body): JsonBody<MaintenanceRequest>,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    let reason = body
        .enabled
        .then(|| body.reason.unwrap_or_else(|| "maintenance".into()));
    let w = state
        .registry
        .maintenance(&caller, &key, &id, reason)
        .await?;
    Ok(indexed(w.index, &wire::instance(&w.value)))
}

/// Add or replace one check of an instance (the id comes from the path).
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/checks/{check}", tag = "checks",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("check" = String, Path, description = "Check id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    request_body = CheckSpec,
    responses((status = 200, description = "The instance", body = Instance, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid check", body = ErrorBody),
              (status = 403, description = "Command checks are disabled", body = ErrorBody),
              (status = 404, description = "No such instance", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn put_check(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath((service, id, check)): ApiPath<(String, String, String)>,
    params: Params,
    JsonBody(mut spec): JsonBody<CheckSpec>,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    if spec.id.as_ref().is_some_and(|i| *i != check) {
        return Err(ApiError::bad_field(
            "id",
            "id in the body differs from the path",
        ));
    }
    spec.id = Some(check);
    let check = validate_check(0, &spec)?;
    let w = state
        .registry
        .put_check(&caller, &key, &id, check.into())
        .await?;
    Ok(indexed(w.index, &wire::instance(&w.value)))
}

/// Remove one check of an instance.
#[utoipa::path(delete, path = "/v1/services/{service}/instances/{id}/checks/{check}", tag = "checks",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("check" = String, Path, description = "Check id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    responses((status = 200, description = "The instance", body = Instance, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid service name, id, check id, namespace or parameter", body = ErrorBody),
              (status = 404, description = "No such instance or check", body = ErrorBody),
              WriteErrors))]
pub async fn delete_check(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath((service, id, check)): ApiPath<(String, String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    let w = state
        .registry
        .remove_check(&caller, &key, &id, &check)
        .await?;
    Ok(indexed(w.index, &wire::instance(&w.value)))
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
              (status = 400, description = "Not a TTL check, a bad status, or a malformed body", body = ErrorBody),
              (status = 404, description = "No such instance or check", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn report(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath((service, id, check, status)): ApiPath<(String, String, String, String)>,
    params: Params,
    LimitedBody(body): LimitedBody,
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
    // The body is optional: an empty one is a report without output.
    let report: CheckReport = if body.is_empty() {
        CheckReport::default()
    } else {
        super::decode_json(&body)?
    };
    let output = report
        .output
        .unwrap_or_else(|| format!("reported {status}"));
    state
        .registry
        .report_check(&caller, &key, &id, &check, health, output)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
