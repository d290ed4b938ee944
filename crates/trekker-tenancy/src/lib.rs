//! The cross-tenancy protocol, both sides (DESIGN.md, "Cross-tenancy token").
//!
//! - [`token`]: minting and verifying the HS256 bearer token that binds a
//!   call to its issuer, audience, method, path and exact body.
//! - [`verify`]: a request verifier that adds what needs the database: the
//!   issuer must be a registered server and a token id is accepted once.
//! - [`client`]: `CrossTenancyClient`, which calls another node within a
//!   time budget, retrying only what may succeed on retry.
//! - [`wire`]: the JSON bodies and paths of the internal endpoints.
//!
//! The crate does not know axum: the node wraps [`verify::RequestVerifier`]
//! in an extractor.
//!
//! # Minting and verifying a token
//!
//! Both nodes hold the cluster secret. The caller mints a token for one
//! request; the receiver verifies it against the request it got: another
//! method, path or body, another audience, or a token past its lifetime is
//! refused.
//!
//! ```
//! use trekker_tenancy::{ClusterKeys, TokenRefusal};
//!
//! let keys = ClusterKeys::new("a cluster secret of at least 32 bytes!", None);
//! let (path, body, now) = (trekker_tenancy::wire::CREDENTIALS_PATH, br#"{"botId":"b1"}"#, 1_700_000_000);
//! let token = keys.mint("SERVER0", "SERVER1", "POST", path, body, now);
//!
//! let claims = keys.verify(&token, "SERVER1", "POST", path, body, now + 1).expect("a valid token");
//! assert_eq!(claims.iss, "SERVER0");
//!
//! let tampered = keys.verify(&token, "SERVER1", "POST", path, br#"{"botId":"b2"}"#, now + 1);
//! assert_eq!(tampered.unwrap_err(), TokenRefusal::Body);
//! assert_eq!(keys.verify(&token, "SERVER2", "POST", path, body, now).unwrap_err(), TokenRefusal::Audience);
//! assert_eq!(keys.verify(&token, "SERVER1", "POST", path, body, now + 600).unwrap_err(), TokenRefusal::Expired);
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod token;
pub mod verify;
pub mod wire;

pub use client::{ClientError, CrossTenancyClient};
pub use token::{Claims, ClusterKeys, TokenRefusal};
pub use verify::RequestVerifier;

/// Unpadded base64url SHA-256 of `bytes` (the `bh` claim, and the
/// idempotency fingerprint of a body).
///
/// ```
/// // SHA-256 of the empty body, base64url without padding.
/// assert_eq!(trekker_tenancy::body_hash(b""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
/// ```
pub fn body_hash(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}
