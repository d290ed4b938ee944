//! [`CredentialOutbox`] methods: cross-server credential updates, written
//! before any call (invariant 5) and claimed under a lease for delivery.

use async_trait::async_trait;

use super::{BEGIN_WRITE, Db, insert_effects_in, newest_first, split_page};
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::CredentialOutbox;

#[async_trait]
impl CredentialOutbox for SqlStore<Db> {
    async fn enqueue_credential_update(
        &self,
        update: &NewCredentialUpdate,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<CredentialUpdate, StoreError> {
        let sealed = self.seal(&update.id, &update.credentials)?;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // Locking the bot row serializes version numbers per bot.
        let stored: Option<i64> = super::query_scalar(concat!(
            "SELECT credentials_version FROM bot_instances WHERE id = $1 AND approval_status <> 'rejected' ",
            lock_row!()
        ))
        .bind(update.bot_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let stored = stored.ok_or(StoreError::BotNotFound)?;
        let queued: Option<i64> = super::query_scalar(
            "SELECT MAX(credentials_version) FROM credential_update_outbox \
             WHERE bot_id = $1 AND status IN ('pending', 'delivered')",
        )
        .bind(update.bot_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let version = stored.max(queued.unwrap_or(0)) + 1;
        super::query(
            "UPDATE credential_update_outbox SET status = 'superseded', claimed_by = NULL, claimed_until = NULL \
             WHERE bot_id = $1 AND status = 'pending'",
        )
        .bind(update.bot_id.as_str())
        .execute(&mut *tx)
        .await?;
        let row: OutboxRow = super::query_as(concat!(
            "INSERT INTO credential_update_outbox (id, bot_id, phone_number, source_server, target_server, \
             credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version, status, \
             attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10 + $11, $10) RETURNING ",
            outbox_columns!()
        ))
        .bind(&update.id)
        .bind(update.bot_id.as_str())
        .bind(update.phone.as_str())
        .bind(update.source.as_str())
        .bind(update.target.as_str())
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(version)
        .bind(now)
        .bind(update.held_for_ms.clamp(0, 600_000))
        .fetch_one(&mut *tx)
        .await?;
        insert_effects_in(&mut tx, effects, None, now).await?;
        tx.commit().await?;
        row.try_into()
    }

    async fn claim_credential_updates(
        &self,
        worker: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedUpdate>, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let rows: Vec<ClaimedRow> = super::query_as(concat!(
            "UPDATE credential_update_outbox SET claimed_by = $1, claimed_until = $2 + $3, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM credential_update_outbox WHERE status = 'pending' \
             AND next_attempt_at <= $2 AND (claimed_until IS NULL OR claimed_until <= $2) \
             ORDER BY next_attempt_at LIMIT $4 ",
            claim_lock!(),
            ") RETURNING ",
            outbox_columns!(),
            ", credentials_ciphertext, credentials_nonce, credentials_key_id"
        ))
        .bind(worker)
        .bind(now)
        .bind(lease_ms)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        self.open_claimed(rows)
    }

    async fn claim_credential_update(
        &self,
        id: &str,
        worker: &str,
        now: Millis,
        lease_ms: i64,
    ) -> Result<Option<ClaimedUpdate>, StoreError> {
        let rows: Vec<ClaimedRow> = super::query_as(concat!(
            "UPDATE credential_update_outbox SET claimed_by = $2, claimed_until = $3 + $4, attempts = attempts + 1 \
             WHERE id = $1 AND status = 'pending' AND (claimed_until IS NULL OR claimed_until <= $3) RETURNING ",
            outbox_columns!(),
            ", credentials_ciphertext, credentials_nonce, credentials_key_id"
        ))
        .bind(id)
        .bind(worker)
        .bind(now)
        .bind(lease_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(self.open_claimed(rows)?.pop())
    }

    async fn finish_credential_update(
        &self,
        id: &str,
        worker: &str,
        outcome: DeliveryOutcome,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (status, next_attempt, error, delivered_at) = match &outcome {
            DeliveryOutcome::Delivered => ("delivered", None, None, Some(now)),
            DeliveryOutcome::Retry { retry_at, error } => ("pending", Some(*retry_at), Some(error.as_str()), None),
            DeliveryOutcome::Failed { error } => ("failed", None, Some(error.as_str()), None),
            DeliveryOutcome::Expired => ("expired", None, Some("not delivered within 24 hours"), None),
        };
        let done = super::query(
            "UPDATE credential_update_outbox SET status = $3, claimed_by = NULL, claimed_until = NULL, \
             next_attempt_at = COALESCE(CAST($4 AS BIGINT), next_attempt_at), \
             last_error = COALESCE(CAST($5 AS TEXT), last_error), \
             delivered_at = COALESCE(CAST($6 AS BIGINT), delivered_at) \
             WHERE id = $1 AND claimed_by = $2 AND status = 'pending'",
        )
        .bind(id)
        .bind(worker)
        .bind(status)
        .bind(next_attempt)
        .bind(error)
        .bind(delivered_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_credential_update(&self, id: &str) -> Result<Option<CredentialUpdate>, StoreError> {
        let row: Option<OutboxRow> =
            super::query_as(concat!("SELECT ", outbox_columns!(), " FROM credential_update_outbox WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(CredentialUpdate::try_from).transpose()
    }

    async fn list_credential_updates(
        &self,
        status: Option<OutboxStatus>,
        after: Option<(Millis, String)>,
        limit: i64,
    ) -> Result<UpdatePage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let filters = [("status", status.map(|s| s.as_str().to_owned()))];
        let select = concat!("SELECT ", outbox_columns!(), " FROM credential_update_outbox");
        let rows: Vec<OutboxRow> = newest_first(select, &filters, after, limit)
            .build_query_as()
            .persistent(super::named())
            .fetch_all(&self.pool)
            .await?;
        let updates = rows.into_iter().map(CredentialUpdate::try_from).collect::<Result<Vec<_>, _>>()?;
        let (updates, next) = split_page(updates, limit, |u| (u.created_at, u.id.clone()));
        Ok(UpdatePage { updates, next })
    }

    async fn credential_updates_since(&self, since: Millis, limit: i64) -> Result<Vec<CredentialUpdate>, StoreError> {
        // The newest first on the admin page's index, so a bound keeps the
        // most recent hours whole.
        let rows: Vec<OutboxRow> = super::query_as(concat!(
            "SELECT ",
            outbox_columns!(),
            " FROM credential_update_outbox WHERE created_at >= $1 ORDER BY created_at DESC, id LIMIT $2"
        ))
        .bind(since)
        .bind(limit.max(1))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(CredentialUpdate::try_from).collect()
    }

    async fn credential_outbox_depth(&self) -> Result<i64, StoreError> {
        let count: i64 = super::query_scalar("SELECT COUNT(*) FROM credential_update_outbox WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }
}
