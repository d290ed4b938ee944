//! [`ReplayGuard`] methods: node-to-node token ids, each usable once.

use async_trait::async_trait;

use super::Db;
use crate::error::StoreError;
use crate::model::Millis;
use crate::sql::SqlStore;
use crate::traits::ReplayGuard;

#[async_trait]
impl ReplayGuard for SqlStore<Db> {
    async fn remember_jti(&self, issuer: &str, jti: &str, expires_at: Millis) -> Result<bool, StoreError> {
        let done = super::query(
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

    async fn purge_replay_records(&self, now: Millis) -> Result<u64, StoreError> {
        let done = super::query("DELETE FROM replay_guard WHERE expires_at < $1").bind(now).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}
