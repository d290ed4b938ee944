//! A bot's recent output: `GET /api/admin/bots/{id}/logs` answers from any
//! node. The host reads the per-bot ring its runtime keeps; another node
//! asks the host over the signed node-to-node protocol
//! (`POST /internal/tenants/bots/logs`, the question in the signed body)
//! and passes the answer on, or says why it cannot.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use trekker_domain::ServerName;
use trekker_store::BotRecord;
use trekker_tenancy::wire::{BotLogLine, BotLogsAnswer, BotLogsQuery, LOGS_PATH};
use utoipa::ToSchema;

use super::extract::{ApiQuery, Viewer};
use super::internal::NodeCall;
use super::peers;
use super::{ApiError, ErrorBody, ErrorCode};
use crate::AppState;

/// Lines a bot's log page holds by default, and at most.
pub(crate) const LOG_LINES_DEFAULT: u32 = 200;
pub(crate) const LOG_LINES_MAX: u32 = 2000;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/admin/bots/{id}/logs", get(bot_logs)).route(LOGS_PATH, post(logs_for_peer))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LogsQuery {
    /// 1 to 2000, default 200: the last lines.
    pub(crate) limit: Option<u32>,
}

pub(crate) fn checked_limit(limit: u32) -> Result<u32, ApiError> {
    if (1..=LOG_LINES_MAX).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid_input(format!("limit must be between 1 and {LOG_LINES_MAX}.")))
    }
}

/// What this node, the bot's host, holds of its output: the last `limit`
/// lines, or with `after` the (oldest) `limit` lines after that one.
pub(crate) fn local_logs(state: &AppState, bot: &BotRecord, limit: u32, after: Option<u64>) -> BotLogsAnswer {
    let kept = state.process_bots.as_ref().map(|driver| match after {
        None => driver.logs().tail(&bot.id, limit as usize),
        Some(after) => driver.logs().since(&bot.id, after, limit as usize),
    });
    let lines = kept
        .unwrap_or_default()
        .into_iter()
        .map(|line| BotLogLine { seq: line.seq, at: line.at, stream: line.stream.as_str().to_owned(), text: line.text })
        .collect();
    BotLogsAnswer { bot_id: bot.id.as_str().to_owned(), server: bot.server.as_str().to_owned(), lines }
}

/// Asks `host`, at `base_url`, for the bot's lines (as [`local_logs`] there).
pub(crate) async fn remote_logs(
    state: &AppState,
    bot: &BotRecord,
    (host, base_url): (&ServerName, &str),
    limit: u32,
    after: Option<u64>,
) -> Result<BotLogsAnswer, ApiError> {
    let query = BotLogsQuery { bot_id: bot.id.as_str().to_owned(), limit, after };
    state.peers.bot_logs(host, base_url, &query).await.map_err(|error| peers::host_error(bot, host, error))
}

/// The last lines a bot printed and its host's lines about it (start,
/// stop, exit and why), oldest first, from any node.
#[utoipa::path(get, path = "/api/admin/bots/{id}/logs", tag = "admin", security(("admin" = [])),
    params(("limit" = Option<u32>, Query)),
    responses((status = 200, description = "{botId, server, lines: [{at, stream, text}]}"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn bot_logs(
    _: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogsQuery>,
) -> Result<Json<BotLogsAnswer>, ApiError> {
    let limit = checked_limit(query.limit.unwrap_or(LOG_LINES_DEFAULT))?;
    let bot = state.trekker.bot(&id).await?;
    if bot.server == state.config.server_name {
        return Ok(Json(local_logs(&state, &bot, limit, None)));
    }
    let host = bot.server.clone();
    let base_url = peers::base_url(&state, &host).await?;
    remote_logs(&state, &bot, (&host, &base_url), limit, None).await.map(Json)
}

/// Another node asks for the lines of a bot hosted here.
#[utoipa::path(post, path = "/internal/tenants/bots/logs", tag = "internal",
    responses((status = 200, description = "{botId, server, lines}"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn logs_for_peer(
    State(state): State<AppState>,
    call: NodeCall,
) -> Result<Json<BotLogsAnswer>, ApiError> {
    let query: BotLogsQuery = serde_json::from_slice(&call.body)
        .map_err(|_| ApiError::invalid_input("The request body is not a logs query."))?;
    let limit = checked_limit(query.limit)?;
    let bot = state.trekker.bot(&query.bot_id).await?;
    if bot.server != state.config.server_name {
        // Moved meanwhile: the asking node learns the host from the answer.
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("Bot {} is hosted on {} now, not here.", bot.id.as_str(), bot.server),
        ));
    }
    Ok(Json(local_logs(&state, &bot, limit, query.after)))
}
