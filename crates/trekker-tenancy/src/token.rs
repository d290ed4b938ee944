//! The node-to-node bearer token: HS256 JWT over the cluster secret.
//!
//! Claims: `iss` (source server), `aud` (target server), `iat`, `exp`
//! (at most 60 s after `iat`), `jti` (128 random bits, hex), `htm` (method),
//! `htu` (path without query), `bh` (unpadded base64url SHA-256 of the body).
//! Header `kid` = first 8 hex digits of SHA-256 of the signing secret.
//! Verification pins HS256, allows 30 s of clock skew, and checks every claim
//! against the request actually received.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::body_hash;

/// The longest token lifetime accepted (seconds).
pub const MAX_LIFETIME_SECS: i64 = 60;
/// Clock skew tolerated between nodes (seconds).
pub const CLOCK_SKEW_SECS: i64 = 30;
/// Lifetime of the tokens this node mints (seconds).
pub const MINTED_LIFETIME_SECS: i64 = 30;
/// The longest token id accepted (ours are 32 hex digits).
pub const MAX_JTI_LEN: usize = 64;

/// The claims of a node-to-node token (DESIGN.md, "Cross-tenancy token").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The calling node.
    pub iss: String,
    /// The node called.
    pub aud: String,
    /// Issued at, epoch seconds.
    pub iat: i64,
    /// Expires at, epoch seconds (at most 60 s after `iat`).
    pub exp: i64,
    /// A random id, accepted once.
    pub jti: String,
    /// The request's method.
    pub htm: String,
    /// The request's path, without its query.
    pub htu: String,
    /// The base64url SHA-256 of the request body.
    pub bh: String,
}

/// Why a token was refused. `reason()` labels the refusal metric; the
/// Display text is safe to send back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Missing bearer token.
    #[error("missing bearer token")]
    Missing,
    /// This node has no CLUSTER_SECRET configured.
    #[error("this node has no CLUSTER_SECRET configured")]
    NotConfigured,
    /// Malformed token.
    #[error("malformed token")]
    Malformed,
    /// Algorithm not allowed (HS256 only).
    #[error("algorithm not allowed (HS256 only)")]
    Algorithm,
    /// Unknown key id.
    #[error("unknown key id")]
    UnknownKey,
    /// Bad signature.
    #[error("bad signature")]
    Signature,
    /// Token is for another server.
    #[error("token is for another server")]
    Audience,
    /// Unknown issuer.
    #[error("unknown issuer")]
    Issuer,
    /// Token expired.
    #[error("token expired")]
    Expired,
    /// Token issued in the future.
    #[error("token issued in the future")]
    NotYetValid,
    /// Token lifetime over 60 seconds.
    #[error("token lifetime over 60 seconds")]
    Lifetime,
    /// Token already used.
    #[error("token already used")]
    Replayed,
    /// Token does not match the request method.
    #[error("token does not match the request method")]
    Method,
    /// Token does not match the request path.
    #[error("token does not match the request path")]
    Path,
    /// Token does not match the request body.
    #[error("token does not match the request body")]
    Body,
}

impl TokenRefusal {
    /// A short label for the refusal metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotConfigured => "not_configured",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Audience => "audience",
            Self::Issuer => "issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Lifetime => "lifetime",
            Self::Replayed => "replayed",
            Self::Method => "method",
            Self::Path => "path",
            Self::Body => "body",
        }
    }
}

/// One cluster secret with its key id.
#[derive(Clone)]
struct Key {
    secret: Vec<u8>,
    kid: String,
}

impl Key {
    fn new(secret: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let kid = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self { secret: secret.as_bytes().to_vec(), kid }
    }
}

/// The cluster secret (signs and verifies) and, during a rotation, the
/// previous one (verifies only).
#[derive(Clone)]
pub struct ClusterKeys {
    current: Key,
    previous: Option<Key>,
}

impl fmt::Debug for ClusterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterKeys")
            .field("kid", &self.current.kid)
            .field("previous_kid", &self.previous.as_ref().map(|k| &k.kid))
            .finish()
    }
}

impl ClusterKeys {
    /// Keys from the cluster secret and, during a rotation, the previous one.
    pub fn new(current: &str, previous: Option<&str>) -> Self {
        Self { current: Key::new(current), previous: previous.map(Key::new) }
    }

    /// The current secret's key id (the first 4 bytes of its SHA-256, hex).
    pub fn kid(&self) -> &str {
        &self.current.kid
    }

    /// Mints a token for one request. `now` is epoch seconds.
    pub fn mint(&self, iss: &str, aud: &str, method: &str, path: &str, body: &[u8], now: i64) -> String {
        let claims = Claims {
            iss: iss.to_owned(),
            aud: aud.to_owned(),
            iat: now,
            exp: now + MINTED_LIFETIME_SECS,
            jti: random_jti(),
            htm: method.to_ascii_uppercase(),
            htu: path.split('?').next().unwrap_or(path).to_owned(),
            bh: body_hash(body),
        };
        self.sign(&claims, Some(self.current.kid.clone()))
    }

    /// Signs arbitrary claims with the current secret (tests build bad tokens with it).
    pub fn sign(&self, claims: &Claims, kid: Option<String>) -> String {
        let header = Header { kid, ..Header::new(Algorithm::HS256) };
        // HS256 signing with a byte key cannot fail.
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&self.current.secret)).expect("HS256 signing")
    }

    /// Checks signature, algorithm, audience, times and request binding.
    /// The issuer's membership and the replay guard need the database: see
    /// [`crate::verify::RequestVerifier`].
    pub fn verify(
        &self,
        token: &str,
        me: &str,
        method: &str,
        path: &str,
        body: &[u8],
        now: i64,
    ) -> Result<Claims, TokenRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRefusal::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenRefusal::Algorithm);
        }
        // RFC 7515 4.1.11: a recipient that does not understand a critical
        // extension must refuse the token; we understand none.
        if header.crit.is_some() {
            return Err(TokenRefusal::Malformed);
        }
        let candidates: Vec<&Key> = match &header.kid {
            Some(kid) => {
                let key = std::iter::once(&self.current)
                    .chain(self.previous.iter())
                    .find(|k| &k.kid == kid)
                    .ok_or(TokenRefusal::UnknownKey)?;
                vec![key]
            }
            None => std::iter::once(&self.current).chain(self.previous.iter()).collect(),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        // Times and audience are checked below against our own clock.
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let mut claims = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key.secret), &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(err) => match err.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                    // (Another algorithm never gets here: the header check
                    // above refused it.)
                    _ => return Err(TokenRefusal::Malformed),
                },
            }
        }
        let claims = claims.ok_or(TokenRefusal::Signature)?;
        if claims.aud != me {
            return Err(TokenRefusal::Audience);
        }
        // A replay record lives by `jti`: it must be a real, bounded id.
        if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_LEN || !claims.jti.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(TokenRefusal::Malformed);
        }
        // Checked arithmetic: hostile iat/exp near i64's ends must not wrap
        // into a "valid" lifetime or expiry.
        match claims.exp.checked_sub(claims.iat) {
            Some(lifetime) if lifetime > 0 && lifetime <= MAX_LIFETIME_SECS => {}
            _ => return Err(TokenRefusal::Lifetime),
        }
        if claims.iat > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(TokenRefusal::NotYetValid);
        }
        if claims.exp.saturating_add(CLOCK_SKEW_SECS) < now {
            return Err(TokenRefusal::Expired);
        }
        if claims.htm != method.to_ascii_uppercase() {
            return Err(TokenRefusal::Method);
        }
        if claims.htu != path.split('?').next().unwrap_or(path) {
            return Err(TokenRefusal::Path);
        }
        if claims.bh != body_hash(body) {
            return Err(TokenRefusal::Body);
        }
        Ok(claims)
    }
}

/// 128 random bits as 32 hex digits.
pub fn random_jti() -> String {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).expect("system randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-current";
    const OLD: &str = "0123456789abcdef0123456789abcdef-previous";
    const NOW: i64 = 1_700_000_000;
    const PATH: &str = "/internal/tenants/bots/credentials";

    /// Known answers computed outside this code (Python's `hmac` and
    /// `hashlib`, as another implementation of the protocol would): the key
    /// id, the body hash and a whole token. A change of encoding, separator
    /// or digest on both the minting and the verifying side would still
    /// agree with itself; not with these.
    #[test]
    fn a_token_made_elsewhere_verifies_and_the_key_id_and_body_hash_agree() {
        let keys = ClusterKeys::new("a cluster secret of at least 32 bytes!", None);
        assert_eq!(keys.kid(), "191b6400");
        let body = br#"{"botId":"b1"}"#;
        assert_eq!(crate::body_hash(body), "tbdZibNvq7Z7nYZJi7FLShm84H_GIgsi7pGWdea7sHI");
        let token = concat!(
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjE5MWI2NDAwIn0.",
            "eyJpc3MiOiJTRVJWRVIwIiwiYXVkIjoiU0VSVkVSMSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAwMDAwMDMwLCJqdGkiOiIwMTIz",
            "NDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZiIsImh0bSI6IlBPU1QiLCJodHUiOiIvaW50ZXJuYWwvdGVuYW50cy9ib3RzL2NyZWRl",
            "bnRpYWxzIiwiYmgiOiJ0YmRaaWJOdnE3WjduWVpKaTdGTFNobTg0SF9HSWdzaTdwR1dkZWE3c0hJIn0.",
            "eRNx2QSUKns7x9UJzf0j3vWLmbvcqp4w4LnTPu8qVx0"
        );
        let claims = keys.verify(token, "SERVER1", "POST", PATH, body, NOW + 1).unwrap();
        assert_eq!((claims.iss.as_str(), claims.jti.as_str()), ("SERVER0", "0123456789abcdef0123456789abcdef"));
        let forged = format!("{}A", &token[..token.len() - 1]);
        assert!(keys.verify(&forged, "SERVER1", "POST", PATH, body, NOW + 1).is_err());
    }

    fn keys() -> ClusterKeys {
        ClusterKeys::new(SECRET, None)
    }

    fn verify(keys: &ClusterKeys, token: &str) -> Result<Claims, TokenRefusal> {
        keys.verify(token, "SERVER1", "POST", PATH, b"{}", NOW)
    }

    #[test]
    fn refusal_reasons_are_stable_metric_labels() {
        use TokenRefusal as R;
        let all = [
            (R::Missing, "missing"),
            (R::NotConfigured, "not_configured"),
            (R::Malformed, "malformed"),
            (R::Algorithm, "algorithm"),
            (R::UnknownKey, "unknown_key"),
            (R::Signature, "signature"),
            (R::Audience, "audience"),
            (R::Issuer, "issuer"),
            (R::Expired, "expired"),
            (R::NotYetValid, "not_yet_valid"),
            (R::Lifetime, "lifetime"),
            (R::Replayed, "replayed"),
            (R::Method, "method"),
            (R::Path, "path"),
            (R::Body, "body"),
        ];
        for (refusal, label) in all {
            assert_eq!(refusal.reason(), label);
        }
    }

    #[test]
    fn debug_shows_key_ids_never_secrets() {
        let shown = format!("{:?}", ClusterKeys::new(SECRET, Some(OLD)));
        assert!(shown.contains(&keys().current.kid) && shown.contains("previous_kid"), "{shown}");
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
    }

    /// Signs arbitrary claims with the current key, as an attacker holding
    /// the secret could.
    fn forged(change: impl FnOnce(&mut Claims)) -> String {
        let token = keys().mint("SERVER0", "SERVER1", "POST", PATH, b"{}", NOW);
        let mut claims = verify(&keys(), &token).unwrap();
        change(&mut claims);
        keys().sign(&claims, Some(keys().current.kid.clone()))
    }

    #[test]
    fn hostile_times_never_wrap_into_a_valid_token() {
        let cases: [(i64, i64); 5] =
            [(i64::MIN, i64::MAX - 30), (i64::MIN, i64::MAX), (NOW, NOW), (NOW + 10, NOW), (i64::MAX - 5, i64::MAX)];
        for (iat, exp) in cases {
            let token = forged(|c| {
                c.iat = iat;
                c.exp = exp;
            });
            assert!(verify(&keys(), &token).is_err(), "iat {iat} exp {exp} passed");
        }
        let late = forged(|c| c.exp = i64::MIN);
        assert_eq!(verify(&keys(), &late), Err(TokenRefusal::Lifetime));
        // The lifetime limit itself: 60 s passes, 61 s does not.
        let longest = forged(|c| c.exp = c.iat + MAX_LIFETIME_SECS);
        assert!(verify(&keys(), &longest).is_ok());
        let too_long = forged(|c| c.exp = c.iat + MAX_LIFETIME_SECS + 1);
        assert_eq!(verify(&keys(), &too_long), Err(TokenRefusal::Lifetime));
    }

    #[test]
    fn token_ids_must_be_bounded_hex_and_critical_headers_are_refused() {
        let longest = forged(|c| c.jti = "a".repeat(MAX_JTI_LEN));
        assert!(verify(&keys(), &longest).is_ok(), "64 hex digits are a valid id");
        for jti in ["", "not hex!", &"a".repeat(MAX_JTI_LEN + 1)] {
            let token = forged(|c| c.jti = jti.to_owned());
            assert_eq!(verify(&keys(), &token), Err(TokenRefusal::Malformed), "{jti:?}");
        }
        let token = keys().mint("SERVER0", "SERVER1", "POST", PATH, b"{}", NOW);
        let claims = verify(&keys(), &token).unwrap();
        let header = Header {
            kid: Some(keys().current.kid.clone()),
            crit: Some(vec!["exp".into()]),
            ..Header::new(Algorithm::HS256)
        };
        let critical = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
        assert_eq!(verify(&keys(), &critical), Err(TokenRefusal::Malformed));
    }

    #[test]
    fn a_token_issued_at_the_edge_of_the_skew_is_accepted() {
        let edge = keys().mint("SERVER0", "SERVER1", "POST", PATH, b"{}", NOW + CLOCK_SKEW_SECS);
        assert!(verify(&keys(), &edge).is_ok());
        let past = keys().mint("SERVER0", "SERVER1", "POST", PATH, b"{}", NOW + CLOCK_SKEW_SECS + 1);
        assert_eq!(verify(&keys(), &past), Err(TokenRefusal::NotYetValid));
    }

    #[test]
    fn round_trip_binds_the_request() {
        let token = keys().mint("SERVER0", "SERVER1", "post", PATH, b"{}", NOW);
        let claims = verify(&keys(), &token).unwrap();
        assert_eq!((claims.iss.as_str(), claims.htm.as_str(), claims.jti.len()), ("SERVER0", "POST", 32));
        assert_eq!(keys().verify(&token, "SERVER2", "POST", PATH, b"{}", NOW), Err(TokenRefusal::Audience));
        assert_eq!(keys().verify(&token, "SERVER1", "GET", PATH, b"{}", NOW), Err(TokenRefusal::Method));
        assert_eq!(keys().verify(&token, "SERVER1", "POST", "/other", b"{}", NOW), Err(TokenRefusal::Path));
        assert_eq!(keys().verify(&token, "SERVER1", "POST", PATH, b"{ }", NOW), Err(TokenRefusal::Body));
        assert_eq!(
            keys().verify(&token, "SERVER1", "POST", &format!("{PATH}?x=1"), b"{}", NOW).map(|c| c.iss),
            Ok("SERVER0".into())
        );
    }

    #[test]
    fn times_with_skew() {
        let token = keys().mint("SERVER0", "SERVER1", "POST", PATH, b"{}", NOW);
        let at = |now| keys().verify(&token, "SERVER1", "POST", PATH, b"{}", now);
        assert!(at(NOW + MINTED_LIFETIME_SECS + CLOCK_SKEW_SECS).is_ok());
        assert_eq!(at(NOW + MINTED_LIFETIME_SECS + CLOCK_SKEW_SECS + 1), Err(TokenRefusal::Expired));
        assert!(at(NOW - CLOCK_SKEW_SECS).is_ok());
        assert_eq!(at(NOW - CLOCK_SKEW_SECS - 1), Err(TokenRefusal::NotYetValid));
        let mut long = verify(&keys(), &token).unwrap();
        long.exp = long.iat + 61;
        assert_eq!(verify(&keys(), &keys().sign(&long, None)), Err(TokenRefusal::Lifetime));
    }

    #[test]
    fn wrong_secret_and_rotation() {
        let old = ClusterKeys::new(OLD, None);
        let token = old.mint("SERVER0", "SERVER1", "POST", PATH, b"{}", NOW);
        assert_eq!(verify(&keys(), &token), Err(TokenRefusal::UnknownKey));
        let rotating = ClusterKeys::new(SECRET, Some(OLD));
        assert!(verify(&rotating, &token).is_ok(), "previous secret verifies during a rotation");
        // Without kid the verifier tries current, then previous.
        let claims = verify(&rotating, &token).unwrap();
        assert!(verify(&rotating, &old.sign(&claims, None)).is_ok());
        assert_eq!(verify(&keys(), &old.sign(&claims, None)), Err(TokenRefusal::Signature));
        // A kid naming our key with another key's signature.
        assert_eq!(verify(&keys(), &old.sign(&claims, Some(keys().kid().to_owned()))), Err(TokenRefusal::Signature));
    }

    #[test]
    fn other_algorithms_are_refused() {
        use base64::Engine as _;
        let claims = verify(&keys(), &keys().mint("SERVER0", "SERVER1", "POST", PATH, b"{}", NOW)).unwrap();
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let body = b64(&serde_json::to_string(&claims).unwrap());
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), body);
        assert!(matches!(verify(&keys(), &none), Err(TokenRefusal::Malformed | TokenRefusal::Algorithm)));
        let hs512 =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &EncodingKey::from_secret(SECRET.as_bytes()))
                .unwrap();
        assert_eq!(verify(&keys(), &hs512), Err(TokenRefusal::Algorithm));
        let rs256 = format!("{}.{}.c2ln", b64(r#"{"alg":"RS256","typ":"JWT"}"#), body);
        assert_eq!(verify(&keys(), &rs256), Err(TokenRefusal::Algorithm));
        assert_eq!(verify(&keys(), "not.a.token"), Err(TokenRefusal::Malformed));
    }
}
