//! Row types of the SQL store and their conversion into domain records
//! (a value that does not parse is `StoreError::Corrupt`, never a panic),
//! plus the column lists shared by the queries.

use std::str::FromStr;

use trekker_domain::access::Actor;
use trekker_domain::{ApprovalStatus, BotId, DesiredState, PhoneNumber, RuntimeStatus, ServerName, ServerStatus};

use crate::error::StoreError;
use crate::model::*;

macro_rules! bot_columns {
    () => {
        "id, name, phone_number, server_name, approval_status, status, credentials_version, \
         credentials_updated_at, approval_date, expires_at, invalid_reason, restarts, last_error, \
         created_at, updated_at, account_key, adv_timestamp, desired_state, power_seq, moved_at"
    };
}
pub(crate) use bot_columns;

macro_rules! server_columns {
    () => {
        "server_name, max_bot_count, current_bot_count, server_status, base_url, last_heartbeat, description, \
         load_cpu_percent, load_memory_available, load_bots_running, evacuation_started_at, evacuation_stuck"
    };
}
pub(crate) use server_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct BotRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) phone_number: String,
    pub(crate) server_name: String,
    pub(crate) approval_status: String,
    pub(crate) status: String,
    pub(crate) credentials_version: i64,
    pub(crate) credentials_updated_at: i64,
    pub(crate) approval_date: Option<i64>,
    pub(crate) expires_at: Option<i64>,
    pub(crate) invalid_reason: Option<String>,
    pub(crate) restarts: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) updated_at: i64,
    pub(crate) account_key: Option<Vec<u8>>,
    pub(crate) adv_timestamp: Option<i64>,
    pub(crate) desired_state: String,
    pub(crate) power_seq: i64,
    pub(crate) moved_at: Option<i64>,
}

pub(crate) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} `{value}`"))
}

impl TryFrom<BotRow> for BotRecord {
    type Error = StoreError;

    fn try_from(row: BotRow) -> Result<Self, StoreError> {
        Ok(Self {
            id: BotId::parse(&row.id).map_err(|_| corrupt("bot id", &row.id))?,
            phone: PhoneNumber::parse(&row.phone_number).map_err(|_| corrupt("phone", &row.phone_number))?,
            server: ServerName::parse(&row.server_name).map_err(|_| corrupt("server", &row.server_name))?,
            approval: ApprovalStatus::from_str(&row.approval_status)
                .map_err(|_| corrupt("approval status", &row.approval_status))?,
            status: RuntimeStatus::from_str(&row.status).map_err(|_| corrupt("status", &row.status))?,
            name: row.name,
            credentials_version: row.credentials_version,
            credentials_updated_at: row.credentials_updated_at,
            approval_date: row.approval_date,
            expires_at: row.expires_at,
            invalid_reason: row.invalid_reason,
            restarts: row.restarts,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
            account_key: row
                .account_key
                .map(|key| <[u8; 32]>::try_from(key.as_slice()).map_err(|_| corrupt("account key", "not 32 bytes")))
                .transpose()?,
            adv_timestamp: row.adv_timestamp,
            desired_state: DesiredState::from_str(&row.desired_state)
                .map_err(|_| corrupt("desired state", &row.desired_state))?,
            power_seq: row.power_seq,
            moved_at: row.moved_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ServerRow {
    pub(crate) server_name: String,
    pub(crate) max_bot_count: i64,
    pub(crate) current_bot_count: i64,
    pub(crate) server_status: String,
    pub(crate) base_url: Option<String>,
    pub(crate) last_heartbeat: Option<i64>,
    pub(crate) description: Option<String>,
    pub(crate) load_cpu_percent: Option<i64>,
    pub(crate) load_memory_available: Option<i64>,
    pub(crate) load_bots_running: Option<i64>,
    pub(crate) evacuation_started_at: Option<i64>,
    pub(crate) evacuation_stuck: i64,
}

impl TryFrom<ServerRow> for ServerSnapshot {
    type Error = StoreError;

    fn try_from(row: ServerRow) -> Result<Self, StoreError> {
        Ok(Self {
            name: ServerName::parse(&row.server_name).map_err(|_| corrupt("server", &row.server_name))?,
            status: ServerStatus::from_str(&row.server_status)
                .map_err(|_| corrupt("server status", &row.server_status))?,
            max_bot_count: row.max_bot_count,
            current_bot_count: row.current_bot_count,
            base_url: row.base_url,
            last_heartbeat: row.last_heartbeat,
            description: row.description,
            load: match (row.load_cpu_percent, row.load_memory_available, row.load_bots_running) {
                (Some(cpu_percent), Some(memory_available_bytes), Some(bots_running)) => {
                    Some(ServerLoad { cpu_percent, memory_available_bytes, bots_running })
                }
                _ => None,
            },
            evacuation: row
                .evacuation_started_at
                .map(|started_at| Evacuation { started_at, stuck: row.evacuation_stuck }),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RegistryRow {
    pub(crate) phone_number: String,
    pub(crate) tenancy_name: String,
    pub(crate) bot_id: String,
    pub(crate) registered_at: i64,
}

impl TryFrom<RegistryRow> for RegistryEntry {
    type Error = StoreError;

    fn try_from(row: RegistryRow) -> Result<Self, StoreError> {
        Ok(Self {
            phone: PhoneNumber::parse(&row.phone_number).map_err(|_| corrupt("phone", &row.phone_number))?,
            server: ServerName::parse(&row.tenancy_name).map_err(|_| corrupt("server", &row.tenancy_name))?,
            bot_id: BotId::parse(&row.bot_id).map_err(|_| corrupt("bot id", &row.bot_id))?,
            registered_at: row.registered_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ActivityRow {
    pub(crate) id: i64,
    pub(crate) occurred_at: i64,
    pub(crate) server_name: String,
    pub(crate) bot_id: Option<String>,
    pub(crate) phone_number: Option<String>,
    pub(crate) action: String,
    pub(crate) details: String,
    pub(crate) remote_tenancy: Option<String>,
    pub(crate) remote_bot_id: Option<String>,
    pub(crate) actor_key_id: Option<String>,
    pub(crate) actor_name: Option<String>,
    pub(crate) target: Option<String>,
    pub(crate) result: Option<String>,
}

/// The columns of an [`ActivityRow`].
macro_rules! activity_columns {
    () => {
        "id, occurred_at, server_name, bot_id, phone_number, action, details, remote_tenancy, remote_bot_id, \
         actor_key_id, actor_name, target, result"
    };
}
pub(crate) use activity_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct PairingRow {
    pub(crate) id: String,
    pub(crate) phone_number: String,
    pub(crate) pairing_code: String,
    pub(crate) status: String,
    pub(crate) session_ciphertext: Option<Vec<u8>>,
    pub(crate) session_nonce: Option<Vec<u8>>,
    pub(crate) session_key_id: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) expires_at: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct NotificationRow {
    pub(crate) id: i64,
    pub(crate) phone_number: String,
    pub(crate) message: String,
    pub(crate) attempts: i64,
    pub(crate) created_at: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub(crate) id: String,
    pub(crate) bot_id: String,
    pub(crate) phone_number: String,
    pub(crate) source_server: String,
    pub(crate) target_server: String,
    pub(crate) credentials_version: Option<i64>,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) last_error: Option<String>,
    pub(crate) created_at: i64,
    pub(crate) delivered_at: Option<i64>,
}

impl TryFrom<OutboxRow> for CredentialUpdate {
    type Error = StoreError;

    fn try_from(row: OutboxRow) -> Result<Self, StoreError> {
        Ok(Self {
            bot_id: BotId::parse(&row.bot_id).map_err(|_| corrupt("bot id", &row.bot_id))?,
            phone: PhoneNumber::parse(&row.phone_number).map_err(|_| corrupt("phone", &row.phone_number))?,
            source: ServerName::parse(&row.source_server).map_err(|_| corrupt("server", &row.source_server))?,
            target: ServerName::parse(&row.target_server).map_err(|_| corrupt("server", &row.target_server))?,
            version: row.credentials_version.unwrap_or(0),
            status: OutboxStatus::parse(&row.status).ok_or_else(|| corrupt("outbox status", &row.status))?,
            id: row.id,
            attempts: row.attempts,
            last_error: row.last_error,
            created_at: row.created_at,
            delivered_at: row.delivered_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    #[sqlx(flatten)]
    pub(crate) outbox: OutboxRow,
    pub(crate) credentials_ciphertext: Vec<u8>,
    pub(crate) credentials_nonce: Vec<u8>,
    pub(crate) credentials_key_id: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct IdempotencyRow {
    pub(crate) fingerprint: String,
    pub(crate) state: String,
    pub(crate) response_status: Option<i32>,
    pub(crate) response_body: Option<String>,
    pub(crate) created_at: i64,
}

macro_rules! outbox_columns {
    () => {
        "id, bot_id, phone_number, source_server, target_server, credentials_version, status, attempts, \
         last_error, created_at, delivered_at"
    };
}
pub(crate) use outbox_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct SealedRow {
    pub(crate) credentials_ciphertext: Vec<u8>,
    pub(crate) credentials_nonce: Vec<u8>,
    pub(crate) credentials_key_id: String,
    pub(crate) credentials_version: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApprovalRow {
    pub(crate) approval_status: String,
    pub(crate) server_name: String,
    pub(crate) phone_number: String,
}

pub(crate) fn parse_approval(text: &str) -> Result<ApprovalStatus, StoreError> {
    ApprovalStatus::from_str(text).map_err(|_| corrupt("approval status", text))
}

pub(crate) fn bots(rows: Vec<BotRow>) -> Result<Vec<BotRecord>, StoreError> {
    rows.into_iter().map(BotRecord::try_from).collect()
}

impl From<ActivityRow> for Activity {
    fn from(row: ActivityRow) -> Self {
        Self {
            id: row.id,
            occurred_at: row.occurred_at,
            server: row.server_name,
            bot_id: row.bot_id,
            phone: row.phone_number,
            action: row.action,
            details: row.details,
            remote_tenancy: row.remote_tenancy,
            remote_bot_id: row.remote_bot_id,
            audit: row.actor_name.map(|name| AuditMark {
                actor: Actor { key_id: row.actor_key_id, name },
                target: row.target.unwrap_or_default(),
                result: row.result.unwrap_or_default(),
            }),
        }
    }
}

impl From<NotificationRow> for Notification {
    fn from(row: NotificationRow) -> Self {
        Self {
            id: row.id,
            phone: row.phone_number,
            text: row.message,
            attempts: row.attempts,
            created_at: row.created_at,
        }
    }
}

macro_rules! review_columns {
    () => {
        "id, bot_id, phone_number, account_key, adv_timestamp, status, created_at, decided_at"
    };
}
pub(crate) use review_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct ReviewRow {
    pub(crate) id: String,
    pub(crate) bot_id: String,
    pub(crate) phone_number: String,
    pub(crate) account_key: Vec<u8>,
    pub(crate) adv_timestamp: i64,
    pub(crate) status: String,
    pub(crate) created_at: i64,
    pub(crate) decided_at: Option<i64>,
}

impl TryFrom<ReviewRow> for CredentialReview {
    type Error = StoreError;

    fn try_from(row: ReviewRow) -> Result<Self, StoreError> {
        Ok(Self {
            bot_id: BotId::parse(&row.bot_id).map_err(|_| corrupt("bot id", &row.bot_id))?,
            phone: PhoneNumber::parse(&row.phone_number).map_err(|_| corrupt("phone", &row.phone_number))?,
            account_key: row.account_key.as_slice().try_into().map_err(|_| corrupt("account key", "not 32 bytes"))?,
            status: ReviewStatus::parse(&row.status).ok_or_else(|| corrupt("review status", &row.status))?,
            id: row.id,
            adv_timestamp: row.adv_timestamp,
            created_at: row.created_at,
            decided_at: row.decided_at,
        })
    }
}

macro_rules! pairing_columns {
    () => {
        "id, phone_number, pairing_code, status, session_ciphertext, session_nonce, session_key_id, message, \
         created_at, expires_at"
    };
}
pub(crate) use pairing_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct ApiKeyRow {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) secret_hash: Vec<u8>,
    pub(crate) created_by: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked_at: Option<i64>,
    pub(crate) last_used_at: Option<i64>,
}

impl TryFrom<ApiKeyRow> for ApiKey {
    type Error = StoreError;

    fn try_from(row: ApiKeyRow) -> Result<Self, StoreError> {
        let role = trekker_domain::access::Role::parse(&row.role)
            .map_err(|_| StoreError::Corrupt(format!("api key {} has the unknown role {:?}", row.id, row.role)))?;
        Ok(ApiKey {
            id: row.id,
            name: row.name,
            role,
            secret_hash: row.secret_hash,
            created_by: row.created_by,
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            last_used_at: row.last_used_at,
        })
    }
}
