//! [`ConsistencyStore`] methods: disagreements between `god_register`,
//! `bot_instances` and the servers' counts, and their one safe fix each.

use async_trait::async_trait;

use super::{BEGIN_WRITE, Db, insert_effects_in};
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::traits::ConsistencyStore;

#[async_trait]
impl ConsistencyStore for SqlStore<Db> {
    async fn find_inconsistencies(&self) -> Result<Vec<Inconsistency>, StoreError> {
        let mut found = Vec::new();
        let orphans: Vec<(String, String, String)> = super::query_as(
            "SELECT g.phone_number, g.tenancy_name, g.bot_id FROM god_register g \
             LEFT JOIN bot_instances b ON b.id = g.bot_id \
             WHERE b.id IS NULL OR b.approval_status = 'rejected' ORDER BY g.phone_number",
        )
        .fetch_all(&self.pool)
        .await?;
        found.extend(orphans.into_iter().map(|(phone, server, bot_id)| Inconsistency::RegistryWithoutBot {
            phone,
            server,
            bot_id,
        }));
        let unregistered: Vec<(String, String, String)> = super::query_as(
            "SELECT b.id, b.phone_number, b.server_name FROM bot_instances b \
             LEFT JOIN god_register g ON g.phone_number = b.phone_number \
             WHERE b.approval_status <> 'rejected' AND g.phone_number IS NULL ORDER BY b.id",
        )
        .fetch_all(&self.pool)
        .await?;
        found.extend(unregistered.into_iter().map(|(bot_id, phone, server)| Inconsistency::BotWithoutRegistry {
            bot_id,
            phone,
            server,
        }));
        let mismatched: Vec<(String, String, String, String)> = super::query_as(
            "SELECT g.phone_number, b.id, g.tenancy_name, b.server_name FROM god_register g \
             JOIN bot_instances b ON b.id = g.bot_id \
             WHERE b.approval_status <> 'rejected' AND g.tenancy_name <> b.server_name ORDER BY b.id",
        )
        .fetch_all(&self.pool)
        .await?;
        found.extend(mismatched.into_iter().map(|(phone, bot_id, registry_server, bot_server)| {
            Inconsistency::ServerMismatch { phone, bot_id, registry_server, bot_server }
        }));
        let drift: Vec<(String, i64, i64)> = super::query_as(
            "SELECT s.server_name, s.current_bot_count, \
             (SELECT COUNT(*) FROM bot_instances b WHERE b.server_name = s.server_name \
              AND b.approval_status <> 'rejected') AS actual \
             FROM server_registry s ORDER BY s.server_name",
        )
        .fetch_all(&self.pool)
        .await?;
        found.extend(
            drift
                .into_iter()
                .filter(|(_, recorded, actual)| recorded != actual)
                .map(|(server, recorded, actual)| Inconsistency::CountDrift { server, recorded, actual }),
        );
        Ok(found)
    }

    async fn repair_inconsistency(
        &self,
        issue: &Inconsistency,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let changed = match issue {
            // The phone is locked out by a registry row with no live bot:
            // free it.
            Inconsistency::RegistryWithoutBot { phone, bot_id, .. } => super::query(
                "DELETE FROM god_register WHERE phone_number = $1 AND bot_id = $2 AND NOT EXISTS \
                 (SELECT 1 FROM bot_instances b WHERE b.id = $2 AND b.approval_status <> 'rejected')",
            )
            .bind(phone)
            .bind(bot_id)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            // The bot row (with its credentials) is the truth: give it its
            // registry row back.
            Inconsistency::BotWithoutRegistry { bot_id, .. } => super::query(
                "INSERT INTO god_register (phone_number, tenancy_name, bot_id, registered_at) \
                 SELECT b.phone_number, b.server_name, b.id, $2 FROM bot_instances b \
                 WHERE b.id = $1 AND b.approval_status <> 'rejected' \
                 ON CONFLICT (phone_number) DO NOTHING",
            )
            .bind(bot_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            // The bot runs where its row says: point the registry there.
            Inconsistency::ServerMismatch { phone, bot_id, .. } => super::query(
                "UPDATE god_register SET tenancy_name = \
                 (SELECT b.server_name FROM bot_instances b WHERE b.id = $2) \
                 WHERE phone_number = $1 AND bot_id = $2 AND EXISTS \
                 (SELECT 1 FROM bot_instances b WHERE b.id = $2 AND b.server_name <> god_register.tenancy_name)",
            )
            .bind(phone)
            .bind(bot_id)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            // Lock the server row first so no registration slips in between
            // the count and the write.
            Inconsistency::CountDrift { server, .. } => {
                super::query(concat!("SELECT server_name FROM server_registry WHERE server_name = $1 ", lock_row!()))
                    .bind(server)
                    .execute(&mut *tx)
                    .await?;
                super::query(
                    "UPDATE server_registry SET pending_count = \
                     (SELECT COUNT(*) FROM bot_instances b WHERE b.server_name = $1 \
                      AND b.approval_status = 'pending') WHERE server_name = $1",
                )
                .bind(server)
                .execute(&mut *tx)
                .await?;
                super::query(
                    "UPDATE server_registry SET updated_at = $2, current_bot_count = \
                     (SELECT COUNT(*) FROM bot_instances b WHERE b.server_name = $1 \
                      AND b.approval_status <> 'rejected') \
                     WHERE server_name = $1 AND current_bot_count <> \
                     (SELECT COUNT(*) FROM bot_instances b WHERE b.server_name = $1 \
                      AND b.approval_status <> 'rejected')",
                )
                .bind(server)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            }
        };
        if changed > 0 {
            insert_effects_in(&mut tx, effects, None, now).await?;
        }
        tx.commit().await?;
        Ok(changed > 0)
    }
}
