//! [`RuntimeStore`] methods: what the hosting node's supervisor reads, the
//! run leases that keep one runner per bot, and status reports (invariant 4).

use async_trait::async_trait;
use trekker_domain::{BotId, Credentials, ServerName};

use super::Db;
use crate::cipher::Sealed;
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::RuntimeStore;

#[async_trait]
impl RuntimeStore for SqlStore<Db> {
    async fn bots_to_run(&self, node: &ServerName, now: Millis) -> Result<Vec<BotRecord>, StoreError> {
        let rows: Vec<BotRow> = sqlx::query_as(concat!(
            "SELECT ",
            bot_columns!(),
            " FROM bot_instances WHERE server_name = $1 AND approval_status = 'approved' \
             AND (expires_at IS NULL OR expires_at > $2) ORDER BY created_at DESC, id"
        ))
        .bind(node.as_str())
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        bots(rows)
    }

    async fn load_credentials(&self, id: &BotId) -> Result<Option<(Credentials, i64)>, StoreError> {
        let row: Option<SealedRow> = sqlx::query_as(
            "SELECT credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version \
             FROM bot_instances WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed = Sealed {
            ciphertext: row.credentials_ciphertext,
            nonce: row.credentials_nonce,
            key_id: row.credentials_key_id,
        };
        Ok(Some((self.open(id.as_str(), &sealed)?, row.credentials_version)))
    }

    async fn acquire_bot_lease(
        &self,
        id: &BotId,
        node: &ServerName,
        version: i64,
        now: Millis,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE bot_instances SET runner = $2, runner_until = $4 + $5 \
             WHERE id = $1 AND server_name = $2 AND approval_status = 'approved' AND credentials_version = $3 \
             AND (runner IS NULL OR runner = $2 OR runner_until < $4)",
        )
        .bind(id.as_str())
        .bind(node.as_str())
        .bind(version)
        .bind(now)
        .bind(lease_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn renew_bot_leases(&self, node: &ServerName, now: Millis, lease_ms: i64) -> Result<Vec<BotId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE bot_instances SET runner_until = $2 + $3 WHERE runner = $1 AND server_name = $1 \
             AND approval_status = 'approved' RETURNING id",
        )
        .bind(node.as_str())
        .bind(now)
        .bind(lease_ms)
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| BotId::parse(id).map_err(|_| corrupt("bot id", id))).collect()
    }

    async fn release_bot_lease(&self, id: &BotId, node: &ServerName) -> Result<(), StoreError> {
        sqlx::query("UPDATE bot_instances SET runner = NULL, runner_until = NULL WHERE id = $1 AND runner = $2")
            .bind(id.as_str())
            .bind(node.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn report_runtime(&self, report: &RuntimeReport, now: Millis) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE bot_instances SET status = $4, restarts = restarts + $5, \
             last_error = COALESCE(CAST($6 AS TEXT), last_error), \
             invalid_reason = COALESCE(CAST($7 AS TEXT), invalid_reason), updated_at = $8 \
             WHERE id = $1 AND server_name = $2 AND credentials_version = $3",
        )
        .bind(report.bot_id.as_str())
        .bind(report.node.as_str())
        .bind(report.version)
        .bind(report.status.as_str())
        .bind(report.restarts)
        .bind(report.last_error.as_deref())
        .bind(report.invalid_reason.as_deref())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
