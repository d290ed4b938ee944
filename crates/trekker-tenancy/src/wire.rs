//! Paths and JSON bodies of the node-to-node endpoints (API.md).

use serde::{Deserialize, Serialize};

pub const CREDENTIALS_PATH: &str = "/internal/tenants/bots/credentials";
pub const HEALTH_PATH: &str = "/internal/tenants/health";
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// `POST /internal/tenants/bots/credentials`. Holds a secret (`session_id`):
/// `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsUpdateBody {
    pub bot_id: String,
    pub phone_number: String,
    pub session_id: String,
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
    pub success: bool,
    pub bot_id: String,
    pub server: String,
    pub credentials_version: i64,
    pub restarted: bool,
}

/// `GET /internal/tenants/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthAnswer {
    pub status: String,
    pub server_name: String,
}

/// An error body from another node.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorAnswer {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}
