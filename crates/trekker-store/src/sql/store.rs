//! The [`Store`] implementation, written once and expanded per backend by
//! `impl_store!`; the dialect differences are the macro's arguments.

use async_trait::async_trait;
use sqlx::{Postgres, Sqlite};
use trekker_domain::{ApprovalStatus, BotId, Credentials, PhoneNumber, ServerName, ServerStatus};

use super::SqlStore;
use super::rows::*;
use crate::Store;
use crate::cipher::Sealed;
use crate::error::StoreError;
use crate::model::*;

macro_rules! impl_store {
    (
        $db:ty,
        begin_write = $begin_write:literal,
        lock_row = $lock_row:literal,
        claim_lock = $claim_lock:literal $(,)?
    ) => {
        impl SqlStore<$db> {
            async fn fetch_bot_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: &str,
            ) -> Result<BotRecord, StoreError> {
                let row: Option<BotRow> =
                    sqlx::query_as(concat!("SELECT ", bot_columns!(), " FROM bot_instances WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await?;
                row.ok_or(StoreError::BotNotFound)?.try_into()
            }

            async fn fetch_server_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                name: &str,
            ) -> Result<Option<ServerSnapshot>, StoreError> {
                let row: Option<ServerRow> = sqlx::query_as(concat!(
                    "SELECT ", server_columns!(), " FROM server_registry WHERE server_name = $1"
                ))
                .bind(name)
                .fetch_optional(&mut *conn)
                .await?;
                row.map(ServerSnapshot::try_from).transpose()
            }

            async fn insert_activity_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                activity: &NewActivity,
                now: Millis,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO activities (occurred_at, server_name, bot_id, phone_number, action, details, \
                     remote_tenancy, remote_bot_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(now)
                .bind(activity.server.as_str())
                .bind(activity.bot_id.as_ref().map(BotId::as_str))
                .bind(activity.phone.as_ref().map(PhoneNumber::as_str))
                .bind(&activity.action)
                .bind(&activity.details)
                .bind(activity.remote_tenancy.as_ref().map(ServerName::as_str))
                .bind(activity.remote_bot_id.as_deref())
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            async fn insert_effects_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                effects: &SideEffects,
                now: Millis,
            ) -> Result<(), StoreError> {
                Self::insert_activity_in(&mut *conn, &effects.activity, now).await?;
                if let Some(notification) = &effects.notification {
                    sqlx::query(
                        "INSERT INTO notification_outbox (phone_number, message, next_attempt_at, created_at) \
                         VALUES ($1, $2, $3, $3)",
                    )
                    .bind(notification.phone.as_str())
                    .bind(&notification.text)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            }

            /// Releases the phone and the slot a bot held (reject, delete).
            async fn release_slot_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                bot_id: &str,
                phone: &str,
                server: &str,
                now: Millis,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE server_registry SET current_bot_count = current_bot_count - 1, updated_at = $2 \
                     WHERE server_name = $1 AND current_bot_count > 0",
                )
                .bind(server)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                sqlx::query("DELETE FROM god_register WHERE phone_number = $1 AND bot_id = $2")
                    .bind(phone)
                    .bind(bot_id)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            /// Reads a bot's approval state for an admin transition, locked.
            async fn lock_approval_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                id: &BotId,
            ) -> Result<(ApprovalStatus, ApprovalRow), StoreError> {
                let row: Option<ApprovalRow> = sqlx::query_as(concat!(
                    "SELECT approval_status, server_name, phone_number FROM bot_instances WHERE id = $1 ",
                    $lock_row
                ))
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await?;
                let row = row.ok_or(StoreError::BotNotFound)?;
                Ok((parse_approval(&row.approval_status)?, row))
            }
        }

        #[async_trait]
        impl Store for SqlStore<$db> {
            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn upsert_server(&self, server: &ServerRegistration, now: Millis) -> Result<ServerSnapshot, StoreError> {
                if server.max_bot_count < 0 {
                    return Err(StoreError::InvalidInput("max_bot_count must not be negative".into()));
                }
                let row: ServerRow = sqlx::query_as(concat!(
                    "INSERT INTO server_registry (server_name, max_bot_count, current_bot_count, server_status, \
                     base_url, last_heartbeat, description, created_at, updated_at) \
                     VALUES ($1, $2, 0, 'active', $3, $4, $5, $4, $4) \
                     ON CONFLICT (server_name) DO UPDATE SET max_bot_count = excluded.max_bot_count, \
                     base_url = excluded.base_url, last_heartbeat = excluded.last_heartbeat, \
                     description = COALESCE(excluded.description, server_registry.description), \
                     updated_at = excluded.updated_at RETURNING ",
                    server_columns!()
                ))
                .bind(server.name.as_str())
                .bind(server.max_bot_count)
                .bind(server.base_url.as_deref())
                .bind(now)
                .bind(server.description.as_deref())
                .fetch_one(&self.pool)
                .await?;
                row.try_into()
            }

            async fn heartbeat(&self, server: &ServerName, now: Millis) -> Result<(), StoreError> {
                let done = sqlx::query("UPDATE server_registry SET last_heartbeat = $2 WHERE server_name = $1")
                    .bind(server.as_str())
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::UnknownServer(server.clone()));
                }
                Ok(())
            }

            async fn list_servers(&self) -> Result<Vec<ServerSnapshot>, StoreError> {
                let rows: Vec<ServerRow> = sqlx::query_as(concat!(
                    "SELECT ", server_columns!(), " FROM server_registry ORDER BY server_name"
                ))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter().map(ServerSnapshot::try_from).collect()
            }

            async fn get_server(&self, server: &ServerName) -> Result<Option<ServerSnapshot>, StoreError> {
                let mut conn = self.pool.acquire().await?;
                Self::fetch_server_in(&mut conn, server.as_str()).await
            }

            async fn update_server(&self, server: &ServerName, patch: &ServerPatch, now: Millis) -> Result<ServerSnapshot, StoreError> {
                if patch.max_bot_count.is_some_and(|max| max < 0) {
                    return Err(StoreError::InvalidInput("maxBotCount must not be negative".into()));
                }
                let row: Option<ServerRow> = sqlx::query_as(concat!(
                    "UPDATE server_registry SET max_bot_count = COALESCE(CAST($2 AS BIGINT), max_bot_count), \
                     server_status = COALESCE(CAST($3 AS TEXT), server_status), updated_at = $4 \
                     WHERE server_name = $1 RETURNING ",
                    server_columns!()
                ))
                .bind(server.as_str())
                .bind(patch.max_bot_count)
                .bind(patch.status.map(ServerStatus::as_str))
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                row.ok_or_else(|| StoreError::UnknownServer(server.clone()))?.try_into()
            }

            async fn find_registration(&self, phone: &PhoneNumber) -> Result<Option<RegistryEntry>, StoreError> {
                let row: Option<RegistryRow> = sqlx::query_as(
                    "SELECT phone_number, tenancy_name, bot_id, registered_at FROM god_register WHERE phone_number = $1",
                )
                .bind(phone.as_str())
                .fetch_optional(&self.pool)
                .await?;
                row.map(RegistryEntry::try_from).transpose()
            }

            async fn get_bot(&self, id: &BotId) -> Result<Option<BotRecord>, StoreError> {
                let row: Option<BotRow> =
                    sqlx::query_as(concat!("SELECT ", bot_columns!(), " FROM bot_instances WHERE id = $1"))
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(BotRecord::try_from).transpose()
            }

            async fn find_bot_on_server(&self, phone: &PhoneNumber, server: &ServerName) -> Result<Option<BotRecord>, StoreError> {
                let row: Option<BotRow> = sqlx::query_as(concat!(
                    "SELECT ", bot_columns!(), " FROM bot_instances \
                     WHERE phone_number = $1 AND server_name = $2 AND approval_status <> 'rejected'"
                ))
                .bind(phone.as_str())
                .bind(server.as_str())
                .fetch_optional(&self.pool)
                .await?;
                row.map(BotRecord::try_from).transpose()
            }

            async fn list_bots(&self, filter: &BotFilter) -> Result<Vec<BotRecord>, StoreError> {
                let rows: Vec<BotRow> = sqlx::query_as(concat!(
                    "SELECT ", bot_columns!(), " FROM bot_instances \
                     WHERE (CAST($1 AS TEXT) IS NULL OR server_name = $1) \
                     AND (CAST($2 AS TEXT) IS NULL OR approval_status = $2) \
                     ORDER BY created_at DESC, id"
                ))
                .bind(filter.server.as_ref().map(ServerName::as_str))
                .bind(filter.approval.map(ApprovalStatus::as_str))
                .fetch_all(&self.pool)
                .await?;
                bots(rows)
            }

            async fn register_bot(&self, bot: &NewBot, effects: &SideEffects, now: Millis) -> Result<Registered, StoreError> {
                let sealed = self.seal(bot.id.as_str(), &bot.credentials)?;
                let mut tx = self.pool.begin_with($begin_write).await?;

                // The reservation: one conditional UPDATE, atomic under
                // concurrency on both backends (invariant 2).
                let free_after: Option<i64> = sqlx::query_scalar(
                    "UPDATE server_registry SET current_bot_count = current_bot_count + 1, updated_at = $2 \
                     WHERE server_name = $1 AND server_status = 'active' AND current_bot_count < max_bot_count \
                     RETURNING max_bot_count - current_bot_count",
                )
                .bind(bot.server.as_str())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(free_after) = free_after else {
                    let server = Self::fetch_server_in(&mut tx, bot.server.as_str()).await?;
                    tx.rollback().await?;
                    return Err(match server {
                        None => StoreError::UnknownServer(bot.server.clone()),
                        Some(s) if s.status != ServerStatus::Active => {
                            StoreError::ServerNotAccepting { server: s.name, status: s.status }
                        }
                        Some(s) => StoreError::ServerFull(s.name),
                    });
                };

                let claimed = sqlx::query(
                    "INSERT INTO god_register (phone_number, tenancy_name, bot_id, registered_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (phone_number) DO NOTHING",
                )
                .bind(bot.phone.as_str())
                .bind(bot.server.as_str())
                .bind(bot.id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if claimed == 0 {
                    let holder: Option<RegistryRow> = sqlx::query_as(
                        "SELECT phone_number, tenancy_name, bot_id, registered_at FROM god_register WHERE phone_number = $1",
                    )
                    .bind(bot.phone.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    tx.rollback().await?;
                    let holder = RegistryEntry::try_from(
                        holder.ok_or_else(|| StoreError::Corrupt("registry row vanished during registration".into()))?,
                    )?;
                    return Err(StoreError::PhoneTaken { server: holder.server, bot_id: holder.bot_id });
                }

                let inserted = sqlx::query(
                    "INSERT INTO bot_instances (id, name, phone_number, server_name, approval_status, status, \
                     credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version, \
                     credentials_updated_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'pending', 'offline', $5, $6, $7, 1, $8, $8, $8)",
                )
                .bind(bot.id.as_str())
                .bind(&bot.name)
                .bind(bot.phone.as_str())
                .bind(bot.server.as_str())
                .bind(&sealed.ciphertext)
                .bind(&sealed.nonce)
                .bind(&sealed.key_id)
                .bind(now)
                .execute(&mut *tx)
                .await;
                if let Err(err) = inserted {
                    let unique = err.as_database_error().is_some_and(|db| db.is_unique_violation());
                    if !unique {
                        return Err(err.into());
                    }
                    // A bot row holds the phone without a registry row: an
                    // inconsistency an admin can repair. Refuse, write nothing.
                    let holder: Option<BotRow> = sqlx::query_as(concat!(
                        "SELECT ", bot_columns!(), " FROM bot_instances \
                         WHERE phone_number = $1 AND approval_status <> 'rejected'"
                    ))
                    .bind(bot.phone.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    tx.rollback().await?;
                    return match holder {
                        Some(row) => {
                            let holder = BotRecord::try_from(row)?;
                            Err(StoreError::PhoneTaken { server: holder.server, bot_id: holder.id })
                        }
                        None => Err(err.into()),
                    };
                }
                let free_after = free_after.max(0);
                let mut effects = effects.clone();
                if let Some(notification) = &mut effects.notification {
                    notification.text = notification.text.replace(SLOTS_LEFT, &free_after.to_string());
                }
                Self::insert_effects_in(&mut tx, &effects, now).await?;
                let record = Self::fetch_bot_in(&mut tx, bot.id.as_str()).await?;
                tx.commit().await?;
                Ok(Registered { bot: record, free_slots_after: free_after })
            }

            async fn update_credentials(
                &self,
                id: &BotId,
                credentials: &Credentials,
                rule: VersionRule,
                effects: &SideEffects,
                now: Millis,
            ) -> Result<BotRecord, StoreError> {
                let sealed = self.seal(id.as_str(), credentials)?;
                let exact = match rule {
                    VersionRule::Next => None,
                    VersionRule::Exactly(version) if version >= 1 => Some(version),
                    VersionRule::Exactly(_) => {
                        return Err(StoreError::InvalidInput("credentials version must be at least 1".into()));
                    }
                };
                let mut tx = self.pool.begin_with($begin_write).await?;
                let updated = sqlx::query(
                    "UPDATE bot_instances SET credentials_ciphertext = $2, credentials_nonce = $3, \
                     credentials_key_id = $4, \
                     credentials_version = COALESCE(CAST($5 AS BIGINT), credentials_version + 1), \
                     credentials_updated_at = $6, updated_at = $6, invalid_reason = NULL, \
                     status = CASE WHEN approval_status = 'approved' THEN 'loading' ELSE status END \
                     WHERE id = $1 AND approval_status <> 'rejected' \
                     AND (CAST($5 AS BIGINT) IS NULL OR credentials_version < CAST($5 AS BIGINT))",
                )
                .bind(id.as_str())
                .bind(&sealed.ciphertext)
                .bind(&sealed.nonce)
                .bind(&sealed.key_id)
                .bind(exact)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    let current = Self::fetch_bot_in(&mut tx, id.as_str()).await;
                    tx.rollback().await?;
                    return match current {
                        Ok(bot) if bot.approval != ApprovalStatus::Rejected => {
                            Err(StoreError::StaleVersion { current: bot.credentials_version })
                        }
                        Ok(_) | Err(StoreError::BotNotFound) => Err(StoreError::BotNotFound),
                        Err(err) => Err(err),
                    };
                }
                Self::insert_effects_in(&mut tx, effects, now).await?;
                let record = Self::fetch_bot_in(&mut tx, id.as_str()).await?;
                tx.commit().await?;
                Ok(record)
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

            async fn approve_bot(&self, id: &BotId, expires_at: Millis, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let (current, _) = Self::lock_approval_in(&mut tx, id).await?;
                let next = current.approve()?;
                sqlx::query(
                    "UPDATE bot_instances SET approval_status = $2, approval_date = $3, expires_at = $4, \
                     updated_at = $3, status = CASE WHEN status = 'online' THEN status ELSE 'loading' END \
                     WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(next.as_str())
                .bind(now)
                .bind(expires_at)
                .execute(&mut *tx)
                .await?;
                Self::insert_effects_in(&mut tx, effects, now).await?;
                let record = Self::fetch_bot_in(&mut tx, id.as_str()).await?;
                tx.commit().await?;
                Ok(record)
            }

            async fn reject_bot(&self, id: &BotId, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let (current, row) = Self::lock_approval_in(&mut tx, id).await?;
                let next = current.reject()?;
                if current.occupies_slot() && !next.occupies_slot() {
                    Self::release_slot_in(&mut tx, id.as_str(), &row.phone_number, &row.server_name, now).await?;
                }
                sqlx::query("UPDATE bot_instances SET approval_status = $2, updated_at = $3 WHERE id = $1")
                    .bind(id.as_str())
                    .bind(next.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Self::insert_effects_in(&mut tx, effects, now).await?;
                let record = Self::fetch_bot_in(&mut tx, id.as_str()).await?;
                tx.commit().await?;
                Ok(record)
            }

            async fn delete_bot(&self, id: &BotId, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let (current, row) = Self::lock_approval_in(&mut tx, id).await?;
                let record = Self::fetch_bot_in(&mut tx, id.as_str()).await?;
                if current.occupies_slot() {
                    Self::release_slot_in(&mut tx, id.as_str(), &row.phone_number, &row.server_name, now).await?;
                }
                sqlx::query("DELETE FROM bot_instances WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                Self::insert_effects_in(&mut tx, effects, now).await?;
                tx.commit().await?;
                Ok(record)
            }

            async fn expire_due_bots(&self, now: Millis) -> Result<Vec<BotRecord>, StoreError> {
                let rows: Vec<BotRow> = sqlx::query_as(concat!(
                    "UPDATE bot_instances SET approval_status = 'expired', updated_at = $1 \
                     WHERE approval_status = 'approved' AND expires_at IS NOT NULL AND expires_at <= $1 \
                     RETURNING ",
                    bot_columns!()
                ))
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
                bots(rows)
            }

            async fn append_activity(&self, activity: &NewActivity, now: Millis) -> Result<(), StoreError> {
                let mut conn = self.pool.acquire().await?;
                Self::insert_activity_in(&mut conn, activity, now).await
            }

            async fn list_activities(&self, bot: Option<BotId>, limit: i64) -> Result<Vec<Activity>, StoreError> {
                let rows: Vec<ActivityRow> = sqlx::query_as(
                    "SELECT id, occurred_at, server_name, bot_id, phone_number, action, details, remote_tenancy, \
                     remote_bot_id FROM activities WHERE (CAST($1 AS TEXT) IS NULL OR bot_id = $1) \
                     ORDER BY id DESC LIMIT $2",
                )
                .bind(bot.as_ref().map(BotId::as_str))
                .bind(limit.clamp(1, 1000))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|row| Activity {
                        id: row.id,
                        occurred_at: row.occurred_at,
                        server: row.server_name,
                        bot_id: row.bot_id,
                        phone: row.phone_number,
                        action: row.action,
                        details: row.details,
                        remote_tenancy: row.remote_tenancy,
                        remote_bot_id: row.remote_bot_id,
                    })
                    .collect())
            }

            async fn find_inconsistencies(&self) -> Result<Vec<Inconsistency>, StoreError> {
                let mut found = Vec::new();
                let orphans: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT g.phone_number, g.tenancy_name, g.bot_id FROM god_register g \
                     LEFT JOIN bot_instances b ON b.id = g.bot_id \
                     WHERE b.id IS NULL OR b.approval_status = 'rejected' ORDER BY g.phone_number",
                )
                .fetch_all(&self.pool)
                .await?;
                found.extend(orphans.into_iter().map(|(phone, server, bot_id)| {
                    Inconsistency::RegistryWithoutBot { phone, server, bot_id }
                }));
                let unregistered: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT b.id, b.phone_number, b.server_name FROM bot_instances b \
                     LEFT JOIN god_register g ON g.phone_number = b.phone_number \
                     WHERE b.approval_status <> 'rejected' AND g.phone_number IS NULL ORDER BY b.id",
                )
                .fetch_all(&self.pool)
                .await?;
                found.extend(unregistered.into_iter().map(|(bot_id, phone, server)| {
                    Inconsistency::BotWithoutRegistry { bot_id, phone, server }
                }));
                let mismatched: Vec<(String, String, String, String)> = sqlx::query_as(
                    "SELECT g.phone_number, b.id, g.tenancy_name, b.server_name FROM god_register g \
                     JOIN bot_instances b ON b.id = g.bot_id \
                     WHERE b.approval_status <> 'rejected' AND g.tenancy_name <> b.server_name ORDER BY b.id",
                )
                .fetch_all(&self.pool)
                .await?;
                found.extend(mismatched.into_iter().map(|(phone, bot_id, registry_server, bot_server)| {
                    Inconsistency::ServerMismatch { phone, bot_id, registry_server, bot_server }
                }));
                let drift: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT s.server_name, s.current_bot_count, \
                     (SELECT COUNT(*) FROM bot_instances b WHERE b.server_name = s.server_name \
                      AND b.approval_status <> 'rejected') AS actual \
                     FROM server_registry s ORDER BY s.server_name",
                )
                .fetch_all(&self.pool)
                .await?;
                found.extend(drift.into_iter().filter(|(_, recorded, actual)| recorded != actual).map(
                    |(server, recorded, actual)| Inconsistency::CountDrift { server, recorded, actual },
                ));
                Ok(found)
            }

            async fn repair_inconsistency(&self, issue: &Inconsistency, effects: &SideEffects, now: Millis) -> Result<bool, StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let changed = match issue {
                    // The phone is locked out by a registry row with no live
                    // bot: free it.
                    Inconsistency::RegistryWithoutBot { phone, bot_id, .. } => sqlx::query(
                        "DELETE FROM god_register WHERE phone_number = $1 AND bot_id = $2 AND NOT EXISTS \
                         (SELECT 1 FROM bot_instances b WHERE b.id = $2 AND b.approval_status <> 'rejected')",
                    )
                    .bind(phone)
                    .bind(bot_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                    // The bot row (with its credentials) is the truth: give it
                    // its registry row back.
                    Inconsistency::BotWithoutRegistry { bot_id, .. } => sqlx::query(
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
                    Inconsistency::ServerMismatch { phone, bot_id, .. } => sqlx::query(
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
                    // Lock the server row first so no registration slips in
                    // between the count and the write.
                    Inconsistency::CountDrift { server, .. } => {
                        sqlx::query(concat!("SELECT server_name FROM server_registry WHERE server_name = $1 ", $lock_row))
                            .bind(server)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(
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
                    Self::insert_effects_in(&mut tx, effects, now).await?;
                }
                tx.commit().await?;
                Ok(changed > 0)
            }

            async fn create_pairing(&self, pairing: &NewPairing) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO pairing_requests (id, phone_number, pairing_code, status, created_at, expires_at, updated_at) \
                     VALUES ($1, $2, $3, 'pending', $4, $5, $4)",
                )
                .bind(&pairing.id)
                .bind(pairing.phone.as_str())
                .bind(&pairing.code)
                .bind(pairing.created_at)
                .bind(pairing.expires_at)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn get_pairing(&self, id: &str, now: Millis) -> Result<Option<PairingRecord>, StoreError> {
                let row: Option<PairingRow> = sqlx::query_as(
                    "SELECT id, phone_number, pairing_code, status, session_ciphertext, session_nonce, session_key_id, \
                     message, created_at, expires_at FROM pairing_requests WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let mut status = PairingStatus::parse(&row.status).ok_or_else(|| corrupt("pairing status", &row.status))?;
                if status == PairingStatus::Pending && row.expires_at <= now {
                    status = PairingStatus::Expired;
                }
                let credentials = match (row.session_ciphertext, row.session_nonce, row.session_key_id) {
                    (Some(ciphertext), Some(nonce), Some(key_id)) if status == PairingStatus::Paired => {
                        Some(self.open(&row.id, &Sealed { ciphertext, nonce, key_id })?)
                    }
                    _ => None,
                };
                Ok(Some(PairingRecord {
                    phone: PhoneNumber::parse(&row.phone_number).map_err(|_| corrupt("phone", &row.phone_number))?,
                    id: row.id,
                    code: row.pairing_code,
                    status,
                    credentials,
                    message: row.message,
                    created_at: row.created_at,
                    expires_at: row.expires_at,
                }))
            }

            async fn complete_pairing(&self, id: &str, credentials: &Credentials, now: Millis) -> Result<(), StoreError> {
                let sealed = self.seal(id, credentials)?;
                let done = sqlx::query(
                    "UPDATE pairing_requests SET status = 'paired', session_ciphertext = $2, session_nonce = $3, \
                     session_key_id = $4, updated_at = $5 WHERE id = $1 AND status = 'pending' AND expires_at > $5",
                )
                .bind(id)
                .bind(&sealed.ciphertext)
                .bind(&sealed.nonce)
                .bind(&sealed.key_id)
                .bind(now)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::PairingNotFound);
                }
                Ok(())
            }

            async fn fail_pairing(&self, id: &str, message: &str, now: Millis) -> Result<(), StoreError> {
                let done = sqlx::query(
                    "UPDATE pairing_requests SET status = 'failed', message = $2, updated_at = $3 \
                     WHERE id = $1 AND status = 'pending'",
                )
                .bind(id)
                .bind(message)
                .bind(now)
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::PairingNotFound);
                }
                Ok(())
            }

            async fn claim_notifications(&self, worker: &str, now: Millis, lease_ms: i64, limit: i64) -> Result<Vec<Notification>, StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let mut rows: Vec<NotificationRow> = sqlx::query_as(concat!(
                    "UPDATE notification_outbox SET claimed_by = $1, claimed_until = $2 + $3, attempts = attempts + 1 \
                     WHERE id IN (SELECT id FROM notification_outbox WHERE status = 'pending' AND next_attempt_at <= $2 \
                     AND (claimed_until IS NULL OR claimed_until <= $2) ORDER BY id LIMIT $4 ",
                    $claim_lock,
                    ") RETURNING id, phone_number, message, attempts, created_at"
                ))
                .bind(worker)
                .bind(now)
                .bind(lease_ms)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                rows.sort_by_key(|row| row.id);
                Ok(rows
                    .into_iter()
                    .map(|row| Notification {
                        id: row.id,
                        phone: row.phone_number,
                        text: row.message,
                        attempts: row.attempts,
                        created_at: row.created_at,
                    })
                    .collect())
            }

            async fn finish_notification(&self, id: i64, worker: &str, outcome: NotificationOutcome, now: Millis) -> Result<bool, StoreError> {
                let (status, next_attempt, error) = match &outcome {
                    NotificationOutcome::Sent => ("sent", None, None),
                    NotificationOutcome::Retry { retry_at, error } => ("pending", Some(*retry_at), Some(error.as_str())),
                    NotificationOutcome::Failed { error } => ("failed", None, Some(error.as_str())),
                };
                let done = sqlx::query(
                    "UPDATE notification_outbox SET status = $3, claimed_by = NULL, claimed_until = NULL, \
                     next_attempt_at = COALESCE(CAST($4 AS BIGINT), next_attempt_at), \
                     last_error = COALESCE(CAST($5 AS TEXT), last_error), \
                     sent_at = CASE WHEN $3 = 'sent' THEN CAST($6 AS BIGINT) ELSE sent_at END \
                     WHERE id = $1 AND claimed_by = $2 AND status = 'pending'",
                )
                .bind(id)
                .bind(worker)
                .bind(status)
                .bind(next_attempt)
                .bind(error)
                .bind(now)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn pending_notifications(&self) -> Result<i64, StoreError> {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notification_outbox WHERE status = 'pending'")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(count)
            }

            async fn enqueue_credential_update(&self, update: &NewCredentialUpdate, effects: &SideEffects, now: Millis) -> Result<CredentialUpdate, StoreError> {
                let sealed = self.seal(&update.id, &update.credentials)?;
                let mut tx = self.pool.begin_with($begin_write).await?;
                // Locking the bot row serializes version numbers per bot.
                let stored: Option<i64> = sqlx::query_scalar(concat!(
                    "SELECT credentials_version FROM bot_instances WHERE id = $1 AND approval_status <> 'rejected' ",
                    $lock_row
                ))
                .bind(update.bot_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let stored = stored.ok_or(StoreError::BotNotFound)?;
                let queued: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(credentials_version) FROM credential_update_outbox \
                     WHERE bot_id = $1 AND status IN ('pending', 'delivered')",
                )
                .bind(update.bot_id.as_str())
                .fetch_one(&mut *tx)
                .await?;
                let version = stored.max(queued.unwrap_or(0)) + 1;
                sqlx::query(
                    "UPDATE credential_update_outbox SET status = 'superseded', claimed_by = NULL, claimed_until = NULL, \
                     last_error = 'superseded by a newer update' WHERE bot_id = $1 AND status = 'pending'",
                )
                .bind(update.bot_id.as_str())
                .execute(&mut *tx)
                .await?;
                let row: OutboxRow = sqlx::query_as(concat!(
                    "INSERT INTO credential_update_outbox (id, bot_id, phone_number, source_server, target_server, \
                     credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version, status, attempts, \
                     next_attempt_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10) \
                     RETURNING ",
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
                .fetch_one(&mut *tx)
                .await?;
                Self::insert_effects_in(&mut tx, effects, now).await?;
                tx.commit().await?;
                row.try_into()
            }

            async fn claim_credential_updates(&self, worker: &str, now: Millis, lease_ms: i64, limit: i64) -> Result<Vec<ClaimedUpdate>, StoreError> {
                let mut tx = self.pool.begin_with($begin_write).await?;
                let rows: Vec<ClaimedRow> = sqlx::query_as(concat!(
                    "UPDATE credential_update_outbox SET claimed_by = $1, claimed_until = $2 + $3, attempts = attempts + 1 \
                     WHERE id IN (SELECT id FROM credential_update_outbox WHERE status = 'pending' AND next_attempt_at <= $2 \
                     AND (claimed_until IS NULL OR claimed_until <= $2) ORDER BY next_attempt_at LIMIT $4 ",
                    $claim_lock,
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

            async fn claim_credential_update(&self, id: &str, worker: &str, now: Millis, lease_ms: i64) -> Result<Option<ClaimedUpdate>, StoreError> {
                let rows: Vec<ClaimedRow> = sqlx::query_as(concat!(
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

            async fn finish_credential_update(&self, id: &str, worker: &str, outcome: DeliveryOutcome, now: Millis) -> Result<bool, StoreError> {
                let (status, next_attempt, error, delivered_at) = match &outcome {
                    DeliveryOutcome::Delivered => ("delivered", None, None, Some(now)),
                    DeliveryOutcome::Retry { retry_at, error } => ("pending", Some(*retry_at), Some(error.as_str()), None),
                    DeliveryOutcome::Failed { error } => ("failed", None, Some(error.as_str()), None),
                    DeliveryOutcome::Expired => ("expired", None, Some("not delivered within 24 hours"), None),
                };
                let done = sqlx::query(
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
                    sqlx::query_as(concat!("SELECT ", outbox_columns!(), " FROM credential_update_outbox WHERE id = $1"))
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                row.map(CredentialUpdate::try_from).transpose()
            }

            async fn credential_outbox_depth(&self) -> Result<i64, StoreError> {
                let count: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM credential_update_outbox WHERE status = 'pending'")
                        .fetch_one(&self.pool)
                        .await?;
                Ok(count)
            }

            async fn remember_jti(&self, issuer: &str, jti: &str, expires_at: Millis) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "INSERT INTO replay_guard (issuer, jti, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (issuer, jti) DO NOTHING",
                )
                .bind(issuer)
                .bind(jti)
                .bind(expires_at)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn begin_idempotent(&self, key: &str, fingerprint: &str, now: Millis, stale_after_ms: i64, ttl_ms: i64) -> Result<IdempotencyBegin, StoreError> {
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (idempotency_key, fingerprint, state, created_at, expires_at) \
                     VALUES ($1, $2, 'in_progress', $3, $4) ON CONFLICT (idempotency_key) DO NOTHING",
                )
                .bind(key)
                .bind(fingerprint)
                .bind(now)
                .bind(now + ttl_ms)
                .execute(&self.pool)
                .await?;
                if inserted.rows_affected() == 1 {
                    return Ok(IdempotencyBegin::Started);
                }
                let row: Option<IdempotencyRow> = sqlx::query_as(
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
                if row.created_at <= now - stale_after_ms {
                    let taken = sqlx::query(
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
                sqlx::query(
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
                sqlx::query("DELETE FROM idempotency_keys WHERE idempotency_key = $1 AND state = 'in_progress'")
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn acquire_bot_lease(&self, id: &BotId, node: &ServerName, version: i64, now: Millis, lease_ms: i64) -> Result<bool, StoreError> {
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

            async fn purge_expired(&self, now: Millis) -> Result<u64, StoreError> {
                let replay = sqlx::query("DELETE FROM replay_guard WHERE expires_at < $1").bind(now).execute(&self.pool).await?;
                let keys = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < $1").bind(now).execute(&self.pool).await?;
                Ok(replay.rows_affected() + keys.rows_affected())
            }
        }
    };
}

impl_store!(Postgres, begin_write = "BEGIN", lock_row = "FOR UPDATE", claim_lock = "FOR UPDATE SKIP LOCKED",);

// SQLite has one writer at a time: `BEGIN IMMEDIATE` takes the write lock up
// front, so a transaction that reads before it writes never fails with
// SQLITE_BUSY halfway; rows need no lock of their own.
impl_store!(Sqlite, begin_write = "BEGIN IMMEDIATE", lock_row = "", claim_lock = "",);
