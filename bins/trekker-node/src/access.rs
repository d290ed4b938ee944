//! Who calls the admin API: the bootstrap token (ADMIN_TOKEN: role admin,
//! actor `bootstrap`) and the API keys in the database (issue 24).
//!
//! A key is found by the id its token names (no scan), through a cache of
//! at most [`KEY_CACHE`]: a key revoked on any node is refused by every
//! node within it, and at once by the node that revoked it (it forgets the
//! key). Its use is counted in memory and written in batches by
//! [`ApiKeys::record_use`] (the node calls it every [`USE_FLUSH_EVERY`]),
//! never one write per request. Without ADMIN_TOKEN the admin API stays
//! disabled on the node, keys included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use trekker_domain::access::{Actor, KeyToken, Role};
use trekker_domain::time::Clock;
use trekker_store::{ApiKey, ApiKeyStore, Millis, NewActivity, StoreError};

/// How long a node trusts what it read of a key.
pub const KEY_CACHE: Duration = Duration::from_secs(1);
/// How often a node writes when its keys were last used.
pub const USE_FLUSH_EVERY: Duration = Duration::from_secs(30);
/// Keys a node keeps in its cache at most (past it, the cache starts over:
/// a flood of made-up ids costs lookups, never memory).
const CACHED_KEYS: usize = 4096;
/// The actor name of the bootstrap token.
pub const BOOTSTRAP: &str = "bootstrap";

/// An authenticated caller of the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key (its id and name), or `bootstrap`: the audit trail's actor.
    pub actor: Actor,
    pub role: Role,
}

/// Why a caller is not let in.
#[derive(Debug)]
pub enum Refusal {
    /// ADMIN_TOKEN is not set on this node.
    Disabled,
    /// No token, or one that is not a live key's.
    Unauthenticated,
    /// The keys could not be read.
    Unavailable(StoreError),
}

/// The admin API's callers (see the module header).
pub struct ApiKeys {
    store: Arc<dyn ApiKeyStore>,
    clock: Arc<dyn Clock>,
    bootstrap: Option<String>,
    cache: Mutex<HashMap<String, (ApiKey, Instant)>>,
    used: Mutex<HashMap<String, Millis>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("enabled", &self.bootstrap.is_some()).finish_non_exhaustive()
    }
}

impl ApiKeys {
    pub fn new(store: Arc<dyn ApiKeyStore>, clock: Arc<dyn Clock>, bootstrap: Option<String>) -> Self {
        Self { store, clock, bootstrap, cache: Mutex::default(), used: Mutex::default() }
    }

    /// Who presents `bearer` (the `Authorization: Bearer` value).
    pub async fn caller(&self, bearer: Option<&str>) -> Result<Caller, Refusal> {
        let Some(bootstrap) = &self.bootstrap else { return Err(Refusal::Disabled) };
        let presented = bearer.ok_or(Refusal::Unauthenticated)?;
        if tokens_match(presented, bootstrap) {
            return Ok(Caller { actor: Actor { key_id: None, name: BOOTSTRAP.to_owned() }, role: Role::Admin });
        }
        let token = KeyToken::parse(presented).ok_or(Refusal::Unauthenticated)?;
        let key = self.key(token.id()).await.map_err(Refusal::Unavailable)?.ok_or(Refusal::Unauthenticated)?;
        let now = self.clock.now_ms();
        if !token.matches(&key.secret_hash) || !key.usable_at(now) {
            return Err(Refusal::Unauthenticated);
        }
        self.used.lock().unwrap_or_else(PoisonError::into_inner).insert(key.id.clone(), now);
        Ok(Caller { actor: Actor { key_id: Some(key.id), name: key.name }, role: key.role })
    }

    /// The key `id`, from the cache while it is fresh.
    async fn key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let cached = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(id).cloned();
        if let Some((key, read_at)) = cached
            && read_at.elapsed() < KEY_CACHE
        {
            return Ok(Some(key));
        }
        let key = self.store.api_key(id).await?;
        if let Some(key) = &key {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= CACHED_KEYS {
                cache.clear();
            }
            cache.insert(id.to_owned(), (key.clone(), Instant::now()));
        }
        Ok(key)
    }

    /// Makes a key; its token is in the answer and nowhere else. `audit`
    /// (the node's activity) is written with it, naming its maker.
    pub async fn create(
        &self,
        name: &str,
        role: Role,
        expires_in_days: Option<u32>,
        created_by: &Caller,
        audit: NewActivity,
        random: [u8; 40],
    ) -> Result<(ApiKey, KeyToken), StoreError> {
        let token = KeyToken::from_random(random);
        let now = self.clock.now_ms();
        let expires_at = expires_in_days.map(|days| now.saturating_add(i64::from(days).saturating_mul(86_400_000)));
        let key = ApiKey {
            id: token.id().to_owned(),
            name: name.to_owned(),
            role,
            secret_hash: token.secret_hash().to_vec(),
            created_by: created_by.actor.name.clone(),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        let audit = audit.by(&created_by.actor, format!("key/{}", key.id));
        self.store.create_api_key(&key, &audit).await?;
        Ok((key, token))
    }

    /// Revokes the key `id`: this node refuses it from now on, the others
    /// within [`KEY_CACHE`]. False when there is no such live key. `audit`
    /// is written with the revocation, naming `by`.
    pub async fn revoke(&self, id: &str, by: &Caller, audit: NewActivity) -> Result<bool, StoreError> {
        let audit = audit.by(&by.actor, format!("key/{id}"));
        let revoked = self.store.revoke_api_key(id, &audit, self.clock.now_ms()).await?;
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
        Ok(revoked)
    }

    /// Writes when keys were last used since the previous call.
    pub async fn record_use(&self) -> Result<(), StoreError> {
        let used: Vec<(String, Millis)> = self.used.lock().unwrap_or_else(PoisonError::into_inner).drain().collect();
        if used.is_empty() {
            return Ok(());
        }
        let written = self.store.record_api_key_use(&used).await;
        if written.is_err() {
            // Kept for the next flush (a newer use of the same key wins).
            let mut pending = self.used.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, at) in used {
                let latest = pending.entry(id).or_insert(at);
                *latest = (*latest).max(at);
            }
        }
        written
    }
}

/// Writes the keys' last use every [`USE_FLUSH_EVERY`], and once more when
/// the node stops.
pub async fn run_use_recorder(keys: Arc<ApiKeys>, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            () = tokio::time::sleep(USE_FLUSH_EVERY) => false,
        };
        if let Err(error) = keys.record_use().await {
            tracing::warn!(error = %crate::error_chain(&error), "the API keys' last use could not be written");
        }
        if stopping {
            return;
        }
    }
}

/// Compares in constant time: both sides are hashed first, so neither the
/// content nor the length of the token leaks through timing.
fn tokens_match(presented: &str, expected: &str) -> bool {
    let a = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, expected.as_bytes());
    a.as_ref().iter().zip(b.as_ref()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use trekker_domain::time::ManualClock;

    #[test]
    fn token_comparison() {
        assert!(tokens_match("secret", "secret"));
        assert!(!tokens_match("secret", "secreT"));
        assert!(!tokens_match("", "secret"));
    }

    fn audit(action: &str) -> NewActivity {
        NewActivity::new(&trekker_domain::ServerName::parse("server1").unwrap(), action, "")
    }

    async fn keys() -> (ApiKeys, Arc<ManualClock>, trekker_testkit::SqliteDatabase) {
        let (store, file) = trekker_testkit::sqlite_store().await;
        let clock = Arc::new(ManualClock::new(1_800_000_000_000));
        (ApiKeys::new(store, clock.clone(), Some("the-bootstrap-token".into())), clock, file)
    }

    #[tokio::test]
    async fn a_key_opens_the_api_with_its_role_until_it_expires_or_is_revoked() {
        let (keys, clock, _file) = keys().await;
        let boot = keys.caller(Some("the-bootstrap-token")).await.unwrap();
        assert_eq!(
            (boot.actor.key_id.as_deref(), boot.actor.name.as_str(), boot.role),
            (None, "bootstrap", Role::Admin)
        );
        let (key, token) =
            keys.create("ops", Role::Operator, Some(1), &boot, audit("key_created"), [3; 40]).await.unwrap();
        let caller = keys.caller(Some(&token.expose())).await.unwrap();
        assert_eq!((caller.actor.key_id.as_deref(), caller.role), (Some(key.id.as_str()), Role::Operator));
        assert!(matches!(
            keys.caller(Some(&KeyToken::from_random([4; 40]).expose())).await,
            Err(Refusal::Unauthenticated)
        ));
        let mut forged = token.expose();
        forged.pop();
        forged.push(if token.expose().ends_with('A') { 'B' } else { 'A' });
        assert!(matches!(keys.caller(Some(&forged)).await, Err(Refusal::Unauthenticated)), "the secret must match");
        clock.advance(86_400_000);
        assert!(matches!(keys.caller(Some(&token.expose())).await, Err(Refusal::Unauthenticated)), "expired");
        let (other, other_token) =
            keys.create("viewer", Role::Viewer, None, &boot, audit("key_created"), [5; 40]).await.unwrap();
        assert!(keys.caller(Some(&other_token.expose())).await.is_ok());
        assert!(keys.revoke(&other.id, &boot, audit("key_revoked")).await.unwrap());
        assert!(
            matches!(keys.caller(Some(&other_token.expose())).await, Err(Refusal::Unauthenticated)),
            "refused at once by the node that revoked it, cache or not"
        );
        assert!(!keys.revoke(&other.id, &boot, audit("key_revoked")).await.unwrap());
    }

    #[tokio::test]
    async fn use_is_written_in_batches_not_per_request() {
        let (keys, clock, _file) = keys().await;
        let boot = keys.caller(Some("the-bootstrap-token")).await.unwrap();
        let (key, token) = keys.create("ops", Role::Viewer, None, &boot, audit("key_created"), [6; 40]).await.unwrap();
        for _ in 0..5 {
            keys.caller(Some(&token.expose())).await.unwrap();
            clock.advance(1_000);
        }
        assert_eq!(keys.store.api_key(&key.id).await.unwrap().unwrap().last_used_at, None, "nothing written yet");
        keys.record_use().await.unwrap();
        let last = keys.store.api_key(&key.id).await.unwrap().unwrap().last_used_at;
        assert_eq!(last, Some(clock.now_ms() - 1_000), "the latest use");
    }

    #[tokio::test]
    async fn without_admin_token_the_api_is_disabled_even_for_keys() {
        let (store, _file) = trekker_testkit::sqlite_store().await;
        let keys = ApiKeys::new(store, Arc::new(ManualClock::new(0)), None);
        assert!(matches!(keys.caller(Some("anything")).await, Err(Refusal::Disabled)));
    }
}
