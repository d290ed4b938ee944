//! [`DeviceStateStore`] methods: a bot's WhatsApp device state, key by
//! key, sealed, written only by the lease that runs the bot (invariant 9).
//!
//! A row's key is stored as a keyed hash (HMAC-SHA256 under a subkey of the
//! credentials key, over bot, space and key), so contacts' addresses cannot
//! be read off the table; the key itself travels inside the sealed value,
//! whose associated data binds it to the bot, the credentials version, the
//! space and the hashed key (a value copied onto another row does not open).

use async_trait::async_trait;
use trekker_domain::BotId;

use super::{BEGIN_WRITE, Db, lock_if_run_by};
use crate::cipher::Sealed;
use crate::error::StoreError;
use crate::model::*;
use crate::sql::SqlStore;
use crate::traits::DeviceStateStore;

/// What the key hashes are derived from ([`crate::CredentialCipher::subkey`]).
const KEY_HASH_PURPOSE: &str = "trekker device-state key names v1";

#[derive(sqlx::FromRow)]
struct ValueRow {
    key_hash: String,
    sealed_value: Vec<u8>,
    value_nonce: Vec<u8>,
    value_key_id: String,
}

impl SqlStore<Db> {
    /// The stored name of `key` in `space` of bot `id`.
    fn device_key_hash(&self, id: &BotId, space: &str, key: &str) -> String {
        let secret = self.cipher.subkey(KEY_HASH_PURPOSE);
        let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let mut context = ring::hmac::Context::with_key(&mac);
        // Lengths first: ("ab","c") and ("a","bc") must not collide.
        for part in [id.as_str(), space, key] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part.as_bytes());
        }
        context.sign().as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn seal_device_value(
        &self,
        id: &BotId,
        version: i64,
        space: &str,
        key: &str,
        value: &[u8],
    ) -> Result<(String, Sealed), StoreError> {
        let key_hash = self.device_key_hash(id, space, key);
        let key_len =
            u32::try_from(key.len()).map_err(|_| StoreError::InvalidInput("device-state key too long".into()))?;
        let mut plain = Vec::with_capacity(4 + key.len() + value.len());
        plain.extend_from_slice(&key_len.to_be_bytes());
        plain.extend_from_slice(key.as_bytes());
        plain.extend_from_slice(value);
        let sealed = self.cipher.seal(&device_row_id(id, version, space, &key_hash), &plain)?;
        Ok((key_hash, sealed))
    }

    /// The key and value of a stored row.
    fn open_device_value(
        &self,
        id: &BotId,
        version: i64,
        space: &str,
        row: ValueRow,
    ) -> Result<(String, Vec<u8>), StoreError> {
        let sealed = Sealed { ciphertext: row.sealed_value, nonce: row.value_nonce, key_id: row.value_key_id };
        let plain = self.cipher.open(&device_row_id(id, version, space, &row.key_hash), &sealed)?;
        let corrupt = || StoreError::Corrupt(format!("device state of bot {} in `{space}`", id.as_str()));
        let (len, rest) = plain.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let len = usize::try_from(u32::from_be_bytes(*len)).map_err(|_| corrupt())?;
        if rest.len() < len {
            return Err(corrupt());
        }
        let (key, value) = rest.split_at(len);
        let key = String::from_utf8(key.to_vec()).map_err(|_| corrupt())?;
        Ok((key, value.to_vec()))
    }
}

/// A [`DeviceWrite`] ready to run: its key hashed, its value sealed.
enum Planned<'a> {
    Put { space: &'a str, key_hash: String, sealed: Sealed },
    Delete { space: &'a str, key_hash: String },
    Clear { space: &'a str },
    Reset,
}

/// What a sealed value is bound to.
fn device_row_id(id: &BotId, version: i64, space: &str, key_hash: &str) -> String {
    format!("{}/device-state/v{version}/{space}/{key_hash}", id.as_str())
}

#[async_trait]
impl DeviceStateStore for SqlStore<Db> {
    async fn device_state_get(
        &self,
        id: &BotId,
        version: i64,
        space: &str,
        keys: &[String],
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Hashes are hex digits: quoting them is all JSON needs.
        let hashes: Vec<String> =
            keys.iter().map(|key| format!("\"{}\"", self.device_key_hash(id, space, key))).collect();
        let hashes = format!("[{}]", hashes.join(","));
        let rows: Vec<ValueRow> = super::query_as(concat!(
            "SELECT key_hash, sealed_value, value_nonce, value_key_id FROM bot_device_state \
             WHERE bot_id = $1 AND space = $2 AND credentials_version = $3 AND key_hash IN ",
            json_texts!("$4")
        ))
        .bind(id.as_str())
        .bind(space)
        .bind(version)
        .bind(hashes)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|row| self.open_device_value(id, version, space, row)).collect()
    }

    async fn device_state_scan(
        &self,
        id: &BotId,
        version: i64,
        space: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rows: Vec<ValueRow> = super::query_as(
            "SELECT key_hash, sealed_value, value_nonce, value_key_id FROM bot_device_state \
             WHERE bot_id = $1 AND space = $2 AND credentials_version = $3",
        )
        .bind(id.as_str())
        .bind(space)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|row| self.open_device_value(id, version, space, row)).collect()
    }

    async fn write_device_state(
        &self,
        id: &BotId,
        lease: &NodeLease,
        version: i64,
        writes: &[DeviceWrite],
        now: Millis,
    ) -> Result<bool, StoreError> {
        // Sealed and hashed before the transaction: no crypto while rows
        // are locked.
        let mut planned = Vec::with_capacity(writes.len());
        for write in writes {
            planned.push(match write {
                DeviceWrite::Put { space, key, value } => {
                    let (key_hash, sealed) = self.seal_device_value(id, version, space, key, value)?;
                    Planned::Put { space, key_hash, sealed }
                }
                DeviceWrite::Delete { space, key } => {
                    Planned::Delete { space, key_hash: self.device_key_hash(id, space, key) }
                }
                DeviceWrite::Clear { space } => Planned::Clear { space },
                DeviceWrite::Reset => Planned::Reset,
            });
        }
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // The fence, holding the bot row until commit: a new runner cannot
        // take the bot between the check and the writes.
        if !lock_if_run_by(&mut tx, id, lease, version, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        for write in planned {
            match write {
                Planned::Put { space, key_hash, sealed } => {
                    super::query(
                        "INSERT INTO bot_device_state (bot_id, space, key_hash, credentials_version, sealed_value, \
                         value_nonce, value_key_id) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (bot_id, space, key_hash) DO UPDATE SET \
                         credentials_version = excluded.credentials_version, sealed_value = excluded.sealed_value, \
                         value_nonce = excluded.value_nonce, value_key_id = excluded.value_key_id",
                    )
                    .bind(id.as_str())
                    .bind(space)
                    .bind(key_hash)
                    .bind(version)
                    .bind(sealed.ciphertext)
                    .bind(sealed.nonce)
                    .bind(sealed.key_id)
                    .execute(&mut *tx)
                    .await?;
                }
                Planned::Delete { space, key_hash } => {
                    super::query("DELETE FROM bot_device_state WHERE bot_id = $1 AND space = $2 AND key_hash = $3")
                        .bind(id.as_str())
                        .bind(space)
                        .bind(key_hash)
                        .execute(&mut *tx)
                        .await?;
                }
                Planned::Clear { space } => {
                    super::query("DELETE FROM bot_device_state WHERE bot_id = $1 AND space = $2")
                        .bind(id.as_str())
                        .bind(space)
                        .execute(&mut *tx)
                        .await?;
                }
                Planned::Reset => {
                    super::query("DELETE FROM bot_device_state WHERE bot_id = $1")
                        .bind(id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn device_state_info(&self, id: &BotId) -> Result<Option<DeviceStateInfo>, StoreError> {
        let (keys, bytes): (i64, Option<i64>) = super::query_as(
            "SELECT COUNT(*), CAST(SUM(LENGTH(s.sealed_value)) AS BIGINT) FROM bot_device_state s \
             JOIN bot_instances b ON b.id = s.bot_id \
             WHERE s.bot_id = $1 AND s.credentials_version = b.credentials_version",
        )
        .bind(id.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok((keys > 0).then(|| DeviceStateInfo { keys, bytes: bytes.unwrap_or(0) }))
    }

    async fn send_hold(&self, id: &BotId) -> Result<Option<(Millis, String)>, StoreError> {
        let row: Option<(Option<i64>, Option<String>)> =
            super::query_as("SELECT send_hold_until, send_hold_reason FROM bot_instances WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(until, reason)| until.zip(reason)))
    }

    async fn hold_sends(
        &self,
        id: &BotId,
        lease: &NodeLease,
        version: i64,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        if !lock_if_run_by(&mut tx, id, lease, version, now).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        super::query(
            "UPDATE bot_instances SET send_hold_until = $2, send_hold_reason = $3 \
             WHERE id = $1 AND (send_hold_until IS NULL OR send_hold_until < $2)",
        )
        .bind(id.as_str())
        .bind(until)
        .bind(reason)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
