//! The store's behavioural conformance suite, written once and run against
//! both backends (SQLite and PostgreSQL), concurrency cases included.
//!
//! Each case is an `async fn(Fixture)`; `conformance_cases!` instantiates
//! every case once per backend. PostgreSQL cases start (once per process) a
//! throwaway server, see `trekker_testkit::postgres`.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::join_all;
use trekker_domain::{
    ApprovalStatus, BotId, Credentials, DesiredState, GuestMessage, PhoneNumber, RuntimeStatus, ServerName,
    ServerStatus,
};
use trekker_store::*;
use trekker_testkit::creds;

/// A store under test plus raw SQL access for setting up broken states.
struct Fixture {
    store: Arc<dyn Store>,
    raw: Arc<dyn RawSql>,
    _guard: Option<trekker_testkit::SqliteDatabase>,
}

#[async_trait::async_trait]
trait RawSql: Send + Sync {
    async fn exec(&self, sql: &'static str);

    /// Every value of every table, as text: text columns as they are,
    /// binary ones both as lossy UTF-8 and as hex.
    async fn dump_all_tables(&self) -> String;

    /// Makes every insert of an activity with details `boom` fail.
    async fn install_boom_trigger(&self);

    /// Runs `sql` in a transaction left open until `commit`.
    async fn open_write(&self, sql: &'static str) -> Box<dyn OpenWrite>;

    /// Whether one writer at a time holds the database (SQLite).
    fn single_writer(&self) -> bool;

    /// Adds `count` bots straight into the table (half on SERVER0, half on
    /// SERVER1, mixed approval), bypassing the store, and refreshes the
    /// planner's statistics.
    async fn seed_bots(&self, count: u32);

    async fn explain_bot_page(&self, filter: &BotFilter) -> String;
}

/// A transaction [`RawSql::open_write`] left open.
#[async_trait::async_trait]
trait OpenWrite: Send {
    async fn commit(self: Box<Self>);
}

#[async_trait::async_trait]
impl<DB: sqlx::Database> OpenWrite for sqlx::Transaction<'static, DB> {
    async fn commit(self: Box<Self>) {
        (*self).commit().await.expect("commit");
    }
}

/// Appends one row's values to `out` (see [`RawSql::dump_all_tables`]).
fn dump_row<R: sqlx::Row>(row: &R, out: &mut String)
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    for i in 0..row.len() {
        if let Ok(Some(text)) = row.try_get::<Option<String>, _>(i) {
            out.push_str(&text);
        } else if let Ok(Some(bytes)) = row.try_get::<Option<Vec<u8>>, _>(i) {
            out.push_str(&String::from_utf8_lossy(&bytes));
            out.push('|');
            out.extend(bytes.iter().map(|b| format!("{b:02x}")));
        } else if let Ok(Some(number)) = row.try_get::<Option<i64>, _>(i) {
            out.push_str(&number.to_string());
        }
        out.push('|');
    }
    out.push('\n');
}

/// `RawSql` for one backend: the same code, the dialect's table list and
/// trigger syntax as arguments.
macro_rules! impl_raw_sql {
    (
        $db:ty,
        single_writer = $single:literal,
        seed = $seed:literal,
        tables = $tables:literal,
        boom = [$($boom:literal),+ $(,)?] $(,)?
    ) => {
        #[async_trait::async_trait]
        impl RawSql for SqlStore<$db> {
            async fn exec(&self, sql: &'static str) {
                sqlx::query(sql).execute(self.pool()).await.expect("raw sql");
            }

            async fn install_boom_trigger(&self) {
                $(self.exec($boom).await;)+
            }

            async fn open_write(&self, sql: &'static str) -> Box<dyn OpenWrite> {
                let mut tx = self.pool().begin().await.expect("begin");
                sqlx::query(sql).execute(&mut *tx).await.expect("raw sql");
                Box::new(tx)
            }

            fn single_writer(&self) -> bool {
                $single
            }

            async fn seed_bots(&self, count: u32) {
                sqlx::query($seed).bind(i64::from(count)).execute(self.pool()).await.expect("seed");
                self.exec("ANALYZE").await;
            }

            async fn explain_bot_page(&self, filter: &BotFilter) -> String {
                SqlStore::<$db>::explain_bot_page(self, filter).await.expect("explain")
            }

            async fn dump_all_tables(&self) -> String {
                let tables: Vec<String> = sqlx::query_scalar($tables).fetch_all(self.pool()).await.unwrap();
                let mut out = String::new();
                for table in tables {
                    let sql = sqlx::AssertSqlSafe(format!("SELECT * FROM \"{table}\""));
                    for row in sqlx::query(sql).fetch_all(self.pool()).await.unwrap() {
                        dump_row(&row, &mut out);
                    }
                }
                out
            }
        }
    };
}

impl_raw_sql!(
    Sqlite,
    single_writer = true,
    seed = "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < $1) \
             INSERT INTO bot_instances (id, name, phone_number, server_name, approval_status, status, \
             credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version, \
             credentials_updated_at, created_at, updated_at) \
             SELECT 'seed-' || n, 'seed', '2547' || substr('00000000' || n, -8), \
             CASE WHEN n % 2 = 0 THEN 'SERVER0' ELSE 'SERVER1' END, \
             CASE n % 4 WHEN 0 THEN 'pending' WHEN 3 THEN 'expired' ELSE 'approved' END, 'offline', \
             x'00', x'00', 'k', 1, n, n, n FROM seq",
    tables = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    boom = ["CREATE TRIGGER boom BEFORE INSERT ON activities WHEN NEW.details = 'boom' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"],
);

impl_raw_sql!(
    Postgres,
    single_writer = false,
    seed = "INSERT INTO bot_instances (id, name, phone_number, server_name, approval_status, status, \
             credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version, \
             credentials_updated_at, created_at, updated_at) \
             SELECT 'seed-' || n, 'seed', '2547' || lpad(n::text, 8, '0'), \
             CASE WHEN n % 2 = 0 THEN 'SERVER0' ELSE 'SERVER1' END, \
             (ARRAY['pending', 'approved', 'approved', 'expired'])[n % 4 + 1], 'offline', \
             '\\x00'::bytea, '\\x00'::bytea, 'k', 1, n, n, n FROM generate_series(1, $1) n",
    tables = "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
    boom = [
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.details = 'boom' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER boom BEFORE INSERT ON activities FOR EACH ROW EXECUTE FUNCTION boom()",
    ],
);

async fn sqlite_fixture() -> Option<Fixture> {
    let (store, guard) = trekker_testkit::sqlite_store().await;
    Some(Fixture { store: store.clone(), raw: store, _guard: Some(guard) })
}

async fn postgres_fixture() -> Option<Fixture> {
    let store = trekker_testkit::postgres_store().await?;
    Some(Fixture { store: store.clone(), raw: store, _guard: None })
}

macro_rules! conformance_cases {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(fixture) = super::sqlite_fixture().await {
                        super::$case(fixture).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(fixture) = super::postgres_fixture().await {
                        super::$case(fixture).await;
                    }
                }
            )*
        }
    };
}

conformance_cases!(
    a_move_changes_host_registry_and_counts_and_fences_the_old_runner,
    concurrent_moves_never_overfill_the_target,
    moves_are_conditional_paced_and_a_failover_waits_for_the_lost_lease,
    power_load_and_evacuation_are_recorded,
    the_change_feed_keeps_up_with_writers_in_a_tight_loop,
    a_save_in_flight_when_another_runner_takes_the_bot_writes_nothing,
    servers_upsert_heartbeat_and_patch,
    register_writes_registry_and_bot_together,
    credentials_are_encrypted_and_round_trip,
    full_server_refuses_and_writes_nothing,
    unknown_and_draining_servers_refuse,
    taken_phone_refuses_and_names_the_host,
    credential_versions_never_go_back,
    reject_frees_phone_and_slot_then_reregister_works,
    delete_frees_phone_and_slot,
    approval_transitions_follow_the_state_machine,
    expiry_moves_approved_bots_only,
    inconsistencies_are_found_and_repaired,
    pairing_lifecycle,
    notifications_are_claimed_once,
    hosted_notifications_go_to_the_hosting_node,
    a_capacity_level_moves_once_however_many_try,
    a_duty_has_one_holder_until_it_lapses,
    the_fleet_feed_sees_every_server_and_new_activities,
    concurrent_reservations_never_overfill,
    concurrent_same_phone_registers_once,
    concurrent_churn_keeps_counts_true,
    outbox_versions_supersede_and_claims,
    an_update_held_by_its_request_is_left_to_it,
    idempotency_and_replay_guard,
    node_leases_fence_runners,
    the_change_feed_says_what_changed_and_nothing_when_quiet,
    the_change_feed_misses_no_late_commit,
    only_the_pinned_account_changes_credentials,
    reviews_wait_for_an_admin_and_approval_pins_the_new_account,
    auto_assignment_text_counts_slots_and_keeps_the_bot_name,
    no_table_holds_a_credential_in_clear,
    unapproved_bots_hold_at_most_their_share_even_under_a_race,
    a_failure_midway_writes_nothing,
    bot_lists_page_by_keyset_without_gaps_or_repeats,
    bot_pages_read_an_index_in_order_whatever_the_filter,
    a_walk_through_the_pages_sees_every_bot_once_while_bots_are_added,
    session_state_is_sealed_fenced_and_kept_per_pairing,
    device_state_is_sealed_fenced_and_kept_per_pairing,
    api_keys_are_found_by_id_paged_revoked_once_and_their_use_recorded,
    the_audit_trail_holds_admin_writes_and_system_actions_with_their_change,
);

const NOW: Millis = 1_700_000_000_000;

fn server(name: &str) -> ServerName {
    ServerName::parse(name).unwrap()
}

/// An admin's write `action` by the key named `ops`.
fn audit(action: &str) -> NewActivity {
    let ops = trekker_domain::access::Actor { key_id: Some("00000000000000aa".into()), name: "ops".into() };
    NewActivity::new(&server("SERVER0"), action, "test").by(&ops, "server/SERVER0")
}

fn effects(action: &str) -> SideEffects {
    SideEffects::activity(NewActivity::new(&server("SERVER0"), action, "test"))
}

async fn add_server(store: &dyn Store, name: &str, capacity: i64) -> ServerSnapshot {
    let registration = ServerRegistration {
        name: server(name),
        max_bot_count: capacity,
        base_url: Some(format!("http://{name}.test")),
        description: None,
    };
    store.upsert_server(&registration, NOW).await.unwrap()
}

fn new_bot(phone: &str, server_name: &str, n: u128) -> NewBot {
    NewBot {
        id: BotId::from_random_bits(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (phone.len() as u128)),
        name: format!("bot-{phone}"),
        phone: PhoneNumber::parse(phone).unwrap(),
        server: server(server_name),
        credentials: creds::credentials(phone, 1),
        pending_share_percent: 100,
    }
}

fn unique_bot(phone: &str, server_name: &str) -> NewBot {
    let bits: u128 = phone.parse::<u128>().unwrap() << 20 | server_name.len() as u128;
    new_bot(phone, server_name, bits)
}

async fn register(store: &dyn Store, phone: &str, server_name: &str) -> Result<Registered, StoreError> {
    let bot = unique_bot(phone, server_name);
    let effects = effects("registered").notify(&bot.phone, "welcome");
    store.register_bot(&bot, &effects, NOW).await
}

async fn assert_consistent(store: &dyn Store) {
    let issues = store.find_inconsistencies().await.unwrap();
    assert!(issues.is_empty(), "inconsistencies: {issues:?}");
}

// --- cases ----------------------------------------------------------------

async fn servers_upsert_heartbeat_and_patch(f: Fixture) {
    let s = &*f.store;
    let created = add_server(s, "server1", 10).await;
    assert_eq!(created.name.as_str(), "SERVER1");
    assert_eq!(created.status, ServerStatus::Active);
    assert_eq!(created.last_heartbeat, Some(NOW));

    s.heartbeat(&server("SERVER1"), NOW + 5, None).await.unwrap();
    assert_eq!(s.get_server(&server("SERVER1")).await.unwrap().unwrap().last_heartbeat, Some(NOW + 5));
    assert!(matches!(s.heartbeat(&server("NOPE"), NOW, None).await, Err(StoreError::UnknownServer(_))));

    let patched = s
        .update_server(
            &server("SERVER1"),
            &ServerPatch { max_bot_count: Some(3), status: Some(ServerStatus::Draining) },
            &audit("server_updated"),
            NOW,
        )
        .await
        .unwrap();
    assert_eq!((patched.max_bot_count, patched.status), (3, ServerStatus::Draining));
    // A node restart rewrites capacity and URL but keeps the admin's status.
    let again = add_server(s, "SERVER1", 7).await;
    assert_eq!((again.max_bot_count, again.status), (7, ServerStatus::Draining));
    assert!(matches!(
        s.update_server(&server("SERVER1"), &ServerPatch { max_bot_count: Some(-1), status: None }, &audit("x"), NOW)
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    add_server(s, "SERVER0", 1).await;
    let names: Vec<_> = s.list_servers().await.unwrap().into_iter().map(|x| x.name.to_string()).collect();
    assert_eq!(names, ["SERVER0", "SERVER1"]);
}

async fn register_writes_registry_and_bot_together(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 2).await;
    let done = register(s, "254700000001", "SERVER0").await.unwrap();
    assert_eq!(done.free_slots_after, 1);
    assert_eq!(done.bot.approval, ApprovalStatus::Pending);
    assert_eq!(done.bot.status, RuntimeStatus::Offline);
    assert_eq!(done.bot.credentials_version, 1);
    let entry = s.find_registration(&done.bot.phone).await.unwrap().unwrap();
    assert_eq!((entry.server.as_str(), &entry.bot_id), ("SERVER0", &done.bot.id));
    assert_eq!(s.get_bot(&done.bot.id).await.unwrap().unwrap(), done.bot);
    assert_eq!(s.find_bot_on_server(&done.bot.phone, &server("SERVER0")).await.unwrap().unwrap().id, done.bot.id);
    assert!(s.find_bot_on_server(&done.bot.phone, &server("SERVER1")).await.unwrap().is_none());
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 1);
    // The side effects were written in the same transaction.
    let activities = s.list_activities(Some(done.bot.id.clone()), None, 10).await.unwrap().activities;
    assert_eq!(activities.len(), 0, "the activity is recorded for SERVER0 without a bot id");
    assert_eq!(s.list_activities(None, None, 10).await.unwrap().activities[0].action, "registered");
    assert_eq!(s.pending_notifications().await.unwrap(), 1);
    let listed = s
        .list_bots(&BotFilter {
            server: Some(server("SERVER0")),
            approval: Some(ApprovalStatus::Pending),
            ..BotFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.bots.len(), 1);
    assert!(
        s.list_bots(&BotFilter { approval: Some(ApprovalStatus::Approved), ..BotFilter::default() })
            .await
            .unwrap()
            .bots
            .is_empty()
    );
    assert_consistent(s).await;
}

async fn credentials_are_encrypted_and_round_trip(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 2).await;
    let done = register(s, "254700000002", "SERVER0").await.unwrap();
    let (loaded, version) = s.load_credentials(&done.bot.id).await.unwrap().unwrap();
    assert_eq!(version, 1);
    assert_eq!(loaded, creds::credentials("254700000002", 1));
    assert!(s.load_credentials(&BotId::parse("missing").unwrap()).await.unwrap().is_none());
    // Ciphertext moved onto another row does not decrypt (bot id is the AAD).
    register(s, "254700000003", "SERVER0").await.unwrap();
    f.raw
        .exec(
            "UPDATE bot_instances SET credentials_ciphertext = (SELECT credentials_ciphertext FROM bot_instances \
             WHERE phone_number = '254700000002'), credentials_nonce = (SELECT credentials_nonce FROM bot_instances \
             WHERE phone_number = '254700000002') WHERE phone_number = '254700000003'",
        )
        .await;
    let other = s.find_registration(&PhoneNumber::parse("254700000003").unwrap()).await.unwrap().unwrap();
    assert!(matches!(s.load_credentials(&other.bot_id).await, Err(StoreError::Decrypt)));
}

async fn full_server_refuses_and_writes_nothing(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 1).await;
    register(s, "254700000010", "SERVER0").await.unwrap();
    let refused = register(s, "254700000011", "SERVER0").await;
    assert!(matches!(refused, Err(StoreError::ServerFull(ref name)) if name.as_str() == "SERVER0"), "{refused:?}");
    assert!(s.find_registration(&PhoneNumber::parse("254700000011").unwrap()).await.unwrap().is_none());
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 1);
    assert_eq!(s.list_bots(&BotFilter::default()).await.unwrap().bots.len(), 1);
    assert_eq!(s.pending_notifications().await.unwrap(), 1);
    assert_eq!(s.list_activities(None, None, 100).await.unwrap().activities.len(), 1, "the refusal wrote no activity");
    assert_consistent(s).await;
}

/// Installs a trigger that makes any activity with details `boom` fail:
/// the last statement of every state change, so everything before it in
/// the same transaction must be undone.
async fn fail_activities_named_boom(f: &Fixture) {
    f.raw.install_boom_trigger().await;
}

/// Invariant 3 with a failure injected at the LAST statement of each
/// transaction: registration, update, approval, reject, delete and repair
/// leave no trace (counts, registry, bot, activity, notification).
async fn a_failure_midway_writes_nothing(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    let kept = register(s, "254700000400", "SERVER0").await.unwrap().bot;
    fail_activities_named_boom(&f).await;
    let boom = || SideEffects::activity(NewActivity::new(&server("SERVER0"), "x", "boom"));
    let before_dump = f.raw.dump_all_tables().await;

    let bot = unique_bot("254700000401", "SERVER0");
    let effects = boom().notify(&bot.phone, "welcome");
    assert!(s.register_bot(&bot, &effects, NOW + 1).await.is_err());
    assert!(
        s.update_credentials(&kept.id, &creds::credentials("254700000400", 2), VersionRule::Next, &boom(), NOW + 1)
            .await
            .is_err()
    );
    assert!(s.approve_bot(&kept.id, NOW + 1000, &boom(), NOW + 1).await.is_err());
    assert!(s.reject_bot(&kept.id, &boom(), NOW + 1).await.is_err());
    assert!(s.delete_bot(&kept.id, &boom(), NOW + 1).await.is_err());
    let update = outbox_update("u-boom", &kept, 3);
    assert!(s.enqueue_credential_update(&update, &boom(), NOW + 1).await.is_err());

    assert_eq!(f.raw.dump_all_tables().await, before_dump, "a failed transaction left a trace");
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 1);
    assert!(s.find_registration(&bot.phone).await.unwrap().is_none());
    assert_eq!(s.load_credentials(&kept.id).await.unwrap().unwrap().1, 1);
    assert_consistent(s).await;
}

async fn unknown_and_draining_servers_refuse(f: Fixture) {
    let s = &*f.store;
    assert!(matches!(register(s, "254700000020", "GHOST").await, Err(StoreError::UnknownServer(_))));
    add_server(s, "SERVER0", 5).await;
    s.update_server(
        &server("SERVER0"),
        &ServerPatch { max_bot_count: None, status: Some(ServerStatus::Draining) },
        &audit("server_updated"),
        NOW,
    )
    .await
    .unwrap();
    assert!(matches!(
        register(s, "254700000020", "SERVER0").await,
        Err(StoreError::ServerNotAccepting { status: ServerStatus::Draining, .. })
    ));
    assert!(s.list_bots(&BotFilter::default()).await.unwrap().bots.is_empty());
}

async fn taken_phone_refuses_and_names_the_host(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    add_server(s, "SERVER1", 5).await;
    let first = register(s, "254700000030", "SERVER0").await.unwrap();
    let again = register(s, "254700000030", "SERVER1").await;
    match again {
        Err(StoreError::PhoneTaken { server: host, bot_id }) => {
            assert_eq!(host.as_str(), "SERVER0");
            assert_eq!(bot_id, first.bot.id);
        }
        other => panic!("expected PhoneTaken, got {other:?}"),
    }
    assert_eq!(s.get_server(&server("SERVER1")).await.unwrap().unwrap().current_bot_count, 0);
    assert_consistent(s).await;
}

async fn credential_versions_never_go_back(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    let bot = register(s, "254700000040", "SERVER0").await.unwrap().bot;
    let v2 = creds::credentials("254700000040", 2);
    let updated = s.update_credentials(&bot.id, &v2, VersionRule::Next, &effects("updated"), NOW + 1).await.unwrap();
    assert_eq!(updated.credentials_version, 2);
    assert_eq!(updated.status, RuntimeStatus::Offline, "a pending bot is not restarted");
    let v5 = creds::credentials("254700000040", 5);
    assert_eq!(
        s.update_credentials(&bot.id, &v5, VersionRule::Exactly(5), &effects("updated"), NOW + 2)
            .await
            .unwrap()
            .credentials_version,
        5
    );
    // A newer pairing of the same account, forwarded under an older version.
    let old = creds::credentials("254700000040", 6);
    let stale = s.update_credentials(&bot.id, &old, VersionRule::Exactly(3), &effects("updated"), NOW + 3).await;
    assert!(matches!(stale, Err(StoreError::StaleVersion { current: 5 })), "{stale:?}");
    let same = s.update_credentials(&bot.id, &old, VersionRule::Exactly(5), &effects("updated"), NOW + 3).await;
    assert!(matches!(same, Err(StoreError::StaleVersion { current: 5 })));
    assert_eq!(s.load_credentials(&bot.id).await.unwrap().unwrap(), (v5, 5));

    s.approve_bot(&bot.id, NOW + 1000, &effects("approved"), NOW).await.unwrap();
    f.raw.exec("UPDATE bot_instances SET status = 'online'").await;
    let v7 = creds::credentials("254700000040", 7);
    let restarted = s.update_credentials(&bot.id, &v7, VersionRule::Next, &effects("updated"), NOW + 4).await.unwrap();
    assert_eq!((restarted.credentials_version, restarted.status), (6, RuntimeStatus::Loading));
    let missing = BotId::parse("nope").unwrap();
    assert!(matches!(
        s.update_credentials(&missing, &v2, VersionRule::Next, &effects("updated"), NOW).await,
        Err(StoreError::BotNotFound)
    ));
}

async fn reject_frees_phone_and_slot_then_reregister_works(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 1).await;
    let bot = register(s, "254700000050", "SERVER0").await.unwrap().bot;
    let rejected = s.reject_bot(&bot.id, &effects("rejected"), NOW).await.unwrap();
    assert_eq!(rejected.approval, ApprovalStatus::Rejected);
    assert!(s.find_registration(&bot.phone).await.unwrap().is_none());
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 0);
    assert!(matches!(s.reject_bot(&bot.id, &effects("rejected"), NOW).await, Err(StoreError::Transition(_))));
    assert_consistent(s).await;
    // Same phone, new registration: works, and the old row stays listed.
    let mut again = new_bot("254700000050", "SERVER0", 99);
    again.name = "second".into();
    let second = s.register_bot(&again, &effects("registered"), NOW).await.unwrap();
    assert_ne!(second.bot.id, bot.id);
    assert_eq!(s.list_bots(&BotFilter::default()).await.unwrap().bots.len(), 2);
    assert_consistent(s).await;
}

async fn delete_frees_phone_and_slot(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 1).await;
    let bot = register(s, "254700000060", "SERVER0").await.unwrap().bot;
    let deleted = s.delete_bot(&bot.id, &effects("deleted"), NOW).await.unwrap();
    assert_eq!(deleted.id, bot.id);
    assert!(s.get_bot(&bot.id).await.unwrap().is_none());
    assert!(s.find_registration(&bot.phone).await.unwrap().is_none());
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 0);
    assert!(matches!(s.delete_bot(&bot.id, &effects("deleted"), NOW).await, Err(StoreError::BotNotFound)));
    // Deleting a rejected bot does not free its slot twice.
    let other = register(s, "254700000061", "SERVER0").await.unwrap().bot;
    s.reject_bot(&other.id, &effects("rejected"), NOW).await.unwrap();
    s.delete_bot(&other.id, &effects("deleted"), NOW).await.unwrap();
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 0);
    assert_consistent(s).await;
}

async fn approval_transitions_follow_the_state_machine(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 3).await;
    let bot = register(s, "254700000070", "SERVER0").await.unwrap().bot;
    let approved = s.approve_bot(&bot.id, NOW + 10, &effects("approved"), NOW).await.unwrap();
    assert_eq!(approved.approval, ApprovalStatus::Approved);
    assert_eq!(approved.approval_date, Some(NOW));
    assert_eq!(approved.expires_at, Some(NOW + 10));
    assert_eq!(approved.status, RuntimeStatus::Loading);
    let renewed = s.approve_bot(&bot.id, NOW + 20, &effects("approved"), NOW + 1).await.unwrap();
    assert_eq!(renewed.expires_at, Some(NOW + 20));
    s.reject_bot(&bot.id, &effects("rejected"), NOW).await.unwrap();
    assert!(matches!(
        s.approve_bot(&bot.id, NOW + 10, &effects("approved"), NOW).await,
        Err(StoreError::Transition(_))
    ));
    assert!(matches!(
        s.approve_bot(&BotId::parse("nope").unwrap(), NOW, &effects("approved"), NOW).await,
        Err(StoreError::BotNotFound)
    ));
}

async fn expiry_moves_approved_bots_only(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 3).await;
    let due = register(s, "254700000080", "SERVER0").await.unwrap().bot;
    let later = register(s, "254700000081", "SERVER0").await.unwrap().bot;
    let pending = register(s, "254700000082", "SERVER0").await.unwrap().bot;
    s.approve_bot(&due.id, NOW + 10, &effects("approved"), NOW).await.unwrap();
    s.approve_bot(&later.id, NOW + 1000, &effects("approved"), NOW).await.unwrap();
    let sweeper = server("SERVER1");
    let expired = s.expire_due_bots(&sweeper, NOW + 10).await.unwrap();
    assert_eq!(expired.iter().map(|b| b.id.clone()).collect::<Vec<_>>(), vec![due.id.clone()]);
    assert_eq!(expired[0].approval, ApprovalStatus::Expired);
    assert_eq!(s.get_bot(&pending.id).await.unwrap().unwrap().approval, ApprovalStatus::Pending);
    assert!(s.expire_due_bots(&sweeper, NOW + 11).await.unwrap().is_empty());
    // Each expiry wrote its activity, once, by the sweeping node.
    let activities = s.list_activities(Some(due.id.clone()), None, 10).await.unwrap().activities;
    let expiries: Vec<_> = activities.iter().filter(|a| a.action == "expired").collect();
    assert_eq!(expiries.len(), 1, "{activities:?}");
    assert_eq!(expiries[0].server, "SERVER1");
    assert_eq!(expiries[0].occurred_at, NOW + 10);
    assert!(
        s.list_activities(Some(later.id.clone()), None, 10)
            .await
            .unwrap()
            .activities
            .iter()
            .all(|a| a.action != "expired")
    );
    // Expiry frees nothing: the phone and slot stay held.
    assert!(s.find_registration(&due.phone).await.unwrap().is_some());
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 3);
    // An expired bot can be approved again.
    let back = s.approve_bot(&due.id, NOW + 5000, &effects("approved"), NOW + 20).await.unwrap();
    assert_eq!(back.approval, ApprovalStatus::Approved);
}

async fn inconsistencies_are_found_and_repaired(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    add_server(s, "SERVER1", 5).await;
    register(s, "254700000090", "SERVER0").await.unwrap();
    register(s, "254700000091", "SERVER0").await.unwrap();
    register(s, "254700000092", "SERVER0").await.unwrap();
    // Break things the ways the seed's data was found broken.
    f.raw.exec("DELETE FROM bot_instances WHERE phone_number = '254700000090'").await;
    f.raw.exec("DELETE FROM god_register WHERE phone_number = '254700000091'").await;
    f.raw.exec("UPDATE god_register SET tenancy_name = 'SERVER1' WHERE phone_number = '254700000092'").await;
    let found = s.find_inconsistencies().await.unwrap();
    let kinds: HashSet<_> = found.iter().map(Inconsistency::kind).collect();
    assert_eq!(
        kinds,
        HashSet::from(["registry_without_bot", "bot_without_registry", "server_mismatch", "count_drift"]),
        "{found:?}"
    );
    for issue in &found {
        assert!(s.repair_inconsistency(issue, &effects("repaired"), NOW).await.unwrap(), "{issue:?}");
        // Repairing twice changes nothing.
        assert!(!s.repair_inconsistency(issue, &effects("repaired"), NOW).await.unwrap());
    }
    assert_consistent(s).await;
    // The locked-out phone registers again.
    register(s, "254700000090", "SERVER0").await.unwrap();
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 3);
}

async fn pairing_lifecycle(f: Fixture) {
    let s = &*f.store;
    let phone = PhoneNumber::parse("254700000100").unwrap();
    let pairing = NewPairing {
        id: "pair-1".into(),
        phone: phone.clone(),
        code: "ABCD-EFGH".into(),
        created_at: NOW,
        expires_at: NOW + 60_000,
    };
    s.create_pairing(&pairing).await.unwrap();
    let pending = s.take_pairing("pair-1", NOW + 1).await.unwrap().unwrap();
    assert_eq!((pending.status, pending.code.as_str()), (PairingStatus::Pending, "ABCD-EFGH"));
    assert!(pending.credentials.is_none());
    let credentials = creds::credentials(phone.as_str(), 1);
    s.complete_pairing("pair-1", &credentials, NOW + 2).await.unwrap();
    let paired = s.take_pairing("pair-1", NOW + 3).await.unwrap().unwrap();
    assert_eq!(paired.status, PairingStatus::Paired);
    assert_eq!(paired.credentials, Some(credentials.clone()));
    // Handed out once: the request is gone afterwards.
    assert!(s.take_pairing("pair-1", NOW + 4).await.unwrap().is_none());
    assert!(matches!(s.complete_pairing("pair-1", &credentials, NOW).await, Err(StoreError::PairingNotFound)));
    assert!(s.take_pairing("missing", NOW).await.unwrap().is_none());
    // A pending request past its expiry reads expired and can't complete.
    let old = NewPairing { id: "pair-2".into(), expires_at: NOW + 10, ..pairing.clone() };
    s.create_pairing(&old).await.unwrap();
    assert_eq!(s.take_pairing("pair-2", NOW + 10).await.unwrap().unwrap().status, PairingStatus::Expired);
    assert!(s.complete_pairing("pair-2", &credentials, NOW + 11).await.is_err());
    let failing = NewPairing { id: "pair-3".into(), ..pairing.clone() };
    s.create_pairing(&failing).await.unwrap();
    s.fail_pairing("pair-3", "phone refused", NOW).await.unwrap();
    let failed = s.take_pairing("pair-3", NOW).await.unwrap().unwrap();
    assert_eq!((failed.status, failed.message.as_deref()), (PairingStatus::Failed, Some("phone refused")));
    // Ended requests are purged once older than the cut; a paired one is
    // never purged (only its one reading removes it).
    let ready = NewPairing { id: "pair-4".into(), ..pairing.clone() };
    s.create_pairing(&ready).await.unwrap();
    s.complete_pairing("pair-4", &credentials, NOW).await.unwrap();
    assert_eq!(s.purge_pairings(NOW + 60_001).await.unwrap(), 2, "pair-2 (expired) and pair-3 (failed)");
    assert!(s.take_pairing("pair-3", NOW).await.unwrap().is_none());
    assert!(s.take_pairing("pair-4", NOW).await.unwrap().is_some());

    // Racing pollers: exactly one gets the session.
    let raced = NewPairing { id: "pair-5".into(), ..pairing.clone() };
    s.create_pairing(&raced).await.unwrap();
    s.complete_pairing("pair-5", &credentials, NOW).await.unwrap();
    let takes = join_all((0..8).map(|_| s.take_pairing("pair-5", NOW))).await;
    let handed = takes.iter().filter(|t| matches!(t, Ok(Some(r)) if r.credentials.is_some())).count();
    assert_eq!(handed, 1, "{:?}", takes.iter().map(|t| t.as_ref().map(|r| r.is_some())).collect::<Vec<_>>());

    // Pollers already polling while the pairing completes: still once (a
    // poll that reads the row between another's take and its own must not
    // hand it out again).
    let racing = NewPairing { id: "pair-6".into(), ..pairing.clone() };
    s.create_pairing(&racing).await.unwrap();
    let poll = || async {
        let mut handed = 0;
        for _ in 0..40 {
            if s.take_pairing("pair-6", NOW).await.unwrap().is_some_and(|r| r.credentials.is_some()) {
                handed += 1;
            }
        }
        handed
    };
    let complete = async { s.complete_pairing("pair-6", &credentials, NOW).await.unwrap() };
    let (handed, ()) = tokio::join!(async { join_all((0..6).map(|_| poll())).await.iter().sum::<i32>() }, complete);
    assert_eq!(handed, 1);
}

async fn notifications_are_claimed_once(f: Fixture) {
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 50).await;
    for n in 0..20 {
        register(&*s, &creds::phone(11, n), "SERVER0").await.unwrap();
    }
    // Four workers claim at once: every message goes to exactly one.
    let claims = join_all((0..4).map(|w| {
        let s = s.clone();
        async move { s.claim_notifications(&format!("w{w}"), NOW, 30_000, 8).await.unwrap() }
    }))
    .await;
    let mut seen = HashSet::new();
    for claim in &claims {
        for n in claim {
            assert!(seen.insert(n.id), "notification {} claimed twice", n.id);
            assert_eq!(n.attempts, 1);
        }
    }
    assert_eq!(seen.len(), 20);
    assert!(
        s.claim_notifications("w9", NOW + 1, 30_000, 100).await.unwrap().is_empty(),
        "leased ones are not reclaimed"
    );
    let first = &claims.iter().find(|c| !c.is_empty()).unwrap()[0];
    let owner = claims.iter().position(|c| c.iter().any(|n| n.id == first.id)).unwrap();
    assert!(!s.finish_notification(first.id, "intruder", NotificationOutcome::Sent, NOW).await.unwrap());
    assert!(s.finish_notification(first.id, &format!("w{owner}"), NotificationOutcome::Sent, NOW).await.unwrap());
    assert_eq!(s.pending_notifications().await.unwrap(), 19);
    // After the lease runs out, unfinished ones are claimed again.
    let again = s.claim_notifications("w9", NOW + 30_000, 30_000, 100).await.unwrap();
    assert_eq!(again.len(), 19);
    assert!(again.iter().all(|n| n.attempts == 2));
    let retry = NotificationOutcome::Retry { retry_at: NOW + 90_000, error: "gateway down".into() };
    assert!(s.finish_notification(again[0].id, "w9", retry, NOW + 30_001).await.unwrap());
    let failed = NotificationOutcome::Failed { error: "gave up".into() };
    assert!(s.finish_notification(again[1].id, "w9", failed, NOW + 30_001).await.unwrap());
    assert_eq!(s.pending_notifications().await.unwrap(), 18);
    let later = s.claim_notifications("w8", NOW + 60_000, 30_000, 100).await.unwrap();
    assert_eq!(later.len(), 17, "the retried one waits for its time");
    assert!(later.iter().all(|n| n.id != again[0].id));
    // A batch is marked sent in one write, only what the worker holds.
    let ids: Vec<i64> = later.iter().map(|n| n.id).collect();
    assert_eq!(s.finish_notifications_sent(&ids, "intruder", NOW + 60_001).await.unwrap(), 0);
    assert_eq!(s.finish_notifications_sent(&[], "w8", NOW + 60_001).await.unwrap(), 0);
    assert_eq!(s.finish_notifications_sent(&ids[..10], "w8", NOW + 60_001).await.unwrap(), 10);
    assert_eq!(s.finish_notifications_sent(&ids, "w8", NOW + 60_001).await.unwrap(), 7, "sent ones stay sent");
    assert_eq!(s.pending_notifications().await.unwrap(), 1);
}

/// Invariant 2 under load: 200 concurrent reservations on 5 servers of 10,
/// each holding 4 approved bots already (so the pending share, which counts
/// only bots waiting for approval, cannot stand in for the capacity check).
async fn concurrent_reservations_never_overfill(f: Fixture) {
    let s = f.store.clone();
    for n in 0..5 {
        let name = format!("SERVER{n}");
        add_server(&*s, &name, 10).await;
        for k in 0..4 {
            let held = register(&*s, &creds::phone(13, n * 10 + k), &name).await.unwrap();
            s.approve_bot(&held.bot.id, NOW + 1000, &effects("approved"), NOW).await.unwrap();
        }
    }
    let results = join_all((0..200u32).map(|n| {
        let s = s.clone();
        tokio::spawn(async move {
            let server = format!("SERVER{}", n % 5);
            register(&*s, &creds::phone(12, n), &server).await
        })
    }))
    .await;
    let mut won = 0;
    for result in results {
        match result.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::ServerFull(_)) => {}
            Err(other) => panic!("a loser must be told the server is full, got {other:?}"),
        }
    }
    assert_eq!(won, 30);
    for snapshot in s.list_servers().await.unwrap() {
        assert_eq!(snapshot.current_bot_count, 10, "{snapshot:?}");
        let filter = BotFilter { server: Some(snapshot.name.clone()), ..BotFilter::default() };
        let bots = s.list_bots(&filter).await.unwrap().bots;
        assert_eq!(bots.len(), 10);
    }
    assert_consistent(&*s).await;
}

/// Invariant 1 under load: one phone, many servers at once, one winner.
async fn concurrent_same_phone_registers_once(f: Fixture) {
    let s = f.store.clone();
    for n in 0..4 {
        add_server(&*s, &format!("SERVER{n}"), 10).await;
    }
    let results = join_all((0..40u32).map(|n| {
        let s = s.clone();
        tokio::spawn(async move {
            let bot = new_bot("254799999999", &format!("SERVER{}", n % 4), u128::from(n) + 1);
            s.register_bot(&bot, &effects("registered"), NOW).await
        })
    }))
    .await;
    let mut winners = Vec::new();
    for result in results {
        match result.unwrap() {
            Ok(done) => winners.push(done.bot),
            Err(StoreError::PhoneTaken { .. }) => {}
            Err(other) => panic!("expected PhoneTaken, got {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    let entry = s.find_registration(&winners[0].phone).await.unwrap().unwrap();
    assert_eq!(entry.bot_id, winners[0].id);
    let total: i64 = s.list_servers().await.unwrap().iter().map(|x| x.current_bot_count).sum();
    assert_eq!(total, 1);
    assert_consistent(&*s).await;
}

/// Registrations, rejects and deletes racing on a small server keep the
/// count equal to the bots there, and never exceed capacity.
async fn concurrent_churn_keeps_counts_true(f: Fixture) {
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 5).await;
    let tasks = (0..60u32).map(|n| {
        let s = s.clone();
        tokio::spawn(async move {
            let phone = creds::phone(13, n % 12);
            // A fresh bot id per attempt: a rejected bot's row stays.
            let bot = new_bot(&phone, "SERVER0", u128::from(n) + 1);
            let done = match s.register_bot(&bot, &effects("registered"), NOW).await {
                Ok(done) => done,
                // Losing a race is an answer, not an error.
                Err(StoreError::ServerFull(_) | StoreError::PhoneTaken { .. }) => return,
                Err(other) => panic!("registration failed: {other:?}"),
            };
            let snapshot = s.get_server(&server("SERVER0")).await.unwrap().unwrap();
            assert!(snapshot.current_bot_count <= snapshot.max_bot_count, "{snapshot:?}");
            if n % 2 == 0 {
                s.reject_bot(&done.bot.id, &effects("rejected"), NOW).await.unwrap();
            } else {
                s.delete_bot(&done.bot.id, &effects("deleted"), NOW).await.unwrap();
            }
        })
    });
    for task in join_all(tasks).await {
        task.unwrap();
    }
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 0);
    assert_consistent(&*s).await;
}

fn outbox_update(id: &str, bot: &BotRecord, variant: u32) -> NewCredentialUpdate {
    NewCredentialUpdate {
        id: id.to_owned(),
        bot_id: bot.id.clone(),
        phone: bot.phone.clone(),
        source: server("SERVER1"),
        target: bot.server.clone(),
        credentials: creds::credentials(bot.phone.as_str(), variant),
        held_for_ms: 0,
    }
}

/// An update the asking request delivers itself is not claimed by the
/// outbox meanwhile, but the request claims it by id at once.
async fn an_update_held_by_its_request_is_left_to_it(f: Fixture) {
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 5).await;
    let bot = register(&*s, "254700000290", "SERVER0").await.unwrap().bot;
    let held = NewCredentialUpdate { held_for_ms: 10_000, ..outbox_update("h1", &bot, 2) };
    s.enqueue_credential_update(&held, &effects("queued"), NOW).await.unwrap();
    assert!(s.claim_credential_updates("outbox", NOW + 9_999, 30_000, 10).await.unwrap().is_empty());
    assert!(s.claim_credential_update("h1", "request", NOW, 15_000).await.unwrap().is_some());
    s.finish_credential_update(
        "h1",
        "request",
        DeliveryOutcome::Retry { retry_at: NOW + 1, error: "later".into() },
        NOW,
    )
    .await
    .unwrap();
    let claimed = s.claim_credential_updates("outbox", NOW + 1, 30_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 1, "given back, the outbox takes it");
}

async fn outbox_versions_supersede_and_claims(f: Fixture) {
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 5).await;
    let bot = register(&*s, "254700000200", "SERVER0").await.unwrap().bot;
    let first = s.enqueue_credential_update(&outbox_update("u1", &bot, 2), &effects("queued"), NOW).await.unwrap();
    assert_eq!((first.version, first.status), (2, OutboxStatus::Pending));
    let second = s.enqueue_credential_update(&outbox_update("u2", &bot, 3), &effects("queued"), NOW + 1).await.unwrap();
    assert_eq!(second.version, 3, "versions climb above queued ones");
    assert_eq!(s.get_credential_update("u1").await.unwrap().unwrap().status, OutboxStatus::Superseded);
    assert_eq!(s.credential_outbox_depth().await.unwrap(), 1);

    // Claims are exclusive; the payload decrypts.
    let claims = join_all((0..4).map(|w| {
        let s = s.clone();
        async move { s.claim_credential_updates(&format!("w{w}"), NOW + 2, 10_000, 10).await.unwrap() }
    }))
    .await;
    let claimed: Vec<_> = claims.iter().flatten().collect();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].update.id, "u2");
    assert_eq!(claimed[0].credentials, creds::credentials(bot.phone.as_str(), 3));
    assert!(s.claim_credential_update("u2", "other", NOW + 3, 10_000).await.unwrap().is_none(), "held by a lease");
    let owner = claims.iter().position(|c| !c.is_empty()).unwrap();
    let retry = DeliveryOutcome::Retry { retry_at: NOW + 5_000, error: "host down".into() };
    assert!(!s.finish_credential_update("u2", "intruder", retry.clone(), NOW).await.unwrap());
    assert!(s.finish_credential_update("u2", &format!("w{owner}"), retry, NOW + 3).await.unwrap());
    assert!(s.claim_credential_updates("w9", NOW + 4, 10_000, 10).await.unwrap().is_empty(), "not due yet");
    let again = s.claim_credential_update("u2", "w9", NOW + 4, 10_000).await.unwrap().unwrap();
    assert_eq!(again.update.attempts, 2);
    assert!(s.finish_credential_update("u2", "w9", DeliveryOutcome::Delivered, NOW + 6).await.unwrap());
    let delivered = s.get_credential_update("u2").await.unwrap().unwrap();
    assert_eq!((delivered.status, delivered.delivered_at), (OutboxStatus::Delivered, Some(NOW + 6)));
    assert_eq!(delivered.last_error.as_deref(), Some("host down"));
    // A delivered version still counts: the next update goes above it.
    let third = s.enqueue_credential_update(&outbox_update("u3", &bot, 4), &effects("queued"), NOW + 7).await.unwrap();
    assert_eq!(third.version, 4);
    // The statistics' read: the window's updates, newest first, bounded.
    let ids = |updates: Vec<CredentialUpdate>| updates.into_iter().map(|u| u.id).collect::<Vec<_>>();
    assert_eq!(ids(s.credential_updates_since(NOW + 1, 10).await.unwrap()), ["u3", "u2"]);
    assert_eq!(ids(s.credential_updates_since(NOW, 1).await.unwrap()), ["u3"]);
    assert!(s.credential_updates_since(NOW + 8, 10).await.unwrap().is_empty());
    assert!(s.get_credential_update("nope").await.unwrap().is_none());
    let missing = NewCredentialUpdate { bot_id: BotId::parse("ghost").unwrap(), ..outbox_update("u4", &bot, 5) };
    assert!(matches!(
        s.enqueue_credential_update(&missing, &effects("queued"), NOW).await,
        Err(StoreError::BotNotFound)
    ));
}

async fn idempotency_and_replay_guard(f: Fixture) {
    let s = &*f.store;
    assert_eq!(s.begin_idempotent("k1", "fp", NOW, 60_000, 86_400_000).await.unwrap(), IdempotencyBegin::Started);
    assert_eq!(
        s.begin_idempotent("k1", "fp", NOW + 1, 60_000, 86_400_000).await.unwrap(),
        IdempotencyBegin::InProgress
    );
    assert_eq!(
        s.begin_idempotent("k1", "other", NOW + 1, 60_000, 86_400_000).await.unwrap(),
        IdempotencyBegin::Mismatch
    );
    s.finish_idempotent("k1", 200, "{\"ok\":true}").await.unwrap();
    assert_eq!(
        s.begin_idempotent("k1", "fp", NOW + 2, 60_000, 86_400_000).await.unwrap(),
        IdempotencyBegin::Done { status: 200, body: "{\"ok\":true}".into() }
    );
    // A holder that died is taken over after `stale_after`, by exactly one
    // of many callers racing for it.
    assert_eq!(s.begin_idempotent("k2", "fp", NOW, 60_000, 86_400_000).await.unwrap(), IdempotencyBegin::Started);
    let racers = join_all((0..12).map(|_| s.begin_idempotent("k2", "fp", NOW + 60_000, 60_000, 86_400_000))).await;
    let started = racers.iter().filter(|r| matches!(r, Ok(IdempotencyBegin::Started))).count();
    assert_eq!(started, 1, "{racers:?}");
    assert!(racers.iter().all(|r| matches!(r, Ok(IdempotencyBegin::Started | IdempotencyBegin::InProgress))));
    assert_eq!(
        s.begin_idempotent("k2", "fp", NOW + 60_001, 60_000, 86_400_000).await.unwrap(),
        IdempotencyBegin::InProgress
    );
    s.abandon_idempotent("k2").await.unwrap();
    assert_eq!(s.begin_idempotent("k2", "fp", NOW, 60_000, 86_400_000).await.unwrap(), IdempotencyBegin::Started);

    assert!(s.remember_jti("SERVER1", "abc", NOW + 60_000).await.unwrap());
    assert!(!s.remember_jti("SERVER1", "abc", NOW + 60_000).await.unwrap());
    assert!(s.remember_jti("SERVER2", "abc", NOW + 60_000).await.unwrap(), "jti is per issuer");
    assert_eq!(s.purge_replay_records(NOW + 86_400_001).await.unwrap(), 2);
    assert_eq!(s.purge_idempotency_keys(NOW + 86_400_001).await.unwrap(), 2);
    assert!(s.remember_jti("SERVER1", "abc", NOW + 60_000).await.unwrap());
}

async fn registered_and_approved(s: &dyn Store, phone: &str, server_name: &str) -> BotRecord {
    let bot = register(s, phone, server_name).await.unwrap().bot;
    s.approve_bot(&bot.id, NOW + 1_000_000, &effects("approved"), NOW).await.unwrap()
}

async fn node_leases_fence_runners(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    add_server(s, "SERVER1", 5).await;
    let (a, b) = (server("SERVER0"), server("SERVER1"));
    let lease_ms = 30_000;
    let pending = register(s, "254700000301", "SERVER0").await.unwrap().bot;
    let bot = registered_and_approved(s, "254700000300", "SERVER0").await;
    assert!(matches!(s.start_node_lease(&server("SERVER9"), NOW, lease_ms).await, Err(StoreError::UnknownServer(_))));
    let a1 = s.start_node_lease(&a, NOW, lease_ms).await.unwrap();
    let b1 = s.start_node_lease(&b, NOW, lease_ms).await.unwrap();
    assert!(!s.acquire_bot(&pending.id, &a1, 1, NOW).await.unwrap(), "not approved");
    assert!(!s.acquire_bot(&bot.id, &b1, 1, NOW).await.unwrap(), "not the host");
    assert!(!s.acquire_bot(&bot.id, &a1, 2, NOW).await.unwrap(), "not the current version");
    assert!(!s.acquire_bot(&bot.id, &a1, 1, NOW + 30_001).await.unwrap(), "under a lease that ran out");
    assert!(s.acquire_bot(&bot.id, &a1, 1, NOW).await.unwrap());
    assert!(s.acquire_bot(&bot.id, &a1, 1, NOW + 1).await.unwrap(), "re-entrant for the runner");
    assert!(s.renew_node_lease(&a1, NOW + 10_000, lease_ms).await.unwrap());
    let stamped = s.get_server(&a).await.unwrap().unwrap().last_heartbeat;
    assert_eq!(stamped, Some(NOW + 10_000), "a renewal is the node's heartbeat too");

    // The bot moves to SERVER1: B waits while A's lease lives, however
    // often it renews, and takes the bot once the lease has run out.
    f.raw.exec("UPDATE bot_instances SET server_name = 'SERVER1'").await;
    assert!(s.renew_node_lease(&b1, NOW + 10_000, lease_ms).await.unwrap());
    assert!(!s.acquire_bot(&bot.id, &b1, 1, NOW + 20_000).await.unwrap(), "A's lease still holds");
    assert!(s.renew_node_lease(&b1, NOW + 35_000, lease_ms).await.unwrap());
    assert!(s.acquire_bot(&bot.id, &b1, 1, NOW + 40_001).await.unwrap(), "A's lease ran out at NOW + 40 s");
    // A stalled past its lease: it cannot renew it, release or report on
    // the bot B runs now.
    assert!(!s.renew_node_lease(&a1, NOW + 40_002, lease_ms).await.unwrap(), "a lease that ran out stays over");
    let stamped = s.get_server(&a).await.unwrap().unwrap().last_heartbeat;
    assert_eq!(stamped, Some(NOW + 10_000), "a lost lease stamps nothing");
    s.release_bot(&bot.id, &a1).await.unwrap();
    let report = |runner: &NodeLease, version| RuntimeReport {
        bot_id: bot.id.clone(),
        runner: runner.clone(),
        version,
        status: RuntimeStatus::Online,
        restarts: 1,
        last_error: Some("crashed once".into()),
        invalid_reason: None,
        effects: None,
    };
    assert!(!s.report_runtime(&report(&a1, 1), NOW).await.unwrap(), "only the host reports");
    assert!(!s.report_runtime(&report(&b1, 1), NOW + 80_000).await.unwrap(), "only under a live lease");
    assert!(!s.report_runtime(&report(&b1, 7), NOW).await.unwrap(), "only about current credentials");
    assert!(s.report_runtime(&report(&b1, 1), NOW).await.unwrap());
    let stored = s.get_bot(&bot.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.status, stored.restarts, stored.last_error.as_deref()),
        (RuntimeStatus::Online, 1, Some("crashed once"))
    );

    // B restarts (new epoch): its old run may be taken over at once, and
    // the old epoch can neither renew nor report any more.
    let b2 = s.start_node_lease(&b, NOW + 41_000, lease_ms).await.unwrap();
    assert!(b2.epoch > b1.epoch);
    assert!(!s.renew_node_lease(&b1, NOW + 41_000, lease_ms).await.unwrap(), "the old epoch is over");
    assert!(s.acquire_bot(&bot.id, &b2, 1, NOW + 41_000).await.unwrap(), "a new epoch takes over at once");
    assert!(!s.acquire_bot(&bot.id, &b1, 1, NOW + 41_000).await.unwrap(), "the old epoch cannot take it back");
    assert!(!s.report_runtime(&report(&b1, 1), NOW).await.unwrap(), "a stale runner cannot report");
    // What a report says to people (an activity, the owner's message) is
    // written with it, and only when it is taken.
    let pending_before = s.pending_notifications().await.unwrap();
    let telling = |runner: &NodeLease| RuntimeReport {
        effects: Some(
            SideEffects::activity(NewActivity::new(&b, "logged_out", "device removed").for_bot(&bot.id, &bot.phone))
                .notify(&bot.phone, "Pair again"),
        ),
        ..report(runner, 1)
    };
    assert!(!s.report_runtime(&telling(&b1), NOW + 41_100).await.unwrap());
    let logged_out = |activities: Vec<Activity>| activities.into_iter().filter(|a| a.action == "logged_out").count();
    assert_eq!(logged_out(s.list_activities(Some(bot.id.clone()), None, 50).await.unwrap().activities), 0);
    assert_eq!(s.pending_notifications().await.unwrap(), pending_before, "a refused report tells nobody");
    assert!(s.report_runtime(&telling(&b2), NOW + 41_100).await.unwrap());
    assert_eq!(logged_out(s.list_activities(Some(bot.id.clone()), None, 50).await.unwrap().activities), 1);
    assert_eq!(s.pending_notifications().await.unwrap(), pending_before + 1, "the owner is told");
    // How a run ended is fenced the same way; memory kills add up.
    let exit = |reason: &str, out_of_memory| BotExit {
        at: NOW + 41_500,
        code: None,
        signal: Some(9),
        reason: reason.into(),
        out_of_memory,
    };
    assert_eq!(s.bot_exits(&bot.id).await.unwrap(), BotExits::default(), "no exit before the first");
    assert!(!s.record_exit(&bot.id, &b1, &exit("stale", true)).await.unwrap(), "a stale runner records nothing");
    assert!(s.record_exit(&bot.id, &b2, &exit("out of memory", true)).await.unwrap());
    assert!(s.record_exit(&bot.id, &b2, &exit("out of memory", true)).await.unwrap());
    let exits = s.bot_exits(&bot.id).await.unwrap();
    assert_eq!(exits.oom_kills, 2);
    // Each kill is the system's act on the audit trail; the stale one is not.
    let system = AuditFilter { actor: Some("system".into()), action: Some("out_of_memory".into()) };
    let kills = s.list_audit(&system, None, 10).await.unwrap().activities;
    let targets: Vec<_> = kills.iter().map(|a| (a.bot_id.clone(), a.audit.clone().unwrap().target)).collect();
    assert_eq!(targets, vec![(Some(bot.id.to_string()), format!("bot/{}", bot.id)); 2]);
    let last = exits.last.unwrap();
    assert_eq!((last.at, last.code, last.signal, last.reason.as_str()), (NOW + 41_500, None, Some(9), "out of memory"));
    // Released, the bot is free for a lease of its host at once.
    s.release_bot(&bot.id, &b2).await.unwrap();
    let b3 = s.start_node_lease(&b, NOW + 42_000, lease_ms).await.unwrap();
    assert!(s.acquire_bot(&bot.id, &b3, 1, NOW + 42_000).await.unwrap());
}

/// Reads `node`'s change feed from `cursor`: (bots changed, bots departed),
/// as sorted phone numbers / ids, and the next cursor.
async fn changes_of(s: &dyn Store, node: &str, cursor: &ChangeCursor) -> (Vec<String>, Vec<BotId>, ChangeCursor) {
    let changes = s.bot_changes(&server(node), cursor).await.unwrap();
    let mut changed: Vec<String> = changes.changed.iter().map(|b| b.phone.as_str().to_owned()).collect();
    changed.sort();
    (changed, changes.departed, changes.cursor)
}

async fn the_change_feed_says_what_changed_and_nothing_when_quiet(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 10).await;
    add_server(s, "SERVER1", 10).await;
    let one = registered_and_approved(s, "254700000310", "SERVER0").await;
    let two = registered_and_approved(s, "254700000311", "SERVER0").await;
    register(s, "254700000312", "SERVER0").await.unwrap();
    let snapshot = s.bots_to_run(&server("SERVER0")).await.unwrap();
    let mut running: Vec<&str> = snapshot.bots.iter().map(|b| b.phone.as_str()).collect();
    running.sort_unstable();
    assert_eq!(running, ["254700000310", "254700000311"], "approved bots only");

    // Quiet: nothing, however often asked.
    let (changed, departed, cursor) = changes_of(s, "SERVER0", &snapshot.cursor).await;
    assert!(changed.is_empty() && departed.is_empty(), "{changed:?} {departed:?}");
    let (changed, _, cursor) = changes_of(s, "SERVER0", &cursor).await;
    assert!(changed.is_empty());

    // A change on SERVER0 shows there, not on SERVER1.
    let lease = s.start_node_lease(&server("SERVER0"), NOW, 30_000).await.unwrap();
    assert!(s.acquire_bot(&one.id, &lease, 1, NOW).await.unwrap());
    let (changed, _, cursor_after) = changes_of(s, "SERVER0", &cursor).await;
    assert_eq!(changed, ["254700000310"]);
    assert!(changes_of(s, "SERVER1", &cursor).await.0.is_empty());
    let cursor = cursor_after;

    // A move: SERVER0 learns the departure, SERVER1 the arrival.
    f.raw.exec("UPDATE bot_instances SET server_name = 'SERVER1' WHERE phone_number = '254700000311'").await;
    let (changed, departed, _) = changes_of(s, "SERVER0", &cursor).await;
    assert_eq!((changed.len(), departed.clone()), (0, vec![two.id.clone()]));
    let (changed, departed, _) = changes_of(s, "SERVER1", &cursor).await;
    assert_eq!((changed, departed.len()), (vec!["254700000311".to_owned()], 0));

    // A delete: a departure too.
    let (_, _, cursor) = changes_of(s, "SERVER0", &cursor).await;
    s.delete_bot(&one.id, &effects("deleted"), NOW).await.unwrap();
    let (changed, departed, cursor) = changes_of(s, "SERVER0", &cursor).await;
    assert_eq!((changed.len(), departed), (0, vec![one.id.clone()]));
    assert!(changes_of(s, "SERVER0", &cursor).await.1.is_empty(), "a departure is said once");

    // Old departures are purged.
    assert_eq!(s.purge_departures(i64::MAX).await.unwrap(), 2);
    assert!(changes_of(s, "SERVER0", &ChangeCursor::default()).await.1.is_empty());
}

async fn the_change_feed_misses_no_late_commit(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 10).await;
    registered_and_approved(s, "254700000320", "SERVER0").await;
    registered_and_approved(s, "254700000321", "SERVER0").await;
    let cursor = s.bots_to_run(&server("SERVER0")).await.unwrap().cursor;
    // A transaction writes bot 320 and stays open...
    let open = f.raw.open_write("UPDATE bot_instances SET restarts = 7 WHERE phone_number = '254700000320'").await;
    // ...while (where the backend has several writers) a later one writes
    // bot 321 and commits first.
    if !f.raw.single_writer() {
        f.raw.exec("UPDATE bot_instances SET restarts = 8 WHERE phone_number = '254700000321'").await;
    }
    let (_, _, cursor) = changes_of(s, "SERVER0", &cursor).await;
    open.commit().await;
    // The late commit is in the next read, whatever its place in the order.
    let changes = s.bot_changes(&server("SERVER0"), &cursor).await.unwrap();
    let late = changes.changed.iter().find(|b| b.phone.as_str() == "254700000320");
    assert_eq!(late.map(|b| b.restarts), Some(7), "the late commit was missed: {changes:?}");
}

/// Writers commit in a tight loop while a follower reads the feed: the
/// last value of every row is seen, whatever the commit order.
async fn the_change_feed_keeps_up_with_writers_in_a_tight_loop(f: Fixture) {
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 20).await;
    let phones: Vec<String> = (0..4).map(|n| format!("25470000033{n}")).collect();
    for phone in &phones {
        registered_and_approved(&*s, phone, "SERVER0").await;
    }
    let mut cursor = s.bots_to_run(&server("SERVER0")).await.unwrap().cursor;
    let raw = f.raw.clone();
    let writers: Vec<_> = phones
        .iter()
        .map(|phone| {
            let (raw, phone) = (raw.clone(), phone.clone());
            tokio::spawn(async move {
                for value in 1..=40 {
                    let sql = format!("UPDATE bot_instances SET restarts = {value} WHERE phone_number = '{phone}'");
                    raw.exec(Box::leak(sql.into_boxed_str())).await;
                }
            })
        })
        .collect();
    let mut seen: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let read = |changes: BotChanges, seen: &mut std::collections::HashMap<String, i64>| {
        for bot in changes.changed {
            seen.insert(bot.phone.as_str().to_owned(), bot.restarts);
        }
        changes.cursor
    };
    while !writers.iter().all(|w| w.is_finished()) {
        cursor = read(s.bot_changes(&server("SERVER0"), &cursor).await.unwrap(), &mut seen);
    }
    for writer in writers {
        writer.await.unwrap();
    }
    read(s.bot_changes(&server("SERVER0"), &cursor).await.unwrap(), &mut seen);
    for phone in &phones {
        assert_eq!(seen.get(phone), Some(&40), "the last write of {phone} was missed: {seen:?}");
    }
}

async fn auto_assignment_text_counts_slots_and_keeps_the_bot_name(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER1", 5).await;
    register(s, "254700000090", "SERVER1").await.unwrap();
    // A bot whose name looks like a template placeholder keeps it verbatim.
    let mut bot = unique_bot("254700000091", "SERVER1");
    bot.name = "{slots_left}".into();
    let message =
        GuestMessage::AutoAssigned { bot_name: bot.name.clone(), from: server("SERVER0"), to: server("SERVER1") };
    let done = s.register_bot(&bot, &effects("auto_assigned").notify(&bot.phone, message), NOW).await.unwrap();
    assert_eq!(done.free_slots_after, 3);
    assert_eq!(done.bot.name, "{slots_left}");
    let sent = s.claim_notifications("w", NOW, 60_000, 10).await.unwrap();
    let text = &sent.iter().find(|n| n.phone == "254700000091").unwrap().text;
    assert_eq!(
        text,
        "SERVER0 is full, so your bot \"{slots_left}\" was registered on SERVER1 (3 slots left there). \
         It is waiting for admin approval."
    );
}

/// Every place credentials are stored (bots, the cross-server outbox,
/// pairing requests), read back raw from every table of the schema: no
/// private key and no session ID is found, as text or as bytes.
async fn no_table_holds_a_credential_in_clear(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    let phone = "254700000300";
    let bot = register(s, phone, "SERVER0").await.unwrap().bot;
    s.update_credentials(&bot.id, &creds::credentials(phone, 2), VersionRule::Next, &effects("updated"), NOW)
        .await
        .unwrap();
    s.enqueue_credential_update(&outbox_update("u-secret", &bot, 3), &effects("queued"), NOW).await.unwrap();
    let pairing = NewPairing {
        id: "pair-secret".into(),
        phone: PhoneNumber::parse(phone).unwrap(),
        code: "ABCD-EFGH".into(),
        created_at: NOW,
        expires_at: NOW + 60_000,
    };
    s.create_pairing(&pairing).await.unwrap();
    s.complete_pairing("pair-secret", &creds::credentials(phone, 4), NOW).await.unwrap();

    let dump = f.raw.dump_all_tables().await;
    assert!(dump.contains(phone), "the dump reads the rows: {dump}");
    for variant in 1..=4 {
        for marker in creds::secret_markers(phone, variant) {
            let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(
                !dump.contains(&marker) && !dump.contains(&hex),
                "credential material of variant {variant} at rest"
            );
        }
    }
    assert!(!dump.contains("noiseKey") && !dump.contains("signedIdentityKey"), "a creds document at rest");
}

/// Invariant 8 in the store's own statement: another account never writes,
/// an older pairing of the same account never writes, a newer one does; a
/// bot with no pinned account (registered before ownership was recorded)
/// is pinned by its first valid update.
async fn only_the_pinned_account_changes_credentials(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    let phone = "254700000500";
    let bot = register(s, phone, "SERVER0").await.unwrap().bot;
    let own = creds::credentials(phone, 1).identity().account_key;
    assert_eq!((bot.account_key, bot.adv_timestamp), (Some(own), Some(creds::adv_timestamp(1) as i64)));

    let intruder = Credentials::from_session_id(&creds::session_id_of_account(phone, 9, "intruder")).unwrap();
    let refused = s.update_credentials(&bot.id, &intruder, VersionRule::Next, &effects("x"), NOW + 1).await;
    assert!(matches!(refused, Err(StoreError::AccountMismatch)), "{refused:?}");
    let newer = creds::credentials(phone, 4);
    s.update_credentials(&bot.id, &newer, VersionRule::Next, &effects("x"), NOW + 2).await.unwrap();
    let older = creds::credentials(phone, 3);
    let refused = s.update_credentials(&bot.id, &older, VersionRule::Next, &effects("x"), NOW + 3).await;
    assert!(matches!(refused, Err(StoreError::OlderSession)), "{refused:?}");
    // The same session again is no error (idempotent for the guest).
    s.update_credentials(&bot.id, &newer, VersionRule::Next, &effects("x"), NOW + 4).await.unwrap();
    assert_eq!(s.load_credentials(&bot.id).await.unwrap().unwrap().0, newer);

    // A bot from before ownership was recorded: the first valid update pins.
    f.raw.exec("UPDATE bot_instances SET account_key = NULL, adv_timestamp = NULL").await;
    let pinned = s.update_credentials(&bot.id, &intruder, VersionRule::Next, &effects("x"), NOW + 5).await.unwrap();
    assert_eq!(pinned.account_key, Some(intruder.identity().account_key));
    let refused = s.update_credentials(&bot.id, &newer, VersionRule::Next, &effects("x"), NOW + 6).await;
    assert!(matches!(refused, Err(StoreError::AccountMismatch)), "{refused:?}");
}

async fn reviews_wait_for_an_admin_and_approval_pins_the_new_account(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    let phone = "254700000510";
    let bot = register(s, phone, "SERVER0").await.unwrap().bot;
    let other =
        |variant| Credentials::from_session_id(&creds::session_id_of_account(phone, variant, "new-phone")).unwrap();
    let review = |id: &str, variant| NewReview {
        id: id.into(),
        bot_id: bot.id.clone(),
        phone: bot.phone.clone(),
        credentials: other(variant),
    };
    let first = s.open_review(&review("r1", 2), &effects("review"), NOW).await.unwrap();
    assert_eq!((first.status, first.account_key), (ReviewStatus::Open, other(2).identity().account_key));
    // One open review per bot: a newer change replaces it.
    s.open_review(&review("r2", 3), &effects("review"), NOW + 1).await.unwrap();
    let ReviewPage { reviews: listed, next } = s.list_reviews(None, 10).await.unwrap();
    assert!(next.is_none());
    let first_page = s.list_reviews(None, 1).await.unwrap();
    let second_page = s.list_reviews(first_page.next, 1).await.unwrap();
    let ids = (first_page.reviews[0].id.as_str(), second_page.reviews[0].id.as_str());
    assert_eq!((ids, second_page.next), (("r2", "r1"), None));
    let status = |id: &str| listed.iter().find(|r| r.id == id).unwrap().status;
    assert_eq!((status("r1"), status("r2")), (ReviewStatus::Superseded, ReviewStatus::Open));
    assert!(matches!(s.approve_review("r1", &effects("a"), NOW + 2).await, Err(StoreError::ReviewNotFound)));
    // Nothing changed for the bot until an admin decides.
    assert_eq!(s.load_credentials(&bot.id).await.unwrap().unwrap(), (creds::credentials(phone, 1), 1));
    let approved = s.approve_review("r2", &effects("approved"), NOW + 3).await.unwrap();
    assert_eq!((approved.credentials_version, approved.account_key), (2, Some(other(3).identity().account_key)));
    assert_eq!(s.load_credentials(&bot.id).await.unwrap().unwrap(), (other(3), 2));
    assert!(matches!(s.approve_review("r2", &effects("a"), NOW + 4).await, Err(StoreError::ReviewNotFound)));
    // The new account now owns the bot; the old one is another account.
    let old_owner = creds::credentials(phone, 5);
    let refused = s.update_credentials(&bot.id, &old_owner, VersionRule::Next, &effects("x"), NOW + 5).await;
    assert!(matches!(refused, Err(StoreError::AccountMismatch)), "{refused:?}");
    // A rejected review is decided for good.
    s.open_review(&review("r3", 4), &effects("review"), NOW + 6).await.unwrap();
    assert_eq!(s.reject_review("r3", &effects("rejected"), NOW + 7).await.unwrap().status, ReviewStatus::Rejected);
    assert!(matches!(s.approve_review("r3", &effects("a"), NOW + 8).await, Err(StoreError::ReviewNotFound)));
    assert_eq!(s.load_credentials(&bot.id).await.unwrap().unwrap().1, 2);
}

/// Finding 3 of the outside probe: unapproved bots could fill a server.
/// With a 50 % share, 60 racing registrations on 10 slots leave exactly 5
/// pending; approving one makes room for one more; rejecting frees one.
async fn unapproved_bots_hold_at_most_their_share_even_under_a_race(f: Fixture) {
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 10).await;
    let tasks = (0..60u32).map(|n| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut bot = unique_bot(&creds::phone(14, n), "SERVER0");
            bot.pending_share_percent = 50;
            s.register_bot(&bot, &effects("registered"), NOW).await
        })
    });
    let results: Vec<_> = join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let placed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(placed.len(), 5);
    assert!(results.iter().all(|r| matches!(r, Ok(_) | Err(StoreError::ServerFull(_)))));
    s.approve_bot(&placed[0].bot.id, NOW + 1000, &effects("approved"), NOW).await.unwrap();
    let mut more = unique_bot(&creds::phone(14, 100), "SERVER0");
    more.pending_share_percent = 50;
    s.register_bot(&more, &effects("registered"), NOW).await.unwrap();
    let mut refused = unique_bot(&creds::phone(14, 101), "SERVER0");
    refused.pending_share_percent = 50;
    assert!(matches!(s.register_bot(&refused, &effects("r"), NOW).await, Err(StoreError::ServerFull(_))));
    s.reject_bot(&placed[1].bot.id, &effects("rejected"), NOW).await.unwrap();
    s.register_bot(&refused, &effects("registered"), NOW).await.unwrap();
    // The slot count is still the whole truth: 6 bots hold slots.
    assert_eq!(s.get_server(&server("SERVER0")).await.unwrap().unwrap().current_bot_count, 6);
    let stale = s.stale_pending_bots(NOW + 1, 100).await.unwrap();
    assert_eq!(stale.len(), 5, "five still wait for approval");
    assert_consistent(&*s).await;
}

/// Admin lists page by keyset: newest first, ties by id, every bot once,
/// whatever the page size, even with many bots created in the same
/// millisecond; filters apply inside the pages.
async fn bot_lists_page_by_keyset_without_gaps_or_repeats(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 100).await;
    let mut ids = HashSet::new();
    for n in 0..57u32 {
        let bot = unique_bot(&creds::phone(15, n), "SERVER0");
        // Three bots share each millisecond.
        ids.insert(s.register_bot(&bot, &effects("r"), NOW + i64::from(n / 3)).await.unwrap().bot.id);
    }
    for size in [1, 7, 20, 57, 1000] {
        let mut seen = Vec::new();
        let mut filter = BotFilter { limit: Some(size), ..BotFilter::default() };
        loop {
            let page = s.list_bots(&filter).await.unwrap();
            assert!(page.bots.len() as i64 <= size);
            seen.extend(page.bots.iter().map(|b| (b.created_at, b.id.clone())));
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 57, "page size {size}");
        assert_eq!(seen.iter().map(|(_, id)| id.clone()).collect::<HashSet<_>>(), ids);
        let mut sorted = seen.clone();
        sorted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        assert_eq!(seen, sorted, "newest first, ties by id");
    }
    let online = BotFilter { status: Some(RuntimeStatus::Online), ..BotFilter::default() };
    assert!(s.list_bots(&online).await.unwrap().bots.is_empty());
}

async fn bot_pages_read_an_index_in_order_whatever_the_filter(f: Fixture) {
    add_server(&*f.store, "SERVER0", 10).await;
    add_server(&*f.store, "SERVER1", 10).await;
    f.raw.seed_bots(20_000).await;
    let after = Some(BotCursor { created_at: 10_000, id: BotId::parse("seed-10000").unwrap() });
    let filters = [
        BotFilter::default(),
        BotFilter { server: Some(server("SERVER0")), ..BotFilter::default() },
        BotFilter { approval: Some(ApprovalStatus::Pending), ..BotFilter::default() },
        BotFilter { status: Some(RuntimeStatus::Offline), ..BotFilter::default() },
        BotFilter { server: Some(server("SERVER1")), approval: Some(ApprovalStatus::Approved), ..BotFilter::default() },
        BotFilter { server: Some(server("SERVER0")), after: after.clone(), ..BotFilter::default() },
        BotFilter { after, ..BotFilter::default() },
    ];
    for filter in &filters {
        let plan = f.raw.explain_bot_page(filter).await;
        // One of the page indexes, read in its order: no full scan, no sort
        // of every matching row.
        assert!(plan.contains("bot_instances_page"), "{filter:?}:\n{plan}");
        for full_work in ["Seq Scan", "Sort", "TEMP B-TREE", "SCAN bot_instances\n"] {
            assert!(!plan.contains(full_work), "{filter:?} plans a {full_work}:\n{plan}");
        }
        // A later page starts at its cursor in the index, not at the top.
        if filter.after.is_some() {
            let starts_at_cursor = plan.lines().any(|line| {
                (line.contains("Index Cond:") && line.contains("created_at <= $")) || line.contains("created_at<?")
            });
            assert!(starts_at_cursor, "{filter:?} scans from the top:\n{plan}");
        }
    }
    // And the pages are right (the seeded rows have no credentials to
    // decrypt, but listing never decrypts).
    let page = f.store.list_bots(&BotFilter { limit: Some(5), ..filters[2].clone() }).await.unwrap();
    let created: Vec<i64> = page.bots.iter().map(|b| b.created_at).collect();
    assert_eq!(created, [20_000, 19_996, 19_992, 19_988, 19_984]);
}

/// An admin walks the bot list page by page while guests register,
/// through nodes whose clocks differ (one runs a minute behind): every bot
/// that existed when the walk began is seen exactly once, pages never go
/// back in their order (newest first, then by id), and nothing is seen twice.
async fn a_walk_through_the_pages_sees_every_bot_once_while_bots_are_added(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 1_000).await;
    let mut existing = std::collections::HashSet::new();
    for n in 0..45u32 {
        let bot = new_bot(&creds::phone(71, n), "SERVER0", u128::from(n) + 1);
        // Ten registrations share each millisecond: ties are broken by id.
        let done = s.register_bot(&bot, &effects("registered"), NOW + i64::from(n / 10)).await.unwrap();
        existing.insert(done.bot.id);
    }
    let (mut seen, mut last, mut cursor, mut added) = (Vec::new(), None, None, 0u32);
    loop {
        let page = s.list_bots(&BotFilter { limit: Some(10), after: cursor.clone(), ..BotFilter::default() }).await;
        let page = page.unwrap();
        for bot in &page.bots {
            // Newest first, then by id.
            let key = (std::cmp::Reverse(bot.created_at), bot.id.clone());
            if let Some(previous) = &last {
                assert!(&key > previous, "the walk went back: {key:?} after {previous:?}");
            }
            last = Some(key);
            seen.push(bot.id.clone());
        }
        // Between pages: one bot from a node a minute ahead, one from a
        // node a minute behind (it lands among the rows still to walk).
        for offset in [60_000, -60_000] {
            added += 1;
            let bot = new_bot(&creds::phone(72, added), "SERVER0", 1_000 + u128::from(added));
            s.register_bot(&bot, &effects("registered"), NOW + offset).await.unwrap();
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let unique: std::collections::HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a bot was seen twice");
    assert!(existing.is_subset(&unique), "{} of {} existing bots missed", existing.difference(&unique).count(), 45);
}

fn session_snapshot(generation: i64, content: &str) -> SessionSnapshot {
    SessionSnapshot {
        generation,
        archive: content.as_bytes().to_vec(),
        size_bytes: content.len() as i64,
        file_count: 3,
    }
}

/// A save already in flight when another runner takes the bot lands
/// before that or not at all: the new runner loads the last state, and its
/// own saves (one generation above what it loaded) are not refused.
async fn a_save_in_flight_when_another_runner_takes_the_bot_writes_nothing(f: Fixture) {
    if f.raw.single_writer() {
        // SQLite has one writer at a time: no save can be in flight beside an acquire.
        return;
    }
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 5).await;
    add_server(&*s, "SERVER1", 5).await;
    let bot = registered_and_approved(&*s, "254700000410", "SERVER0").await;
    let old = s.start_node_lease(&server("SERVER0"), NOW, 30_000).await.unwrap();
    let new = s.start_node_lease(&server("SERVER1"), NOW, 30_000).await.unwrap();
    assert!(s.acquire_bot(&bot.id, &old, 1, NOW).await.unwrap());
    assert!(s.save_session_state(&bot.id, &old, 1, &session_snapshot(1, "first"), NOW).await.unwrap());
    // The bot moves and its new runner takes it, in a transaction not yet
    // committed (it holds the bot row)...
    let take = format!(
        "UPDATE bot_instances SET server_name = 'SERVER1', runner = 'SERVER1', runner_epoch = {} WHERE id = '{}'",
        new.epoch,
        bot.id.as_str()
    );
    let taking = f.raw.open_write(Box::leak(take.into_boxed_str())).await;
    // ...while the old runner's save is under way.
    let saving = {
        let (s, id, old) = (s.clone(), bot.id.clone(), old.clone());
        tokio::spawn(async move { s.save_session_state(&id, &old, 1, &session_snapshot(2, "late"), NOW).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    taking.commit().await;
    assert!(!saving.await.unwrap().unwrap(), "the old runner's save landed after the bot was taken");
    let loaded = s.load_session_state(&bot.id, 1).await.unwrap().unwrap();
    assert_eq!((loaded.generation, loaded.archive.as_slice()), (1, b"first".as_slice()));
    assert!(s.save_session_state(&bot.id, &new, 1, &session_snapshot(2, "new host"), NOW).await.unwrap());
}

/// A move changes host, registry and both counts in one transaction; the
/// old runner may still save the session as it stops the bot but reports
/// nothing for it, and the new host takes the bot only once it is let go.
async fn a_move_changes_host_registry_and_counts_and_fences_the_old_runner(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    add_server(s, "SERVER1", 1).await;
    let bot = registered_and_approved(s, "254700000420", "SERVER0").await;
    let (a, b) = (server("SERVER0"), server("SERVER1"));
    let old = s.start_node_lease(&a, NOW, 30_000).await.unwrap();
    let new = s.start_node_lease(&b, NOW, 30_000).await.unwrap();
    assert!(s.acquire_bot(&bot.id, &old, 1, NOW).await.unwrap());

    let activity = NewActivity::new(&a, "bot_moved", "SERVER0 -> SERVER1").for_bot(&bot.id, &bot.phone);
    let moved = s
        .move_bot(&MoveRequest::admin(bot.id.clone(), b.clone()), &SideEffects::activity(activity), NOW)
        .await
        .unwrap();
    assert_eq!((moved.from.as_str(), moved.bot.server.as_str()), ("SERVER0", "SERVER1"));
    let count = |name: &'static str| async move {
        s.list_servers().await.unwrap().into_iter().find(|x| x.name.as_str() == name).unwrap().current_bot_count
    };
    assert_eq!((count("SERVER0").await, count("SERVER1").await), (0, 1));
    let entry = s.find_registration(&bot.phone).await.unwrap().unwrap();
    assert_eq!(entry.server.as_str(), "SERVER1");
    let activities = s.list_activities(Some(bot.id.clone()), None, 5).await.unwrap().activities;
    assert_eq!(activities[0].action, "bot_moved");
    assert!(s.find_inconsistencies().await.unwrap().is_empty(), "registry and bot agree");

    // The old runner: no status any more, but its last save still lands.
    let report = RuntimeReport {
        effects: None,
        bot_id: bot.id.clone(),
        runner: old.clone(),
        version: 1,
        status: RuntimeStatus::Online,
        restarts: 0,
        last_error: None,
        invalid_reason: None,
    };
    assert!(!s.report_runtime(&report, NOW).await.unwrap(), "a late status of the old host");
    assert!(s.save_session_state(&bot.id, &old, 1, &session_snapshot(1, "final"), NOW).await.unwrap());
    // The new host waits for it, and a second move waits for the first.
    assert!(!s.acquire_bot(&bot.id, &new, 1, NOW).await.unwrap(), "two runners at once");
    let again =
        s.move_bot(&MoveRequest::admin(bot.id.clone(), a.clone()), &effects("bot_moved"), NOW).await.unwrap_err();
    assert!(matches!(again, StoreError::Conflict(ref m) if m.contains("under way")), "{again:?}");
    s.release_bot(&bot.id, &old).await.unwrap();
    assert!(s.acquire_bot(&bot.id, &new, 1, NOW).await.unwrap());
    assert_eq!(s.load_session_state(&bot.id, 1).await.unwrap().unwrap().archive, b"final");

    // Refused moves change nothing.
    let same =
        s.move_bot(&MoveRequest::admin(bot.id.clone(), b.clone()), &effects("bot_moved"), NOW).await.unwrap_err();
    assert!(matches!(same, StoreError::Conflict(_)), "{same:?}");
    let other = registered_and_approved(s, "254700000421", "SERVER0").await;
    let notified_before = s.pending_notifications().await.unwrap();
    let told = effects("bot_moved").notify(&other.phone, "moved");
    let full = s.move_bot(&MoveRequest::admin(other.id.clone(), b.clone()), &told, NOW).await.unwrap_err();
    assert!(matches!(full, StoreError::ServerFull(_)), "{full:?}");
    let unknown = s.move_bot(&MoveRequest::admin(other.id.clone(), server("SERVER9")), &told, NOW).await.unwrap_err();
    assert!(matches!(unknown, StoreError::UnknownServer(_)), "{unknown:?}");
    assert_eq!((count("SERVER0").await, count("SERVER1").await), (1, 1));
    assert_eq!(s.pending_notifications().await.unwrap(), notified_before, "effects of refused moves");
}

fn wall_clock_ms() -> Millis {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    Millis::try_from(since.as_millis()).unwrap()
}

/// The conditions of a planned move are checked in its transaction: the
/// source (compare-and-set), the target's pace, and for a failover that the
/// source's node lease is still gone by the database's clock.
async fn moves_are_conditional_paced_and_a_failover_waits_for_the_lost_lease(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 10).await;
    add_server(s, "SERVER1", 10).await;
    add_server(s, "SERVER2", 10).await;
    let (a, b, c) = (server("SERVER0"), server("SERVER1"), server("SERVER2"));
    let mut bots = Vec::new();
    for n in 0..4 {
        bots.push(registered_and_approved(s, &format!("25470000050{n}"), "SERVER0").await);
    }
    let plan = |bot: &BotRecord, from: &ServerName, to: &ServerName| MoveRequest {
        bot: bot.id.clone(),
        from: Some(from.clone()),
        to: to.clone(),
        reason: MoveReason::Evacuation,
        pace_per_min: Some(1),
        lost_for_ms: None,
    };
    s.move_bot(&plan(&bots[0], &a, &b), &effects("bot_moved"), NOW).await.unwrap();
    // Planned from a stale snapshot (it left SERVER0 already): refused.
    let stale = s.move_bot(&plan(&bots[0], &a, &c), &effects("bot_moved"), NOW).await.unwrap_err();
    assert!(matches!(stale, StoreError::Conflict(ref m) if m.contains("left SERVER0")), "{stale:?}");
    // SERVER1 took its one move this minute; SERVER2 has pace left.
    let paced = s.move_bot(&plan(&bots[1], &a, &b), &effects("bot_moved"), NOW + 59_000).await.unwrap_err();
    assert!(matches!(paced, StoreError::Paced(ref t) if t == &b), "{paced:?}");
    s.move_bot(&plan(&bots[1], &a, &c), &effects("bot_moved"), NOW + 59_000).await.unwrap();
    s.move_bot(&plan(&bots[1], &c, &b), &effects("bot_moved"), NOW + 61_000).await.unwrap();
    let moved = s.list_bots(&BotFilter { server: Some(b.clone()), ..BotFilter::default() }).await.unwrap();
    assert_eq!(moved.bots.len(), 2);
    assert!(moved.bots.iter().all(|bot| bot.moved_at.is_some()), "arrivals are marked for the new host's pace");

    // Failover: only while SERVER0's lease is gone, by the database's clock.
    s.start_node_lease(&a, wall_clock_ms(), 30_000).await.unwrap();
    let failover = |bot: &BotRecord| MoveRequest {
        reason: MoveReason::Failover,
        pace_per_min: None,
        lost_for_ms: Some(60_000),
        ..plan(bot, &a, &c)
    };
    assert!(s.lost_servers(60_000).await.unwrap().is_empty(), "a held lease is not lost");
    let held = s.move_bot(&failover(&bots[2]), &effects("bot_failed_over"), NOW).await.unwrap_err();
    assert!(matches!(held, StoreError::Conflict(ref m) if m.contains("lease")), "{held:?}");
    // The lease ran out long ago (written with an old time).
    s.start_node_lease(&a, NOW, 30_000).await.unwrap();
    assert_eq!(s.lost_servers(60_000).await.unwrap(), vec![a.clone()]);
    s.move_bot(&failover(&bots[2]), &effects("bot_failed_over"), NOW).await.unwrap();
    s.move_bot(&failover(&bots[3]), &effects("bot_failed_over"), NOW).await.unwrap();
    assert!(s.lost_servers(60_000).await.unwrap().is_empty(), "nothing approved is left on it");
    assert_consistent(s).await;
    let servers = s.list_servers().await.unwrap();
    let count = |name: &str| servers.iter().find(|x| x.name.as_str() == name).unwrap().current_bot_count;
    assert_eq!((count("SERVER0"), count("SERVER1"), count("SERVER2")), (0, 2, 2));
}

/// Power actions, load reports and evacuation progress as admins see them.
async fn power_load_and_evacuation_are_recorded(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 10).await;
    let a = server("SERVER0");
    let pending = register(s, "254700000510", "SERVER0").await.unwrap().bot;
    let refused = s.set_power(&pending.id, PowerAction::Restart, &effects("bot_restarted"), NOW).await.unwrap_err();
    assert!(matches!(refused, StoreError::Conflict(ref m) if m.contains("not approved")), "{refused:?}");
    // A stop holds for a bot still waiting: it stays stopped once approved.
    let waiting = s.set_power(&pending.id, PowerAction::Stop, &effects("bot_stopped"), NOW).await.unwrap();
    assert_eq!(waiting.desired_state, DesiredState::Stopped);
    let bot = registered_and_approved(s, "254700000511", "SERVER0").await;
    assert_eq!((bot.desired_state, bot.power_seq), (DesiredState::Running, 0));
    let stopped = s.set_power(&bot.id, PowerAction::Stop, &effects("bot_stopped"), NOW).await.unwrap();
    assert_eq!(stopped.desired_state, DesiredState::Stopped);
    let to_run = s.bots_to_run(&a).await.unwrap().bots;
    assert!(to_run.iter().all(|b| b.id != bot.id), "a stopped bot is not one to run");
    // A failed bot restarts without a re-approval: `loading` again.
    let lease = s.start_node_lease(&a, NOW, 30_000).await.unwrap();
    assert!(s.acquire_bot(&bot.id, &lease, 1, NOW).await.unwrap());
    let failed = RuntimeReport {
        effects: None,
        bot_id: bot.id.clone(),
        runner: lease.clone(),
        version: 1,
        status: RuntimeStatus::Failed,
        restarts: 0,
        last_error: Some("crashed".into()),
        invalid_reason: None,
    };
    assert!(s.report_runtime(&failed, NOW).await.unwrap());
    let restarted = s.set_power(&bot.id, PowerAction::Restart, &effects("bot_restarted"), NOW).await.unwrap();
    assert_eq!(
        (restarted.desired_state, restarted.power_seq, restarted.status),
        (DesiredState::Running, 1, RuntimeStatus::Loading)
    );
    assert!(s.bots_to_run(&a).await.unwrap().bots.iter().any(|b| b.id == bot.id));

    let load = ServerLoad { cpu_percent: 37, memory_available_bytes: 3 << 30, bots_running: 1 };
    s.heartbeat(&a, NOW, Some(load)).await.unwrap();
    s.heartbeat(&a, NOW + 1, None).await.unwrap();
    assert_eq!(s.get_server(&a).await.unwrap().unwrap().load, Some(load), "a beat without figures keeps the last");

    let evacuating = s.start_evacuation(&a, &audit("server_evacuation"), NOW).await.unwrap();
    assert_eq!(evacuating.status, ServerStatus::Draining);
    assert_eq!(evacuating.evacuation, Some(Evacuation { started_at: NOW, stuck: 0 }));
    s.record_evacuation(&a, 2, false).await.unwrap();
    assert_eq!(s.get_server(&a).await.unwrap().unwrap().evacuation.map(|e| e.stuck), Some(2));
    // Made active again by an admin: the evacuation is over.
    let patch = ServerPatch { max_bot_count: None, status: Some(ServerStatus::Active) };
    assert_eq!(s.update_server(&a, &patch, &audit("server_updated"), NOW).await.unwrap().evacuation, None);
    s.start_evacuation(&a, &audit("server_evacuation"), NOW).await.unwrap();
    s.record_evacuation(&a, 0, true).await.unwrap();
    assert_eq!(s.get_server(&a).await.unwrap().unwrap().evacuation, None, "done");
    assert!(matches!(
        s.start_evacuation(&server("NOPE"), &audit("server_evacuation"), NOW).await,
        Err(StoreError::UnknownServer(_))
    ));
}

/// Eight moves race for one free slot: exactly one wins, counts stay exact.
async fn concurrent_moves_never_overfill_the_target(f: Fixture) {
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 10).await;
    add_server(&*s, "SERVER1", 1).await;
    let mut bots = Vec::new();
    for n in 0..8 {
        bots.push(registered_and_approved(&*s, &format!("25470000043{n}"), "SERVER0").await);
    }
    let moves: Vec<_> = bots
        .iter()
        .map(|bot| {
            let (s, id) = (s.clone(), bot.id.clone());
            tokio::spawn(async move {
                s.move_bot(&MoveRequest::admin(id.clone(), server("SERVER1")), &effects("bot_moved"), NOW).await
            })
        })
        .collect();
    let mut won = 0;
    for done in moves {
        match done.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::ServerFull(_)) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1);
    let servers = s.list_servers().await.unwrap();
    let count = |name: &str| servers.iter().find(|x| x.name.as_str() == name).unwrap().current_bot_count;
    assert_eq!((count("SERVER0"), count("SERVER1")), (7, 1));
    assert!(s.find_inconsistencies().await.unwrap().is_empty());
}

async fn session_state_is_sealed_fenced_and_kept_per_pairing(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    add_server(s, "SERVER1", 5).await;
    let bot = registered_and_approved(s, "254700000400", "SERVER0").await;
    let (a, b) = (server("SERVER0"), server("SERVER1"));
    let lease = s.start_node_lease(&a, NOW, 30_000).await.unwrap();
    let other = s.start_node_lease(&b, NOW, 30_000).await.unwrap();
    let secret = "pre-key-7 session-with-alice SECRET-SESSION-MARKER";
    // Not the runner yet: nothing is written.
    assert!(!s.save_session_state(&bot.id, &lease, 1, &session_snapshot(1, secret), NOW).await.unwrap());
    assert!(s.acquire_bot(&bot.id, &lease, 1, NOW).await.unwrap());
    assert!(s.save_session_state(&bot.id, &lease, 1, &session_snapshot(1, secret), NOW).await.unwrap());
    let loaded = s.load_session_state(&bot.id, 1).await.unwrap().unwrap();
    assert_eq!((loaded.generation, loaded.archive.as_slice()), (1, secret.as_bytes()));
    assert!(!f.raw.dump_all_tables().await.contains("SECRET-SESSION-MARKER"), "the state is sealed at rest");

    // Generations only go up.
    assert!(!s.save_session_state(&bot.id, &lease, 1, &session_snapshot(1, "same"), NOW).await.unwrap());
    assert!(s.save_session_state(&bot.id, &lease, 1, &session_snapshot(3, "third"), NOW + 1).await.unwrap());
    assert!(!s.save_session_state(&bot.id, &lease, 1, &session_snapshot(2, "older"), NOW + 2).await.unwrap());
    // A node that does not run the bot, a lease that ran out, a later
    // epoch of the runner's own node, credentials that are not the bot's:
    // none of them writes.
    assert!(!s.save_session_state(&bot.id, &other, 1, &session_snapshot(9, "other node"), NOW).await.unwrap());
    assert!(!s.save_session_state(&bot.id, &lease, 1, &session_snapshot(9, "late"), NOW + 30_001).await.unwrap());
    assert!(!s.save_session_state(&bot.id, &lease, 2, &session_snapshot(9, "next pairing"), NOW).await.unwrap());
    let info = s.session_state_info(&bot.id).await.unwrap().unwrap();
    assert_eq!((info.generation, info.size_bytes, info.file_count, info.synced_at), (3, 5, 3, NOW + 1));
    assert_eq!(s.load_session_state(&bot.id, 1).await.unwrap().unwrap().archive, b"third");

    // A refusal is recorded only by the runner, and keeps the state.
    assert!(!s.refuse_session_state(&bot.id, &other, "too large", NOW).await.unwrap());
    assert!(s.refuse_session_state(&bot.id, &lease, "the session folder holds 20 bytes", NOW).await.unwrap());
    let refused = s.get_bot(&bot.id).await.unwrap().unwrap();
    assert_eq!(refused.last_error.as_deref(), Some("session state not saved: the session folder holds 20 bytes"));
    let activities = s.list_activities(Some(bot.id.clone()), None, 10).await.unwrap().activities;
    assert_eq!(activities[0].action, "session_state_refused");
    assert_eq!(s.load_session_state(&bot.id, 1).await.unwrap().unwrap().archive, b"third");

    // A new pairing starts a new state: the old one is not offered for the
    // new credentials, and the first save of the new ones replaces it.
    let effects = effects("credentials_updated");
    s.update_credentials(&bot.id, &creds::credentials("254700000400", 2), VersionRule::Next, &effects, NOW)
        .await
        .unwrap();
    assert!(s.load_session_state(&bot.id, 2).await.unwrap().is_none());
    assert!(s.session_state_info(&bot.id).await.unwrap().is_none());
    assert!(s.acquire_bot(&bot.id, &lease, 2, NOW + 3).await.unwrap());
    assert!(s.save_session_state(&bot.id, &lease, 2, &session_snapshot(1, "fresh"), NOW + 3).await.unwrap());
    assert!(s.load_session_state(&bot.id, 1).await.unwrap().is_none());
    assert_eq!(s.load_session_state(&bot.id, 2).await.unwrap().unwrap().archive, b"fresh");

    // Deleting the bot deletes its state.
    s.delete_bot(&bot.id, &effects, NOW + 4).await.unwrap();
    assert!(s.load_session_state(&bot.id, 2).await.unwrap().is_none());
}

fn device_put(space: &str, key: &str, value: &str) -> DeviceWrite {
    DeviceWrite::Put { space: space.into(), key: key.into(), value: value.as_bytes().to_vec() }
}

async fn device_state_is_sealed_fenced_and_kept_per_pairing(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    add_server(s, "SERVER1", 5).await;
    let bot = registered_and_approved(s, "254700000410", "SERVER0").await;
    let lease = s.start_node_lease(&server("SERVER0"), NOW, 30_000).await.unwrap();
    let other = s.start_node_lease(&server("SERVER1"), NOW, 30_000).await.unwrap();
    let contact = "254799999999.0@s.whatsapp.net";
    let first = [device_put("session", contact, "RATCHET-MARKER-1"), device_put("session", "bob", "b")];
    assert!(!s.write_device_state(&bot.id, &lease, 1, &first, NOW).await.unwrap(), "not the runner yet");
    assert!(s.acquire_bot(&bot.id, &lease, 1, NOW).await.unwrap());
    assert!(s.write_device_state(&bot.id, &lease, 1, &first, NOW).await.unwrap());
    let keys = [contact.to_owned(), "nobody".to_owned()];
    let found = s.device_state_get(&bot.id, 1, "session", &keys).await.unwrap();
    assert_eq!(found, vec![(contact.to_owned(), b"RATCHET-MARKER-1".to_vec())]);
    let dump = f.raw.dump_all_tables().await;
    assert!(!dump.contains("RATCHET-MARKER"), "values are sealed at rest");
    assert!(!dump.contains("254799999999"), "keys (contacts' addresses) are not stored in clear");

    // Spaces are apart; a write is all or nothing, in order.
    assert!(s.device_state_get(&bot.id, 1, "identity", &keys).await.unwrap().is_empty());
    let batch = [
        device_put("session", "bob", "b2"),
        DeviceWrite::Delete { space: "session".into(), key: contact.into() },
        device_put("prekey", "1", "p1"),
        device_put("prekey", "2", "p2"),
        DeviceWrite::Clear { space: "prekey".into() },
        device_put("prekey", "3", "p3"),
    ];
    assert!(s.write_device_state(&bot.id, &lease, 1, &batch, NOW + 1).await.unwrap());
    let mut sessions = s.device_state_scan(&bot.id, 1, "session").await.unwrap();
    sessions.sort();
    let info = s.device_state_info(&bot.id).await.unwrap().unwrap();
    assert_eq!(info.keys, 2, "bob's session and pre-key 3");
    assert!(info.bytes > 4, "sealed values have a size: {info:?}");
    assert_eq!(sessions, vec![("bob".to_owned(), b"b2".to_vec())]);
    assert_eq!(s.device_state_scan(&bot.id, 1, "prekey").await.unwrap(), vec![("3".to_owned(), b"p3".to_vec())]);

    // Another node, a lease that ran out, credentials that are not the
    // bot's: nothing is written.
    let late = [device_put("session", "bob", "late")];
    assert!(!s.write_device_state(&bot.id, &other, 1, &late, NOW).await.unwrap());
    assert!(!s.write_device_state(&bot.id, &lease, 1, &late, NOW + 30_001).await.unwrap());
    assert!(!s.write_device_state(&bot.id, &lease, 2, &late, NOW).await.unwrap());
    assert_eq!(s.device_state_scan(&bot.id, 1, "session").await.unwrap()[0].1, b"b2");

    // The send hold: only the runner keeps it, and it only ever grows.
    assert_eq!(s.send_hold(&bot.id).await.unwrap(), None);
    assert!(!s.hold_sends(&bot.id, &other, 1, NOW + 86_400_000, "463", NOW).await.unwrap(), "not the runner");
    assert_eq!(s.send_hold(&bot.id).await.unwrap(), None);
    assert!(s.hold_sends(&bot.id, &lease, 1, NOW + 86_400_000, "463", NOW).await.unwrap());
    assert!(s.hold_sends(&bot.id, &lease, 1, NOW + 900_000, "429", NOW + 1).await.unwrap());
    let day_hold = Some((NOW + 86_400_000, "463".to_owned()));
    assert_eq!(s.send_hold(&bot.id).await.unwrap(), day_hold, "a shorter hold never shortens it");

    // A new pairing sees none of the old state; its import resets it.
    let effects = effects("credentials_updated");
    s.update_credentials(&bot.id, &creds::credentials("254700000410", 2), VersionRule::Next, &effects, NOW)
        .await
        .unwrap();
    assert!(s.device_state_scan(&bot.id, 2, "session").await.unwrap().is_empty());
    assert_eq!(s.device_state_info(&bot.id).await.unwrap(), None, "nothing kept for the new credentials");
    assert!(s.acquire_bot(&bot.id, &lease, 2, NOW + 2).await.unwrap());
    let import = [DeviceWrite::Reset, device_put("meta", "device", "new device")];
    assert!(s.write_device_state(&bot.id, &lease, 2, &import, NOW + 2).await.unwrap());
    assert!(s.device_state_scan(&bot.id, 1, "session").await.unwrap().is_empty(), "the reset removed it");
    assert_eq!(s.device_state_scan(&bot.id, 2, "meta").await.unwrap().len(), 1);
    assert_eq!(s.send_hold(&bot.id).await.unwrap(), day_hold, "WhatsApp's limit is the account's: a re-pair keeps it");

    // Deleting the bot deletes its state.
    s.delete_bot(&bot.id, &effects, NOW + 4).await.unwrap();
    assert!(s.device_state_scan(&bot.id, 2, "meta").await.unwrap().is_empty());
}

async fn hosted_notifications_go_to_the_hosting_node(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    add_server(s, "SERVER1", 5).await;
    let here = register(s, "254700000500", "SERVER0").await.unwrap().bot;
    let there = register(s, "254700000501", "SERVER1").await.unwrap().bot;
    let gone = register(s, "254700000502", "SERVER1").await.unwrap().bot;
    // Its bot deleted, the phone has no host left: any node ends its messages.
    s.delete_bot(&gone.id, &effects("deleted").notify(&gone.phone, "deleted"), NOW).await.unwrap();
    let phones = |claimed: Vec<Notification>| {
        let mut phones: Vec<String> = claimed.into_iter().map(|n| n.phone).collect();
        phones.sort();
        phones
    };
    let mine = s.claim_hosted_notifications("w0", &server("SERVER0"), NOW, 30_000, 100).await.unwrap();
    assert_eq!(phones(mine), vec![here.phone.to_string(), gone.phone.to_string(), gone.phone.to_string()]);
    let theirs = s.claim_hosted_notifications("w1", &server("SERVER1"), NOW, 30_000, 100).await.unwrap();
    assert_eq!(phones(theirs), vec![there.phone.to_string()], "the rest is claimed already");
}

/// A fleet duty (`duty_leases`): taken when free, renewed by its holder,
/// refused to others until it lapses, then taken over; eight nodes asking
/// at once get one holder. One scope's level reads as normal until moved.
async fn a_duty_has_one_holder_until_it_lapses(f: Fixture) {
    use trekker_domain::capacity::CapacityLevel::{Normal, Warning};
    let s = f.store.clone();
    let (a, b) = (server("SERVER0"), server("SERVER1"));
    assert!(s.hold_duty("fleet_capacity", &a, NOW, 30_000).await.unwrap());
    assert!(s.hold_duty("fleet_capacity", &a, NOW + 10_000, 30_000).await.unwrap(), "renewed by its holder");
    assert!(!s.hold_duty("fleet_capacity", &b, NOW + 39_000, 30_000).await.unwrap(), "held until NOW + 40 s");
    assert!(s.hold_duty("other_duty", &b, NOW, 30_000).await.unwrap(), "duties are apart");
    assert!(s.hold_duty("fleet_capacity", &b, NOW + 40_001, 30_000).await.unwrap(), "lapsed: taken over");
    assert!(!s.hold_duty("fleet_capacity", &a, NOW + 40_002, 30_000).await.unwrap());
    let askers: Vec<_> = (0..8)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move { s.hold_duty("race", &server(&format!("NODE{n}")), NOW, 30_000).await.unwrap() })
        })
        .collect();
    let held = join_all(askers).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(held, 1, "one holder however many ask at once");
    assert_eq!(s.capacity_level("SERVER0").await.unwrap(), Normal);
    add_server(&*s, "SERVER0", 5).await;
    assert!(s.move_capacity_level("SERVER0", Normal, Warning, None, NOW).await.unwrap());
    assert_eq!(s.capacity_level("SERVER0").await.unwrap(), Warning);
}

async fn a_capacity_level_moves_once_however_many_try(f: Fixture) {
    use trekker_domain::capacity::CapacityLevel::{Full, Normal, Warning};
    let s = f.store.clone();
    add_server(&*s, "SERVER0", 5).await;
    assert!(s.capacity_levels().await.unwrap().is_empty(), "a scope never moved is normal");
    let admin = PhoneNumber::parse("254799000000").unwrap();
    let warning = |n: usize| {
        SideEffects::activity(NewActivity::new(&server("SERVER0"), "capacity_warning", format!("try {n}")))
            .notify(&admin, "SERVER0 is 80 % full")
    };
    // Eight nodes see the same crossing at once: one records it.
    let tries = join_all((0..8).map(|n| {
        let (s, effects) = (s.clone(), warning(n));
        async move { s.move_capacity_level("SERVER0", Normal, Warning, Some(effects), NOW).await.unwrap() }
    }))
    .await;
    assert_eq!(tries.iter().filter(|moved| **moved).count(), 1, "{tries:?}");
    assert_eq!(s.capacity_levels().await.unwrap(), vec![("SERVER0".to_owned(), Warning)]);
    let warnings = s.list_activities(None, None, 50).await.unwrap().activities;
    assert_eq!(warnings.iter().filter(|a| a.action == "capacity_warning").count(), 1);
    assert_eq!(s.pending_notifications().await.unwrap(), 1, "one message to the admin");
    // A node that read the level before it moved changes nothing.
    assert!(!s.move_capacity_level("SERVER0", Normal, Full, Some(warning(9)), NOW).await.unwrap());
    assert!(s.move_capacity_level("SERVER0", Warning, Full, None, NOW).await.unwrap());
    assert_eq!(s.capacity_levels().await.unwrap(), vec![("SERVER0".to_owned(), Full)]);
    assert_eq!(s.pending_notifications().await.unwrap(), 1);
}

async fn the_fleet_feed_sees_every_server_and_new_activities(f: Fixture) {
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    add_server(s, "SERVER1", 5).await;
    let cursor = s.fleet_cursor().await.unwrap();
    let seen = s.last_activity_id().await.unwrap();
    let a = register(s, "254700000600", "SERVER0").await.unwrap().bot;
    let b = register(s, "254700000601", "SERVER1").await.unwrap().bot;
    let changes = s.fleet_changes(&cursor).await.unwrap();
    let mut changed: Vec<BotId> = changes.changed.iter().map(|bot| bot.id.clone()).collect();
    changed.sort();
    let mut expected = vec![a.id.clone(), b.id.clone()];
    expected.sort();
    assert_eq!(changed, expected, "both servers' bots");
    let quiet = s.fleet_changes(&changes.cursor).await.unwrap();
    assert!(quiet.changed.is_empty() && quiet.departed.is_empty(), "nothing since");
    s.delete_bot(&b.id, &effects("deleted"), NOW).await.unwrap();
    let after_delete = s.fleet_changes(&quiet.cursor).await.unwrap();
    assert_eq!(after_delete.departed, vec![b.id.clone()]);
    let new: Vec<String> = s.activities_after(seen, 10).await.unwrap().into_iter().map(|a| a.action).collect();
    assert_eq!(new, vec!["registered", "registered", "deleted"], "oldest first");
    let last = s.last_activity_id().await.unwrap();
    assert!(s.activities_after(last, 10).await.unwrap().is_empty());
}

fn api_key(id: &str, role: trekker_domain::access::Role, created_at: Millis) -> ApiKey {
    ApiKey {
        id: id.to_owned(),
        name: format!("key {id}"),
        role,
        secret_hash: vec![id.len() as u8; 32],
        created_by: "bootstrap".into(),
        created_at,
        expires_at: Some(created_at + 86_400_000),
        revoked_at: None,
        last_used_at: None,
    }
}

async fn api_keys_are_found_by_id_paged_revoked_once_and_their_use_recorded(f: Fixture) {
    use trekker_domain::access::Role;
    let s = &*f.store;
    let keys = [("00000000000000a1", Role::Viewer, NOW), ("00000000000000a2", Role::Operator, NOW + 1)];
    let keys = keys.map(|(id, role, at)| api_key(id, role, at));
    for key in &keys {
        s.create_api_key(key, &audit("key_created")).await.unwrap();
    }
    let admin = api_key("00000000000000a3", Role::Admin, NOW + 1);
    s.create_api_key(&admin, &audit("key_created")).await.unwrap();
    assert!(
        matches!(s.create_api_key(&admin, &audit("key_created")).await, Err(StoreError::Conflict(_))),
        "an id names one key"
    );
    assert_eq!(s.api_key(&admin.id).await.unwrap(), Some(admin.clone()), "found by id, hash and role kept");
    assert_eq!(s.api_key("00000000000000ff").await.unwrap(), None);

    // Newest first, ties by id; pages neither skip nor repeat.
    let first = s.list_api_keys(None, 2).await.unwrap();
    let ids: Vec<&str> = first.keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, ["00000000000000a3", "00000000000000a2"]);
    let rest = s.list_api_keys(first.next.clone(), 2).await.unwrap();
    assert_eq!(rest.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["00000000000000a1"]);
    assert_eq!(rest.next, None);

    // Revoked once, by one of many racing callers; the first time stays.
    let racing = (0..8).map(|n| {
        let store = f.store.clone();
        async move { store.revoke_api_key("00000000000000a2", &audit("key_revoked"), NOW + 10 + n).await.unwrap() }
    });
    let won = join_all(racing).await.into_iter().filter(|revoked| *revoked).count();
    assert_eq!(won, 1);
    let revoked = s.api_key("00000000000000a2").await.unwrap().unwrap();
    let at = revoked.revoked_at.unwrap();
    assert!(!revoked.usable_at(at), "a revoked key opens nothing");
    assert!(!s.revoke_api_key("00000000000000a2", &audit("key_revoked"), NOW + 99).await.unwrap());
    assert_eq!(s.api_key("00000000000000a2").await.unwrap().unwrap().revoked_at, Some(at));
    assert!(!s.revoke_api_key("00000000000000ff", &audit("key_revoked"), NOW).await.unwrap());
    let viewer = s.api_key("00000000000000a1").await.unwrap().unwrap();
    assert!(viewer.usable_at(NOW) && !viewer.usable_at(NOW + 86_400_000), "expired at its expiry");

    // Use is recorded in batches and never moves back.
    s.record_api_key_use(&[("00000000000000a1".into(), NOW + 500), ("00000000000000a3".into(), NOW + 7)])
        .await
        .unwrap();
    s.record_api_key_use(&[("00000000000000a1".into(), NOW + 400)]).await.unwrap();
    assert_eq!(s.api_key("00000000000000a1").await.unwrap().unwrap().last_used_at, Some(NOW + 500));
    assert_eq!(s.api_key("00000000000000a3").await.unwrap().unwrap().last_used_at, Some(NOW + 7));
}

async fn the_audit_trail_holds_admin_writes_and_system_actions_with_their_change(f: Fixture) {
    use trekker_domain::access::{Actor, Role};
    let s = &*f.store;
    add_server(s, "SERVER0", 5).await;
    let guest = register(s, "254700000071", "SERVER0").await.unwrap();
    let patch = ServerPatch { max_bot_count: Some(4), status: None };
    s.update_server(&server("SERVER0"), &patch, &audit("server_updated"), NOW + 1).await.unwrap();
    let rejection = NewActivity::new(&server("SERVER0"), "rejected", "by ops")
        .for_bot(&guest.bot.id, &guest.bot.phone)
        .by(&Actor { key_id: Some("00000000000000bb".into()), name: "ops-2".into() }, "bot/x");
    s.reject_bot(&guest.bot.id, &SideEffects::activity(rejection), NOW + 2).await.unwrap();
    let expiry = NewActivity::new(&server("SERVER0"), "expired", "approval expired").by_system("bot/y");
    s.append_activity(&expiry, NOW + 3).await.unwrap();
    s.append_activity(&audit("approved").refused("CONFLICT"), NOW + 4).await.unwrap();
    // A write that fails writes no entry (one transaction).
    let key = api_key("00000000000000c1", Role::Viewer, NOW + 5);
    s.create_api_key(&key, &audit("key_created")).await.unwrap();
    assert!(s.create_api_key(&key, &audit("key_created")).await.is_err());
    let bad = ServerPatch { max_bot_count: Some(1), status: None };
    assert!(s.update_server(&server("NOPE"), &bad, &audit("server_updated"), NOW).await.is_err());
    // Eight racing revocations: one revokes, one entry.
    let racing = (0..8).map(|n| {
        let store = f.store.clone();
        async move { store.revoke_api_key("00000000000000c1", &audit("key_revoked"), NOW + 10 + n).await.unwrap() }
    });
    assert_eq!(join_all(racing).await.into_iter().filter(|revoked| *revoked).count(), 1);

    let all = s.list_audit(&AuditFilter::default(), None, 100).await.unwrap();
    let seen: Vec<(&str, &str, &str)> = all
        .activities
        .iter()
        .map(|a| {
            let mark = a.audit.as_ref().unwrap();
            (a.action.as_str(), mark.actor.name.as_str(), mark.result.as_str())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("key_revoked", "ops", "ok"),
            ("key_created", "ops", "ok"),
            ("approved", "ops", "CONFLICT"),
            ("expired", "system", "ok"),
            ("rejected", "ops-2", "ok"),
            ("server_updated", "ops", "ok"),
        ],
        "newest first; the guest's registration is not on the trail"
    );
    let rejected = &all.activities[4];
    let mark = rejected.audit.as_ref().unwrap();
    assert_eq!((mark.actor.key_id.as_deref(), mark.target.as_str()), (Some("00000000000000bb"), "bot/x"));
    assert_eq!(rejected.bot_id.as_deref(), Some(guest.bot.id.as_str()));
    let guest_steps = s.list_activities(None, None, 100).await.unwrap().activities;
    assert!(guest_steps.iter().any(|a| a.action == "registered" && a.audit.is_none()), "still an activity");

    let system = AuditFilter { actor: Some("system".into()), action: None };
    let only = s.list_audit(&system, None, 100).await.unwrap().activities;
    assert_eq!(only.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(), ["expired"]);
    let by_action = AuditFilter { actor: Some("ops".into()), action: Some("key_created".into()) };
    assert_eq!(s.list_audit(&by_action, None, 100).await.unwrap().activities.len(), 1);
    // Pages of two neither skip nor repeat.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = s.list_audit(&AuditFilter::default(), after, 2).await.unwrap();
        paged.extend(page.activities.iter().map(|a| a.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, all.activities.iter().map(|a| a.id).collect::<Vec<_>>());
}
