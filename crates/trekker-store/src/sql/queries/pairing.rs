//! [`PairingStore`] methods: pairing requests, their session sealed once paired.

use async_trait::async_trait;
use trekker_domain::{Credentials, PhoneNumber};

use super::Db;
use crate::cipher::Sealed;
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::sql::rows::*;
use crate::traits::PairingStore;

#[async_trait]
impl PairingStore for SqlStore<Db> {
    async fn create_pairing(&self, pairing: &NewPairing) -> Result<(), StoreError> {
        super::query(
            "INSERT INTO pairing_requests (id, phone_number, pairing_code, status, created_at, expires_at, \
             updated_at) VALUES ($1, $2, $3, 'pending', $4, $5, $4)",
        )
        .bind(&pairing.id)
        .bind(pairing.phone.as_str())
        .bind(&pairing.code)
        .bind(pairing.created_at)
        .bind(pairing.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_pairing(&self, id: &str, now: Millis) -> Result<Option<PairingRecord>, StoreError> {
        // One statement: of two pollers racing, only one gets the session.
        let paired: Option<PairingRow> = super::query_as(concat!(
            "DELETE FROM pairing_requests WHERE id = $1 AND status = 'paired' RETURNING ",
            pairing_columns!()
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let taken = paired.is_some();
        let row = match paired {
            Some(row) => Some(row),
            None => {
                super::query_as(concat!("SELECT ", pairing_columns!(), " FROM pairing_requests WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        let Some(row) = row else { return Ok(None) };
        let mut status = PairingStatus::parse(&row.status).ok_or_else(|| corrupt("pairing status", &row.status))?;
        if status == PairingStatus::Pending && row.expires_at <= now {
            status = PairingStatus::Expired;
        }
        // Paired between our DELETE and our SELECT: only the DELETE hands a
        // session out, so this poll still reads pending (the next takes it).
        if status == PairingStatus::Paired && !taken {
            status = PairingStatus::Pending;
        }
        let credentials = match (row.session_ciphertext, row.session_nonce, row.session_key_id) {
            (Some(ciphertext), Some(nonce), Some(key_id)) if taken => {
                Some(self.open(&row.id, &Sealed { ciphertext, nonce, key_id })?)
            }
            _ => None,
        };
        Ok(Some(PairingRecord {
            phone: PhoneNumber::parse(&row.phone_number).map_err(|_| corrupt("phone", &row.phone_number))?,
            id: row.id,
            code: row.pairing_code,
            status,
            credentials,
            message: row.message,
            created_at: row.created_at,
            expires_at: row.expires_at,
        }))
    }

    async fn purge_pairings(&self, before: Millis) -> Result<u64, StoreError> {
        let done = super::query("DELETE FROM pairing_requests WHERE status <> 'paired' AND expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    async fn complete_pairing(&self, id: &str, credentials: &Credentials, now: Millis) -> Result<(), StoreError> {
        let sealed = self.seal(id, credentials)?;
        let done = super::query(
            "UPDATE pairing_requests SET status = 'paired', session_ciphertext = $2, session_nonce = $3, \
             session_key_id = $4, updated_at = $5 WHERE id = $1 AND status = 'pending' AND expires_at > $5",
        )
        .bind(id)
        .bind(&sealed.ciphertext)
        .bind(&sealed.nonce)
        .bind(&sealed.key_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::PairingNotFound);
        }
        Ok(())
    }

    async fn fail_pairing(&self, id: &str, message: &str, now: Millis) -> Result<(), StoreError> {
        let done = super::query(
            "UPDATE pairing_requests SET status = 'failed', message = $2, updated_at = $3 \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(message)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::PairingNotFound);
        }
        Ok(())
    }
}
