//! [`ActivityLog`] methods: the audit log.

use async_trait::async_trait;
use trekker_domain::BotId;

use super::{Db, insert_activity_in};
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::ActivityLog;

#[async_trait]
impl ActivityLog for SqlStore<Db> {
    async fn append_activity(&self, activity: &NewActivity, now: Millis) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_activity_in(&mut conn, activity, now).await
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
        Ok(rows.into_iter().map(Activity::from).collect())
    }
}
