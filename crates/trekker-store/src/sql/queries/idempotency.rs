//! [`IdempotencyStore`] methods: the answer of each node-to-node command,
//! recorded under its `Idempotency-Key` (invariant 5).

use async_trait::async_trait;

use super::Db;
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::IdempotencyStore;

#[async_trait]
impl IdempotencyStore for SqlStore<Db> {
    async fn begin_idempotent(
        &self,
        key: &str,
        fingerprint: &str,
        now: Millis,
        stale_after_ms: i64,
        ttl_ms: i64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let inserted = super::query(
            "INSERT INTO idempotency_keys (idempotency_key, fingerprint, state, created_at, expires_at) \
             VALUES ($1, $2, 'in_progress', $3, $4) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(key)
        .bind(fingerprint)
        .bind(now)
        .bind(now.saturating_add(ttl_ms))
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(IdempotencyBegin::Started);
        }
        let row: Option<IdempotencyRow> = super::query_as(
            "SELECT fingerprint, state, response_status, response_body, created_at FROM idempotency_keys \
             WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        // Purged between the two statements: the caller may retry.
        let Some(row) = row else { return Ok(IdempotencyBegin::InProgress) };
        if row.fingerprint != fingerprint {
            return Ok(IdempotencyBegin::Mismatch);
        }
        if row.state == "done" {
            let status = row.response_status.and_then(|s| u16::try_from(s).ok()).unwrap_or(500);
            return Ok(IdempotencyBegin::Done { status, body: row.response_body.unwrap_or_default() });
        }
        if row.created_at <= now.saturating_sub(stale_after_ms) {
            let taken = super::query(
                "UPDATE idempotency_keys SET created_at = $2 WHERE idempotency_key = $1 \
                 AND state = 'in_progress' AND created_at = $3",
            )
            .bind(key)
            .bind(now)
            .bind(row.created_at)
            .execute(&self.pool)
            .await?;
            if taken.rows_affected() == 1 {
                return Ok(IdempotencyBegin::Started);
            }
        }
        Ok(IdempotencyBegin::InProgress)
    }

    async fn finish_idempotent(&self, key: &str, status: u16, body: &str) -> Result<(), StoreError> {
        super::query(
            "UPDATE idempotency_keys SET state = 'done', response_status = $2, response_body = $3 \
             WHERE idempotency_key = $1",
        )
        .bind(key)
        .bind(i32::from(status))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn abandon_idempotent(&self, key: &str) -> Result<(), StoreError> {
        super::query("DELETE FROM idempotency_keys WHERE idempotency_key = $1 AND state = 'in_progress'")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn purge_idempotency_keys(&self, now: Millis) -> Result<u64, StoreError> {
        let done =
            super::query("DELETE FROM idempotency_keys WHERE expires_at < $1").bind(now).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}
