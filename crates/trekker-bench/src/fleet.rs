//! A synthetic fleet in the real schema (servers x approved bots, each bot
//! run by its server's node), and the database work one quiet node does per
//! poll, now and as it was with per-bot leases.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection};
use trekker_domain::ServerName;
use trekker_store::{BotFilter, ChangeCursor, NodeLease, Postgres, RuntimeStore, SqlStore};

/// The name of fleet server `n` (1-based).
pub fn server_name(n: u64) -> String {
    format!("FLEET{n:04}")
}

async fn exec(url: &str, sql: String) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("fleet sql");
}

/// Writes `servers` servers of `per_server` approved, running bots each
/// (registry rows, bot rows with ~2.4 KB of sealed credentials, node
/// leases), through the real schema and its triggers, then refreshes the
/// planner's statistics.
pub async fn seed(url: &str, servers: u64, per_server: u64) {
    let total = servers * per_server;
    let now = 1_800_000_000_000i64;
    exec(
        url,
        format!(
            "INSERT INTO server_registry (server_name, max_bot_count, current_bot_count, server_status, \
             last_heartbeat, created_at, updated_at, pending_count, epoch, lease_until) \
             SELECT 'FLEET' || lpad(s::text, 4, '0'), {room}, {per_server}, 'active', {now}, 0, 0, 0, 1, {lease} \
             FROM generate_series(1, {servers}) s",
            room = per_server + per_server / 10,
            lease = i64::MAX / 2,
        ),
    )
    .await;
    // In chunks of 100,000 rows, so one statement never holds it all.
    let chunk = 100_000u64;
    let mut from = 1;
    while from <= total {
        let to = (from + chunk - 1).min(total);
        exec(
            url,
            format!(
                "INSERT INTO bot_instances (id, name, phone_number, server_name, approval_status, status, \
                 credentials_ciphertext, credentials_nonce, credentials_key_id, credentials_version, \
                 credentials_updated_at, approval_date, created_at, updated_at, runner, runner_epoch) \
                 SELECT 'fleet-' || n, 'fleet bot', '2549' || lpad(n::text, 9, '0'), server, 'approved', 'online', \
                 decode(repeat('ab', 2400), 'hex'), decode('000000000000000000000000', 'hex'), 'bench', 1, \
                 n, n, n, n, server, 1 \
                 FROM (SELECT n, 'FLEET' || lpad(((n - 1) / {per_server} + 1)::text, 4, '0') AS server \
                 FROM generate_series({from}, {to}) n) seq"
            ),
        )
        .await;
        exec(
            url,
            format!(
                "INSERT INTO god_register (phone_number, tenancy_name, bot_id, registered_at) \
                 SELECT phone_number, server_name, id, created_at FROM bot_instances \
                 WHERE id IN (SELECT 'fleet-' || n FROM generate_series({from}, {to}) n)"
            ),
        )
        .await;
        from = to + 1;
    }
    exec(url, "VACUUM ANALYZE".to_owned()).await;
}

/// Gives every bot of `server` real credentials (a signed creds.json of its
/// phone, sealed under the benchmark nodes' key), so the node that runs
/// them starts them as it would real bots. The rest of the fleet keeps
/// placeholder bytes: nothing opens them.
pub async fn seal_credentials(url: &str, server: &str) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let bots: Vec<(String, String)> =
        sqlx::query_as("SELECT id, phone_number FROM bot_instances WHERE server_name = $1")
            .bind(server)
            .fetch_all(&mut conn)
            .await
            .expect("bots of the server");
    let cipher = trekker_testkit::test_cipher();
    let mut tx = conn.begin().await.expect("begin");
    for (id, phone) in bots {
        let document = trekker_testkit::creds::credentials(&phone, 1);
        let sealed = cipher.seal(&id, document.document().as_bytes()).expect("seal");
        sqlx::query(
            "UPDATE bot_instances SET credentials_ciphertext = $2, credentials_nonce = $3, credentials_key_id = $4 \
             WHERE id = $1",
        )
        .bind(&id)
        .bind(sealed.ciphertext)
        .bind(sealed.nonce)
        .bind(sealed.key_id)
        .execute(&mut *tx)
        .await
        .expect("seal a bot's credentials");
    }
    tx.commit().await.expect("commit");
}

/// Waits until `count` bots of `servers` run under their node's current
/// lease (the nodes booted them all), at most 10 minutes.
pub async fn wait_until_running(url: &str, servers: &[&str], count: u64) {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let names: Vec<String> = servers.iter().map(|s| (*s).to_owned()).collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(600) {
        let running: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM bot_instances b JOIN server_registry s ON s.server_name = b.server_name \
             WHERE b.server_name = ANY($1) AND b.runner_epoch = s.epoch AND b.status = 'online'",
        )
        .bind(&names)
        .fetch_one(&mut conn)
        .await
        .expect("running bots");
        if running as u64 >= count {
            println!("{count} bots running after {:.0} s", started.elapsed().as_secs_f64());
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("the nodes did not boot their bots in 10 minutes");
}

/// Polls per second that `workers` concurrent nodes sustain for `span`,
/// each node polling as `poll` does.
pub async fn polls_per_second<F, Fut>(workers: u64, span: Duration, poll: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let poll = Arc::new(poll);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (poll, done) = (poll.clone(), done.clone());
            tokio::spawn(async move {
                while started.elapsed() < span {
                    poll(w).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("poller");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// One quiet poll of today's supervisor on `node`: the change feed (and,
/// one poll in five, the node-lease renewal: every 10 s at a 2 s poll).
pub async fn quiet_poll(store: &SqlStore<Postgres>, node: &ServerName, cursor: &ChangeCursor, round: u64) {
    let changes = store.bot_changes(node, cursor).await.expect("changes");
    assert!(changes.changed.is_empty(), "the fleet is quiet");
    if round.is_multiple_of(5) {
        let lease = NodeLease { node: node.clone(), epoch: 1 };
        store.renew_node_lease(&lease, 1_800_000_000_000, 30_000).await.expect("renew");
    }
}

/// One poll as the supervisor did it with per-bot leases (the code before
/// node leases): renew every lease of the node's bots, then read them all.
pub async fn per_bot_lease_poll(pool: &sqlx::PgPool, node: &str) {
    let renewed: Vec<String> = sqlx::query_scalar(
        "UPDATE bot_instances SET runner_epoch = runner_epoch WHERE runner = $1 AND server_name = $1 \
         AND approval_status = 'approved' RETURNING id",
    )
    .bind(node)
    .fetch_all(pool)
    .await
    .expect("renew per bot");
    let listed: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT id, name, credentials_key_id FROM bot_instances WHERE server_name = $1 \
         AND approval_status = 'approved' AND (expires_at IS NULL OR expires_at > $2) ORDER BY created_at DESC, id",
    )
    .bind(node)
    .bind(0i64)
    .fetch_all(pool)
    .await
    .expect("list per bot");
    assert_eq!(renewed.len(), listed.len());
}

/// The median and 99th-percentile time of `runs` admin pages of `filter`.
pub async fn page_times(store: &SqlStore<Postgres>, filter: &BotFilter, runs: usize) -> (Duration, Duration) {
    use trekker_store::BotStore as _;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let page = store.list_bots(filter).await.expect("page");
        times.push(started.elapsed());
        assert!(!page.bots.is_empty());
    }
    times.sort_unstable();
    (crate::quantile(&times, 0.5), crate::quantile(&times, 0.99))
}
