//! `CrossTenancyClient`: calls another node's internal endpoints.
//!
//! One call has a total time budget (CROSS_SERVER_TIMEOUT_MS). Connection
//! errors, timeouts and 5xx are retried with capped exponential backoff and
//! full jitter (backon) while the budget lasts; 4xx is the host's answer and
//! is not retried. Every attempt carries a fresh token (new `jti`) and the
//! same command id (`Idempotency-Key`), so the host applies it once.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use trekker_domain::ServerName;

use crate::token::ClusterKeys;
use crate::wire::{
    BotLogsAnswer, BotLogsQuery, BotMessageCommand, BotMessageSent, CREDENTIALS_PATH, CredentialsUpdateAnswer,
    CredentialsUpdateBody, ErrorAnswer, HEALTH_PATH, HealthAnswer, IDEMPOTENCY_HEADER, LOGS_PATH, MESSAGES_PATH,
};

/// Why a call to another node failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// This node cannot call at all (no secret, no address for the host).
    #[error("{0}")]
    Misconfigured(String),
    /// No answer within the budget (down, unreachable, 5xx, timeout).
    #[error("{0}")]
    Unreachable(String),
    /// The host answered with a refusal (4xx): its code and message.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its stable error code.
        code: String,
        /// Its message.
        message: String,
        /// Its Retry-After, with RATE_LIMITED.
        retry_after_secs: Option<u64>,
    },
}

impl ClientError {
    fn retryable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

/// Calls other nodes: mints a token per request and retries, within the
/// call's budget, only what may succeed on retry.
#[derive(Clone)]
pub struct CrossTenancyClient {
    http: reqwest::Client,
    keys: Option<ClusterKeys>,
    me: ServerName,
    budget: Duration,
}

impl std::fmt::Debug for CrossTenancyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrossTenancyClient").field("me", &self.me).field("budget", &self.budget).finish_non_exhaustive()
    }
}

impl CrossTenancyClient {
    /// A client for node `me`; without keys (no CLUSTER_SECRET) every call fails.
    pub fn new(keys: Option<ClusterKeys>, me: ServerName, budget: Duration) -> Result<Self, ClientError> {
        // reqwest is built without a default TLS provider (one crypto
        // library per build); without one installed it panics here. Ring
        // is the build's one; installing it again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(budget.min(Duration::from_secs(2)))
            // A redirect is not followed: the receiver is configured, not chosen
            // by whoever answers.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Misconfigured(format!("http client: {e}")))?;
        Ok(Self { http, keys, me, budget })
    }

    /// How long one call may take, retries included.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Sends a credentials update to `target` at `base_url`.
    pub async fn update_bot_credentials(
        &self,
        target: &ServerName,
        base_url: &str,
        command_id: &str,
        body: &CredentialsUpdateBody,
    ) -> Result<CredentialsUpdateAnswer, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Misconfigured(format!("encode body: {e}")))?;
        let text =
            self.call(target, base_url, reqwest::Method::POST, CREDENTIALS_PATH, bytes, Some(command_id)).await?;
        serde_json::from_str(&text)
            .map_err(|_| ClientError::Unreachable(format!("{target} answered an unreadable body")))
    }

    /// Asks `target` whether it is healthy (a signed GET).
    pub async fn health(&self, target: &ServerName, base_url: &str) -> Result<HealthAnswer, ClientError> {
        let text = self.call(target, base_url, reqwest::Method::GET, HEALTH_PATH, Vec::new(), None).await?;
        serde_json::from_str(&text)
            .map_err(|_| ClientError::Unreachable(format!("{target} answered an unreadable body")))
    }

    /// Asks `target`, the bot's host, for the bot's last lines.
    pub async fn bot_logs(
        &self,
        target: &ServerName,
        base_url: &str,
        query: &BotLogsQuery,
    ) -> Result<BotLogsAnswer, ClientError> {
        let bytes = serde_json::to_vec(query).map_err(|e| ClientError::Misconfigured(format!("encode body: {e}")))?;
        let text = self.call(target, base_url, reqwest::Method::POST, LOGS_PATH, bytes, None).await?;
        serde_json::from_str(&text)
            .map_err(|_| ClientError::Unreachable(format!("{target} answered an unreadable body")))
    }

    /// Has `target`, the bot's host, send `command`'s text, once per
    /// `command_id` however often the call is retried (network trouble).
    pub async fn send_bot_message(
        &self,
        target: &ServerName,
        base_url: &str,
        command_id: &str,
        command: &BotMessageCommand,
    ) -> Result<BotMessageSent, ClientError> {
        let bytes = serde_json::to_vec(command).map_err(|e| ClientError::Misconfigured(format!("encode body: {e}")))?;
        let text = self.call(target, base_url, reqwest::Method::POST, MESSAGES_PATH, bytes, Some(command_id)).await?;
        serde_json::from_str(&text)
            .map_err(|_| ClientError::Unreachable(format!("{target} answered an unreadable body")))
    }

    async fn call(
        &self,
        target: &ServerName,
        base_url: &str,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        command_id: Option<&str>,
    ) -> Result<String, ClientError> {
        let keys = self
            .keys
            .as_ref()
            .ok_or_else(|| ClientError::Misconfigured("this node has no CLUSTER_SECRET configured".into()))?;
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ClientError::Misconfigured(format!("{target} has no usable base URL")));
        }
        let url = format!("{}{path}", base_url.trim_end_matches('/'));
        let deadline = Instant::now() + self.budget;
        let attempt = || async {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Unreachable(format!("{target} did not answer in time")));
            }
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            let token = keys.mint(self.me.as_str(), target.as_str(), method.as_str(), path, &body, now);
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token)
                .timeout(left)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(id) = command_id {
                request = request.header(IDEMPOTENCY_HEADER, id);
            }
            let response = request
                .send()
                .await
                .map_err(|e| ClientError::Unreachable(format!("{target} unreachable: {}", e.without_url())))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if status.is_success() {
                Ok(text)
            } else if status.is_client_error() {
                let answer: ErrorAnswer = serde_json::from_str(&text).unwrap_or_default();
                let message =
                    if answer.message.is_empty() { format!("{target} answered {status}") } else { answer.message };
                let retry_after_secs = answer.retry_after_secs;
                Err(ClientError::Refused { status: status.as_u16(), code: answer.code, message, retry_after_secs })
            } else {
                Err(ClientError::Unreachable(format!("{target} answered {status}")))
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_millis(800))
            .with_jitter()
            .with_max_times(8);
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|err: &ClientError| err.retryable() && Instant::now() < deadline)
            .await
    }
}
