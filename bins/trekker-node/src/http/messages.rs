//! `POST /api/admin/bots/{id}/messages` from any node: the bot's host sends
//! the text; another node passes the command on over the signed
//! node-to-node protocol (`POST /internal/tenants/bots/messages`).
//!
//! A send is not idempotent, and the node-to-node client retries when the
//! host does not answer: the forwarded command carries an Idempotency-Key
//! (the caller's, scoped to its key, or one made for this request) and the
//! host sends once per key (`Trekker::run_idempotent`), answering a retry
//! with the first answer. A caller that retries a request that timed out
//! sends its own `Idempotency-Key` to be sure of one message: scoped to its
//! key, it is honoured on the host too, whichever node each try enters by.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use trekker_app::idempotency::{Attempt, Reply};
use trekker_domain::PhoneNumber;
use trekker_store::{AuditMark, NewActivity};
use trekker_tenancy::wire::{BotMessageCommand, BotMessageSent, ErrorAnswer, IDEMPOTENCY_HEADER, MESSAGES_PATH};
use utoipa::ToSchema;

use super::audit::audited;
use super::extract::{ApiJson, Operator};
use super::internal::NodeCall;
use super::{ApiError, ErrorBody, ErrorCode, peers};
use crate::AppState;
use crate::access::Caller;

/// The longest Idempotency-Key an admin may send (scoped to its key, it
/// must fit the 128 characters the host keeps).
const MAX_CALLER_KEY_LEN: usize = 100;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/bots/{id}/messages", post(send_message))
        .route(MESSAGES_PATH, post(message_for_peer))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageBody {
    /// A phone number; absent: the bot's own chat.
    to: Option<String>,
    /// At most 4096 characters.
    text: String,
}

/// The caller's Idempotency-Key scoped to the caller (two keys never share
/// one); none when it sent none.
fn callers_command_id(caller: &Caller, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let given = headers.get(IDEMPOTENCY_HEADER).map(|value| value.to_str().map(str::trim));
    match given {
        None => Ok(None),
        Some(Ok(key)) if !key.is_empty() && key.len() <= MAX_CALLER_KEY_LEN => {
            let scope = caller.actor.key_id.as_deref().unwrap_or(crate::access::BOOTSTRAP);
            Ok(Some(format!("message:{scope}:{key}")))
        }
        Some(_) => Err(ApiError::invalid_input(format!(
            "An Idempotency-Key must be 1 to {MAX_CALLER_KEY_LEN} visible ASCII characters."
        ))),
    }
}

/// Sends `command` from a bot running here, once per `key` (the stored
/// answer for a key seen before): the host's side of a forwarded send, and
/// a caller's own Idempotency-Key on the host. A refusal's body carries
/// `retryAfterSecs` (a stored answer keeps no headers).
async fn send_here_once(state: &AppState, key: Option<&str>, body: &[u8]) -> Result<Reply, ApiError> {
    let trekker = &state.trekker;
    let send = || async {
        let sent = match serde_json::from_slice::<BotMessageCommand>(body) {
            Ok(command) => trekker
                .send_bot_message(&*state.messenger, &command.bot_id, command.to.as_deref(), &command.text)
                .await
                .map(|message_id| BotMessageSent { success: true, message_id })
                .map_err(ApiError::from),
            Err(_) => Err(ApiError::invalid_input("The request body is not a message command.")),
        };
        match sent {
            Ok(sent) => Attempt::Answer(Reply { status: StatusCode::OK.as_u16(), body: json!(sent).to_string() }),
            // Nothing was sent (the database failed first): a retry may.
            Err(err) if err.status().is_server_error() => Attempt::Retryable(err),
            Err(err) => {
                let mut body = json!(err.body());
                if let Some(seconds) = err.retry_after {
                    body["retryAfterSecs"] = json!(seconds);
                }
                Attempt::Answer(Reply { status: err.status().as_u16(), body: body.to_string() })
            }
        }
    };
    trekker.run_idempotent(key, body, send).await?
}

/// The message id of a stored answer, or its refusal as this API's error.
fn sent_or_refused(reply: &Reply) -> Result<String, ApiError> {
    if reply.status == StatusCode::OK.as_u16() {
        let sent: BotMessageSent = serde_json::from_str(&reply.body).map_err(|_| ApiError::internal())?;
        return Ok(sent.message_id);
    }
    let refused: ErrorAnswer = serde_json::from_str(&reply.body).unwrap_or_default();
    let code = ErrorCode::from_wire(&refused.code).unwrap_or(ErrorCode::Internal);
    let error = ApiError::new(code, refused.message);
    Err(match refused.retry_after_secs {
        Some(seconds) => error.with_retry_after(seconds.max(1)),
        None => error,
    })
}

/// Sends a text from a bot (`BOT_DRIVER=whatsapp`) through any node: its
/// host sends it.
#[utoipa::path(post, path = "/api/admin/bots/{id}/messages", tag = "admin", security(("admin" = [])),
    request_body = MessageBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "at most 100 characters: a retry with the \
            same key and body sends once")),
    responses((status = 200, description = "sent: `{success, messageId}`"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, description = "the bot's send governor holds it back (RATE_LIMITED, Retry-After)",
            body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the bot's host did not answer")))]
pub(crate) async fn send_message(
    Operator(caller): Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<MessageBody>,
) -> Result<Json<Value>, ApiError> {
    let target = format!("bot/{id}");
    let send = async {
        let callers_key = callers_command_id(&caller, &headers)?;
        let bot = state.trekker.bot(&id).await?;
        let command = BotMessageCommand { bot_id: bot.id.as_str().to_owned(), to: body.to.clone(), text: body.text };
        if bot.server == state.config.server_name {
            let sent = match &callers_key {
                // The same command as a forward would carry: a retry with
                // the key sends once whichever node it enters by.
                Some(key) => {
                    let bytes = serde_json::to_vec(&command).map_err(|_| ApiError::internal())?;
                    sent_or_refused(&send_here_once(&state, Some(key), &bytes).await?)?
                }
                None => {
                    state.trekker.send_bot_message(&*state.messenger, &id, body.to.as_deref(), &command.text).await?
                }
            };
            return Ok::<_, ApiError>((bot, sent));
        }
        let command_id = callers_key.unwrap_or_else(|| format!("message:{:032x}", trekker_app::random_u128()));
        let base_url = peers::base_url(&state, &bot.server).await?;
        let answer = state
            .peers
            .send_bot_message(&bot.server, &base_url, &command_id, &command)
            .await
            .map_err(|error| peers::host_error(&bot, &bot.server, error))?;
        Ok((bot, answer.message_id))
    };
    let (bot, message_id) = audited(&state, &caller, "message_sent", &target, send).await?;
    // Not a write of the database: its entry follows it (the text never).
    // The number as the send read it, never the caller's raw text.
    let to = body.to.as_deref().and_then(|to| PhoneNumber::parse(to.trim()).ok());
    let to = to.map_or_else(|| "its own chat".to_owned(), |phone| phone.as_str().to_owned());
    let details = format!("sent through {} to {to}", bot.server);
    let entry = NewActivity::new(&state.trekker.node, "message_sent", details)
        .for_bot(&bot.id, &bot.phone)
        .by(&caller.actor, AuditMark::bot(&bot.id));
    state.trekker.record(entry).await;
    Ok(Json(json!({"success": true, "messageId": message_id})))
}

/// Another node has this one, the bot's host, send a text from the bot;
/// once per Idempotency-Key. A refusal carries `retryAfterSecs` in its
/// body (a stored answer keeps no headers).
#[utoipa::path(post, path = "/internal/tenants/bots/messages", tag = "internal",
    params(("Idempotency-Key" = String, Header, description = "command id, the same across retries")),
    responses((status = 200, description = "{success, messageId}"), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn message_for_peer(State(state): State<AppState>, call: NodeCall) -> Result<Response, ApiError> {
    let key = call.headers.get(IDEMPOTENCY_HEADER).and_then(|v| v.to_str().ok());
    let reply = send_here_once(&state, key, &call.body).await?;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    Ok((status, [(header::CONTENT_TYPE, "application/json")], reply.body).into_response())
}
