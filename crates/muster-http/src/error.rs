//! The one place where failures become HTTP statuses and stable JSON codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_registry::RegistryError;
use muster_types::{ErrorBody, ErrorDetail, FieldError};

/// An error answered to an API client.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Offending input field, if any.
    pub field: Option<String>,
    /// Seconds to wait before retrying (`Retry-After`), for refusals by a
    /// limit.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// Tells the client to retry after `secs` seconds (`Retry-After`).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Names the offending field.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 `invalid_parameter` for a bad query-string parameter.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).with_field(param)
    }

    /// 400 `invalid_field` for a bad body field.
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    /// 404 for a missing resource.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.code, e.message).with_field(e.field)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::Invalid(f) => f.into(),
            RegistryError::InstanceNotFound { .. } => ApiError::not_found("not_found", message),
            RegistryError::LeaseNotFound(_) => {
                ApiError::not_found("lease_not_found", message).with_field("lease")
            }
            RegistryError::CheckNotFound { .. } => ApiError::not_found("check_not_found", message),
            RegistryError::LeaseExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            RegistryError::NoLease { .. } => {
                ApiError::new(StatusCode::CONFLICT, "no_lease", message)
            }
            RegistryError::CommandChecksDisabled { field } => {
                ApiError::new(StatusCode::FORBIDDEN, "command_checks_disabled", message)
                    .with_field(field)
            }
            RegistryError::NotTtlCheck { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "not_ttl_check", message)
            }
            RegistryError::NotLeader { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message)
            }
            RegistryError::MembershipRefused(_) => {
                ApiError::new(StatusCode::CONFLICT, "membership_refused", message)
            }
            RegistryError::MembershipUnavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "membership_unavailable",
                message,
            ),
            RegistryError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            RegistryError::OutcomeUnknown { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown", message)
            }
            RegistryError::Removed { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "node_removed", message)
            }
            RegistryError::InvalidBackup(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_backup", message)
            }
            RegistryError::RestoreConflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "restore_conflict", message)
            }
            RegistryError::RestoreIo(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "restore_upload_failed", message)
            }
            RegistryError::PermissionDenied { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message)
            }
            RegistryError::InvalidToken => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
            }
            RegistryError::AclDisabled => {
                ApiError::new(StatusCode::BAD_REQUEST, "acl_disabled", message)
            }
            RegistryError::AclBootstrapped => {
                ApiError::new(StatusCode::CONFLICT, "acl_bootstrapped", message)
            }
            RegistryError::TokenNotFound(_) => ApiError::not_found("token_not_found", message),
            RegistryError::PolicyNotFound(_) => ApiError::not_found("policy_not_found", message),
            RegistryError::Storage(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            RegistryError::Unwritable { full: true, .. } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", message)
            }
            RegistryError::Unwritable { full: false, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_failed", message)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"muster\""),
            );
        }
        res
    }
}
