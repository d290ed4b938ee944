//! Spawning nodes for tests: `spawn_node` builds the same `Application` as
//! the binary, on port 0, and returns a handle with an HTTP client.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trekker_node::config::{Config, Settings};

use trekker_node::{AppState, Application, Overrides};

/// A running node.
pub struct TestNode {
    pub addr: SocketAddr,
    pub state: AppState,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestNode {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops the node as SIGTERM would and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .expect("node stops within 10 s")
                .expect("node task")
                .expect("node served cleanly");
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A database for a test: PostgreSQL when available, else `None` (skipped).
pub async fn postgres_url() -> Option<String> {
    trekker_testkit::postgres::database().await.map(|db| db.url)
}

/// The settings of a test node named `name` with `capacity` slots.
pub fn settings(database_url: &str, name: &str, capacity: u32) -> Settings {
    let mut settings = Config::defaults();
    settings.database_url = database_url.to_owned();
    settings.server_name = name.to_owned();
    settings.max_bot_count = capacity;
    settings.bind_addr = "127.0.0.1:0".parse().expect("addr");
    settings.credentials_key = Some(base64_key());
    settings.admin_token = Some(ADMIN_TOKEN.to_owned());
    // Offline after 3 missed beats = 15 s: a loaded machine delaying a beat
    // by seconds does not make a node look offline. Tests that need an
    // offline node stop it and age its row (`raw_sql`) instead of waiting.
    settings.heartbeat_interval_secs = 5;
    // A synchronous cross-server update on a loaded 2-core machine (a
    // browser test beside it) can take seconds; tests of the queued path
    // make the host unreachable instead of relying on the budget.
    settings.cross_server_timeout_ms = 15_000;
    settings.rate_limit_per_min = 0;
    // The capacity tests fill servers with bots waiting for approval; the
    // pending share has its own tests.
    settings.pending_max_percent = 100;
    settings.cluster_secret = Some(CLUSTER_SECRET.to_owned());
    settings
}

/// The cluster secret of the test nodes (at least 32 bytes).
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789abcdef";

pub const ADMIN_TOKEN: &str = "test-admin-token";

fn base64_key() -> String {
    // 32 bytes of 0x42, base64: the same key on every test node.
    "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=".to_owned()
}

pub async fn spawn_node(settings: Settings) -> TestNode {
    spawn_node_with(settings, fast_runtime(None)).await
}

/// Supervisor timings for tests: quick polls, short leases and backoffs.
pub fn fast_runtime(driver: Option<Arc<dyn trekker_runtime::BotDriver>>) -> Overrides {
    let tuning = trekker_runtime::SupervisorTuning {
        poll_every: Duration::from_millis(200),
        lease: Duration::from_secs(3),
        // Long enough that the tests see the change feed at work.
        resync_every: Duration::from_secs(120),
        start_rate_per_sec: 200,
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        crash_limit: 3,
        crash_window: Duration::from_secs(60),
        arrivals_per_min: 6000,
    };
    Overrides {
        driver,
        tuning: Some(tuning),
        sweep_every: Some(Duration::from_millis(200)),
        fleet_every: Some(Duration::from_millis(200)),
        ..Overrides::default()
    }
}

pub async fn spawn_node_with(settings: Settings, overrides: Overrides) -> TestNode {
    trekker_node::install_crypto_provider();
    let config = Config::from_settings(settings).expect("valid test config");
    let app = Application::build_with(config, overrides).await.expect("node starts");
    let addr = app.local_addr();
    let state = app.state().clone();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    TestNode { addr, state, client, shutdown, handle: Some(handle) }
}

/// A JSON answer: status, `Retry-After` if any, and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: serde_json::Value,
}

impl Answer {
    pub async fn from(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_owned());
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        Self { status, retry_after, body }
    }

    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }
}

impl TestNode {
    pub async fn get(&self, path: &str) -> Answer {
        Answer::from(self.client.get(self.url(path)).send().await.expect("request")).await
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> Answer {
        Answer::from(self.client.post(self.url(path)).json(body).send().await.expect("request")).await
    }

    /// An admin call with the test admin token.
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> Answer {
        self.call_as(ADMIN_TOKEN, method, path, body).await
    }

    /// An admin call with `token` (an API key, or anything else).
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Answer {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Answer::from(request.send().await.expect("request")).await
    }

    /// Registers `phone` with test credentials `variant`.
    pub async fn register(&self, name: &str, phone: &str, variant: u32, selected: Option<&str>) -> Answer {
        let mut body = serde_json::json!({
            "botName": name,
            "phoneNumber": phone,
            "credentialType": "session",
            "sessionId": trekker_testkit::creds::session_id(phone, variant),
        });
        if let Some(server) = selected {
            body["selectedServer"] = serde_json::json!(server);
        }
        self.post_json("/api/guest/register-bot", &body).await
    }

    /// Makes an API key of `role` with the bootstrap token: (id, token).
    pub async fn make_key(&self, name: &str, role: &str) -> (String, String) {
        let body = serde_json::json!({"name": name, "role": role});
        let made = self.admin(reqwest::Method::POST, "/api/admin/keys", Some(body)).await;
        assert_eq!(made.status, 201, "{:?}", made.body);
        assert_eq!((made.body["name"].as_str(), made.body["role"].as_str()), (Some(name), Some(role)));
        let token = made.body["token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("trk_"), "{token}");
        (made.body["id"].as_str().unwrap().to_owned(), token)
    }

    pub async fn approve(&self, bot_id: &str) -> Answer {
        self.admin(reqwest::Method::POST, &format!("/api/admin/bots/{bot_id}/approve"), None).await
    }
}

/// Runs raw SQL on a test database (to break things on purpose).
pub async fn raw_sql(database_url: &str, sql: &'static str) {
    raw_sql_owned(database_url, sql.to_owned()).await;
}

/// [`raw_sql`] for a statement built at run time.
pub async fn raw_sql_owned(database_url: &str, sql: String) {
    use sqlx::Connection as _;
    let sql = sqlx::AssertSqlSafe(sql);
    if database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database_url).await.expect("connect");
        sqlx::query(sql).execute(&mut conn).await.expect("raw sql");
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.expect("connect");
        sqlx::query(sql).execute(&mut conn).await.expect("raw sql");
    }
}

/// Runs a raw `SELECT COUNT(*) ...` on a test database.
pub async fn raw_count(database_url: &str, sql: &'static str) -> i64 {
    use sqlx::Connection as _;
    if database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database_url).await.expect("connect");
        sqlx::query_scalar(sql).fetch_one(&mut conn).await.expect("raw count")
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.expect("connect");
        sqlx::query_scalar(sql).fetch_one(&mut conn).await.expect("raw count")
    }
}

/// One test database URL per backend that is available here.
pub async fn databases() -> Vec<(String, Option<trekker_testkit::SqliteDatabase>)> {
    let sqlite = trekker_testkit::sqlite_database();
    let mut all = vec![(sqlite.url.clone(), Some(sqlite))];
    if let Some(url) = postgres_url().await {
        all.push((url, None));
    }
    all
}

/// Polls `check` every 50 ms until it holds or `within` runs out.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {within:?} waiting for: {what}");
}

/// Reads one SSE stream event by event.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    pub async fn open(node: &TestNode, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = node.client.get(node.url(path)).header("accept", "text/event-stream");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Self { response, buffer: String::new() }
    }

    /// The next event's name and data (keep-alive comments skipped).
    pub async fn next(&mut self) -> (String, serde_json::Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame.lines().find_map(|line| line.strip_prefix(name).map(|v| v.trim_start().to_owned()))
                };
                if let (Some(event), Some(data)) = (field("event:"), field("data:")) {
                    return (event, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = self.response.chunk().await.unwrap().expect("the stream stays open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads until `wanted` holds for an event; every event read on the way.
    pub async fn until(
        &mut self,
        what: &str,
        wanted: impl Fn(&str, &serde_json::Value) -> bool,
    ) -> Vec<(String, serde_json::Value)> {
        let mut read = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let (event, data) = self.next().await;
                let done = wanted(&event, &data);
                read.push((event, data));
                if done {
                    return;
                }
            }
        })
        .await;
        assert!(found.is_ok(), "no event for {what}; read {read:?}");
        read
    }
}
