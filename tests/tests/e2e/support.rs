//! Spawning nodes for tests: `spawn_node` builds the same `Application` as
//! the binary, on port 0, and returns a handle with an HTTP client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trekker_node::config::{Config, Settings};
use trekker_node::{AppState, Application};

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
    settings.heartbeat_interval_secs = 1;
    settings.rate_limit_per_min = 0;
    settings
}

pub const ADMIN_TOKEN: &str = "test-admin-token";

fn base64_key() -> String {
    // 32 bytes of 0x42, base64: the same key on every test node.
    "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=".to_owned()
}

pub async fn spawn_node(settings: Settings) -> TestNode {
    trekker_node::install_crypto_provider();
    let config = Config::from_settings(settings).expect("valid test config");
    let app = Application::build(config).await.expect("node starts");
    let addr = app.local_addr();
    let state = app.state().clone();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    TestNode { addr, state, client, shutdown, handle: Some(handle) }
}
