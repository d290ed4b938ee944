//! [`ActivityLog`] methods: the audit log, paged newest first.

use async_trait::async_trait;
use trekker_domain::BotId;

use super::{Db, insert_activity_in, split_page};
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

    async fn list_activities(
        &self,
        bot: Option<BotId>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<ActivityPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // Built per call, one statement per filter combination (see
        // `newest_first` for why), on `activities_bot` or the primary key.
        let mut query = sqlx::QueryBuilder::new(concat!("SELECT ", activity_columns!(), " FROM activities"));
        let mut joiner = " WHERE ";
        if let Some(bot) = bot {
            query.push(joiner).push("bot_id = ").push_bind(bot.to_string());
            joiner = " AND ";
        }
        if let Some(after) = after {
            query.push(joiner).push("id < ").push_bind(after);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
        let rows: Vec<ActivityRow> = query.build_query_as().persistent(super::named()).fetch_all(&self.pool).await?;
        let activities = rows.into_iter().map(Activity::from).collect();
        let (activities, next) = split_page(activities, limit, |a: &Activity| a.id);
        Ok(ActivityPage { activities, next })
    }

    async fn list_audit(
        &self,
        filter: &AuditFilter,
        after: Option<i64>,
        limit: i64,
    ) -> Result<ActivityPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // One statement per filter combination, as above; every one on a
        // partial index of the audit rows (migrations 0017, 0018: by id, by
        // actor, by action; with both, the actor's, the action checked).
        let mut query = sqlx::QueryBuilder::new(concat!(
            "SELECT ",
            activity_columns!(),
            " FROM activities WHERE actor_name IS NOT NULL"
        ));
        if let Some(actor) = &filter.actor {
            query.push(" AND actor_name = ").push_bind(actor.clone());
        }
        if let Some(action) = &filter.action {
            query.push(" AND action = ").push_bind(action.clone());
        }
        if let Some(after) = after {
            query.push(" AND id < ").push_bind(after);
        }
        query.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
        let rows: Vec<ActivityRow> = query.build_query_as().persistent(super::named()).fetch_all(&self.pool).await?;
        let activities = rows.into_iter().map(Activity::from).collect();
        let (activities, next) = split_page(activities, limit, |a: &Activity| a.id);
        Ok(ActivityPage { activities, next })
    }

    async fn activities_after(&self, after: i64, limit: i64) -> Result<Vec<Activity>, StoreError> {
        let rows: Vec<ActivityRow> = super::query_as(concat!(
            "SELECT ",
            activity_columns!(),
            " FROM activities WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after)
        .bind(limit.clamp(1, MAX_PAGE))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Activity::from).collect())
    }

    async fn last_activity_id(&self) -> Result<i64, StoreError> {
        let last: Option<i64> = super::query_scalar("SELECT MAX(id) FROM activities").fetch_one(&self.pool).await?;
        Ok(last.unwrap_or(0))
    }
}
