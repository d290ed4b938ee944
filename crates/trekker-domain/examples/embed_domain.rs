//! `embed_domain`: a small service that checks WhatsApp session IDs the way
//! a Trekker node does, with nothing but `trekker-domain`: one session ID
//! per line on standard input, one validation result (the JSON of
//! `POST /api/validate-credentials`) per line on standard output.
//!
//! ```text
//! echo 'TREKKER~eyJub2lzZUtleSI6...' | cargo run -p trekker-domain --example embed_domain
//! ```
//!
//! It knows no registry, so a usable session is reported as available;
//! a node would also look the phone up (`ValidationResult::registered_here`,
//! `registered_elsewhere`).

use std::io::{BufRead as _, Write as _};

use trekker_domain::{Credentials, ValidationResult};

/// The answer for one pasted session ID.
fn validate(session_id: &str) -> ValidationResult {
    match Credentials::from_session_id(session_id.trim()) {
        Ok(credentials) => ValidationResult::available(credentials.phone()),
        // The error's text is written for the guest: it says what to fix.
        Err(refusal) => ValidationResult::invalid(refusal.to_string(), None),
    }
}

fn main() -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let answer = serde_json::to_string(&validate(&line)).map_err(std::io::Error::other)?;
        writeln!(out, "{answer}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_session_is_available_and_its_phone_is_read() {
        let session = trekker_testkit::creds::session_id("254700000001", 1);
        let answer = validate(&format!("  {session}\n"));
        assert!(answer.is_valid, "{answer:?}");
        assert_eq!(answer.phone_number.as_deref(), Some("254700000001"));
    }

    #[test]
    fn a_session_signed_by_no_account_is_refused_with_its_reason() {
        let mut creds = trekker_testkit::creds::creds_json("254700000001", 1);
        creds["account"]["accountSignature"] = serde_json::json!("AAAA");
        let session = trekker_domain::session::encode_session_id(&creds.to_string());
        let answer = validate(&session);
        assert!(!answer.is_valid);
        assert!(answer.message.starts_with("Invalid credentials"), "{}", answer.message);
        assert!(!validate("hello").is_valid);
    }
}
