//! Who may do what on the admin API: the three roles, the tokens of the
//! API keys operators hold, and the actor the audit trail names.
//!
//! A key's token is `trk_<id>_<secret>`: the id (16 hex digits, 64 random
//! bits) names the key, so a node finds it by primary key, never by
//! scanning; the secret (32 random bytes, base64url) is stored only as its
//! SHA-256, which is enough for 256 random bits (a slow password hash buys
//! nothing against a secret nobody chose). The randomness comes from the
//! caller: this crate does no I/O.

use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// What a caller of the admin API may do; each role includes the ones
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Every read under `/api/admin/` (but the keys) and the event stream.
    Viewer,
    /// A viewer that also approves, rejects, reviews, moves, restarts,
    /// stops and sends messages.
    Operator,
    /// Everything: servers, deletes, repairs, evacuations, keys.
    Admin,
}

/// A role name that is not one of `viewer`, `operator`, `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("role must be one of viewer, operator, admin")]
pub struct RoleError;

impl Role {
    /// The role named `name` (exactly as API.md spells it).
    pub fn parse(name: &str) -> Result<Self, RoleError> {
        match name {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            _ => Err(RoleError),
        }
    }

    /// The role's name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn includes(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The prefix every key token starts with (what secret scanners look for).
pub const TOKEN_PREFIX: &str = "trk_";

/// An API key's token (see the module header). `Debug` never shows the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyToken {
    id: String,
    secret: String,
}

impl fmt::Debug for KeyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyToken").field("id", &self.id).finish_non_exhaustive()
    }
}

impl KeyToken {
    /// A new token from 40 random bytes (8 for the id, 32 for the secret).
    pub fn from_random(random: [u8; 40]) -> Self {
        let (id, secret) = random.split_at(8);
        let id = id.iter().map(|byte| format!("{byte:02x}")).collect();
        Self { id, secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret) }
    }

    /// Reads a presented token; `None` for anything not shaped like one
    /// (checked before any database read).
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix(TOKEN_PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let secret_ok =
            secret.len() == 43 && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        (id_ok && secret_ok).then(|| Self { id: id.to_owned(), secret: secret.to_owned() })
    }

    /// The key's id (public: it names the key in lists and the audit).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What is stored of the secret.
    pub fn secret_hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_bytes()).into()
    }

    /// Whether this token's secret hashes to `stored`, compared in
    /// constant time.
    pub fn matches(&self, stored: &[u8]) -> bool {
        let presented = self.secret_hash();
        stored.len() == presented.len() && presented.iter().zip(stored).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The whole token, to show its holder once.
    pub fn expose(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }
}

/// Who did something the audit trail records: a key (its id and name),
/// the bootstrap token, or the cluster itself ([`Actor::system`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Actor {
    /// The key's id; none for the bootstrap token and the system.
    pub key_id: Option<String>,
    /// The key's name, `bootstrap` or `system`.
    pub name: String,
}

impl Actor {
    /// The name of the cluster's own actions (expiry, failover, crashes).
    pub const SYSTEM: &'static str = "system";

    /// The cluster acting on its own.
    pub fn system() -> Self {
        Self { key_id: None, name: Self::SYSTEM.to_owned() }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_secret_with_both_url_safe_symbols_reads_back() {
        let mut random = [0u8; 40];
        for (n, byte) in random[8..].iter_mut().enumerate() {
            *byte = [0xFB, 0xFF, 0xBF][n % 3];
        }
        let token = KeyToken::from_random(random);
        let exposed = token.expose();
        assert!(exposed[21..].contains('-') && exposed[21..].contains('_'), "{exposed}");
        assert_eq!(KeyToken::parse(&exposed), Some(token));
    }

    #[test]
    fn a_token_shows_its_id_and_never_its_secret_and_a_role_prints_its_name() {
        let token = KeyToken::from_random([7; 40]);
        let shown = format!("{token:?}");
        assert!(shown.contains(token.id()) && !shown.contains(&token.expose()[21..]), "{shown}");
        assert_eq!((Role::Operator.to_string(), Role::Admin.to_string()), ("operator".into(), "admin".into()));
    }

    #[test]
    fn roles_include_the_ones_below_them_only() {
        assert!(Role::Admin.includes(Role::Operator) && Role::Admin.includes(Role::Viewer));
        assert!(Role::Operator.includes(Role::Viewer) && Role::Operator.includes(Role::Operator));
        assert!(!Role::Operator.includes(Role::Admin));
        assert!(!Role::Viewer.includes(Role::Operator));
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        assert_eq!(Role::parse("Admin"), Err(RoleError), "names are exact");
        assert_eq!(Role::parse("root"), Err(RoleError));
    }

    #[test]
    fn a_token_reads_back_and_matches_only_its_own_hash() {
        let token = KeyToken::from_random([7; 40]);
        let shown = token.expose();
        assert!(shown.starts_with("trk_0707070707070707_"), "{shown}");
        let read = KeyToken::parse(&shown).unwrap();
        assert_eq!(read, token);
        assert!(read.matches(&token.secret_hash()));
        let other = KeyToken::from_random([8; 40]);
        assert!(!read.matches(&other.secret_hash()));
        assert!(!read.matches(&token.secret_hash()[..31]), "a cut hash never matches");
        assert!(!format!("{token:?}").contains(&shown[21..]), "Debug hides the secret");
    }

    #[test]
    fn malformed_tokens_are_refused_before_any_lookup() {
        let good = KeyToken::from_random([9; 40]).expose();
        for bad in [
            "",
            "trk_",
            &good[1..],
            &good[..good.len() - 1],
            &good.replace("trk_", "tok_"),
            &good.replacen("0909", "0G09", 1),
            &good.replacen("0909", "0A09", 1),
            &format!("{good}x"),
            &good.replacen('_', "-", 2),
            &format!("{}{}", &good[..21], "+".repeat(43)),
            &format!("{}{}", &good[..21], "/".repeat(43)),
            &format!("{}{}A", &good[..21], "=".repeat(42)),
        ] {
            assert_eq!(KeyToken::parse(bad), None, "{bad:?}");
        }
        assert_eq!(KeyToken::from_random([9; 40]).id(), "0909090909090909", "the id is the first 8 bytes in hex");
    }

    /// Two differences that would cancel out under XOR still refuse.
    #[test]
    fn a_hash_differing_anywhere_does_not_match() {
        let token = KeyToken::from_random([5; 40]);
        let mut stored = token.secret_hash();
        assert!(token.matches(&stored));
        stored[0] ^= 1;
        stored[1] ^= 1;
        assert!(!token.matches(&stored));
        assert!(!token.matches(&token.secret_hash()[..31]), "a short hash");
    }
}
