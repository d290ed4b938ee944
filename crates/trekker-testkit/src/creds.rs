//! Builders for Baileys-shaped test credentials, genuinely signed: each
//! carries a `creds.account` device identity signed (XEdDSA) by a test
//! account key and by the device's identity key, as WhatsApp and Baileys
//! sign real ones. Keys are derived from labels, so a test can pair the
//! same phone again with its own account, or with someone else's.

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use trekker_domain::Credentials;
use trekker_domain::account::{IdentityDetails, baileys_buffer, public_key, signed_account, xeddsa_sign};
use trekker_domain::session::encode_session_id;

/// A `creds.json` for `phone` (digits); `variant` changes the key material,
/// so two variants of one phone are different credentials.
pub fn creds_json(phone: &str, variant: u32) -> Value {
    creds_json_of_account(phone, variant, "own")
}

/// As [`creds_json`], but paired by the WhatsApp account `account` (a
/// label: the same label is the same account key). The phone's own
/// account is `"own"`; anything else is someone else's account claiming
/// the phone.
pub fn creds_json_of_account(phone: &str, variant: u32, account: &str) -> Value {
    let key = |label: &str| base64::engine::general_purpose::STANDARD.encode(format!("{label}-{phone}-{variant}"));
    let private = |label: &str| clamped(seed(&format!("{label}:{phone}:{variant}")));
    let base64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let identity_private = seed(&format!("identity:{account}:{phone}:{variant}"));
    let (noise, pre_key) = (private("noise"), private("signed-pre-key"));
    // Real Curve25519 pairs and a pre-key signed by the identity key, as
    // Baileys writes them: whatsapp-rust can load these (the `whatsapp`
    // feature's tests import them).
    let pre_key_signature = xeddsa_sign(&identity_private, &[&[5u8][..], &public_key(&pre_key)].concat());
    let details = IdentityDetails { raw_id: variant, timestamp: adv_timestamp(variant), key_index: variant };
    json!({
        "noiseKey": {"private": baileys_buffer(&noise), "public": baileys_buffer(&public_key(&noise))},
        "pairingEphemeralKeyPair": {"private": key("eph-priv"), "public": key("eph-pub")},
        "signedIdentityKey": {
            "private": baileys_buffer(&identity_private),
            "public": baileys_buffer(&public_key(&identity_private)),
        },
        "signedPreKey": {
            "keyPair": {"private": base64(&pre_key), "public": base64(&public_key(&pre_key))},
            "signature": base64(&pre_key_signature),
            "keyId": 1,
        },
        "registrationId": 1000 + variant,
        "advSecretKey": base64(&seed(&format!("adv:{phone}:{variant}"))),
        "me": {
            "id": format!("{phone}:{}@s.whatsapp.net", variant % 50),
            "name": "Test",
            "lid": "123456789012345:1@lid",
        },
        "account": signed_account(&account_private(phone, account), &identity_private, details),
        "platform": "android",
        "registered": true,
    })
}

/// A private key as Baileys generates them (curve25519-js clamps).
fn clamped(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    key
}

/// When WhatsApp signed variant `variant` of a test pairing: a later
/// variant is a later pairing.
pub fn adv_timestamp(variant: u32) -> u64 {
    1_700_000_000 + u64::from(variant) * 60
}

/// The private key of test account `account` for `phone`.
pub fn account_private(phone: &str, account: &str) -> [u8; 32] {
    seed(&format!("account:{account}:{phone}"))
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

/// A session ID for `phone` paired by another account (see [`creds_json_of_account`]).
pub fn session_id_of_account(phone: &str, variant: u32, account: &str) -> String {
    encode_session_id(&creds_json_of_account(phone, variant, account).to_string())
}

/// What must never be found at rest or in a log for these credentials:
/// each private key as it appears in the session, and the session ID.
pub fn secret_markers(phone: &str, variant: u32) -> Vec<String> {
    let creds = creds_json(phone, variant);
    let mut markers: Vec<String> = [
        &creds["noiseKey"]["private"]["data"],
        &creds["signedIdentityKey"]["private"]["data"],
        &creds["signedPreKey"]["keyPair"]["private"],
        &creds["pairingEphemeralKeyPair"]["private"],
        &creds["advSecretKey"],
    ]
    .iter()
    .map(|value| value.as_str().expect("a base64 string").to_owned())
    .collect();
    markers.push(session_id(phone, variant));
    markers
}

/// A `TREKKER~` session ID for `phone`.
pub fn session_id(phone: &str, variant: u32) -> String {
    encode_session_id(&creds_json(phone, variant).to_string())
}

/// Parsed credentials for `phone`.
pub fn credentials(phone: &str, variant: u32) -> Credentials {
    Credentials::from_json_value(&creds_json(phone, variant)).expect("test credentials are valid")
}

/// The `n`-th test phone number of a series (12 digits, valid).
pub fn phone(series: u32, n: u32) -> String {
    format!("2547{series:02}{n:06}")
}
