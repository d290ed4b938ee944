//! The multi-node contract through a real PgBouncer (testkit's harness, in
//! front of the throwaway PostgreSQL): in transaction mode, as Neon's and
//! Supabase's pooled endpoints are, and in session mode with a pool smaller
//! than the nodes' demand. Registration, same- and cross-server updates,
//! approval, bots running, and a 40-way burst on a small server: every
//! request answered in time, never a 500, capacity exact, nothing crossed
//! between clients.

use std::time::{Duration, Instant};

use reqwest::Method;
use trekker_domain::{BotId, RuntimeStatus};
use trekker_node::config::PoolerMode;
use trekker_testkit::creds;
use trekker_testkit::pgbouncer::{self, PoolMode};

use crate::runtime::wait_status;
use crate::support::{TestNode, settings, spawn_node};

/// The statement timeout the nodes run with here, and the margin a request
/// may take beyond it (a loaded 2-core machine).
const STATEMENT_TIMEOUT_MS: u64 = 3_000;
const MARGIN: Duration = Duration::from_secs(10);

/// The crash test's server capacity: more than its load can fill.
const CRASH_CAPACITY: u32 = 50_000;

async fn node(url: &str, name: &str, capacity: u32, pooler: PoolerMode, connections: u32) -> TestNode {
    let mut settings = settings(url, name, capacity);
    settings.database_pooler = pooler;
    settings.database_max_connections = connections;
    settings.database_statement_timeout_ms = STATEMENT_TIMEOUT_MS;
    spawn_node(settings).await
}

/// The contract, run against two nodes that share a pooled database.
async fn contract(a: &TestNode, b: &TestNode, series: u32) {
    // Registration and approval; the bot runs.
    let phone = creds::phone(series, 1);
    let created = a.register("Pooled", &phone, 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(a.approve(&id).await.status, 200);
    wait_status(a, &id, RuntimeStatus::Online).await;
    // A same-server update, then a cross-server one through the other node.
    let same = a.register("Pooled", &phone, 2, None).await;
    assert_eq!(same.status, 200, "{:?}", same.body);
    let cross = b.register("Pooled", &phone, 3, None).await;
    assert!(cross.status == 200 || cross.status == 202, "{:?}", cross.body);
    let bot = BotId::parse(&id).unwrap();
    crate::support::eventually(Duration::from_secs(30), "version 3 applied", || async {
        a.state.store.load_credentials(&bot).await.unwrap().is_some_and(|(_, version)| version == 3)
    })
    .await;
    wait_status(a, &id, RuntimeStatus::Online).await;

    // A 40-way burst on a server of 5 free slots, through both nodes.
    let phones: Vec<String> = (1..=40).map(|n| creds::phone(series + 1, n)).collect();
    let started = Instant::now();
    let burst: Vec<_> = phones
        .iter()
        .enumerate()
        .map(|(n, phone)| {
            let node = if n % 2 == 0 { a } else { b };
            node.register("Burst", phone, 1, Some("SERVER1"))
        })
        .collect();
    let answers = futures::future::join_all(burst).await;
    let took = started.elapsed();
    let mut placed = 0;
    for answer in &answers {
        match answer.status {
            201 => placed += 1,
            409 => assert_eq!(answer.code(), "SERVER_FULL", "{:?}", answer.body),
            503 => assert_eq!(answer.code(), "SERVICE_UNAVAILABLE", "{:?}", answer.body),
            other => panic!("a burst request answered {other}: {:?}", answer.body),
        }
    }
    assert!(placed <= 5, "{placed} bots on a server of 5 slots");
    assert!(placed >= 1, "nothing placed: {:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    // Every request answered: the slowest within the statement timeout and
    // the margin (a liveness bound: nothing hangs).
    assert!(took < Duration::from_millis(STATEMENT_TIMEOUT_MS) + MARGIN, "the burst took {took:?}");
    let servers = a.admin(Method::GET, "/api/admin/servers", None).await;
    let small = servers.body["servers"].as_array().unwrap().iter().find(|s| s["name"] == "SERVER1").unwrap().clone();
    assert_eq!(small["currentBots"], placed, "capacity counted exactly: {small}");
    let found = a.admin(Method::GET, "/api/admin/registry/inconsistencies", None).await;
    assert_eq!(found.body["count"], 0, "{:?}", found.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_contract_holds_through_pgbouncer_in_transaction_mode() {
    let Some(database) = trekker_testkit::postgres::database().await else { return };
    let Some(bouncer) = pgbouncer::start(&database, PoolMode::Transaction, 4) else { return };
    let a = node(&bouncer.url, "SERVER0", 20, PoolerMode::Transaction, 6).await;
    let b = node(&bouncer.url, "SERVER1", 5, PoolerMode::Transaction, 6).await;
    contract(&a, &b, 97).await;
    let ready = a.get("/readyz").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_contract_holds_through_a_session_pool_smaller_than_the_demand() {
    let Some(database) = trekker_testkit::postgres::database().await else { return };
    // In session mode a client connection holds a server connection for
    // its life: the nodes' budgets fit the pool (2 x 2 of 5), the demand
    // (a 40-way burst) does not.
    let Some(bouncer) = pgbouncer::start(&database, PoolMode::Session, 5) else { return };
    let a = node(&bouncer.url, "SERVER0", 20, PoolerMode::None, 2).await;
    let b = node(&bouncer.url, "SERVER1", 5, PoolerMode::None, 2).await;
    contract(&a, &b, 99).await;
    a.stop().await;
    b.stop().await;
}

/// PostgreSQL crashes and restarts while guests register through a node:
/// every registration the node acknowledged (201) is in the database
/// afterwards, the counts agree with the rows, and the node serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_crash_under_load_loses_no_acknowledged_write() {
    let Some(server) = tokio::task::spawn_blocking(trekker_testkit::postgres::DedicatedServer::start).await.unwrap()
    else {
        return;
    };
    let server = std::sync::Arc::new(server);
    let url = server.migrated_database("trekker_crash").await;
    // Room for every registration the load can make: a full server would
    // answer 503 from then on, and the crash would find no write in flight.
    let a = node(&url, "SERVER0", CRASH_CAPACITY, PoolerMode::None, 8).await;
    let load_for = Duration::from_secs(8);
    let started = Instant::now();
    // Four guests registering one after another, each with phones of its own.
    let guest = |client: u32| {
        let a = &a;
        async move {
            let mut acknowledged = Vec::new();
            let mut refused = 0;
            let mut n = 0;
            while started.elapsed() < load_for {
                n += 1;
                let phone = creds::phone(100 + client, n);
                let answer = a.register("Crash", &phone, 1, None).await;
                match answer.status {
                    201 => acknowledged.push(phone),
                    503 => refused += 1,
                    other => panic!("answered {other} during the crash: {:?}", answer.body),
                }
            }
            (acknowledged, refused)
        }
    };
    let crash = {
        let server = server.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            tokio::task::spawn_blocking(move || server.crash_restart()).await.unwrap();
        })
    };
    let results = futures::future::join_all((0..4).map(guest)).await;
    crash.await.unwrap();
    let acknowledged: Vec<String> = results.iter().flat_map(|(phones, _)| phones.clone()).collect();
    let refused: usize = results.iter().map(|(_, refused)| refused).sum();
    assert!(acknowledged.len() > 10, "too little load to mean anything: {}", acknowledged.len());
    assert!(acknowledged.len() < CRASH_CAPACITY as usize, "the server filled up: the crash hit no live load");
    eprintln!("{} registrations acknowledged, {refused} refused with 503 around the crash", acknowledged.len());
    // The node serves again, and holds every acknowledged bot.
    crate::support::eventually(Duration::from_secs(20), "the node ready again", || async {
        a.get("/readyz").await.status == 200
    })
    .await;
    for phone in &acknowledged {
        let phone = trekker_domain::PhoneNumber::parse(phone).unwrap();
        let found = a.state.store.find_registration(&phone).await.unwrap();
        assert!(found.is_some(), "{phone} was acknowledged and is gone");
    }
    let servers = a.admin(Method::GET, "/api/admin/servers", None).await;
    let row = servers.body["servers"].as_array().unwrap().iter().find(|s| s["name"] == "SERVER0").unwrap().clone();
    let counted = row["currentBots"].as_u64().unwrap() as usize;
    assert!(counted >= acknowledged.len(), "{counted} counted, {} acknowledged", acknowledged.len());
    let found = a.admin(Method::GET, "/api/admin/registry/inconsistencies", None).await;
    assert_eq!(found.body["count"], 0, "{:?}", found.body);
    a.stop().await;
}

/// Behind a transaction pooler a node applies no migration: on a schema
/// that is behind it refuses to start and says to run `migrate`, which
/// works through DATABASE_MIGRATION_URL (a direct connection); then it
/// starts through the pooler.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_transaction_pooler_migrations_run_only_through_the_direct_url() {
    let Some(server) = tokio::task::spawn_blocking(trekker_testkit::postgres::DedicatedServer::start).await.unwrap()
    else {
        return;
    };
    let direct = server.empty_database("trekker_fresh").await;
    let database = trekker_testkit::postgres::TestDatabase { url: direct.clone() };
    let Some(bouncer) = pgbouncer::start(&database, PoolMode::Transaction, 3) else { return };
    let mut pooled = settings(&bouncer.url, "SERVER0", 5);
    pooled.database_pooler = PoolerMode::Transaction;
    let config = trekker_node::Config::from_settings(pooled.clone()).unwrap();
    let refused = trekker_node::connect_store(&config).await.err().expect("a schema behind is refused");
    assert!(refused.to_string().contains("trekker-node migrate"), "{refused}");
    // `migrate` without a direct URL says what it needs...
    let without = trekker_node::migrate(&config).await.unwrap_err();
    assert!(without.contains("DATABASE_MIGRATION_URL"), "{without}");
    // ...and with one applies every migration, once.
    pooled.database_migration_url = Some(direct.clone());
    let config = trekker_node::Config::from_settings(pooled.clone()).unwrap();
    let applied = trekker_node::migrate(&config).await.unwrap();
    assert!(applied > 10, "{applied} migrations applied");
    assert_eq!(trekker_node::migrate(&config).await.unwrap(), 0, "nothing left the second time");
    let node = spawn_node(pooled).await;
    let created = node.register("Fresh", &creds::phone(98, 1), 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    node.stop().await;
}
