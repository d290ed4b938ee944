//! The validation result of `POST /api/validate-credentials` (a wire type).

use serde::Serialize;

use crate::ids::{BotId, ServerName};
use crate::messages;
use crate::phone::PhoneNumber;

/// What a guest learns before registering: is the session usable, and what
/// registering it would do. Field names are the seed's (camelCase on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResult {
    /// Whether the session can be registered.
    pub is_valid: bool,
    /// What the guest reads: why not, or what registering will do.
    pub message: String,
    /// The phone the session belongs to, when it could be read.
    pub phone_number: Option<String>,
    /// Whether the phone has a bot already.
    pub already_registered: bool,
    /// Whether registering forwards the credentials to another node.
    pub cross_server_update: bool,
    /// The server hosting the phone's bot, when the guest may be told.
    pub target_server: Option<String>,
    /// The phone's bot, when the guest may be told.
    pub bot_id: Option<String>,
}

impl ValidationResult {
    /// The credentials could not be used; `message` says why.
    pub fn invalid(message: impl Into<String>, phone: Option<&PhoneNumber>) -> Self {
        Self {
            is_valid: false,
            message: message.into(),
            phone_number: phone.map(|p| p.as_str().to_owned()),
            already_registered: false,
            cross_server_update: false,
            target_server: None,
            bot_id: None,
        }
    }

    /// A phone that no server hosts yet.
    pub fn available(phone: &PhoneNumber) -> Self {
        Self {
            is_valid: true,
            message: messages::credentials_valid_new(),
            phone_number: Some(phone.as_str().to_owned()),
            already_registered: false,
            cross_server_update: false,
            target_server: None,
            bot_id: None,
        }
    }

    /// A phone hosted on this node: registering updates its credentials.
    pub fn registered_here(phone: &PhoneNumber, server: &ServerName, bot: &BotId) -> Self {
        Self {
            is_valid: true,
            message: messages::credentials_valid_update(server),
            phone_number: Some(phone.as_str().to_owned()),
            already_registered: true,
            cross_server_update: false,
            target_server: Some(server.as_str().to_owned()),
            bot_id: Some(bot.as_str().to_owned()),
        }
    }

    /// A phone hosted on another node: registering forwards the credentials.
    pub fn registered_elsewhere(phone: &PhoneNumber, host: &ServerName, bot: &BotId) -> Self {
        Self {
            is_valid: true,
            message: messages::credentials_valid_cross_server(host),
            phone_number: Some(phone.as_str().to_owned()),
            already_registered: true,
            cross_server_update: true,
            target_server: Some(host.as_str().to_owned()),
            bot_id: Some(bot.as_str().to_owned()),
        }
    }

    /// A registered phone, but the session is signed by another WhatsApp
    /// account than the bot's: where and which bot is not told.
    pub fn registered_to_another_account(phone: &PhoneNumber) -> Self {
        Self {
            is_valid: true,
            message: messages::credentials_valid_other_account(),
            phone_number: Some(phone.as_str().to_owned()),
            already_registered: true,
            cross_server_update: false,
            target_server: None,
            bot_id: None,
        }
    }
}
