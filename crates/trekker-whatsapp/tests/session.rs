//! Session conversion, both ways, offline, with synthetic credentials only
//! (keys derived from labels; never real ones).

#![cfg(feature = "whatsapp")]
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use trekker_domain::Credentials;
use trekker_domain::account::{AccountError, IdentityDetails, baileys_buffer, public_key, signed_account, xeddsa_sign};
use trekker_whatsapp::session::{ConversionError, creds_from_device, device_from_creds};

const PHONE: &str = "254700000001";

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

/// A private key as Baileys generates them (curve25519-js clamps).
fn private(label: &str) -> [u8; 32] {
    let mut key = seed(label);
    key[0] &= 248;
    key[31] &= 127;
    key[31] |= 64;
    key
}

fn pair(label: &str) -> Value {
    let private = private(label);
    json!({"private": baileys_buffer(&private), "public": baileys_buffer(&public_key(&private))})
}

/// A well-formed Baileys creds.json: real Curve25519 key pairs, a signed
/// pre-key its identity key signed, an account signature that verifies.
fn creds() -> Value {
    let identity = private("identity");
    let pre_key_public = public_key(&private("signed-pre-key"));
    let signature = xeddsa_sign(&identity, &[&[5u8][..], &pre_key_public].concat());
    let details = IdentityDetails { raw_id: 3, timestamp: 1_700_000_060, key_index: 2 };
    json!({
        "noiseKey": pair("noise"),
        "pairingEphemeralKeyPair": pair("ephemeral"),
        "signedIdentityKey": pair("identity"),
        "signedPreKey": {"keyPair": pair("signed-pre-key"), "signature": baileys_buffer(&signature), "keyId": 7},
        "registrationId": 4321,
        "advSecretKey": base64::engine::general_purpose::STANDARD.encode(seed("adv")),
        "me": {"id": format!("{PHONE}:3@s.whatsapp.net"), "lid": "123456789012345:3@lid", "name": "Test"},
        "account": signed_account(&seed("account"), &identity, details),
        "platform": "android",
        "registered": true,
    })
}

#[test]
fn a_session_goes_to_whatsapp_rust_and_comes_back_the_same() {
    let original = creds();
    let device = device_from_creds(&original).unwrap();
    assert_eq!((device.registration_id, device.signed_pre_key_id), (4321, 7));
    assert_eq!(device.adv_secret_key, seed("adv"));
    assert_eq!(device.identity_key.private_key.serialize(), &private("identity"));
    assert_eq!(device.pn.as_ref().unwrap().to_string(), format!("{PHONE}:3@s.whatsapp.net"));
    assert_eq!(device.push_name, "Test");

    let exported = creds_from_device(&device, "android").unwrap();
    for field in ["noiseKey", "signedIdentityKey", "signedPreKey", "registrationId", "advSecretKey", "me", "platform"] {
        assert_eq!(exported[field], original[field], "{field}");
    }
    // The signed device identity comes back byte for byte, so the
    // ownership check passes on the exported session as on the original.
    assert_eq!(exported["account"], original["account"]);
    let before = Credentials::from_json_value(&original).unwrap();
    let after = Credentials::from_json_value(&exported).unwrap();
    assert_eq!(after.identity(), before.identity());
    assert_eq!(after.phone().as_str(), PHONE);
}

#[test]
fn plain_base64_buffers_and_wrapped_documents_are_read_too() {
    let mut plain = creds();
    for key in ["noiseKey", "signedIdentityKey"] {
        for half in ["private", "public"] {
            let data = plain[key][half]["data"].clone();
            plain[key][half] = data;
        }
    }
    let from_plain = device_from_creds(&plain).unwrap();
    let from_wrapped = device_from_creds(&json!({"creds": creds()})).unwrap();
    assert_eq!(from_plain.noise_key.private_key.serialize(), from_wrapped.noise_key.private_key.serialize());
}

/// How a case breaks a good session.
type Breaks = Box<dyn Fn(&mut Value)>;

#[test]
fn malformed_or_tampered_sessions_are_refused_with_what_is_wrong() {
    let flip = |value: &mut Value| {
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(value["data"].as_str().unwrap()).unwrap();
        bytes[0] ^= 1;
        *value = baileys_buffer(&bytes);
    };
    let cases: Vec<(&str, Breaks, ConversionError)> = vec![
        ("no noise key", Box::new(|c| c["noiseKey"] = Value::Null), ConversionError::Missing("noiseKey")),
        (
            "someone else's public noise key",
            Box::new(|c| c["noiseKey"]["public"] = pair("other")["public"].clone()),
            ConversionError::KeyMismatch("noiseKey"),
        ),
        (
            "a short identity key",
            Box::new(|c| c["signedIdentityKey"]["private"] = baileys_buffer(&[1, 2, 3])),
            ConversionError::BadKey("signedIdentityKey"),
        ),
        (
            "a forged signed pre-key",
            Box::new(move |c| flip(&mut c["signedPreKey"]["signature"])),
            ConversionError::SignedPreKeySignature,
        ),
        (
            "a tampered account signature",
            Box::new(move |c| flip(&mut c["account"]["accountSignature"])),
            ConversionError::Account(AccountError::AccountSignature),
        ),
        (
            "no account",
            Box::new(|c| c["account"] = Value::Null),
            ConversionError::Account(AccountError::Missing("account")),
        ),
        (
            "a negative registration id",
            Box::new(|c| c["registrationId"] = json!(-1)),
            ConversionError::BadNumber("registrationId"),
        ),
        (
            "a short adv secret",
            Box::new(|c| c["advSecretKey"] = json!("AAEC")),
            ConversionError::BadKey("advSecretKey"),
        ),
        ("no me.id", Box::new(|c| c["me"] = json!({"name": "x"})), ConversionError::Missing("me.id")),
        (
            "a me.id that is no address",
            Box::new(|c| c["me"]["id"] = json!("not an address @@")),
            ConversionError::BadJid("me.id"),
        ),
    ];
    for (what, break_it, expected) in cases {
        let mut broken = creds();
        break_it(&mut broken);
        assert_eq!(device_from_creds(&broken).map(|_| ()), Err(expected), "{what}");
    }
    assert_eq!(device_from_creds(&json!("text")).map(|_| ()), Err(ConversionError::Missing("creds")));
}
