//! The one place where errors become HTTP answers (API.md, "Errors").
//!
//! Every error body is `{"success": false, "code", "message"}`; the code
//! and status come from the table in API.md. Internal details are logged
//! here and never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use trekker_app::AppError;
use trekker_store::StoreError;

/// Seconds a guest is asked to wait when every server is full.
pub const ALL_FULL_RETRY_AFTER_SECS: u64 = 60;

/// An error answer: status, stable code, and a message for a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

/// The error body, also used in the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// A stable code from API.md's table, e.g. `INVALID_INPUT`.
    pub code: String,
    /// Text for a person.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_INPUT", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    pub fn payload_too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", "The request body is larger than 5 MiB.")
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Something went wrong on our side. Please try again later.",
        )
    }

    /// A store error that is not the caller's: logged in full, answered generically.
    pub fn from_store(err: StoreError) -> Self {
        if err.is_retryable() {
            tracing::warn!(error = ?err, "database busy or unreachable");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "INTERNAL",
                "The database is busy. Please try again shortly.",
            )
            .with_retry_after(1);
        }
        tracing::error!(error = ?err, "store error");
        Self::internal()
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> Self {
        use StatusCode as S;
        let message = err.to_string();
        match err {
            AppError::InvalidInput(_) => Self::new(S::BAD_REQUEST, "INVALID_INPUT", message),
            AppError::InvalidSession(_) => Self::new(S::BAD_REQUEST, "INVALID_SESSION", message),
            AppError::InvalidCredentials(_) => Self::new(S::BAD_REQUEST, "INVALID_CREDENTIALS", message),
            AppError::PhoneMismatch { .. } => Self::new(S::BAD_REQUEST, "PHONE_MISMATCH", message),
            AppError::UnknownServer(_) => Self::new(S::NOT_FOUND, "UNKNOWN_SERVER", message),
            AppError::RegistryInconsistent(_) => Self::new(S::NOT_FOUND, "REGISTRY_INCONSISTENT", message),
            AppError::ServerMismatch { .. } => Self::new(S::CONFLICT, "SERVER_MISMATCH", message),
            AppError::ServerFull(_) => Self::new(S::CONFLICT, "SERVER_FULL", message),
            AppError::AllServersFull => Self::new(S::SERVICE_UNAVAILABLE, "ALL_SERVERS_FULL", message)
                .with_retry_after(ALL_FULL_RETRY_AFTER_SECS),
            AppError::RemoteUpdateFailed { .. } => Self::new(S::BAD_GATEWAY, "REMOTE_UPDATE_FAILED", message),
            AppError::NotFound(_) => Self::new(S::NOT_FOUND, "NOT_FOUND", message),
            AppError::Conflict(_) => Self::new(S::CONFLICT, "CONFLICT", message),
            AppError::Store(err) => Self::from_store(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { success: false, code: self.code.to_owned(), message: self.message };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint.")
}

/// API.md's table has no 405 row: a known path with another method is
/// "unknown path" (404 NOT_FOUND), with a message that says which.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::not_found("This endpoint does not take that method.")
}
