//! Extractors whose rejections speak API.md's error format: JSON bodies,
//! the admin bearer token, and the client address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::{ApiError, ErrorCode};
use crate::AppState;

/// `Json<T>` whose rejections are INVALID_INPUT (400) or PAYLOAD_TOO_LARGE
/// (413). The message never quotes the body: it may hold a credential.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

pub(crate) fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::invalid_input("Send the body as JSON with Content-Type: application/json.")
        }
        JsonRejection::JsonDataError(_) => {
            ApiError::invalid_input("The JSON body has a field of the wrong type for this endpoint.")
        }
        JsonRejection::JsonSyntaxError(_) => ApiError::invalid_input("The request body is not valid JSON."),
        _ => ApiError::invalid_input("The request body could not be read."),
    }
}

/// An authenticated admin (`Authorization: Bearer <ADMIN_TOKEN>`).
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.config.admin_token else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "The admin API is disabled on this node: set ADMIN_TOKEN to enable it.",
            ));
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim);
        match presented {
            Some(token) if tokens_match(token, expected.expose()) => Ok(Admin),
            _ => Err(ApiError::new(ErrorCode::Unauthorized, "A valid admin bearer token is required.")),
        }
    }
}

/// Compares in constant time: both sides are hashed first, so neither the
/// content nor the length of the token leaks through timing.
fn tokens_match(presented: &str, expected: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client's address (the TCP peer; proxies are not trusted).
pub(crate) fn client_ip(request: &Request) -> IpAddr {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

#[cfg(test)]
mod tests {
    use super::tokens_match;

    #[test]
    fn token_comparison() {
        assert!(tokens_match("secret", "secret"));
        assert!(!tokens_match("secret", "secreT"));
        assert!(!tokens_match("", "secret"));
    }
}
