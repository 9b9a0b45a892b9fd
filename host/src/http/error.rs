//! JSON errors with a stable code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<crate::model::FieldError>>,
    /// The spawn a conflict is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spawn_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
            fields: None,
            spawn_id: None,
        }
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token: send Authorization: Bearer <the host's API token>",
        )
    }
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", msg)
    }
}

impl From<crate::runtime::plugin::CallError> for ApiError {
    fn from(e: crate::runtime::plugin::CallError) -> Self {
        use crate::runtime::plugin::CallError;
        match &e {
            CallError::Plugin(_) => {
                Self::new(StatusCode::BAD_GATEWAY, "plugin_error", e.to_string())
            }
            CallError::Failed { .. } => {
                Self::new(StatusCode::BAD_GATEWAY, "plugin_failed", e.to_string())
            }
            CallError::Busy { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "plugin_busy",
                e.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}
