//! `register_bot`: the seed's registration flow, every branch.
//!
//! input checks -> decode and check credentials -> the phone in the
//! credentials must equal the given phone -> look the phone up:
//! - hosted on this node: replace the credentials (new version);
//! - hosted on another node: the cross-server update;
//! - new: `selectedServer`, else this node, else the placement policy's
//!   ranking, each tried with the store's atomic reservation.

use std::sync::Arc;
use trekker_domain::GuestMessage;
use trekker_domain::{ApprovalStatus, BotId, Credentials, PhoneNumber, ServerName, messages};
use trekker_placement::{Candidate, Liveness};

use trekker_store::{
    BotRecord, NewActivity, NewBot, RegistryEntry, ServerSnapshot, SideEffects, StoreError, VersionRule,
};

use crate::{AppError, Trekker, new_bot_id, telemetry};

/// The longest bot name accepted, in characters.
pub const MAX_BOT_NAME_CHARS: usize = 100;

/// How the guest handed over the credentials.
#[derive(Clone)]
pub enum CredentialInput {
    /// `credentialType` `session` or `base64`: a session ID.
    SessionId(String),
    /// `credentialType` `file`: the creds.json object (JSON body).
    FileJson(serde_json::Value),
    /// `credentialType` `file`: the creds.json file's text (multipart).
    FileText(String),
}

/// Names the form only: every variant holds a credential.
impl std::fmt::Debug for CredentialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::SessionId(_) => "SessionId(<redacted>)",
            Self::FileJson(_) => "FileJson(<redacted>)",
            Self::FileText(_) => "FileText(<redacted>)",
        })
    }
}

/// A guest's registration request, as received.
#[derive(Debug, Clone)]
pub struct RegisterRequest {
    pub bot_name: String,
    pub phone_number: String,
    pub credentials: CredentialInput,
    pub selected_server: Option<String>,
}

/// What a successful registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// A new bot on this node or on the selected server, pending approval.
    Registered { bot: BotRecord },
    /// This node was full; the bot went to `bot.server`.
    AutoAssigned { bot: BotRecord, from: ServerName, available_slots: i64 },
    /// The phone's bot is hosted here; its credentials were replaced.
    CredentialsUpdated { bot: BotRecord, restarting: bool },
    /// The phone's bot is hosted on `host`, which applied the credentials.
    CrossServerUpdated { bot: BotRecord, host: ServerName },
    /// `host` could not be reached in time: the update is queued.
    CrossServerQueued { bot: BotRecord, host: ServerName, update_id: String },
}

impl RegisterOutcome {
    /// The `type` of the API answer.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "registered",
            Self::AutoAssigned { .. } => "auto_assigned",
            Self::CredentialsUpdated { .. } => "credentials_updated",
            Self::CrossServerUpdated { .. } => "cross_server_credential_update",
            Self::CrossServerQueued { .. } => "cross_server_update_queued",
        }
    }

    pub fn bot(&self) -> &BotRecord {
        match self {
            Self::Registered { bot }
            | Self::AutoAssigned { bot, .. }
            | Self::CredentialsUpdated { bot, .. }
            | Self::CrossServerUpdated { bot, .. }
            | Self::CrossServerQueued { bot, .. } => bot,
        }
    }

    /// The text shown to the guest (the same one they are notified with).
    pub fn message(&self) -> String {
        match self {
            Self::Registered { bot } => messages::registered_pending_approval(&bot.name, &bot.server),
            Self::AutoAssigned { bot, from, available_slots } => {
                messages::auto_assigned(&bot.name, from, &bot.server, *available_slots)
            }
            Self::CredentialsUpdated { bot, restarting } => {
                messages::credentials_updated(&bot.name, &bot.server, *restarting)
            }
            Self::CrossServerUpdated { bot, host } => messages::cross_server_update_done(&bot.name, host),
            Self::CrossServerQueued { host, .. } => messages::cross_server_update_queued(host),
        }
    }
}

/// One placement try: done, or the phone was taken meanwhile (look again).
enum Placed {
    Done(Box<RegisterOutcome>),
    PhoneTaken,
}

/// Checked input of a registration.
struct Checked {
    name: String,
    phone: PhoneNumber,
    credentials: Credentials,
    selected: Option<ServerName>,
}

impl Trekker {
    pub async fn register_bot(&self, request: RegisterRequest) -> Result<RegisterOutcome, AppError> {
        let result = self.register(request).await;
        let label = match &result {
            Ok(outcome) => outcome.kind(),
            Err(AppError::AllServersFull) => "all_servers_full",
            Err(AppError::ServerFull(_)) => "server_full",
            Err(_) => "refused",
        };
        metrics::counter!(telemetry::REGISTRATIONS, "type" => label).increment(1);
        if result.is_ok() {
            self.bots_changed();
        }
        result
    }

    async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, AppError> {
        let input = self.check_registration(request).await?;
        // Optimistic: most registrations are of new phones, so placing comes
        // first, one transaction. The store answers `PhoneTaken` before it
        // touches any server row when the phone is registered; only then is
        // the registry read. A phone freed between the two is placed again.
        for _ in 0..3 {
            let placed = match &input.selected {
                Some(server) => self.place_on_selected(&input, server).await?,
                None => self.place_new(&input).await?,
            };
            match placed {
                Placed::Done(outcome) => return Ok(*outcome),
                Placed::PhoneTaken => {
                    if let Some(entry) = self.store.bots.find_registration(&input.phone).await? {
                        return self.update_registered(&input, &entry).await;
                    }
                }
            }
        }
        Err(AppError::Conflict("This phone number is being registered by another request. Please try again.".into()))
    }

    /// New credentials for a phone registered on `entry.server`: applied
    /// here, or forwarded to the hosting node.
    async fn update_registered(&self, input: &Checked, entry: &RegistryEntry) -> Result<RegisterOutcome, AppError> {
        if let Some(requested) = &input.selected
            && requested != &entry.server
        {
            return Err(AppError::ServerMismatch { hosted_on: entry.server.clone(), requested: requested.clone() });
        }
        let bot = self.hosted_bot(entry).await?;
        if entry.server == self.node {
            return self.update_local_credentials(bot, &input.credentials).await;
        }
        self.cross_server_update(&entry.server, bot, &input.credentials).await
    }

    async fn check_registration(&self, request: RegisterRequest) -> Result<Checked, AppError> {
        let name = request.bot_name.trim();
        if name.is_empty() {
            return Err(AppError::InvalidInput("botName is required.".into()));
        }
        if name.chars().count() > MAX_BOT_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(AppError::InvalidInput(format!(
                "botName must be at most {MAX_BOT_NAME_CHARS} characters, without control characters."
            )));
        }
        if request.phone_number.trim().is_empty() {
            return Err(AppError::InvalidInput("phoneNumber is required.".into()));
        }
        let phone = PhoneNumber::parse(&request.phone_number)
            .map_err(|e| AppError::InvalidInput(format!("phoneNumber: {e}.")))?;
        let credentials = match request.credentials {
            CredentialInput::SessionId(session) if session.trim().is_empty() => {
                return Err(AppError::InvalidInput("sessionId is required.".into()));
            }
            CredentialInput::SessionId(session) => Credentials::from_session_id(&session)?,
            CredentialInput::FileJson(value) => {
                Credentials::from_json_value(&value).map_err(AppError::InvalidCredentials)?
            }
            CredentialInput::FileText(text) => {
                Credentials::from_json_text(&text).map_err(AppError::InvalidCredentials)?
            }
        };
        if credentials.phone() != &phone {
            return Err(AppError::PhoneMismatch { in_session: credentials.phone().clone(), given: phone });
        }
        let selected = match request.selected_server.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(raw) => {
                let name = ServerName::parse(raw).map_err(|_| AppError::UnknownServer(raw.to_owned()))?;
                if self.store.servers.get_server(&name).await?.is_none() {
                    return Err(AppError::UnknownServer(name.to_string()));
                }
                Some(name)
            }
            None => None,
        };
        Ok(Checked { name: name.to_owned(), phone, credentials, selected })
    }

    async fn update_local_credentials(
        &self,
        bot: BotRecord,
        credentials: &Credentials,
    ) -> Result<RegisterOutcome, AppError> {
        self.check_ownership(&bot, credentials).await?;
        let restarting = bot.approval == ApprovalStatus::Approved;
        let activity = NewActivity::new(&self.node, "credentials_updated", "credentials replaced by the guest")
            .for_bot(&bot.id, &bot.phone);
        let effects = SideEffects::activity(activity)
            .notify(&bot.phone, messages::credentials_updated(&bot.name, &self.node, restarting));
        let store = &self.store.bots;
        let updated =
            match store.update_credentials(&bot.id, credentials, VersionRule::Next, &effects, self.now()).await {
                Ok(updated) => updated,
                // The pinned account changed since we read the bot.
                Err(StoreError::AccountMismatch) => {
                    let review = self.open_review(&bot, credentials).await?;
                    return Err(AppError::AccountMismatch { review_id: Some(review.id) });
                }
                Err(err) => return Err(err.into()),
            };
        let version = updated.credentials_version;
        tracing::info!(bot = %updated.id, version, "🔄 Credentials updated on {}", self.node);
        Ok(RegisterOutcome::CredentialsUpdated { bot: updated, restarting })
    }

    async fn place_on_selected(&self, input: &Checked, server: &ServerName) -> Result<Placed, AppError> {
        let id = new_bot_id();
        let effects = self.new_bot_effects(input, &id, server, "registered", None);
        match self.reserve(input, &id, server, &effects).await {
            Ok(registered) => Ok(Placed::Done(Box::new(RegisterOutcome::Registered { bot: registered.bot }))),
            Err(StoreError::ServerFull(_) | StoreError::ServerNotAccepting { .. }) => {
                Err(AppError::ServerFull(server.clone()))
            }
            Err(StoreError::PhoneTaken { .. }) => Ok(Placed::PhoneTaken),
            Err(err) => Err(err.into()),
        }
    }

    async fn place_new(&self, input: &Checked) -> Result<Placed, AppError> {
        let id = new_bot_id();
        let effects = self.new_bot_effects(input, &id, &self.node, "registered", None);
        match self.reserve(input, &id, &self.node, &effects).await {
            Ok(registered) => return Ok(Placed::Done(Box::new(RegisterOutcome::Registered { bot: registered.bot }))),
            Err(StoreError::ServerFull(_) | StoreError::ServerNotAccepting { .. } | StoreError::UnknownServer(_)) => {
                tracing::info!("🚫 Current server {} is at capacity", self.node);
            }
            Err(StoreError::PhoneTaken { .. }) => return Ok(Placed::PhoneTaken),
            Err(err) => return Err(err.into()),
        }
        // Rank from a snapshot; if every server it offers is full, the
        // snapshot may be stale (a server added or emptied since): rank once
        // more from a fresh read before refusing.
        for fresh in [false, true] {
            let Some(servers) = self.ranking_snapshot(fresh).await? else { continue };
            if let Some(placed) = self.place_elsewhere(input, &servers).await? {
                return Ok(placed);
            }
        }
        tracing::warn!(phone = %input.phone, "All servers are at capacity");
        let mut refusal = NewActivity::new(&self.node, "registration_refused", "all servers are at capacity");
        refusal.phone = Some(input.phone.clone());
        if let Err(err) = self.store.activities.append_activity(&refusal, self.now()).await {
            tracing::warn!(error = ?err, "could not record the refused registration");
        }
        Err(AppError::AllServersFull)
    }

    /// Tries the other servers, best first; `None` when none took the bot.
    async fn place_elsewhere(&self, input: &Checked, servers: &[ServerSnapshot]) -> Result<Option<Placed>, AppError> {
        let liveness = Liveness { now_ms: self.now(), heartbeat_interval_ms: self.heartbeat_interval_ms };
        let candidates: Vec<Candidate> =
            servers.iter().filter(|s| s.name != self.node).map(crate::fleet::candidate).collect();
        for target in self.placement.rank(&candidates, liveness) {
            tracing::info!("🌐 Auto-selecting target server: {target}");
            let id = new_bot_id();
            let effects = self.new_bot_effects(input, &id, &target, "auto_assigned", Some(&target));
            match self.reserve(input, &id, &target, &effects).await {
                Ok(registered) => {
                    tracing::info!(bot = %registered.bot.id, "✅ Bot successfully auto-assigned to {target}");
                    let (from, to) = (self.node.to_string(), target.to_string());
                    metrics::counter!(telemetry::AUTO_ASSIGNMENTS, "from" => from, "to" => to).increment(1);
                    self.capacity_touched(&target);
                    return Ok(Some(Placed::Done(Box::new(RegisterOutcome::AutoAssigned {
                        bot: registered.bot,
                        from: self.node.clone(),
                        available_slots: registered.free_slots_after,
                    }))));
                }
                // Filled up (or left) since the snapshot: try the next one.
                Err(
                    StoreError::ServerFull(_) | StoreError::ServerNotAccepting { .. } | StoreError::UnknownServer(_),
                ) => {
                    tracing::debug!(%target, "candidate filled up meanwhile; trying the next");
                }
                Err(StoreError::PhoneTaken { .. }) => return Ok(Some(Placed::PhoneTaken)),
                Err(err) => return Err(err.into()),
            }
        }
        Ok(None)
    }

    /// The servers to rank: the snapshot when it is under a heartbeat
    /// interval old, else (or when `fresh`) a new read. `None` when `fresh`
    /// is asked but the snapshot is itself from this instant (nothing to
    /// gain from reading again). The reservation stays the only guard, so
    /// a stale snapshot costs at most a refused attempt.
    async fn ranking_snapshot(&self, fresh: bool) -> Result<Option<Arc<Vec<ServerSnapshot>>>, AppError> {
        let now = self.now();
        let cached = self.server_snapshot.lock().map(|s| s.clone()).unwrap_or(None);
        if let Some((read_at, servers)) = cached {
            if !fresh && now - read_at < self.heartbeat_interval_ms {
                return Ok(Some(servers));
            }
            if fresh && read_at >= now {
                return Ok(None);
            }
        }
        let servers = Arc::new(self.store.servers.list_servers().await?);
        if let Ok(mut slot) = self.server_snapshot.lock() {
            *slot = Some((now, servers.clone()));
        }
        Ok(Some(servers))
    }

    async fn reserve(
        &self,
        input: &Checked,
        id: &BotId,
        server: &ServerName,
        effects: &SideEffects,
    ) -> Result<trekker_store::Registered, StoreError> {
        let bot = NewBot {
            pending_share_percent: self.pending_share_percent,
            id: id.clone(),
            name: input.name.clone(),
            phone: input.phone.clone(),
            server: server.clone(),
            credentials: input.credentials.clone(),
        };
        // Registrations on one server queue on its row lock: more of them
        // in flight at once only lengthens the queue inside the database.
        let _turn = self.placements_in_flight.acquire().await;
        self.store.bots.register_bot(&bot, effects, self.now()).await
    }

    /// The activity and guest notification of a new bot on `server`.
    fn new_bot_effects(
        &self,
        input: &Checked,
        id: &BotId,
        server: &ServerName,
        action: &str,
        remote: Option<&ServerName>,
    ) -> SideEffects {
        let mut activity = NewActivity::new(&self.node, action, format!("bot \"{}\" placed on {server}", input.name))
            .for_bot(id, &input.phone);
        if let Some(remote) = remote {
            activity = activity.with_remote(remote, None);
        }
        let message = match remote {
            Some(target) => {
                GuestMessage::AutoAssigned { bot_name: input.name.clone(), from: self.node.clone(), to: target.clone() }
            }
            None => GuestMessage::Text(messages::registered_pending_approval(&input.name, server)),
        };
        SideEffects::activity(activity).notify(&input.phone, message)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::Mocks;
    use trekker_store::{Registered, ServerSnapshot};
    use trekker_testkit::creds;

    use std::sync::Arc;
    use trekker_tenancy::ClientError;

    use super::*;
    use crate::test_support::*;

    fn request(selected: Option<&str>) -> RegisterRequest {
        RegisterRequest {
            bot_name: "My bot".into(),
            phone_number: "+254 712 345 678".into(),
            credentials: CredentialInput::SessionId(creds::session_id(PHONE, 1)),
            selected_server: selected.map(str::to_owned),
        }
    }

    /// The store's answer for a phone registered on `server`.
    fn taken(server: &str) -> StoreError {
        StoreError::PhoneTaken { server: name(server), bot_id: BotId::parse("bot-1").unwrap() }
    }

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    fn snapshot(server: &str, max: i64, used: i64) -> ServerSnapshot {
        crate::test_support::server_snapshot(server, max, used)
    }

    fn registered(bot: &NewBot, free: i64) -> Registered {
        let mut record = bot_record(bot.server.as_str(), ApprovalStatus::Pending);
        record.id = bot.id.clone();
        Registered { bot: record, free_slots_after: free }
    }

    async fn refused(store: Mocks, request: RegisterRequest) -> AppError {
        trekker(store).register_bot(request).await.unwrap_err()
    }

    #[test]
    fn debug_never_shows_credentials() {
        let shown = format!("{:?}", request(None));
        assert!(!shown.contains("TREKKER~") && shown.contains("SessionId(<redacted>)"), "{shown}");
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_touching_the_store() {
        // A Mocks without expectations panics on any call.
        let cases = [
            (RegisterRequest { bot_name: "  ".into(), ..request(None) }, "botName is required."),
            (RegisterRequest { bot_name: "x".repeat(101), ..request(None) }, "botName must be"),
            (RegisterRequest { phone_number: "".into(), ..request(None) }, "phoneNumber is required."),
            (RegisterRequest { phone_number: "12ab".into(), ..request(None) }, "phoneNumber:"),
            (
                RegisterRequest { credentials: CredentialInput::SessionId(" ".into()), ..request(None) },
                "sessionId is required.",
            ),
        ];
        for (request, message) in cases {
            match refused(Mocks::default(), request).await {
                AppError::InvalidInput(text) => assert!(text.starts_with(message), "{text}"),
                other => panic!("expected InvalidInput, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn bad_credentials_and_mismatch() {
        let undecodable =
            RegisterRequest { credentials: CredentialInput::SessionId("TREKKER~***".into()), ..request(None) };
        assert!(matches!(refused(Mocks::default(), undecodable).await, AppError::InvalidSession(_)));
        let not_baileys = RegisterRequest {
            credentials: CredentialInput::FileJson(serde_json::json!({"me": {"id": "254712345678@s.whatsapp.net"}})),
            ..request(None)
        };
        assert!(matches!(refused(Mocks::default(), not_baileys).await, AppError::InvalidCredentials(_)));
        let mismatch = RegisterRequest { phone_number: "254700000000".into(), ..request(None) };
        let err = refused(Mocks::default(), mismatch).await;
        assert_eq!(
            err.to_string(),
            "Credentials phone number mismatch. The session belongs to +254712345678 but you provided +254700000000."
        );
    }

    #[tokio::test]
    async fn unknown_selected_server() {
        let mut store = Mocks::default();
        store.servers.expect_get_server().returning(|_| Ok(None));
        assert!(matches!(refused(store, request(Some("nowhere"))).await, AppError::UnknownServer(s) if s == "NOWHERE"));
        assert!(matches!(refused(Mocks::default(), request(Some("bad name!"))).await, AppError::UnknownServer(_)));
    }

    #[tokio::test]
    async fn new_bot_goes_to_this_node_when_it_has_room() {
        let mut store = Mocks::default();
        store.bots.expect_find_registration().never();
        store
            .bots
            .expect_register_bot()
            .withf(|bot, effects, _| {
                bot.server.as_str() == "SERVER0"
                    && bot.name == "My bot"
                    && effects.activity.action == "registered"
                    && effects
                        .notification
                        .as_ref()
                        .is_some_and(|n| n.message.render(None).contains("waiting for admin approval"))
            })
            .times(1)
            .returning(|bot, _, _| Ok(registered(bot, 4)));
        let outcome = trekker(store).register_bot(request(None)).await.unwrap();
        assert_eq!(outcome.kind(), "registered");
        assert_eq!(outcome.bot().server.as_str(), "SERVER0");
    }

    /// A name of exactly the limit (counted in characters, not bytes) is a
    /// name; one more character is refused (above).
    #[tokio::test]
    async fn a_bot_name_of_exactly_the_limit_is_accepted() {
        let longest = "é".repeat(MAX_BOT_NAME_CHARS);
        let mut store = Mocks::default();
        let expected = longest.clone();
        store
            .bots
            .expect_register_bot()
            .withf(move |bot, _, _| bot.name == expected)
            .times(1)
            .returning(|bot, _, _| Ok(registered(bot, 4)));
        let outcome = trekker(store).register_bot(RegisterRequest { bot_name: longest, ..request(None) }).await;
        assert_eq!(outcome.unwrap().kind(), "registered");
    }

    #[tokio::test]
    async fn full_node_auto_assigns_to_most_free_and_skips_one_that_filled_meanwhile() {
        let mut store = Mocks::default();
        store.bots.expect_find_registration().never();
        store.servers.expect_list_servers().returning(|| {
            Ok(vec![
                snapshot("SERVER0", 2, 2),
                snapshot("SERVER1", 10, 9),
                snapshot("SERVER2", 10, 2),
                snapshot("SERVER3", 10, 5),
            ])
        });
        let mut seq = mockall::Sequence::new();
        for (server, answer) in [("SERVER0", Some("full")), ("SERVER2", Some("full")), ("SERVER3", None)] {
            store
                .bots
                .expect_register_bot()
                .withf(move |bot, _, _| bot.server.as_str() == server)
                .times(1)
                .in_sequence(&mut seq)
                .returning(move |bot, effects, _| match answer {
                    Some(_) => Err(StoreError::ServerFull(bot.server.clone())),
                    None => {
                        assert_eq!(effects.activity.action, "auto_assigned");
                        let message = &effects.notification.as_ref().unwrap().message;
                        assert!(matches!(message, GuestMessage::AutoAssigned { to, .. } if to.as_str() == "SERVER3"));
                        Ok(registered(bot, 4))
                    }
                });
        }
        let outcome = trekker(store).register_bot(request(None)).await.unwrap();
        match outcome {
            RegisterOutcome::AutoAssigned { bot, from, available_slots } => {
                assert_eq!((bot.server.as_str(), from.as_str(), available_slots), ("SERVER3", "SERVER0", 4));
            }
            other => panic!("expected AutoAssigned, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_full_node_ranks_from_a_snapshot_and_reads_again_only_when_it_fails() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut store = Mocks::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        store.servers.expect_list_servers().returning(move || {
            // The first read still offers SERVER1; by the second it is full
            // and SERVER2 has joined.
            Ok(match counted.fetch_add(1, Ordering::SeqCst) {
                0 => vec![snapshot("SERVER0", 2, 2), snapshot("SERVER1", 10, 5)],
                _ => vec![snapshot("SERVER0", 2, 2), snapshot("SERVER1", 10, 10), snapshot("SERVER2", 10, 0)],
            })
        });
        let server1_taken = Arc::new(AtomicUsize::new(0));
        store.bots.expect_register_bot().returning(move |bot, _, _| match bot.server.as_str() {
            "SERVER1" if server1_taken.fetch_add(1, Ordering::SeqCst) == 0 => Ok(registered(bot, 4)),
            "SERVER2" => Ok(registered(bot, 9)),
            _ => Err(StoreError::ServerFull(bot.server.clone())),
        });
        let clock = Arc::new(trekker_domain::time::ManualClock::new(NOW));
        let mut node = trekker(store);
        node.clock = clock.clone();
        let placed_on = |outcome: RegisterOutcome| outcome.bot().server.to_string();

        assert_eq!(placed_on(node.register_bot(request(None)).await.unwrap()), "SERVER1");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Within a heartbeat interval the snapshot serves; SERVER1 refuses
        // (it filled meanwhile), so the servers are read again, once.
        clock.advance(1_000);
        assert_eq!(placed_on(node.register_bot(request(None)).await.unwrap()), "SERVER2");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        clock.advance(1_000);
        assert_eq!(placed_on(node.register_bot(request(None)).await.unwrap()), "SERVER2");
        assert_eq!(reads.load(Ordering::SeqCst), 2, "the fresh snapshot serves the next registration");
        // Past a heartbeat interval it is read again before ranking.
        clock.advance(10_000);
        node.register_bot(request(None)).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn everything_full_is_all_servers_full() {
        let mut store = Mocks::default();
        store.bots.expect_find_registration().never();
        store
            .servers
            .expect_list_servers()
            .returning(|| Ok(vec![snapshot("SERVER0", 1, 1), snapshot("SERVER1", 1, 1)]));
        store
            .bots
            .expect_register_bot()
            .times(1)
            .returning(|bot, _, _| Err(StoreError::ServerFull(bot.server.clone())));
        store
            .activities
            .expect_append_activity()
            .withf(|a, _| a.action == "registration_refused")
            .times(1)
            .returning(|_, _| Ok(()));
        let err = refused(store, request(None)).await;
        assert!(matches!(err, AppError::AllServersFull));
        assert_eq!(err.to_string(), "All servers are at capacity. Please try again later or contact support.");
    }

    #[tokio::test]
    async fn selected_server_full_or_taken_elsewhere() {
        let mut store = Mocks::default();
        store.servers.expect_get_server().returning(|n| Ok(Some(snapshot(n.as_str(), 1, 1))));
        store.bots.expect_find_registration().never();
        store.bots.expect_register_bot().returning(|bot, _, _| Err(StoreError::ServerFull(bot.server.clone())));
        assert!(
            matches!(refused(store, request(Some("server1"))).await, AppError::ServerFull(s) if s.as_str() == "SERVER1")
        );

        let mut store = Mocks::default();
        store.servers.expect_get_server().returning(|n| Ok(Some(snapshot(n.as_str(), 5, 1))));
        store.bots.expect_register_bot().times(1).returning(|_, _, _| Err(taken("SERVER0")));
        store.bots.expect_find_registration().returning(|_| Ok(Some(registry_entry("SERVER0"))));
        let err = refused(store, request(Some("SERVER1"))).await;
        assert_eq!(err.to_string(), "This phone number is registered on SERVER0. Cannot move to SERVER1.");
    }

    #[tokio::test]
    async fn hosted_here_updates_credentials_and_restarts_approved_bots() {
        for (approval, restarting) in [(ApprovalStatus::Approved, true), (ApprovalStatus::Pending, false)] {
            let mut store = Mocks::default();
            store.bots.expect_register_bot().times(1).returning(|_, _, _| Err(taken("SERVER0")));
            store.bots.expect_find_registration().returning(|_| Ok(Some(registry_entry("SERVER0"))));
            store.bots.expect_find_bot_on_server().returning(move |_, _| Ok(Some(bot_record("SERVER0", approval))));
            let sent = request(None);
            let expected = creds::credentials(PHONE, 1);
            store
                .bots
                .expect_update_credentials()
                .withf(move |id, credentials, rule, effects, now| {
                    id.as_str() == "bot-1"
                        && *credentials == expected
                        && *rule == VersionRule::Next
                        && effects.activity.action == "credentials_updated"
                        && *now == NOW
                })
                .times(1)
                .returning(move |_, _, _, _, _| Ok(bot_record("SERVER0", approval)));
            let outcome = trekker(store).register_bot(sent).await.unwrap();
            match &outcome {
                RegisterOutcome::CredentialsUpdated { bot, restarting: said } => {
                    assert_eq!((bot.id.as_str(), *said), ("bot-1", restarting));
                }
                other => panic!("expected CredentialsUpdated, got {other:?}"),
            }
            assert_eq!(outcome.kind(), "credentials_updated");
            assert_eq!(outcome.message().contains("restarting"), restarting, "{}", outcome.message());
        }
    }

    /// A fake host: answers as told and records the command ids it saw.
    #[derive(Debug)]
    struct FakeHost(Result<i64, ClientError>, std::sync::Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl crate::crossserver::RemoteCredentials for FakeHost {
        async fn update_bot_credentials(
            &self,
            target: &ServerName,
            _: &str,
            command_id: &str,
            body: &trekker_tenancy::wire::CredentialsUpdateBody,
        ) -> Result<trekker_tenancy::wire::CredentialsUpdateAnswer, ClientError> {
            self.1.lock().unwrap().push(command_id.to_owned());
            assert_eq!(body.credentials_version, Some(2));
            self.0.clone().map(|version| trekker_tenancy::wire::CredentialsUpdateAnswer {
                success: true,
                bot_id: body.bot_id.clone(),
                server: target.to_string(),
                credentials_version: version,
                restarted: true,
            })
        }
    }

    /// The id of the update the use case queued (the outbox row id).
    type Queued = Arc<std::sync::Mutex<Option<String>>>;

    fn cross_server_store(host_heartbeat: i64) -> Mocks {
        cross_server_store_recording(host_heartbeat, Queued::default())
    }

    fn cross_server_store_recording(host_heartbeat: i64, queued: Queued) -> Mocks {
        let mut store = Mocks::default();
        store.bots.expect_register_bot().times(1).returning(|_, _, _| Err(taken("SERVER1")));
        store.bots.expect_find_registration().returning(|_| Ok(Some(registry_entry("SERVER1"))));
        store
            .bots
            .expect_find_bot_on_server()
            .returning(|_, _| Ok(Some(bot_record("SERVER1", ApprovalStatus::Approved))));
        // The delivery asks where the bot lives now: still SERVER1.
        store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER1", ApprovalStatus::Approved))));
        store.credential_outbox.expect_enqueue_credential_update().times(1).returning(move |update, effects, _| {
            assert_eq!(effects.activity.remote_tenancy.as_ref().map(ServerName::as_str), Some("SERVER1"));
            *queued.lock().unwrap() = Some(update.id.clone());
            Ok(trekker_store::CredentialUpdate {
                id: update.id.clone(),
                bot_id: update.bot_id.clone(),
                phone: update.phone.clone(),
                source: update.source.clone(),
                target: update.target.clone(),
                version: 2,
                status: trekker_store::OutboxStatus::Pending,
                attempts: 0,
                last_error: None,
                created_at: NOW,
                delivered_at: None,
            })
        });
        store.servers.expect_get_server().returning(move |name| {
            let mut host = snapshot(name.as_str(), 5, 1);
            host.base_url = Some("http://host.test".into());
            host.last_heartbeat = Some(host_heartbeat);
            Ok(Some(host))
        });
        store
    }

    fn with_claim(store: &mut Mocks) {
        store.credential_outbox.expect_claim_credential_update().times(1).returning(|id, _, _, _| {
            Ok(Some(trekker_store::ClaimedUpdate {
                update: trekker_store::CredentialUpdate {
                    id: id.to_owned(),
                    bot_id: BotId::parse("bot-1").unwrap(),
                    phone: PhoneNumber::parse(PHONE).unwrap(),
                    source: name("SERVER0"),
                    target: name("SERVER1"),
                    version: 2,
                    status: trekker_store::OutboxStatus::Pending,
                    attempts: 1,
                    last_error: None,
                    created_at: NOW,
                    delivered_at: None,
                },
                credentials: creds::credentials(PHONE, 1),
            }))
        });
    }

    #[tokio::test]
    async fn hosted_elsewhere_and_offline_is_queued_without_waiting() {
        // The host's last beat is 31 s old with a 10 s interval: offline.
        let store = cross_server_store(NOW - 31_000);
        let outcome = trekker(store).register_bot(request(None)).await.unwrap();
        match outcome {
            RegisterOutcome::CrossServerQueued { host, update_id, .. } => {
                assert_eq!(host.as_str(), "SERVER1");
                assert_eq!(update_id.len(), 32);
            }
            other => panic!("expected queued, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn hosted_elsewhere_and_online_is_delivered_now() {
        let queued = Queued::default();
        let mut store = cross_server_store_recording(NOW, queued.clone());
        with_claim(&mut store);
        store
            .credential_outbox
            .expect_finish_credential_update()
            .withf(|_, _, outcome, _| *outcome == trekker_store::DeliveryOutcome::Delivered)
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        store.activities.expect_append_activity().returning(|_, _| Ok(()));
        let host = Arc::new(FakeHost(Ok(2), Default::default()));
        let mut trekker = trekker(store);
        trekker.remote = host.clone();
        let outcome = trekker.register_bot(request(None)).await.unwrap();
        assert_eq!(outcome.kind(), "cross_server_credential_update");
        // Invariant 5: the command id the host saw is the outbox row's id,
        // so a retry by any node is recognised as the same command.
        let queued_id = queued.lock().unwrap().clone().expect("an update was queued first");
        assert_eq!(*host.1.lock().unwrap(), vec![queued_id]);
    }

    #[tokio::test]
    async fn hosted_elsewhere_refusal_is_remote_update_failed() {
        let mut store = cross_server_store(NOW);
        with_claim(&mut store);
        store
            .credential_outbox
            .expect_finish_credential_update()
            .withf(|_, _, outcome, _| matches!(outcome, trekker_store::DeliveryOutcome::Failed { .. }))
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        let refusal = ClientError::Refused {
            status: 404,
            code: "NOT_FOUND".into(),
            message: "Bot bot-1 is not hosted on SERVER1.".into(),
            retry_after_secs: None,
        };
        let mut trekker = trekker(store);
        trekker.remote = Arc::new(FakeHost(Err(refusal), Default::default()));
        let err = trekker.register_bot(request(None)).await.unwrap_err();
        assert_eq!(err.to_string(), "Failed to update credentials on SERVER1: Bot bot-1 is not hosted on SERVER1.");
    }

    #[tokio::test]
    async fn registry_row_without_bot_is_inconsistent() {
        let mut store = Mocks::default();
        store.bots.expect_register_bot().times(1).returning(|_, _, _| Err(taken("SERVER1")));
        store.bots.expect_find_registration().returning(|_| Ok(Some(registry_entry("SERVER1"))));
        store.bots.expect_find_bot_on_server().returning(|_, _| Ok(None));
        assert!(
            matches!(refused(store, request(None)).await, AppError::RegistryInconsistent(s) if s.as_str() == "SERVER1")
        );
    }

    #[tokio::test]
    async fn phone_taken_meanwhile_is_looked_up_again() {
        let mut store = Mocks::default();
        let mut seq = mockall::Sequence::new();
        // Taken, but freed before the look-up: placed again, then taken
        // again (by someone else's bot on this node) and updated.
        store.bots.expect_register_bot().times(1).in_sequence(&mut seq).returning(|_, _, _| Err(taken("SERVER0")));
        store.bots.expect_find_registration().times(1).in_sequence(&mut seq).returning(|_| Ok(None));
        store.bots.expect_register_bot().times(1).in_sequence(&mut seq).returning(|_, _, _| Err(taken("SERVER0")));
        store
            .bots
            .expect_find_registration()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Ok(Some(registry_entry("SERVER0"))));
        store
            .bots
            .expect_find_bot_on_server()
            .returning(|_, _| Ok(Some(bot_record("SERVER0", ApprovalStatus::Pending))));
        store
            .bots
            .expect_update_credentials()
            .times(1)
            .returning(|_, _, _, _, _| Ok(bot_record("SERVER0", ApprovalStatus::Pending)));
        let outcome = trekker(store).register_bot(request(None)).await.unwrap();
        assert_eq!(outcome.kind(), "credentials_updated");
    }
}
