//! Phone numbers as Trekker stores them: international digits only.

use std::fmt;

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneNumberError {
    /// Phone number is empty.
    #[error("phone number is empty")]
    Empty,
    /// Phone number may contain only digits, spaces, '-', '(', ')' and '+'.
    #[error("phone number may contain only digits, spaces, '-', '(', ')' and '+'")]
    InvalidCharacter,
    /// Phone number must have 10 to 15 digits (got …).
    #[error("phone number must have 10 to 15 digits (got {0})")]
    WrongLength(usize),
    /// Phone number must start with the country code, not 0.
    #[error("phone number must start with the country code, not 0")]
    LeadingZero,
}

/// A phone number in international form: 10 to 15 digits, no leading 0.
///
/// Invariant: the inner string holds only ASCII digits and passes the rules
/// above, so it can be used as a registry key without further checks.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Normalises `input` (drops spaces, `-`, `(`, `)`, `+`) and checks it.
    ///
    /// ```
    /// use trekker_domain::{PhoneNumber, PhoneNumberError};
    ///
    /// assert_eq!(PhoneNumber::parse("+254 (700) 000-001")?.as_str(), "254700000001");
    /// assert_eq!(PhoneNumber::parse("0700000001"), Err(PhoneNumberError::LeadingZero));
    /// assert_eq!(PhoneNumber::parse("12345"), Err(PhoneNumberError::WrongLength(5)));
    /// # Ok::<(), PhoneNumberError>(())
    /// ```
    pub fn parse(input: &str) -> Result<Self, PhoneNumberError> {
        let mut digits = String::with_capacity(input.len());
        for c in input.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' | '(' | ')' | '+' => {}
                _ => return Err(PhoneNumberError::InvalidCharacter),
            }
        }
        if digits.is_empty() {
            return Err(PhoneNumberError::Empty);
        }
        if !(10..=15).contains(&digits.len()) {
            return Err(PhoneNumberError::WrongLength(digits.len()));
        }
        if digits.starts_with('0') {
            return Err(PhoneNumberError::LeadingZero);
        }
        Ok(Self(digits))
    }

    /// The digits, without a `+`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn displays_as_its_digits() {
        assert_eq!(super::PhoneNumber::parse("+254 712-345 678").unwrap().to_string(), "254712345678");
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strips_formatting() {
        let phone = PhoneNumber::parse("+254 (712) 345-678").unwrap();
        assert_eq!(phone.as_str(), "254712345678");
    }

    #[test]
    fn refuses_bad_numbers() {
        assert_eq!(PhoneNumber::parse(""), Err(PhoneNumberError::Empty));
        assert_eq!(PhoneNumber::parse(" + "), Err(PhoneNumberError::Empty));
        assert_eq!(PhoneNumber::parse("123456789"), Err(PhoneNumberError::WrongLength(9)));
        assert_eq!(PhoneNumber::parse("1234567890123456"), Err(PhoneNumberError::WrongLength(16)));
        assert_eq!(PhoneNumber::parse("0712345678"), Err(PhoneNumberError::LeadingZero));
        assert_eq!(PhoneNumber::parse("2547a2345678"), Err(PhoneNumberError::InvalidCharacter));
        assert_eq!(PhoneNumber::parse("２５４712345678"), Err(PhoneNumberError::InvalidCharacter));
    }

    #[test]
    fn accepts_bounds() {
        assert!(PhoneNumber::parse("1234567890").is_ok());
        assert!(PhoneNumber::parse("123456789012345").is_ok());
    }

    proptest! {
        #[test]
        fn normalisation_is_idempotent(input in "[0-9 +()-]{0,24}") {
            if let Ok(phone) = PhoneNumber::parse(&input) {
                let again = PhoneNumber::parse(phone.as_str()).unwrap();
                prop_assert_eq!(again, phone);
            }
        }

        #[test]
        fn parse_never_panics(input in any::<String>()) {
            let _ = PhoneNumber::parse(&input);
        }
    }
}
