//! [`ReviewStore`] methods: credentials signed by another WhatsApp account
//! than a bot's pinned one, sealed until an admin decides (invariant 8).

use async_trait::async_trait;
use trekker_domain::BotId;

use super::{BEGIN_WRITE, Db, fetch_bot_in, insert_effects_in, newest_first, ownership, split_page};
use crate::MAX_PAGE;
use crate::cipher::Sealed;
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::ReviewStore;

#[async_trait]
impl ReviewStore for SqlStore<Db> {
    async fn open_review(
        &self,
        review: &NewReview,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<CredentialReview, StoreError> {
        let sealed = self.seal(&review.id, &review.credentials)?;
        let (account_key, adv_timestamp) = ownership(&review.credentials)?;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // One open review per bot: the newer change replaces the older.
        super::query(
            "UPDATE credential_reviews SET status = 'superseded', decided_at = $2 \
             WHERE bot_id = $1 AND status = 'open'",
        )
        .bind(review.bot_id.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row: ReviewRow = super::query_as(concat!(
            "INSERT INTO credential_reviews (id, bot_id, phone_number, account_key, adv_timestamp, \
             credentials_ciphertext, credentials_nonce, credentials_key_id, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'open', $9) RETURNING ",
            review_columns!()
        ))
        .bind(&review.id)
        .bind(review.bot_id.as_str())
        .bind(review.phone.as_str())
        .bind(&account_key[..])
        .bind(adv_timestamp)
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        insert_effects_in(&mut tx, effects, None, now).await?;
        tx.commit().await?;
        row.try_into()
    }

    async fn list_reviews(&self, after: Option<(Millis, String)>, limit: i64) -> Result<ReviewPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let select = concat!("SELECT ", review_columns!(), " FROM credential_reviews");
        let rows: Vec<ReviewRow> = newest_first(select, &[], after, limit)
            .build_query_as()
            .persistent(super::named())
            .fetch_all(&self.pool)
            .await?;
        let reviews = rows.into_iter().map(CredentialReview::try_from).collect::<Result<Vec<_>, _>>()?;
        let (reviews, next) = split_page(reviews, limit, |r| (r.created_at, r.id.clone()));
        Ok(ReviewPage { reviews, next })
    }

    async fn approve_review(&self, id: &str, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row: Option<(String, Vec<u8>, Vec<u8>, String)> = super::query_as(
            "UPDATE credential_reviews SET status = 'approved', decided_at = $2 WHERE id = $1 AND status = 'open' \
             RETURNING bot_id, credentials_ciphertext, credentials_nonce, credentials_key_id",
        )
        .bind(id)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((bot_id, ciphertext, nonce, key_id)) = row else {
            tx.rollback().await?;
            return Err(StoreError::ReviewNotFound);
        };
        let credentials = self.open(id, &Sealed { ciphertext, nonce, key_id })?;
        let bot = BotId::parse(&bot_id).map_err(|_| corrupt("bot id", &bot_id))?;
        let sealed = self.seal(bot.as_str(), &credentials)?;
        let (account_key, adv_timestamp) = ownership(&credentials)?;
        // The admin's decision pins the new account, whatever was pinned.
        let updated = super::query(
            "UPDATE bot_instances SET credentials_ciphertext = $2, credentials_nonce = $3, credentials_key_id = $4, \
             credentials_version = credentials_version + 1, credentials_updated_at = $5, updated_at = $5, \
             invalid_reason = NULL, account_key = $6, adv_timestamp = $7, \
             status = CASE WHEN approval_status = 'approved' THEN 'loading' ELSE status END \
             WHERE id = $1 AND approval_status <> 'rejected'",
        )
        .bind(bot.as_str())
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(now)
        .bind(&account_key[..])
        .bind(adv_timestamp)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await?;
            return Err(StoreError::BotNotFound);
        }
        insert_effects_in(&mut tx, effects, None, now).await?;
        let record = fetch_bot_in(&mut tx, bot.as_str()).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn reject_review(
        &self,
        id: &str,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<CredentialReview, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let row: Option<ReviewRow> = super::query_as(concat!(
            "UPDATE credential_reviews SET status = 'rejected', decided_at = $2, credentials_ciphertext = $3 \
             WHERE id = $1 AND status = 'open' RETURNING ",
            review_columns!()
        ))
        .bind(id)
        .bind(now)
        // The rejected credentials are not kept.
        .bind(&[0u8; 0][..])
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Err(StoreError::ReviewNotFound);
        };
        insert_effects_in(&mut tx, effects, None, now).await?;
        tx.commit().await?;
        row.try_into()
    }
}
