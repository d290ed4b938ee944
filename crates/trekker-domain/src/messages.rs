//! Every text a guest reads, in one place so wording stays consistent.
//!
//! The error texts that API.md quotes are reproduced here word for word.

use crate::ids::ServerName;
use crate::phone::PhoneNumber;

/// The session is usable and its phone has no bot yet.
pub fn credentials_valid_new() -> String {
    "Credentials are valid. This phone number is not registered yet and can be registered.".to_owned()
}

/// The phone's bot is on `server` (this node): registering replaces its credentials.
pub fn credentials_valid_update(server: &ServerName) -> String {
    format!(
        "Credentials are valid. This phone number is already registered on {server}; \
        registering again updates its credentials."
    )
}

/// The phone's bot is on `host`: registering forwards the credentials there.
pub fn credentials_valid_cross_server(host: &ServerName) -> String {
    format!(
        "Credentials are valid. This phone number is registered on {host}; \
        registering again forwards the new credentials to {host}."
    )
}

/// The phone has a bot, but another WhatsApp account signed this session.
pub fn credentials_valid_other_account() -> String {
    "Credentials are valid, but this phone number is registered with a session of another WhatsApp account. \
     Registering them would wait for an admin's review."
        .to_owned()
}

/// ACCOUNT_MISMATCH (API.md): the running bot is untouched.
pub fn account_mismatch() -> String {
    "This session is signed by another WhatsApp account than the bot registered for this phone number. \
     The running bot is unchanged; an admin will review the change."
        .to_owned()
}

/// The same account, but an older pairing than the one registered.
pub fn older_session() -> String {
    "A newer session of this WhatsApp account is already registered for this phone number. \
     Pair the phone again to get a new session ID."
        .to_owned()
}

/// The session belongs to another phone than the one typed.
pub fn phone_mismatch(in_session: &PhoneNumber, given: &PhoneNumber) -> String {
    format!("Credentials phone number mismatch. The session belongs to +{in_session} but you provided +{given}.")
}

/// The registry and the bot rows disagree about `server`; an admin must repair it.
pub fn registry_inconsistent(server: &ServerName) -> String {
    format!("Bot found in registry on {server} but not in database. Please contact support.")
}

/// The guest chose `requested`, but the phone's bot lives on `hosted_on`.
pub fn server_mismatch(hosted_on: &ServerName, requested: &ServerName) -> String {
    format!("This phone number is registered on {hosted_on}. Cannot move to {requested}.")
}

/// `server` has no free slot.
pub fn server_full(server: &ServerName) -> String {
    format!("Server {server} is at capacity. Choose another server or leave the choice to us.")
}

/// No server is named `server`.
pub fn unknown_server(server: &str) -> String {
    format!("Server {server} does not exist.")
}

/// No server of the cluster has a free slot.
pub fn all_servers_full() -> String {
    "All servers are at capacity. Please try again later or contact support.".to_owned()
}

/// Forwarding new credentials to `host` failed for `reason`.
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

/// Sent to the guest when an admin (or the fleet itself) moved the bot.
pub fn bot_moved(bot_name: &str, from: &ServerName, to: &ServerName) -> String {
    format!(
        "Your bot \"{bot_name}\" was moved from {from} to {to}. Its session moves with it: it restarts there \
         in a moment, nothing to do on your side."
    )
}

/// Sent to the bot's owner when WhatsApp logged its session out: the bot
/// waits for a new session and is not restarted until then.
pub fn logged_out(bot_name: &str) -> String {
    format!(
        "Your bot \"{bot_name}\" was logged out of WhatsApp (its linked device was removed or expired) and has \
         stopped. Pair your phone again and register the new session ID with the same phone number to bring it back."
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

/// Sent to the guest when nobody approved the bot in time.
pub fn pending_expired(bot_name: &str, hours: i64) -> String {
    format!(
        "Your bot \"{bot_name}\" was not approved within {hours} hours and was removed. \
         Its phone number is free: you can register it again."
    )
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
    AutoAssigned {
        /// The bot's display name.
        bot_name: String,
        /// The full server the guest registered on.
        from: ServerName,
        /// The server that took the bot.
        to: ServerName,
    },
    /// The bot was moved from `from` to `to`, its session with it.
    Moved {
        /// The bot's display name.
        bot_name: String,
        /// The server it left.
        from: ServerName,
        /// The server it runs on now.
        to: ServerName,
    },
}

impl GuestMessage {
    /// The text to send; `slots_left` is the free slots on the bot's server
    /// right after its registration (given only by the registration).
    pub fn render(&self, slots_left: Option<i64>) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::AutoAssigned { bot_name, from, to } => auto_assigned(bot_name, from, to, slots_left.unwrap_or(0)),
            Self::Moved { bot_name, from, to } => bot_moved(bot_name, from, to),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn server(name: &str) -> ServerName {
        ServerName::parse(name).unwrap()
    }

    /// Every text as a guest reads it; API.md quotes several word for word.
    #[test]
    fn every_text_reads_as_written() {
        let (a, b) = (server("SERVER0"), server("SERVER1"));
        let phone = |p: &str| PhoneNumber::parse(p).unwrap();
        let cases = [
            (
                credentials_valid_new(),
                "Credentials are valid. This phone number is not registered yet and can be registered.",
            ),
            (
                credentials_valid_update(&a),
                "Credentials are valid. This phone number is already registered on SERVER0; registering again \
                 updates its credentials.",
            ),
            (
                credentials_valid_cross_server(&b),
                "Credentials are valid. This phone number is registered on SERVER1; registering again forwards \
                 the new credentials to SERVER1.",
            ),
            (
                phone_mismatch(&phone("254700000001"), &phone("254700000002")),
                "Credentials phone number mismatch. The session belongs to +254700000001 but you provided \
                 +254700000002.",
            ),
            (
                registry_inconsistent(&a),
                "Bot found in registry on SERVER0 but not in database. Please contact support.",
            ),
            (server_mismatch(&a, &b), "This phone number is registered on SERVER0. Cannot move to SERVER1."),
            (server_full(&a), "Server SERVER0 is at capacity. Choose another server or leave the choice to us."),
            (unknown_server("NOPE"), "Server NOPE does not exist."),
            (all_servers_full(), "All servers are at capacity. Please try again later or contact support."),
            (remote_update_failed(&b, "it said no"), "Failed to update credentials on SERVER1: it said no"),
            (
                registered_pending_approval("Bot", &a),
                "Your bot \"Bot\" is registered on SERVER0 and is waiting for admin approval. You will be notified \
                 once it is approved.",
            ),
            (
                auto_assigned("Bot", &a, &b, 4),
                "SERVER0 is full, so your bot \"Bot\" was registered on SERVER1 (4 slots left there). It is waiting \
                 for admin approval.",
            ),
            (
                GuestMessage::Moved { bot_name: "Bot".into(), from: a.clone(), to: b.clone() }.render(None),
                "Your bot \"Bot\" was moved from SERVER0 to SERVER1. Its session moves with it: it restarts there \
                 in a moment, nothing to do on your side.",
            ),
            (
                credentials_updated("Bot", &a, true),
                "The credentials of your bot \"Bot\" were updated on SERVER0. The bot is restarting with them.",
            ),
            (
                credentials_updated("Bot", &a, false),
                "The credentials of your bot \"Bot\" were updated on SERVER0. They take effect once the bot is \
                 approved.",
            ),
            (
                credentials_updated_cross_server("Bot", &a, &b),
                "The credentials of your bot \"Bot\" were updated on SERVER0 (received via SERVER1). The bot is \
                 restarting with them.",
            ),
            (
                approved("Bot", "2026-12-01"),
                "Your bot \"Bot\" was approved and is starting. The approval is valid until 2026-12-01.",
            ),
            (
                cross_server_update_queued(&b),
                "SERVER1 hosts this bot and could not be reached right now. The new credentials are queued and will \
                 be applied on SERVER1 as soon as it is back.",
            ),
            (
                cross_server_update_done("Bot", &b),
                "The credentials of your bot \"Bot\" were updated on SERVER1, which hosts it. The bot is restarting \
                 with them.",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text, expected);
        }
        let ownership = [
            (
                credentials_valid_other_account(),
                "Credentials are valid, but this phone number is registered with a session of another WhatsApp \
                 account. Registering them would wait for an admin's review.",
            ),
            (
                account_mismatch(),
                "This session is signed by another WhatsApp account than the bot registered for this phone number. \
                 The running bot is unchanged; an admin will review the change.",
            ),
            (
                older_session(),
                "A newer session of this WhatsApp account is already registered for this phone number. Pair the \
                 phone again to get a new session ID.",
            ),
            (
                pending_expired("Bot", 72),
                "Your bot \"Bot\" was not approved within 72 hours and was removed. Its phone number is free: you \
                 can register it again.",
            ),
        ];
        for (text, expected) in ownership {
            assert_eq!(text, expected);
        }
    }

    #[test]
    fn a_typed_message_renders_its_text() {
        assert_eq!(GuestMessage::Text("hi".into()).render(Some(3)), "hi");
        let placed = GuestMessage::AutoAssigned { bot_name: "B".into(), from: server("A"), to: server("C") };
        assert_eq!(placed.render(Some(2)), auto_assigned("B", &server("A"), &server("C"), 2));
    }
}
