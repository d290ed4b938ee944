//! Extractors whose rejections speak API.md's error format: JSON bodies,
//! the admin API's callers by role, and the client address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use trekker_domain::access::Role;

use super::{ApiError, ErrorCode};
use crate::AppState;
use crate::access::{Caller, Refusal};

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

/// `Query<T>` whose rejection is INVALID_INPUT (400) in the API's error
/// body (axum's own answers in plain text).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(_) => Err(ApiError::invalid_input(
                "A query parameter is not of the type this endpoint takes (a number where one is expected?).",
            )),
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

/// The caller of an admin endpoint, whatever its role
/// (`Authorization: Bearer <ADMIN_TOKEN or an API key>`).
async fn caller(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    state.keys.caller(bearer).await.map_err(|refusal| match refusal {
        Refusal::Disabled => {
            ApiError::new(ErrorCode::Forbidden, "The admin API is disabled on this node: set ADMIN_TOKEN to enable it.")
        }
        Refusal::Unauthenticated => {
            ApiError::new(ErrorCode::Unauthorized, "A valid admin bearer token or API key is required.")
        }
        Refusal::Unavailable(error) => ApiError::from_store(error),
    })
}

/// A caller of role `needed` or above; 403 FORBIDDEN for the others.
async fn caller_with(parts: &Parts, state: &AppState, needed: Role) -> Result<Caller, ApiError> {
    let caller = caller(parts, state).await?;
    if caller.role.includes(needed) {
        Ok(caller)
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("This key's role ({}) may not do this; it takes the {needed} role.", caller.role),
        ))
    }
}

macro_rules! role_extractor {
    ($(#[$doc:meta])* $name:ident, $role:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(
            /// Who it is (the audit's actor).
            #[allow(dead_code)] // Read by the handlers that record their caller.
            pub Caller,
        );

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
                caller_with(parts, state, $role).await.map(Self)
            }
        }
    };
}

role_extractor!(
    /// A caller that may read (role `viewer` or above).
    Viewer,
    Role::Viewer
);
role_extractor!(
    /// A caller that may act on bots (role `operator` or above).
    Operator,
    Role::Operator
);
role_extractor!(
    /// A caller that may do everything (role `admin`).
    Admin,
    Role::Admin
);

/// The client's address (the TCP peer; proxies are not trusted).
pub(crate) fn client_ip(request: &Request) -> IpAddr {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]))
}
