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

/// Every error code of API.md's table with its HTTP status: the one list
/// of codes in the code base (also published in the OpenAPI document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidInput,
    InvalidSession,
    InvalidCredentials,
    PhoneMismatch,
    UnknownServer,
    RegistryInconsistent,
    ServerMismatch,
    AccountMismatch,
    ServerFull,
    AllServersFull,
    RemoteUpdateFailed,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    IdempotencyMismatch,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 20] = [
        Self::InvalidInput,
        Self::InvalidSession,
        Self::InvalidCredentials,
        Self::PhoneMismatch,
        Self::UnknownServer,
        Self::RegistryInconsistent,
        Self::ServerMismatch,
        Self::AccountMismatch,
        Self::ServerFull,
        Self::AllServersFull,
        Self::RemoteUpdateFailed,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::Conflict,
        Self::IdempotencyMismatch,
        Self::PayloadTooLarge,
        Self::RateLimited,
        Self::ServiceUnavailable,
        Self::Internal,
    ];

    /// The code `wire` names (as another node sent it), if it is one.
    pub fn from_wire(wire: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == wire)
    }

    /// The code as clients see it, e.g. `INVALID_INPUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "INVALID_INPUT",
            Self::InvalidSession => "INVALID_SESSION",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::PhoneMismatch => "PHONE_MISMATCH",
            Self::UnknownServer => "UNKNOWN_SERVER",
            Self::RegistryInconsistent => "REGISTRY_INCONSISTENT",
            Self::ServerMismatch => "SERVER_MISMATCH",
            Self::AccountMismatch => "ACCOUNT_MISMATCH",
            Self::ServerFull => "SERVER_FULL",
            Self::AllServersFull => "ALL_SERVERS_FULL",
            Self::RemoteUpdateFailed => "REMOTE_UPDATE_FAILED",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict => "CONFLICT",
            Self::IdempotencyMismatch => "IDEMPOTENCY_MISMATCH",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }

    pub fn status(self) -> StatusCode {
        use StatusCode as S;
        match self {
            Self::InvalidInput | Self::InvalidSession | Self::InvalidCredentials | Self::PhoneMismatch => {
                S::BAD_REQUEST
            }
            Self::UnknownServer | Self::RegistryInconsistent | Self::NotFound => S::NOT_FOUND,
            Self::ServerMismatch | Self::AccountMismatch | Self::ServerFull | Self::Conflict => S::CONFLICT,
            Self::AllServersFull | Self::ServiceUnavailable => S::SERVICE_UNAVAILABLE,
            Self::RemoteUpdateFailed => S::BAD_GATEWAY,
            Self::Unauthorized => S::UNAUTHORIZED,
            Self::Forbidden => S::FORBIDDEN,
            Self::IdempotencyMismatch => S::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => S::PAYLOAD_TOO_LARGE,
            Self::RateLimited => S::TOO_MANY_REQUESTS,
            Self::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answer: a stable code (which fixes the status) and a message
/// for a person.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for 429, 503 and a busy database.
    pub retry_after: Option<u64>,
    /// With ACCOUNT_MISMATCH: the credential review an admin decides.
    pub review_id: Option<String>,
}

/// The error body, also used in the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// A stable code from API.md's table.
    pub code: ErrorCode,
    /// Text for a person.
    pub message: String,
    /// ACCOUNT_MISMATCH only: the credential review waiting for an admin.
    #[serde(rename = "reviewId", skip_serializing_if = "Option::is_none")]
    pub review_id: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None, review_id: None }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn payload_too_large() -> Self {
        Self::new(ErrorCode::PayloadTooLarge, "The request body is larger than 5 MiB.")
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::Internal, "Something went wrong on our side. Please try again later.")
    }

    /// The body of this answer.
    pub fn body(&self) -> ErrorBody {
        ErrorBody { success: false, code: self.code, message: self.message.clone(), review_id: self.review_id.clone() }
    }

    /// A store error that is not the caller's: logged in full, answered generically.
    pub fn from_store(err: StoreError) -> Self {
        if err.is_retryable() {
            tracing::warn!(error = %crate::error_chain(&err), "database busy or unreachable");
            if let Some(hint) = err.pooler_hint() {
                tracing::error!("{hint}");
            }
            return Self::new(
                ErrorCode::ServiceUnavailable,
                "The database cannot be reached or is too busy right now. Please try again shortly.",
            )
            .with_retry_after(2);
        }
        if let Some(hint) = err.pooler_hint() {
            tracing::error!("{hint}");
        }
        tracing::error!(error = ?err, "store error");
        Self::internal()
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> Self {
        use ErrorCode as C;
        let message = err.to_string();
        let code = match err {
            AppError::InvalidInput(_) => C::InvalidInput,
            AppError::InvalidSession(_) => C::InvalidSession,
            AppError::InvalidCredentials(_) => C::InvalidCredentials,
            AppError::PhoneMismatch { .. } => C::PhoneMismatch,
            AppError::UnknownServer(_) => C::UnknownServer,
            AppError::RegistryInconsistent(_) => C::RegistryInconsistent,
            AppError::ServerMismatch { .. } => C::ServerMismatch,
            AppError::ServerFull(_) => C::ServerFull,
            AppError::AllServersFull => {
                return Self::new(C::AllServersFull, message).with_retry_after(ALL_FULL_RETRY_AFTER_SECS);
            }
            AppError::RemoteUpdateFailed { .. } => C::RemoteUpdateFailed,
            AppError::NotFound(_) => C::NotFound,
            AppError::Conflict(_) => C::Conflict,
            AppError::IdempotencyMismatch => C::IdempotencyMismatch,
            AppError::AccountMismatch { review_id } => {
                return Self { review_id, ..Self::new(C::AccountMismatch, message) };
            }
            AppError::OlderSession => C::Conflict,
            AppError::Throttled { retry_after_secs, .. } => {
                return Self::new(C::RateLimited, message).with_retry_after(retry_after_secs.max(1));
            }
            AppError::Store(err) => return Self::from_store(err),
        };
        Self::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
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
