//! Identifiers: server names and bot ids.

use std::fmt;

/// Why a server name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerNameError {
    /// Server name is empty.
    #[error("server name is empty")]
    Empty,
    /// Server name is longer than 64 characters.
    #[error("server name is longer than 64 characters")]
    TooLong,
    /// Server name may contain only letters, digits, '_' and '-'.
    #[error("server name may contain only letters, digits, '_' and '-'")]
    InvalidCharacter,
}

/// A server (node) name, stored upper-case: `SERVER0`, `EU_WEST-2`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName(String);

impl ServerName {
    /// Trims, upper-cases and checks `input` (1-64 of `A-Z 0-9 _ -`).
    pub fn parse(input: &str) -> Result<Self, ServerNameError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(ServerNameError::Empty);
        }
        if trimmed.len() > 64 {
            return Err(ServerNameError::TooLong);
        }
        if !trimmed.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(ServerNameError::InvalidCharacter);
        }
        Ok(Self(trimmed.to_ascii_uppercase()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerName({})", self.0)
    }
}

/// Why a bot id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bot id must be 1 to 64 characters of letters, digits, '_' and '-'")]
pub struct BotIdError;

/// A bot's id. New ids are random UUIDs (hyphenated); ids from older
/// deployments may be any short token of `A-Z a-z 0-9 _ -`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BotId(String);

impl BotId {
    /// Checks a bot id: 1 to 64 letters, digits, `-` or `_`.
    pub fn parse(input: &str) -> Result<Self, BotIdError> {
        let ok = !input.is_empty()
            && input.len() <= 64
            && input.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok { Ok(Self(input.to_owned())) } else { Err(BotIdError) }
    }

    /// Builds an id from 128 random bits, formatted as a hyphenated UUID v4.
    pub fn from_random_bits(bits: u128) -> Self {
        // Set the version (4) and variant (10xx) bits so the id is a valid UUID.
        let bits = (bits & !(0xF << 76)) | (0x4 << 76);
        let bits = (bits & !(0x3 << 62)) | (0x2 << 62);
        let hex = format!("{bits:032x}");
        Self(format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BotId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_at_most_64_characters_and_print_as_stored() {
        let longest = "a".repeat(64);
        assert_eq!(super::ServerName::parse(&longest).unwrap().as_str(), "A".repeat(64));
        assert_eq!(super::ServerName::parse(&"a".repeat(65)), Err(super::ServerNameError::TooLong));
        let name = super::ServerName::parse(" server-1 ").unwrap();
        assert_eq!((name.to_string(), format!("{name:?}")), ("SERVER-1".to_owned(), "ServerName(SERVER-1)".to_owned()));
    }

    #[test]
    fn random_bits_become_a_version_4_uuid() {
        let zero = super::BotId::from_random_bits(0);
        assert_eq!(zero.as_str(), "00000000-0000-4000-8000-000000000000");
        let ones = super::BotId::from_random_bits(u128::MAX);
        assert_eq!(ones.as_str(), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(
            (ones.to_string(), format!("{zero:?}")),
            (ones.as_str().to_owned(), format!("BotId({})", zero.as_str()))
        );
    }

    use super::*;

    #[test]
    fn server_names_are_upper_case() {
        assert_eq!(ServerName::parse(" server1 ").unwrap().as_str(), "SERVER1");
        assert_eq!(ServerName::parse("eu_west-2").unwrap().as_str(), "EU_WEST-2");
        assert_eq!(ServerName::parse(""), Err(ServerNameError::Empty));
        assert_eq!(ServerName::parse("a b"), Err(ServerNameError::InvalidCharacter));
        assert_eq!(ServerName::parse(&"A".repeat(65)), Err(ServerNameError::TooLong));
    }

    #[test]
    fn bot_ids() {
        assert!(BotId::parse("bot_1-A").is_ok());
        assert!(BotId::parse("").is_err());
        assert!(BotId::parse("../etc").is_err());
        let id = BotId::from_random_bits(u128::MAX);
        assert_eq!(id.as_str().len(), 36);
        assert_eq!(&id.as_str()[14..15], "4");
        assert!(BotId::parse(id.as_str()).is_ok());
    }
}
