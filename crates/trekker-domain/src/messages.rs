//! Every text a guest reads, in one place so wording stays consistent.
//!
//! The error texts that API.md quotes are reproduced here word for word.

use crate::ids::ServerName;
use crate::phone::PhoneNumber;

pub fn credentials_valid_new() -> String {
    "Credentials are valid. This phone number is not registered yet and can be registered.".to_owned()
}

pub fn credentials_valid_update(server: &ServerName) -> String {
    format!(
        "Credentials are valid. This phone number is already registered on {server}; \
        registering again updates its credentials."
    )
}

pub fn credentials_valid_cross_server(host: &ServerName) -> String {
    format!(
        "Credentials are valid. This phone number is registered on {host}; \
        registering again forwards the new credentials to {host}."
    )
}

pub fn phone_mismatch(in_session: &PhoneNumber, given: &PhoneNumber) -> String {
    format!("Credentials phone number mismatch. The session belongs to +{in_session} but you provided +{given}.")
}

pub fn registry_inconsistent(server: &ServerName) -> String {
    format!("Bot found in registry on {server} but not in database. Please contact support.")
}

pub fn server_mismatch(hosted_on: &ServerName, requested: &ServerName) -> String {
    format!("This phone number is registered on {hosted_on}. Cannot move to {requested}.")
}

pub fn server_full(server: &ServerName) -> String {
    format!("Server {server} is at capacity. Choose another server or leave the choice to us.")
}

pub fn unknown_server(server: &str) -> String {
    format!("Server {server} does not exist.")
}

pub fn all_servers_full() -> String {
    "All servers are at capacity. Please try again later or contact support.".to_owned()
}

pub fn remote_update_failed(host: &ServerName, reason: &str) -> String {
    format!("Failed to update credentials on {host}: {reason}")
}

/// Sent to the guest when a new bot waits for an admin.
pub fn registered_pending_approval(bot_name: &str, server: &ServerName) -> String {
    format!(
        "Your bot \"{bot_name}\" is registered on {server} and is waiting for admin approval. \
        You will be notified once it is approved."
    )
}

/// Sent to the guest when the bot was placed on another server.
pub fn auto_assigned(bot_name: &str, from: &ServerName, to: &ServerName, slots_left: i64) -> String {
    format!(
        "{from} is full, so your bot \"{bot_name}\" was registered on {to} ({slots_left} slots left there). \
        It is waiting for admin approval."
    )
}

/// Sent to the guest when the bot's credentials were replaced.
pub fn credentials_updated(bot_name: &str, server: &ServerName, restarting: bool) -> String {
    if restarting {
        format!("The credentials of your bot \"{bot_name}\" were updated on {server}. The bot is restarting with them.")
    } else {
        format!(
            "The credentials of your bot \"{bot_name}\" were updated on {server}. \
            They take effect once the bot is approved."
        )
    }
}

/// Sent to the guest when the credentials came in through another server.
pub fn credentials_updated_cross_server(bot_name: &str, host: &ServerName, via: &ServerName) -> String {
    format!(
        "The credentials of your bot \"{bot_name}\" were updated on {host} (received via {via}). \
        The bot is restarting with them."
    )
}

/// Sent to the guest when an admin approves the bot.
pub fn approved(bot_name: &str, expires_on: &str) -> String {
    format!("Your bot \"{bot_name}\" was approved and is starting. The approval is valid until {expires_on}.")
}

/// Told to the guest when the hosting server could not be reached at once.
pub fn cross_server_update_queued(host: &ServerName) -> String {
    format!(
        "{host} hosts this bot and could not be reached right now. \
        The new credentials are queued and will be applied on {host} as soon as it is back."
    )
}

/// Told to the guest when the hosting server applied the new credentials.
pub fn cross_server_update_done(bot_name: &str, host: &ServerName) -> String {
    format!(
        "The credentials of your bot \"{bot_name}\" were updated on {host}, which hosts it. \
        The bot is restarting with them."
    )
}

/// A message to a guest as it is queued. Most texts are complete when the
/// change is decided; an auto-assignment names the slots left on the target,
/// which only the transaction that takes the slot knows, so it stays typed
/// until then (no placeholder in user text: a bot named `{slots_left}` keeps
/// its name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestMessage {
    /// A finished text.
    Text(String),
    /// The bot was placed on `to` because `from` was full.
    AutoAssigned { bot_name: String, from: ServerName, to: ServerName },
}

impl GuestMessage {
    /// The text to send; `slots_left` is the free slots on the bot's server
    /// right after its registration (given only by the registration).
    pub fn render(&self, slots_left: Option<i64>) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::AutoAssigned { bot_name, from, to } => auto_assigned(bot_name, from, to, slots_left.unwrap_or(0)),
        }
    }
}

impl From<String> for GuestMessage {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for GuestMessage {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}
