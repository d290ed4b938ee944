//! Trekker's domain: pure types and rules, no IO.
//!
//! Everything here can be built only in a valid state (`PhoneNumber::parse`,
//! `ServerName::parse`, ...), so the layers above never re-check them. The
//! crate has no async runtime, no database and no HTTP dependency, which keeps
//! it cheap to embed (e.g. to parse session IDs in another tool).

pub mod account;
pub mod approval;
pub mod capacity;
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
