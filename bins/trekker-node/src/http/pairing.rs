//! Pairing endpoints: request a pairing code, poll for the session ID.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use trekker_app::pairing::PairingState;
use utoipa::ToSchema;

use super::extract::ApiQuery;
use super::{ApiError, ErrorBody};
use crate::AppState;

/// Behind the guest rate limit.
pub(crate) fn limited_router() -> Router<AppState> {
    Router::new().route("/api/pair", get(request_pairing))
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/pair/status/{request_id}", get(pairing_status))
}

#[derive(Debug, Deserialize)]
pub(crate) struct PairQuery {
    number: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PairingTicketBody {
    /// Type it on the phone: WhatsApp > Linked devices > Link with phone number.
    code: String,
    request_id: String,
    number: String,
    /// Seconds the code stays usable.
    expires_in: i64,
}

/// Starts pairing a number; the session ID arrives later.
#[utoipa::path(get, path = "/api/pair", tag = "pairing",
    params(("number" = String, Query, description = "phone number, international digits")),
    responses((status = 200, body = PairingTicketBody), (status = 400, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub(crate) async fn request_pairing(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PairQuery>,
) -> Result<Json<PairingTicketBody>, ApiError> {
    let number = query.number.unwrap_or_default();
    let ticket = state.trekker.request_pairing(&state.pairing, &number).await?;
    Ok(Json(PairingTicketBody {
        code: ticket.code,
        request_id: ticket.request_id,
        number: ticket.number,
        expires_in: ticket.expires_in,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PairingStatusBody {
    /// pending | paired | expired | failed
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// Where a pairing request stands; `sessionId` once paired.
#[utoipa::path(get, path = "/api/pair/status/{request_id}", tag = "pairing",
    responses((status = 200, body = PairingStatusBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn pairing_status(
    State(state): State<AppState>,
    Path(request_id): Path<String>,
) -> Result<Json<PairingStatusBody>, ApiError> {
    let body = match state.trekker.pairing_state(&request_id).await? {
        PairingState::Pending => PairingStatusBody { status: "pending", session_id: None, message: None },
        PairingState::Paired { session_id } => {
            PairingStatusBody { status: "paired", session_id: Some(session_id), message: None }
        }
        PairingState::Expired { message } => {
            PairingStatusBody { status: "expired", session_id: None, message: Some(message) }
        }
        PairingState::Failed { message } => {
            PairingStatusBody { status: "failed", session_id: None, message: Some(message) }
        }
    };
    Ok(Json(body))
}
