//! A Baileys `creds.json` (what a Trekker session ID carries) as
//! whatsapp-rust's `Device`, and back. Pure: no I/O, no clock.
//!
//! Everything that identifies the device moves across: the noise key, the
//! signed identity key, the signed pre-key with its id and signature, the
//! registration id, the adv secret, `me.id` / `me.lid` / `me.name`, and the
//! signed device identity (`account`) byte for byte, because Trekker's
//! ownership check (invariant 8) reads it. Hostile input is refused with a
//! typed error: a key pair whose public half is not its private half's, a
//! signed pre-key its identity key did not sign, an `account` whose
//! signatures do not verify.
//!
//! Private keys are kept clamped (as Curve25519 uses them, and as Baileys'
//! own key generation writes them): an unclamped private key from elsewhere
//! comes back clamped, the same key.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use trekker_domain::account::{self, AccountError, baileys_buffer, public_key, verify_account, xeddsa_verify};
use whatsapp_rust::Jid;
use whatsapp_rust::wacore::libsignal::protocol::{KeyPair, PrivateKey, PublicKey};
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::waproto::whatsapp as wa;

/// Signal's type byte in front of a Curve25519 public key.
const DJB_TYPE: u8 = 0x05;

/// Why a `creds.json` (or a `Device`) cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{0}` is not a 32-byte key")]
    BadKey(&'static str),
    #[error("`{0}`: the public key is not the private key's")]
    KeyMismatch(&'static str),
    #[error("`signedPreKey.signature` is not the identity key's signature of the signed pre-key")]
    SignedPreKeySignature,
    #[error("`{0}` is not a number in range")]
    BadNumber(&'static str),
    #[error("`{0}` is not a WhatsApp address")]
    BadJid(&'static str),
    #[error(transparent)]
    Account(#[from] AccountError),
}

/// whatsapp-rust's device state for a Baileys `creds.json` (the object
/// itself, or `{"creds": ...}` as some exporters wrap it).
pub fn device_from_creds(document: &Value) -> Result<Device, ConversionError> {
    let creds = creds_object(document)?;
    let noise_key = key_pair(creds.get("noiseKey"), "noiseKey")?;
    let identity_key = key_pair(creds.get("signedIdentityKey"), "signedIdentityKey")?;
    let signed = creds.get("signedPreKey").ok_or(ConversionError::Missing("signedPreKey"))?;
    let signed_pre_key = key_pair(signed.get("keyPair"), "signedPreKey.keyPair")?;
    let signature: [u8; 64] = bytes(signed.get("signature"), "signedPreKey.signature")?
        .try_into()
        .map_err(|_| ConversionError::SignedPreKeySignature)?;
    let identity_public: [u8; 32] = bare_key(identity_key.public_key.public_key_bytes(), "signedIdentityKey")?;
    let pre_key_public: [u8; 32] = bare_key(signed_pre_key.public_key.public_key_bytes(), "signedPreKey.keyPair")?;
    if !xeddsa_verify(&identity_public, &[&[DJB_TYPE][..], &pre_key_public].concat(), &signature) {
        return Err(ConversionError::SignedPreKeySignature);
    }
    // The ownership proof must verify here too: a converted session is
    // registered like any other.
    verify_account(creds)?;
    let account_object = creds.get("account").ok_or(ConversionError::Missing("account"))?;
    let account = wa::ADVSignedDeviceIdentity {
        details: Some(bytes(account_object.get("details"), "account.details")?),
        account_signature_key: Some(bytes(account_object.get("accountSignatureKey"), "account.accountSignatureKey")?),
        account_signature: Some(bytes(account_object.get("accountSignature"), "account.accountSignature")?),
        device_signature: Some(bytes(account_object.get("deviceSignature"), "account.deviceSignature")?),
    };
    let me = creds.get("me").ok_or(ConversionError::Missing("me"))?;
    let mut device = Device::new();
    device.noise_key = noise_key;
    device.identity_key = identity_key;
    device.signed_pre_key = signed_pre_key;
    device.signed_pre_key_signature = signature;
    device.signed_pre_key_id = number(signed.get("keyId"), "signedPreKey.keyId")?;
    device.registration_id = number(creds.get("registrationId"), "registrationId")?;
    device.adv_secret_key = bytes(creds.get("advSecretKey"), "advSecretKey")?
        .try_into()
        .map_err(|_| ConversionError::BadKey("advSecretKey"))?;
    device.account = Some(Arc::new(account));
    device.pn = Some(jid(me.get("id"), "me.id")?);
    device.lid = me.get("lid").filter(|v| !v.is_null()).map(|v| jid(Some(v), "me.lid")).transpose()?;
    device.push_name = me.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    Ok(device)
}

/// The Baileys `creds.json` of a device (buffers as Baileys writes them),
/// e.g. to hand a real pairing to the guest as a `TREKKER~` session ID.
/// `platform` is the phone's, as the pairing reported it (whatsapp-rust's
/// device state does not keep it).
pub fn creds_from_device(device: &Device, platform: &str) -> Result<Value, ConversionError> {
    let account = device.account.as_deref().ok_or(ConversionError::Missing("account"))?;
    let field = |value: &Option<Vec<u8>>, name: &'static str| {
        value.as_deref().map(baileys_buffer).ok_or(ConversionError::Missing(name))
    };
    let pn = device.pn.as_ref().ok_or(ConversionError::Missing("me.id"))?;
    let mut me = json!({"id": pn.to_string()});
    if let Some(lid) = &device.lid {
        me["lid"] = json!(lid.to_string());
    }
    if !device.push_name.is_empty() {
        me["name"] = json!(device.push_name);
    }
    Ok(json!({
        "noiseKey": key_pair_json(&device.noise_key),
        "signedIdentityKey": key_pair_json(&device.identity_key),
        "signedPreKey": {
            "keyPair": key_pair_json(&device.signed_pre_key),
            "signature": baileys_buffer(&device.signed_pre_key_signature),
            "keyId": device.signed_pre_key_id,
        },
        "registrationId": device.registration_id,
        "advSecretKey": base64::engine::general_purpose::STANDARD.encode(device.adv_secret_key),
        "me": me,
        "account": {
            "details": field(&account.details, "account.details")?,
            "accountSignatureKey": field(&account.account_signature_key, "account.accountSignatureKey")?,
            "accountSignature": field(&account.account_signature, "account.accountSignature")?,
            "deviceSignature": field(&account.device_signature, "account.deviceSignature")?,
        },
        "platform": platform,
        "registered": true,
        "nextPreKeyId": device.next_pre_key_id,
        "firstUnuploadedPreKeyId": device.first_unupload_pre_key_id,
    }))
}

fn creds_object(document: &Value) -> Result<&Map<String, Value>, ConversionError> {
    let object = document.as_object().ok_or(ConversionError::Missing("creds"))?;
    match object.get("creds") {
        Some(Value::Object(inner)) => Ok(inner),
        _ => Ok(object),
    }
}

fn bytes(value: Option<&Value>, field: &'static str) -> Result<Vec<u8>, ConversionError> {
    account::buffer(value, field).map_err(|err| match err {
        AccountError::Missing(field) => ConversionError::Missing(field),
        _ => ConversionError::BadKey(field),
    })
}

/// 32 bytes of a public key, without Signal's type byte if it has one.
fn bare_key(raw: &[u8], field: &'static str) -> Result<[u8; 32], ConversionError> {
    let bare = match raw {
        [DJB_TYPE, rest @ ..] if rest.len() == 32 => rest,
        all => all,
    };
    bare.try_into().map_err(|_| ConversionError::BadKey(field))
}

/// `{private, public}`: both 32 bytes, the public one the private one's.
fn key_pair(value: Option<&Value>, field: &'static str) -> Result<KeyPair, ConversionError> {
    let value = value.ok_or(ConversionError::Missing(field))?;
    let private: [u8; 32] =
        bytes(value.get("private"), field)?.try_into().map_err(|_| ConversionError::BadKey(field))?;
    let public = bare_key(&bytes(value.get("public"), field)?, field)?;
    if public_key(&private) != public {
        return Err(ConversionError::KeyMismatch(field));
    }
    let private_key = PrivateKey::deserialize(&private).map_err(|_| ConversionError::BadKey(field))?;
    let public_key = PublicKey::from_djb_public_key_bytes(&public).map_err(|_| ConversionError::BadKey(field))?;
    Ok(KeyPair::new(public_key, private_key))
}

fn key_pair_json(pair: &KeyPair) -> Value {
    let public = pair.public_key.public_key_bytes();
    json!({"private": baileys_buffer(pair.private_key.serialize()), "public": baileys_buffer(public)})
}

fn number(value: Option<&Value>, field: &'static str) -> Result<u32, ConversionError> {
    let value = value.ok_or(ConversionError::Missing(field))?;
    value.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or(ConversionError::BadNumber(field))
}

fn jid(value: Option<&Value>, field: &'static str) -> Result<Jid, ConversionError> {
    let text = value.and_then(Value::as_str).ok_or(ConversionError::Missing(field))?;
    text.parse().map_err(|_| ConversionError::BadJid(field))
}
