//! The session ID codec: `TREKKER~` + base64 of a Baileys `creds.json`.
//!
//! Accepted input (API.md, "Session ID"): the prefix is optional; base64 may
//! use the standard or the url-safe alphabet, with or without padding; the
//! decoded bytes are UTF-8 JSON, either the creds at the root or wrapped as
//! `{"creds": {...}, "keys": {...}}`. The phone number comes from `me.id`
//! only (the digits before the first `:` or `@`), never from `me.lid` nor
//! from a scan of other fields.
//!
//! Failures split in two: [`SessionError`] (not decodable: INVALID_SESSION)
//! and [`CredentialsError`] (decodes, but is not Baileys credentials:
//! INVALID_CREDENTIALS). Neither ever repeats the input, which is a secret.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use crate::account::{AccountError, DeviceIdentity, verify_account};
use crate::phone::PhoneNumber;

/// The prefix Trekker puts in front of every session ID it issues.
pub const SESSION_PREFIX: &str = "TREKKER~";

/// The largest decoded credentials document accepted (5 MiB).
pub const MAX_CREDENTIALS_BYTES: usize = 5 * 1024 * 1024;

/// The fields a Baileys `creds.json` must have for a bot to log in.
pub const REQUIRED_FIELDS: [&str; 4] = ["noiseKey", "signedIdentityKey", "signedPreKey", "registrationId"];

const DECODE_CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, DECODE_CONFIG);
const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, DECODE_CONFIG);

/// The session ID could not be decoded at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Session ID is empty.
    #[error("Session ID is empty.")]
    Empty,
    /// Session ID is too large (the credentials may be at most 5 MiB).
    #[error("Session ID is too large (the credentials may be at most 5 MiB).")]
    TooLarge,
    /// Session ID is not valid base64. Copy the whole session ID, including the TREKKER~ prefix.
    #[error("Session ID is not valid base64. Copy the whole session ID, including the TREKKER~ prefix.")]
    NotBase64,
    /// Session ID does not decode to UTF-8 text.
    #[error("Session ID does not decode to UTF-8 text.")]
    NotUtf8,
    /// Session ID does not decode to JSON.
    #[error("Session ID does not decode to JSON.")]
    NotJson,
    /// Session ID does not decode to a JSON object.
    #[error("Session ID does not decode to a JSON object.")]
    NotObject,
}

/// The document decodes but is not usable Baileys credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Invalid credentials: `…` is missing.
    #[error("Invalid credentials: `{0}` is missing.")]
    MissingField(&'static str),
    /// Invalid credentials: `creds` must be a JSON object.
    #[error("Invalid credentials: `creds` must be a JSON object.")]
    CredsNotObject,
    /// Invalid credentials: `me.id` is missing; pair the phone again.
    #[error("Invalid credentials: `me.id` is missing; pair the phone again.")]
    MissingMeId,
    /// Invalid credentials: `me.id` does not hold a valid phone number.
    #[error("Invalid credentials: `me.id` does not hold a valid phone number.")]
    BadMeId,
    /// Invalid credentials: the credentials are larger than 5 MiB.
    #[error("Invalid credentials: the credentials are larger than 5 MiB.")]
    TooLarge,
    /// Invalid credentials: not valid JSON.
    #[error("Invalid credentials: not valid JSON.")]
    NotJson,
    /// `creds.account` does not prove which WhatsApp account paired the
    /// session (API.md, "Session ID").
    #[error("Invalid credentials: {0}.")]
    Account(#[from] AccountError),
}

/// Either failure of [`Credentials::from_session_id`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    /// The session ID itself could not be read.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// It decoded, but the credentials in it are not usable.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// Checked Baileys credentials and the phone number they belong to.
///
/// Holds a secret: `Debug` shows only the phone, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The decoded document exactly as given (root creds or `{creds, keys}`).
    document: String,
    phone: PhoneNumber,
    /// The verified device identity: which WhatsApp account paired it.
    identity: DeviceIdentity,
}

impl Credentials {
    /// Decodes and checks a session ID (`TREKKER~...` or bare base64).
    pub fn from_session_id(session_id: &str) -> Result<Self, SessionIdError> {
        let bytes = decode_session_bytes(session_id)?;
        let text = String::from_utf8(bytes).map_err(|_| SessionError::NotUtf8)?;
        let value: Value = serde_json::from_str(&text).map_err(|_| SessionError::NotJson)?;
        if !value.is_object() {
            return Err(SessionError::NotObject.into());
        }
        let (phone, identity) = check_document(&value)?;
        Ok(Self { document: text, phone, identity })
    }

    /// Checks a creds.json given as JSON text (an uploaded file).
    pub fn from_json_text(text: &str) -> Result<Self, CredentialsError> {
        if text.len() > MAX_CREDENTIALS_BYTES {
            return Err(CredentialsError::TooLarge);
        }
        let value: Value = serde_json::from_str(text).map_err(|_| CredentialsError::NotJson)?;
        let (phone, identity) = check_document(&value)?;
        Ok(Self { document: text.to_owned(), phone, identity })
    }

    /// Checks a creds.json given as an already parsed JSON value.
    pub fn from_json_value(value: &Value) -> Result<Self, CredentialsError> {
        let (phone, identity) = check_document(value)?;
        let document = value.to_string();
        if document.len() > MAX_CREDENTIALS_BYTES {
            return Err(CredentialsError::TooLarge);
        }
        Ok(Self { document, phone, identity })
    }

    /// The phone number from `me.id`.
    pub fn phone(&self) -> &PhoneNumber {
        &self.phone
    }

    /// Which WhatsApp account signed this session, and when.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// The whole decoded document, as JSON text. Secret.
    pub fn document(&self) -> &str {
        &self.document
    }

    /// The `creds.json` a Baileys bot loads (the inner `creds` when wrapped).
    pub fn creds_json(&self) -> String {
        match serde_json::from_str::<Value>(&self.document) {
            Ok(Value::Object(mut root)) => match root.remove("creds") {
                Some(creds @ Value::Object(_)) => creds.to_string(),
                _ => self.document.clone(),
            },
            _ => self.document.clone(),
        }
    }

    /// Encodes these credentials as a `TREKKER~` session ID.
    pub fn to_session_id(&self) -> String {
        encode_session_id(&self.document)
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("phone", &self.phone).field("document", &"<redacted>").finish()
    }
}

/// Encodes a JSON document as `TREKKER~` + standard padded base64.
pub fn encode_session_id(json: &str) -> String {
    format!("{SESSION_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(json))
}

/// The phone number in a Baileys `me.id` (`254712345678:12@s.whatsapp.net`).
pub fn phone_from_me_id(me_id: &str) -> Result<PhoneNumber, CredentialsError> {
    let user = me_id.split([':', '@']).next().unwrap_or_default();
    if user.is_empty() || !user.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CredentialsError::BadMeId);
    }
    PhoneNumber::parse(user).map_err(|_| CredentialsError::BadMeId)
}

fn decode_session_bytes(session_id: &str) -> Result<Vec<u8>, SessionError> {
    let trimmed = session_id.trim();
    let payload = trimmed.strip_prefix(SESSION_PREFIX).unwrap_or(trimmed).trim();
    if payload.is_empty() {
        return Err(SessionError::Empty);
    }
    // Base64 grows data by 4/3; refuse before decoding anything huge.
    if payload.len() > MAX_CREDENTIALS_BYTES / 3 * 4 + 8 {
        return Err(SessionError::TooLarge);
    }
    let engine = if payload.contains(['-', '_']) { &URL_SAFE_ANY_PADDING } else { &STANDARD_ANY_PADDING };
    let bytes = engine.decode(payload).map_err(|_| SessionError::NotBase64)?;
    if bytes.len() > MAX_CREDENTIALS_BYTES {
        return Err(SessionError::TooLarge);
    }
    Ok(bytes)
}

/// Checks the creds inside `document`: the phone of `me.id`, and the
/// verified device identity.
fn check_document(document: &Value) -> Result<(PhoneNumber, DeviceIdentity), CredentialsError> {
    let root = document.as_object().ok_or(CredentialsError::CredsNotObject)?;
    let creds = match root.get("creds") {
        Some(Value::Object(inner)) => inner,
        Some(_) => return Err(CredentialsError::CredsNotObject),
        None => root,
    };
    check_creds(creds)
}

fn check_creds(creds: &Map<String, Value>) -> Result<(PhoneNumber, DeviceIdentity), CredentialsError> {
    for field in REQUIRED_FIELDS {
        match creds.get(field) {
            None | Some(Value::Null) => return Err(CredentialsError::MissingField(field)),
            Some(_) => {}
        }
    }
    let me_id = creds.get("me").and_then(|me| me.get("id")).ok_or(CredentialsError::MissingMeId)?;
    let me_id = me_id.as_str().ok_or(CredentialsError::BadMeId)?;
    let phone = phone_from_me_id(me_id)?;
    Ok((phone, verify_account(creds)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{IdentityDetails, baileys_buffer, public_key, signed_account};
    use proptest::prelude::*;
    use serde_json::json;

    fn creds(me_id: &str) -> Value {
        let identity_private = [3u8; 32];
        let details = IdentityDetails { raw_id: 1, timestamp: 1_700_000_000, key_index: 0 };
        json!({
            "noiseKey": {"private": "a", "public": "b"},
            "signedIdentityKey": {
                "private": baileys_buffer(&identity_private),
                "public": baileys_buffer(&public_key(&identity_private)),
            },
            "signedPreKey": {"keyPair": {}, "signature": "e", "keyId": 1},
            "registrationId": 42,
            "me": {"id": me_id, "lid": "99999999999999:1@lid"},
            "account": signed_account(&[5u8; 32], &identity_private, details),
        })
    }

    #[test]
    fn decodes_prefixed_standard_base64() {
        let doc = creds("254712345678:12@s.whatsapp.net").to_string();
        let parsed = Credentials::from_session_id(&encode_session_id(&doc)).unwrap();
        assert_eq!(parsed.phone().as_str(), "254712345678");
        assert_eq!(parsed.document(), doc);
    }

    #[test]
    fn accepts_bare_url_safe_unpadded_and_wrapped() {
        let doc = json!({"creds": creds("254712345678@s.whatsapp.net"), "keys": {}}).to_string();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&doc);
        let parsed = Credentials::from_session_id(&url).unwrap();
        assert_eq!(parsed.phone().as_str(), "254712345678");
        assert!(parsed.creds_json().contains("registrationId"));
        assert!(!parsed.creds_json().contains("keys"));
    }

    #[test]
    fn lid_is_never_the_phone() {
        let mut doc = creds("x");
        doc["me"] = json!({"lid": "254712345678:1@lid"});
        let err = Credentials::from_json_value(&doc).unwrap_err();
        assert_eq!(err, CredentialsError::MissingMeId);
    }

    #[test]
    fn each_failure_is_typed() {
        use SessionIdError::{Credentials as Creds, Session};
        let decode = super::Credentials::from_session_id;
        assert_eq!(decode("  ").unwrap_err(), Session(SessionError::Empty));
        assert_eq!(decode("TREKKER~").unwrap_err(), Session(SessionError::Empty));
        assert_eq!(decode("TREKKER~!!!").unwrap_err(), Session(SessionError::NotBase64));
        assert_eq!(decode(&encode_session_id("not json")).unwrap_err(), Session(SessionError::NotJson));
        assert_eq!(decode(&encode_session_id("[1]")).unwrap_err(), Session(SessionError::NotObject));
        let invalid_utf8 =
            format!("{SESSION_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe]));
        assert_eq!(decode(&invalid_utf8).unwrap_err(), Session(SessionError::NotUtf8));
        let mut doc = creds("254712345678@s.whatsapp.net");
        doc.as_object_mut().unwrap().remove("signedPreKey");
        assert_eq!(
            decode(&encode_session_id(&doc.to_string())).unwrap_err(),
            Creds(CredentialsError::MissingField("signedPreKey"))
        );
        let doc = creds("abc@s.whatsapp.net").to_string();
        assert_eq!(decode(&encode_session_id(&doc)).unwrap_err(), Creds(CredentialsError::BadMeId));
        let wrapped = json!({"creds": 5}).to_string();
        assert_eq!(decode(&encode_session_id(&wrapped)).unwrap_err(), Creds(CredentialsError::CredsNotObject));
        // Without a signed device identity: which field, and why.
        let mut unsigned = creds("254712345678@s.whatsapp.net");
        unsigned.as_object_mut().unwrap().remove("account");
        let err = decode(&encode_session_id(&unsigned.to_string())).unwrap_err();
        assert_eq!(err, Creds(CredentialsError::Account(AccountError::Missing("account"))));
        assert_eq!(err.to_string(), "Invalid credentials: `account` is missing; pair the phone again.");
        let mut forged = creds("254712345678@s.whatsapp.net");
        forged["account"]["accountSignatureKey"] = baileys_buffer(&public_key(&[6u8; 32]));
        let err = decode(&encode_session_id(&forged.to_string())).unwrap_err();
        assert_eq!(err, Creds(CredentialsError::Account(AccountError::AccountSignature)));
    }

    #[test]
    fn five_mebibytes_is_the_limit_exactly() {
        assert_eq!(MAX_CREDENTIALS_BYTES, 5_242_880);
        // A document of exactly the limit is accepted, one byte more is not.
        let base = creds("254712345678@s.whatsapp.net");
        let mut doc = base.clone();
        doc["pad"] = json!("");
        let room = MAX_CREDENTIALS_BYTES - doc.to_string().len();
        doc["pad"] = json!("x".repeat(room));
        assert_eq!(doc.to_string().len(), MAX_CREDENTIALS_BYTES);
        assert!(Credentials::from_json_value(&doc).is_ok());
        assert!(Credentials::from_json_text(&doc.to_string()).is_ok());
        doc["pad"] = json!("x".repeat(room + 1));
        assert_eq!(Credentials::from_json_value(&doc).unwrap_err(), CredentialsError::TooLarge);
        assert_eq!(Credentials::from_json_text(&doc.to_string()).unwrap_err(), CredentialsError::TooLarge);
        // A session ID decoding to exactly the limit is read (and is no JSON).
        let exactly = format!("{}AAA=", "A".repeat(6_990_504));
        assert_eq!(Credentials::from_session_id(&exactly).unwrap_err(), SessionIdError::Session(SessionError::NotJson));
        let over = "A".repeat(6_990_516);
        assert_eq!(Credentials::from_session_id(&over).unwrap_err(), SessionIdError::Session(SessionError::TooLarge));
    }

    #[test]
    fn the_phone_is_the_bare_digits_of_me_id() {
        assert_eq!(phone_from_me_id("254712345678:3@s.whatsapp.net").unwrap().as_str(), "254712345678");
        for bad in ["+254712345678@s.whatsapp.net", ":3@s.whatsapp.net", "", "2547 12345678@x", "12@x"] {
            assert_eq!(phone_from_me_id(bad).unwrap_err(), CredentialsError::BadMeId, "{bad}");
        }
    }

    #[test]
    fn refuses_oversized_input_before_decoding() {
        let huge = "A".repeat(MAX_CREDENTIALS_BYTES * 2);
        assert_eq!(Credentials::from_session_id(&huge).unwrap_err(), SessionIdError::Session(SessionError::TooLarge));
    }

    #[test]
    fn debug_redacts_the_document() {
        let doc = creds("254712345678@s.whatsapp.net").to_string();
        let parsed = Credentials::from_json_text(&doc).unwrap();
        let shown = format!("{parsed:?}");
        assert!(!shown.contains("noiseKey"));
        assert!(shown.contains("254712345678"));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_strings(input in any::<String>()) {
            let _ = Credentials::from_session_id(&input);
        }

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let encoded = encode_session_id(&String::from_utf8_lossy(&bytes));
            let _ = Credentials::from_session_id(&encoded);
            let raw = format!("{SESSION_PREFIX}{}", base64::engine::general_purpose::STANDARD.encode(&bytes));
            let _ = Credentials::from_session_id(&raw);
        }

        #[test]
        fn round_trips(phone in "[1-9][0-9]{9,14}", device in 0u32..100, registration in any::<u32>()) {
            let mut doc = creds(&format!("{phone}:{device}@s.whatsapp.net"));
            doc["registrationId"] = json!(registration);
            let original = Credentials::from_json_value(&doc).unwrap();
            let decoded = Credentials::from_session_id(&original.to_session_id()).unwrap();
            prop_assert_eq!(decoded.phone().as_str(), phone.as_str());
            prop_assert_eq!(&decoded, &original);
        }
    }
}
