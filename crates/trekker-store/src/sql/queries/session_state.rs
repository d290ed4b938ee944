//! [`SessionStateStore`] methods: each bot's sealed session snapshot,
//! written only by the lease that runs the bot (invariant 9).

use async_trait::async_trait;
use trekker_domain::{BotId, PhoneNumber};

use super::{BEGIN_WRITE, Db, insert_activity_in, lock_if_run_by};
use crate::cipher::Sealed;
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::traits::SessionStateStore;

/// What a sealed state is bound to: the bot and its credentials version,
/// so one bot's state cannot be read as another's, or as a later pairing's.
fn state_row_id(id: &BotId, version: i64) -> String {
    format!("{}/session-state/v{version}", id.as_str())
}

#[derive(sqlx::FromRow)]
struct StateRow {
    generation: i64,
    state_ciphertext: Vec<u8>,
    state_nonce: Vec<u8>,
    state_key_id: String,
    size_bytes: i64,
    file_count: i64,
}

#[async_trait]
impl SessionStateStore for SqlStore<Db> {
    async fn load_session_state(&self, id: &BotId, version: i64) -> Result<Option<SessionSnapshot>, StoreError> {
        let row: Option<StateRow> = super::query_as(
            "SELECT generation, state_ciphertext, state_nonce, state_key_id, size_bytes, file_count \
             FROM bot_session_state WHERE bot_id = $1 AND credentials_version = $2",
        )
        .bind(id.as_str())
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed = Sealed { ciphertext: row.state_ciphertext, nonce: row.state_nonce, key_id: row.state_key_id };
        let archive = self.cipher.open(&state_row_id(id, version), &sealed)?;
        Ok(Some(SessionSnapshot {
            generation: row.generation,
            archive,
            size_bytes: row.size_bytes,
            file_count: row.file_count,
        }))
    }

    async fn save_session_state(
        &self,
        id: &BotId,
        lease: &NodeLease,
        version: i64,
        snapshot: &SessionSnapshot,
        now: Millis,
    ) -> Result<bool, StoreError> {
        // Sealed before the transaction: no crypto while the row is locked.
        let sealed = self.cipher.seal(&state_row_id(id, version), &snapshot.archive)?;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // The fence holds the bot row: a save in flight when another runner
        // acquires the bot lands before that acquire or not at all, so the
        // new runner always loads the last state and its saves go on.
        if !lock_if_run_by(&mut tx, id, lease, version, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        // The generation rule and the write succeed or fail together; a
        // refused write changes nothing.
        let done = super::query(
            "INSERT INTO bot_session_state (bot_id, credentials_version, generation, state_ciphertext, \
             state_nonce, state_key_id, size_bytes, file_count, synced_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (bot_id) DO UPDATE SET credentials_version = excluded.credentials_version, \
             generation = excluded.generation, state_ciphertext = excluded.state_ciphertext, \
             state_nonce = excluded.state_nonce, state_key_id = excluded.state_key_id, \
             size_bytes = excluded.size_bytes, file_count = excluded.file_count, synced_at = excluded.synced_at \
             WHERE bot_session_state.credentials_version < excluded.credentials_version \
             OR (bot_session_state.credentials_version = excluded.credentials_version \
             AND bot_session_state.generation < excluded.generation)",
        )
        .bind(id.as_str())
        .bind(version)
        .bind(snapshot.generation)
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(snapshot.size_bytes)
        .bind(snapshot.file_count)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn refuse_session_state(
        &self,
        id: &BotId,
        lease: &NodeLease,
        reason: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // Whatever the credentials version: the refusal is about the run.
        let phone: Option<String> = super::query_scalar(concat!(
            "UPDATE bot_instances SET last_error = $5, updated_at = $4 \
             WHERE id = $1 AND runner = $2 AND runner_epoch = $3 AND ",
            own_lease_live!(),
            " RETURNING phone_number"
        ))
        .bind(id.as_str())
        .bind(lease.node.as_str())
        .bind(lease.epoch)
        .bind(now)
        .bind(format!("session state not saved: {reason}"))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(phone) = phone else {
            tx.rollback().await?;
            return Ok(false);
        };
        let phone = PhoneNumber::parse(&phone).map_err(|_| StoreError::Corrupt(format!("phone `{phone}`")))?;
        let activity = NewActivity::new(&lease.node, "session_state_refused", reason)
            .for_bot(id, &phone)
            .by_system(AuditMark::bot(id));
        insert_activity_in(&mut tx, &activity, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn session_state_info(&self, id: &BotId) -> Result<Option<SessionStateInfo>, StoreError> {
        let row: Option<(i64, i64, i64, i64, i64)> = super::query_as(
            "SELECT s.credentials_version, s.generation, s.size_bytes, s.file_count, s.synced_at \
             FROM bot_session_state s JOIN bot_instances b ON b.id = s.bot_id \
             WHERE s.bot_id = $1 AND s.credentials_version = b.credentials_version",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(credentials_version, generation, size_bytes, file_count, synced_at)| SessionStateInfo {
            credentials_version,
            generation,
            size_bytes,
            file_count,
            synced_at,
        }))
    }
}
