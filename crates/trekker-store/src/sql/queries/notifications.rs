//! [`NotificationOutbox`] methods: guest messages, claimed under a lease by
//! one dispatcher at a time (at-least-once delivery), claimed and marked
//! sent in batches.

use async_trait::async_trait;
use trekker_domain::ServerName;

use super::{BEGIN_WRITE, Db, json_integers};
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::NotificationOutbox;

/// Claims due messages (`$1` worker, `$2` now, `$3` lease, `$4` limit), with
/// `$filter` on the candidates `n`: one statement per filter, each planned on
/// its own. Oldest due first, in the order of the due index, so the scan
/// stops at the limit: ordered by id, every entry the index kept since the
/// last vacuum (each message sent since) was read and sorted on every claim
/// (2,449 pages for 29 messages after a minute of registrations; issue 22).
macro_rules! claim_statement {
    ($filter:literal) => {
        concat!(
            "UPDATE notification_outbox SET claimed_by = $1, claimed_until = $2 + $3, attempts = attempts + 1 \
             WHERE id IN (SELECT n.id FROM notification_outbox n WHERE n.status = 'pending' \
             AND n.next_attempt_at <= $2 AND (n.claimed_until IS NULL OR n.claimed_until <= $2)",
            $filter,
            " ORDER BY n.next_attempt_at, n.id LIMIT $4 ",
            claim_lock!(),
            ") RETURNING id, phone_number, message, attempts, created_at"
        )
    };
}

impl SqlStore<Db> {
    /// Runs a [`claim_statement!`]; `node` is its `$5` when it has one.
    async fn claim(
        &self,
        sql: &'static str,
        worker: &str,
        node: Option<&str>,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let mut query = super::query_as::<NotificationRow>(sql).bind(worker).bind(now).bind(lease_ms).bind(limit);
        if let Some(node) = node {
            query = query.bind(node);
        }
        let mut rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.sort_by_key(|row| row.id);
        Ok(rows.into_iter().map(Notification::from).collect())
    }
}

#[async_trait]
impl NotificationOutbox for SqlStore<Db> {
    async fn claim_notifications(
        &self,
        worker: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        self.claim(claim_statement!(""), worker, None, now, lease_ms, limit).await
    }

    async fn claim_hosted_notifications(
        &self,
        worker: &str,
        node: &ServerName,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError> {
        // The phone's bot lives on `node` (god_register is the one registry),
        // or the phone has none left: someone must still end that message.
        let hosted = claim_statement!(
            " AND (EXISTS (SELECT 1 FROM god_register g WHERE g.phone_number = n.phone_number AND g.tenancy_name = $5) \
             OR NOT EXISTS (SELECT 1 FROM god_register g WHERE g.phone_number = n.phone_number))"
        );
        self.claim(hosted, worker, Some(node.as_str()), now, lease_ms, limit).await
    }

    async fn finish_notification(
        &self,
        id: i64,
        worker: &str,
        outcome: NotificationOutcome,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let (status, next_attempt, error) = match &outcome {
            NotificationOutcome::Sent => ("sent", None, None),
            NotificationOutcome::Retry { retry_at, error } => ("pending", Some(*retry_at), Some(error.as_str())),
            NotificationOutcome::Failed { error } => ("failed", None, Some(error.as_str())),
        };
        let done = super::query(
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

    async fn finish_notifications_sent(&self, ids: &[i64], worker: &str, now: Millis) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids = json_integers(ids);
        let done = super::query(concat!(
            "UPDATE notification_outbox SET status = 'sent', claimed_by = NULL, claimed_until = NULL, sent_at = $2 \
             WHERE claimed_by = $1 AND status = 'pending' AND id",
            in_json_bigints!("$3")
        ))
        .bind(worker)
        .bind(now)
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn pending_notifications(&self) -> Result<i64, StoreError> {
        let count: i64 = super::query_scalar("SELECT COUNT(*) FROM notification_outbox WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }
}
