//! [`RuntimeStore`] methods: node leases, the change feed the hosting
//! node's supervisor reads, and status reports (invariant 4).
//!
//! A node's lease is its registry row (`epoch`, `lease_until`); a bot's
//! runner is `(runner, runner_epoch)`. Renewing the one row renews every bot
//! the node runs, and a node that restarts (new epoch) or stalls past its
//! lease can no longer act on its old runs.

use async_trait::async_trait;
use trekker_domain::{BotId, Credentials, ServerName};

use super::{BEGIN_WRITE, CHANGE_CURSOR, Db, insert_activity_in, json_integers, push_in_json_bigints};
use crate::cipher::Sealed;
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::RuntimeStore;

/// The bot's runner is absent, is `($2, $3)` itself, or is a lease that is
/// over (epoch moved on or time ran out at `$4`). Used where `bot_instances`
/// is the table being written.
macro_rules! runner_free_or {
    () => {
        "(runner IS NULL OR (runner = $2 AND runner_epoch = $3) OR NOT EXISTS (\
         SELECT 1 FROM server_registry lease WHERE lease.server_name = bot_instances.runner \
         AND lease.epoch = bot_instances.runner_epoch AND lease.lease_until >= $4))"
    };
}

impl SqlStore<Db> {
    /// Where the change feed stands now; taken before a read, so whatever
    /// commits during the read is read again next time, never lost.
    async fn change_cursor(&self) -> Result<ChangeCursor, StoreError> {
        let text: String = super::query_scalar(CHANGE_CURSOR).fetch_one(&self.pool).await?;
        ChangeCursor::parse(&text).ok_or_else(|| corrupt("change cursor", &text))
    }

    /// What changed since `cursor` on `server` (its `*_changes` indexes),
    /// or in the whole fleet (the `*_fleet_changes` indexes).
    async fn changes_since(
        &self,
        server: Option<&ServerName>,
        cursor: &ChangeCursor,
    ) -> Result<BotChanges, StoreError> {
        let on_server = |query: &mut sqlx::QueryBuilder<Db>| {
            if let Some(server) = server {
                query.push("server_name = ").push_bind(server.to_string()).push(" AND ");
            }
        };
        // Quiet, one statement answers: the cursor and whether anything lies
        // past the old one, in one snapshot (so whatever it does not see is
        // past the new cursor). A quiet node polls this every two seconds,
        // and each statement costs the database a fixed part (issue 22).
        if cursor.pending.is_empty() {
            let mut query = sqlx::QueryBuilder::new("SELECT (");
            query.push(CHANGE_CURSOR).push("), EXISTS (SELECT 1 FROM bot_departures WHERE ");
            on_server(&mut query);
            query.push("change_seq >= ").push_bind(cursor.from).push("), EXISTS (SELECT 1 FROM bot_instances WHERE ");
            on_server(&mut query);
            query.push("change_seq >= ").push_bind(cursor.from).push(")");
            let (text, departed, changed): (String, bool, bool) =
                query.build_query_as().persistent(super::named()).fetch_one(&self.pool).await?;
            if !departed && !changed {
                let next = ChangeCursor::parse(&text).ok_or_else(|| corrupt("change cursor", &text))?;
                return Ok(BotChanges { cursor: next, changed: Vec::new(), departed: Vec::new() });
            }
        }
        let next = self.change_cursor().await?;
        // Writes since the cursor: a range of the change index, empty when
        // quiet. Writes of transactions still running at the cursor are
        // asked for apart, only when there were any: an OR of both would
        // make the planner read every row.
        let mut query = sqlx::QueryBuilder::new("SELECT bot_id FROM bot_departures WHERE ");
        on_server(&mut query);
        query.push("change_seq >= ").push_bind(cursor.from).push(" ORDER BY change_seq");
        let mut departed: Vec<String> =
            query.build_query_scalar().persistent(super::named()).fetch_all(&self.pool).await?;
        let mut query = sqlx::QueryBuilder::new(concat!("SELECT ", bot_columns!(), " FROM bot_instances WHERE "));
        on_server(&mut query);
        query.push("change_seq >= ").push_bind(cursor.from);
        let mut rows: Vec<BotRow> = query.build_query_as().persistent(super::named()).fetch_all(&self.pool).await?;
        if !cursor.pending.is_empty() {
            let pending = json_integers(&cursor.pending);
            let mut query = sqlx::QueryBuilder::new("SELECT bot_id FROM bot_departures WHERE ");
            on_server(&mut query);
            query.push("change_seq");
            push_in_json_bigints(&mut query, pending.clone());
            let late: Vec<String> = query.build_query_scalar().persistent(super::named()).fetch_all(&self.pool).await?;
            // Departures are applied before rows, so their order is kept
            // only among themselves: late ones first (they are older).
            departed.splice(0..0, late);
            // By sequence alone (the fleet index), the server checked here: with
            // the server in it, the generic plan read every bot of a busy
            // server to find the few late ones (1,658 pages for 2 rows, issue 22).
            let mut query = sqlx::QueryBuilder::new(concat!("SELECT ", bot_columns!(), " FROM bot_instances WHERE "));
            query.push("change_seq");
            push_in_json_bigints(&mut query, pending);
            let late_rows: Vec<BotRow> =
                query.build_query_as().persistent(super::named()).fetch_all(&self.pool).await?;
            rows.extend(late_rows.into_iter().filter(|row| server.is_none_or(|s| row.server_name == s.as_str())));
        }
        let departed =
            departed.iter().map(|id| BotId::parse(id).map_err(|_| corrupt("bot id", id))).collect::<Result<_, _>>()?;
        Ok(BotChanges { cursor: next, changed: bots(rows)?, departed })
    }
}

#[async_trait]
impl RuntimeStore for SqlStore<Db> {
    async fn start_node_lease(&self, node: &ServerName, now: Millis, lease_ms: i64) -> Result<NodeLease, StoreError> {
        let epoch: Option<i64> = super::query_scalar(
            "UPDATE server_registry SET epoch = epoch + 1, lease_until = $2 + $3 WHERE server_name = $1 \
             RETURNING epoch",
        )
        .bind(node.as_str())
        .bind(now)
        .bind(lease_ms)
        .fetch_optional(&self.pool)
        .await?;
        let epoch = epoch.ok_or_else(|| StoreError::UnknownServer(node.clone()))?;
        Ok(NodeLease { node: node.clone(), epoch })
    }

    async fn renew_node_lease(&self, lease: &NodeLease, now: Millis, lease_ms: i64) -> Result<bool, StoreError> {
        let done = super::query(
            "UPDATE server_registry SET lease_until = $3 + $4, last_heartbeat = $3 \
             WHERE server_name = $1 AND epoch = $2 AND lease_until >= $3",
        )
        .bind(lease.node.as_str())
        .bind(lease.epoch)
        .bind(now)
        .bind(lease_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn bots_to_run(&self, node: &ServerName) -> Result<BotSnapshot, StoreError> {
        // The cursor first: anything committed after it is read again by
        // the next `bot_changes`, never lost.
        let cursor = self.change_cursor().await?;
        let rows: Vec<BotRow> = super::query_as(concat!(
            "SELECT ",
            bot_columns!(),
            " FROM bot_instances WHERE server_name = $1 AND approval_status = 'approved' AND desired_state = 'running'"
        ))
        .bind(node.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(BotSnapshot { cursor, bots: bots(rows)? })
    }

    async fn bot_changes(&self, node: &ServerName, cursor: &ChangeCursor) -> Result<BotChanges, StoreError> {
        self.changes_since(Some(node), cursor).await
    }

    async fn fleet_cursor(&self) -> Result<ChangeCursor, StoreError> {
        self.change_cursor().await
    }

    async fn fleet_changes(&self, cursor: &ChangeCursor) -> Result<BotChanges, StoreError> {
        self.changes_since(None, cursor).await
    }

    async fn load_credentials(&self, id: &BotId) -> Result<Option<(Credentials, i64)>, StoreError> {
        let row: Option<SealedRow> = super::query_as(
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

    async fn acquire_bot(&self, id: &BotId, lease: &NodeLease, version: i64, now: Millis) -> Result<bool, StoreError> {
        let done = super::query(concat!(
            "UPDATE bot_instances SET runner = $2, runner_epoch = $3 \
             WHERE id = $1 AND server_name = $2 AND approval_status = 'approved' AND credentials_version = $5 AND ",
            own_lease_live!(),
            " AND ",
            runner_free_or!()
        ))
        .bind(id.as_str())
        .bind(lease.node.as_str())
        .bind(lease.epoch)
        .bind(now)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_bot(&self, id: &BotId, lease: &NodeLease) -> Result<(), StoreError> {
        super::query(
            "UPDATE bot_instances SET runner = NULL, runner_epoch = NULL \
             WHERE id = $1 AND runner = $2 AND runner_epoch = $3",
        )
        .bind(id.as_str())
        .bind(lease.node.as_str())
        .bind(lease.epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn report_runtime(&self, report: &RuntimeReport, now: Millis) -> Result<bool, StoreError> {
        let Some(effects) = &report.effects else {
            // One statement, no transaction: the common case stays one round trip.
            return apply_report(&self.pool, report, now).await;
        };
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let taken = apply_report(&mut *tx, report, now).await?;
        // A report refused by the fence says nothing, to anyone.
        if taken {
            super::insert_effects_in(&mut tx, effects, None, now).await?;
        }
        tx.commit().await?;
        Ok(taken)
    }

    async fn record_exit(&self, id: &BotId, runner: &NodeLease, exit: &BotExit) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let done = super::query(concat!(
            "UPDATE bot_instances SET last_exit_at = $4, last_exit_code = $5, last_exit_signal = $6, \
             last_exit_reason = $7, oom_kills = oom_kills + $8 \
             WHERE id = $1 AND server_name = $2 AND ",
            own_lease_live!(),
            " AND ",
            runner_free_or!()
        ))
        .bind(id.as_str())
        .bind(runner.node.as_str())
        .bind(runner.epoch)
        .bind(exit.at)
        .bind(exit.code)
        .bind(exit.signal)
        .bind(&exit.reason)
        .bind(i64::from(exit.out_of_memory))
        .execute(&mut *tx)
        .await?;
        let recorded = done.rows_affected() == 1;
        if recorded && exit.out_of_memory {
            // The sandbox's kill is the cluster's own act: on the audit trail.
            let activity = NewActivity {
                bot_id: Some(id.clone()),
                ..NewActivity::new(&runner.node, "out_of_memory", &exit.reason)
            }
            .by_system(AuditMark::bot(id));
            insert_activity_in(&mut tx, &activity, exit.at).await?;
        }
        tx.commit().await?;
        Ok(recorded)
    }

    async fn bot_exits(&self, id: &BotId) -> Result<BotExits, StoreError> {
        type Row = (Option<i64>, Option<i32>, Option<i32>, Option<String>, i64);
        let row: Option<Row> = super::query_as(
            "SELECT last_exit_at, last_exit_code, last_exit_signal, last_exit_reason, oom_kills \
             FROM bot_instances WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let Some((at, code, signal, reason, oom_kills)) = row else { return Ok(BotExits::default()) };
        let last = at.map(|at| BotExit { at, code, signal, out_of_memory: false, reason: reason.unwrap_or_default() });
        Ok(BotExits { last, oom_kills })
    }

    async fn purge_departures(&self, before: Millis) -> Result<u64, StoreError> {
        let done =
            super::query("DELETE FROM bot_departures WHERE departed_at < $1").bind(before).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}

/// Writes a report if this node's live lease runs the bot at its version.
async fn apply_report<'e>(
    executor: impl sqlx::Executor<'e, Database = Db>,
    report: &RuntimeReport,
    now: Millis,
) -> Result<bool, StoreError> {
    let done = super::query(concat!(
        "UPDATE bot_instances SET status = $6, restarts = restarts + $7, \
         last_error = COALESCE(CAST($8 AS TEXT), last_error), \
         invalid_reason = COALESCE(CAST($9 AS TEXT), invalid_reason), updated_at = $4 \
         WHERE id = $1 AND server_name = $2 AND credentials_version = $5 AND ",
        own_lease_live!(),
        " AND ",
        runner_free_or!()
    ))
    .bind(report.bot_id.as_str())
    .bind(report.runner.node.as_str())
    .bind(report.runner.epoch)
    .bind(now)
    .bind(report.version)
    .bind(report.status.as_str())
    .bind(report.restarts)
    .bind(report.last_error.as_deref())
    .bind(report.invalid_reason.as_deref())
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}
