//! The store's narrow traits, one per aggregate, and [`Store`], their union.
//!
//! A caller depends on the few operations it uses (the supervisor on
//! [`RuntimeStore`], the token verifier on [`ReplayGuard`] and
//! [`ServerStore`]), so its mocks stay small. `Arc<dyn Store>` still wires a
//! whole node: it coerces into any of the narrow `Arc<dyn ...>` handles.
//!
//! Times are passed in (`now`, epoch milliseconds) rather than read inside,
//! so tests drive expiry, leases and liveness without sleeping.

use async_trait::async_trait;
use trekker_domain::capacity::CapacityLevel;
use trekker_domain::{BotId, Credentials, PhoneNumber, ServerName};

use crate::error::StoreError;
use crate::model::*;

/// `server_registry`: capacity, status and heartbeats of the nodes.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ServerStore: Send + Sync + 'static {
    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Inserts or updates this node's registry row (capacity, base URL) and
    /// records a heartbeat. The admin-set status of an existing row is kept.
    async fn upsert_server(&self, server: &ServerRegistration, now: Millis) -> Result<ServerSnapshot, StoreError>;

    /// Records a heartbeat, with the node's load when it measured one;
    /// `UnknownServer` if the row is gone.
    async fn heartbeat(&self, server: &ServerName, now: Millis, load: Option<ServerLoad>) -> Result<(), StoreError>;

    /// Every server, ordered by name.
    async fn list_servers(&self) -> Result<Vec<ServerSnapshot>, StoreError>;

    /// One server; none when it is not registered.
    async fn get_server(&self, server: &ServerName) -> Result<Option<ServerSnapshot>, StoreError>;

    /// Applies an admin's change to capacity and/or status, and writes its
    /// `audit` entry in the same transaction.
    async fn update_server(
        &self,
        server: &ServerName,
        patch: &ServerPatch,
        audit: &NewActivity,
        now: Millis,
    ) -> Result<ServerSnapshot, StoreError>;

    /// Starts an evacuation: the server becomes `draining` and is marked
    /// as being emptied (kept if one is under way already); its `audit`
    /// entry is written in the same transaction.
    async fn start_evacuation(
        &self,
        server: &ServerName,
        audit: &NewActivity,
        now: Millis,
    ) -> Result<ServerSnapshot, StoreError>;

    /// Records how an evacuation pass ended: `stuck` bots fit nowhere;
    /// `done` (nothing left on the server) ends the evacuation.
    async fn record_evacuation(&self, server: &ServerName, stuck: i64, done: bool) -> Result<(), StoreError>;

    /// Servers whose node lease has been gone at least `lost_for_ms` by the
    /// database's clock and that still host approved bots (failover).
    async fn lost_servers(&self, lost_for_ms: i64) -> Result<Vec<ServerName>, StoreError>;
}

/// `god_register` and `bot_instances`: who holds which phone, and the bots'
/// approval life cycle. Every change here keeps invariants 1-3.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait BotStore: Send + Sync + 'static {
    /// Which server hosts `phone`, per `god_register`.
    async fn find_registration(&self, phone: &PhoneNumber) -> Result<Option<RegistryEntry>, StoreError>;

    /// One bot; none when it does not exist.
    async fn get_bot(&self, id: &BotId) -> Result<Option<BotRecord>, StoreError>;

    /// The slot-occupying bot of `phone` on `server`, if that server hosts it.
    async fn find_bot_on_server(
        &self,
        phone: &PhoneNumber,
        server: &ServerName,
    ) -> Result<Option<BotRecord>, StoreError>;

    /// One page of the bots matching `filter`, newest first (ties by id).
    async fn list_bots(&self, filter: &BotFilter) -> Result<BotPage, StoreError>;

    /// Reserves a slot on `bot.server` and inserts the registry row, the bot
    /// row and `effects`, all in ONE transaction (invariants 1-3); the
    /// notification is rendered with the free slots left, known only there.
    /// Refuses with `ServerFull`, `ServerNotAccepting`, `UnknownServer` or
    /// `PhoneTaken`, writing nothing.
    async fn register_bot(&self, bot: &NewBot, effects: &SideEffects, now: Millis) -> Result<Registered, StoreError>;

    /// Replaces a bot's credentials under `rule`; an approved bot goes to
    /// `loading` so its runtime restarts it. `StaleVersion` if the stored
    /// version is not older than `Exactly(v)`.
    async fn update_credentials(
        &self,
        id: &BotId,
        credentials: &Credentials,
        rule: VersionRule,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<BotRecord, StoreError>;

    /// Approves a bot until `expires_at` (pending, expired, or renewal).
    async fn approve_bot(
        &self,
        id: &BotId,
        expires_at: Millis,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<BotRecord, StoreError>;

    /// Rejects a bot and frees its phone and slot in the same transaction.
    async fn reject_bot(&self, id: &BotId, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError>;

    /// Moves a bot in one transaction (invariant 11): its host, its
    /// registry row and both servers' counts (`to` must be active with a
    /// free slot, under any concurrency), a `bot_moves` row, with
    /// `effects`; the request's conditions (source, pace, lost lease) are
    /// checked inside it. The runner is kept: the old host may still save
    /// the bot's session as it stops it, but reports no status for it, and
    /// the new host takes the bot only once the old one released it or its
    /// lease ran out.
    async fn move_bot(&self, request: &MoveRequest, effects: &SideEffects, now: Millis)
    -> Result<MovedBot, StoreError>;

    /// Restarts or stops an approved bot (`desiredState`), with `effects`;
    /// `Conflict` when a bot that is not approved is asked to restart (a
    /// stop holds for any bot: one still waiting stays stopped once approved).
    async fn set_power(
        &self,
        id: &BotId,
        action: PowerAction,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<BotRecord, StoreError>;

    /// Deletes a bot; frees its phone and slot if it still held them.
    async fn delete_bot(&self, id: &BotId, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError>;

    /// Bots still waiting for approval that were registered before
    /// `created_before`, oldest first.
    async fn stale_pending_bots(&self, created_before: Millis, limit: i64) -> Result<Vec<BotRecord>, StoreError>;

    /// Moves approved bots whose approval ran out to `expired`, writing an
    /// `expired` activity by `node` for each in the same transaction; frees
    /// nothing. Returns the bots it expired.
    async fn expire_due_bots(&self, node: &ServerName, now: Millis) -> Result<Vec<BotRecord>, StoreError>;
}

/// `activities`: the audit log.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ActivityLog: Send + Sync + 'static {
    /// Records `activity` on its own (most are written with their change).
    async fn append_activity(&self, activity: &NewActivity, now: Millis) -> Result<(), StoreError>;

    /// Activities (of one bot, if given), newest first, `limit` (at most
    /// [`MAX_PAGE`]) of them after the activity `after`.
    async fn list_activities(
        &self,
        bot: Option<BotId>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<ActivityPage, StoreError>;

    /// The audit trail: activities with an actor (admin writes and system
    /// actions), newest first, `limit` (at most [`MAX_PAGE`]) of them after
    /// the activity `after`, of one actor name and one action if given.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        after: Option<i64>,
        limit: i64,
    ) -> Result<ActivityPage, StoreError>;

    /// Activities written after the activity `after`, oldest first, at most
    /// `limit` (for live feeds).
    async fn activities_after(&self, after: i64, limit: i64) -> Result<Vec<Activity>, StoreError>;

    /// The newest activity's id (0 when there is none).
    async fn last_activity_id(&self) -> Result<i64, StoreError>;
}

/// Finding and repairing disagreements between registry, bots and counts.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ConsistencyStore: Send + Sync + 'static {
    /// Everything where the registry, the bot rows and the counts disagree.
    async fn find_inconsistencies(&self) -> Result<Vec<Inconsistency>, StoreError>;

    /// Repairs one inconsistency (each kind has one safe fix); returns
    /// whether anything changed (it may have been fixed meanwhile).
    async fn repair_inconsistency(
        &self,
        issue: &Inconsistency,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<bool, StoreError>;
}

/// `pairing_requests`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PairingStore: Send + Sync + 'static {
    /// Stores a new pairing request, so any node can answer its status.
    async fn create_pairing(&self, pairing: &NewPairing) -> Result<(), StoreError>;

    /// The pairing request; a pending one past its expiry reads as expired.
    /// A paired request is handed out once: reading it deletes it (two
    /// readers racing: one gets it, the other finds nothing).
    async fn take_pairing(&self, id: &str, now: Millis) -> Result<Option<PairingRecord>, StoreError>;

    /// Deletes requests that ended (failed, expired, or pending past their
    /// expiry) before `before`; returns how many.
    async fn purge_pairings(&self, before: Millis) -> Result<u64, StoreError>;

    /// Stores the credentials of a pending request (sealed) and marks it paired.
    async fn complete_pairing(&self, id: &str, credentials: &Credentials, now: Millis) -> Result<(), StoreError>;

    /// Marks a pending request failed with a message for the guest.
    async fn fail_pairing(&self, id: &str, message: &str, now: Millis) -> Result<(), StoreError>;
}

/// `notification_outbox`: guest messages, claimed by dispatchers.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait NotificationOutbox: Send + Sync + 'static {
    /// Claims up to `limit` due notifications for `worker` until
    /// `now + lease_ms`; no two workers hold the same one at once.
    async fn claim_notifications(
        &self,
        worker: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError>;

    /// As [`Self::claim_notifications`], but only messages to phones whose
    /// bot `node` hosts (or that have no bot any more): for a notifier that
    /// sends from the bot's own session, which only its hosting node holds.
    async fn claim_hosted_notifications(
        &self,
        worker: &str,
        node: &ServerName,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Notification>, StoreError>;

    /// Records how an attempt ended. Ignored (false) if `worker` no longer
    /// holds the claim.
    async fn finish_notification(
        &self,
        id: i64,
        worker: &str,
        outcome: NotificationOutcome,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// Marks every notification of `ids` that `worker` still holds as sent,
    /// in one statement; returns how many.
    async fn finish_notifications_sent(&self, ids: &[i64], worker: &str, now: Millis) -> Result<u64, StoreError>;

    /// Notifications still waiting to be sent (for metrics and tests).
    async fn pending_notifications(&self) -> Result<i64, StoreError>;
}

/// `credential_update_outbox`: cross-server updates waiting for delivery.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait CredentialOutbox: Send + Sync + 'static {
    /// Queues an update with the next credentials version for its bot (one
    /// above both the stored version and any queued or delivered one), and
    /// supersedes older pending updates of that bot, with `effects`, in one
    /// transaction.
    async fn enqueue_credential_update(
        &self,
        update: &NewCredentialUpdate,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<CredentialUpdate, StoreError>;

    /// Claims up to `limit` due pending updates for `worker` until `now + lease_ms`.
    async fn claim_credential_updates(
        &self,
        worker: &str,
        now: Millis,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedUpdate>, StoreError>;

    /// Claims one pending update (due or not), if no one else holds it.
    async fn claim_credential_update(
        &self,
        id: &str,
        worker: &str,
        now: Millis,
        lease_ms: i64,
    ) -> Result<Option<ClaimedUpdate>, StoreError>;

    /// Records how an attempt ended; false if `worker` no longer holds it.
    async fn finish_credential_update(
        &self,
        id: &str,
        worker: &str,
        outcome: DeliveryOutcome,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// One queued cross-server update; none when unknown.
    async fn get_credential_update(&self, id: &str) -> Result<Option<CredentialUpdate>, StoreError>;

    /// Updates still pending delivery.
    async fn credential_outbox_depth(&self) -> Result<i64, StoreError>;

    /// Updates queued at or after `since`, newest first, `limit` at most
    /// (the cross-server statistics).
    async fn credential_updates_since(&self, since: Millis, limit: i64) -> Result<Vec<CredentialUpdate>, StoreError>;

    /// One page of the outbox (of one status, if given), newest first,
    /// continuing after `after` (creation time and id).
    async fn list_credential_updates(
        &self,
        status: Option<OutboxStatus>,
        after: Option<(Millis, String)>,
        limit: i64,
    ) -> Result<UpdatePage, StoreError>;
}

/// `replay_guard`: node-to-node token ids seen before their expiry.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ReplayGuard: Send + Sync + 'static {
    /// Records a token id; false if `(issuer, jti)` was seen before.
    async fn remember_jti(&self, issuer: &str, jti: &str, expires_at: Millis) -> Result<bool, StoreError>;

    /// Deletes records past their expiry; returns how many.
    async fn purge_replay_records(&self, now: Millis) -> Result<u64, StoreError>;
}

/// `idempotency_keys`: the answers of node-to-node commands, by key.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Starts a command under `key`. An in-progress holder older than
    /// `stale_after_ms` is presumed dead and taken over.
    async fn begin_idempotent(
        &self,
        key: &str,
        fingerprint: &str,
        now: Millis,
        stale_after_ms: i64,
        ttl_ms: i64,
    ) -> Result<IdempotencyBegin, StoreError>;

    /// Stores the answer of a finished command.
    async fn finish_idempotent(&self, key: &str, status: u16, body: &str) -> Result<(), StoreError>;

    /// Forgets an in-progress key after a failure that may be retried.
    async fn abandon_idempotent(&self, key: &str) -> Result<(), StoreError>;

    /// Deletes keys past their expiry; returns how many.
    async fn purge_idempotency_keys(&self, now: Millis) -> Result<u64, StoreError>;
}

/// `credential_reviews`: changes signed by another WhatsApp account than a
/// bot's pinned one, waiting for an admin (invariant 8).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ReviewStore: Send + Sync + 'static {
    /// Keeps `review` (sealed) as the bot's one open review, superseding
    /// an older open one, with `effects`, in one transaction.
    async fn open_review(
        &self,
        review: &NewReview,
        effects: &SideEffects,
        now: Millis,
    ) -> Result<CredentialReview, StoreError>;

    /// One page of reviews, newest first, continuing after `after`
    /// (creation time and id); the cursor of the next page, if any.
    async fn list_reviews(&self, after: Option<(Millis, String)>, limit: i64) -> Result<ReviewPage, StoreError>;

    /// Applies an open review's credentials to its bot: the new account is
    /// pinned, the version bumped, an approved bot restarted.
    async fn approve_review(&self, id: &str, effects: &SideEffects, now: Millis) -> Result<BotRecord, StoreError>;

    /// Discards an open review's credentials.
    async fn reject_review(&self, id: &str, effects: &SideEffects, now: Millis)
    -> Result<CredentialReview, StoreError>;
}

/// What the hosting node's bot supervisor reads and writes (invariant 4).
///
/// Liveness is one lease per node (its registry row), not one per bot: a
/// quiet node renews one row and reads only what changed (DESIGN.md, Scale).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait RuntimeStore: Send + Sync + 'static {
    /// Takes a new epoch for `node` (every start, and after a lost lease),
    /// holding until `now + lease_ms`. Bots run under an earlier epoch of
    /// the node may be taken at once. `UnknownServer` if the row is gone.
    async fn start_node_lease(&self, node: &ServerName, now: Millis, lease_ms: i64) -> Result<NodeLease, StoreError>;

    /// Extends the lease until `now + lease_ms`, only if it is still this
    /// epoch's and has not run out, and stamps the node's heartbeat with
    /// `now` (a node that holds its lease is alive: one write, not two).
    /// False: the node lost its bots (another node may have taken them) and
    /// must stop them and start a new lease.
    async fn renew_node_lease(&self, lease: &NodeLease, now: Millis, lease_ms: i64) -> Result<bool, StoreError>;

    /// The approved bots `node` hosts, in full, with a change cursor taken
    /// before reading (the start and the periodic resync).
    async fn bots_to_run(&self, node: &ServerName) -> Result<BotSnapshot, StoreError>;

    /// What changed on `node`'s bots since `cursor` (a cursor from an
    /// earlier read). A quiet node's call reads no bot row.
    async fn bot_changes(&self, node: &ServerName, cursor: &ChangeCursor) -> Result<BotChanges, StoreError>;

    /// Where the fleet-wide change feed stands now (nothing read).
    async fn fleet_cursor(&self) -> Result<ChangeCursor, StoreError>;

    /// What changed among all bots of the fleet since `cursor`, with the
    /// next cursor (the live admin console; [`Self::bot_changes`] for one
    /// node).
    async fn fleet_changes(&self, cursor: &ChangeCursor) -> Result<BotChanges, StoreError>;

    /// A bot's decrypted credentials and their version. Only the hosting
    /// node calls this, to start the bot.
    async fn load_credentials(&self, id: &BotId) -> Result<Option<(Credentials, i64)>, StoreError>;

    /// Makes `lease` the bot's runner, only if the lease's node hosts it,
    /// it is approved, its credentials are at `version`, the lease itself
    /// holds at `now`, and no other live lease runs the bot (its runner is
    /// none, this lease, or a lease that ran out or whose epoch is over).
    async fn acquire_bot(&self, id: &BotId, lease: &NodeLease, version: i64, now: Millis) -> Result<bool, StoreError>;

    /// Gives up the bot (after stopping it), if `lease` still runs it.
    async fn release_bot(&self, id: &BotId, lease: &NodeLease) -> Result<(), StoreError>;

    /// Records a bot's runtime status; ignored (false) unless the report's
    /// node hosts the bot, its lease holds at `now`, no other lease runs
    /// the bot, and the report is about its current credentials.
    async fn report_runtime(&self, report: &RuntimeReport, now: Millis) -> Result<bool, StoreError>;

    /// Records how a run ended, fenced like [`Self::report_runtime`]; an
    /// out-of-memory exit also counts in `oom_kills`.
    async fn record_exit(&self, id: &BotId, runner: &NodeLease, exit: &BotExit) -> Result<bool, StoreError>;

    /// How the bot's last run ended, and its out-of-memory count.
    async fn bot_exits(&self, id: &BotId) -> Result<BotExits, StoreError>;

    /// Deletes departure records written before `before` (a node whose
    /// cursor is older resyncs in full anyway).
    async fn purge_departures(&self, before: Millis) -> Result<u64, StoreError>;
}

/// Bots' WhatsApp session state, sealed, written only by the runner
/// (invariant 9).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SessionStateStore: Send + Sync + 'static {
    /// The bot's saved state for credentials `version`, decrypted; `None`
    /// when there is none for these credentials (a new pairing starts clean).
    async fn load_session_state(&self, id: &BotId, version: i64) -> Result<Option<SessionSnapshot>, StoreError>;

    /// Saves a snapshot; accepted (true) only from the bot's current runner
    /// `lease`, live at `now`, for the bot's current credentials `version`,
    /// and above the generation stored for them. Anything else writes
    /// nothing (a stale runner, a node that lost the bot, an older one).
    async fn save_session_state(
        &self,
        id: &BotId,
        lease: &NodeLease,
        version: i64,
        snapshot: &SessionSnapshot,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// Records that the bot's folder could not be saved (`reason`, for a
    /// person): the bot's `last_error` says so and an activity records it,
    /// under the same fencing as a save. The last good state stays.
    async fn refuse_session_state(
        &self,
        id: &BotId,
        lease: &NodeLease,
        reason: &str,
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// Size and freshness of the saved state, for admins.
    async fn session_state_info(&self, id: &BotId) -> Result<Option<SessionStateInfo>, StoreError>;
}

/// A bot's WhatsApp device state key by key (the in-process `whatsapp`
/// driver's storage), sealed, written only by the runner (invariant 9).
/// Keys live in named spaces (`session`, `prekey`, ...); reads see only
/// the state of credentials `version`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait DeviceStateStore: Send + Sync + 'static {
    /// The values of `keys` in `space` that exist, with their keys.
    async fn device_state_get(
        &self,
        id: &BotId,
        version: i64,
        space: &str,
        keys: &[String],
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Every key of `space` with its value.
    async fn device_state_scan(
        &self,
        id: &BotId,
        version: i64,
        space: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Applies `writes` in order, all or nothing; accepted (true) only
    /// from the bot's current runner `lease`, live at `now`, for the bot's
    /// current credentials `version`. Anything else writes nothing.
    async fn write_device_state(
        &self,
        id: &BotId,
        lease: &NodeLease,
        version: i64,
        writes: &[DeviceWrite],
        now: Millis,
    ) -> Result<bool, StoreError>;

    /// How many keys and bytes the bot keeps for its current credentials;
    /// `None` when it keeps none.
    async fn device_state_info(&self, id: &BotId) -> Result<Option<DeviceStateInfo>, StoreError>;

    /// The hold WhatsApp's limits put the bot's sends under, `(until,
    /// reason)`, whatever its credentials (the limit is on the account).
    async fn send_hold(&self, id: &BotId) -> Result<Option<(Millis, String)>, StoreError>;

    /// Holds the bot's sends until `until` (a hold only ever grows);
    /// accepted (true) only from its runner, fenced as `write_device_state`.
    async fn hold_sends(
        &self,
        id: &BotId,
        lease: &NodeLease,
        version: i64,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<bool, StoreError>;
}

/// The capacity level of each scope (a server, or [`CLUSTER_SCOPE`]), moved
/// by compare-and-set so a crossing warns once however many nodes see it.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait CapacityLevelStore: Send + Sync + 'static {
    /// Every scope's level as last moved (scopes never moved are normal).
    async fn capacity_levels(&self) -> Result<Vec<(String, CapacityLevel)>, StoreError>;

    /// One scope's level (normal if never moved): one row.
    async fn capacity_level(&self, scope: &str) -> Result<CapacityLevel, StoreError>;

    /// Takes `duty` for `node` until `now + ttl_ms` if it is free, lapsed or
    /// already `node`'s (one conditional upsert); true when `node` holds it.
    async fn hold_duty(&self, duty: &str, node: &ServerName, now: Millis, ttl_ms: i64) -> Result<bool, StoreError>;

    /// Moves `scope` from `from` to `to`, only if it is still at `from`; the
    /// call that moves it writes `effects` (the warning) in the same
    /// transaction. True when this call moved it.
    async fn move_capacity_level(
        &self,
        scope: &str,
        from: CapacityLevel,
        to: CapacityLevel,
        effects: Option<SideEffects>,
        now: Millis,
    ) -> Result<bool, StoreError>;
}

/// `api_keys`: the admin API's keys (issue 24).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ApiKeyStore: Send + Sync + 'static {
    /// Stores a new key (its id is random: a clash is `StoreError::Conflict`)
    /// and its `audit` entry, in one transaction.
    async fn create_api_key(&self, key: &ApiKey, audit: &NewActivity) -> Result<(), StoreError>;

    /// The key `id`, revoked or not.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError>;

    /// Keys newest first, `limit` (at most [`MAX_PAGE`]) of them after the
    /// key `after`.
    async fn list_api_keys(&self, after: Option<String>, limit: i64) -> Result<ApiKeyPage, StoreError>;

    /// Revokes the key `id` at `now`; false when there is no such key or
    /// it was revoked already (the first revocation's time stays). A
    /// revocation writes its `audit` entry in its transaction.
    async fn revoke_api_key(&self, id: &str, audit: &NewActivity, now: Millis) -> Result<bool, StoreError>;

    /// Records when keys were last used (one statement per key, never
    /// moving a time back).
    async fn record_api_key_use(&self, uses: &[(String, Millis)]) -> Result<(), StoreError>;
}

/// Everything Trekker keeps in its database: the union of the narrow
/// traits, implemented for every type that implements them all.
pub trait Store:
    ServerStore
    + BotStore
    + ActivityLog
    + ConsistencyStore
    + PairingStore
    + NotificationOutbox
    + CredentialOutbox
    + ReplayGuard
    + IdempotencyStore
    + RuntimeStore
    + ReviewStore
    + SessionStateStore
    + DeviceStateStore
    + CapacityLevelStore
    + ApiKeyStore
{
}

impl<T> Store for T where
    T: ServerStore
        + BotStore
        + ActivityLog
        + ConsistencyStore
        + PairingStore
        + NotificationOutbox
        + CredentialOutbox
        + ReplayGuard
        + IdempotencyStore
        + RuntimeStore
        + ReviewStore
        + SessionStateStore
        + DeviceStateStore
        + CapacityLevelStore
        + ApiKeyStore
{
}
