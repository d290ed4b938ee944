//! What a node says when it passes an admin's call on to the bot's host
//! (logs, messages): the host's address, and its answer or silence in the
//! API's own errors.

use trekker_domain::ServerName;
use trekker_store::BotRecord;
use trekker_tenancy::ClientError;

use super::{ApiError, ErrorCode};
use crate::AppState;

/// The base URL `host` registered (empty when it has none: the client
/// refuses it as misconfigured).
pub(crate) async fn base_url(state: &AppState, host: &ServerName) -> Result<String, ApiError> {
    let server = state.store.get_server(host).await.map_err(ApiError::from_store)?;
    Ok(server.and_then(|s| s.base_url).unwrap_or_default())
}

/// The host's refusal when it is about the caller's request (the bot is
/// gone or moved, bad input, a limit); anything else (a refused token, no
/// answer) is this node's trouble with the host, not the caller's.
pub(crate) fn host_error(bot: &BotRecord, host: &ServerName, error: ClientError) -> ApiError {
    let bot = bot.id.as_str();
    match error {
        ClientError::Refused { status, code, message, retry_after_secs } => match ErrorCode::from_wire(&code) {
            Some(
                code @ (ErrorCode::NotFound
                | ErrorCode::Conflict
                | ErrorCode::InvalidInput
                | ErrorCode::IdempotencyMismatch
                | ErrorCode::RateLimited),
            ) => {
                let error = ApiError::new(code, message);
                match retry_after_secs {
                    Some(seconds) if code == ErrorCode::RateLimited => error.with_retry_after(seconds.max(1)),
                    _ => error,
                }
            }
            _ => {
                tracing::warn!(%host, status, %code, "the bot's host refused this node's call");
                ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    format!("Bot {bot} is hosted on {host}, which refused this node ({code})."),
                )
            }
        },
        ClientError::Unreachable(why) => ApiError::new(
            ErrorCode::ServiceUnavailable,
            format!("Bot {bot} is hosted on {host}, which did not answer: {why}."),
        ),
        ClientError::Misconfigured(why) => ApiError::new(
            ErrorCode::Conflict,
            format!("Bot {bot} is hosted on {host}, which this node cannot ask: {why}."),
        ),
    }
}
