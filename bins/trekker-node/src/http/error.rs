//! The one place where errors become HTTP answers (API.md, "Errors").
//!
//! Every error body is `{"success": false, "code", "message"}`; the code
//! and status come from the table in API.md. Internal details are logged
//! here and never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use trekker_store::StoreError;

/// An error answer: status, stable code, and a message for a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    code: &'a str,
    message: &'a str,
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

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Something went wrong on our side. Please try again later.",
        )
    }

    /// A database error that is not the caller's: logged in full, answered generically.
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { success: false, code: self.code, message: &self.message };
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
