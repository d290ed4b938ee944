//! Node-to-node endpoints, behind the cross-tenancy token
//! (DESIGN.md, "Cross-tenancy token"; API.md, "Node-to-node endpoints").

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use trekker_app::idempotency::{Attempt, Reply};
use trekker_app::telemetry;
use trekker_domain::ServerName;
use trekker_tenancy::Claims;
use trekker_tenancy::verify::VerifyError;
use trekker_tenancy::wire::{CREDENTIALS_PATH, CredentialsUpdateBody, HEALTH_PATH, IDEMPOTENCY_HEADER};

use super::{ApiError, ErrorBody, ErrorCode};
use crate::AppState;

/// How often one refusal reason is logged at most.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

static REFUSAL_LOG: LogThrottle = LogThrottle::new(REFUSAL_LOG_EVERY);

/// Lets one log line per key through per interval.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    every: std::time::Duration,
    /// Per key: when it was last logged, and how many were held back since.
    seen: std::sync::Mutex<Vec<(&'static str, std::time::Instant, u64)>>,
}

impl LogThrottle {
    pub(crate) const fn new(every: std::time::Duration) -> Self {
        Self { every, seen: std::sync::Mutex::new(Vec::new()) }
    }

    /// `Some(held back since the last line)` when this one may be logged.
    pub(crate) fn admit(&self, key: &'static str, now: std::time::Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.iter_mut().find(|(k, ..)| *k == key) {
            Some((_, last, held)) if now.duration_since(*last) < self.every => {
                *held = held.saturating_add(1);
                None
            }
            Some((_, last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                seen.push((key, now, 0));
                Some(0)
            }
        }
    }
}

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
        match state.verifier.verify(authorization, &method, &path, &body, state.trekker.now()).await {
            Ok(claims) => Ok(Self { claims, headers, body }),
            Err(VerifyError::Refused(refusal)) => {
                metrics::counter!(telemetry::NODE_CALLS_REFUSED, "reason" => refusal.reason()).increment(1);
                // A flood of bad calls must not flood the log: once per
                // reason per interval, with how many were not logged.
                if let Some(unlogged) = REFUSAL_LOG.admit(refusal.reason(), std::time::Instant::now()) {
                    tracing::warn!(reason = refusal.reason(), %path, unlogged, "refused a node-to-node call");
                }
                Err(ApiError::new(ErrorCode::Unauthorized, format!("Node-to-node call refused: {refusal}.")))
            }
            Err(VerifyError::Store(err)) => Err(ApiError::from_store(err)),
        }
    }
}

/// Applies credentials forwarded by another node to a bot hosted here,
/// once per `Idempotency-Key` (the protocol is `Trekker::run_idempotent`).
#[utoipa::path(post, path = "/internal/tenants/bots/credentials", tag = "internal",
    params(("Idempotency-Key" = String, Header, description = "command id, the same across retries")),
    responses((status = 200, description = "{success, botId, server, credentialsVersion, restarted}"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(crate) async fn receive_credentials(State(state): State<AppState>, call: NodeCall) -> Result<Response, ApiError> {
    let key = call.headers.get(IDEMPOTENCY_HEADER).and_then(|v| v.to_str().ok());
    let issuer = ServerName::parse(&call.claims.iss).map_err(|_| ApiError::internal())?;
    let trekker = &state.trekker;
    let apply = || async {
        let applied = match serde_json::from_slice::<CredentialsUpdateBody>(&call.body) {
            Ok(body) => trekker.apply_remote_credentials(&issuer, &body).await.map_err(ApiError::from),
            Err(_) => Err(ApiError::invalid_input("The request body is not a credentials update.")),
        };
        match applied {
            Ok(answer) => Attempt::Answer(Reply { status: StatusCode::OK.as_u16(), body: json!(answer).to_string() }),
            // A failure on our side may succeed when retried.
            Err(err) if err.status().is_server_error() => Attempt::Retryable(err),
            Err(err) => Attempt::Answer(Reply { status: err.status().as_u16(), body: json!(err.body()).to_string() }),
        }
    };
    let reply = trekker.run_idempotent(key, &call.body, apply).await??;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    Ok((status, [(header::CONTENT_TYPE, "application/json")], reply.body).into_response())
}

/// Answers signed calls only.
#[utoipa::path(get, path = "/internal/tenants/health", tag = "internal",
    responses((status = 200, description = "{status: healthy, serverName}"), (status = 401, body = ErrorBody)))]
pub(crate) async fn health(State(state): State<AppState>, _call: NodeCall) -> Json<serde_json::Value> {
    Json(json!({"status": "healthy", "serverName": state.config.server_name.as_str()}))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::LogThrottle;

    #[test]
    fn one_line_per_reason_per_interval_counting_the_rest() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(throttle.admit("replayed", start), Some(0));
        for n in 1..=1000 {
            assert_eq!(throttle.admit("replayed", start + Duration::from_millis(n)), None);
        }
        assert_eq!(throttle.admit("signature", start), Some(0), "each reason has its own budget");
        assert_eq!(throttle.admit("replayed", start + Duration::from_secs(10)), Some(1000));
        assert_eq!(throttle.admit("replayed", start + Duration::from_secs(11)), None);
    }
}
