//! [`BotStore`] methods: the phone registry and the bots' approval life
//! cycle. Each change is one transaction that also writes its activity and
//! notification (invariants 1-3).

use async_trait::async_trait;
use trekker_domain::{ApprovalStatus, BotId, Credentials, PhoneNumber, ServerName, ServerStatus};

use super::insert_notification_in;
use super::{BEGIN_WRITE, Db, GENERIC_PLANS, fetch_bot_in, fetch_server_in, insert_activity_in, insert_effects_in};
use super::{leave_pending_in, lock_approval_in, newest_first, ownership, release_slot_in, split_page};
use crate::cipher::Sealed;
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::BotStore;

/// The statement of one page of [`BotStore::list_bots`] after `select`.
fn bot_page(select: &str, filter: &BotFilter, limit: i64) -> sqlx::QueryBuilder<Db> {
    let filters = [
        ("server_name", filter.server.as_ref().map(ServerName::to_string)),
        ("approval_status", filter.approval.map(|a| a.as_str().to_owned())),
        ("status", filter.status.map(|s| s.as_str().to_owned())),
    ];
    let after = filter.after.as_ref().map(|c| (c.created_at, c.id.to_string()));
    newest_first(select, &filters, after, limit)
}

impl SqlStore<Db> {
    /// The plan the database picks for a page of [`BotStore::list_bots`]
    /// (on PostgreSQL the generic plan a prepared statement ends up with),
    /// one line per step. Tests and the fleet bench check that it uses an
    /// index.
    #[doc(hidden)]
    pub async fn explain_bot_page(&self, filter: &BotFilter) -> Result<String, StoreError> {
        let select = concat!("SELECT ", bot_columns!(), " FROM bot_instances");
        let limit = filter.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let query = bot_page(select, filter, limit);
        let mut conn = self.pool.acquire().await?;
        let rows = if GENERIC_PLANS {
            // The same statement, prepared by name, its parameters given as
            // literals in the order `bot_page` binds them.
            let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
            let mut args: Vec<String> = [
                filter.server.as_ref().map(|s| quote(s.as_str())),
                filter.approval.map(|a| quote(a.as_str())),
                filter.status.map(|s| quote(s.as_str())),
            ]
            .into_iter()
            .flatten()
            .collect();
            if let Some(after) = &filter.after {
                let at = after.created_at.to_string();
                args.extend([at.clone(), at.clone(), at, quote(after.id.as_str())]);
            }
            args.push((limit + 1).to_string());
            let prepare = format!("PREPARE trekker_explain AS {}", query.sql().as_str());
            sqlx::raw_sql(sqlx::AssertSqlSafe(prepare)).execute(&mut *conn).await?;
            sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut *conn).await?;
            let explain = format!("EXPLAIN EXECUTE trekker_explain({})", args.join(", "));
            let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(explain)).fetch_all(&mut *conn).await;
            sqlx::raw_sql("DEALLOCATE trekker_explain; RESET plan_cache_mode").execute(&mut *conn).await?;
            rows?
        } else {
            let select = concat!("EXPLAIN QUERY PLAN SELECT ", bot_columns!(), " FROM bot_instances");
            let mut query = bot_page(select, filter, limit);
            query.build().persistent(super::named()).fetch_all(&mut *conn).await?
        };
        // The plan text is the last column on both backends.
        let lines: Vec<String> = rows
            .iter()
            .map(|row| sqlx::Row::try_get::<String, _>(row, sqlx::Row::len(row) - 1))
            .collect::<Result<_, _>>()?;
        Ok(lines.join("\n"))
    }
}

impl SqlStore<Db> {
    /// One registration transaction (see [`BotStore::register_bot`]);
    /// `None` when the phone's holder went away while we looked (nothing
    /// was written: try again).
    async fn try_register(
        &self,
        bot: &NewBot,
        sealed: &Sealed,
        (account_key, adv_timestamp): (&[u8; 32], i64),
        effects: &SideEffects,
        now: Millis,
    ) -> Result<Option<Registered>, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;

        // The phone first: a phone that is taken is answered without
        // touching the server's row (callers insert optimistically and look
        // the phone up only when this says it is taken).
        let claimed = super::query(
            "INSERT INTO god_register (phone_number, tenancy_name, bot_id, registered_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (phone_number) DO NOTHING",
        )
        .bind(bot.phone.as_str())
        .bind(bot.server.as_str())
        .bind(bot.id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await;
        let claimed = match claimed {
            Ok(done) => done.rows_affected(),
            // No such server (the registry row refers to it).
            Err(err) if err.as_database_error().is_some_and(|db| db.is_foreign_key_violation()) => {
                tx.rollback().await?;
                return Err(StoreError::UnknownServer(bot.server.clone()));
            }
            Err(err) => return Err(err.into()),
        };
        if claimed == 0 {
            let holder: Option<RegistryRow> = super::query_as(
                "SELECT phone_number, tenancy_name, bot_id, registered_at FROM god_register WHERE phone_number = $1",
            )
            .bind(bot.phone.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            tx.rollback().await?;
            // The holder was deleted between our insert and this read
            // (a reject or delete committed): the phone is free, try again.
            let Some(holder) = holder else { return Ok(None) };
            let holder = RegistryEntry::try_from(holder)?;
            return Err(StoreError::PhoneTaken { server: holder.server, bot_id: holder.bot_id });
        }

        let inserted: Result<BotRow, sqlx::Error> = super::query_as(concat!(
            "INSERT INTO bot_instances (id, name, phone_number, server_name, approval_status, status, \
             credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version, \
             credentials_updated_at, created_at, updated_at, account_key, adv_timestamp) \
             VALUES ($1, $2, $3, $4, 'pending', 'offline', $5, $6, $7, 1, $8, $8, $8, $9, $10) RETURNING ",
            bot_columns!()
        ))
        .bind(bot.id.as_str())
        .bind(&bot.name)
        .bind(bot.phone.as_str())
        .bind(bot.server.as_str())
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(now)
        .bind(&account_key[..])
        .bind(adv_timestamp)
        .fetch_one(&mut *tx)
        .await;
        let record = match inserted {
            Ok(row) => BotRecord::try_from(row)?,
            Err(err) if err.as_database_error().is_some_and(|db| db.is_unique_violation()) => {
                // A bot row holds the phone without a registry row: an
                // inconsistency an admin can repair. Refuse, write nothing
                // (the failed statement ended the transaction on PostgreSQL:
                // the holder is looked up after it).
                tx.rollback().await?;
                let holder: Option<BotRow> = super::query_as(concat!(
                    "SELECT ",
                    bot_columns!(),
                    " FROM bot_instances WHERE phone_number = $1 AND approval_status <> 'rejected'"
                ))
                .bind(bot.phone.as_str())
                .fetch_optional(&self.pool)
                .await?;
                return match holder {
                    Some(row) => {
                        let holder = BotRecord::try_from(row)?;
                        Err(StoreError::PhoneTaken { server: holder.server, bot_id: holder.id })
                    }
                    None => Err(err.into()),
                };
            }
            Err(err) if err.as_database_error().is_some_and(|db| db.is_foreign_key_violation()) => {
                tx.rollback().await?;
                return Err(StoreError::UnknownServer(bot.server.clone()));
            }
            Err(err) => return Err(err.into()),
        };
        insert_activity_in(&mut tx, &effects.activity, now).await?;

        // The reservation last, so the server's row is locked only for the
        // notification and the commit: registrations on one server queue on
        // that lock, and this keeps the queue short. One conditional UPDATE,
        // atomic under concurrency on both backends (invariant 2); the
        // pending cap is on the row too, exact for the same reason.
        let free_after: Option<i64> = super::query_scalar(
            "UPDATE server_registry SET current_bot_count = current_bot_count + 1, \
             pending_count = pending_count + 1, updated_at = $2 \
             WHERE server_name = $1 AND server_status = 'active' AND current_bot_count < max_bot_count \
             AND pending_count * 100 < max_bot_count * $3 \
             RETURNING max_bot_count - current_bot_count",
        )
        .bind(bot.server.as_str())
        .bind(now)
        .bind(bot.pending_share_percent.clamp(1, 100))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(free_after) = free_after else {
            let server = fetch_server_in(&mut tx, bot.server.as_str()).await?;
            tx.rollback().await?;
            return Err(match server {
                None => StoreError::UnknownServer(bot.server.clone()),
                Some(s) if s.status != ServerStatus::Active => {
                    StoreError::ServerNotAccepting { server: s.name, status: s.status }
                }
                Some(s) => StoreError::ServerFull(s.name),
            });
        };
        let free_after = free_after.max(0);
        insert_notification_in(&mut tx, effects, Some(free_after), now).await?;
        tx.commit().await?;
        Ok(Some(Registered { bot: record, free_slots_after: free_after }))
    }
}

#[async_trait]
impl BotStore for SqlStore<Db> {
    async fn find_registration(&self, phone: &PhoneNumber) -> Result<Option<RegistryEntry>, StoreError> {
        let row: Option<RegistryRow> = super::query_as(
            "SELECT phone_number, tenancy_name, bot_id, registered_at FROM god_register WHERE phone_number = $1",
        )
        .bind(phone.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(RegistryEntry::try_from).transpose()
    }

    async fn get_bot(&self, id: &BotId) -> Result<Option<BotRecord>, StoreError> {
        let row: Option<BotRow> =
            super::query_as(concat!("SELECT ", bot_columns!(), " FROM bot_instances WHERE id = $1"))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        row.map(BotRecord::try_from).transpose()
    }

    async fn find_bot_on_server(
        &self,
        phone: &PhoneNumber,
        server: &ServerName,
    ) -> Result<Option<BotRecord>, StoreError> {
        let row: Option<BotRow> = super::query_as(concat!(
            "SELECT ",
            bot_columns!(),
            " FROM bot_instances \
             WHERE phone_number = $1 AND server_name = $2 AND approval_status <> 'rejected'"
        ))
        .bind(phone.as_str())
        .bind(server.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(BotRecord::try_from).transpose()
    }

    async fn list_bots(&self, filter: &BotFilter) -> Result<BotPage, StoreError> {
        let limit = filter.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let select = concat!("SELECT ", bot_columns!(), " FROM bot_instances");
        let mut query = bot_page(select, filter, limit);
        let rows: Vec<BotRow> = query.build_query_as().persistent(super::named()).fetch_all(&self.pool).await?;
        let (bots, next) = split_page(bots(rows)?, limit, |b| BotCursor { created_at: b.created_at, id: b.id.clone() });
        Ok(BotPage { bots, next })
    }

    async fn register_bot(&self, bot: &NewBot, effects: &SideEffects, now: Millis) -> Result<Registered, StoreError> {
        let sealed = self.seal(bot.id.as_str(), &bot.credentials)?;
        let (account_key, adv_timestamp) = ownership(&bot.credentials)?;
        for _ in 0..3 {
            if let Some(registered) =
                self.try_register(bot, &sealed, (&account_key, adv_timestamp), effects, now).await?
            {
                return Ok(registered);
            }
        }
        Err(StoreError::Contended)
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
        let (account_key, adv_timestamp) = ownership(credentials)?;
        let exact = match rule {
            VersionRule::Next => None,
            VersionRule::Exactly(version) if version >= 1 => Some(version),
            VersionRule::Exactly(_) => {
                return Err(StoreError::InvalidInput("credentials version must be at least 1".into()));
            }
        };
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let updated = super::query(
            "UPDATE bot_instances SET credentials_ciphertext = $2, credentials_nonce = $3, \
             credentials_key_id = $4, \
             credentials_version = COALESCE(CAST($5 AS BIGINT), credentials_version + 1), \
             credentials_updated_at = $6, updated_at = $6, invalid_reason = NULL, \
             status = CASE WHEN approval_status = 'approved' THEN 'loading' ELSE status END, \
             account_key = $7, adv_timestamp = $8 \
             WHERE id = $1 AND approval_status <> 'rejected' \
             AND (CAST($5 AS BIGINT) IS NULL OR credentials_version < CAST($5 AS BIGINT)) \
             AND (account_key IS NULL OR (account_key = $7 AND adv_timestamp <= $8))",
        )
        .bind(id.as_str())
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(exact)
        .bind(now)
        .bind(&account_key[..])
        .bind(adv_timestamp)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let current = fetch_bot_in(&mut tx, id.as_str()).await;
            tx.rollback().await?;
            return match current {
                Ok(bot) if bot.approval == ApprovalStatus::Rejected => Err(StoreError::BotNotFound),
                // Invariant 8 first: another account, or an older pairing.
                Ok(bot) if bot.account_key.is_some_and(|pinned| pinned != account_key) => {
                    Err(StoreError::AccountMismatch)
                }
                Ok(bot) if bot.adv_timestamp.is_some_and(|stored| stored > adv_timestamp) => {
                    Err(StoreError::OlderSession)
                }
                Ok(bot) => Err(StoreError::StaleVersion { current: bot.credentials_version }),
                Err(err) => Err(err),
            };
        }
        insert_effects_in(&mut tx, effects, None, now).await?;
        let record = fetch_bot_in(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn approve_bot(
        &self,
        id: &BotId,
        expires_at: Millis,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<BotRecord, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let (current, row) = lock_approval_in(&mut tx, id).await?;
        let next = current.approve()?;
        if current == ApprovalStatus::Pending {
            leave_pending_in(&mut tx, &row.server_name, now).await?;
        }
        super::query(
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
        insert_effects_in(&mut tx, effects, None, now).await?;
        let record = fetch_bot_in(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn reject_bot(&self, id: &BotId, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let (current, row) = lock_approval_in(&mut tx, id).await?;
        let next = current.reject()?;
        if current == ApprovalStatus::Pending {
            leave_pending_in(&mut tx, &row.server_name, now).await?;
        }
        if current.occupies_slot() && !next.occupies_slot() {
            release_slot_in(&mut tx, id.as_str(), &row.phone_number, &row.server_name, now).await?;
        }
        super::query("UPDATE bot_instances SET approval_status = $2, updated_at = $3 WHERE id = $1")
            .bind(id.as_str())
            .bind(next.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        insert_effects_in(&mut tx, effects, None, now).await?;
        let record = fetch_bot_in(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn move_bot(
        &self,
        request: &MoveRequest,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<MovedBot, StoreError> {
        let (id, to) = (&request.bot, &request.to);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let (approval, row) = lock_approval_in(&mut tx, id).await?;
        let from = ServerName::parse(&row.server_name).map_err(|_| corrupt("server name", &row.server_name))?;
        let refuse = |message: String| Err(StoreError::Conflict(message));
        if request.from.as_ref().is_some_and(|expected| expected != &from) {
            // Planned from a stale snapshot: another node moved it first.
            tx.rollback().await?;
            return refuse(format!("The bot has left {} already.", request.from.as_ref().map_or("", |s| s.as_str())));
        }
        if &from == to {
            tx.rollback().await?;
            return refuse(format!("The bot is already on {to}."));
        }
        // An earlier move is over once the old host let the bot go.
        let still_held: Option<String> = super::query_scalar(
            "SELECT runner FROM bot_instances WHERE id = $1 AND runner IS NOT NULL AND runner <> server_name",
        )
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(old_host) = still_held {
            tx.rollback().await?;
            return refuse(format!("A move of this bot is under way: {old_host} has not let it go yet."));
        }
        // Both server rows, in name order: moves between the same two
        // servers in opposite directions never deadlock, and the pace and
        // lease checks below read rows no other move changes meanwhile.
        let mut names = [from.as_str(), to.as_str()];
        names.sort_unstable();
        for name in names {
            super::query(concat!("SELECT server_name FROM server_registry WHERE server_name = $1 ", lock_row!()))
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        }
        if let Some(lost_for_ms) = request.lost_for_ms {
            let lost: Option<String> = super::query_scalar(concat!(
                "SELECT server_name FROM server_registry WHERE server_name = $1 AND lease_until IS NOT NULL \
                 AND lease_until < ",
                db_now_ms!(),
                " - $2"
            ))
            .bind(from.as_str())
            .bind(lost_for_ms)
            .fetch_optional(&mut *tx)
            .await?;
            if lost.is_none() {
                tx.rollback().await?;
                return refuse(format!("{from} holds its node lease again: its bots stay."));
            }
        }
        if let Some(pace) = request.pace_per_min {
            let recent: i64 =
                super::query_scalar("SELECT COUNT(*) FROM bot_moves WHERE to_server = $1 AND moved_at > $2")
                    .bind(to.as_str())
                    .bind(now - 60_000)
                    .fetch_one(&mut *tx)
                    .await?;
            if recent >= pace {
                tx.rollback().await?;
                return Err(StoreError::Paced(to.clone()));
            }
        }
        if approval.occupies_slot() {
            let pending = i64::from(approval == ApprovalStatus::Pending);
            // The target's slot: one conditional UPDATE, as for a registration (invariant 2).
            let reserved: Option<i64> = super::query_scalar(
                "UPDATE server_registry SET current_bot_count = current_bot_count + 1, \
                 pending_count = pending_count + $3, updated_at = $2 \
                 WHERE server_name = $1 AND server_status = 'active' AND current_bot_count < max_bot_count \
                 RETURNING current_bot_count",
            )
            .bind(to.as_str())
            .bind(now)
            .bind(pending)
            .fetch_optional(&mut *tx)
            .await?;
            if reserved.is_none() {
                let server = fetch_server_in(&mut tx, to.as_str()).await?;
                tx.rollback().await?;
                return Err(match server {
                    None => StoreError::UnknownServer(to.clone()),
                    Some(s) if s.status != ServerStatus::Active => {
                        StoreError::ServerNotAccepting { server: s.name, status: s.status }
                    }
                    Some(s) => StoreError::ServerFull(s.name),
                });
            }
            super::query(
                "UPDATE server_registry SET current_bot_count = current_bot_count - 1, \
                 pending_count = CASE WHEN pending_count >= $3 THEN pending_count - $3 ELSE 0 END, updated_at = $2 \
                 WHERE server_name = $1 AND current_bot_count > 0",
            )
            .bind(from.as_str())
            .bind(now)
            .bind(pending)
            .execute(&mut *tx)
            .await?;
            super::query("UPDATE god_register SET tenancy_name = $2 WHERE phone_number = $1 AND bot_id = $3")
                .bind(&row.phone_number)
                .bind(to.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        } else if fetch_server_in(&mut tx, to.as_str()).await?.is_none() {
            tx.rollback().await?;
            return Err(StoreError::UnknownServer(to.clone()));
        }
        // The runner stays: only it may save the session as it stops the
        // bot, and `server_name` no longer being its node refuses its status.
        super::query("UPDATE bot_instances SET server_name = $2, moved_at = $3, updated_at = $3 WHERE id = $1")
            .bind(id.as_str())
            .bind(to.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        super::query(
            "INSERT INTO bot_moves (bot_id, from_server, to_server, reason, moved_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.as_str())
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(request.reason.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_effects_in(&mut tx, effects, None, now).await?;
        let bot = fetch_bot_in(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(MovedBot { bot, from })
    }

    async fn set_power(
        &self,
        id: &BotId,
        action: PowerAction,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<BotRecord, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let (approval, _) = lock_approval_in(&mut tx, id).await?;
        // A stop holds for any bot (one waiting for approval stays stopped
        // once approved); only an approved bot can be started.
        if action == PowerAction::Restart && approval != ApprovalStatus::Approved {
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "The bot is {}, not approved: approve it first.",
                approval.as_str()
            )));
        }
        let sql = match action {
            // A failed or errored bot is asked to start again: `loading`
            // tells a host that has not seen the failure itself too.
            PowerAction::Restart => {
                "UPDATE bot_instances SET desired_state = 'running', power_seq = power_seq + 1, \
                 status = CASE WHEN status IN ('failed', 'error') THEN 'loading' ELSE status END, updated_at = $2 \
                 WHERE id = $1"
            }
            PowerAction::Stop => "UPDATE bot_instances SET desired_state = 'stopped', updated_at = $2 WHERE id = $1",
        };
        super::query(sql).bind(id.as_str()).bind(now).execute(&mut *tx).await?;
        insert_effects_in(&mut tx, effects, None, now).await?;
        let bot = fetch_bot_in(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(bot)
    }

    async fn delete_bot(&self, id: &BotId, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let (current, row) = lock_approval_in(&mut tx, id).await?;
        let record = fetch_bot_in(&mut tx, id.as_str()).await?;
        if current == ApprovalStatus::Pending {
            leave_pending_in(&mut tx, &row.server_name, now).await?;
        }
        if current.occupies_slot() {
            release_slot_in(&mut tx, id.as_str(), &row.phone_number, &row.server_name, now).await?;
        }
        super::query("DELETE FROM bot_instances WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        insert_effects_in(&mut tx, effects, None, now).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn stale_pending_bots(&self, created_before: Millis, limit: i64) -> Result<Vec<BotRecord>, StoreError> {
        let rows: Vec<BotRow> = super::query_as(concat!(
            "SELECT ",
            bot_columns!(),
            " FROM bot_instances WHERE approval_status = 'pending' AND created_at < $1 ORDER BY created_at LIMIT $2"
        ))
        .bind(created_before)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?;
        bots(rows)
    }

    async fn expire_due_bots(&self, node: &ServerName, now: Millis) -> Result<Vec<BotRecord>, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let rows: Vec<BotRow> = super::query_as(concat!(
            "UPDATE bot_instances SET approval_status = 'expired', updated_at = $1 \
             WHERE approval_status = 'approved' AND expires_at IS NOT NULL AND expires_at <= $1 \
             RETURNING ",
            bot_columns!()
        ))
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let expired = bots(rows)?;
        for bot in &expired {
            let activity = NewActivity::new(node, "expired", "approval expired")
                .for_bot(&bot.id, &bot.phone)
                .by_system(AuditMark::bot(&bot.id));
            insert_activity_in(&mut tx, &activity, now).await?;
        }
        tx.commit().await?;
        Ok(expired)
    }
}
