//! Pairing a phone: a pairing code now, a session ID later.
//!
//! A [`PairingProvider`] talks to WhatsApp (or pretends to: the default
//! [`SimulatedPairing`] pairs no real phone). Requests are stored, so any
//! node answers a status poll and a restart loses nothing already paired.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;
use trekker_domain::account::{IdentityDetails, baileys_buffer, public_key, signed_account};
use trekker_domain::{Credentials, PhoneNumber};
use trekker_store::{NewPairing, PairingStatus};

use crate::{AppError, Trekker, random_u128};

/// How long a pairing code stays usable.
pub const PAIRING_TTL_SECS: i64 = 60;

/// A started pairing: the code to type on the phone, and the future that
/// resolves once the phone confirmed (credentials) or the attempt failed.
pub struct PairingSession {
    pub code: String,
    pub outcome: Pin<Box<dyn Future<Output = Result<Credentials, String>> + Send>>,
}

impl fmt::Debug for PairingSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingSession").field("code", &self.code).finish_non_exhaustive()
    }
}

/// Pairs a phone number with WhatsApp by pairing code.
#[async_trait]
pub trait PairingProvider: Send + Sync + fmt::Debug {
    /// A name for logs, e.g. `simulated`.
    fn name(&self) -> &'static str;
    async fn start(&self, phone: &PhoneNumber) -> Result<PairingSession, String>;
}

/// SIMULATED pairing for demos and tests: returns a code at once and, after
/// `delay`, Baileys-shaped credentials it generates itself for the number.
/// It contacts no phone and the credentials log in nowhere.
///
/// It plays WhatsApp's part too: each simulated phone has an account key
/// derived from `account_secret` and the number, which signs the device
/// identity of every pairing of that phone, so re-pairing a phone is "the
/// same account" as a real re-pair would be. Whoever knows the secret can
/// make sessions for any simulated phone: ownership means nothing here.
#[derive(Clone)]
pub struct SimulatedPairing {
    pub delay: Duration,
    pub account_secret: [u8; 32],
}

impl fmt::Debug for SimulatedPairing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedPairing").field("delay", &self.delay).finish_non_exhaustive()
    }
}

impl SimulatedPairing {
    /// Pairs after 0.8 s; phones' account keys derive from `account_secret`
    /// (give every node of a cluster the same one).
    pub fn new(account_secret: [u8; 32]) -> Self {
        Self { delay: Duration::from_millis(800), account_secret }
    }
}

#[async_trait]
impl PairingProvider for SimulatedPairing {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn start(&self, phone: &PhoneNumber) -> Result<PairingSession, String> {
        let code = pairing_code();
        let phone = phone.clone();
        let delay = self.delay;
        let account_private = self.account_key(&phone);
        let outcome = Box::pin(async move {
            tokio::time::sleep(delay).await;
            simulated_credentials(&phone, &account_private)
        });
        Ok(PairingSession { code, outcome })
    }
}

impl SimulatedPairing {
    /// The simulated phone's private account key.
    fn account_key(&self, phone: &PhoneNumber) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.account_secret);
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::hmac::sign(&key, phone.as_str().as_bytes()).as_ref());
        out
    }
}

/// Eight characters from an alphabet without look-alikes, as `ABCD-EFGH`.
fn pairing_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bits = random_u128();
    let chars: String = (0..8).map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char).collect();
    format!("{}-{}", &chars[..4], &chars[4..])
}

fn random_bytes() -> Result<[u8; 32], String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "no system randomness".to_owned())?;
    Ok(bytes)
}

fn random_key() -> Result<String, String> {
    Ok(base64::engine::general_purpose::STANDARD.encode(random_bytes()?))
}

fn simulated_credentials(phone: &PhoneNumber, account_private: &[u8; 32]) -> Result<Credentials, String> {
    let pair =
        || -> Result<serde_json::Value, String> { Ok(json!({"private": random_key()?, "public": random_key()?})) };
    let identity_private = random_bytes()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let details = IdentityDetails { raw_id: (random_u128() % 1_000_000) as u32, timestamp: now, key_index: 1 };
    let creds = json!({
        "noiseKey": pair()?,
        "pairingEphemeralKeyPair": pair()?,
        "signedIdentityKey": {
            "private": baileys_buffer(&identity_private),
            "public": baileys_buffer(&public_key(&identity_private)),
        },
        "account": signed_account(account_private, &identity_private, details),
        "signedPreKey": {"keyPair": pair()?, "signature": random_key()?, "keyId": 1},
        "registrationId": (random_u128() % 16_380) + 1,
        "advSecretKey": random_key()?,
        "me": {"id": format!("{phone}:1@s.whatsapp.net"), "name": "Trekker (simulated)"},
        "platform": "simulated",
        "registered": true,
    });
    Credentials::from_json_value(&creds).map_err(|e| e.to_string())
}

/// The answer to a pairing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingTicket {
    pub code: String,
    pub request_id: String,
    pub number: String,
    pub expires_in: i64,
}

/// Where a pairing request stands.
#[derive(Clone, PartialEq, Eq)]
pub enum PairingState {
    Pending,
    /// Secret: the guest's own session ID, shown only to the poller.
    Paired {
        session_id: String,
    },
    Expired {
        message: String,
    },
    Failed {
        message: String,
    },
}

/// Never shows the session ID.
impl fmt::Debug for PairingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pending => f.write_str("Pending"),
            Self::Paired { .. } => f.write_str("Paired { session_id: <redacted> }"),
            Self::Expired { message } => f.debug_struct("Expired").field("message", message).finish(),
            Self::Failed { message } => f.debug_struct("Failed").field("message", message).finish(),
        }
    }
}

impl Trekker {
    /// Starts pairing `number`; the session ID arrives later (poll
    /// [`pairing_state`](Self::pairing_state)).
    pub async fn request_pairing(
        &self,
        provider: &Arc<dyn PairingProvider>,
        number: &str,
    ) -> Result<PairingTicket, AppError> {
        if number.trim().is_empty() {
            return Err(AppError::InvalidInput("number is required.".into()));
        }
        let phone = PhoneNumber::parse(number).map_err(|e| AppError::InvalidInput(format!("number: {e}.")))?;
        let session = provider.start(&phone).await.map_err(|reason| {
            tracing::warn!(provider = provider.name(), %reason, "pairing could not start");
            AppError::Conflict("Pairing could not start. Please try again.".into())
        })?;
        let now = self.now();
        let request_id = format!("{:032x}", random_u128());
        let pairing = NewPairing {
            id: request_id.clone(),
            phone: phone.clone(),
            code: session.code.clone(),
            created_at: now,
            expires_at: now + PAIRING_TTL_SECS * 1000,
        };
        self.store.pairings.create_pairing(&pairing).await?;
        tracing::info!(provider = provider.name(), %phone, request = %request_id, "📱 Pairing requested");
        let store = self.store.clone();
        let clock = self.clock.clone();
        let id = request_id.clone();
        tokio::spawn(async move {
            let ttl = Duration::from_secs(PAIRING_TTL_SECS as u64);
            let result = match tokio::time::timeout(ttl, session.outcome).await {
                Ok(Ok(credentials)) => store.pairings.complete_pairing(&id, &credentials, clock.now_ms()).await,
                Ok(Err(reason)) => {
                    store.pairings.fail_pairing(&id, &format!("Pairing failed: {reason}"), clock.now_ms()).await
                }
                // Past the TTL the request reads as expired by itself.
                Err(_) => Ok(()),
            };
            match result {
                Ok(()) => tracing::info!(request = %id, "📱 Pairing finished"),
                Err(err) => tracing::warn!(request = %id, error = ?err, "pairing result not stored"),
            }
        });
        Ok(PairingTicket { code: session.code, request_id, number: phone.to_string(), expires_in: PAIRING_TTL_SECS })
    }

    pub async fn pairing_state(&self, request_id: &str) -> Result<PairingState, AppError> {
        let unknown = || AppError::NotFound("Pairing request not found.".into());
        if !crate::is_opaque_id(request_id) {
            return Err(unknown());
        }
        // A paired request answers once with its session ID, then is gone.
        let record = self.store.pairings.take_pairing(request_id, self.now()).await?.ok_or_else(unknown)?;
        Ok(match record.status {
            PairingStatus::Pending => PairingState::Pending,
            PairingStatus::Paired => match record.credentials {
                Some(credentials) => PairingState::Paired { session_id: credentials.to_session_id() },
                None => PairingState::Failed { message: "Pairing result is missing. Please pair again.".into() },
            },
            PairingStatus::Expired => {
                PairingState::Expired { message: "The pairing code expired. Please request a new one.".into() }
            }
            PairingStatus::Failed => PairingState::Failed {
                message: record.message.unwrap_or_else(|| "Pairing failed. Please try again.".into()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn simulated_pairing_yields_signed_credentials_of_one_account_per_phone() {
        let provider = SimulatedPairing { delay: Duration::from_millis(1), account_secret: [1; 32] };
        let phone = PhoneNumber::parse("254712345678").unwrap();
        let session = provider.start(&phone).await.unwrap();
        assert_eq!(session.code.len(), 9);
        assert_eq!(&session.code[4..5], "-");
        let credentials = session.outcome.await.unwrap();
        assert_eq!(credentials.phone(), &phone);
        let again = Credentials::from_session_id(&credentials.to_session_id()).unwrap();
        assert_eq!(again, credentials);
        // Pairing the phone again is a new device of the same account...
        let repaired = provider.start(&phone).await.unwrap().outcome.await.unwrap();
        assert_ne!(repaired, credentials);
        assert_eq!(repaired.identity().account_key, credentials.identity().account_key);
        // ...another phone, or another cluster's secret, another account.
        let other = PhoneNumber::parse("254712345679").unwrap();
        let elsewhere = provider.start(&other).await.unwrap().outcome.await.unwrap();
        assert_ne!(elsewhere.identity().account_key, credentials.identity().account_key);
        let other_cluster = SimulatedPairing { account_secret: [2; 32], ..provider };
        let foreign = other_cluster.start(&phone).await.unwrap().outcome.await.unwrap();
        assert_ne!(foreign.identity().account_key, credentials.identity().account_key);
    }

    #[test]
    fn pairing_codes_draw_eight_characters_of_the_whole_alphabet() {
        let codes: Vec<String> = (0..200).map(|_| pairing_code()).collect();
        let letters: std::collections::HashSet<char> =
            codes.iter().flat_map(|c| c.chars()).filter(|c| *c != '-').collect();
        assert!(letters.len() > 28, "8 characters of 32 each, drawn apart: {letters:?}");
        assert!(letters.iter().all(|c| !"01IO".contains(*c)), "no look-alikes");
        let distinct: std::collections::HashSet<&String> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len());
    }

    #[test]
    fn simulated_keys_are_random_and_the_provider_says_it_is_simulated() {
        assert_ne!(random_bytes().unwrap(), random_bytes().unwrap());
        assert_ne!(random_bytes().unwrap(), [0; 32]);
        let key = random_key().unwrap();
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&key).unwrap().len(), 32);
        let provider = SimulatedPairing { delay: Duration::from_millis(1), account_secret: [1; 32] };
        assert_eq!(provider.name(), "simulated");
        let shown = format!("{provider:?}");
        assert!(shown.starts_with("SimulatedPairing") && !shown.contains("secret"), "{shown}");
        let paired = PairingState::Paired { session_id: "TREKKER~secret".into() };
        assert_eq!(format!("{paired:?}"), "Paired { session_id: <redacted> }");
        let failed = PairingState::Failed { message: "no".into() };
        assert_eq!(format!("{failed:?}"), r#"Failed { message: "no" }"#);
    }

    #[tokio::test]
    async fn a_pairing_request_lasts_its_ttl_and_its_id_is_checked_before_the_store() {
        use crate::test_support::{Mocks, NOW, trekker};
        let mut store = crate::test_support::Mocks::default();
        store
            .pairings
            .expect_create_pairing()
            .withf(|pairing| pairing.created_at == NOW && pairing.expires_at == NOW + 60_000)
            .times(1)
            .returning(|_| Ok(()));
        let provider: Arc<dyn PairingProvider> =
            Arc::new(SimulatedPairing { delay: Duration::from_secs(3600), account_secret: [1; 32] });
        let ticket = trekker(store).request_pairing(&provider, "254712345678").await.unwrap();
        assert_eq!((ticket.expires_in, ticket.request_id.len()), (60, 32));

        for refused in ["", "has space", "dash-ed", &"a".repeat(65)] {
            let err = trekker(Mocks::default()).pairing_state(refused).await.unwrap_err();
            assert!(matches!(err, AppError::NotFound(_)), "{refused:?}");
        }
        let mut store = Mocks::default();
        store.pairings.expect_take_pairing().times(1).returning(|id, _| {
            Ok(Some(trekker_store::PairingRecord {
                id: id.to_owned(),
                phone: PhoneNumber::parse("254712345678").unwrap(),
                code: "ABCD-EFGH".into(),
                status: PairingStatus::Pending,
                credentials: None,
                message: None,
                created_at: NOW,
                expires_at: NOW + 60_000,
            }))
        });
        let state = trekker(store).pairing_state(&"a".repeat(64)).await.unwrap();
        assert!(matches!(state, PairingState::Pending), "{state:?}");
    }
}
