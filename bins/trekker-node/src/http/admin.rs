//! Admin endpoints (`Authorization: Bearer <ADMIN_TOKEN>`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trekker_store::Inconsistency;
use utoipa::ToSchema;

use super::audit::audited;
use super::extract::{Admin, ApiJson, ApiQuery, Operator, Viewer};
use super::views::{
    BotDetail, BotWithState, DeviceStateView, LastExitView, ResourcesView, ServerAdmin, SessionStateView,
};
use super::{ApiError, ErrorBody};
use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/servers", get(list_servers))
        .route("/api/admin/servers/{name}", patch(update_server))
        .route("/api/admin/bots", get(list_bots))
        .route("/api/admin/bots/{id}", get(get_bot).delete(delete_bot))
        .route("/api/admin/bots/{id}/approve", post(approve_bot))
        .route("/api/admin/bots/{id}/reject", post(reject_bot))
        .route("/api/admin/bots/{id}/move", post(move_bot))
        .route("/api/admin/bots/{id}/restart", post(restart_bot))
        .route("/api/admin/bots/{id}/stop", post(stop_bot))
        .route("/api/admin/servers/{name}/evacuate", post(evacuate_server))
        .route("/api/admin/activities", get(list_activities))
        .route("/api/admin/stats/cross-server", get(cross_server_stats))
        .route("/api/admin/capacity-warnings", get(capacity_warnings))
        .route("/api/admin/registry/inconsistencies", get(inconsistencies))
        .route("/api/admin/registry/repair", post(repair))
        .route("/api/admin/credential-reviews", get(list_reviews))
        .route("/api/admin/credential-updates", get(list_credential_updates))
        .route("/api/admin/credential-reviews/{id}/approve", post(approve_review))
        .route("/api/admin/credential-reviews/{id}/reject", post(reject_review))
}

/// An optional JSON body: empty means all defaults.
fn optional_body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|_| ApiError::invalid_input("The request body is not valid JSON for this endpoint."))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminServerList {
    servers: Vec<ServerAdmin>,
    count: usize,
}

/// Every server with heartbeat and base URL.
#[utoipa::path(get, path = "/api/admin/servers", tag = "admin", security(("admin" = [])),
    responses((status = 200, body = AdminServerList), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn list_servers(_: Viewer, State(state): State<AppState>) -> Result<Json<AdminServerList>, ApiError> {
    let servers: Vec<ServerAdmin> = state.trekker.servers().await?.iter().map(ServerAdmin::from).collect();
    Ok(Json(AdminServerList { count: servers.len(), servers }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerPatchBody {
    max_bot_count: Option<i64>,
    /// active | draining | inactive
    status: Option<String>,
}

/// Changes a server's capacity and/or status.
#[utoipa::path(patch, path = "/api/admin/servers/{name}", tag = "admin",
    security(("admin" = [])), request_body = ServerPatchBody,
    responses((status = 200, description = "the server"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn update_server(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ServerPatchBody>,
) -> Result<Json<Value>, ApiError> {
    let update = state.trekker.update_server(&caller.actor, &name, body.max_bot_count, body.status.as_deref());
    let view = audited(&state, &caller, "server_updated", &format!("server/{name}"), update).await?;
    Ok(Json(json!({"success": true, "server": ServerAdmin::from(&view)})))
}

#[derive(Debug, Deserialize)]
pub(crate) struct BotQuery {
    server: Option<String>,
    approval: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminBotList {
    bots: Vec<BotDetail>,
    count: usize,
    /// The cursor of the next page (for `after`); null on the last page.
    next: Option<String>,
}

/// Bots, filtered by server and approval status; never credentials.
#[utoipa::path(get, path = "/api/admin/bots", tag = "admin", security(("admin" = [])),
    params(("server" = Option<String>, Query), ("approval" = Option<String>, Query),
        ("status" = Option<String>, Query), ("limit" = Option<i64>, Query, description = "1-1000, default 100"),
        ("after" = Option<String>, Query, description = "the `next` of the previous page")),
    responses((status = 200, body = AdminBotList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_bots(
    _: Viewer,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<BotQuery>,
) -> Result<Json<AdminBotList>, ApiError> {
    let query = trekker_app::admin::BotQuery {
        server: query.server,
        approval: query.approval,
        status: query.status,
        limit: query.limit,
        after: query.after,
    };
    let (page, next) = state.trekker.bots(&query).await?;
    let bots: Vec<BotDetail> = page.iter().map(BotDetail::from).collect();
    Ok(Json(AdminBotList { count: bots.len(), bots, next }))
}

/// One bot, with the size and last sync time of its saved session state.
#[utoipa::path(get, path = "/api/admin/bots/{id}", tag = "admin", security(("admin" = [])),
    responses((status = 200, body = BotWithState), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_bot(
    _: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<BotWithState>, ApiError> {
    let states = state.trekker.bot_with_state(&id).await?;
    let stored_oom_kills = u64::try_from(states.exits.oom_kills).unwrap_or(0);
    let resources =
        state.process_bots.as_ref().and_then(|driver| driver.resources(&states.bot.id)).map(|live| ResourcesView {
            memory_bytes: live.memory_bytes,
            memory_limit_bytes: live.memory_limit_bytes,
            cpu_seconds: live.cpu_seconds,
            pids: live.pids,
            disk_bytes: live.disk_bytes,
            oom_kills: stored_oom_kills + live.oom_kills,
        });
    Ok(Json(BotWithState {
        detail: BotDetail::from(&states.bot),
        session_state: states.session.as_ref().map(SessionStateView::from),
        device_state: states.device.map(|info| DeviceStateView { keys: info.keys, size_bytes: info.bytes }),
        last_exit: states.exits.last.as_ref().map(LastExitView::from),
        resources,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApproveBody {
    /// Default 3; 1 to 120 (a month is 30 days).
    expiration_months: Option<u32>,
}

fn bot_answer(message: &str, bot: &trekker_store::BotRecord) -> Json<Value> {
    Json(json!({"success": true, "message": message, "bot": BotDetail::from(bot)}))
}

/// Approves a bot; its hosting node starts it.
#[utoipa::path(post, path = "/api/admin/bots/{id}/approve", tag = "admin",
    security(("admin" = [])), request_body = ApproveBody,
    responses((status = 200, description = "approved"), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn approve_bot(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let bot = audited(&state, &caller, "approved", &format!("bot/{id}"), async {
        let body: ApproveBody = optional_body(&body)?;
        Ok::<_, ApiError>(state.trekker.approve_bot(&caller.actor, &id, body.expiration_months).await?)
    })
    .await?;
    Ok(bot_answer("Bot approved.", &bot))
}

/// Rejects a bot, freeing its phone number and slot.
#[utoipa::path(post, path = "/api/admin/bots/{id}/reject", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "rejected"), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn reject_bot(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let target = format!("bot/{id}");
    let bot = audited(&state, &caller, "rejected", &target, state.trekker.reject_bot(&caller.actor, &id)).await?;
    Ok(bot_answer("Bot rejected; its phone number and slot are free.", &bot))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MoveBody {
    /// The target server; absent: placement chooses (never the current host).
    server: Option<String>,
}

/// Moves a bot to another server with its session (invariant 11): its old
/// host stops it and saves its session, the new host restores and starts
/// it; it never runs on both. The guest is told.
#[utoipa::path(post, path = "/api/admin/bots/{id}/move", tag = "admin",
    security(("admin" = [])), request_body = MoveBody,
    responses((status = 202, description = "`{success, botId, from, to}`: the move is committed; the bot \
            restarts there"),
        (status = 404, body = ErrorBody, description = "NOT_FOUND or UNKNOWN_SERVER"),
        (status = 409, body = ErrorBody, description = "SERVER_FULL, or CONFLICT: the same server, a target not \
            active or offline, a move of this bot under way")))]
pub(crate) async fn move_bot(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let moved = audited(&state, &caller, "bot_moved", &format!("bot/{id}"), async {
        let body: MoveBody = optional_body(&body)?;
        Ok::<_, ApiError>(state.trekker.move_bot(&caller.actor, &id, body.server.as_deref()).await?)
    })
    .await?;
    let answer = json!({
        "success": true,
        "botId": moved.bot.id.as_str(),
        "from": moved.from.as_str(),
        "to": moved.bot.server.as_str(),
    });
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Restarts a running bot, or starts a stopped or `failed` one (its crash
/// count cleared), and keeps it running.
#[utoipa::path(post, path = "/api/admin/bots/{id}/restart", tag = "admin", security(("admin" = [])),
    responses((status = 202, description = "`{success, message, bot}`: its host restarts it"),
        (status = 404, body = ErrorBody, description = "NOT_FOUND"),
        (status = 409, body = ErrorBody, description = "CONFLICT: the bot is not approved")))]
pub(crate) async fn restart_bot(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let restart = state.trekker.restart_bot(&caller.actor, &id);
    let bot = audited(&state, &caller, "bot_restarted", &format!("bot/{id}"), restart).await?;
    Ok((StatusCode::ACCEPTED, bot_answer("Bot restarting on its host.", &bot)))
}

/// Stops a bot and keeps it stopped (across node restarts and moves) until
/// a restart.
#[utoipa::path(post, path = "/api/admin/bots/{id}/stop", tag = "admin", security(("admin" = [])),
    responses((status = 202, description = "`{success, message, bot}`: its host stops it"),
        (status = 404, body = ErrorBody, description = "NOT_FOUND")))]
pub(crate) async fn stop_bot(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let stop = state.trekker.stop_bot(&caller.actor, &id);
    let bot = audited(&state, &caller, "bot_stopped", &format!("bot/{id}"), stop).await?;
    Ok((StatusCode::ACCEPTED, bot_answer("Bot stopping; it stays stopped until restarted.", &bot)))
}

/// Drains a server: it becomes `draining` and its bots move, at most
/// MOVES_PER_MIN a minute per target, to servers placement chooses.
#[utoipa::path(post, path = "/api/admin/servers/{name}/evacuate", tag = "admin", security(("admin" = [])),
    responses((status = 202, description = "`{success, server, bots}`: how many bots will move"),
        (status = 404, body = ErrorBody, description = "NOT_FOUND")))]
pub(crate) async fn evacuate_server(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let evacuation = state.trekker.evacuate_server(&caller.actor, &name);
    let (server, bots) = audited(&state, &caller, "server_evacuation", &format!("server/{name}"), evacuation).await?;
    let answer = json!({ "success": true, "server": server.name.as_str(), "bots": bots });
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// Deletes a bot, freeing its phone number and slot.
#[utoipa::path(delete, path = "/api/admin/bots/{id}", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "deleted"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_bot(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let target = format!("bot/{id}");
    let bot = audited(&state, &caller, "deleted", &target, state.trekker.delete_bot(&caller.actor, &id)).await?;
    Ok(bot_answer("Bot deleted; its phone number and slot are free.", &bot))
}

fn inconsistency_json(issue: &Inconsistency) -> Value {
    let mut value = match issue {
        Inconsistency::RegistryWithoutBot { phone, server, bot_id } => {
            json!({"phoneNumber": phone, "server": server, "botId": bot_id})
        }
        Inconsistency::BotWithoutRegistry { bot_id, phone, server } => {
            json!({"phoneNumber": phone, "server": server, "botId": bot_id})
        }
        Inconsistency::ServerMismatch { phone, bot_id, registry_server, bot_server } => {
            json!({"phoneNumber": phone, "botId": bot_id, "registryServer": registry_server, "botServer": bot_server})
        }
        Inconsistency::CountDrift { server, recorded, actual } => {
            json!({"server": server, "recorded": recorded, "actual": actual})
        }
    };
    value["kind"] = json!(issue.kind());
    value
}

#[derive(Debug, Deserialize)]
pub(crate) struct PageQuery {
    pub(crate) limit: Option<i64>,
    pub(crate) after: Option<String>,
}

/// Registry rows and bot rows that disagree, and slot counts that drifted,
/// a page at a time (`total`: how many there are in all).
#[utoipa::path(get, path = "/api/admin/registry/inconsistencies", tag = "admin", security(("admin" = [])),
    params(("limit" = Option<i64>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, description = "{inconsistencies, count, total, next}"), (status = 400, body = ErrorBody)))]
pub(crate) async fn inconsistencies(
    _: Viewer,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let (page, total, next) = state.trekker.inconsistency_page(query.limit, query.after.as_deref()).await?;
    Ok(Json(json!({
        "inconsistencies": page.iter().map(inconsistency_json).collect::<Vec<_>>(),
        "count": page.len(),
        "total": total,
        "next": next,
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ActivityQuery {
    bot: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

fn activity_json(activity: &trekker_store::Activity) -> Value {
    json!({
        "id": activity.id,
        "occurredAt": trekker_domain::time::iso_datetime(activity.occurred_at),
        "server": activity.server,
        "botId": activity.bot_id,
        "phoneNumber": activity.phone,
        "action": activity.action,
        "details": activity.details,
        "remoteServer": activity.remote_tenancy,
        "remoteBotId": activity.remote_bot_id,
        "actor": activity.audit.as_ref().map(|mark| super::audit::actor_json(&mark.actor)),
        "result": activity.audit.as_ref().map(|mark| mark.result.as_str()),
    })
}

/// The audit log (of one bot with `bot`), newest first.
#[utoipa::path(get, path = "/api/admin/activities", tag = "admin", security(("admin" = [])),
    params(("bot" = Option<String>, Query), ("limit" = Option<i64>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, description = "{activities, count, next}"), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_activities(
    _: Viewer,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ActivityQuery>,
) -> Result<Json<Value>, ApiError> {
    let (page, next) = state.trekker.activities(query.bot.as_deref(), query.limit, query.after.as_deref()).await?;
    Ok(Json(json!({
        "activities": page.iter().map(activity_json).collect::<Vec<_>>(),
        "count": page.len(),
        "next": next,
    })))
}

/// The servers (and `*`, the cluster) past CAPACITY_WARN_PERCENT or full now.
#[utoipa::path(get, path = "/api/admin/capacity-warnings", tag = "admin", security(("admin" = [])),
    responses((status = 200, description = "{warnings: [{scope, level}]}"), (status = 401, body = ErrorBody)))]
pub(crate) async fn capacity_warnings(_: Viewer, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let alerts = state.trekker.capacity_alerts().await?;
    let warnings: Vec<Value> =
        alerts.iter().map(|(scope, level)| json!({"scope": scope, "level": level.as_str()})).collect();
    Ok(Json(json!({"count": warnings.len(), "warnings": warnings})))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairBody {
    /// Only report what would be repaired.
    dry_run: Option<bool>,
}

/// Repairs every inconsistency (or, with `dryRun`, lists them).
#[utoipa::path(post, path = "/api/admin/registry/repair", tag = "admin",
    security(("admin" = [])), request_body = RepairBody,
    responses((status = 200, description = "{success, dryRun, found, repaired, inconsistencies}")))]
pub(crate) async fn repair(
    Admin(caller): Admin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let report = audited(&state, &caller, "registry_repaired", "registry", async {
        let body: RepairBody = optional_body(&body)?;
        Ok::<_, ApiError>(state.trekker.repair_registry(&caller.actor, body.dry_run.unwrap_or(false)).await?)
    })
    .await?;
    Ok(Json(json!({
        "success": true,
        "dryRun": report.dry_run,
        "found": report.found.len(),
        "repaired": report.repaired,
        "inconsistencies": report.found.iter().map(inconsistency_json).collect::<Vec<_>>(),
    })))
}

fn review_json(review: &trekker_store::CredentialReview) -> Value {
    json!({
        "id": review.id,
        "botId": review.bot_id.as_str(),
        "phoneNumber": review.phone.as_str(),
        "accountKey": review.account_key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "status": review.status.as_str(),
        "createdAt": trekker_domain::time::iso_datetime(review.created_at),
        "decidedAt": review.decided_at.map(trekker_domain::time::iso_datetime),
    })
}

/// Credential changes signed by another WhatsApp account, newest first.
#[utoipa::path(get, path = "/api/admin/credential-reviews", tag = "admin", security(("admin" = [])),
    params(("limit" = Option<i64>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, description = "{reviews, count, next}"), (status = 401, body = ErrorBody)))]
pub(crate) async fn list_reviews(
    _: Viewer,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let (reviews, next) = state.trekker.credential_reviews(query.limit, query.after.as_deref()).await?;
    let reviews: Vec<Value> = reviews.iter().map(review_json).collect();
    Ok(Json(json!({"count": reviews.len(), "reviews": reviews, "next": next})))
}

/// Applies a review: the new account is pinned and the bot restarts on it.
#[utoipa::path(post, path = "/api/admin/credential-reviews/{id}/approve", tag = "admin",
    security(("admin" = [])),
    responses((status = 200, description = "{success, message, bot}"), (status = 404, body = ErrorBody)))]
pub(crate) async fn approve_review(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let approval = state.trekker.approve_review(&caller.actor, &id);
    let bot = audited(&state, &caller, "credential_review_approved", &format!("review/{id}"), approval).await?;
    Ok(bot_answer("Review approved; the bot runs on the new account's credentials.", &bot))
}

/// Discards a review's credentials; the bot keeps its own.
#[utoipa::path(post, path = "/api/admin/credential-reviews/{id}/reject", tag = "admin",
    security(("admin" = [])),
    responses((status = 200, description = "{success, message, review}"), (status = 404, body = ErrorBody)))]
pub(crate) async fn reject_review(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rejection = state.trekker.reject_review(&caller.actor, &id);
    let review = audited(&state, &caller, "credential_review_rejected", &format!("review/{id}"), rejection).await?;
    Ok(Json(json!({"success": true, "message": "Review rejected.", "review": review_json(&review)})))
}

#[derive(Debug, Deserialize)]
pub(crate) struct UpdateQuery {
    status: Option<String>,
    limit: Option<i64>,
    after: Option<String>,
}

/// The cross-server outbox, newest first: pending, delivered, superseded,
/// failed and expired updates with their attempts and last error.
#[utoipa::path(get, path = "/api/admin/credential-updates", tag = "admin", security(("admin" = [])),
    params(("status" = Option<String>, Query), ("limit" = Option<i64>, Query), ("after" = Option<String>, Query)),
    responses((status = 200, description = "{updates, count, next}"), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_credential_updates(
    _: Viewer,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<UpdateQuery>,
) -> Result<Json<Value>, ApiError> {
    let (updates, next) =
        state.trekker.credential_updates(query.status.as_deref(), query.limit, query.after.as_deref()).await?;
    let updates: Vec<Value> = updates
        .iter()
        .map(|u| {
            json!({
                "updateId": u.id,
                "botId": u.bot_id.as_str(),
                "phoneNumber": u.phone.as_str(),
                "sourceServer": u.source.as_str(),
                "hostingServer": u.target.as_str(),
                "credentialsVersion": u.version,
                "status": u.status.as_str(),
                "attempts": u.attempts,
                "lastError": u.last_error,
                "createdAt": trekker_domain::time::iso_datetime(u.created_at),
                "deliveredAt": u.delivered_at.map(trekker_domain::time::iso_datetime),
            })
        })
        .collect();
    Ok(Json(json!({"count": updates.len(), "updates": updates, "next": next})))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StatsQuery {
    hours: Option<u32>,
}

/// Cross-server credential updates per hour and hosting server: counts by
/// status, delivery latency p50 / p95, failures by reason.
#[utoipa::path(get, path = "/api/admin/stats/cross-server", tag = "admin", security(("admin" = [])),
    params(("hours" = Option<u32>, Query)),
    responses((status = 200, description = "{hours, since, truncated, buckets}"), (status = 400, body = ErrorBody)))]
pub(crate) async fn cross_server_stats(
    _: Viewer,
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let hours = query.hours.unwrap_or(24);
    let stats = state.trekker.cross_server_stats(hours).await?;
    let buckets: Vec<Value> = stats
        .hours
        .iter()
        .map(|bucket| {
            let failures: Vec<Value> =
                bucket.failures.iter().map(|(reason, count)| json!({"reason": reason, "count": count})).collect();
            json!({
                "hour": trekker_domain::time::iso_datetime(bucket.hour),
                "server": bucket.server,
                "counts": bucket.counts,
                "latencyMs": bucket.latency_ms.map(|(p50, p95)| json!({"p50": p50, "p95": p95})),
                "failures": failures,
            })
        })
        .collect();
    Ok(Json(json!({
        "hours": hours,
        "since": trekker_domain::time::iso_datetime(stats.since),
        "truncated": stats.truncated,
        "buckets": buckets,
    })))
}
