//! `trekker-node`: a Trekker node as a library, so the binary and the tests
//! share one start-up path ([`Application::build`] binds, possibly port 0,
//! and reports the address; [`Application::run`] serves until stopped).

pub mod config;
pub mod http;
mod liveness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trekker_store::{ServerRegistration, Store, StoreError};

pub use config::{Cli, Command, Config, ConfigError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The current time in epoch milliseconds.
pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Makes rustls use ring (the one crypto library of the build). Safe to
/// call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Shared state of the HTTP handlers and background tasks.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// How other nodes reach this one (BASE_URL, or the bound address).
    pub base_url: String,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("server", &self.config.server_name).finish_non_exhaustive()
    }
}

/// A node, bound and connected, ready to [`run`](Self::run).
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Application {
    /// Connects and migrates the database, binds the listener, and writes
    /// this node's registry row (capacity, base URL, first heartbeat).
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let store = connect_store(&config).await?;
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .map_err(|source| StartupError::Bind { addr: config.bind_addr, source })?;
        let addr = listener.local_addr().map_err(|source| StartupError::Bind { addr: config.bind_addr, source })?;
        let base_url = config.base_url.clone().unwrap_or_else(|| format!("http://{addr}"));
        let registration = ServerRegistration {
            name: config.server_name.clone(),
            max_bot_count: config.max_bot_count,
            base_url: Some(base_url.clone()),
            description: None,
        };
        store.upsert_server(&registration, now_millis()).await?;
        let state = AppState { config: Arc::new(config), store, base_url };
        Ok(Self { listener, addr, state, shutdown: CancellationToken::new() })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancel it to stop the node gracefully (what SIGTERM does).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled: then stops taking
    /// connections, finishes in-flight requests, and stops the background
    /// tasks before returning.
    pub async fn run(self) -> std::io::Result<()> {
        let tasks = TaskTracker::new();
        liveness::spawn(&tasks, self.state.clone(), self.shutdown.clone());
        tracing::info!(server = %self.state.config.server_name, "listening on {}", self.addr);
        let router = http::router(self.state.clone());
        let shutdown = self.shutdown.clone();
        let served = axum::serve(self.listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        self.shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("stopped");
        served
    }
}

/// Connects the store the configuration names, and migrates it.
pub async fn connect_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let cipher = config.credentials_cipher()?;
    trekker_store::connect(config.database_url.expose(), cipher).await
}
