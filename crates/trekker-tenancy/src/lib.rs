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

pub mod client;
pub mod token;
pub mod verify;
pub mod wire;

pub use client::{ClientError, CrossTenancyClient};
pub use token::{Claims, ClusterKeys, TokenRefusal};
pub use verify::RequestVerifier;

/// Unpadded base64url SHA-256 of `bytes` (the `bh` claim, and the
/// idempotency fingerprint of a body).
pub fn body_hash(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}
