//! Proof of ownership (invariant 8): the signed device identity a Baileys
//! session carries in `creds.account`.
//!
//! At pairing, WhatsApp gives the new device an `ADVSignedDeviceIdentity`:
//! `details` (an `ADVDeviceIdentity` protobuf: rawId, timestamp, keyIndex),
//! `accountSignatureKey` (the phone's account identity key), and
//! `accountSignature`, XEdDSA by that key over
//! `0x06 0x00 || details || signedIdentityKey.public`; the device adds
//! `deviceSignature`, by its own identity key, over
//! `0x06 0x01 || details || signedIdentityKey.public || accountSignatureKey`.
//! Only the holder of the phone's private identity key can make a valid
//! `accountSignature` for that account, so a session whose signatures
//! verify proves which WhatsApp account paired it.
//!
//! Signatures follow libsignal's convention (Baileys' curve25519-js): the
//! signer's Edwards sign bit travels in the top bit of the signature's last
//! byte, and the verifier converts the Montgomery key to Edwards form with
//! that bit, then checks an ordinary Ed25519 signature.

use base64::Engine as _;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

/// Signal's type byte in front of a Curve25519 public key.
const DJB_TYPE: u8 = 0x05;

/// What a verified `creds.account` says (public values, not secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The phone's WhatsApp account identity key (Curve25519, 32 bytes).
    pub account_key: [u8; 32],
    /// When WhatsApp signed this device's identity (seconds); a later
    /// pairing of the same account has a larger one.
    pub timestamp: u64,
    /// The device's number on the account (`rawId`).
    pub raw_id: u32,
    /// Which of the account's keys signed it (`keyIndex`).
    pub key_index: u32,
}

/// Why `creds.account` does not prove an account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// `…` is missing; pair the phone again.
    #[error("`{0}` is missing; pair the phone again")]
    Missing(&'static str),
    /// `…` is not a 32-byte key.
    #[error("`{0}` is not a 32-byte key")]
    BadKey(&'static str),
    /// `…` is not a 64-byte signature.
    #[error("`{0}` is not a 64-byte signature")]
    BadSignatureBytes(&'static str),
    /// `account.details` is not a device identity.
    #[error("`account.details` is not a device identity")]
    BadDetails,
    /// `account.accountSignature` does not verify: the session was not signed by this WhatsApp account.
    #[error("`account.accountSignature` does not verify: the session was not signed by this WhatsApp account")]
    AccountSignature,
    /// `account.deviceSignature` does not verify: the device key does not match this session.
    #[error("`account.deviceSignature` does not verify: the device key does not match this session")]
    DeviceSignature,
}

/// The `ADVDeviceIdentity` protobuf (only the fields Trekker reads).
#[derive(Clone, PartialEq, prost::Message)]
struct AdvDeviceIdentity {
    #[prost(uint32, optional, tag = "1")]
    raw_id: Option<u32>,
    #[prost(uint64, optional, tag = "2")]
    timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "3")]
    key_index: Option<u32>,
}

/// Verifies `creds.account` against `creds.signedIdentityKey.public`.
pub fn verify_account(creds: &Map<String, Value>) -> Result<DeviceIdentity, AccountError> {
    let account = creds.get("account").filter(|v| v.is_object()).ok_or(AccountError::Missing("account"))?;
    let details = buffer(account.get("details"), "account.details")?;
    let account_key =
        key(buffer(account.get("accountSignatureKey"), "account.accountSignatureKey")?, "account.accountSignatureKey")?;
    let account_signature = signature(account.get("accountSignature"), "account.accountSignature")?;
    let device_signature = signature(account.get("deviceSignature"), "account.deviceSignature")?;
    let identity = creds.get("signedIdentityKey").and_then(|k| k.get("public"));
    let identity_key = key(buffer(identity, "signedIdentityKey.public")?, "signedIdentityKey.public")?;

    let account_message = [&[6, 0][..], &details, &identity_key].concat();
    if !xeddsa_verify(&account_key, &account_message, &account_signature) {
        return Err(AccountError::AccountSignature);
    }
    let device_message = [&[6, 1][..], &details, &identity_key, &account_key].concat();
    if !xeddsa_verify(&identity_key, &device_message, &device_signature) {
        return Err(AccountError::DeviceSignature);
    }
    let decoded = AdvDeviceIdentity::decode(details.as_slice()).map_err(|_| AccountError::BadDetails)?;
    Ok(DeviceIdentity {
        account_key,
        timestamp: decoded.timestamp.ok_or(AccountError::BadDetails)?,
        raw_id: decoded.raw_id.unwrap_or_default(),
        key_index: decoded.key_index.unwrap_or_default(),
    })
}

/// XEdDSA verification, libsignal's convention (see the module header).
pub fn xeddsa_verify(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let sign = (signature[63] & 0x80) >> 7;
    let Some(edwards) = MontgomeryPoint(*public).to_edwards(sign) else { return false };
    let Ok(key) = VerifyingKey::from_bytes(&edwards.compress().to_bytes()) else { return false };
    let mut bare = *signature;
    bare[63] &= 0x7f;
    key.verify_strict(message, &Signature::from_bytes(&bare)).is_ok()
}

/// The Curve25519 public key of a private key (the key is clamped first,
/// as X25519 and Signal do).
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    EdwardsPoint::mul_base(&Scalar::from_bytes_mod_order(clamp_integer(*private))).to_montgomery().to_bytes()
}

/// An XEdDSA signature in libsignal's convention, as curve25519-js makes
/// it without extra randomness: Ed25519 over the Edwards form of the key,
/// the nonce derived from the key and the message, the Edwards sign bit in
/// the top bit of the last byte. Used where Trekker itself plays WhatsApp
/// (the simulated pairing provider) and by the test builders.
pub fn xeddsa_sign(private: &[u8; 32], message: &[u8]) -> [u8; 64] {
    let scalar = Scalar::from_bytes_mod_order(clamp_integer(*private));
    let edwards = EdwardsPoint::mul_base(&scalar);
    let nonce_key: [u8; 64] = Sha512::new().chain_update([0xfe; 32]).chain_update(private).finalize().into();
    let mut hash_prefix = [0u8; 32];
    hash_prefix.copy_from_slice(&nonce_key[..32]);
    let expanded = ExpandedSecretKey { scalar, hash_prefix };
    let verifying = VerifyingKey::from(edwards);
    let mut signature = raw_sign::<Sha512>(&expanded, message, &verifying).to_bytes();
    signature[63] |= edwards.compress().to_bytes()[31] & 0x80;
    signature
}

/// What WhatsApp puts in a device identity when it pairs a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityDetails {
    /// The device's number on the account (`rawId`).
    pub raw_id: u32,
    /// When WhatsApp signed the identity (seconds).
    pub timestamp: u64,
    /// Which of the account's keys signed it (`keyIndex`).
    pub key_index: u32,
}

/// The `creds.account` object a pairing gives the device whose identity
/// key is `identity_private`, signed by the phone account `account_private`
/// (buffers as Baileys writes them).
pub fn signed_account(account_private: &[u8; 32], identity_private: &[u8; 32], details: IdentityDetails) -> Value {
    let identity = AdvDeviceIdentity {
        raw_id: Some(details.raw_id),
        timestamp: Some(details.timestamp),
        key_index: Some(details.key_index),
    }
    .encode_to_vec();
    let account_key = public_key(account_private);
    let identity_key = public_key(identity_private);
    let account_signature = xeddsa_sign(account_private, &[&[6, 0][..], &identity, &identity_key].concat());
    let device_message = [&[6, 1][..], &identity, &identity_key, &account_key].concat();
    let device_signature = xeddsa_sign(identity_private, &device_message);
    json!({
        "details": baileys_buffer(&identity),
        "accountSignatureKey": baileys_buffer(&account_key),
        "accountSignature": baileys_buffer(&account_signature),
        "deviceSignature": baileys_buffer(&device_signature),
    })
}

/// `{"type": "Buffer", "data": "<base64>"}`, Baileys' `BufferJSON` form.
pub fn baileys_buffer(bytes: &[u8]) -> Value {
    json!({"type": "Buffer", "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

/// A Baileys buffer: `{"type": "Buffer", "data": "<base64>"}`, the same
/// with `data` as an array of bytes, or a bare base64 string.
pub fn buffer(value: Option<&Value>, field: &'static str) -> Result<Vec<u8>, AccountError> {
    let data = match value {
        Some(Value::Object(object)) => object.get("data").ok_or(AccountError::Missing(field))?,
        Some(other) => other,
        None => return Err(AccountError::Missing(field)),
    };
    match data {
        Value::String(text) => {
            base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| AccountError::BadKey(field))
        }
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_u64().and_then(|b| u8::try_from(b).ok()).ok_or(AccountError::BadKey(field)))
            .collect(),
        _ => Err(AccountError::Missing(field)),
    }
}

/// A Curve25519 public key, with or without Signal's 0x05 type byte.
fn key(bytes: Vec<u8>, field: &'static str) -> Result<[u8; 32], AccountError> {
    let bare = match bytes.as_slice() {
        [DJB_TYPE, rest @ ..] if rest.len() == 32 => rest,
        all => all,
    };
    bare.try_into().map_err(|_| AccountError::BadKey(field))
}

fn signature(value: Option<&Value>, field: &'static str) -> Result<[u8; 64], AccountError> {
    buffer(value, field)?.as_slice().try_into().map_err(|_| AccountError::BadSignatureBytes(field))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Vectors made by curve25519-js (Baileys' curve library) with
    /// `tests/vectors/make-vectors.js`.
    fn vectors() -> Value {
        serde_json::from_str(include_str!("../tests/vectors/xeddsa.json")).unwrap()
    }

    fn bytes(value: &Value) -> Vec<u8> {
        let text = value.as_str().unwrap();
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    fn b64(value: &Value) -> Value {
        json!({"type": "Buffer", "data": base64::engine::general_purpose::STANDARD.encode(bytes(value))})
    }

    #[test]
    fn curve25519_js_signatures_of_both_sign_bits_verify() {
        let vectors = vectors();
        let mut bits = [0, 0];
        for vector in vectors["signatures"].as_array().unwrap() {
            let public: [u8; 32] = bytes(&vector["public"]).try_into().unwrap();
            let message = bytes(&vector["message"]);
            let signature: [u8; 64] = bytes(&vector["signature"]).try_into().unwrap();
            assert!(xeddsa_verify(&public, &message, &signature), "{vector}");
            bits[vector["signBit"].as_u64().unwrap() as usize] += 1;
            // Any change breaks it: message, signature body, sign bit.
            let mut other = message.clone();
            other[0] ^= 1;
            assert!(!xeddsa_verify(&public, &other, &signature));
            let mut flipped = signature;
            flipped[63] ^= 0x80;
            assert!(!xeddsa_verify(&public, &message, &flipped), "the sign bit matters");
            let mut tampered = signature;
            tampered[5] ^= 1;
            assert!(!xeddsa_verify(&public, &message, &tampered));
        }
        assert!(bits[0] > 0 && bits[1] > 0, "vectors of both sign bits: {bits:?}");
    }

    /// `creds` for one of the vector accounts (keys as Baileys writes them).
    fn creds_of(vector: &Value) -> Map<String, Value> {
        json!({
            "signedIdentityKey": {"private": b64(&vector["identityPrivate"]), "public": b64(&vector["identityPublic"])},
            "account": {
                "details": b64(&vector["details"]),
                "accountSignatureKey": b64(&vector["accountPublic"]),
                "accountSignature": b64(&vector["accountSignature"]),
                "deviceSignature": b64(&vector["deviceSignature"]),
            },
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn curve25519_js_device_identities_verify_and_decode() {
        for vector in vectors()["accounts"].as_array().unwrap() {
            let identity = verify_account(&creds_of(vector)).unwrap();
            assert_eq!(identity.account_key.to_vec(), bytes(&vector["accountPublic"]));
            assert_eq!(identity.timestamp, vector["timestamp"].as_u64().unwrap());
            assert_eq!(u64::from(identity.raw_id), vector["rawId"].as_u64().unwrap());
            assert_eq!(u64::from(identity.key_index), vector["keyIndex"].as_u64().unwrap());
        }
    }

    #[test]
    fn keys_with_signal_s_type_byte_and_byte_arrays_are_accepted() {
        let vector = &vectors()["accounts"][0];
        let mut creds = creds_of(vector);
        let prefixed = [&[DJB_TYPE][..], &bytes(&vector["accountPublic"])].concat();
        creds["account"]["accountSignatureKey"] = json!({"type": "Buffer", "data": prefixed});
        let identity_prefixed = [&[DJB_TYPE][..], &bytes(&vector["identityPublic"])].concat();
        creds["signedIdentityKey"]["public"] =
            json!(base64::engine::general_purpose::STANDARD.encode(identity_prefixed));
        assert!(verify_account(&creds).is_ok());
    }

    #[test]
    fn a_forged_or_mixed_identity_is_refused_with_the_reason() {
        let vectors = vectors();
        let [first, second] = [&vectors["accounts"][0], &vectors["accounts"][1]];
        // Another account's key claiming this identity.
        let mut forged = creds_of(first);
        forged["account"]["accountSignatureKey"] = b64(&second["accountPublic"]);
        assert_eq!(verify_account(&forged), Err(AccountError::AccountSignature));
        // The account's signature moved onto another device key.
        let mut moved = creds_of(first);
        moved["signedIdentityKey"]["public"] = b64(&second["identityPublic"]);
        assert_eq!(verify_account(&moved), Err(AccountError::AccountSignature));
        // A valid account signature with a bad device signature.
        let mut device = creds_of(first);
        device["account"]["deviceSignature"] = b64(&second["deviceSignature"]);
        assert_eq!(verify_account(&device), Err(AccountError::DeviceSignature));
        // Edited details (a newer timestamp, say) no longer verify.
        let mut edited = creds_of(first);
        let mut details = bytes(&first["details"]);
        *details.last_mut().unwrap() ^= 1;
        edited["account"]["details"] =
            json!({"type": "Buffer", "data": base64::engine::general_purpose::STANDARD.encode(details)});
        assert_eq!(verify_account(&edited), Err(AccountError::AccountSignature));
    }

    #[test]
    fn missing_or_malformed_fields_are_named() {
        let good = creds_of(&vectors()["accounts"][0]);
        let cases: [(&str, Value, AccountError); 5] = [
            ("account", Value::Null, AccountError::Missing("account")),
            ("details", Value::Null, AccountError::Missing("account.details")),
            ("accountSignatureKey", json!("AAAA"), AccountError::BadKey("account.accountSignatureKey")),
            ("accountSignature", json!("AAAA"), AccountError::BadSignatureBytes("account.accountSignature")),
            ("deviceSignature", json!({"type": "Buffer"}), AccountError::Missing("account.deviceSignature")),
        ];
        for (field, value, expected) in cases {
            let mut creds = good.clone();
            if field == "account" {
                creds.remove("account");
            } else if value.is_null() {
                creds["account"].as_object_mut().unwrap().remove(field);
            } else {
                creds["account"][field] = value;
            }
            assert_eq!(verify_account(&creds), Err(expected), "{field}");
        }
        let mut no_identity = good.clone();
        no_identity.remove("signedIdentityKey");
        assert_eq!(verify_account(&no_identity), Err(AccountError::Missing("signedIdentityKey.public")));
    }

    #[test]
    fn own_signatures_verify_under_curve25519_js_rules_with_both_sign_bits() {
        let mut bits = [0, 0];
        for n in 0u8..16 {
            let private = [n.wrapping_mul(37).wrapping_add(1); 32];
            let signature = xeddsa_sign(&private, b"message");
            assert!(xeddsa_verify(&public_key(&private), b"message", &signature));
            assert!(!xeddsa_verify(&public_key(&private), b"massage", &signature));
            bits[usize::from(signature[63] >> 7)] += 1;
        }
        assert!(bits[0] > 0 && bits[1] > 0, "{bits:?}");
        // The public key matches curve25519-js's for the vector identities.
        for vector in vectors()["accounts"].as_array().unwrap() {
            let private: [u8; 32] = bytes(&vector["identityPrivate"]).try_into().unwrap();
            assert_eq!(public_key(&private).to_vec(), bytes(&vector["identityPublic"]));
        }
    }

    #[test]
    fn a_signed_account_verifies_and_reads_back() {
        let details = IdentityDetails { raw_id: 7, timestamp: 1_800_000_000, key_index: 3 };
        let identity_private = [9u8; 32];
        let mut creds = Map::new();
        creds.insert("signedIdentityKey".into(), json!({"public": baileys_buffer(&public_key(&identity_private))}));
        creds.insert("account".into(), signed_account(&[4u8; 32], &identity_private, details));
        let identity = verify_account(&creds).unwrap();
        assert_eq!(identity.account_key, public_key(&[4u8; 32]));
        assert_eq!((identity.raw_id, identity.timestamp, identity.key_index), (7, 1_800_000_000, 3));
    }

    #[test]
    fn a_bare_key_that_happens_to_start_with_the_type_byte_is_read_whole() {
        // About one key in 256 begins with 0x05; it is not a prefix then.
        let private = (0u16..4096)
            .map(|n| {
                let mut key = [7u8; 32];
                key[..2].copy_from_slice(&n.to_le_bytes());
                key
            })
            .find(|key| public_key(key)[0] == DJB_TYPE)
            .unwrap();
        let identity_private = [9u8; 32];
        let details = IdentityDetails { raw_id: 1, timestamp: 1, key_index: 1 };
        let mut creds = Map::new();
        creds.insert("signedIdentityKey".into(), json!({"public": baileys_buffer(&public_key(&identity_private))}));
        creds.insert("account".into(), signed_account(&private, &identity_private, details));
        assert_eq!(verify_account(&creds).unwrap().account_key, public_key(&private));
    }

    #[test]
    fn garbage_keys_never_panic() {
        for key in [[0u8; 32], [0xff; 32], [1; 32]] {
            assert!(!xeddsa_verify(&key, b"m", &[0u8; 64]));
            assert!(!xeddsa_verify(&key, b"m", &[0xff; 64]));
        }
    }
}
