//! The JSON error type every route answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sbx_api::ErrorBody;

/// An HTTP error rendered as `{"code": "...", "message": "..."}`.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Maps an I/O error on `what` to the closest HTTP status.
    pub fn io(what: &str, err: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        let message = format!("{what}: {err}");
        match err.kind() {
            ErrorKind::NotFound => Self::not_found(message),
            ErrorKind::PermissionDenied => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            ErrorKind::AlreadyExists => Self::conflict(message),
            ErrorKind::InvalidInput | ErrorKind::InvalidData => Self::bad_request(message),
            _ => match err.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::EDQUOT) => Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "insufficient_storage",
                    message,
                ),
                Some(libc::ENOTDIR) | Some(libc::EISDIR) | Some(libc::ENAMETOOLONG) => {
                    Self::bad_request(message)
                }
                _ => Self::internal(message),
            },
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

/// Parses a JSON request body, answering 400 (not axum's plain-text 422) on error.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AppError> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::bad_request(format!("invalid JSON body: {e}")))
}
