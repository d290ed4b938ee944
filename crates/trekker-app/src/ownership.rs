//! Invariant 8: only the phone's own WhatsApp account can change its bot.
//!
//! Credentials for a registered phone are applied only when signed by the
//! account pinned for the bot and not older than the stored ones. Another
//! account's session goes to a credential review an admin decides; the
//! running bot is untouched meanwhile. The store repeats the check in the
//! statement that writes (a race cannot slip past it), and the host repeats
//! it for a forwarded update: the sender's word is not enough.

use trekker_domain::Credentials;
use trekker_store::{BotRecord, CredentialReview, NewActivity, NewReview, SideEffects};

use crate::{AppError, Trekker, random_u128};

impl Trekker {
    /// Whether `credentials` may replace `bot`'s: the same account, not an
    /// older pairing. Another account opens a review and is refused with
    /// its id. A bot with no pinned account (registered before ownership
    /// was recorded) accepts any valid session, which then pins it.
    pub(crate) async fn check_ownership(&self, bot: &BotRecord, credentials: &Credentials) -> Result<(), AppError> {
        let identity = credentials.identity();
        match bot.account_key {
            Some(pinned) if pinned != identity.account_key => {
                let review = self.open_review(bot, credentials).await?;
                Err(AppError::AccountMismatch { review_id: Some(review.id) })
            }
            Some(_) if bot.adv_timestamp.is_some_and(|stored| i128::from(stored) > i128::from(identity.timestamp)) => {
                Err(AppError::OlderSession)
            }
            _ => Ok(()),
        }
    }

    /// Keeps another account's credentials for an admin (sealed).
    pub(crate) async fn open_review(
        &self,
        bot: &BotRecord,
        credentials: &Credentials,
    ) -> Result<CredentialReview, AppError> {
        let review = NewReview {
            id: format!("{:032x}", random_u128()),
            bot_id: bot.id.clone(),
            phone: bot.phone.clone(),
            credentials: credentials.clone(),
        };
        let activity = NewActivity::new(
            &self.node,
            "credential_review_opened",
            "credentials signed by another WhatsApp account wait for an admin",
        )
        .for_bot(&bot.id, &bot.phone);
        let opened = self.store.reviews.open_review(&review, &SideEffects::activity(activity), self.now()).await?;
        tracing::warn!(bot = %bot.id, review = %opened.id, "🔐 Another WhatsApp account's session: review opened");
        Ok(opened)
    }

    /// One page of credential reviews, newest first, and the next cursor.
    pub async fn credential_reviews(
        &self,
        limit: Option<i64>,
        after: Option<&str>,
    ) -> Result<(Vec<CredentialReview>, Option<String>), AppError> {
        let limit = crate::admin::page_size(limit)?;
        let after = after.filter(|a| !a.is_empty()).map(crate::admin::parse_cursor).transpose()?;
        let page = self.store.reviews.list_reviews(after, limit).await?;
        Ok((page.reviews, page.next.map(|(at, id)| crate::admin::format_cursor(at, &id))))
    }

    /// Applies a review's credentials: the new account is pinned, the
    /// version bumped, and an approved bot restarts on its host.
    pub async fn approve_review(&self, id: &str) -> Result<BotRecord, AppError> {
        let id = review_id(id)?;
        let activity = NewActivity::new(&self.node, "credential_review_approved", format!("review {id} approved"));
        let bot = self.store.reviews.approve_review(id, &SideEffects::activity(activity), self.now()).await?;
        self.bots_changed();
        tracing::info!(bot = %bot.id, review = %id, "🔐 Review approved: new account pinned");
        Ok(bot)
    }

    pub async fn reject_review(&self, id: &str) -> Result<CredentialReview, AppError> {
        let id = review_id(id)?;
        let activity = NewActivity::new(&self.node, "credential_review_rejected", format!("review {id} rejected"));
        Ok(self.store.reviews.reject_review(id, &SideEffects::activity(activity), self.now()).await?)
    }
}

fn review_id(id: &str) -> Result<&str, AppError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(AppError::NotFound("Credential review not found or already decided.".into()));
    }
    Ok(id)
}
