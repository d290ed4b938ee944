//! Builders for Baileys-shaped test credentials.

use base64::Engine as _;
use serde_json::{Value, json};
use trekker_domain::Credentials;
use trekker_domain::session::encode_session_id;

/// A `creds.json` for `phone` (digits); `variant` changes the key material,
/// so two variants of one phone are different credentials.
pub fn creds_json(phone: &str, variant: u32) -> Value {
    let key = |label: &str| base64::engine::general_purpose::STANDARD.encode(format!("{label}-{phone}-{variant}"));
    json!({
        "noiseKey": {
            "private": {"type": "Buffer", "data": key("noise-priv")},
            "public": {"type": "Buffer", "data": key("noise-pub")},
        },
        "pairingEphemeralKeyPair": {"private": key("eph-priv"), "public": key("eph-pub")},
        "signedIdentityKey": {"private": key("id-priv"), "public": key("id-pub")},
        "signedPreKey": {
            "keyPair": {"private": key("pre-priv"), "public": key("pre-pub")},
            "signature": key("sig"),
            "keyId": 1,
        },
        "registrationId": 1000 + variant,
        "advSecretKey": key("adv"),
        "me": {
            "id": format!("{phone}:{}@s.whatsapp.net", variant % 50),
            "name": "Test",
            "lid": "123456789012345:1@lid",
        },
        "account": {"details": key("acct")},
        "platform": "android",
        "registered": true,
    })
}

/// What must never be found at rest or in a log for these credentials:
/// each private key as it appears in the session, and the session ID.
pub fn secret_markers(phone: &str, variant: u32) -> Vec<String> {
    let creds = creds_json(phone, variant);
    let mut markers: Vec<String> = [
        &creds["noiseKey"]["private"]["data"],
        &creds["signedIdentityKey"]["private"],
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
