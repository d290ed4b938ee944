//! [`ServerStore`] methods: the nodes' registry rows and heartbeats.

use async_trait::async_trait;
use trekker_domain::{ServerName, ServerStatus};

use super::{BEGIN_WRITE, Db, fetch_server_in, insert_activity_in};
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::ServerStore;

#[async_trait]
impl ServerStore for SqlStore<Db> {
    async fn ping(&self) -> Result<(), StoreError> {
        super::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn upsert_server(&self, server: &ServerRegistration, now: Millis) -> Result<ServerSnapshot, StoreError> {
        if server.max_bot_count < 0 {
            return Err(StoreError::InvalidInput("max_bot_count must not be negative".into()));
        }
        let row: ServerRow = super::query_as(concat!(
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

    async fn heartbeat(&self, server: &ServerName, now: Millis, load: Option<ServerLoad>) -> Result<(), StoreError> {
        let done = super::query(
            "UPDATE server_registry SET last_heartbeat = $2, \
             load_cpu_percent = COALESCE(CAST($3 AS BIGINT), load_cpu_percent), \
             load_memory_available = COALESCE(CAST($4 AS BIGINT), load_memory_available), \
             load_bots_running = COALESCE(CAST($5 AS BIGINT), load_bots_running) WHERE server_name = $1",
        )
        .bind(server.as_str())
        .bind(now)
        .bind(load.map(|l| l.cpu_percent))
        .bind(load.map(|l| l.memory_available_bytes))
        .bind(load.map(|l| l.bots_running))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UnknownServer(server.clone()));
        }
        Ok(())
    }

    async fn list_servers(&self) -> Result<Vec<ServerSnapshot>, StoreError> {
        let rows: Vec<ServerRow> =
            super::query_as(concat!("SELECT ", server_columns!(), " FROM server_registry ORDER BY server_name"))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(ServerSnapshot::try_from).collect()
    }

    async fn get_server(&self, server: &ServerName) -> Result<Option<ServerSnapshot>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        fetch_server_in(&mut conn, server.as_str()).await
    }

    async fn update_server(
        &self,
        server: &ServerName,
        patch: &ServerPatch,
        audit: &NewActivity,
        now: Millis,
    ) -> Result<ServerSnapshot, StoreError> {
        if patch.max_bot_count.is_some_and(|max| max < 0) {
            return Err(StoreError::InvalidInput("maxBotCount must not be negative".into()));
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row: Option<ServerRow> = super::query_as(concat!(
            "UPDATE server_registry SET max_bot_count = COALESCE(CAST($2 AS BIGINT), max_bot_count), \
             server_status = COALESCE(CAST($3 AS TEXT), server_status), updated_at = $4, \
             evacuation_started_at = CASE WHEN CAST($3 AS TEXT) IS NOT NULL AND CAST($3 AS TEXT) <> 'draining' \
             THEN NULL ELSE evacuation_started_at END \
             WHERE server_name = $1 RETURNING ",
            server_columns!()
        ))
        .bind(server.as_str())
        .bind(patch.max_bot_count)
        .bind(patch.status.map(ServerStatus::as_str))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let snapshot = row.ok_or_else(|| StoreError::UnknownServer(server.clone()))?.try_into()?;
        insert_activity_in(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    async fn start_evacuation(
        &self,
        server: &ServerName,
        audit: &NewActivity,
        now: Millis,
    ) -> Result<ServerSnapshot, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row: Option<ServerRow> = super::query_as(concat!(
            "UPDATE server_registry SET server_status = 'draining', \
             evacuation_started_at = COALESCE(evacuation_started_at, $2), evacuation_stuck = 0, updated_at = $2 \
             WHERE server_name = $1 RETURNING ",
            server_columns!()
        ))
        .bind(server.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let snapshot = row.ok_or_else(|| StoreError::UnknownServer(server.clone()))?.try_into()?;
        insert_activity_in(&mut tx, audit, now).await?;
        tx.commit().await?;
        Ok(snapshot)
    }

    async fn record_evacuation(&self, server: &ServerName, stuck: i64, done: bool) -> Result<(), StoreError> {
        super::query(
            "UPDATE server_registry SET evacuation_stuck = $2, \
             evacuation_started_at = CASE WHEN $3 THEN NULL ELSE evacuation_started_at END \
             WHERE server_name = $1 AND evacuation_started_at IS NOT NULL",
        )
        .bind(server.as_str())
        .bind(stuck)
        .bind(done)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn lost_servers(&self, lost_for_ms: i64) -> Result<Vec<ServerName>, StoreError> {
        let names: Vec<String> = super::query_scalar(concat!(
            "SELECT server_name FROM server_registry s WHERE lease_until IS NOT NULL AND lease_until < ",
            db_now_ms!(),
            " - $1 AND EXISTS (SELECT 1 FROM bot_instances b WHERE b.server_name = s.server_name \
             AND b.approval_status = 'approved') ORDER BY server_name"
        ))
        .bind(lost_for_ms)
        .fetch_all(&self.pool)
        .await?;
        names.iter().map(|n| ServerName::parse(n).map_err(|_| corrupt("server", n))).collect()
    }
}
