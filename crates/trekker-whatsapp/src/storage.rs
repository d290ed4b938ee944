//! whatsapp-rust's storage backend over Trekker's database: every method of
//! its `Backend` (Signal identities, sessions, pre-keys, sender keys,
//! app-state keys and versions, LID mappings, device lists, tokens, sent
//! messages, message secrets, the device itself) kept in
//! [`DeviceStateStore`], sealed, per bot and credentials version, and
//! written only while this node's lease runs the bot (invariant 9).
//!
//! Each kind of record lives in its own space of keys; the values are the
//! library's own types, as JSON where they are structured. Where a method
//! reads before it writes (merges, "take", expiry sweeps), the read and the
//! write run under one lock per bot: the runner is the only writer (the
//! fence), so that lock is all the atomicity these need. Semantics follow
//! whatsapp-rust's `InMemoryBackend`; `tests/storage.rs` runs one
//! conformance suite against it, SQLite and PostgreSQL.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use trekker_domain::BotId;
use trekker_domain::time::Clock;
use trekker_store::{DeviceStateStore, DeviceWrite, NodeLease};
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::error::{Result, StoreError};
use whatsapp_rust::wacore::store::traits::*;

use crate::hex::encode as hex;

/// The spaces of keys, one per kind of record.
mod space {
    pub const IDENTITY: &str = "identity";
    pub const SESSION: &str = "session";
    pub const PREKEY: &str = "prekey";
    pub const SIGNED_PREKEY: &str = "signed-prekey";
    pub const SENDER_KEY: &str = "sender-key";
    pub const SYNC_KEY: &str = "sync-key";
    pub const SYNC_VERSION: &str = "sync-version";
    pub const SENDER_KEY_DEVICES: &str = "sender-key-devices";
    pub const LID: &str = "lid";
    pub const PN: &str = "pn";
    pub const BASE_KEY: &str = "base-key";
    pub const DEVICE_LIST: &str = "device-list";
    pub const GROUP_METADATA: &str = "group-metadata";
    pub const TC_TOKEN: &str = "tc-token";
    pub const SENT_MESSAGE: &str = "sent-message";
    pub const PENDING_INBOUND: &str = "pending-inbound";
    pub const MSG_SECRET: &str = "msg-secret";
    /// Single values: the device, the latest app-state key id.
    pub const META: &str = "meta";

    /// App-state mutation MACs of one collection (cleared together).
    pub fn mutation_macs(collection: &str) -> String {
        format!("mutation-mac/{collection}")
    }
}

const DEVICE_KEY: &str = "device";
const LATEST_SYNC_KEY: &str = "latest-sync-key-id";

/// A write refused because this node no longer runs the bot (another node
/// took it over, the lease ran out, or new credentials arrived).
#[derive(Debug, thiserror::Error)]
#[error("this node no longer runs the bot; its WhatsApp state was not written")]
pub struct NotTheRunner;

/// One bot's WhatsApp storage, for the run of `lease` on credentials
/// `version`.
pub struct StoredDevice {
    store: Arc<dyn DeviceStateStore>,
    clock: Arc<dyn Clock>,
    bot: BotId,
    lease: NodeLease,
    version: i64,
    /// Read-then-write methods of this bot run one at a time.
    read_modify_write: tokio::sync::Mutex<()>,
    /// Set at the first refused write; the driver stops the bot.
    fenced_out: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for StoredDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredDevice").field("bot", &self.bot).field("version", &self.version).finish_non_exhaustive()
    }
}

fn database(error: trekker_store::StoreError) -> StoreError {
    StoreError::Database(Box::new(error))
}

fn serialization(error: serde_json::Error) -> StoreError {
    StoreError::Serialization(Box::new(error))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(serialization)
}

fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(serialization)
}

/// One key out of several parts, unambiguous (each part length-prefixed).
fn compound(parts: &[&str]) -> String {
    parts.iter().map(|part| format!("{}:{part}", part.len())).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    crate::hex::decode(text).ok_or_else(|| StoreError::Validation(format!("stored key `{text}` is not hex")))
}

/// A value stamped with a time (unix seconds), for expiry sweeps.
fn stamped(at: i64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&at.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn unstamp(value: &[u8]) -> Result<(i64, &[u8])> {
    let (at, payload) =
        value.split_first_chunk::<8>().ok_or_else(|| StoreError::Validation("stamped value too short".into()))?;
    Ok((i64::from_be_bytes(*at), payload))
}

/// A pre-key record with its `uploaded` flag in front.
fn prekey_value(record: &[u8], uploaded: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + record.len());
    out.push(u8::from(uploaded));
    out.extend_from_slice(record);
    out
}

fn prekey_record(value: &[u8]) -> Result<Bytes> {
    value
        .split_first()
        .map(|(_, record)| Bytes::copy_from_slice(record))
        .ok_or_else(|| StoreError::Validation("empty pre-key value".into()))
}

/// A message secret with its expiry and parent-message time.
#[derive(serde::Serialize, serde::Deserialize)]
struct SecretRow {
    secret: Vec<u8>,
    expires_at: i64,
    message_ts: i64,
}

fn put(space: &str, key: impl Into<String>, value: Vec<u8>) -> DeviceWrite {
    DeviceWrite::Put { space: space.to_owned(), key: key.into(), value }
}

fn delete(space: &str, key: impl Into<String>) -> DeviceWrite {
    DeviceWrite::Delete { space: space.to_owned(), key: key.into() }
}

impl StoredDevice {
    pub fn new(
        store: Arc<dyn DeviceStateStore>,
        clock: Arc<dyn Clock>,
        bot: BotId,
        lease: NodeLease,
        version: i64,
    ) -> Self {
        Self {
            store,
            clock,
            bot,
            lease,
            version,
            read_modify_write: tokio::sync::Mutex::new(()),
            fenced_out: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Whether a write was refused: this node no longer runs the bot.
    pub fn fenced_out(&self) -> bool {
        *self.fenced_out.borrow()
    }

    /// Resolves at the first refused write.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut fenced = self.fenced_out.subscribe();
        async move {
            if fenced.wait_for(|lost| *lost).await.is_err() {
                // The storage is gone with its bot: nothing more to lose.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The hold the bot's sends are under, `(until, reason)`, as a run
    /// saved it: kept on the bot, not in this state, so that neither a
    /// restart, a move nor a re-pair lifts a day's timelock on the account.
    pub async fn send_hold(&self) -> Result<Option<(i64, String)>> {
        self.store.send_hold(&self.bot).await.map_err(database)
    }

    /// Keeps the hold the bot's sends are now under (fenced like every write).
    pub async fn save_send_hold(&self, until: i64, reason: &str) -> Result<()> {
        let now = self.clock.now_ms();
        match self.store.hold_sends(&self.bot, &self.lease, self.version, until, reason, now).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.fenced_out.send_replace(true);
                Err(StoreError::Database(Box::new(NotTheRunner)))
            }
            Err(error) => Err(database(error)),
        }
    }

    /// Forgets every record of the bot (all credentials versions), then
    /// saves `device`: the first start of new credentials.
    pub async fn import(&self, device: &Device) -> Result<()> {
        self.write(vec![DeviceWrite::Reset, put(space::META, DEVICE_KEY, to_json(device)?)]).await
    }

    async fn write(&self, writes: Vec<DeviceWrite>) -> Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        match self.store.write_device_state(&self.bot, &self.lease, self.version, &writes, now).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.fenced_out.send_replace(true);
                Err(StoreError::Database(Box::new(NotTheRunner)))
            }
            Err(error) => Err(database(error)),
        }
    }

    async fn get(&self, space: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let found =
            self.store.device_state_get(&self.bot, self.version, space, &[key.to_owned()]).await.map_err(database)?;
        Ok(found.into_iter().next().map(|(_, value)| value))
    }

    async fn get_many(&self, space: &str, keys: Vec<String>) -> Result<HashMap<String, Vec<u8>>> {
        let found = self.store.device_state_get(&self.bot, self.version, space, &keys).await.map_err(database)?;
        Ok(found.into_iter().collect())
    }

    async fn scan(&self, space: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.store.device_state_scan(&self.bot, self.version, space).await.map_err(database)
    }

    /// Deletes the rows of `space` whose value `expired` says so; how many.
    async fn sweep(&self, space: &str, expired: impl Fn(&[u8]) -> Result<bool>) -> Result<u32> {
        let _guard = self.read_modify_write.lock().await;
        let mut writes = Vec::new();
        for (key, value) in self.scan(space).await? {
            if expired(&value)? {
                writes.push(delete(space, key));
            }
        }
        let count = u32::try_from(writes.len()).unwrap_or(u32::MAX);
        self.write(writes).await?;
        Ok(count)
    }
}

#[async_trait]
impl SignalStore for StoredDevice {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        self.write(vec![put(space::IDENTITY, address, key.to_vec())]).await
    }

    async fn put_identities_batch(&self, identities: &[(Arc<str>, [u8; 32])]) -> Result<()> {
        self.write(identities.iter().map(|(address, key)| put(space::IDENTITY, &**address, key.to_vec())).collect())
            .await
    }

    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        match self.get(space::IDENTITY, address).await? {
            None => Ok(None),
            Some(bytes) => {
                bytes.try_into().map(Some).map_err(|_| StoreError::Validation("stored identity is not 32 bytes".into()))
            }
        }
    }

    async fn delete_identity(&self, address: &str) -> Result<()> {
        self.write(vec![delete(space::IDENTITY, address)]).await
    }

    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        Ok(self.get(space::SESSION, address).await?.map(Bytes::from))
    }

    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        self.write(vec![put(space::SESSION, address, session.to_vec())]).await
    }

    async fn put_sessions_batch(&self, sessions: &[(Arc<str>, Bytes)]) -> Result<()> {
        self.write(
            sessions.iter().map(|(address, session)| put(space::SESSION, &**address, session.to_vec())).collect(),
        )
        .await
    }

    async fn delete_session(&self, address: &str) -> Result<()> {
        self.write(vec![delete(space::SESSION, address)]).await
    }

    async fn has_signal_state_for_user(&self, user: &str) -> Result<bool> {
        let of_user = |address: &str| {
            address.strip_prefix(user).is_some_and(|rest| rest.starts_with('@') || rest.starts_with(':'))
        };
        for space in [space::SESSION, space::IDENTITY] {
            if self.scan(space).await?.iter().any(|(address, _)| of_user(address)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        self.write(vec![put(space::PREKEY, id.to_string(), prekey_value(record, uploaded))]).await
    }

    async fn store_prekeys_batch(&self, keys: &[(u32, Bytes)], uploaded: bool) -> Result<()> {
        self.write(
            keys.iter()
                .map(|(id, record)| put(space::PREKEY, id.to_string(), prekey_value(record, uploaded)))
                .collect(),
        )
        .await
    }

    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        self.get(space::PREKEY, &id.to_string()).await?.map(|value| prekey_record(&value)).transpose()
    }

    async fn load_prekeys_batch(&self, ids: &[u32]) -> Result<Vec<(u32, Bytes)>> {
        let found = self.get_many(space::PREKEY, ids.iter().map(u32::to_string).collect()).await?;
        let mut out = Vec::with_capacity(found.len());
        for id in ids {
            if let Some(value) = found.get(&id.to_string()) {
                out.push((*id, prekey_record(value)?));
            }
        }
        Ok(out)
    }

    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        // Only keys still there: a removed (consumed) pre-key stays removed.
        let _guard = self.read_modify_write.lock().await;
        let found = self.get_many(space::PREKEY, ids.iter().map(u32::to_string).collect()).await?;
        let writes = found
            .into_iter()
            .filter(|(_, value)| value.first() == Some(&0))
            .map(|(key, mut value)| {
                value[0] = 1;
                put(space::PREKEY, key, value)
            })
            .collect();
        self.write(writes).await
    }

    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.write(vec![delete(space::PREKEY, id.to_string())]).await
    }

    async fn get_max_prekey_id(&self) -> Result<u32> {
        Ok(self.scan(space::PREKEY).await?.iter().filter_map(|(id, _)| id.parse::<u32>().ok()).max().unwrap_or(0))
    }

    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        self.write(vec![put(space::SIGNED_PREKEY, id.to_string(), record.to_vec())]).await
    }

    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.get(space::SIGNED_PREKEY, &id.to_string()).await
    }

    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut out = Vec::new();
        for (id, record) in self.scan(space::SIGNED_PREKEY).await? {
            let id = id.parse().map_err(|_| StoreError::Validation(format!("signed pre-key id `{id}`")))?;
            out.push((id, record));
        }
        Ok(out)
    }

    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.write(vec![delete(space::SIGNED_PREKEY, id.to_string())]).await
    }

    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        self.write(vec![put(space::SENDER_KEY, address, record.to_vec())]).await
    }

    async fn put_sender_keys_batch(&self, sender_keys: &[(Arc<str>, Bytes)]) -> Result<()> {
        self.write(
            sender_keys.iter().map(|(address, record)| put(space::SENDER_KEY, &**address, record.to_vec())).collect(),
        )
        .await
    }

    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        self.get(space::SENDER_KEY, address).await
    }

    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.write(vec![delete(space::SENDER_KEY, address)]).await
    }
}

#[async_trait]
impl AppSyncStore for StoredDevice {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        self.get(space::SYNC_KEY, &hex(key_id)).await?.map(|value| from_json(&value)).transpose()
    }

    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        self.write(vec![
            put(space::SYNC_KEY, hex(key_id), to_json(&key)?),
            put(space::META, LATEST_SYNC_KEY, key_id.to_vec()),
        ])
        .await
    }

    async fn get_version(&self, name: &str) -> Result<HashState> {
        Ok(self.get(space::SYNC_VERSION, name).await?.map(|value| from_json(&value)).transpose()?.unwrap_or_default())
    }

    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        self.write(vec![put(space::SYNC_VERSION, name, to_json(&state)?)]).await
    }

    async fn put_mutation_macs(&self, name: &str, _version: u64, mutations: &[AppStateMutationMAC]) -> Result<()> {
        let space = space::mutation_macs(name);
        self.write(mutations.iter().map(|m| put(&space, hex(&m.index_mac), m.value_mac.clone())).collect()).await
    }

    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get(&space::mutation_macs(name), &hex(index_mac)).await
    }

    async fn get_mutation_macs(&self, name: &str, index_macs: &[[u8; 32]]) -> Result<HashMap<[u8; 32], Vec<u8>>> {
        let found = self.get_many(&space::mutation_macs(name), index_macs.iter().map(|mac| hex(mac)).collect()).await?;
        let mut out = HashMap::with_capacity(found.len());
        for (key, value) in found {
            let index: [u8; 32] =
                unhex(&key)?.try_into().map_err(|_| StoreError::Validation("index MAC is not 32 bytes".into()))?;
            out.insert(index, value);
        }
        Ok(out)
    }

    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        let space = space::mutation_macs(name);
        self.write(index_macs.iter().map(|mac| delete(&space, hex(mac))).collect()).await
    }

    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        self.write(vec![DeviceWrite::Clear { space: space::mutation_macs(name) }]).await
    }

    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        self.get(space::META, LATEST_SYNC_KEY).await
    }
}

#[async_trait]
impl ProtocolStore for StoredDevice {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        let devices: HashMap<String, bool> = match self.get(space::SENDER_KEY_DEVICES, group_jid).await? {
            Some(value) => from_json(&value)?,
            None => HashMap::new(),
        };
        Ok(devices.into_iter().collect())
    }

    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        let _guard = self.read_modify_write.lock().await;
        let mut devices: HashMap<String, bool> = match self.get(space::SENDER_KEY_DEVICES, group_jid).await? {
            Some(value) => from_json(&value)?,
            None => HashMap::new(),
        };
        for (device, has_key) in entries {
            devices.insert((*device).to_owned(), *has_key);
        }
        self.write(vec![put(space::SENDER_KEY_DEVICES, group_jid, to_json(&devices)?)]).await
    }

    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        self.write(vec![delete(space::SENDER_KEY_DEVICES, group_jid)]).await
    }

    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        if device_jids.is_empty() {
            return Ok(());
        }
        let _guard = self.read_modify_write.lock().await;
        let mut writes = Vec::new();
        for (group, value) in self.scan(space::SENDER_KEY_DEVICES).await? {
            let mut devices: HashMap<String, bool> = from_json(&value)?;
            let before = devices.len();
            devices.retain(|device, _| !device_jids.contains(&device.as_str()));
            if devices.len() != before {
                writes.push(put(space::SENDER_KEY_DEVICES, group, to_json(&devices)?));
            }
        }
        self.write(writes).await
    }

    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        self.write(vec![DeviceWrite::Clear { space: space::SENDER_KEY_DEVICES.to_owned() }]).await
    }

    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        self.get(space::LID, lid).await?.map(|value| from_json(&value)).transpose()
    }

    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        match self.get(space::PN, phone).await? {
            Some(lid) => self.get_lid_mapping(&String::from_utf8_lossy(&lid)).await,
            None => Ok(None),
        }
    }

    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        let _guard = self.read_modify_write.lock().await;
        let mut writes = Vec::with_capacity(3);
        // The phone the LID pointed at before no longer leads to it.
        if let Some(old) = self.get_lid_mapping(&entry.lid).await?
            && old.phone_number != entry.phone_number
        {
            writes.push(delete(space::PN, old.phone_number));
        }
        writes.push(put(space::PN, entry.phone_number.as_str(), entry.lid.as_bytes().to_vec()));
        writes.push(put(space::LID, entry.lid.as_str(), to_json(entry)?));
        self.write(writes).await
    }

    async fn put_lid_mappings(&self, entries: &[LidPnMappingEntry]) -> Result<()> {
        for entry in entries {
            self.put_lid_mapping(entry).await?;
        }
        Ok(())
    }

    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        self.scan(space::LID).await?.iter().map(|(_, value)| from_json(value)).collect()
    }

    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        self.write(vec![put(space::BASE_KEY, compound(&[address, message_id]), base_key.to_vec())]).await
    }

    async fn has_same_base_key(&self, address: &str, message_id: &str, current_base_key: &[u8]) -> Result<bool> {
        let stored = self.get(space::BASE_KEY, &compound(&[address, message_id])).await?;
        Ok(stored.is_some_and(|stored| stored == current_base_key))
    }

    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        self.write(vec![delete(space::BASE_KEY, compound(&[address, message_id]))]).await
    }

    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.write(vec![put(space::DEVICE_LIST, record.user.as_str(), to_json(&record)?)]).await
    }

    async fn update_device_lists(&self, records: Vec<DeviceListRecord>) -> Result<()> {
        let mut writes = Vec::with_capacity(records.len());
        for record in &records {
            writes.push(put(space::DEVICE_LIST, record.user.as_str(), to_json(record)?));
        }
        self.write(writes).await
    }

    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        self.get(space::DEVICE_LIST, user).await?.map(|value| from_json(&value)).transpose()
    }

    async fn delete_devices(&self, user: &str) -> Result<()> {
        self.write(vec![delete(space::DEVICE_LIST, user)]).await
    }

    async fn get_group_metadata(&self, group_jid: &str) -> Result<Option<Vec<u8>>> {
        self.get(space::GROUP_METADATA, group_jid).await
    }

    async fn put_group_metadata(&self, group_jid: &str, blob: &[u8]) -> Result<()> {
        self.write(vec![put(space::GROUP_METADATA, group_jid, blob.to_vec())]).await
    }

    async fn delete_group_metadata(&self, group_jid: &str) -> Result<()> {
        self.write(vec![delete(space::GROUP_METADATA, group_jid)]).await
    }

    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        self.get(space::TC_TOKEN, jid).await?.map(|value| from_json(&value)).transpose()
    }

    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        self.write(vec![put(space::TC_TOKEN, jid, to_json(entry)?)]).await
    }

    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        self.write(vec![delete(space::TC_TOKEN, jid)]).await
    }

    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        Ok(self.scan(space::TC_TOKEN).await?.into_iter().map(|(jid, _)| jid).collect())
    }

    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        // A row goes only when both its windows are stale.
        self.sweep(space::TC_TOKEN, |value| {
            let entry: TcTokenEntry = from_json(value)?;
            let token_live = !entry.token.is_empty() && entry.token_timestamp >= token_cutoff;
            let sender_live = entry.sender_timestamp.is_some_and(|at| at >= sender_cutoff);
            Ok(!(token_live || sender_live))
        })
        .await
    }

    async fn touch_tc_token_sender_timestamp(&self, jid: &str, sender_timestamp: i64) -> Result<()> {
        let _guard = self.read_modify_write.lock().await;
        let entry = match self.get_tc_token(jid).await? {
            Some(existing) => TcTokenEntry {
                sender_timestamp: Some(existing.sender_timestamp.map_or(sender_timestamp, |e| e.max(sender_timestamp))),
                ..existing
            },
            None => TcTokenEntry {
                token: Vec::new(),
                token_timestamp: sender_timestamp,
                sender_timestamp: Some(sender_timestamp),
            },
        };
        self.put_tc_token(jid, &entry).await
    }

    async fn store_received_tc_token(&self, jid: &str, token: &[u8], token_timestamp: i64) -> Result<()> {
        let _guard = self.read_modify_write.lock().await;
        let existing = self.get_tc_token(jid).await?;
        // Newer wins; a placeholder never blocks the first real token.
        if let Some(existing) = &existing
            && !existing.token.is_empty()
            && token_timestamp < existing.token_timestamp
        {
            return Ok(());
        }
        let sender_timestamp = existing.and_then(|existing| existing.sender_timestamp);
        self.put_tc_token(jid, &TcTokenEntry { token: token.to_vec(), token_timestamp, sender_timestamp }).await
    }

    async fn store_sent_message(&self, chat_jid: &str, message_id: &str, payload: &[u8]) -> Result<()> {
        let now = self.clock.now_ms() / 1000;
        self.write(vec![put(space::SENT_MESSAGE, compound(&[chat_jid, message_id]), stamped(now, payload))]).await
    }

    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        let _guard = self.read_modify_write.lock().await;
        let key = compound(&[chat_jid, message_id]);
        let Some(value) = self.get(space::SENT_MESSAGE, &key).await? else { return Ok(None) };
        self.write(vec![delete(space::SENT_MESSAGE, key)]).await?;
        Ok(Some(unstamp(&value)?.1.to_vec()))
    }

    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.sweep(space::SENT_MESSAGE, |value| Ok(unstamp(value)?.0 < cutoff_timestamp)).await
    }

    async fn store_pending_inbound(&self, chat: &str, sender: &str, id: &str, message: &[u8]) -> Result<()> {
        let now = self.clock.now_ms() / 1000;
        self.write(vec![put(space::PENDING_INBOUND, compound(&[chat, sender, id]), stamped(now, message))]).await
    }

    async fn get_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<Option<Vec<u8>>> {
        match self.get(space::PENDING_INBOUND, &compound(&[chat, sender, id])).await? {
            Some(value) => Ok(Some(unstamp(&value)?.1.to_vec())),
            None => Ok(None),
        }
    }

    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.write(vec![delete(space::PENDING_INBOUND, compound(&[chat, sender, id]))]).await
    }

    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        self.sweep(space::PENDING_INBOUND, |value| Ok(unstamp(value)?.0 < cutoff_timestamp)).await
    }

    async fn store_pending_inbound_batch(&self, rows: &[PendingInboundRow<'_>]) -> Result<()> {
        let now = self.clock.now_ms() / 1000;
        self.write(
            rows.iter()
                .map(|row| {
                    put(space::PENDING_INBOUND, compound(&[row.chat, row.sender, row.id]), stamped(now, row.message))
                })
                .collect(),
        )
        .await
    }

    async fn delete_pending_inbound_batch(&self, keys: &[PendingInboundKey<'_>]) -> Result<()> {
        self.write(
            keys.iter().map(|key| delete(space::PENDING_INBOUND, compound(&[key.chat, key.sender, key.id]))).collect(),
        )
        .await
    }
}

#[async_trait]
impl MsgSecretStore for StoredDevice {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        let stored = entries.len();
        let _guard = self.read_modify_write.lock().await;
        let keys: Vec<String> = entries.iter().map(|e| compound(&[&e.chat, &e.sender, &e.msg_id])).collect();
        let existing = self.get_many(space::MSG_SECRET, keys.clone()).await?;
        // Later entries of the batch merge with earlier ones, as stored rows do.
        let mut rows: HashMap<String, SecretRow> = HashMap::new();
        for (key, value) in existing {
            rows.insert(key, from_json(&value)?);
        }
        for (key, entry) in keys.into_iter().zip(entries) {
            let row = match rows.remove(&key) {
                Some(old) => SecretRow {
                    secret: entry.secret.to_vec(),
                    expires_at: merge_msg_secret_expiry(old.expires_at, entry.expires_at),
                    message_ts: merge_msg_secret_message_ts(old.message_ts, entry.message_ts),
                },
                None => SecretRow {
                    secret: entry.secret.to_vec(),
                    expires_at: entry.expires_at,
                    message_ts: entry.message_ts,
                },
            };
            rows.insert(key, row);
        }
        let mut writes = Vec::with_capacity(rows.len());
        for (key, row) in rows {
            writes.push(put(space::MSG_SECRET, key, to_json(&row)?));
        }
        self.write(writes).await?;
        Ok(stored)
    }

    async fn get_msg_secret(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_msg_secret_with_ts(chat, sender, msg_id).await?.map(|(secret, _)| secret))
    }

    async fn get_msg_secret_with_ts(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<(Vec<u8>, i64)>> {
        match self.get(space::MSG_SECRET, &compound(&[chat, sender, msg_id])).await? {
            Some(value) => {
                let row: SecretRow = from_json(&value)?;
                Ok(Some((row.secret, row.message_ts)))
            }
            None => Ok(None),
        }
    }

    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        // No deadline (0) is never; otherwise gone once the cutoff reaches it.
        self.sweep(space::MSG_SECRET, |value| {
            let row: SecretRow = from_json(value)?;
            Ok(row.expires_at != 0 && row.expires_at <= cutoff_timestamp)
        })
        .await
    }
}

#[async_trait]
impl DeviceStore for StoredDevice {
    async fn save(&self, device: &Device) -> Result<()> {
        self.write(vec![put(space::META, DEVICE_KEY, to_json(device)?)]).await
    }

    async fn load(&self) -> Result<Option<Device>> {
        self.get(space::META, DEVICE_KEY).await?.map(|value| from_json(&value)).transpose()
    }

    async fn exists(&self) -> Result<bool> {
        Ok(self.get(space::META, DEVICE_KEY).await?.is_some())
    }

    async fn create(&self) -> Result<i32> {
        // One device per bot: its id is always 1.
        let _guard = self.read_modify_write.lock().await;
        if !self.exists().await? {
            self.save(&Device::new()).await?;
        }
        Ok(1)
    }
}
