//! Invariant 8: only the phone's own WhatsApp account can change its bot.
//!
//! Credentials for a registered phone are applied only when signed by the
//! account pinned for the bot and not older than the stored ones. Another
//! account's session goes to a credential review an admin decides; the
//! running bot is untouched meanwhile. The store repeats the check in the
//! statement that writes (a race cannot slip past it), and the host repeats
//! it for a forwarded update: the sender's word is not enough.

use trekker_domain::Credentials;
use trekker_domain::access::Actor;
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
    pub async fn approve_review(&self, actor: &Actor, id: &str) -> Result<BotRecord, AppError> {
        let id = review_id(id)?;
        let activity = NewActivity::new(&self.node, "credential_review_approved", format!("review {id} approved"))
            .by(actor, format!("review/{id}"));
        let bot = self.store.reviews.approve_review(id, &SideEffects::activity(activity), self.now()).await?;
        self.bots_changed();
        tracing::info!(bot = %bot.id, review = %id, "🔐 Review approved: new account pinned");
        Ok(bot)
    }

    pub async fn reject_review(&self, actor: &Actor, id: &str) -> Result<CredentialReview, AppError> {
        let id = review_id(id)?;
        let activity = NewActivity::new(&self.node, "credential_review_rejected", format!("review {id} rejected"))
            .by(actor, format!("review/{id}"));
        Ok(self.store.reviews.reject_review(id, &SideEffects::activity(activity), self.now()).await?)
    }
}

fn review_id(id: &str) -> Result<&str, AppError> {
    if !crate::is_opaque_id(id) {
        return Err(AppError::NotFound("Credential review not found or already decided.".into()));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use trekker_domain::ApprovalStatus;
    use trekker_store::ReviewStatus;
    use trekker_testkit::creds;

    use super::*;
    use crate::test_support::{Mocks, NOW, PHONE, bot_record, trekker};

    /// `bot-1` pinned to its own account, paired as variant 3.
    fn pinned_bot() -> BotRecord {
        let mut bot = bot_record("SERVER0", ApprovalStatus::Approved);
        bot.adv_timestamp = Some(creds::adv_timestamp(3) as i64);
        bot
    }

    fn review(id: &str) -> CredentialReview {
        CredentialReview {
            id: id.into(),
            bot_id: pinned_bot().id,
            phone: pinned_bot().phone,
            account_key: [7; 32],
            adv_timestamp: 0,
            status: ReviewStatus::Open,
            created_at: NOW,
            decided_at: None,
        }
    }

    #[tokio::test]
    async fn the_same_account_at_the_same_or_a_later_pairing_may_change_the_bot() {
        for variant in [3, 4] {
            let (t, bot, credentials) = (trekker(Mocks::default()), pinned_bot(), creds::credentials(PHONE, variant));
            assert!(t.check_ownership(&bot, &credentials).await.is_ok(), "variant {variant}");
        }
        // Nothing pinned yet (registered before ownership was recorded).
        let mut unpinned = pinned_bot();
        unpinned.account_key = None;
        let other = Credentials::from_session_id(&creds::session_id_of_account(PHONE, 1, "someone else")).unwrap();
        assert!(trekker(Mocks::default()).check_ownership(&unpinned, &other).await.is_ok());
    }

    #[tokio::test]
    async fn an_older_pairing_of_the_same_account_is_refused() {
        let err = trekker(Mocks::default()).check_ownership(&pinned_bot(), &creds::credentials(PHONE, 2)).await;
        assert!(matches!(err, Err(AppError::OlderSession)), "{err:?}");
    }

    /// Another account's session waits for an admin, sealed in a review;
    /// the answer names the review.
    #[tokio::test]
    async fn another_account_opens_a_review_and_is_refused() {
        let other = Credentials::from_session_id(&creds::session_id_of_account(PHONE, 9, "someone else")).unwrap();
        let mut store = Mocks::default();
        let held = other.clone();
        store
            .reviews
            .expect_open_review()
            .withf(move |review, effects, _| {
                review.bot_id.as_str() == "bot-1"
                    && review.credentials == held
                    && effects.activity.action == "credential_review_opened"
            })
            .times(1)
            .returning(|_, _, _| Ok(review("r1")));
        let err = trekker(store).check_ownership(&pinned_bot(), &other).await;
        assert!(matches!(&err, Err(AppError::AccountMismatch { review_id: Some(id) }) if id == "r1"), "{err:?}");
    }

    #[tokio::test]
    async fn review_pages_and_ids_are_checked_before_the_store() {
        for refused in ["", "with space", "dash-ed", &"a".repeat(65)] {
            let err =
                trekker(Mocks::default()).approve_review(&crate::test_support::operator(), refused).await.unwrap_err();
            assert!(matches!(err, AppError::NotFound(_)), "{refused:?}");
            let err =
                trekker(Mocks::default()).reject_review(&crate::test_support::operator(), refused).await.unwrap_err();
            assert!(matches!(err, AppError::NotFound(_)), "{refused:?}");
        }
        let longest = "a".repeat(64);
        let mut store = Mocks::default();
        let expected = longest.clone();
        store
            .reviews
            .expect_reject_review()
            .withf(move |id, _, _| id == expected)
            .times(1)
            .returning(|id, _, _| Ok(review(id)));
        store
            .reviews
            .expect_list_reviews()
            .withf(|after, limit| *after == Some((NOW, "r9".to_owned())) && *limit == 3)
            .times(1)
            .returning(|_, _| {
                Ok(trekker_store::ReviewPage { reviews: vec![review("r8")], next: Some((NOW - 1, "r8".into())) })
            });
        store
            .reviews
            .expect_list_reviews()
            .withf(|after, limit| after.is_none() && *limit == trekker_store::DEFAULT_PAGE)
            .times(1)
            .returning(|_, _| Ok(trekker_store::ReviewPage { reviews: vec![], next: None }));
        let t = trekker(store);
        assert_eq!(t.reject_review(&crate::test_support::operator(), &longest).await.unwrap().id, longest);
        let after = crate::admin::format_cursor(NOW, "r9");
        let (reviews, next) = t.credential_reviews(Some(3), Some(&after)).await.unwrap();
        assert_eq!(reviews, vec![review("r8")]);
        assert_eq!(crate::admin::parse_cursor(&next.unwrap()).unwrap(), (NOW - 1, "r8".to_owned()));
        assert_eq!(t.credential_reviews(None, Some("")).await.unwrap(), (vec![], None));
    }
}
