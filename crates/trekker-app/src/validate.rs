//! `validate_credentials_by_phone_number`: what a session ID is and what
//! registering it would do, without changing anything.

use trekker_domain::{Credentials, PhoneNumber, ValidationResult, messages};
use trekker_store::RegistryEntry;

use crate::{AppError, Trekker};

impl Trekker {
    /// The seed's validation branches: available; registered on this server
    /// (update); registered on another server (cross-server update); in the
    /// registry but without a bot row (REGISTRY_INCONSISTENT).
    ///
    /// Undecodable or mismatching credentials are a valid answer here
    /// (`isValid: false` with the reason), not an error.
    pub async fn validate_credentials(
        &self,
        session_id: &str,
        phone_number: Option<&str>,
    ) -> Result<ValidationResult, AppError> {
        let given = phone_number
            .filter(|p| !p.trim().is_empty())
            .map(|p| PhoneNumber::parse(p).map_err(|e| AppError::InvalidInput(format!("phoneNumber: {e}."))))
            .transpose()?;
        let credentials = match Credentials::from_session_id(session_id) {
            Ok(credentials) => credentials,
            Err(err) => return Ok(ValidationResult::invalid(err.to_string(), given.as_ref())),
        };
        let phone = credentials.phone();
        if let Some(given) = &given
            && given != phone
        {
            return Ok(ValidationResult::invalid(messages::phone_mismatch(phone, given), Some(phone)));
        }
        let Some(entry) = self.store.bots.find_registration(phone).await? else {
            return Ok(ValidationResult::available(phone));
        };
        let bot = self.hosted_bot(&entry).await?;
        // Where the bot runs, and which it is, only for its own account.
        if bot.account_key != Some(credentials.identity().account_key) {
            return Ok(ValidationResult::registered_to_another_account(phone));
        }
        Ok(if entry.server == self.node {
            ValidationResult::registered_here(phone, &entry.server, &bot.id)
        } else {
            ValidationResult::registered_elsewhere(phone, &entry.server, &bot.id)
        })
    }

    /// The bot row behind a registry entry, looked up on the server the
    /// registry names; its absence is the seed's registry inconsistency.
    pub(crate) async fn hosted_bot(&self, entry: &RegistryEntry) -> Result<trekker_store::BotRecord, AppError> {
        match self.store.bots.find_bot_on_server(&entry.phone, &entry.server).await? {
            Some(bot) => Ok(bot),
            None => {
                tracing::warn!(
                    phone = %entry.phone,
                    server = %entry.server,
                    "⚠️ Bot found in registry on {} but not in database",
                    entry.server
                );
                Err(AppError::RegistryInconsistent(entry.server.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::Mocks;
    use trekker_domain::ApprovalStatus;
    use trekker_testkit::creds;

    use super::*;
    use crate::test_support::*;

    #[tokio::test]
    async fn available_phone() {
        let mut store = Mocks::default();
        store.bots.expect_find_registration().returning(|_| Ok(None));
        let result = trekker(store).validate_credentials(&creds::session_id(PHONE, 1), Some(PHONE)).await.unwrap();
        assert!(result.is_valid && !result.already_registered && !result.cross_server_update);
        assert_eq!(result.phone_number.as_deref(), Some(PHONE));
    }

    #[tokio::test]
    async fn registered_here_and_elsewhere() {
        for (host, cross) in [("SERVER0", false), ("SERVER1", true)] {
            let mut store = Mocks::default();
            store.bots.expect_find_registration().returning(move |_| Ok(Some(registry_entry(host))));
            store
                .bots
                .expect_find_bot_on_server()
                .withf(move |_, server| server.as_str() == host)
                .returning(move |_, _| Ok(Some(bot_record(host, ApprovalStatus::Approved))));
            let result = trekker(store).validate_credentials(&creds::session_id(PHONE, 1), None).await.unwrap();
            assert!(result.is_valid && result.already_registered);
            assert_eq!(result.cross_server_update, cross);
            assert_eq!(result.target_server.as_deref(), Some(host));
            assert_eq!(result.bot_id.as_deref(), Some("bot-1"));
        }
    }

    #[tokio::test]
    async fn registry_without_bot_is_inconsistent() {
        let mut store = Mocks::default();
        store.bots.expect_find_registration().returning(|_| Ok(Some(registry_entry("SERVER1"))));
        store.bots.expect_find_bot_on_server().returning(|_, _| Ok(None));
        let err = trekker(store).validate_credentials(&creds::session_id(PHONE, 1), None).await.unwrap_err();
        assert!(matches!(err, AppError::RegistryInconsistent(ref s) if s.as_str() == "SERVER1"));
        assert_eq!(err.to_string(), "Bot found in registry on SERVER1 but not in database. Please contact support.");
    }

    #[tokio::test]
    async fn bad_session_and_mismatch_are_invalid_results() {
        let store = Mocks::default();
        let trekker = trekker(store);
        let bad = trekker.validate_credentials("TREKKER~%%%", None).await.unwrap();
        assert!(!bad.is_valid);
        let mismatch = trekker.validate_credentials(&creds::session_id(PHONE, 1), Some("254700000000")).await.unwrap();
        assert!(!mismatch.is_valid);
        assert!(mismatch.message.starts_with("Credentials phone number mismatch."));
        assert!(matches!(
            trekker.validate_credentials(&creds::session_id(PHONE, 1), Some("12")).await,
            Err(AppError::InvalidInput(_))
        ));
    }
}
