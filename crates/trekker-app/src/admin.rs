//! Admin use cases: approve, reject, delete, inspect, server changes, and
//! registry inconsistency checks and repair.

use base64::Engine as _;
use trekker_domain::RuntimeStatus;
use trekker_domain::access::Actor;
use trekker_domain::{ApprovalStatus, BotId, ServerName, ServerStatus, messages, time};
use trekker_store::{
    Activity, AuditFilter, AuditMark, BotCursor, BotFilter, BotRecord, CredentialUpdate, DEFAULT_PAGE, Inconsistency,
    MAX_PAGE, NewActivity, OutboxStatus, ServerPatch, ServerSnapshot, SessionStateInfo, SideEffects,
};

use crate::{AppError, Trekker, telemetry};

/// The approval length when the admin gives none.
pub const DEFAULT_EXPIRATION_MONTHS: u32 = 3;
/// The longest approval accepted.
pub const MAX_EXPIRATION_MONTHS: u32 = 120;
/// An approval month, for expiry arithmetic (30 days; documented in the API docs).
const MONTH_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// The longest actor or action an audit filter takes.
const MAX_FILTER_CHARS: usize = 100;
/// The longest target a refused write records.
pub const MAX_TARGET_CHARS: usize = 80;

/// A server as the API shows it: the row plus whether it is online now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub server: ServerSnapshot,
    pub online: bool,
}

/// What a repair run found and changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    pub found: Vec<Inconsistency>,
    /// How many were fixed (0 on a dry run).
    pub repaired: usize,
    pub dry_run: bool,
}

pub(crate) fn parse_bot_id(id: &str) -> Result<BotId, AppError> {
    BotId::parse(id).map_err(|_| AppError::NotFound("Bot not found.".into()))
}

/// A bot with what it keeps of its WhatsApp session.
#[derive(Debug, Clone)]
pub struct BotStates {
    pub bot: BotRecord,
    pub session: Option<SessionStateInfo>,
    pub device: Option<trekker_store::DeviceStateInfo>,
    /// How its last run ended, and its out-of-memory kills.
    pub exits: trekker_store::BotExits,
}

impl Trekker {
    pub async fn servers(&self) -> Result<Vec<ServerView>, AppError> {
        Ok(self
            .store
            .servers
            .list_servers()
            .await?
            .into_iter()
            .map(|server| ServerView { online: self.is_server_online(&server), server })
            .collect())
    }

    pub async fn update_server(
        &self,
        actor: &Actor,
        name: &str,
        max_bot_count: Option<i64>,
        status: Option<&str>,
    ) -> Result<ServerView, AppError> {
        let name = ServerName::parse(name).map_err(|_| AppError::NotFound(format!("Server {name} not found.")))?;
        if max_bot_count.is_none() && status.is_none() {
            return Err(AppError::InvalidInput("Give maxBotCount and/or status.".into()));
        }
        if max_bot_count.is_some_and(|max| !(0..=1_000_000).contains(&max)) {
            return Err(AppError::InvalidInput("maxBotCount must be between 0 and 1000000.".into()));
        }
        let status = status
            .map(|s| {
                s.parse::<ServerStatus>()
                    .map_err(|_| AppError::InvalidInput("status must be active, draining or inactive.".into()))
            })
            .transpose()?;
        let patch = ServerPatch { max_bot_count, status };
        let changes = [
            patch.max_bot_count.map(|max| format!("capacity set to {max}")),
            patch.status.map(|status| format!("status set to {}", status.as_str())),
        ];
        let details = changes.into_iter().flatten().collect::<Vec<_>>().join(", ");
        let audit = NewActivity::new(&self.node, "server_updated", details)
            .with_remote(&name, None)
            .by(actor, AuditMark::server(&name));
        let now = self.now();
        let updated = self.store.servers.update_server(&name, &patch, &audit, now).await.map_err(|err| match err {
            trekker_store::StoreError::UnknownServer(_) => AppError::NotFound(format!("Server {name} not found.")),
            other => other.into(),
        })?;
        Ok(ServerView { online: self.is_server_online(&updated), server: updated })
    }

    /// One page of bots (newest first) and the cursor of the next page.
    pub async fn bots(&self, query: &BotQuery) -> Result<(Vec<BotRecord>, Option<String>), AppError> {
        let (server, approval) = (query.server.as_deref(), query.approval.as_deref());
        let server = server
            .filter(|s| !s.is_empty())
            .map(|s| {
                ServerName::parse(s).map_err(|_| AppError::InvalidInput("server is not a valid server name.".into()))
            })
            .transpose()?;
        let approval = approval
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ApprovalStatus>().map_err(|_| {
                    AppError::InvalidInput("approval must be pending, approved, rejected or expired.".into())
                })
            })
            .transpose()?;
        let status = query
            .status
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<RuntimeStatus>().map_err(|_| {
                    AppError::InvalidInput("status must be offline, loading, online, error or failed.".into())
                })
            })
            .transpose()?;
        let limit = Some(page_size(query.limit)?);
        let after = query
            .after
            .as_deref()
            .filter(|a| !a.is_empty())
            .map(parse_cursor)
            .transpose()?
            .map(|(created_at, id)| {
                BotId::parse(&id)
                    .map(|id| BotCursor { created_at, id })
                    .map_err(|_| AppError::InvalidInput("after is not a cursor this API gave out.".into()))
            })
            .transpose()?;
        let page = self.store.bots.list_bots(&BotFilter { server, approval, status, after, limit }).await?;
        Ok((page.bots, page.next.map(|c| format_cursor(c.created_at, c.id.as_str()))))
    }

    /// One page of the cross-server outbox (API.md `GET /api/admin/credential-updates`).
    pub async fn credential_updates(
        &self,
        status: Option<&str>,
        limit: Option<i64>,
        after: Option<&str>,
    ) -> Result<(Vec<CredentialUpdate>, Option<String>), AppError> {
        let status = status
            .filter(|s| !s.is_empty())
            .map(|s| {
                OutboxStatus::parse(s).ok_or_else(|| {
                    AppError::InvalidInput("status must be pending, delivered, superseded, failed or expired.".into())
                })
            })
            .transpose()?;
        let limit = page_size(limit)?;
        let after = after.filter(|a| !a.is_empty()).map(parse_cursor).transpose()?;
        let page = self.store.credential_outbox.list_credential_updates(status, after, limit).await?;
        Ok((page.updates, page.next.map(|(at, id)| format_cursor(at, &id))))
    }

    /// A bot with the size and freshness of its saved session state (for
    /// its current credentials; `None` before the first save).
    /// The bot, its saved session folder (`process` driver) and its keyed
    /// device state (`whatsapp` driver), for admins.
    pub async fn bot_with_state(&self, id: &str) -> Result<BotStates, AppError> {
        let bot = self.bot(id).await?;
        let session = self.store.session_state.session_state_info(&bot.id).await?;
        let device = self.store.device_state.device_state_info(&bot.id).await?;
        let exits = self.store.runtime.bot_exits(&bot.id).await?;
        Ok(BotStates { bot, session, device, exits })
    }

    pub async fn bot(&self, id: &str) -> Result<BotRecord, AppError> {
        let id = parse_bot_id(id)?;
        self.store.bots.get_bot(&id).await?.ok_or_else(|| AppError::NotFound("Bot not found.".into()))
    }

    /// Approves a bot for `expiration_months` (default 3); its hosting node
    /// starts it. The guest is notified in the same transaction.
    pub async fn approve_bot(
        &self,
        actor: &Actor,
        id: &str,
        expiration_months: Option<u32>,
    ) -> Result<BotRecord, AppError> {
        let months = expiration_months.unwrap_or(DEFAULT_EXPIRATION_MONTHS);
        if !(1..=MAX_EXPIRATION_MONTHS).contains(&months) {
            return Err(AppError::InvalidInput(format!(
                "expirationMonths must be between 1 and {MAX_EXPIRATION_MONTHS}."
            )));
        }
        let bot = self.bot(id).await?;
        let now = self.now();
        let expires_at = now + i64::from(months) * MONTH_MS;
        let activity = NewActivity::new(&self.node, "approved", format!("approved for {months} months"))
            .for_bot(&bot.id, &bot.phone)
            .with_remote(&bot.server, Some(&bot.id))
            .by(actor, AuditMark::bot(&bot.id));
        let effects = SideEffects::activity(activity)
            .notify(&bot.phone, messages::approved(&bot.name, &time::iso_date(expires_at)));
        let approved = self.store.bots.approve_bot(&bot.id, expires_at, &effects, now).await?;
        self.bots_changed();
        let until = time::iso_date(expires_at);
        tracing::info!(bot = %approved.id, server = %approved.server, "✅ Bot approved until {until}");
        Ok(approved)
    }

    /// Rejects a bot; its phone and slot are freed in the same transaction.
    pub async fn reject_bot(&self, actor: &Actor, id: &str) -> Result<BotRecord, AppError> {
        let id = parse_bot_id(id)?;
        let activity = NewActivity::new(&self.node, "rejected", "rejected by an admin").by(actor, AuditMark::bot(&id));
        let effects = SideEffects::activity(NewActivity { bot_id: Some(id.clone()), ..activity });
        let rejected = self.store.bots.reject_bot(&id, &effects, self.now()).await?;
        self.bots_changed();
        self.capacity_touched(&rejected.server);
        tracing::info!(bot = %rejected.id, "🚫 Bot rejected; phone and slot freed");
        Ok(rejected)
    }

    /// Deletes a bot, freeing its phone and slot.
    pub async fn delete_bot(&self, actor: &Actor, id: &str) -> Result<BotRecord, AppError> {
        let id = parse_bot_id(id)?;
        let activity = NewActivity::new(&self.node, "deleted", "deleted by an admin").by(actor, AuditMark::bot(&id));
        let effects = SideEffects::activity(NewActivity { bot_id: Some(id.clone()), ..activity });
        let deleted = self.store.bots.delete_bot(&id, &effects, self.now()).await?;
        self.bots_changed();
        self.capacity_touched(&deleted.server);
        tracing::info!(bot = %deleted.id, "🗑️ Bot deleted; phone and slot freed");
        Ok(deleted)
    }

    /// The audit log (of one bot, when `bot` is given), newest first, a
    /// page at a time.
    pub async fn activities(
        &self,
        bot: Option<&str>,
        limit: Option<i64>,
        after: Option<&str>,
    ) -> Result<(Vec<Activity>, Option<String>), AppError> {
        let bot = bot
            .filter(|b| !b.is_empty())
            .map(|b| BotId::parse(b).map_err(|_| AppError::InvalidInput("bot is not a bot id.".into())))
            .transpose()?;
        let limit = page_size(limit)?;
        let after = after.filter(|a| !a.is_empty()).map(parse_activity_cursor).transpose()?;
        let page = self.store.activities.list_activities(bot, after, limit).await?;
        let next = page.next.map(|id| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("a{id}")));
        Ok((page.activities, next))
    }

    /// The audit trail (admin writes and system actions), newest first, a
    /// page at a time, of one actor and one action when given.
    pub async fn audit(
        &self,
        actor: Option<&str>,
        action: Option<&str>,
        limit: Option<i64>,
        after: Option<&str>,
    ) -> Result<(Vec<Activity>, Option<String>), AppError> {
        let given = |value: Option<&str>, what: &str| -> Result<Option<String>, AppError> {
            match value.map(str::trim).filter(|v| !v.is_empty()) {
                Some(v) if v.chars().count() > MAX_FILTER_CHARS || v.chars().any(char::is_control) => Err(
                    AppError::InvalidInput(format!("{what} must be at most {MAX_FILTER_CHARS} printable characters.")),
                ),
                other => Ok(other.map(str::to_owned)),
            }
        };
        let filter = AuditFilter { actor: given(actor, "actor")?, action: given(action, "action")? };
        let limit = page_size(limit)?;
        let after = after.filter(|a| !a.is_empty()).map(parse_activity_cursor).transpose()?;
        let page = self.store.activities.list_audit(&filter, after, limit).await?;
        let next = page.next.map(|id| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("a{id}")));
        Ok((page.activities, next))
    }

    /// Puts an admin write that was refused (`code`) on the audit trail: a
    /// write that was made has its entry from its own transaction. Never
    /// fatal; `target` is cut to [`MAX_TARGET_CHARS`] and loses control
    /// characters (it may be made up: a path's `%0A` decodes to a newline).
    pub async fn record_refused(&self, actor: &Actor, action: &str, target: &str, code: &str) {
        let target: String = target.chars().filter(|c| !c.is_control()).take(MAX_TARGET_CHARS).collect();
        let activity = NewActivity::new(&self.node, action, "refused").by(actor, target).refused(code);
        self.record(activity).await;
    }

    /// One page of [`Self::inconsistencies`], in a stable order (kind, then
    /// phone, bot or server). The check itself reads the whole registry:
    /// an admin's tool, never on a hot path.
    pub async fn inconsistency_page(
        &self,
        limit: Option<i64>,
        after: Option<&str>,
    ) -> Result<(Vec<Inconsistency>, usize, Option<String>), AppError> {
        let limit = usize::try_from(page_size(limit)?).unwrap_or(usize::MAX);
        let after = after.filter(|a| !a.is_empty()).map(parse_key_cursor).transpose()?;
        let mut found = self.inconsistencies().await?;
        let total = found.len();
        found.sort_by_key(inconsistency_key);
        let mut page: Vec<Inconsistency> =
            found.into_iter().filter(|i| after.as_ref().is_none_or(|a| &inconsistency_key(i) > a)).collect();
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page.last().map(|last| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(inconsistency_key(last).1))
        });
        Ok((page, total, next.flatten()))
    }

    pub async fn inconsistencies(&self) -> Result<Vec<Inconsistency>, AppError> {
        let found = self.store.consistency.find_inconsistencies().await?;
        for kind in Inconsistency::KINDS {
            let count = found.iter().filter(|i| i.kind() == kind).count();
            metrics::gauge!(telemetry::INCONSISTENCIES, "kind" => kind).set(count as f64);
        }
        if !found.is_empty() {
            tracing::warn!(count = found.len(), "registry inconsistencies found");
        }
        Ok(found)
    }

    /// Finds inconsistencies and, unless `dry_run`, repairs each one.
    pub async fn repair_registry(&self, actor: &Actor, dry_run: bool) -> Result<RepairReport, AppError> {
        let found = self.inconsistencies().await?;
        let mut repaired = 0;
        if !dry_run {
            for issue in &found {
                let activity = NewActivity::new(&self.node, "registry_repaired", format!("{issue:?}"))
                    .by(actor, AuditMark::REGISTRY);
                if self
                    .store
                    .consistency
                    .repair_inconsistency(issue, &SideEffects::activity(activity), self.now())
                    .await?
                {
                    repaired += 1;
                }
            }
        }
        Ok(RepairReport { found, repaired, dry_run })
    }

    /// Appends an activity; a failure is logged, never fatal.
    pub async fn record(&self, activity: NewActivity) {
        if let Err(err) = self.store.activities.append_activity(&activity, self.now()).await {
            tracing::warn!(error = ?err, action = %activity.action, "could not record an activity");
        }
    }
}

/// A page size from a query: 1 to [`MAX_PAGE`], [`DEFAULT_PAGE`] if none.
pub fn page_size(limit: Option<i64>) -> Result<i64, AppError> {
    match limit {
        Some(limit) if !(1..=MAX_PAGE).contains(&limit) => {
            Err(AppError::InvalidInput(format!("limit must be between 1 and {MAX_PAGE}.")))
        }
        limit => Ok(limit.unwrap_or(DEFAULT_PAGE)),
    }
}

/// The admin bot list's query (API.md: `server`, `approval`, `status`,
/// `limit`, `after`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BotQuery {
    pub server: Option<String>,
    pub approval: Option<String>,
    pub status: Option<String>,
    pub limit: Option<i64>,
    pub after: Option<String>,
}

/// Where an inconsistency sorts: its kind's place, then what it is about.
fn inconsistency_key(issue: &Inconsistency) -> (usize, String) {
    let kind = Inconsistency::KINDS.iter().position(|k| *k == issue.kind()).unwrap_or(usize::MAX);
    let subject = match issue {
        Inconsistency::RegistryWithoutBot { phone, .. } | Inconsistency::BotWithoutRegistry { phone, .. } => phone,
        Inconsistency::ServerMismatch { bot_id, .. } => bot_id,
        Inconsistency::CountDrift { server, .. } => server,
    };
    (kind, format!("{kind}.{subject}"))
}

fn parse_key_cursor(text: &str) -> Result<(usize, String), AppError> {
    let bad = || AppError::InvalidInput("after is not a cursor this API gave out.".into());
    let text = decode_cursor(text).ok_or_else(bad)?;
    let (kind, _) = text.split_once('.').ok_or_else(bad)?;
    Ok((kind.parse().map_err(|_| bad())?, text))
}

fn parse_activity_cursor(text: &str) -> Result<i64, AppError> {
    let bad = || AppError::InvalidInput("after is not a cursor this API gave out.".into());
    let text = decode_cursor(text).ok_or_else(bad)?;
    text.strip_prefix('a').and_then(|id| id.parse().ok()).ok_or_else(bad)
}

/// The text inside a cursor this API gave out (bounded, base64url, UTF-8).
fn decode_cursor(text: &str) -> Option<String> {
    if text.len() > 256 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
    String::from_utf8(bytes).ok()
}

/// An opaque keyset cursor: base64url of `<created_at>.<id>`.
pub(crate) fn format_cursor(created_at: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}.{id}"))
}

pub(crate) fn parse_cursor(text: &str) -> Result<(i64, String), AppError> {
    let bad = || AppError::InvalidInput("after is not a cursor this API gave out.".into());
    let text = decode_cursor(text).ok_or_else(bad)?;
    let (created_at, id) = text.split_once('.').ok_or_else(bad)?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(bad());
    }
    Ok((created_at.parse().map_err(|_| bad())?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::test_support::{Mocks, NOW, bot_record, trekker};

    const DAY_MS: i64 = 24 * 60 * 60 * 1000;

    #[tokio::test]
    async fn approval_runs_for_the_given_months_of_thirty_days() {
        for (months, days) in [(None, 90), (Some(1), 30), (Some(12), 360), (Some(MAX_EXPIRATION_MONTHS), 3600)] {
            let mut store = Mocks::default();
            store.bots.expect_get_bot().returning(|_| Ok(Some(bot_record("SERVER0", ApprovalStatus::Pending))));
            store
                .bots
                .expect_approve_bot()
                .withf(move |id, expires_at, effects, now| {
                    id.as_str() == "bot-1"
                        && *expires_at == NOW + days * DAY_MS
                        && *now == NOW
                        && effects
                            .activity
                            .audit
                            .as_ref()
                            .is_some_and(|mark| mark.actor == crate::test_support::operator() && mark.result == "ok")
                        && effects
                            .notification
                            .as_ref()
                            .is_some_and(|n| n.message.render(None).contains(&time::iso_date(NOW + days * DAY_MS)))
                })
                .times(1)
                .returning(|_, _, _, _| Ok(bot_record("SERVER0", ApprovalStatus::Approved)));
            let approved = trekker(store).approve_bot(&crate::test_support::operator(), "bot-1", months).await.unwrap();
            assert_eq!(approved.approval, ApprovalStatus::Approved);
        }
    }

    #[tokio::test]
    async fn out_of_range_months_or_ids_touch_nothing() {
        for months in [0, MAX_EXPIRATION_MONTHS + 1, u32::MAX] {
            let err = trekker(Mocks::default())
                .approve_bot(&crate::test_support::operator(), "bot-1", Some(months))
                .await
                .unwrap_err();
            assert!(matches!(err, AppError::InvalidInput(_)), "{months}: {err:?}");
        }
        for id in ["", "not a bot id!", &"x".repeat(10_000)] {
            let err = trekker(Mocks::default()).reject_bot(&crate::test_support::operator(), id).await.unwrap_err();
            assert!(matches!(err, AppError::NotFound(_)), "{err:?}");
        }
    }

    #[tokio::test]
    async fn server_changes_are_validated_before_the_store() {
        let cases: [(Option<i64>, Option<&str>); 4] =
            [(None, None), (Some(-1), None), (Some(1_000_001), None), (None, Some("paused"))];
        for (max, status) in cases {
            let err = trekker(Mocks::default())
                .update_server(&crate::test_support::operator(), "SERVER1", max, status)
                .await
                .unwrap_err();
            assert!(matches!(err, AppError::InvalidInput(_)), "{max:?} {status:?}: {err:?}");
        }
        let err = trekker(Mocks::default())
            .update_server(&crate::test_support::operator(), "no such name!", Some(1), None)
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_server_change_answers_the_row_with_its_liveness() {
        let mut store = Mocks::default();
        store
            .servers
            .expect_update_server()
            .withf(|name, patch, audit, _| {
                name.as_str() == "SERVER1"
                    && *patch == ServerPatch { max_bot_count: Some(7), status: Some(ServerStatus::Draining) }
                    && audit.audit.as_ref().is_some_and(|mark| {
                        mark.actor == crate::test_support::operator() && mark.target == "server/SERVER1"
                    })
            })
            .times(1)
            .returning(|name, patch, _, _| {
                Ok(ServerSnapshot {
                    name: name.clone(),
                    max_bot_count: patch.max_bot_count.unwrap(),
                    current_bot_count: 2,
                    status: patch.status.unwrap(),
                    base_url: None,
                    last_heartbeat: Some(NOW - 60_000),
                    description: None,
                    load: None,
                    evacuation: None,
                })
            });
        let view = trekker(store)
            .update_server(&crate::test_support::operator(), "server1", Some(7), Some("draining"))
            .await
            .unwrap();
        assert_eq!((view.server.max_bot_count, view.server.status), (7, ServerStatus::Draining));
        assert!(!view.online, "a minute without a beat is offline");
    }

    #[tokio::test]
    async fn a_dry_run_repairs_nothing_and_a_repair_counts_what_changed() {
        let issues = vec![
            Inconsistency::CountDrift { server: "SERVER0".into(), recorded: 3, actual: 2 },
            Inconsistency::RegistryWithoutBot {
                phone: "254700000001".into(),
                server: "SERVER0".into(),
                bot_id: "b".into(),
            },
        ];
        for dry_run in [true, false] {
            let mut store = Mocks::default();
            let found = issues.clone();
            store.consistency.expect_find_inconsistencies().returning(move || Ok(found.clone()));
            // The second was fixed meanwhile by someone else.
            let mut answers = vec![false, true];
            store
                .consistency
                .expect_repair_inconsistency()
                .times(if dry_run { 0 } else { 2 })
                .returning(move |_, _, _| Ok(answers.pop().unwrap()));
            let report = trekker(store).repair_registry(&crate::test_support::operator(), dry_run).await.unwrap();
            assert_eq!(report.found, issues);
            assert_eq!((report.dry_run, report.repaired), (dry_run, usize::from(!dry_run)));
        }
    }

    fn activity(id: i64) -> Activity {
        Activity {
            id,
            occurred_at: NOW,
            server: "SERVER0".into(),
            bot_id: None,
            phone: None,
            action: "approved".into(),
            details: String::new(),
            remote_tenancy: None,
            remote_bot_id: None,
            audit: None,
        }
    }

    #[tokio::test]
    async fn the_server_list_tells_live_nodes_from_silent_ones() {
        let mut store = Mocks::default();
        let mut silent = crate::test_support::server_snapshot("SERVER2", 5, 0);
        silent.last_heartbeat = Some(NOW - 60_000);
        let servers = vec![crate::test_support::server_snapshot("SERVER1", 5, 1), silent];
        store.servers.expect_list_servers().times(1).returning(move || Ok(servers.clone()));
        let views = trekker(store).servers().await.unwrap();
        let seen: Vec<(&str, bool)> = views.iter().map(|v| (v.server.name.as_str(), v.online)).collect();
        assert_eq!(seen, [("SERVER1", true), ("SERVER2", false)]);
    }

    #[tokio::test]
    async fn either_server_field_alone_is_a_change() {
        for (max, status) in [(Some(3), None), (None, Some("inactive"))] {
            let mut store = Mocks::default();
            store.servers.expect_update_server().times(1).returning(|name, _, _, _| {
                Ok(ServerSnapshot { name: name.clone(), ..crate::test_support::server_snapshot("X", 3, 0) })
            });
            assert!(
                trekker(store).update_server(&crate::test_support::operator(), "SERVER1", max, status).await.is_ok(),
                "{max:?} {status:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_bot_page_passes_every_filter_and_its_cursor_reads_back() {
        let mut store = Mocks::default();
        let after = format_cursor(NOW - 5, "bot-9");
        store
            .bots
            .expect_list_bots()
            .withf(|filter| {
                *filter
                    == BotFilter {
                        server: Some(ServerName::parse("SERVER1").unwrap()),
                        approval: Some(ApprovalStatus::Approved),
                        status: Some(RuntimeStatus::Online),
                        after: Some(BotCursor { created_at: NOW - 5, id: BotId::parse("bot-9").unwrap() }),
                        limit: Some(5),
                    }
            })
            .times(1)
            .returning(|_| {
                let next = Some(BotCursor { created_at: NOW - 7, id: BotId::parse("bot-3").unwrap() });
                Ok(trekker_store::BotPage { bots: vec![bot_record("SERVER1", ApprovalStatus::Approved)], next })
            });
        // Empty parameters are absent ones: the whole list, default page.
        store
            .bots
            .expect_list_bots()
            .withf(|filter| *filter == BotFilter { limit: Some(DEFAULT_PAGE), ..BotFilter::default() })
            .times(1)
            .returning(|_| Ok(trekker_store::BotPage { bots: vec![], next: None }));
        let trekker = trekker(store);
        let query = BotQuery {
            server: Some("server1".into()),
            approval: Some("approved".into()),
            status: Some("online".into()),
            limit: Some(5),
            after: Some(after),
        };
        let (bots, next) = trekker.bots(&query).await.unwrap();
        assert_eq!(bots.len(), 1);
        assert_eq!(parse_cursor(&next.unwrap()).unwrap(), (NOW - 7, "bot-3".to_owned()));
        let empty = BotQuery {
            server: Some(String::new()),
            approval: Some(String::new()),
            status: Some(String::new()),
            limit: None,
            after: Some(String::new()),
        };
        assert_eq!(trekker.bots(&empty).await.unwrap(), (vec![], None));
    }

    #[tokio::test]
    async fn a_bad_list_parameter_is_refused_before_the_store() {
        let bad = [
            BotQuery { server: Some("no spaces allowed".into()), ..BotQuery::default() },
            BotQuery { approval: Some("maybe".into()), ..BotQuery::default() },
            BotQuery { status: Some("sleeping".into()), ..BotQuery::default() },
            BotQuery { limit: Some(0), ..BotQuery::default() },
            BotQuery { limit: Some(MAX_PAGE + 1), ..BotQuery::default() },
            BotQuery { after: Some("not-a-cursor!".into()), ..BotQuery::default() },
            BotQuery { after: Some(format_cursor(NOW, "has space")), ..BotQuery::default() },
        ];
        for query in bad {
            let err = trekker(Mocks::default()).bots(&query).await.unwrap_err();
            assert!(matches!(err, AppError::InvalidInput(_)), "{query:?}: {err:?}");
        }
        let t = trekker(Mocks::default());
        assert!(t.credential_updates(Some("lost"), None, None).await.is_err());
        assert!(t.credential_updates(None, Some(-1), None).await.is_err());
        assert!(t.activities(Some("bot id?"), None, None).await.is_err());
        assert!(t.activities(None, None, Some(&format_cursor(NOW, "bot-1"))).await.is_err(), "not an activity cursor");
        assert!(t.inconsistency_page(None, Some("%%%")).await.is_err());
    }

    #[test]
    fn page_sizes_run_from_one_to_the_maximum() {
        assert_eq!(page_size(None).unwrap(), DEFAULT_PAGE);
        assert_eq!(page_size(Some(1)).unwrap(), 1);
        assert_eq!(page_size(Some(MAX_PAGE)).unwrap(), MAX_PAGE);
        for refused in [0, -1, MAX_PAGE + 1, i64::MIN, i64::MAX] {
            assert!(page_size(Some(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn cursors_are_bounded_and_read_back_exactly() {
        assert_eq!(parse_cursor(&format_cursor(-3, "bot-1")).unwrap(), (-3, "bot-1".to_owned()));
        // 192 bytes are 256 base64 characters: the longest cursor read.
        let longest = "x".repeat(192);
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&longest);
        assert_eq!(encoded.len(), 256);
        assert_eq!(decode_cursor(&encoded).as_deref(), Some(longest.as_str()));
        let too_long = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("x".repeat(193));
        assert_eq!(decode_cursor(&too_long), None);
        for text in ["1.", ".bot-1", "x.bot-1", "1.bot 1", "1", "1.bot-1/2"] {
            let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
            assert!(parse_cursor(&cursor).is_err(), "{text}");
        }
    }

    #[tokio::test]
    async fn outbox_and_activity_pages_pass_their_filters_and_cursors() {
        let mut store = Mocks::default();
        store
            .credential_outbox
            .expect_list_credential_updates()
            .withf(|status, after, limit| {
                *status == Some(OutboxStatus::Failed) && *after == Some((NOW, "cmd-1".to_owned())) && *limit == 7
            })
            .times(1)
            .returning(|_, _, _| {
                Ok(trekker_store::UpdatePage { updates: vec![], next: Some((NOW - 1, "cmd-0".into())) })
            });
        store
            .credential_outbox
            .expect_list_credential_updates()
            .withf(|status, after, limit| status.is_none() && after.is_none() && *limit == DEFAULT_PAGE)
            .times(1)
            .returning(|_, _, _| Ok(trekker_store::UpdatePage { updates: vec![], next: None }));
        store
            .activities
            .expect_list_activities()
            .withf(|bot, after, limit| {
                bot.as_ref().map(BotId::as_str) == Some("bot-1") && *after == Some(41) && *limit == 2
            })
            .times(1)
            .returning(|_, _, _| Ok(trekker_store::ActivityPage { activities: vec![activity(40)], next: Some(40) }));
        store
            .activities
            .expect_list_activities()
            .withf(|bot, after, limit| bot.is_none() && after.is_none() && *limit == DEFAULT_PAGE)
            .times(1)
            .returning(|_, _, _| Ok(trekker_store::ActivityPage { activities: vec![], next: None }));
        let t = trekker(store);
        let after = format_cursor(NOW, "cmd-1");
        let (_, next) = t.credential_updates(Some("failed"), Some(7), Some(&after)).await.unwrap();
        assert_eq!(parse_cursor(&next.unwrap()).unwrap(), (NOW - 1, "cmd-0".to_owned()));
        assert_eq!(t.credential_updates(Some(""), None, Some("")).await.unwrap().1, None);

        let after = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a41");
        let (activities, next) = t.activities(Some("bot-1"), Some(2), Some(&after)).await.unwrap();
        assert_eq!(activities, vec![activity(40)]);
        assert_eq!(parse_activity_cursor(&next.unwrap()).unwrap(), 40);
        assert_eq!(t.activities(Some(""), None, Some("")).await.unwrap(), (vec![], None));
    }

    #[tokio::test]
    async fn audit_filters_are_trimmed_bounded_and_passed_with_the_cursor() {
        let mut store = Mocks::default();
        store
            .activities
            .expect_list_audit()
            .withf(|filter, after, limit| {
                *filter == AuditFilter { actor: Some("Otto".into()), action: Some("approved".into()) }
                    && *after == Some(41)
                    && *limit == 3
            })
            .times(1)
            .returning(|_, _, _| Ok(trekker_store::ActivityPage { activities: vec![activity(40)], next: Some(40) }));
        store
            .activities
            .expect_list_audit()
            .withf(|filter, after, limit| {
                *filter == AuditFilter::default() && after.is_none() && *limit == DEFAULT_PAGE
            })
            .times(1)
            .returning(|_, _, _| Ok(trekker_store::ActivityPage { activities: vec![], next: None }));
        let t = trekker(store);
        let after = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("a41");
        let (entries, next) = t.audit(Some(" Otto "), Some("approved"), Some(3), Some(&after)).await.unwrap();
        assert_eq!(entries, vec![activity(40)]);
        assert_eq!(parse_activity_cursor(&next.unwrap()).unwrap(), 40);
        assert_eq!(t.audit(Some(" "), Some(""), None, None).await.unwrap(), (vec![], None), "blank is no filter");
        let longest = "x".repeat(MAX_FILTER_CHARS + 1);
        for (actor, action) in [(Some(longest.as_str()), None), (None, Some("bell\u{7}")), (None, Some(&*longest))] {
            let refused = t.audit(actor, action, None, None).await;
            assert!(matches!(refused, Err(AppError::InvalidInput(_))), "{actor:?} {action:?}: {refused:?}");
        }
    }

    /// A refused write is recorded as its actor's, on its target (cut to
    /// its bound: it may be made up), with the code; never fatal.
    #[tokio::test]
    async fn a_refused_write_is_recorded_with_its_code_and_a_bounded_target() {
        let mut store = Mocks::default();
        store
            .activities
            .expect_append_activity()
            .withf(|activity, _| {
                let mark = activity.audit.as_ref().unwrap();
                activity.action == "approved"
                    && mark.actor == crate::test_support::operator()
                    && mark.result == "NOT_FOUND"
                    && mark.target.chars().count() == MAX_TARGET_CHARS
                    && !mark.target.contains('\n')
            })
            .times(1)
            .returning(|_, _| Err(trekker_store::StoreError::Corrupt("the database is gone".into())));
        let target = format!("bot/\n{}", "x".repeat(10_000));
        trekker(store).record_refused(&crate::test_support::operator(), "approved", &target, "NOT_FOUND").await;
    }

    #[tokio::test]
    async fn inconsistencies_are_paged_in_a_stable_order_without_repeats() {
        let drift = |server: &str| Inconsistency::CountDrift { server: server.into(), recorded: 1, actual: 0 };
        let orphan = |phone: &str| Inconsistency::RegistryWithoutBot {
            phone: phone.into(),
            server: "SERVER0".into(),
            bot_id: "b".into(),
        };
        let found = vec![drift("SERVER9"), orphan("254700000002"), drift("SERVER1"), orphan("254700000001")];
        let mut store = Mocks::default();
        let all = found.clone();
        store.consistency.expect_find_inconsistencies().returning(move || Ok(all.clone()));
        let t = trekker(store);
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..4 {
            let (page, total, next) = t.inconsistency_page(Some(3), after.as_deref()).await.unwrap();
            assert_eq!(total, 4);
            assert!(page.len() <= 3);
            seen.extend(page);
            after = next;
            if after.is_none() {
                break;
            }
        }
        // Kinds in `Inconsistency::KINDS` order, then by subject.
        let expected = vec![orphan("254700000001"), orphan("254700000002"), drift("SERVER1"), drift("SERVER9")];
        assert_eq!(seen, expected, "every inconsistency once, kind by kind");
        // A page exactly as long as what is left is the last one.
        let (page, _, next) = t.inconsistency_page(Some(4), None).await.unwrap();
        assert_eq!((page.len(), next), (4, None));
    }

    #[tokio::test]
    async fn a_rejection_or_deletion_is_recorded_against_its_bot() {
        let mut store = Mocks::default();
        let for_bot_1 = |effects: &SideEffects| effects.activity.bot_id.as_ref().map(BotId::as_str) == Some("bot-1");
        store
            .bots
            .expect_reject_bot()
            .withf(move |_, effects, _| for_bot_1(effects))
            .times(1)
            .returning(|_, _, _| Ok(bot_record("SERVER0", ApprovalStatus::Rejected)));
        store
            .bots
            .expect_delete_bot()
            .withf(move |_, effects, _| for_bot_1(effects))
            .times(1)
            .returning(|_, _, _| Ok(bot_record("SERVER0", ApprovalStatus::Approved)));
        let t = trekker(store);
        t.reject_bot(&crate::test_support::operator(), "bot-1").await.unwrap();
        t.delete_bot(&crate::test_support::operator(), "bot-1").await.unwrap();
    }
}
