//! [`ApiKeyStore`] methods: the admin API's keys, found by id, listed
//! newest first, revoked once.

use async_trait::async_trait;

use super::{BEGIN_WRITE, Db, insert_activity_in, split_page};
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::ApiKeyRow;
use crate::traits::ApiKeyStore;

macro_rules! from_keys {
    () => {
        "SELECT id, name, role, secret_hash, created_by, created_at, expires_at, revoked_at, last_used_at \
         FROM api_keys"
    };
}

#[async_trait]
impl ApiKeyStore for SqlStore<Db> {
    async fn create_api_key(&self, key: &ApiKey, audit: &NewActivity) -> Result<(), StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let done = super::query(
            "INSERT INTO api_keys (id, name, role, secret_hash, created_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(key.role.as_str())
        .bind(&key.secret_hash)
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("an api key {} exists already", key.id)));
        }
        insert_activity_in(&mut tx, audit, key.created_at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row: Option<ApiKeyRow> =
            super::query_as(concat!(from_keys!(), " WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?;
        row.map(ApiKey::try_from).transpose()
    }

    async fn list_api_keys(&self, after: Option<String>, limit: i64) -> Result<ApiKeyPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        // Newest first on (created_at, id); the next page starts after the
        // key `after`, wherever it stood (a revoked one included).
        let rows: Vec<ApiKeyRow> = match after {
            None => {
                super::query_as(concat!(from_keys!(), " ORDER BY created_at DESC, id DESC LIMIT $1"))
                    .bind(limit + 1)
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(after) => {
                super::query_as(concat!(
                    from_keys!(),
                    " WHERE (created_at, id) < (SELECT created_at, id FROM api_keys WHERE id = $1) \
                     ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .bind(after)
                .bind(limit + 1)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let keys = rows.into_iter().map(ApiKey::try_from).collect::<Result<Vec<_>, _>>()?;
        let (keys, next) = split_page(keys, limit, |key: &ApiKey| key.id.clone());
        Ok(ApiKeyPage { keys, next })
    }

    async fn revoke_api_key(&self, id: &str, audit: &NewActivity, now: Millis) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let done = super::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let revoked = done.rows_affected() == 1;
        if revoked {
            insert_activity_in(&mut tx, audit, now).await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    async fn record_api_key_use(&self, uses: &[(String, Millis)]) -> Result<(), StoreError> {
        for (id, at) in uses {
            super::query(
                "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 \
                 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(id)
            .bind(*at)
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }
}
