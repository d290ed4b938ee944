//! The SQL of the store, one module per aggregate, compiled once per
//! backend (the parent module names `Db`, `BEGIN_WRITE`, `CHANGE_CURSOR`,
//! `GENERIC_PLANS`, `lock_row!`, `claim_lock!` and `in_json_bigints!`).
//! This file holds the statements several aggregates run inside their own
//! transactions, and the paged listing builder.
//!
//! Placeholders are `$N`, which both drivers accept; times are epoch
//! milliseconds in BIGINT columns.

/// The node lease `($2, $3)` (node, epoch) holds at `$4`. Defined before the
/// modules below so that runtime and session-state queries share it.
macro_rules! own_lease_live {
    () => {
        "EXISTS (SELECT 1 FROM server_registry mine WHERE mine.server_name = $2 AND mine.epoch = $3 \
         AND mine.lease_until >= $4)"
    };
}

mod activities;
mod api_keys;
mod bots;
mod capacity;
mod consistency;
mod credential_outbox;
mod device_state;
mod idempotency;
mod notifications;
mod pairing;
mod replay;
mod reviews;
mod runtime;
mod servers;
mod session_state;

use trekker_domain::{ApprovalStatus, BotId, PhoneNumber, ServerName};

use super::{BEGIN_WRITE, CHANGE_CURSOR, Db, GENERIC_PLANS, named_statements};
use crate::error::StoreError;
use crate::model::*;
use crate::sql::rows::*;

/// The runner fence of everything a run writes (session and device state):
/// the bot `id` is run by `lease`, live at `now`, at credentials `version`.
/// Holds the bot row until the transaction ends, so a new runner's
/// `acquire_bot` (an UPDATE of that row) is ordered before or after the
/// whole write, never in the middle: after it, the fence fails.
pub(super) async fn lock_if_run_by(
    tx: &mut sqlx::Transaction<'static, Db>,
    id: &BotId,
    lease: &NodeLease,
    version: i64,
    now: Millis,
) -> Result<bool, StoreError> {
    let runner: Option<String> = query_scalar(concat!(
        "SELECT b.id FROM bot_instances b WHERE b.id = $1 AND b.runner = $2 AND b.runner_epoch = $3 \
         AND b.credentials_version = $5 AND ",
        own_lease_live!(),
        " ",
        lock_row!()
    ))
    .bind(id.as_str())
    .bind(lease.node.as_str())
    .bind(lease.epoch)
    .bind(now)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(runner.is_some())
}

/// The account key and device-identity time of verified credentials, as
/// stored (invariant 8).
pub(super) fn ownership(credentials: &trekker_domain::Credentials) -> Result<([u8; 32], i64), StoreError> {
    let identity = credentials.identity();
    let timestamp = i64::try_from(identity.timestamp)
        .map_err(|_| StoreError::InvalidInput("the device identity's timestamp is out of range".into()))?;
    Ok((identity.account_key, timestamp))
}

/// Keyset paging: a query fetches one row more than `limit`; if it came,
/// there is a next page, starting after the last row kept (`key` of it).
pub(super) fn split_page<T, K>(mut rows: Vec<T>, limit: i64, key: impl Fn(&T) -> K) -> (Vec<T>, Option<K>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() <= limit {
        return (rows, None);
    }
    rows.truncate(limit);
    let next = rows.last().map(key);
    (rows, next)
}

/// A paged admin listing, newest first (`created_at DESC, id`), with an
/// equality condition only for each filter given. Built per call rather
/// than with `($1 IS NULL OR col = $1)`: prepared statements switch to a
/// generic plan after a few runs, and a generic plan cannot use the index
/// of a filter that may be absent. Each combination is its own statement,
/// each with an index (migration 0007). Fetches one row more than `limit`
/// (see [`split_page`]).
pub(super) fn newest_first(
    select_from: &str,
    filters: &[(&'static str, Option<String>)],
    after: Option<(Millis, String)>,
    limit: i64,
) -> sqlx::QueryBuilder<Db> {
    let mut query = sqlx::QueryBuilder::new(select_from);
    let mut joiner = " WHERE ";
    for (column, value) in filters {
        if let Some(value) = value {
            query.push(joiner).push(column).push(" = ").push_bind(value.clone());
            joiner = " AND ";
        }
    }
    if let Some((created_at, id)) = after {
        // The first term is implied by the second; it is there so the index
        // starts at the cursor instead of filtering every row before it.
        query.push(joiner).push("created_at <= ").push_bind(created_at);
        query.push(" AND (created_at < ").push_bind(created_at);
        query.push(" OR (created_at = ").push_bind(created_at).push(" AND id > ").push_bind(id).push("))");
    }
    query.push(" ORDER BY created_at DESC, id LIMIT ").push_bind(limit + 1);
    query
}

/// `values` as a JSON array of integers, bound as text where a list is
/// needed (SQLite has no arrays; see `in_json_bigints!`).
pub(super) fn json_integers(values: &[i64]) -> String {
    format!("[{}]", values.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
}

/// Whether statements are named and cached per connection: always, but
/// never through a transaction pooler (`sql/pool.rs`).
pub(super) fn named() -> bool {
    named_statements()
}

type Arguments = <Db as sqlx::Database>::Arguments;
type Row = <Db as sqlx::Database>::Row;

/// `sqlx::query`, named or not as the connection allows (every statement
/// of the store is made here or by the three below).
pub(super) fn query<'q>(sql: impl sqlx::SqlSafeStr) -> sqlx::query::Query<'q, Db, Arguments> {
    sqlx::query(sql).persistent(named())
}

pub(super) fn query_as<'q, O>(sql: impl sqlx::SqlSafeStr) -> sqlx::query::QueryAs<'q, Db, O, Arguments>
where
    O: for<'r> sqlx::FromRow<'r, Row>,
{
    sqlx::query_as(sql).persistent(named())
}

pub(super) fn query_scalar<'q, O>(sql: impl sqlx::SqlSafeStr) -> sqlx::query::QueryScalar<'q, Db, O, Arguments>
where
    (O,): for<'r> sqlx::FromRow<'r, Row>,
{
    sqlx::query_scalar(sql).persistent(named())
}

/// Appends the dialect's "is one of the integers of a JSON array"
/// predicate (`in_json_bigints!`) with `json` bound in it.
pub(super) fn push_in_json_bigints(query: &mut sqlx::QueryBuilder<Db>, json: String) {
    const BIND: &str = "$JSON";
    let template = in_json_bigints!("$JSON");
    let (before, after) = template.split_once(BIND).unwrap_or((template, ""));
    query.push(before).push_bind(json).push(after);
}

/// A connection of this backend, inside or outside a transaction.
type Conn = <Db as sqlx::Database>::Connection;

pub(super) async fn fetch_bot_in(conn: &mut Conn, id: &str) -> Result<BotRecord, StoreError> {
    let row: Option<BotRow> = query_as(concat!("SELECT ", bot_columns!(), " FROM bot_instances WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or(StoreError::BotNotFound)?.try_into()
}

pub(super) async fn fetch_server_in(conn: &mut Conn, name: &str) -> Result<Option<ServerSnapshot>, StoreError> {
    let row: Option<ServerRow> =
        query_as(concat!("SELECT ", server_columns!(), " FROM server_registry WHERE server_name = $1"))
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(ServerSnapshot::try_from).transpose()
}

pub(super) async fn insert_activity_in(conn: &mut Conn, activity: &NewActivity, now: Millis) -> Result<(), StoreError> {
    query(
        "INSERT INTO activities (occurred_at, server_name, bot_id, phone_number, action, details, \
         remote_tenancy, remote_bot_id, actor_key_id, actor_name, target, result) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(now)
    .bind(activity.server.as_str())
    .bind(activity.bot_id.as_ref().map(BotId::as_str))
    .bind(activity.phone.as_ref().map(PhoneNumber::as_str))
    .bind(&activity.action)
    .bind(&activity.details)
    .bind(activity.remote_tenancy.as_ref().map(ServerName::as_str))
    .bind(activity.remote_bot_id.as_deref())
    .bind(activity.audit.as_ref().and_then(|audit| audit.actor.key_id.as_deref()))
    .bind(activity.audit.as_ref().map(|audit| audit.actor.name.as_str()))
    .bind(activity.audit.as_ref().map(|audit| audit.target.as_str()))
    .bind(activity.audit.as_ref().map(|audit| audit.result.as_str()))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Writes a change's activity and notification. `slots_left` is known only
/// to a registration (see [`trekker_domain::GuestMessage::render`]).
pub(super) async fn insert_effects_in(
    conn: &mut Conn,
    effects: &SideEffects,
    slots_left: Option<i64>,
    now: Millis,
) -> Result<(), StoreError> {
    insert_activity_in(&mut *conn, &effects.activity, now).await?;
    insert_notification_in(conn, effects, slots_left, now).await
}

/// Queues a change's guest notification, if it has one.
pub(super) async fn insert_notification_in(
    conn: &mut Conn,
    effects: &SideEffects,
    slots_left: Option<i64>,
    now: Millis,
) -> Result<(), StoreError> {
    if let Some(notification) = &effects.notification {
        query(
            "INSERT INTO notification_outbox (phone_number, message, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $3)",
        )
        .bind(notification.phone.as_str())
        .bind(notification.message.render(slots_left))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Releases the phone and the slot a bot held (reject, delete).
pub(super) async fn release_slot_in(
    conn: &mut Conn,
    bot_id: &str,
    phone: &str,
    server: &str,
    now: Millis,
) -> Result<(), StoreError> {
    query(
        "UPDATE server_registry SET current_bot_count = current_bot_count - 1, updated_at = $2 \
         WHERE server_name = $1 AND current_bot_count > 0",
    )
    .bind(server)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    query("DELETE FROM god_register WHERE phone_number = $1 AND bot_id = $2")
        .bind(phone)
        .bind(bot_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A bot of `server` stops waiting for approval (approved, rejected, deleted).
pub(super) async fn leave_pending_in(conn: &mut Conn, server: &str, now: Millis) -> Result<(), StoreError> {
    query(
        "UPDATE server_registry SET pending_count = pending_count - 1, updated_at = $2 \
         WHERE server_name = $1 AND pending_count > 0",
    )
    .bind(server)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Reads a bot's approval state for an admin transition, locked.
pub(super) async fn lock_approval_in(conn: &mut Conn, id: &BotId) -> Result<(ApprovalStatus, ApprovalRow), StoreError> {
    let row: Option<ApprovalRow> = query_as(concat!(
        "SELECT approval_status, server_name, phone_number FROM bot_instances WHERE id = $1 ",
        lock_row!()
    ))
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    let row = row.ok_or(StoreError::BotNotFound)?;
    Ok((parse_approval(&row.approval_status)?, row))
}
