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
    /// The bot's ban-risk governor holds the message back: `reason` says
    /// which limit, `retry_after_secs` when a send may go again.
    #[error("{reason}")]
    Throttled { reason: String, retry_after_secs: u64 },
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
            Err(MessengerError::Throttled { reason, retry_after_secs }) => {
                Err(AppError::Throttled { reason: format!("{}.", crate::error::capitalise(&reason)), retry_after_secs })
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use trekker_domain::ApprovalStatus;

    use super::*;
    use crate::test_support::{Mocks, bot_record, trekker};

    /// A messenger that records what it was asked and answers `answer`.
    #[derive(Debug)]
    struct Recording {
        asked: Mutex<Vec<(String, Option<String>, String)>>,
        answer: fn() -> Result<String, MessengerError>,
    }

    #[async_trait]
    impl BotMessenger for Recording {
        async fn send_text(&self, bot: &BotId, to: Option<&PhoneNumber>, text: &str) -> Result<String, MessengerError> {
            let to = to.map(|p| p.as_str().to_owned());
            self.asked.lock().unwrap().push((bot.as_str().to_owned(), to, text.to_owned()));
            (self.answer)()
        }
    }

    fn recording(answer: fn() -> Result<String, MessengerError>) -> Recording {
        Recording { asked: Mutex::new(Vec::new()), answer }
    }

    fn with_bot() -> Mocks {
        let mut store = Mocks::default();
        store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER1", ApprovalStatus::Approved))));
        store
    }

    #[tokio::test]
    async fn a_message_of_up_to_the_limit_is_sent_and_its_id_returned() {
        let messenger = recording(|| Ok("3EB0ABC".into()));
        let longest = "é".repeat(MAX_TEXT_CHARS);
        let t = trekker(with_bot());
        assert_eq!(t.send_bot_message(&messenger, "bot-1", Some(" 254700000002 "), &longest).await.unwrap(), "3EB0ABC");
        assert_eq!(t.send_bot_message(&messenger, "bot-1", Some(""), "hi").await.unwrap(), "3EB0ABC");
        let asked = messenger.asked.lock().unwrap();
        assert_eq!(asked[0], ("bot-1".into(), Some("254700000002".into()), longest));
        assert_eq!(asked[1], ("bot-1".into(), None, "hi".into()), "no number: the bot's own chat");
    }

    #[tokio::test]
    async fn a_bad_message_is_refused_before_anything_is_sent() {
        let messenger = recording(|| Ok("never".into()));
        let too_long = "a".repeat(MAX_TEXT_CHARS + 1);
        for (to, text) in [(Some("not a phone"), "hi"), (None, "   "), (None, too_long.as_str())] {
            let err = trekker(Mocks::default()).send_bot_message(&messenger, "bot-1", to, text).await.unwrap_err();
            assert!(matches!(err, AppError::InvalidInput(_)), "{to:?}: {err:?}");
        }
        assert!(messenger.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_bot_hosted_elsewhere_or_a_refusal_is_a_conflict_that_says_why() {
        let elsewhere = recording(|| Err(MessengerError::NotRunningHere));
        let err = trekker(with_bot()).send_bot_message(&elsewhere, "bot-1", None, "hi").await.unwrap_err();
        assert!(matches!(&err, AppError::Conflict(text) if text.contains("hosted on SERVER1")), "{err:?}");
        let refused = recording(|| Err(MessengerError::Refused("no session for the recipient".into())));
        let err = trekker(with_bot()).send_bot_message(&refused, "bot-1", None, "hi").await.unwrap_err();
        assert!(matches!(&err, AppError::Conflict(text) if text.starts_with("WhatsApp did not take")), "{err:?}");
        let held = recording(|| {
            Err(MessengerError::Throttled {
                reason: "sending is on hold: WhatsApp answered 463".into(),
                retry_after_secs: 90,
            })
        });
        let err = trekker(with_bot()).send_bot_message(&held, "bot-1", None, "hi").await.unwrap_err();
        let AppError::Throttled { reason, retry_after_secs: 90 } = &err else { panic!("{err:?}") };
        assert_eq!(reason, "Sending is on hold: WhatsApp answered 463.");
        let unsupported = NoMessenger.send_text(&BotId::parse("bot-1").unwrap(), None, "hi").await;
        assert!(matches!(unsupported, Err(MessengerError::Unsupported)));
    }
}
