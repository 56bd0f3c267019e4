//! The one place where failures become HTTP statuses and stable JSON codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_catalog::ApplyError;
use muster_raft::ProposeError;
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
}

impl ApiError {
    /// Builds an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
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

    /// 404 for a missing resource.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        let status = match e.code {
            "not_supported" => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code, e.message).with_field(e.field)
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match &e {
            ApplyError::UnknownLease(_) => {
                ApiError::not_found("lease_not_found", e.to_string()).with_field("lease")
            }
            ApplyError::LeaseExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ApplyError::UnknownInstance { .. } => ApiError::not_found("not_found", e.to_string()),
            ApplyError::UnknownCheck { .. } => {
                ApiError::not_found("check_not_found", e.to_string())
            }
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                format!("this node cannot accept writes now: {e}"),
            ),
            ProposeError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the registry is shutting down",
            ),
            ProposeError::Fatal(m) => {
                tracing::error!(error = %m, "write failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the write could not be made durable: {m}"),
                )
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
        (self.status, axum::Json(body)).into_response()
    }
}
