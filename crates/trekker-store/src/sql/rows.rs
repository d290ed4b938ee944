//! Row types of the SQL store and their conversion into domain records
//! (a value that does not parse is `StoreError::Corrupt`, never a panic),
//! plus the column lists shared by the queries.

use std::str::FromStr;

use trekker_domain::{ApprovalStatus, BotId, PhoneNumber, RuntimeStatus, ServerName, ServerStatus};

use crate::error::StoreError;
use crate::model::*;

macro_rules! bot_columns {
    () => {
        "id, name, phone_number, server_name, approval_status, status, credentials_version, \
         credentials_updated_at, approval_date, expires_at, invalid_reason, restarts, last_error, \
         created_at, updated_at"
    };
}
pub(super) use bot_columns;

macro_rules! server_columns {
    () => {
        "server_name, max_bot_count, current_bot_count, server_status, base_url, last_heartbeat, description"
    };
}
pub(super) use server_columns;

#[derive(sqlx::FromRow)]
pub(super) struct BotRow {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) phone_number: String,
    pub(super) server_name: String,
    pub(super) approval_status: String,
    pub(super) status: String,
    pub(super) credentials_version: i64,
    pub(super) credentials_updated_at: i64,
    pub(super) approval_date: Option<i64>,
    pub(super) expires_at: Option<i64>,
    pub(super) invalid_reason: Option<String>,
    pub(super) restarts: i64,
    pub(super) last_error: Option<String>,
    pub(super) created_at: i64,
    pub(super) updated_at: i64,
}

pub(super) fn corrupt(what: &str, value: &str) -> StoreError {
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
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ServerRow {
    pub(super) server_name: String,
    pub(super) max_bot_count: i64,
    pub(super) current_bot_count: i64,
    pub(super) server_status: String,
    pub(super) base_url: Option<String>,
    pub(super) last_heartbeat: Option<i64>,
    pub(super) description: Option<String>,
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
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct RegistryRow {
    pub(super) phone_number: String,
    pub(super) tenancy_name: String,
    pub(super) bot_id: String,
    pub(super) registered_at: i64,
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
pub(super) struct ActivityRow {
    pub(super) id: i64,
    pub(super) occurred_at: i64,
    pub(super) server_name: String,
    pub(super) bot_id: Option<String>,
    pub(super) phone_number: Option<String>,
    pub(super) action: String,
    pub(super) details: String,
    pub(super) remote_tenancy: Option<String>,
    pub(super) remote_bot_id: Option<String>,
}

#[derive(sqlx::FromRow)]
pub(super) struct PairingRow {
    pub(super) id: String,
    pub(super) phone_number: String,
    pub(super) pairing_code: String,
    pub(super) status: String,
    pub(super) session_ciphertext: Option<Vec<u8>>,
    pub(super) session_nonce: Option<Vec<u8>>,
    pub(super) session_key_id: Option<String>,
    pub(super) message: Option<String>,
    pub(super) created_at: i64,
    pub(super) expires_at: i64,
}

#[derive(sqlx::FromRow)]
pub(super) struct NotificationRow {
    pub(super) id: i64,
    pub(super) phone_number: String,
    pub(super) message: String,
    pub(super) attempts: i64,
    pub(super) created_at: i64,
}

#[derive(sqlx::FromRow)]
pub(super) struct OutboxRow {
    pub(super) id: String,
    pub(super) bot_id: String,
    pub(super) phone_number: String,
    pub(super) source_server: String,
    pub(super) target_server: String,
    pub(super) credentials_version: Option<i64>,
    pub(super) status: String,
    pub(super) attempts: i64,
    pub(super) last_error: Option<String>,
    pub(super) created_at: i64,
    pub(super) delivered_at: Option<i64>,
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
pub(super) struct ClaimedRow {
    #[sqlx(flatten)]
    pub(super) outbox: OutboxRow,
    pub(super) credentials_ciphertext: Vec<u8>,
    pub(super) credentials_nonce: Vec<u8>,
    pub(super) credentials_key_id: String,
}

#[derive(sqlx::FromRow)]
pub(super) struct IdempotencyRow {
    pub(super) fingerprint: String,
    pub(super) state: String,
    pub(super) response_status: Option<i32>,
    pub(super) response_body: Option<String>,
    pub(super) created_at: i64,
}

macro_rules! outbox_columns {
    () => {
        "id, bot_id, phone_number, source_server, target_server, credentials_version, status, attempts, \
         last_error, created_at, delivered_at"
    };
}
pub(super) use outbox_columns;

#[derive(sqlx::FromRow)]
pub(super) struct SealedRow {
    pub(super) credentials_ciphertext: Vec<u8>,
    pub(super) credentials_nonce: Vec<u8>,
    pub(super) credentials_key_id: String,
    pub(super) credentials_version: i64,
}

#[derive(sqlx::FromRow)]
pub(super) struct ApprovalRow {
    pub(super) approval_status: String,
    pub(super) server_name: String,
    pub(super) phone_number: String,
}

pub(super) fn parse_approval(text: &str) -> Result<ApprovalStatus, StoreError> {
    ApprovalStatus::from_str(text).map_err(|_| corrupt("approval status", text))
}

pub(super) fn bots(rows: Vec<BotRow>) -> Result<Vec<BotRecord>, StoreError> {
    rows.into_iter().map(BotRecord::try_from).collect()
}
