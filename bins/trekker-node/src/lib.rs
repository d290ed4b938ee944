//! `trekker-node`: a Trekker node as a library, so the binary and the tests
//! share one start-up path ([`Application::build`] binds, possibly port 0,
//! and reports the address; [`Application::run`] serves until stopped).

pub mod access;
pub mod config;
pub mod http;
pub mod per_address;
pub mod readiness;
pub mod server;
pub mod userns;

use std::net::SocketAddr;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use trekker_app::Trekker;
use trekker_app::messaging::{BotMessenger, NoMessenger};
use trekker_app::notify::{LogNotifier, Notifier, WebhookNotifier};
use trekker_app::pairing::{PairingProvider, SimulatedPairing};
use trekker_store::{ServerRegistration, Store, StoreError};

use trekker_tenancy::{ClusterKeys, CrossTenancyClient, RequestVerifier};

use trekker_runtime::{BotDriver, ProcessDriver, SessionConfig, SimulatedDriver, Supervisor, SupervisorTuning};

use crate::config::{BotDriverKind, NotifierKind, PairingProviderKind, Secret};
use crate::http::ratelimit::GuestRateLimiter;

/// How often each node looks for approvals that ran out.
const EXPIRY_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// BOT_SANDBOX=on on a machine that cannot isolate bots.
    #[error("BOT_SANDBOX=on: {0} (BOT_SANDBOX=off runs bots as the node's user, unisolated)")]
    Sandbox(#[from] trekker_runtime::sandbox::SandboxError),
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
    /// The use cases of this node.
    pub trekker: Arc<Trekker>,
    pub pairing: Arc<dyn PairingProvider>,
    pub notifier: Arc<dyn Notifier>,
    /// Caps the live event streams this node serves.
    pub event_streams: http::events::StreamSlots,
    /// Sends texts from the bots running here (`whatsapp` driver only).
    pub messenger: Arc<dyn BotMessenger>,
    /// `None` when RATE_LIMIT_PER_MIN is 0.
    pub rate_limiter: Option<Arc<GuestRateLimiter>>,
    pub metrics: PrometheusHandle,
    /// Verifies node-to-node calls.
    pub verifier: Arc<RequestVerifier>,
    /// How other nodes reach this one (BASE_URL, or the bound address).
    pub base_url: String,
    /// The `process` driver's bots (their usage and output), when it runs here.
    pub process_bots: Option<Arc<ProcessDriver>>,
    /// The database as the last readiness probe found it (`/readyz`).
    pub readiness: Arc<readiness::Readiness>,
    /// Who calls the admin API (the bootstrap token, the API keys).
    pub keys: Arc<access::ApiKeys>,
    /// Calls other nodes (a bot's logs from its host).
    pub peers: CrossTenancyClient,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("server", &self.config.server_name).finish_non_exhaustive()
    }
}

/// An error with every cause under it, `outer: inner: root` (the SQLSTATE
/// of a database error included): what a person needs in the log to act.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        if let Some(code) = trekker_store::sqlstate(cause) {
            text.push_str(&format!(" (SQLSTATE {code})"));
        }
        source = cause.source();
    }
    text
}

/// How often the fleet loop runs (failover, evacuation, balancing).
const FLEET_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the live event feed reads the cluster while someone listens.
const LIVE_FEED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Replacements for what the configuration would build (tests, embedding).
#[derive(Default)]
pub struct Overrides {
    pub driver: Option<Arc<dyn BotDriver>>,
    /// What sends texts from bots (with a replaced driver).
    pub messenger: Option<Arc<dyn BotMessenger>>,
    pub tuning: Option<SupervisorTuning>,
    /// How often the expiry sweeper runs (default 30 s).
    pub sweep_every: Option<std::time::Duration>,
    /// How often the fleet loop looks for failovers, evacuations and
    /// imbalance (default 5 s).
    pub fleet_every: Option<std::time::Duration>,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overrides")
            .field("driver", &self.driver)
            .field("messenger", &self.messenger)
            .field("tuning", &self.tuning)
            .field("sweep_every", &self.sweep_every)
            .field("fleet_every", &self.fleet_every)
            .finish()
    }
}

/// A node, bound and connected, ready to [`run`](Self::run).
pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
    driver: Arc<dyn BotDriver>,
    tuning: SupervisorTuning,
    sweep_every: std::time::Duration,
    fleet_every: std::time::Duration,
    /// Bots this node runs, counted by its supervisor, reported in its load.
    bots_running: Arc<std::sync::atomic::AtomicUsize>,
    /// This node's registry row, written again if it ever goes missing.
    registration: ServerRegistration,
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
        Self::build_with(config, Overrides::default()).await
    }

    /// [`build`](Self::build) with some parts replaced.
    pub async fn build_with(config: Config, overrides: Overrides) -> Result<Self, StartupError> {
        let store = connect_store_patiently(&config).await?;
        let shutdown = CancellationToken::new();
        #[cfg(feature = "whatsapp")]
        let mut whatsapp_sessions = None;
        #[cfg(feature = "whatsapp")]
        let web_version = whatsapp_web_version(&config, &shutdown)?;
        let mut process_bots = None;
        let driver: Arc<dyn BotDriver> = match overrides.driver {
            Some(driver) => driver,
            None => match config.bot_driver {
                BotDriverKind::Simulated => {
                    tracing::warn!("BOT_DRIVER=simulated: bots are in-process stand-ins that connect to nothing");
                    Arc::new(SimulatedDriver::new(std::time::Duration::from_millis(300)))
                }
                BotDriverKind::Process => {
                    let driver = Arc::new(process_driver(&config).await?);
                    process_bots = Some(driver.clone());
                    driver
                }
                #[cfg(feature = "whatsapp")]
                BotDriverKind::Whatsapp => {
                    let clock: Arc<dyn trekker_app::Clock> = Arc::new(trekker_app::SystemClock);
                    let mut driver = trekker_whatsapp::driver::WhatsAppDriver::new(store.clone(), clock)
                        .with_web_version(web_version.clone())
                        .with_send_policy(config.send_policy);
                    if let Some((url, secret)) = &config.bot_events_webhook {
                        let secret = secret.expose().as_bytes().to_vec();
                        let webhook =
                            trekker_whatsapp::webhook::EventsWebhook::start(url.clone(), secret, shutdown.clone());
                        driver = driver.with_webhook(webhook);
                    }
                    whatsapp_sessions = Some(driver.sessions());
                    Arc::new(driver)
                }
            },
        };
        let tuning = overrides.tuning.unwrap_or_else(|| SupervisorTuning {
            start_rate_per_sec: config.bot_start_rate,
            arrivals_per_min: config.moves_per_min,
            ..SupervisorTuning::default()
        });
        let listener =
            server::listen(config.bind_addr).map_err(|source| StartupError::Bind { addr: config.bind_addr, source })?;
        let addr = listener.local_addr().map_err(|source| StartupError::Bind { addr: config.bind_addr, source })?;
        let base_url = config.base_url.clone().unwrap_or_else(|| format!("http://{addr}"));
        let registration = ServerRegistration {
            name: config.server_name.clone(),
            max_bot_count: config.max_bot_count,
            base_url: Some(base_url.clone()),
            description: None,
        };
        let heartbeat_ms = i64::try_from(config.heartbeat_interval.as_millis()).unwrap_or(i64::MAX);
        let keys = config.cluster_secret.as_ref().map(|secret| {
            ClusterKeys::new(secret.expose(), config.cluster_secret_previous.as_ref().map(Secret::expose))
        });
        if keys.is_none() {
            tracing::warn!(
                "CLUSTER_SECRET is not set: cross-server credential updates to and from this node will fail"
            );
        }
        let client = CrossTenancyClient::new(keys.clone(), config.server_name.clone(), config.cross_server_timeout)
            .map_err(|e| StartupError::Config(ConfigError { setting: "CLUSTER_SECRET", reason: e.to_string() }))?;
        let verifier = Arc::new(RequestVerifier::new(keys, config.server_name.clone(), store.clone(), store.clone()));
        let mut trekker = Trekker::new(store.clone(), config.server_name.clone(), heartbeat_ms);
        store.upsert_server(&registration, trekker.now()).await?;
        let peers = client.clone();
        trekker.remote = Arc::new(client);
        trekker.cross_server_budget = config.cross_server_timeout;
        trekker.pending_ttl_ms = i64::try_from(config.pending_ttl.as_millis()).unwrap_or(i64::MAX);
        trekker.pending_share_percent = i64::from(config.pending_max_percent);
        trekker.capacity_warn_percent = config.capacity_warn_percent;
        trekker.admin_phone = config.admin_phone.clone();
        let bot_memory_bytes = i64::try_from(config.bot_limits.memory_bytes).unwrap_or(i64::MAX);
        trekker.placement = Arc::new(trekker_placement::MostFreeSlots { bot_memory_bytes });
        trekker.fleet = trekker_app::fleet::FleetSettings {
            failover_after_ms: i64::try_from(config.failover_after.as_millis()).unwrap_or(i64::MAX),
            moves_per_min: i64::from(config.moves_per_min),
            rebalance: config.rebalance,
            bot_memory_bytes,
            ..trekker_app::fleet::FleetSettings::default()
        };
        let bots_running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        trekker.load = Some(Arc::new(trekker_app::load::LoadMeter::new(bots_running.clone())));
        let trekker = Arc::new(trekker);
        let pairing: Arc<dyn PairingProvider> = match config.pairing_provider {
            PairingProviderKind::Simulated => {
                tracing::warn!("PAIRING_PROVIDER=simulated: pairing codes pair no real phone (demo and test use)");
                // Every node sharing the credentials key simulates the same
                // account per phone.
                let secret = config.credentials_cipher()?.subkey("simulated-whatsapp-accounts");
                Arc::new(SimulatedPairing::new(secret))
            }
            #[cfg(feature = "whatsapp")]
            PairingProviderKind::Whatsapp => Arc::new(trekker_whatsapp::pairing::WhatsAppPairing {
                web_version: web_version.clone(),
                ..Default::default()
            }),
        };
        let notifier: Arc<dyn Notifier> = match (&config.notifier, &config.notify_webhook_url) {
            (NotifierKind::Webhook, Some(url)) => Arc::new(
                WebhookNotifier::new(url.clone())
                    .map_err(|e| StartupError::Config(ConfigError { setting: "NOTIFY_WEBHOOK_URL", reason: e.0 }))?,
            ),
            #[cfg(feature = "whatsapp")]
            (NotifierKind::Whatsapp, _) => match &whatsapp_sessions {
                Some(sessions) => Arc::new(
                    trekker_whatsapp::notifier::WhatsAppNotifier::new(sessions.clone(), store.clone(), store.clone())
                        .with_web_version(web_version.clone()),
                ),
                None => {
                    let reason = "`whatsapp` needs the `whatsapp` bot driver".to_owned();
                    return Err(StartupError::Config(ConfigError { setting: "NOTIFIER", reason }));
                }
            },
            _ => Arc::new(LogNotifier),
        };
        #[cfg(feature = "whatsapp")]
        let driver_messenger = whatsapp_sessions.map(|sessions| sessions as Arc<dyn BotMessenger>);
        #[cfg(not(feature = "whatsapp"))]
        let driver_messenger: Option<Arc<dyn BotMessenger>> = None;
        let messenger = overrides.messenger.or(driver_messenger).unwrap_or_else(|| Arc::new(NoMessenger));
        let event_streams = http::events::StreamSlots::new(config.http_max_connections_per_address > 0);
        let keys = Arc::new(access::ApiKeys::new(
            store.clone(),
            Arc::new(trekker_app::SystemClock),
            config.admin_token.as_ref().map(|token| token.expose().to_owned()),
        ));
        let state = AppState {
            keys,
            peers,
            rate_limiter: GuestRateLimiter::new(config.rate_limit_per_min),
            metrics: {
                let handle = http::metrics_handle();
                http::record_build_info();
                handle
            },
            verifier,
            config: Arc::new(config),
            store,
            trekker,
            pairing,
            notifier,
            messenger,
            event_streams,
            base_url,
            process_bots,
            readiness: Arc::new(readiness::Readiness::default()),
        };
        let sweep_every = overrides.sweep_every.unwrap_or(EXPIRY_SWEEP_EVERY);
        let fleet_every = overrides.fleet_every.unwrap_or(FLEET_EVERY);
        Ok(Self {
            listener,
            addr,
            state,
            shutdown,
            driver,
            tuning,
            sweep_every,
            fleet_every,
            bots_running,
            registration,
        })
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
        tasks.spawn(trekker_app::liveness::run(
            self.state.trekker.clone(),
            self.registration.clone(),
            self.state.config.heartbeat_interval,
            self.shutdown.clone(),
        ));
        tasks.spawn(trekker_app::notify::run_dispatcher(
            self.state.trekker.clone(),
            self.state.notifier.clone(),
            self.shutdown.clone(),
        ));
        let supervisor = Supervisor::new(
            self.state.store.clone(),
            self.state.trekker.clock.clone(),
            self.driver.clone(),
            self.state.config.server_name.clone(),
            usize::try_from(self.state.config.max_bot_count).unwrap_or(0),
            self.tuning.clone(),
        )
        .with_session_state(SessionConfig {
            store: self.state.store.clone(),
            every: self.state.config.bot_state_sync,
            limit: self.state.config.bot_state_max_bytes,
        })
        .with_running_counter(self.bots_running.clone())
        .with_renewal_stamp(self.state.trekker.lease_renewed_at.clone());
        tasks.spawn(supervisor.run(self.state.trekker.runtime_changed.clone(), self.shutdown.clone()));
        tasks.spawn(trekker_app::crossserver::run_outbox(self.state.trekker.clone(), self.shutdown.clone()));
        tasks.spawn(trekker_app::sweeper::run(self.state.trekker.clone(), self.sweep_every, self.shutdown.clone()));
        tasks.spawn(readiness::run_probe(
            self.state.store.clone(),
            self.state.readiness.clone(),
            self.shutdown.clone(),
        ));
        tasks.spawn(trekker_app::fleet::run(self.state.trekker.clone(), self.fleet_every, self.shutdown.clone()));
        tasks.spawn(access::run_use_recorder(self.state.keys.clone(), self.shutdown.clone()));
        tasks.spawn(trekker_app::events::run_event_feed(
            self.state.trekker.clone(),
            self.state.trekker.events.clone(),
            LIVE_FEED_EVERY,
            self.shutdown.clone(),
        ));
        tasks.spawn(trekker_app::capacity::run_capacity_watch(
            self.state.trekker.clone(),
            self.state.config.heartbeat_interval,
            self.shutdown.clone(),
        ));
        tracing::info!(server = %self.state.config.server_name, "listening on {}", self.addr);
        let router = http::router(self.state.clone());
        let limits = server::ServerLimits {
            max_connections: self.state.config.http_max_connections,
            max_connections_per_address: self.state.config.http_max_connections_per_address,
            header_timeout: self.state.config.http_header_timeout,
        };
        let served = server::serve(self.listener, router, limits, self.shutdown.clone()).await;
        self.shutdown.cancel();
        tasks.close();
        // Bots get their stop grace; the final writes each have a budget,
        // and all of it has this deadline (a database that hangs must not
        // keep a SIGTERMed node alive).
        let deadline = self.state.config.bot_stop_grace + std::time::Duration::from_secs(20);
        if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
            tracing::warn!(
                secs = deadline.as_secs(),
                "background work still running at the shutdown deadline; exiting"
            );
        }
        tracing::info!("stopped");
        served
    }
}

/// The `process` driver, sandboxed unless BOT_SANDBOX=off. A sandbox is
/// proven (a sandboxed `id -u`) before the node serves.
/// The WhatsApp Web version the in-process clients announce; refreshed in
/// the background while this node uses WhatsApp at all.
#[cfg(feature = "whatsapp")]
fn whatsapp_web_version(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<trekker_whatsapp::web_version::WebVersion, StartupError> {
    let web = &config.whatsapp_web;
    let version = trekker_whatsapp::web_version::WebVersion::pinned(web.version);
    let uses_whatsapp = config.bot_driver == BotDriverKind::Whatsapp
        || config.pairing_provider == PairingProviderKind::Whatsapp
        || config.notifier == NotifierKind::Whatsapp;
    if let (true, Some(every)) = (uses_whatsapp, web.refresh_every) {
        version.spawn_refresh(web.refresh_url.clone(), every, shutdown.clone()).map_err(|e| {
            StartupError::Config(ConfigError { setting: "WHATSAPP_WEB_VERSION_URL", reason: e.to_string() })
        })?;
    }
    Ok(version)
}

async fn process_driver(config: &Config) -> Result<ProcessDriver, StartupError> {
    let driver = ProcessDriver::new(
        config.bot_command.as_deref().unwrap_or_default(),
        config.bot_auth_dir.clone(),
        config.bot_stop_grace,
    )
    .map_err(|e| StartupError::Config(ConfigError { setting: "BOT_COMMAND", reason: e.0 }))?
    .with_send_policy(config.send_policy);
    if config.bot_sandbox == config::SandboxMode::Off {
        tracing::warn!(
            "BOT_SANDBOX=off: bots run as the node's user and can read its secrets, files and memory; \
             use it only for bots you trust"
        );
        return Ok(driver.with_disk_limit(config.bot_disk_bytes));
    }
    let sandbox = trekker_runtime::sandbox::Sandbox::prepare(trekker_runtime::sandbox::SandboxConfig {
        limits: config.bot_limits,
        disk_bytes: config.bot_disk_bytes,
        hidden: node_folders(config),
    })?;
    let mut words = config.bot_command.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned);
    let program = words.next().unwrap_or_default();
    sandbox.check_command(&program, &words.collect::<Vec<_>>())?;
    sandbox.self_test(&config.bot_auth_dir).await?;
    tracing::info!(
        memory_mb = config.bot_limits.memory_bytes >> 20,
        pids = config.bot_limits.pids,
        cpu_percent = config.bot_limits.cpu_percent,
        disk_mb = config.bot_disk_bytes >> 20,
        "bots run sandboxed"
    );
    Ok(driver.with_sandbox(sandbox))
}

/// The node's own folders, which no bot may see: its working folder, the
/// SQLite database's and key file's folder, BOT_AUTH_DIR (other bots'
/// folders) and the folders of secret files.
fn node_folders(config: &Config) -> Vec<std::path::PathBuf> {
    let mut folders = vec![std::path::PathBuf::from("."), config.bot_auth_dir.clone()];
    if let config::CredentialsKeySource::KeyFile(key) = &config.credentials_key {
        folders.extend(key.parent().map(|p| if p.as_os_str().is_empty() { ".".into() } else { p.to_path_buf() }));
    }
    folders.extend(config.secret_files.iter().filter_map(|f| f.parent().map(std::path::Path::to_path_buf)));
    let mut folders: Vec<_> = folders.into_iter().filter_map(|f| std::fs::canonicalize(f).ok()).collect();
    folders.sort();
    folders.dedup();
    folders
}

/// Connects the store the configuration names, and migrates it.
pub async fn connect_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let cipher = config.credentials_cipher()?;
    trekker_store::connect_with(config.database_url.expose(), cipher, &config.database).await
}

/// [`connect_store`], waiting while the database is there but busy or not
/// up yet (a full session pool, too many clients, a server starting): the
/// node starts once it can, and a SIGTERM meanwhile stops it. Anything
/// else (a wrong password, an unknown database, a schema behind) fails now.
async fn connect_store_patiently(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        match connect_store(config).await {
            Err(err) if err.is_busy_now() => {
                let secs = wait.as_secs();
                tracing::warn!(error = %error_chain(&err), "database busy or starting; retrying in {secs}s");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(10));
            }
            done => return done,
        }
    }
}

/// `trekker-node migrate`: applies pending migrations through
/// DATABASE_MIGRATION_URL when set (required behind a transaction pooler,
/// whose connections cannot hold the migration's session lock), else
/// through DATABASE_URL. Returns how many it applied.
pub async fn migrate(config: &Config) -> Result<usize, String> {
    match (&config.database_migration_url, config.database.pooler) {
        (Some(url), _) => trekker_store::migrate_postgres(url.expose(), &config.database)
            .await
            .map_err(|e| format!("migration through DATABASE_MIGRATION_URL: {}", error_chain(&e))),
        (None, trekker_store::Pooler::Transaction) => Err("DATABASE_POOLER=transaction: migrations need a direct \
            connection; set DATABASE_MIGRATION_URL (the same database, not through the pooler)"
            .into()),
        (None, trekker_store::Pooler::None) => {
            let pending = match trekker_store::check(config.database_url.expose()).await {
                Ok(report) => report.pending_migrations,
                Err(_) => 0,
            };
            connect_store(config).await.map(|_| pending).map_err(|e| error_chain(&e))
        }
    }
}
