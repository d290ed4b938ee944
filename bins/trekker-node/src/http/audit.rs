//! The audit trail: `GET /api/admin/audit`, and [`audited`], which every
//! admin write goes through so that a refused one is on the trail too.
//!
//! A write that is made records its actor in its own transaction (the use
//! case marks its activity with [`trekker_store::AuditMark`]); a refused
//! one changed nothing, so nothing else would say that someone tried.

use std::future::Future;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use trekker_domain::access::Actor;
use trekker_store::Activity;

use super::extract::{ApiQuery, Viewer};
use super::{ApiError, ErrorBody, ErrorCode};
use crate::AppState;
use crate::access::Caller;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/admin/audit", get(list_audit))
}

/// Runs an admin write by `caller`; when it is refused (bad input, not
/// found, a conflict...), records `action` on `target` with the error's
/// code. A failure of the node itself (500, 503) is not the caller's act
/// and is only logged, as everywhere.
pub(crate) async fn audited<T, E: Into<ApiError>>(
    state: &AppState,
    caller: &Caller,
    action: &str,
    target: &str,
    write: impl Future<Output = Result<T, E>>,
) -> Result<T, ApiError> {
    let error = match write.await {
        Ok(done) => return Ok(done),
        Err(error) => error.into(),
    };
    if !matches!(error.code, ErrorCode::Internal | ErrorCode::ServiceUnavailable) {
        state.trekker.record_refused(&caller.actor, action, target, error.code.as_str()).await;
    }
    Err(error)
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    actor: Option<String>,
    action: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

/// An actor as API.md shows it: `{"keyId"?, "name"}` (no `keyId` for the
/// bootstrap token and the system).
pub(crate) fn actor_json(actor: &Actor) -> Value {
    match &actor.key_id {
        Some(key_id) => json!({"keyId": key_id, "name": actor.name}),
        None => json!({"name": actor.name}),
    }
}

/// An entry of the trail as API.md shows it (and the node, details, id).
pub(crate) fn audit_entry_json(activity: &Activity) -> Value {
    let (actor, target, result) = match &activity.audit {
        Some(mark) => (actor_json(&mark.actor), Value::from(mark.target.as_str()), Value::from(mark.result.as_str())),
        None => (Value::Null, Value::Null, Value::Null),
    };
    json!({
        "id": activity.id,
        "at": trekker_domain::time::iso_datetime(activity.occurred_at),
        "actor": actor,
        "action": activity.action,
        "target": target,
        "result": result,
        "details": activity.details,
        "server": activity.server,
    })
}

/// Every admin write and every system action, newest first (`actor`,
/// `action`: only those).
#[utoipa::path(get, path = "/api/admin/audit", tag = "admin", security(("admin" = [])),
    params(("actor" = Option<String>, Query, description = "a key's name, `bootstrap` or `system`"),
        ("action" = Option<String>, Query), ("limit" = Option<i64>, Query, description = "1-1000, default 100"),
        ("after" = Option<String>, Query, description = "the `next` of the previous page")),
    responses((status = 200, description = "{entries: [{at, actor: {keyId, name}, action, target, result}], \
            count, next}"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_audit(
    _: Viewer,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let (page, next) = state
        .trekker
        .audit(query.actor.as_deref(), query.action.as_deref(), query.limit, query.after.as_deref())
        .await?;
    Ok(Json(json!({
        "entries": page.iter().map(audit_entry_json).collect::<Vec<_>>(),
        "count": page.len(),
        "next": next,
    })))
}
