//! [`CapacityLevelStore`] methods: each scope's capacity level, moved by
//! compare-and-set; the move and its warning commit together.

use std::collections::HashMap;

use async_trait::async_trait;
use trekker_domain::ServerName;
use trekker_domain::capacity::CapacityLevel;

use super::{BEGIN_WRITE, Db, insert_effects_in};
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::traits::CapacityLevelStore;

#[async_trait]
impl CapacityLevelStore for SqlStore<Db> {
    async fn capacity_levels(&self) -> Result<Vec<(String, CapacityLevel)>, StoreError> {
        let rows: Vec<(String, i64)> =
            super::query_as("SELECT scope, level FROM capacity_levels ORDER BY scope").fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(scope, level)| {
                let level = CapacityLevel::from_i64(level)
                    .ok_or_else(|| StoreError::Corrupt(format!("capacity level {level} of `{scope}`")))?;
                Ok((scope, level))
            })
            .collect()
    }

    async fn capacity_level(&self, scope: &str) -> Result<CapacityLevel, StoreError> {
        let level: Option<i64> = super::query_scalar("SELECT level FROM capacity_levels WHERE scope = $1")
            .bind(scope)
            .fetch_optional(&self.pool)
            .await?;
        let level = level.unwrap_or(0);
        CapacityLevel::from_i64(level)
            .ok_or_else(|| StoreError::Corrupt(format!("capacity level {level} of `{scope}`")))
    }

    async fn hold_duty(&self, duty: &str, node: &ServerName, now: Millis, ttl_ms: i64) -> Result<bool, StoreError> {
        // Most callers are not the holder: what they last read settles it
        // until the holder's lease ends (it can only be renewed meanwhile),
        // and a read settles it after, where the upsert would try an insert
        // and lock the row (six times the cost; issue 22). The upsert below
        // stays the only writer.
        let others = |duties: &HashMap<String, (String, Millis)>| {
            duties.get(duty).is_some_and(|(holder, until)| holder != node.as_str() && *until >= now)
        };
        if others(&self.others_duties.lock().unwrap_or_else(|e| e.into_inner())) {
            return Ok(false);
        }
        let current: Option<(String, Millis)> =
            super::query_as("SELECT holder, until FROM duty_leases WHERE duty = $1")
                .bind(duty)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(current) = current {
            let mut duties = self.others_duties.lock().unwrap_or_else(|e| e.into_inner());
            duties.insert(duty.to_owned(), current);
            if others(&duties) {
                return Ok(false);
            }
        }
        let held: Option<String> = super::query_scalar(
            "INSERT INTO duty_leases (duty, holder, until) VALUES ($1, $2, $3 + $4) \
             ON CONFLICT (duty) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE duty_leases.holder = excluded.holder OR duty_leases.until < $3 RETURNING holder",
        )
        .bind(duty)
        .bind(node.as_str())
        .bind(now)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.is_some())
    }

    async fn move_capacity_level(
        &self,
        scope: &str,
        from: CapacityLevel,
        to: CapacityLevel,
        effects: Option<SideEffects>,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        super::query(
            "INSERT INTO capacity_levels (scope, level, changed_at) VALUES ($1, 0, $2) ON CONFLICT (scope) DO NOTHING",
        )
        .bind(scope)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Whoever moves it first wins; a node that read the old level late
        // finds it moved and writes nothing (PostgreSQL re-checks the level
        // after waiting for the winner's row lock).
        let moved =
            super::query("UPDATE capacity_levels SET level = $3, changed_at = $4 WHERE scope = $1 AND level = $2")
                .bind(scope)
                .bind(from.as_i64())
                .bind(to.as_i64())
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        if !moved {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(effects) = &effects {
            insert_effects_in(&mut tx, effects, None, now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
