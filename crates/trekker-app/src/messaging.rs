//! Sending a text from a bot (`POST /api/admin/bots/{id}/messages`): what
//! an admin's request must be, and the port a bot driver that holds live
//! WhatsApp sessions implements ([`BotMessenger`]).

use async_trait::async_trait;
use trekker_domain::{BotId, PhoneNumber};

use crate::{AppError, Trekker};

/// Longest text accepted, in characters (WhatsApp's own limit is larger;
/// an admin endpoint has no reason to send more).
pub const MAX_TEXT_CHARS: usize = 4096;

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum MessengerError {
    /// This node's bot driver holds no WhatsApp sessions.
    #[error("this node's bot driver cannot send WhatsApp messages (BOT_DRIVER=whatsapp can)")]
    Unsupported,
    /// The bot is not running on this node.
    #[error("the bot is not running on this node")]
    NotRunningHere,
    /// WhatsApp did not take the message.
    #[error("WhatsApp did not take the message: {0}")]
    Refused(String),
}

/// Sends texts from the bots running on this node.
#[async_trait]
pub trait BotMessenger: Send + Sync + std::fmt::Debug {
    /// Sends `text` from `bot` to `to` (`None`: the bot's own chat);
    /// WhatsApp's id of the message.
    async fn send_text(&self, bot: &BotId, to: Option<&PhoneNumber>, text: &str) -> Result<String, MessengerError>;
}

/// For drivers without WhatsApp sessions.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMessenger;

#[async_trait]
impl BotMessenger for NoMessenger {
    async fn send_text(&self, _: &BotId, _: Option<&PhoneNumber>, _: &str) -> Result<String, MessengerError> {
        Err(MessengerError::Unsupported)
    }
}

impl Trekker {
    /// An admin sends `text` from bot `id` to `to` (a phone number; none:
    /// the bot's own chat). The bot must run on this node.
    pub async fn send_bot_message(
        &self,
        messenger: &dyn BotMessenger,
        id: &str,
        to: Option<&str>,
        text: &str,
    ) -> Result<String, AppError> {
        let to = match to.map(str::trim) {
            None | Some("") => None,
            Some(phone) => Some(PhoneNumber::parse(phone).map_err(|e| AppError::InvalidInput(format!("to: {e}")))?),
        };
        if text.trim().is_empty() {
            return Err(AppError::InvalidInput("text is required.".into()));
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(AppError::InvalidInput(format!("text is longer than {MAX_TEXT_CHARS} characters.")));
        }
        let bot = self.bot(id).await?;
        match messenger.send_text(&bot.id, to.as_ref(), text).await {
            Ok(message_id) => Ok(message_id),
            Err(MessengerError::NotRunningHere) => Err(AppError::Conflict(format!(
                "Bot {} is not running on {} (it is hosted on {}, status {}): send from its hosting node.",
                bot.id.as_str(),
                self.node,
                bot.server,
                bot.status.as_str()
            ))),
            Err(error) => Err(AppError::Conflict(format!("{}.", crate::error::capitalise(&error.to_string())))),
        }
    }
}
