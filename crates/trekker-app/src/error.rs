//! The use-case layer's one error type. Each variant is one row of API.md's
//! error table; the HTTP layer maps variants to status and code in one place.

use trekker_domain::{CredentialsError, PhoneNumber, ServerName, SessionError, SessionIdError, messages};
use trekker_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    InvalidSession(SessionError),
    #[error("{0}")]
    InvalidCredentials(CredentialsError),
    #[error("{}", messages::phone_mismatch(.in_session, .given))]
    PhoneMismatch { in_session: PhoneNumber, given: PhoneNumber },
    #[error("{}", messages::unknown_server(.0))]
    UnknownServer(String),
    #[error("{}", messages::registry_inconsistent(.0))]
    RegistryInconsistent(ServerName),
    #[error("{}", messages::server_mismatch(.hosted_on, .requested))]
    ServerMismatch { hosted_on: ServerName, requested: ServerName },
    #[error("{}", messages::server_full(.0))]
    ServerFull(ServerName),
    #[error("{}", messages::all_servers_full())]
    AllServersFull,
    #[error("{}", messages::remote_update_failed(.host, .reason))]
    RemoteUpdateFailed { host: ServerName, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("This Idempotency-Key was used with a different body.")]
    IdempotencyMismatch,
    /// Invariant 8: another WhatsApp account's session; `review_id` names
    /// the review an admin decides (none when the host refused a forward).
    #[error("{}", messages::account_mismatch())]
    AccountMismatch { review_id: Option<String> },
    #[error("{}", messages::older_session())]
    OlderSession,
    /// A limit that protects the bot's number from WhatsApp bans.
    #[error("{reason}")]
    Throttled { reason: String, retry_after_secs: u64 },
    /// Not the caller's fault; the HTTP layer logs it and answers generically.
    #[error("internal error")]
    Store(#[source] StoreError),
}

impl From<SessionIdError> for AppError {
    fn from(err: SessionIdError) -> Self {
        match err {
            SessionIdError::Session(e) => Self::InvalidSession(e),
            SessionIdError::Credentials(e) => Self::InvalidCredentials(e),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::BotNotFound => Self::NotFound("Bot not found.".into()),
            StoreError::Contended => {
                Self::Conflict("This phone number is being registered by another request. Please try again.".into())
            }
            StoreError::PairingNotFound => Self::NotFound("Pairing request not found.".into()),
            StoreError::UnknownServer(name) => Self::UnknownServer(name.to_string()),
            StoreError::Transition(e) => Self::Conflict(format!("{}.", capitalise(&e.to_string()))),
            StoreError::InvalidInput(message) => Self::InvalidInput(message),
            StoreError::AccountMismatch => Self::AccountMismatch { review_id: None },
            StoreError::OlderSession => Self::OlderSession,
            StoreError::ReviewNotFound => Self::NotFound("Credential review not found or already decided.".into()),
            StoreError::Conflict(message) => Self::Conflict(message),
            StoreError::Paced(server) => Self::Conflict(format!("{server} takes no more moved bots this minute.")),
            StoreError::ServerFull(name) => Self::ServerFull(name),
            StoreError::ServerNotAccepting { server, status } => {
                Self::Conflict(format!("{server} is {} and takes no new bots.", status.as_str()))
            }
            StoreError::StaleVersion { current } => {
                Self::Conflict(format!("A newer credentials version ({current}) is already stored."))
            }
            other => Self::Store(other),
        }
    }
}

pub(crate) fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::capitalise;

    /// Reasons from below start a sentence in an answer.
    #[test]
    fn a_reason_starts_with_a_capital() {
        assert_eq!(capitalise("the bot is not running"), "The bot is not running");
        assert_eq!(capitalise("élan"), "Élan");
        assert_eq!(capitalise(""), "");
    }
}
