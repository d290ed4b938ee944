//! Cross-server credential updates, both sides.
//!
//! Asking side: the guest re-registered a phone whose bot lives on another
//! node. The update is written to the durable outbox first, then delivered
//! at once if the host is online (within CROSS_SERVER_TIMEOUT_MS); else the
//! guest is told it is queued and every node's outbox dispatcher keeps
//! delivering until it lands or is 24 h old.
//!
//! Receiving side: the host checks the bot is its own and the credentials
//! belong to it, and stores them under the forwarded version in one
//! transaction (an older version never overwrites a newer one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use trekker_domain::{ApprovalStatus, BotId, Credentials, PhoneNumber, ServerName, messages};
use trekker_store::{
    BotRecord, ClaimedUpdate, CredentialUpdate, DeliveryOutcome, NewActivity, NewCredentialUpdate, SideEffects,
    StoreError, VersionRule,
};
use trekker_tenancy::wire::{CredentialsUpdateAnswer, CredentialsUpdateBody};
use trekker_tenancy::{ClientError, CrossTenancyClient};

use crate::register::RegisterOutcome;
use crate::{AppError, Trekker, random_u128, telemetry};

/// Updates older than this are given up (`expired`).
pub const OUTBOX_MAX_AGE_MS: i64 = 24 * 60 * 60 * 1000;
/// How far above the stored version a forwarded update may be (queued
/// updates of one bot each take the next version; this is ample).
pub const MAX_VERSION_LEAP: i64 = 1_000;
/// Idle poll of the outbox dispatcher.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// The idle poll's cap: an outbox with nothing due is read at most this
/// often, so an update queued while its host was away is tried again
/// within this bound (no wake-up: the asking request itself tries first).
const POLL_AT_MOST: Duration = Duration::from_secs(5);

/// Sends credentials to the node hosting a bot.
#[async_trait]
pub trait RemoteCredentials: Send + Sync + std::fmt::Debug {
    async fn update_bot_credentials(
        &self,
        target: &ServerName,
        base_url: &str,
        command_id: &str,
        body: &CredentialsUpdateBody,
    ) -> Result<CredentialsUpdateAnswer, ClientError>;
}

#[async_trait]
impl RemoteCredentials for CrossTenancyClient {
    async fn update_bot_credentials(
        &self,
        target: &ServerName,
        base_url: &str,
        command_id: &str,
        body: &CredentialsUpdateBody,
    ) -> Result<CredentialsUpdateAnswer, ClientError> {
        CrossTenancyClient::update_bot_credentials(self, target, base_url, command_id, body).await
    }
}

/// A node that cannot call other nodes (no client configured).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRemote;

#[async_trait]
impl RemoteCredentials for NoRemote {
    async fn update_bot_credentials(
        &self,
        _: &ServerName,
        _: &str,
        _: &str,
        _: &CredentialsUpdateBody,
    ) -> Result<CredentialsUpdateAnswer, ClientError> {
        Err(ClientError::Misconfigured("this node cannot call other nodes".into()))
    }
}

/// How one delivery attempt ended, for the caller.
enum Delivery {
    Delivered(CredentialsUpdateAnswer),
    /// Not reached; the outbox will try again.
    Later,
    /// The host refused; not retried.
    Refused(String),
}

/// The delay before retrying an online host that did not answer: 250 ms
/// doubling to a 5 s cap, with jitter, so a host that comes back gets its
/// updates within seconds.
fn retry_delay_ms(attempts: i64) -> i64 {
    let base = 250i64.saturating_mul(1i64 << attempts.clamp(0, 10)).min(5_000);
    base / 2 + (random_u128() % (base as u128 / 2 + 1)) as i64
}

impl Trekker {
    pub(crate) async fn cross_server_update(
        &self,
        host: &ServerName,
        bot: BotRecord,
        credentials: &Credentials,
    ) -> Result<RegisterOutcome, AppError> {
        // All nodes share the database: refuse another account here, before
        // anything is queued (the host checks again when it applies).
        self.check_ownership(&bot, credentials).await?;
        tracing::info!(bot = %bot.id, "🌐 Cross-server credential update: {} → {}", self.node, host);
        // A host that missed its heartbeats is not waited for: the outbox
        // takes the update at once. Otherwise this request delivers it
        // itself, and the outbox leaves it alone meanwhile (else both race
        // for it and the guest is told "queued" for an update that went).
        let online = self.reachable_base_url(host).await?.is_some();
        let lease_ms = self.cross_server_budget_ms() + 5_000;
        let update = NewCredentialUpdate {
            id: format!("{:032x}", random_u128()),
            bot_id: bot.id.clone(),
            phone: bot.phone.clone(),
            source: self.node.clone(),
            target: host.clone(),
            credentials: credentials.clone(),
            held_for_ms: if online { lease_ms } else { 0 },
        };
        let activity = NewActivity::new(
            &self.node,
            "cross_server_update_requested",
            format!("forwarding new credentials to {host}"),
        )
        .for_bot(&bot.id, &bot.phone)
        .with_remote(host, Some(&bot.id));
        let queued = self
            .store
            .credential_outbox
            .enqueue_credential_update(&update, &SideEffects::activity(activity), self.now())
            .await?;
        let queued_answer = |bot: BotRecord| {
            metrics::counter!(telemetry::CROSS_SERVER_UPDATES, "target" => host.to_string(), "result" => "queued")
                .increment(1);
            Ok(RegisterOutcome::CrossServerQueued { bot, host: host.clone(), update_id: queued.id.clone() })
        };
        if !online {
            tracing::info!(%host, update = %queued.id, "host offline; update queued");
            return queued_answer(bot);
        };
        let worker = format!("{}-ask-{:08x}", self.node, random_u128() as u32);
        let Some(claimed) =
            self.store.credential_outbox.claim_credential_update(&queued.id, &worker, self.now(), lease_ms).await?
        else {
            return queued_answer(bot);
        };
        match self.deliver_update(&claimed, &worker).await {
            Delivery::Delivered(answer) => {
                let mut bot = bot;
                bot.credentials_version = answer.credentials_version;
                Ok(RegisterOutcome::CrossServerUpdated { bot, host: host.clone() })
            }
            Delivery::Later => queued_answer(bot),
            Delivery::Refused(reason) => Err(AppError::RemoteUpdateFailed { host: host.clone(), reason }),
        }
    }

    fn cross_server_budget_ms(&self) -> i64 {
        i64::try_from(self.cross_server_budget.as_millis()).unwrap_or(i64::MAX)
    }

    /// The host's base URL if it is online and not inactive.
    async fn reachable_base_url(&self, host: &ServerName) -> Result<Option<String>, StoreError> {
        Ok(self
            .store
            .servers
            .get_server(host)
            .await?
            .filter(|server| self.is_server_online(server))
            .and_then(|s| s.base_url))
    }

    /// Where the bot lives now: an update queued for its old host follows
    /// the bot when it moved meanwhile (invariant 11).
    async fn current_host(&self, update: &CredentialUpdate) -> Result<ServerName, StoreError> {
        Ok(self.store.bots.get_bot(&update.bot_id).await?.map_or_else(|| update.target.clone(), |bot| bot.server))
    }

    /// One attempt at a claimed update, sent to the bot's host as of now;
    /// records its outcome in the outbox.
    async fn deliver_update(&self, claimed: &ClaimedUpdate, worker: &str) -> Delivery {
        let update = &claimed.update;
        let host = match self.current_host(update).await {
            Ok(host) => host,
            Err(err) => return self.retry_later(update, worker, format!("database: {err}")).await,
        };
        if host != update.target {
            tracing::info!(update = %update.id, from = %update.target, to = %host, "bot moved: the update follows it");
        }
        let base_url = if host == self.node {
            String::new()
        } else {
            match self.reachable_base_url(&host).await {
                Ok(Some(url)) => url,
                Ok(None) => return self.retry_later(update, worker, "host offline".into()).await,
                Err(err) => return self.retry_later(update, worker, format!("database: {err}")).await,
            }
        };
        let body = CredentialsUpdateBody {
            bot_id: update.bot_id.to_string(),
            phone_number: update.phone.to_string(),
            session_id: claimed.credentials.to_session_id(),
            credentials_version: Some(update.version),
        };
        let started = Instant::now();
        let result = if host == self.node {
            // This node hosts the bot (it came back and its own dispatcher
            // claimed the update): apply it here. A node never calls itself,
            // and its verifier refuses tokens it issued to itself. The
            // version rule keeps a second application of the same update a
            // no-op, as the idempotency key would over HTTP.
            self.apply_remote_credentials(&update.source, &body).await.map_err(|err| match err {
                AppError::Store(store) => ClientError::Unreachable(format!("database: {store}")),
                refused => ClientError::Refused {
                    status: 409,
                    code: String::new(),
                    message: refused.to_string(),
                    retry_after_secs: None,
                },
            })
        } else {
            self.remote.update_bot_credentials(&host, &base_url, &update.id, &body).await
        };
        let target = host.to_string();
        let (outcome, delivery, label) = match result {
            Ok(answer) => {
                metrics::histogram!(telemetry::CROSS_SERVER_LATENCY, "target" => target.clone())
                    .record(started.elapsed().as_secs_f64());
                tracing::info!("✅ Credentials updated on {host} for bot {}", update.bot_id);
                (DeliveryOutcome::Delivered, Delivery::Delivered(answer), "delivered")
            }
            Err(ClientError::Refused { message, .. }) => {
                tracing::warn!(%target, update = %update.id, %message, "host refused the credential update");
                (DeliveryOutcome::Failed { error: message.clone() }, Delivery::Refused(message), "failed")
            }
            // Unreachable, or this node cannot sign: another try (maybe from
            // another node) may succeed.
            Err(err) => {
                let retry_at = self.now() + retry_delay_ms(update.attempts);
                tracing::info!(%target, update = %update.id, error = %err, "host not reached; update stays queued");
                (DeliveryOutcome::Retry { retry_at, error: err.to_string() }, Delivery::Later, "retried")
            }
        };
        metrics::counter!(telemetry::CROSS_SERVER_UPDATES, "target" => target, "result" => label).increment(1);
        if let Err(err) =
            self.store.credential_outbox.finish_credential_update(&update.id, worker, outcome, self.now()).await
        {
            tracing::warn!(update = %update.id, error = ?err, "could not record the delivery result");
        }
        if let Delivery::Delivered(answer) = &delivery {
            let activity = NewActivity::new(
                &self.node,
                "cross_server_update_delivered",
                format!("applied as version {}", answer.credentials_version),
            )
            .for_bot(&update.bot_id, &update.phone)
            .with_remote(&host, Some(&update.bot_id));
            self.record(activity).await;
        }
        delivery
    }

    /// Leaves a claimed update queued for another try in a second.
    async fn retry_later(&self, update: &CredentialUpdate, worker: &str, error: String) -> Delivery {
        let retry = DeliveryOutcome::Retry { retry_at: self.now() + 1_000, error };
        if let Err(err) =
            self.store.credential_outbox.finish_credential_update(&update.id, worker, retry, self.now()).await
        {
            tracing::warn!(update = %update.id, error = ?err, "could not record the delivery result");
        }
        Delivery::Later
    }

    /// Delivers due queued updates once; returns how many were attempted.
    pub async fn deliver_queued_updates(&self, worker: &str) -> Result<usize, AppError> {
        let lease_ms = self.cross_server_budget_ms() + 5_000;
        let claimed = self.store.credential_outbox.claim_credential_updates(worker, self.now(), lease_ms, 16).await?;
        let count = claimed.len();
        for update in claimed {
            let id = update.update.id.clone();
            if self.now() - update.update.created_at > OUTBOX_MAX_AGE_MS {
                tracing::warn!(update = %id, target = %update.update.target, "credential update expired undelivered");
                let target = update.update.target.to_string();
                metrics::counter!(telemetry::CROSS_SERVER_UPDATES, "target" => target, "result" => "expired")
                    .increment(1);
                self.store
                    .credential_outbox
                    .finish_credential_update(&id, worker, DeliveryOutcome::Expired, self.now())
                    .await?;
                continue;
            }
            self.deliver_update(&update, worker).await;
        }
        Ok(count)
    }

    /// The guest's view of a queued update.
    pub async fn credential_update(&self, id: &str) -> Result<CredentialUpdate, AppError> {
        let unknown = || AppError::NotFound("Credential update not found.".into());
        if !crate::is_opaque_id(id) {
            return Err(unknown());
        }
        self.store.credential_outbox.get_credential_update(id).await?.ok_or_else(unknown)
    }

    /// The receiving side: applies credentials forwarded by `issuer` to a
    /// bot hosted here.
    pub async fn apply_remote_credentials(
        &self,
        issuer: &ServerName,
        body: &CredentialsUpdateBody,
    ) -> Result<CredentialsUpdateAnswer, AppError> {
        let not_here = || AppError::NotFound(format!("Bot {} is not hosted on {}.", body.bot_id, self.node));
        let id = BotId::parse(&body.bot_id).map_err(|_| not_here())?;
        let bot = self.store.bots.get_bot(&id).await?.ok_or_else(not_here)?;
        if bot.server != self.node || bot.approval == ApprovalStatus::Rejected {
            return Err(not_here());
        }
        let given =
            PhoneNumber::parse(&body.phone_number).map_err(|e| AppError::InvalidInput(format!("phoneNumber: {e}.")))?;
        let credentials = Credentials::from_session_id(&body.session_id)?;
        for phone in [&given, credentials.phone()] {
            if phone != &bot.phone {
                return Err(AppError::PhoneMismatch { in_session: phone.clone(), given: bot.phone.clone() });
            }
        }
        let rule = match body.credentials_version {
            Some(version) if version < 1 => {
                return Err(AppError::InvalidInput("credentialsVersion must be at least 1.".into()));
            }
            // Versions climb one by one; a leap would let one signed call
            // push a bot to the end of the range, where nothing could follow.
            Some(version) if version > bot.credentials_version.saturating_add(MAX_VERSION_LEAP) => {
                return Err(AppError::InvalidInput(format!(
                    "credentialsVersion may be at most {MAX_VERSION_LEAP} above the stored version."
                )));
            }
            Some(version) => VersionRule::Exactly(version),
            None => VersionRule::Next,
        };
        let restarting = bot.approval == ApprovalStatus::Approved;
        let activity =
            NewActivity::new(&self.node, "credentials_updated", format!("credentials received from {issuer}"))
                .for_bot(&bot.id, &bot.phone)
                .with_remote(issuer, Some(&bot.id));
        let effects = SideEffects::activity(activity)
            .notify(&bot.phone, messages::credentials_updated_cross_server(&bot.name, &self.node, issuer));
        match self.store.bots.update_credentials(&bot.id, &credentials, rule, &effects, self.now()).await {
            Ok(updated) => {
                self.bots_changed();
                tracing::info!("✅ Credentials updated on {} for bot {} (from {issuer})", self.node, updated.id);
                Ok(CredentialsUpdateAnswer {
                    success: true,
                    bot_id: updated.id.to_string(),
                    server: self.node.to_string(),
                    credentials_version: updated.credentials_version,
                    restarted: restarting,
                })
            }
            // Already applied (a retry whose first answer was lost): same
            // credentials under this version is success, not a conflict.
            Err(StoreError::StaleVersion { current }) => match self.store.runtime.load_credentials(&bot.id).await? {
                Some((stored, version)) if stored == credentials && Some(version) == body.credentials_version => {
                    Ok(CredentialsUpdateAnswer {
                        success: true,
                        bot_id: bot.id.to_string(),
                        server: self.node.to_string(),
                        credentials_version: version,
                        restarted: restarting,
                    })
                }
                _ => Err(AppError::Conflict(format!("A newer credentials version ({current}) is already stored."))),
            },
            Err(err) => Err(err.into()),
        }
    }
}

/// Delivers queued updates until `shutdown` (every node runs one).
pub async fn run_outbox(trekker: Arc<Trekker>, shutdown: CancellationToken) {
    let worker = format!("{}-outbox-{:08x}", trekker.node, random_u128() as u32);
    let mut backoff = crate::idle::IdleBackoff::new(POLL_EVERY, POLL_AT_MOST);
    loop {
        let attempted = match trekker.deliver_queued_updates(&worker).await {
            Ok(count) => count,
            Err(err) => {
                tracing::warn!(error = ?err, "credential outbox pass failed; will retry");
                0
            }
        };
        if attempted > 0 {
            backoff.busy();
        }
        if attempted == 0 || shutdown.is_cancelled() {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff.idle()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use mockall::predicate::eq;
    use trekker_store::{CredentialUpdate, OutboxStatus, ServerSnapshot};
    use trekker_testkit::creds;

    use super::*;
    use crate::test_support::{Mocks, NOW, PHONE, bot_record, trekker};

    /// A remote that must not be called.
    #[derive(Debug)]
    struct NeverCalled;

    #[async_trait]
    impl RemoteCredentials for NeverCalled {
        async fn update_bot_credentials(
            &self,
            _: &ServerName,
            _: &str,
            _: &str,
            _: &CredentialsUpdateBody,
        ) -> Result<CredentialsUpdateAnswer, ClientError> {
            panic!("the host must not be called")
        }
    }

    fn claimed(created_at: i64) -> ClaimedUpdate {
        ClaimedUpdate {
            update: CredentialUpdate {
                id: "u1".into(),
                bot_id: BotId::parse("bot-1").unwrap(),
                phone: PhoneNumber::parse(PHONE).unwrap(),
                source: ServerName::parse("SERVER0").unwrap(),
                target: ServerName::parse("SERVER1").unwrap(),
                version: 2,
                status: OutboxStatus::Pending,
                attempts: 1,
                last_error: None,
                created_at,
                delivered_at: None,
            },
            credentials: creds::credentials(PHONE, 2),
        }
    }

    fn host_row(last_heartbeat: i64) -> ServerSnapshot {
        ServerSnapshot {
            name: ServerName::parse("SERVER1").unwrap(),
            max_bot_count: 5,
            current_bot_count: 1,
            status: trekker_domain::ServerStatus::Active,
            base_url: Some("http://server1.test".into()),
            last_heartbeat: Some(last_heartbeat),
            description: None,
            load: None,
            evacuation: None,
        }
    }

    #[tokio::test]
    async fn an_update_older_than_a_day_expires_without_a_call() {
        let mut store = Mocks::default();
        // One millisecond past the 24 hours.
        let old = NOW - OUTBOX_MAX_AGE_MS - 1;
        store.credential_outbox.expect_claim_credential_updates().returning(move |_, _, _, _| Ok(vec![claimed(old)]));
        store
            .credential_outbox
            .expect_finish_credential_update()
            .with(eq("u1"), eq("w"), eq(DeliveryOutcome::Expired), eq(NOW))
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        let mut trekker = trekker(store);
        trekker.remote = Arc::new(NeverCalled);
        assert_eq!(trekker.deliver_queued_updates("w").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_update_of_exactly_a_day_is_still_tried_and_an_offline_host_waits() {
        let mut store = Mocks::default();
        let edge = NOW - OUTBOX_MAX_AGE_MS;
        store.credential_outbox.expect_claim_credential_updates().returning(move |_, _, _, _| Ok(vec![claimed(edge)]));
        // The host's last beat is 31 s old (3 intervals of 10 s): offline.
        store.servers.expect_get_server().returning(|_| Ok(Some(host_row(NOW - 31_000))));
        store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER1", ApprovalStatus::Approved))));
        store
            .credential_outbox
            .expect_finish_credential_update()
            .withf(|id, _, outcome, _| {
                id == "u1" && matches!(outcome, DeliveryOutcome::Retry { retry_at, .. } if *retry_at == NOW + 1_000)
            })
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        let mut trekker = trekker(store);
        trekker.remote = Arc::new(NeverCalled);
        assert_eq!(trekker.deliver_queued_updates("w").await.unwrap(), 1);
    }

    fn body(version: Option<i64>, variant: u32) -> CredentialsUpdateBody {
        CredentialsUpdateBody {
            bot_id: "bot-1".into(),
            phone_number: PHONE.into(),
            session_id: creds::session_id(PHONE, variant),
            credentials_version: version,
        }
    }

    fn peer() -> ServerName {
        ServerName::parse("SERVER1").unwrap()
    }

    #[tokio::test]
    async fn the_host_applies_a_forwarded_version_exactly() {
        let mut store = Mocks::default();
        store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER0", ApprovalStatus::Approved))));
        store
            .bots
            .expect_update_credentials()
            .withf(|id, credentials, rule, effects, _| {
                id.as_str() == "bot-1"
                    && *credentials == creds::credentials(PHONE, 4)
                    && *rule == VersionRule::Exactly(4)
                    && effects.activity.remote_tenancy.as_ref() == Some(&peer())
            })
            .times(1)
            .returning(|_, _, _, _, _| {
                let mut bot = bot_record("SERVER0", ApprovalStatus::Approved);
                bot.credentials_version = 4;
                Ok(bot)
            });
        let answer = trekker(store).apply_remote_credentials(&peer(), &body(Some(4), 4)).await.unwrap();
        assert_eq!((answer.credentials_version, answer.restarted), (4, true));
    }

    #[tokio::test]
    async fn a_retry_of_an_applied_version_is_success_but_other_credentials_are_a_conflict() {
        for (variant, accepted) in [(4, true), (5, false)] {
            let mut store = Mocks::default();
            store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER0", ApprovalStatus::Pending))));
            store
                .bots
                .expect_update_credentials()
                .returning(|_, _, _, _, _| Err(StoreError::StaleVersion { current: 4 }));
            store.runtime.expect_load_credentials().returning(|_| Ok(Some((creds::credentials(PHONE, 4), 4))));
            let result = trekker(store).apply_remote_credentials(&peer(), &body(Some(4), variant)).await;
            match (result, accepted) {
                (Ok(answer), true) => assert_eq!((answer.credentials_version, answer.restarted), (4, false)),
                (Err(AppError::Conflict(message)), false) => assert!(message.contains("(4)"), "{message}"),
                (other, _) => panic!("variant {variant}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn the_host_refuses_what_is_not_its_own() {
        // Hosted elsewhere, rejected, or unknown: not found, nothing written.
        for found in [
            Some(bot_record("SERVER2", ApprovalStatus::Approved)),
            Some(bot_record("SERVER0", ApprovalStatus::Rejected)),
            None,
        ] {
            let mut store = Mocks::default();
            store.bots.expect_get_bot().returning(move |_| Ok(found.clone()));
            let err = trekker(store).apply_remote_credentials(&peer(), &body(Some(2), 2)).await.unwrap_err();
            assert!(matches!(err, AppError::NotFound(_)), "{err:?}");
        }
        // Another phone's session, a version below 1, or a leap to the end.
        let mut other_phone = body(Some(2), 2);
        other_phone.session_id = creds::session_id("254700000999", 2);
        let zero = body(Some(0), 2);
        let leap = body(Some(i64::MAX), 2);
        let too_far = body(Some(1 + MAX_VERSION_LEAP + 1), 2);
        for (sent, phone_mismatch) in [(other_phone, true), (zero, false), (leap, false), (too_far, false)] {
            let mut store = Mocks::default();
            store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER0", ApprovalStatus::Approved))));
            let err = trekker(store).apply_remote_credentials(&peer(), &sent).await.unwrap_err();
            match phone_mismatch {
                true => assert!(matches!(err, AppError::PhoneMismatch { .. }), "{err:?}"),
                false => assert!(matches!(err, AppError::InvalidInput(_)), "{err:?}"),
            }
        }
    }

    const HOUR_MS: i64 = 60 * 60 * 1000;

    /// A remote that is never reached.
    #[derive(Debug)]
    struct Unreachable;

    #[async_trait]
    impl RemoteCredentials for Unreachable {
        async fn update_bot_credentials(
            &self,
            _: &ServerName,
            _: &str,
            _: &str,
            _: &CredentialsUpdateBody,
        ) -> Result<CredentialsUpdateAnswer, ClientError> {
            Err(ClientError::Unreachable("connection refused".into()))
        }
    }

    #[test]
    fn retries_back_off_from_a_quarter_second_to_five_with_jitter() {
        for (attempts, base) in [(-3, 250), (0, 250), (1, 500), (2, 1_000), (4, 4_000), (5, 5_000), (60, 5_000)] {
            let delays: Vec<i64> = (0..300).map(|_| retry_delay_ms(attempts)).collect();
            let (least, most) = (*delays.iter().min().unwrap(), *delays.iter().max().unwrap());
            assert!(least >= base / 2 && most <= base, "{attempts}: {least}..={most} outside {}..={base}", base / 2);
            assert!(most - least > base / 8, "{attempts}: jittered over the upper half ({least}..={most})");
        }
    }

    /// Updates are given up after a day: 23 hours old is tried, 25 is not.
    #[tokio::test]
    async fn a_day_is_how_long_an_update_waits_for_its_host() {
        for (age, expires) in [(23 * HOUR_MS, false), (25 * HOUR_MS, true)] {
            let mut store = Mocks::default();
            let created = NOW - age;
            store
                .credential_outbox
                .expect_claim_credential_updates()
                .returning(move |_, _, _, _| Ok(vec![claimed(created)]));
            store.servers.expect_get_server().returning(|_| Ok(Some(host_row(NOW - 31_000))));
            store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER1", ApprovalStatus::Approved))));
            store
                .credential_outbox
                .expect_finish_credential_update()
                .withf(move |_, _, outcome, _| (*outcome == DeliveryOutcome::Expired) == expires)
                .times(1)
                .returning(|_, _, _, _| Ok(true));
            let mut trekker = trekker(store);
            trekker.remote = Arc::new(NeverCalled);
            trekker.deliver_queued_updates("w").await.unwrap();
        }
    }

    /// A claim outlives one delivery attempt (the budget plus 5 s), and a
    /// host that did not answer is tried again after the backoff, later.
    #[tokio::test]
    async fn an_unreached_host_is_retried_after_the_backoff() {
        let mut store = Mocks::default();
        store
            .credential_outbox
            .expect_claim_credential_updates()
            .withf(|worker, now, lease_ms, _| worker == "w" && *now == NOW && *lease_ms == 5_000 + 5_000)
            .returning(|_, _, _, _| Ok(vec![claimed(NOW)]));
        store.servers.expect_get_server().returning(|_| Ok(Some(host_row(NOW))));
        store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER1", ApprovalStatus::Approved))));
        store
            .credential_outbox
            .expect_finish_credential_update()
            .withf(|_, _, outcome, _| {
                // One earlier attempt: 500 ms, jittered over its upper half.
                matches!(outcome, DeliveryOutcome::Retry { retry_at, .. } if (NOW + 250..=NOW + 500).contains(retry_at))
            })
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        let mut trekker = trekker(store);
        trekker.remote = Arc::new(Unreachable);
        assert_eq!(trekker.deliver_queued_updates("w").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_update_id_is_looked_up_only_when_it_could_be_one() {
        for refused in ["", "with space", "dash-ed", &"a".repeat(65)] {
            let err = trekker(Mocks::default()).credential_update(refused).await.unwrap_err();
            assert!(matches!(err, AppError::NotFound(_)), "{refused:?}");
        }
        let mut store = Mocks::default();
        store.credential_outbox.expect_get_credential_update().times(1).returning(|_| Ok(Some(claimed(NOW).update)));
        let longest = "a".repeat(64);
        assert_eq!(trekker(store).credential_update(&longest).await.unwrap().id, "u1");
    }

    /// The lowest version, and the largest leap, are still applied.
    #[tokio::test]
    async fn versions_at_the_edges_are_applied() {
        for version in [1, 1 + MAX_VERSION_LEAP] {
            let mut store = Mocks::default();
            store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER0", ApprovalStatus::Approved))));
            store
                .bots
                .expect_update_credentials()
                .withf(move |_, _, rule, _, _| *rule == VersionRule::Exactly(version))
                .times(1)
                .returning(|_, _, _, _, _| Ok(bot_record("SERVER0", ApprovalStatus::Approved)));
            trekker(store).apply_remote_credentials(&peer(), &body(Some(version), 2)).await.unwrap();
        }
    }

    /// The asking request holds the update it delivers itself for one
    /// attempt (the budget plus 5 s, so the outbox leaves it alone); an
    /// offline host's update is the outbox's at once.
    #[tokio::test]
    async fn the_asking_request_holds_its_update_only_while_it_delivers_it() {
        for (beat, held) in [(NOW, 10_000), (NOW - 31_000, 0)] {
            let mut store = Mocks::default();
            store.servers.expect_get_server().returning(move |_| Ok(Some(host_row(beat))));
            store
                .credential_outbox
                .expect_enqueue_credential_update()
                .withf(move |update, _, _| update.held_for_ms == held && update.target.as_str() == "SERVER1")
                .times(1)
                .returning(|_, _, _| Ok(claimed(NOW).update));
            store
                .credential_outbox
                .expect_claim_credential_update()
                .withf(|id, _, _, lease_ms| id == "u1" && *lease_ms == 10_000)
                .returning(|_, _, _, _| Ok(None));
            let mut trekker = trekker(store);
            trekker.remote = Arc::new(NeverCalled);
            let bot = bot_record("SERVER1", ApprovalStatus::Approved);
            let outcome = trekker.cross_server_update(&peer(), bot, &creds::credentials(PHONE, 2)).await.unwrap();
            assert!(matches!(outcome, RegisterOutcome::CrossServerQueued { .. }), "{outcome:?}");
        }
    }

    /// The dispatcher claims again at once while it finds work, and waits
    /// (backing off) only when the outbox has nothing due.
    #[tokio::test(start_paused = true)]
    async fn the_dispatcher_drains_without_pausing_then_idles() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let claims = Arc::new(AtomicUsize::new(0));
        let counted = claims.clone();
        let mut store = Mocks::default();
        store.credential_outbox.expect_claim_credential_updates().returning(move |_, _, _, _| {
            // Three busy claims (each finds an update too old to send), then nothing.
            let n = counted.fetch_add(1, Ordering::SeqCst);
            Ok(if n < 3 { vec![claimed(NOW - OUTBOX_MAX_AGE_MS - 1)] } else { vec![] })
        });
        store.credential_outbox.expect_finish_credential_update().returning(|_, _, _, _| Ok(true));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_outbox(Arc::new(trekker(store)), shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(claims.load(Ordering::SeqCst), 4, "three busy claims back to back, then the first idle one");
        tokio::time::sleep(Duration::from_secs(60)).await;
        let idle = claims.load(Ordering::SeqCst) - 4;
        // 0.5, 1, 2, 4 s, then every 5 s: about 14 claims in a minute, not 120.
        assert!((10..=16).contains(&idle), "{idle} idle claims in a minute");
        shutdown.cancel();
        task.await.unwrap();
    }

    /// After work, a dispatcher that had backed off to its cap looks again
    /// soon (an update queued for a host that just came back often has
    /// followers), not only after the longest idle wait.
    #[tokio::test(start_paused = true)]
    async fn work_resets_the_dispatchers_idle_backoff() {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicBool, Ordering};
        let work = Arc::new(AtomicBool::new(false));
        let claims_at = Arc::new(Mutex::new(Vec::new()));
        let (offered, recorded) = (work.clone(), claims_at.clone());
        let mut store = Mocks::default();
        store.credential_outbox.expect_claim_credential_updates().returning(move |_, _, _, _| {
            let found = offered.swap(false, Ordering::SeqCst);
            recorded.lock().unwrap().push((tokio::time::Instant::now(), found));
            Ok(if found { vec![claimed(NOW - OUTBOX_MAX_AGE_MS - 1)] } else { vec![] })
        });
        store.credential_outbox.expect_finish_credential_update().returning(|_, _, _, _| Ok(true));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_outbox(Arc::new(trekker(store)), shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(30)).await; // backed off to its cap
        work.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        shutdown.cancel();
        task.await.unwrap();
        let claims = claims_at.lock().unwrap();
        let busy = claims.iter().position(|(_, found)| *found).expect("the work was claimed");
        // The busy claim, one more at once (it found nothing), then the shortest wait.
        let after = claims[busy + 2].0 - claims[busy + 1].0;
        assert_eq!(after, POLL_EVERY, "waited {after:?} after work");
    }
}
