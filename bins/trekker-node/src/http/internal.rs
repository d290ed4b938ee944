//! Node-to-node endpoints, behind the cross-tenancy token
//! (DESIGN.md, "Cross-tenancy token"; API.md, "Node-to-node endpoints").

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use trekker_app::telemetry;
use trekker_domain::ServerName;
use trekker_store::IdempotencyBegin;
use trekker_tenancy::verify::VerifyError;
use trekker_tenancy::wire::{CREDENTIALS_PATH, CredentialsUpdateBody, HEALTH_PATH, IDEMPOTENCY_HEADER};
use trekker_tenancy::{Claims, body_hash};

use super::{ApiError, ErrorBody};
use crate::{AppState, now_millis};

/// A command id is remembered this long (a day, like the outbox).
const IDEMPOTENCY_TTL_MS: i64 = 25 * 60 * 60 * 1000;
/// An in-progress command older than this is presumed dead and re-run.
const IDEMPOTENCY_STALE_MS: i64 = 60_000;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route(CREDENTIALS_PATH, post(receive_credentials)).route(HEALTH_PATH, get(health))
}

/// A verified node-to-node call: its token's claims and the exact body the
/// token was checked against.
pub struct NodeCall {
    pub claims: Claims,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Shows the claims only: the headers carry the token and the body a session ID.
impl std::fmt::Debug for NodeCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCall").field("claims", &self.claims).finish_non_exhaustive()
    }
}

impl FromRequest<AppState> for NodeCall {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state).await.map_err(|rejection| match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(),
            _ => ApiError::invalid_input("The request body could not be read."),
        })?;
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match state.verifier.verify(authorization, &method, &path, &body, now_millis()).await {
            Ok(claims) => Ok(Self { claims, headers, body }),
            Err(VerifyError::Refused(refusal)) => {
                metrics::counter!(telemetry::NODE_CALLS_REFUSED, "reason" => refusal.reason()).increment(1);
                tracing::warn!(reason = refusal.reason(), %path, "refused a node-to-node call");
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    format!("Node-to-node call refused: {refusal}."),
                ))
            }
            Err(VerifyError::Store(err)) => Err(ApiError::from_store(err)),
        }
    }
}

/// Applies credentials forwarded by another node to a bot hosted here.
#[utoipa::path(post, path = "/internal/tenants/bots/credentials", tag = "internal",
    params(("Idempotency-Key" = String, Header, description = "command id, the same across retries")),
    responses((status = 200, description = "{success, botId, server, credentialsVersion, restarted}"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(crate) async fn receive_credentials(State(state): State<AppState>, call: NodeCall) -> Result<Response, ApiError> {
    let key = call
        .headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 128)
        .ok_or_else(|| ApiError::invalid_input("An Idempotency-Key header (1 to 128 characters) is required."))?
        .to_owned();
    let fingerprint = body_hash(&call.body);
    let begun = state
        .store
        .begin_idempotent(&key, &fingerprint, now_millis(), IDEMPOTENCY_STALE_MS, IDEMPOTENCY_TTL_MS)
        .await
        .map_err(ApiError::from_store)?;
    match begun {
        IdempotencyBegin::Started => {}
        IdempotencyBegin::Done { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        IdempotencyBegin::InProgress => {
            return Err(ApiError::new(StatusCode::CONFLICT, "CONFLICT", "This command is still being applied."));
        }
        IdempotencyBegin::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_MISMATCH",
                "This Idempotency-Key was used with a different body.",
            ));
        }
    }
    let issuer = ServerName::parse(&call.claims.iss).map_err(|_| ApiError::internal())?;
    let result = match serde_json::from_slice::<CredentialsUpdateBody>(&call.body) {
        Ok(body) => state.trekker.apply_remote_credentials(&issuer, &body).await.map_err(ApiError::from),
        Err(_) => Err(ApiError::invalid_input("The request body is not a credentials update.")),
    };
    let (status, body) = match result {
        Ok(answer) => (StatusCode::OK, json!(answer)),
        // A failure on our side may succeed when retried: forget the key.
        Err(err) if err.status.is_server_error() => {
            if let Err(store_err) = state.store.abandon_idempotent(&key).await {
                tracing::warn!(error = ?store_err, "could not release an idempotency key");
            }
            return Err(err);
        }
        Err(err) => (err.status, json!({"success": false, "code": err.code, "message": err.message})),
    };
    let text = body.to_string();
    if let Err(err) = state.store.finish_idempotent(&key, status.as_u16(), &text).await {
        tracing::warn!(error = ?err, "could not store the answer of a command");
    }
    Ok((status, Json(body)).into_response())
}

/// Answers signed calls only.
#[utoipa::path(get, path = "/internal/tenants/health", tag = "internal",
    responses((status = 200, description = "{status: healthy, serverName}"), (status = 401, body = ErrorBody)))]
pub(crate) async fn health(State(state): State<AppState>, _call: NodeCall) -> Json<serde_json::Value> {
    Json(json!({"status": "healthy", "serverName": state.config.server_name.as_str()}))
}
