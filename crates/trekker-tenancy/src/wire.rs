//! Paths and JSON bodies of the node-to-node endpoints (API.md).

use serde::{Deserialize, Serialize};

/// Where new credentials are sent to the bot's host.
pub const CREDENTIALS_PATH: &str = "/internal/tenants/bots/credentials";
/// A node's signed health check.
pub const HEALTH_PATH: &str = "/internal/tenants/health";
/// Where a node asks a bot's host for the bot's recent output (a POST, so
/// that the question is in the signed body).
pub const LOGS_PATH: &str = "/internal/tenants/bots/logs";
/// Where a node has a bot's host send a text from the bot, once per
/// `Idempotency-Key`.
pub const MESSAGES_PATH: &str = "/internal/tenants/bots/messages";
/// The header that makes a repeated update apply once.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// `POST /internal/tenants/bots/credentials`. Holds a secret (`session_id`):
/// `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsUpdateBody {
    /// The bot the update is for.
    pub bot_id: String,
    /// The bot's phone.
    pub phone_number: String,
    /// The new session ID (a secret: never logged).
    pub session_id: String,
    /// The version these credentials take; none: the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_version: Option<i64>,
}

impl std::fmt::Debug for CredentialsUpdateBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsUpdateBody")
            .field("bot_id", &self.bot_id)
            .field("phone_number", &self.phone_number)
            .field("credentials_version", &self.credentials_version)
            .finish_non_exhaustive()
    }
}

/// The host's answer to a credentials update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsUpdateAnswer {
    /// Whether the host applied the update.
    pub success: bool,
    /// The bot updated.
    pub bot_id: String,
    /// The host that answered.
    pub server: String,
    /// The version now stored.
    pub credentials_version: i64,
    /// Whether the bot was restarted on them.
    pub restarted: bool,
}

/// `GET /internal/tenants/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthAnswer {
    /// `ok` when the node serves.
    pub status: String,
    /// The node that answered.
    pub server_name: String,
}

/// `POST /internal/tenants/bots/logs`: the last `limit` lines of a bot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BotLogsQuery {
    /// The bot asked about.
    pub bot_id: String,
    /// How many of its last lines (1 to 2000); with `after`, how many of
    /// the lines after it (the oldest first).
    pub limit: u32,
    /// Only the lines numbered after this one (a live reader's last line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

/// The host's answer: the bot's lines, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BotLogsAnswer {
    /// The bot.
    pub bot_id: String,
    /// The host that answered.
    pub server: String,
    /// Its lines, oldest first.
    pub lines: Vec<BotLogLine>,
}

/// One line a bot printed, or one the node wrote about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BotLogLine {
    /// Its number on the host (increasing): what a live reader asks after.
    #[serde(default)]
    pub seq: u64,
    /// When (unix milliseconds).
    pub at: i64,
    /// `stdout`, `stderr` or `node`.
    pub stream: String,
    /// The line, control characters escaped.
    pub text: String,
}

/// `POST /internal/tenants/bots/messages`: a text an admin sends from a bot
/// through a node that does not host it. The text is the admin's, never
/// logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BotMessageCommand {
    /// The bot that sends.
    pub bot_id: String,
    /// A phone number; none: the bot's own chat.
    pub to: Option<String>,
    /// The text.
    pub text: String,
}

impl std::fmt::Debug for BotMessageCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotMessageCommand").field("bot_id", &self.bot_id).finish_non_exhaustive()
    }
}

/// The host's answer: WhatsApp took the text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BotMessageSent {
    /// Always true.
    pub success: bool,
    /// WhatsApp's id of the message.
    pub message_id: String,
}

/// An error body from another node.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorAnswer {
    /// A stable error code (API.md).
    #[serde(default)]
    pub code: String,
    /// What went wrong, for people.
    #[serde(default)]
    pub message: String,
    /// With RATE_LIMITED: seconds until the host would take it (its
    /// Retry-After, in the body so that a stored answer keeps it).
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
}
