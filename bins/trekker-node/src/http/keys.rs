//! `/api/admin/keys`: the admin API's keys, made, listed and revoked by
//! admins (`crate::access` checks them on every call).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use trekker_domain::access::Role;
use trekker_domain::time::iso_datetime;
use trekker_store::{ApiKey, NewActivity};
use utoipa::ToSchema;

use super::admin::PageQuery;
use super::audit::audited;
use super::extract::{Admin, ApiJson, ApiQuery, Viewer};
use super::{ApiError, ErrorBody};
use crate::AppState;

/// The longest key name.
const MAX_NAME_CHARS: usize = 100;
/// The longest life a key may be given, in days (ten years).
const MAX_EXPIRES_IN_DAYS: u32 = 3650;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/keys", get(list_keys).post(create_key))
        .route("/api/admin/keys/{id}", delete(revoke_key))
        .route("/api/admin/me", get(whoami))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct NewKeyBody {
    name: String,
    /// `admin`, `operator` or `viewer`.
    role: String,
    /// Days until it stops working (1 to 3650); absent: never.
    expires_in_days: Option<u32>,
}

fn key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id,
        "name": key.name,
        "role": key.role.as_str(),
        "createdBy": key.created_by,
        "createdAt": iso_datetime(key.created_at),
        "expiresAt": key.expires_at.map(iso_datetime),
        "revokedAt": key.revoked_at.map(iso_datetime),
        "lastUsedAt": key.last_used_at.map(iso_datetime),
    })
}

/// Makes a key. Its token is in this answer only: it is stored as a hash.
#[utoipa::path(post, path = "/api/admin/keys", tag = "admin", security(("admin" = [])), request_body = NewKeyBody,
    responses((status = 201, description = "{id, name, role, token, expiresAt}"), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn create_key(
    Admin(caller): Admin,
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewKeyBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (key, token) = audited(&state, &caller, "key_created", "key", async {
        let name = body.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ApiError::invalid_input(format!("name must be 1 to {MAX_NAME_CHARS} printable characters")));
        }
        let role = Role::parse(&body.role).map_err(|e| ApiError::invalid_input(e.to_string()))?;
        if body.expires_in_days.is_some_and(|days| days == 0 || days > MAX_EXPIRES_IN_DAYS) {
            return Err(ApiError::invalid_input(format!("expiresInDays must be 1 to {MAX_EXPIRES_IN_DAYS}")));
        }
        let mut random = [0u8; 40];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| ApiError::internal())?;
        let details = format!("key \"{name}\" with role {role}");
        let audit = NewActivity::new(&state.trekker.node, "key_created", details);
        state.keys.create(name, role, body.expires_in_days, &caller, audit, random).await.map_err(ApiError::from_store)
    })
    .await?;
    tracing::info!(key = %key.id, name = %key.name, role = %key.role, by = %caller.actor.name, "API key created");
    let answer = json!({
        "id": key.id,
        "name": key.name,
        "role": key.role.as_str(),
        "token": token.expose(),
        "expiresAt": key.expires_at.map(iso_datetime),
    });
    Ok((StatusCode::CREATED, Json(answer)))
}

/// The keys, newest first (revoked ones too); never a token.
#[utoipa::path(get, path = "/api/admin/keys", tag = "admin", security(("admin" = [])),
    params(("limit" = Option<i64>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, description = "{keys, count, next}"), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_keys(
    _: Admin,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = trekker_app::admin::page_size(query.limit)?;
    let page = state.store.list_api_keys(query.after, limit).await.map_err(ApiError::from_store)?;
    let keys: Vec<Value> = page.keys.iter().map(key_json).collect();
    Ok(Json(json!({"count": keys.len(), "keys": keys, "next": page.next})))
}

/// Revokes a key: this node refuses it at once, every node within a second.
#[utoipa::path(delete, path = "/api/admin/keys/{id}", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "{success, id}"), (status = 404, body = ErrorBody)))]
pub(crate) async fn revoke_key(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    audited(&state, &caller, "key_revoked", &format!("key/{id}"), async {
        let audit = NewActivity::new(&state.trekker.node, "key_revoked", "revoked");
        match state.keys.revoke(&id, &caller, audit).await.map_err(ApiError::from_store)? {
            true => Ok(()),
            false => Err(ApiError::not_found("No live API key has this id.")),
        }
    })
    .await?;
    tracing::info!(key = %id, by = %caller.actor.name, "API key revoked");
    Ok(Json(json!({"success": true, "id": id})))
}

/// Who the caller is: the key's name, id and role (`bootstrap`, no id, for
/// ADMIN_TOKEN). The console draws only what the role may do.
#[utoipa::path(get, path = "/api/admin/me", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "{name, role, keyId}"), (status = 401, body = ErrorBody)))]
pub(crate) async fn whoami(Viewer(caller): Viewer) -> Json<Value> {
    Json(json!({"name": caller.actor.name, "role": caller.role.as_str(), "keyId": caller.actor.key_id}))
}
