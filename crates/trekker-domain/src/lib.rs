//! Trekker's domain: pure types and rules, no IO.
//!
//! Everything here can be built only in a valid state ([`PhoneNumber::parse`],
//! [`ServerName::parse`], [`Credentials::from_session_id`], ...), so the
//! layers above never re-check them. The crate has no async runtime, no
//! database and no HTTP dependency, which keeps it cheap to embed: another
//! service can check sessions exactly as a Trekker node does
//! (`examples/embed_domain.rs` is one).
//!
//! The main types:
//! - [`Credentials`]: a Baileys `creds.json`, decoded from a session ID
//!   (`TREKKER~` + base64) or a file, whose WhatsApp account signatures
//!   ([`account`], XEdDSA) were verified; it knows its [`PhoneNumber`] and
//!   the device identity that pins the bot to its account.
//! - [`PhoneNumber`], [`ServerName`], [`BotId`]: identifiers, parsed once.
//! - [`ValidationResult`]: what `POST /api/validate-credentials` answers.
//! - [`ApprovalStatus`], [`RuntimeStatus`], [`DesiredState`], [`ServerStatus`]:
//!   the states of a bot and a server, with their allowed transitions.
//! - [`capacity`], [`server::is_online`], [`messages`]: the rules for
//!   warnings, liveness and what guests are told.
//!
//! # Checking a session ID
//!
//! ```
//! use trekker_domain::{Credentials, SessionIdError, ValidationResult};
//!
//! # let session_id = trekker_testkit::creds::session_id("254700000001", 1);
//! // `session_id` is what a guest pasted: `TREKKER~eyJub2lzZUtleSI6...`
//! let credentials = Credentials::from_session_id(&session_id)?;
//! assert_eq!(credentials.phone().as_str(), "254700000001");
//! // The WhatsApp account that signed this device: a bot is pinned to it.
//! let account = credentials.identity().account_key;
//! assert_eq!(account.len(), 32);
//!
//! // What a node answers for a phone no server hosts yet.
//! let result = ValidationResult::available(credentials.phone());
//! let json = serde_json::to_value(&result).unwrap();
//! assert_eq!(json["isValid"], true);
//! assert_eq!(json["phoneNumber"], "254700000001");
//! assert_eq!(json["alreadyRegistered"], false);
//! # Ok::<(), SessionIdError>(())
//! ```
//!
//! A session whose signatures do not verify, or that is not a session at
//! all, is refused with an error that says which:
//!
//! ```
//! use trekker_domain::Credentials;
//!
//! // "not json", base64-encoded
//! let refused = Credentials::from_session_id("TREKKER~bm90IGpzb24=").unwrap_err();
//! assert_eq!(refused.to_string(), "Session ID does not decode to JSON.");
//! ```

#![warn(missing_docs)]

pub mod access;
pub mod account;
pub mod approval;
pub mod capacity;
pub mod governor;
pub mod ids;
pub mod messages;
pub mod phone;
pub mod runtime;
pub mod server;
pub mod session;
pub mod time;
pub mod validation;

pub use approval::{ApprovalStatus, ApprovalTransitionError};
pub use ids::{BotId, BotIdError, ServerName, ServerNameError};
pub use messages::GuestMessage;
pub use phone::{PhoneNumber, PhoneNumberError};
pub use runtime::{DesiredState, RuntimeStatus};
pub use server::ServerStatus;
pub use session::{Credentials, CredentialsError, SessionError, SessionIdError};
pub use validation::ValidationResult;

/// An enum value that arrived as text (from a database row or a request) and
/// is not one of the known names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{value}`")]
pub struct UnknownVariant {
    /// What was being parsed, e.g. "approval status".
    pub kind: &'static str,
    /// The text that did not match.
    pub value: String,
}
