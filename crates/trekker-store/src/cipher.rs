//! Encryption of credentials at rest (invariant 6): AES-256-GCM.
//!
//! Every write draws a fresh random 96-bit nonce; the row's id (bot id or
//! pairing request id) is the associated data, so a ciphertext copied onto
//! another row does not decrypt. The key id (first 8 hex digits of the
//! key's SHA-256) is stored beside each ciphertext so a later key rotation
//! can tell which key sealed what.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::StoreError;

/// Length of a credentials key in bytes.
pub const KEY_LEN: usize = 32;

/// A sealed secret as it is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The encrypted bytes and their tag.
    pub ciphertext: Vec<u8>,
    /// The 12-byte nonce, random per seal.
    pub nonce: Vec<u8>,
    /// Which key sealed it (a digest of the key, never the key).
    pub key_id: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Seals and opens credentials with one AES-256-GCM key.
pub struct CredentialCipher {
    key: LessSafeKey,
    key_id: String,
    rng: SystemRandom,
    /// Derives purpose-bound secrets from the same key (see [`Self::subkey`]).
    derive: ring::hmac::Key,
}

impl fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialCipher").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

impl CredentialCipher {
    /// A cipher with `key` (AES-256-GCM).
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let key_id = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes a 32-byte key");
        let derive = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        Self { key: LessSafeKey::new(unbound), key_id, rng: SystemRandom::new(), derive }
    }

    /// A 32-byte secret for `purpose`, derived from this key
    /// (HMAC-SHA256): the same on every node that shares the key, useless
    /// for anything but its purpose, and revealing nothing of the key.
    pub fn subkey(&self, purpose: &str) -> [u8; 32] {
        let tag = ring::hmac::sign(&self.derive, purpose.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Parses the `CREDENTIALS_KEY` setting: 32 bytes, base64.
    pub fn from_base64(text: &str) -> Result<Self, StoreError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| StoreError::Config("CREDENTIALS_KEY is not valid base64".into()))?;
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| StoreError::Config("CREDENTIALS_KEY must decode to exactly 32 bytes".into()))?;
        Ok(Self::new(&key))
    }

    /// Loads the key of an existing key file; never creates one.
    pub fn load_key_file(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| StoreError::Config(format!("cannot read key file {}: {err}", path.display())))?;
        Self::from_base64(&text)
            .map_err(|_| StoreError::Config(format!("key file {} does not hold a 32-byte base64 key", path.display())))
    }

    /// Reads the key file at `path`, or creates it (mode 0600) with a new
    /// random key. Used beside a SQLite database when no key is configured.
    pub fn load_or_create_key_file(path: &Path) -> Result<Self, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text).map_err(|_| {
                StoreError::Config(format!("key file {} does not hold a 32-byte base64 key", path.display()))
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                SystemRandom::new().fill(&mut key).map_err(|_| StoreError::Config("no system randomness".into()))?;
                write_new_secret_file(path, &base64::engine::general_purpose::STANDARD.encode(key))?;
                tracing::info!(path = %path.display(), "generated a new credentials key file");
                Ok(Self::new(&key))
            }
            Err(err) => Err(StoreError::Config(format!("cannot read key file {}: {err}", path.display()))),
        }
    }

    /// The key's id, stored beside what it sealed.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `plaintext`, bound to `row_id`.
    ///
    /// What is sealed for one row opens only for that row, and only with
    /// the same key:
    ///
    /// ```
    /// use trekker_store::{CredentialCipher, KEY_LEN};
    ///
    /// let cipher = CredentialCipher::new(&[1; KEY_LEN]);
    /// let sealed = cipher.seal("bot-1", b"{\"creds\": 1}")?;
    /// assert_eq!(cipher.open("bot-1", &sealed)?, b"{\"creds\": 1}");
    /// assert!(cipher.open("bot-2", &sealed).is_err(), "bound to its row");
    /// assert!(CredentialCipher::new(&[2; KEY_LEN]).open("bot-1", &sealed).is_err());
    /// # Ok::<(), trekker_store::StoreError>(())
    /// ```
    pub fn seal(&self, row_id: &str, plaintext: &[u8]) -> Result<Sealed, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| StoreError::Config("no system randomness".into()))?;
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(row_id.as_bytes()), &mut buffer)
            .map_err(|_| StoreError::Decrypt)?;
        Ok(Sealed { ciphertext: buffer, nonce: nonce.to_vec(), key_id: self.key_id.clone() })
    }

    /// Decrypts what [`seal`](Self::seal) produced for the same `row_id`.
    pub fn open(&self, row_id: &str, sealed: &Sealed) -> Result<Vec<u8>, StoreError> {
        if sealed.key_id != self.key_id {
            return Err(StoreError::Decrypt);
        }
        let nonce: [u8; NONCE_LEN] = sealed.nonce.as_slice().try_into().map_err(|_| StoreError::Decrypt)?;
        let mut buffer = sealed.ciphertext.clone();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(row_id.as_bytes()), &mut buffer)
            .map_err(|_| StoreError::Decrypt)?;
        Ok(plain.to_vec())
    }
}

fn write_new_secret_file(path: &Path, contents: &str) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|err| StoreError::Config(format!("cannot create key file {}: {err}", path.display())))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|err| StoreError::Config(format!("cannot write key file {}: {err}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_bound_to_row() {
        let cipher = CredentialCipher::new(&[7u8; KEY_LEN]);
        let sealed = cipher.seal("bot-1", b"secret creds").unwrap();
        // The plaintext appears nowhere in the ciphertext (a length check
        // could not fail: the tag alone makes it longer).
        assert!(!sealed.ciphertext.windows(6).any(|w| b"secret creds".windows(6).any(|p| p == w)));
        assert_eq!(cipher.open("bot-1", &sealed).unwrap(), b"secret creds");
        assert!(matches!(cipher.open("bot-2", &sealed), Err(StoreError::Decrypt)));
        let other = CredentialCipher::new(&[8u8; KEY_LEN]);
        assert!(matches!(other.open("bot-1", &sealed), Err(StoreError::Decrypt)));
        // A fresh nonce per write.
        assert_ne!(cipher.seal("bot-1", b"x").unwrap().nonce, cipher.seal("bot-1", b"x").unwrap().nonce);
        assert_eq!(cipher.key_id().len(), 8);
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trekker.db.key");
        let first = CredentialCipher::load_or_create_key_file(&path).unwrap();
        let second = CredentialCipher::load_or_create_key_file(&path).unwrap();
        assert_eq!(first.key_id(), second.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn subkeys_are_stable_per_key_and_purpose() {
        let cipher = CredentialCipher::new(&[7u8; KEY_LEN]);
        assert_eq!(cipher.subkey("a"), CredentialCipher::new(&[7u8; KEY_LEN]).subkey("a"));
        assert_ne!(cipher.subkey("a"), cipher.subkey("b"));
        assert_ne!(cipher.subkey("a"), CredentialCipher::new(&[8u8; KEY_LEN]).subkey("a"));
        assert_ne!(cipher.subkey("a"), [7u8; KEY_LEN]);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(CredentialCipher::from_base64("not base64!").is_err());
        assert!(CredentialCipher::from_base64("AAAA").is_err());
        let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert!(CredentialCipher::from_base64(&key).is_ok());
    }
}
